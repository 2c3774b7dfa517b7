//! The cases. Each asserts what a user of a registry relies on; waits poll a condition under
//! a deadline, and no fixed sleep decides a result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use registry::{
    Capabilities, Error, Instances, RegistrationState, Registry, ServiceInstance, WatchEvent,
    Watcher,
};
use test_support::watcher_reaches;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::hostile::{
    big_metadata_value_round_trips, foreign_values_are_skipped_once, hundred_endpoints_round_trip,
    longest_names_round_trip, unicode_round_trips,
};
use crate::{list_until, Case, Ctx, Needs};

/// A [`Case`] of the async function `$name` of this module.
macro_rules! case {
    ($name:ident, $needs:expr) => {
        Case {
            name: stringify!($name),
            needs: $needs,
            run: |ctx| $name(ctx).boxed_local(),
        }
    };
}

fn watch(caps: &Capabilities) -> bool {
    caps.watch
}

fn ttl_expiry(caps: &Capabilities) -> bool {
    caps.ttl_expiry
}

fn register(caps: &Capabilities) -> bool {
    caps.register
}

fn register_and_watch(caps: &Capabilities) -> bool {
    caps.register && caps.watch
}

fn register_watch_and_report_outages(caps: &Capabilities) -> bool {
    caps.register && caps.watch && caps.reports_every_outage
}

fn register_and_list_services(caps: &Capabilities) -> bool {
    caps.register && caps.list_services
}

fn expiring_and_list_services(caps: &Capabilities) -> bool {
    caps.register && caps.list_services && caps.ttl_expiry
}

/// Every case of the suite, in the order the harness lists them.
pub fn cases() -> Vec<Case> {
    vec![
        case!(register_round_trip, Needs::caps(register)),
        case!(services_stay_apart, Needs::caps(register)),
        case!(deregister_removes, Needs::caps(register)),
        case!(reregister_replaces, Needs::caps(register)),
        case!(unknown_service_is_empty, Needs::nothing()),
        case!(
            watch_starts_with_current_list,
            Needs::caps(register_and_watch)
        ),
        case!(watch_sees_every_change, Needs::caps(register_and_watch)),
        case!(
            two_watchers_see_every_change,
            Needs::caps(register_and_watch)
        ),
        case!(
            watcher_of_other_service_sees_nothing,
            Needs::caps(register_and_watch)
        ),
        case!(watch_stop, Needs::caps(watch)),
        case!(keep_alive, Needs::caps(ttl_expiry)),
        case!(crash_expiry, Needs::caps(ttl_expiry)),
        case!(
            paused_owner_leaves_and_returns,
            Needs::caps(ttl_expiry).with_owner_process()
        ),
        case!(graceful_deregister_is_prompt, Needs::caps(register)),
        case!(concurrent_fifty, Needs::caps(register)),
        case!(bad_input_is_refused, Needs::caps(register)),
        case!(
            server_restarted_with_its_data,
            Needs::caps(register_and_watch).with_server_control()
        ),
        case!(
            server_wiped,
            Needs::caps(register_and_watch).with_server_control()
        ),
        case!(
            server_paused_past_the_ttl,
            Needs::caps(register_and_watch).with_server_control()
        ),
        case!(
            restart_is_told_to_watchers,
            Needs::caps(register_watch_and_report_outages).with_server_control()
        ),
        case!(
            wipe_is_told_to_watchers,
            Needs::caps(register_watch_and_report_outages).with_server_control()
        ),
        case!(
            deleted_from_outside,
            Needs::caps(register_and_watch).with_delete_outside()
        ),
        case!(
            state_follows_a_server_wipe,
            Needs::caps(register).with_server_control()
        ),
        case!(
            concurrent_register_and_deregister_end_with_the_last_call,
            Needs::caps(register)
        ),
        case!(
            deregister_of_another_owners_instance_is_refused,
            Needs::caps(register)
        ),
        case!(close_deregisters_everything, Needs::caps(register)),
        case!(
            dropped_register_leaves_nothing_or_a_tracked_registration,
            Needs::caps(register)
        ),
        case!(
            first_list_deadline,
            Needs::caps(register_and_watch).with_server_control()
        ),
        case!(
            thousand_watchers_see_every_change,
            Needs::caps(register_and_watch)
        ),
        case!(
            thousand_watchers_share_one_upstream_watch,
            Needs::caps(register_and_watch).with_upstream_count()
        ),
        case!(
            list_services_is_sorted,
            Needs::caps(register_and_list_services)
        ),
        case!(
            list_services_names_only_live_services,
            Needs::caps(expiring_and_list_services)
        ),
        case!(
            dotted_service_name_round_trips,
            Needs::caps(register_and_watch)
        ),
        case!(
            big_metadata_value_round_trips,
            Needs::caps(register_and_watch)
        ),
        case!(
            hundred_endpoints_round_trip,
            Needs::caps(register_and_watch)
        ),
        case!(longest_names_round_trip, Needs::caps(register_and_watch)),
        case!(unicode_round_trips, Needs::caps(register_and_watch)),
        case!(
            foreign_values_are_skipped_once,
            Needs::caps(register_and_watch).with_write_foreign()
        ),
    ]
}

/// Within how long a graceful deregister must show: well inside any TTL the suite uses.
pub const PROMPT: Duration = Duration::from_secs(2);

async fn next_within(watcher: &mut Watcher, within: Duration, what: &str) -> Instances {
    match tokio::time::timeout(within, watcher.next()).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => panic!("{what}: watcher failed: {e}"),
        Err(_) => panic!("{what}: no list within {within:?}"),
    }
}

/// 1. Register, then `get_service` returns exactly that instance with every field
///    round-tripped: several endpoints, unicode metadata, an empty version.
pub async fn register_round_trip(ctx: Arc<Ctx>) {
    let service = ctx.service("roundtrip");
    let instance = ServiceInstance {
        id: "instance-1".into(),
        name: service.clone(),
        version: String::new(),
        metadata: [
            ("region".to_owned(), "eu-west-1".to_owned()),
            ("greeting".to_owned(), "héllo wörld ✓ 你好 🚀".to_owned()),
            ("empty".to_owned(), String::new()),
        ]
        .into(),
        endpoints: vec![
            "http://127.0.0.1:8000".into(),
            "grpc://127.0.0.1:9000?isSecure=false".into(),
            "https://[::1]:8443?isSecure=true".into(),
        ],
    };
    ctx.register(&instance).await;
    let list = ctx
        .list_until(
            &service,
            ctx.deadline(),
            "registered instance listed",
            |l| !l.is_empty(),
        )
        .await;
    assert_eq!(
        list,
        vec![instance],
        "get_service must return exactly the registered instance"
    );
}

/// 2. Several instances and services stay apart; a service named `hello` never sees
///    `helloworld`.
pub async fn services_stay_apart(ctx: Arc<Ctx>) {
    let hello = ctx.service("hello");
    let helloworld = ctx.service("helloworld");
    let a = ctx.instance(&hello, "a");
    let b = ctx.instance(&hello, "b");
    let w = ctx.instance(&helloworld, "a");
    for i in [&a, &b, &w] {
        ctx.register(i).await;
    }
    let list = ctx
        .list_until(&hello, ctx.deadline(), "both hello instances", |l| {
            l.len() >= 2
        })
        .await;
    assert_eq!(
        list,
        vec![a, b],
        "`hello` must list its own two instances, sorted by id"
    );
    let list = ctx
        .list_until(
            &helloworld,
            ctx.deadline(),
            "the helloworld instance",
            |l| !l.is_empty(),
        )
        .await;
    assert_eq!(
        list,
        vec![w],
        "`helloworld` must list only its own instance"
    );

    if ctx.caps.list_services {
        let services = ctx.registry.list_services().await.expect("list_services");
        assert!(
            services.contains(&hello) && services.contains(&helloworld),
            "list_services must name both services: {services:?}"
        );
    }
}

/// 3. Deregister removes the instance; deregistering an unknown instance succeeds.
pub async fn deregister_removes(ctx: Arc<Ctx>) {
    let service = ctx.service("dereg");
    let a = ctx.instance(&service, "a");
    let b = ctx.instance(&service, "b");
    ctx.register(&a).await;
    ctx.register(&b).await;
    ctx.list_until(&service, ctx.deadline(), "two instances", |l| l.len() == 2)
        .await;
    ctx.deregister(&a).await;
    let list = ctx
        .list_until(&service, ctx.deadline(), "a removed", |l| l.len() == 1)
        .await;
    assert_eq!(list, vec![b.clone()], "only b must be left");

    // Unknown instance, unknown service, and the same instance twice: all succeed.
    ctx.deregister(&a).await;
    ctx.deregister(&ctx.instance(&service, "never-registered"))
        .await;
    ctx.deregister(&ctx.instance(&ctx.service("no-such-service"), "x"))
        .await;
    assert_eq!(ctx.list(&service).await, vec![b]);
}

/// 4. Re-registering the same id with new values replaces it in place.
pub async fn reregister_replaces(ctx: Arc<Ctx>) {
    let service = ctx.service("rereg");
    let first = ctx.instance(&service, "a");
    ctx.register(&first).await;
    ctx.list_until(&service, ctx.deadline(), "first version", |l| l.len() == 1)
        .await;

    let mut second = first.clone();
    second.version = "v2.0.0".into();
    second.metadata.insert("case".into(), "replaced".into());
    second.metadata.insert("added".into(), "yes".into());
    second.endpoints = vec!["grpc://127.0.0.2:9001".into()];
    ctx.register(&second).await;
    let list = ctx
        .list_until(&service, ctx.deadline(), "second version", |l| {
            l.iter().any(|i| i.version == "v2.0.0")
        })
        .await;
    assert_eq!(
        list,
        vec![second],
        "the new value must replace the old one, not sit beside it"
    );
}

/// 5. `get_service` of an unknown service returns an empty list.
pub async fn unknown_service_is_empty(ctx: Arc<Ctx>) {
    let list = ctx.list(&ctx.service("nobody-home")).await;
    assert!(list.is_empty(), "unknown service must be empty: {list:?}");
}

/// 6a. A watcher's first `next()` returns the current list, also when it is empty.
pub async fn watch_starts_with_current_list(ctx: Arc<Ctx>) {
    let empty = ctx.service("watch-empty");
    let mut watcher = ctx.registry.watch(&empty).await.expect("watch");
    let first = next_within(
        &mut watcher,
        ctx.deadline(),
        "first list of an empty service",
    )
    .await;
    assert!(
        first.is_empty(),
        "first list of an empty service: {first:?}"
    );

    let full = ctx.service("watch-full");
    let a = ctx.instance(&full, "a");
    ctx.register(&a).await;
    ctx.list_until(&full, ctx.deadline(), "a listed", |l| !l.is_empty())
        .await;
    let mut watcher = ctx.registry.watch(&full).await.expect("watch");
    let first = next_within(&mut watcher, ctx.deadline(), "first list").await;
    assert_eq!(first, vec![a], "the first list must be the current one");
}

/// Registers, updates and deregisters on `service`, asserting after each step that every
/// watcher's next list is exactly the new full list.
async fn change_sequence(ctx: &Ctx, service: &str, watchers: &mut [Watcher]) {
    let a = ctx.instance(service, "a");
    let mut a2 = a.clone();
    a2.metadata.insert("case".into(), "updated".into());
    let b = ctx.instance(service, "b");

    let steps: Vec<(&str, ServiceInstance, bool, Vec<ServiceInstance>)> = vec![
        ("register a", a.clone(), true, vec![a.clone()]),
        ("update a", a2.clone(), true, vec![a2.clone()]),
        ("register b", b.clone(), true, vec![a2.clone(), b.clone()]),
        ("deregister a", a2.clone(), false, vec![b.clone()]),
        ("deregister b", b.clone(), false, vec![]),
    ];
    for (what, instance, register, expected) in steps {
        if register {
            ctx.register(&instance).await;
        } else {
            ctx.deregister(&instance).await;
        }
        for (n, watcher) in watchers.iter_mut().enumerate() {
            let list = next_within(watcher, ctx.deadline(), what).await;
            assert_eq!(list, expected, "watcher {n} after {what}");
        }
    }
}

/// 6b. Each register, update and deregister yields the new full list.
pub async fn watch_sees_every_change(ctx: Arc<Ctx>) {
    let service = ctx.service("watch-seq");
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    assert!(next_within(&mut watcher, ctx.deadline(), "first list")
        .await
        .is_empty());
    change_sequence(&ctx, &service, std::slice::from_mut(&mut watcher)).await;
}

/// 6c. Two watchers of one service both see every change.
pub async fn two_watchers_see_every_change(ctx: Arc<Ctx>) {
    let service = ctx.service("watch-two");
    let mut watchers = vec![
        ctx.registry.watch(&service).await.expect("watch 1"),
        ctx.registry.watch(&service).await.expect("watch 2"),
    ];
    for w in &mut watchers {
        assert!(next_within(w, ctx.deadline(), "first list")
            .await
            .is_empty());
    }
    change_sequence(&ctx, &service, &mut watchers).await;
}

/// 6d. A watcher of another service sees nothing of this one's changes: the next list it
///     delivers is its own service's first change.
pub async fn watcher_of_other_service_sees_nothing(ctx: Arc<Ctx>) {
    // The quiet name is a prefix of the busy one: a prefix scan without a trailing separator
    // would read the busy service's changes.
    let quiet = ctx.service("watch-busy");
    let busy = ctx.service("watch-busyness");
    let mut watcher = ctx.registry.watch(&quiet).await.expect("watch");
    assert!(next_within(&mut watcher, ctx.deadline(), "first list")
        .await
        .is_empty());

    let mut busy_watcher = ctx.registry.watch(&busy).await.expect("watch");
    next_within(&mut busy_watcher, ctx.deadline(), "first list").await;
    change_sequence(&ctx, &busy, std::slice::from_mut(&mut busy_watcher)).await;
    if let Some(leaked) = watcher.next().now_or_never() {
        panic!("the quiet watcher delivered a list for another service's changes: {leaked:?}");
    }

    let own = ctx.instance(&quiet, "own");
    ctx.register(&own).await;
    let list = next_within(&mut watcher, ctx.deadline(), "own change").await;
    assert_eq!(
        list,
        vec![own],
        "the quiet watcher's next list must be its own first change"
    );
}

/// 6e. After `stop()`, `next()` fails with a typed error at once.
pub async fn watch_stop(ctx: Arc<Ctx>) {
    let service = ctx.service("watch-stop");
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    next_within(&mut watcher, ctx.deadline(), "first list").await;
    watcher.stop();
    match watcher.next().now_or_never() {
        Some(Err(Error::WatcherStopped)) => {}
        other => panic!("next() after stop() must fail at once with WatcherStopped: {other:?}"),
    }
}

/// 7. An instance registered with a short TTL is still listed after three TTLs while its
///    owner lives.
pub async fn keep_alive(ctx: Arc<Ctx>) {
    let owner = registry::connect(&ctx.short_ttl_url())
        .await
        .expect("connect with short TTL");
    let service = ctx.service("keepalive");
    let instance = ctx.instance(&service, "a");
    ctx.remember(&instance);
    owner.register(&instance).await.expect("register");
    ctx.list_until(&service, ctx.deadline(), "registered", |l| l.len() == 1)
        .await;

    let ttl = ctx.target.short_ttl;
    let until = tokio::time::Instant::now() + ttl * 3 + ctx.caps.expiry_slack;
    while tokio::time::Instant::now() < until {
        let list = ctx.list(&service).await;
        assert_eq!(
            list,
            vec![instance.clone()],
            "a live owner's instance must stay listed past its TTL"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    owner.deregister(&instance).await.expect("deregister");
}

/// An owner process of the `registry-owner` helper: it registers one instance through a URL
/// and holds it until told to deregister, until its stdin closes, or until it is killed.
pub struct OwnerProcess {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl OwnerProcess {
    /// Starts `bin URL INSTANCE_JSON` and waits until it reports the instance registered.
    pub async fn spawn(bin: &Path, url: &str, instance: &ServiceInstance) -> OwnerProcess {
        let mut child = Command::new(bin)
            .arg(url)
            .arg(instance.to_json())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut owner = OwnerProcess {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        owner.expect_line("registered").await;
        owner
    }

    /// Tells the owner to deregister, and waits until it has.
    pub async fn deregister(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(b"deregister\n")
            .await
            .expect("write to owner");
        stdin.flush().await.expect("flush owner stdin");
        self.expect_line("deregistered").await;
    }

    /// Freezes the owner (SIGSTOP): its heartbeats and keep-alives stop, as in a long GC pause
    /// or a suspended VM.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused owner (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the owner runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Kills the owner with SIGKILL (no chance to clean up) and reaps it.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL the owner");
        self.child.wait().await.expect("reap the owner");
    }

    async fn expect_line(&mut self, want: &str) {
        let line = tokio::time::timeout(crate::PROPAGATION, self.lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == want => {}
            other => panic!("owner process: expected {want:?}, got {other:?}"),
        }
    }
}

fn owner_bin(ctx: &Ctx) -> PathBuf {
    ctx.target.owner_bin.clone().unwrap_or_else(|| {
        panic!(
            "the {} backend is cross-process: its crash case needs Target::owner_bin",
            ctx.target.backend
        )
    })
}

/// 8. Crash expiry: an owner killed without deregistering leaves `get_service` and every
///    watcher within the TTL plus the backend's slack, counted from the kill. Cross-process
///    backends use an owner process killed with SIGKILL; in-process ones an owner handle
///    dropped without deregistering.
pub async fn crash_expiry(ctx: Arc<Ctx>) {
    let service = ctx.service("crash");
    let instance = ctx.instance(&service, "doomed");
    ctx.remember(&instance);
    let mut watchers = Vec::new();
    if ctx.caps.watch {
        for _ in 0..2 {
            let mut watcher = ctx.registry.watch(&service).await.expect("watch");
            assert!(next_within(&mut watcher, ctx.deadline(), "first list")
                .await
                .is_empty());
            watchers.push(watcher);
        }
    }

    enum Crash {
        Process(Box<OwnerProcess>),
        Handle(Arc<dyn registry::Registry>),
    }
    let owner = if ctx.caps.cross_process {
        Crash::Process(Box::new(
            OwnerProcess::spawn(&owner_bin(&ctx), &ctx.short_ttl_url(), &instance).await,
        ))
    } else {
        let owner = registry::connect(&ctx.short_ttl_url())
            .await
            .expect("connect owner");
        owner.register(&instance).await.expect("register");
        Crash::Handle(owner)
    };
    for watcher in &mut watchers {
        let listed = next_within(watcher, ctx.deadline(), "owner's instance appears").await;
        assert_eq!(listed, vec![instance.clone()]);
    }
    ctx.list_until(&service, ctx.deadline(), "owner's instance listed", |l| {
        l.len() == 1
    })
    .await;

    let killed_at = tokio::time::Instant::now();
    match owner {
        Crash::Process(process) => process.kill().await,
        Crash::Handle(handle) => drop(handle), // the in-process crash: no deregister
    }
    let limit = ctx.target.short_ttl + ctx.caps.expiry_slack;
    for watcher in &mut watchers {
        let left = limit.saturating_sub(killed_at.elapsed());
        let gone = next_within(
            watcher,
            left,
            "crashed owner's instance leaves every watcher",
        )
        .await;
        assert!(
            gone.is_empty(),
            "the watcher must drop the crashed owner's instance: {gone:?}"
        );
    }
    let left = limit.saturating_sub(killed_at.elapsed());
    ctx.list_until(
        &service,
        left,
        "crashed owner's instance leaves get_service",
        |l| l.is_empty(),
    )
    .await;
    // A client connected after the crash knows nothing of the instance either.
    let fresh = ctx.connect().await;
    let list = fresh.get_service(&service).await.expect("get_service");
    assert!(
        list.is_empty(),
        "a fresh client lists the crashed owner's instance: {list:?}"
    );
}

/// 8b. A graceful deregister by the owner removes its instance at once (well inside the TTL).
pub async fn graceful_deregister_is_prompt(ctx: Arc<Ctx>) {
    let service = ctx.service("graceful");
    let instance = ctx.instance(&service, "leaving");
    ctx.remember(&instance);
    if ctx.caps.cross_process {
        let mut owner =
            OwnerProcess::spawn(&owner_bin(&ctx), &ctx.short_ttl_url(), &instance).await;
        ctx.list_until(&service, ctx.deadline(), "owner's instance listed", |l| {
            l.len() == 1
        })
        .await;
        owner.deregister().await;
    } else {
        let owner = registry::connect(&ctx.short_ttl_url())
            .await
            .expect("connect owner");
        owner.register(&instance).await.expect("register");
        ctx.list_until(&service, ctx.deadline(), "owner's instance listed", |l| {
            l.len() == 1
        })
        .await;
        owner.deregister(&instance).await.expect("deregister");
    }
    ctx.list_until(
        &service,
        PROMPT,
        "gracefully deregistered instance gone",
        |l| l.is_empty(),
    )
    .await;
}

/// 9. Fifty instances registered concurrently are all listed; fifty concurrent deregisters
///    leave none.
pub async fn concurrent_fifty(ctx: Arc<Ctx>) {
    let service = ctx.service("fifty");
    let instances: Vec<ServiceInstance> = (0..50)
        .map(|n| ctx.instance(&service, &format!("i{n:02}")))
        .collect();
    futures::future::join_all(instances.iter().map(|i| ctx.register(i))).await;
    let list = ctx
        .list_until(&service, ctx.deadline(), "all fifty listed", |l| {
            l.len() == 50
        })
        .await;
    assert_eq!(list, instances, "exactly the fifty instances, sorted by id");

    futures::future::join_all(instances.iter().map(|i| ctx.deregister(i))).await;
    ctx.list_until(&service, ctx.deadline(), "none left", |l| l.is_empty())
        .await;
}

/// 10. An invalid name, id or endpoint gets a typed error and writes nothing.
pub async fn bad_input_is_refused(ctx: Arc<Ctx>) {
    let service = ctx.service("badinput");
    let good = ctx.instance(&service, "good");
    let services_before = if ctx.caps.list_services {
        Some(ctx.registry.list_services().await.expect("list_services"))
    } else {
        None
    };
    let mut bad = Vec::new();
    for id in ["", "has space", "a/b", "..", "ünïcode"] {
        bad.push(ServiceInstance {
            id: id.into(),
            ..good.clone()
        });
    }
    for endpoint in [
        "127.0.0.1:9000",
        "grpc://:9000",
        "grpc://127.0.0.1",
        "nonsense",
    ] {
        bad.push(ServiceInstance {
            endpoints: vec![endpoint.into()],
            ..good.clone()
        });
    }
    for instance in &bad {
        match ctx.registry.register(instance).await {
            Err(e @ Error::InvalidInput { .. }) => assert!(!e.is_temporary()),
            other => panic!("register {instance:?} must fail with InvalidInput: {other:?}"),
        }
    }
    for name in ["", "bad/name", "bad name", "../etc", "ns:name"] {
        let instance = ServiceInstance {
            name: name.into(),
            ..good.clone()
        };
        assert!(
            matches!(
                ctx.registry.register(&instance).await,
                Err(Error::InvalidInput { .. })
            ),
            "register with name {name:?}"
        );
        assert!(
            matches!(
                ctx.registry.get_service(name).await,
                Err(Error::InvalidInput { .. })
            ),
            "get_service({name:?})"
        );
        assert!(
            matches!(
                ctx.registry.watch(name).await,
                Err(Error::InvalidInput { .. })
            ),
            "watch({name:?})"
        );
    }
    // Nothing was written: no service appeared, and a valid instance registered afterwards is
    // the only one listed.
    // (Other cases run at the same time in the same registry: look only at the names the
    // refused registrations could have created.)
    if let Some(before) = services_before {
        let after = ctx.registry.list_services().await.expect("list_services");
        assert!(!before.contains(&service), "{service} existed before");
        for name in after.iter() {
            assert!(
                name != &service
                    && !["bad/name", "bad name", "../etc", "ns:name"].contains(&name.as_str()),
                "refused registrations must not create services: {name} in {after:?}"
            );
        }
    }
    ctx.register(&good).await;
    let list = ctx
        .list_until(&service, ctx.deadline(), "the good instance", |l| {
            !l.is_empty()
        })
        .await;
    assert_eq!(
        list,
        vec![good],
        "refused instances must not have been written"
    );
}

/// 8c. An owner frozen (SIGSTOP) for longer than its TTL leaves a watcher and `get_service`
///     within the TTL plus the slack, counted from the freeze; thawed, it registers again by itself and is listed
///     again, seen by the same watcher (cross-process backends with TTL expiry).
pub async fn paused_owner_leaves_and_returns(ctx: Arc<Ctx>) {
    let service = ctx.service("paused");
    let instance = ctx.instance(&service, "sleepy");
    ctx.remember(&instance);
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    assert!(next_within(&mut watcher, ctx.deadline(), "first list")
        .await
        .is_empty());
    let mut owner = OwnerProcess::spawn(&owner_bin(&ctx), &ctx.short_ttl_url(), &instance).await;
    assert_eq!(
        next_within(&mut watcher, ctx.deadline(), "owner's instance appears").await,
        vec![instance.clone()]
    );

    owner.pause();
    let limit = ctx.target.short_ttl + ctx.caps.expiry_slack;
    let gone = next_within(&mut watcher, limit, "the frozen owner's instance leaves").await;
    assert!(gone.is_empty(), "listed after its owner froze: {gone:?}");
    assert!(ctx.list(&service).await.is_empty());

    owner.resume();
    let back = next_within(
        &mut watcher,
        ctx.deadline(),
        "the thawed owner registers again",
    )
    .await;
    assert_eq!(back, vec![instance.clone()]);
    ctx.list_until(&service, ctx.deadline(), "listed again", |l| {
        l == [instance.clone()]
    })
    .await;
    let fresh = ctx.connect().await;
    list_until(
        fresh.as_ref(),
        &service,
        ctx.deadline(),
        "a fresh client lists the thawed owner's instance",
        |l| l == [instance.clone()],
    )
    .await;
    owner.deregister().await;
    owner.kill().await;
}

/// How long the final truth may take to show once a broken server answers again: the
/// re-registration back-off, a new session, the watch's reconnection.
pub const RECOVERY: Duration = Duration::from_secs(30);

/// What happens to the server (or to the registration on it) in a fault case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Killed and started again with its data.
    Restart,
    /// Killed, its data deleted, started again empty.
    Wipe,
    /// Frozen (SIGSTOP) for twice the short TTL, then thawed.
    PausePastTtl,
    /// The registration deleted with the server's raw client.
    DeleteOutside,
}

/// A registration lives through `fault`: afterwards it is back (or never left), listed
/// exactly once with its latest value, seen through a client connected after the fault and
/// through a watcher created before it, which also follows a change made after recovery.
///
/// Through an outage of the server (every fault but `DeleteOutside`) that watcher never fails
/// or ends, and comes back to the true list (after `Recovered`, when it was told of the
/// outage). For a pause it must be told (`Degraded`) while the server is still frozen; that a
/// restart or a wipe is told is [`restart_is_told_to_watchers`] and
/// [`wipe_is_told_to_watchers`], for backends that claim `reports_every_outage`.
async fn survives(ctx: Arc<Ctx>, fault: Fault) {
    let service = ctx.service("fault");
    let owner = ctx.connect_short_ttl().await;
    let first = ctx.instance(&service, "a");
    owner.register(&first).await.expect("register");
    // The latest value is an update: a re-registration must write this one, not the first.
    let mut latest = first.clone();
    latest.metadata.insert("case".into(), "latest".into());
    latest.version = "v1.0.1".into();
    owner.register(&latest).await.expect("update");
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&latest), ctx.deadline()).await;

    let mut seen = Seen::new(std::slice::from_ref(&latest));
    match fault {
        Fault::Restart => ctx.server().await.restart().await,
        Fault::Wipe => ctx.server().await.wipe().await,
        Fault::PausePastTtl => {
            let mut server = ctx.server().await;
            server.pause().await;
            // The watcher hears of the outage while the server is still frozen.
            degraded_within(
                &mut watcher,
                ctx.deadline(),
                "a watcher of a frozen server is told (Degraded) while it is frozen",
                &mut seen,
            )
            .await;
            // The fault itself: the server frozen for longer than the registration's TTL.
            let frozen_for = ctx.target.short_ttl * 2 + Duration::from_millis(500);
            tokio::time::sleep_until(seen.since + frozen_for).await;
            server.resume().await;
            seen.note("server resumed");
        }
        Fault::DeleteOutside => ctx.delete_outside(&latest).await,
    }
    if matches!(fault, Fault::Restart | Fault::Wipe) {
        seen.note("server answers again");
    }

    // The registration is back (or never left), seen by a client that knows nothing of it.
    let fresh = ctx.connect().await;
    list_until(
        fresh.as_ref(),
        &service,
        RECOVERY,
        "the registration is back, once, with its latest value, for a fresh client",
        |l| l == [latest.clone()],
    )
    .await;
    if fault != Fault::DeleteOutside {
        seen.note("a fresh client lists the registration");
        recovers_to(
            &mut watcher,
            std::slice::from_ref(&latest),
            RECOVERY,
            "the watcher from before the fault recovers (Recovered) with the true list",
            &mut seen,
        )
        .await;
        tracing::info!(
            backend = ctx.target.backend,
            ?fault,
            "the watcher delivered: {seen}"
        );
    }

    // The watcher from before the fault still follows: a change made after recovery shows
    // it the whole list after the fault.
    let other = ctx.instance(&service, "b");
    fresh
        .register(&other)
        .await
        .expect("register after the fault");
    watcher_reaches(&mut watcher, &[latest.clone(), other.clone()], RECOVERY).await;
    fresh
        .deregister(&other)
        .await
        .expect("deregister after the fault");
    watcher_reaches(&mut watcher, std::slice::from_ref(&latest), RECOVERY).await;

    // The owner still holds it, and says so.
    let mut status = owner
        .registration(&latest.name, &latest.id)
        .expect("the owner still holds the registration after the fault");
    within(
        RECOVERY,
        "the owner's registration reports Registered",
        status.wait_for(RegistrationState::is_registered),
    )
    .await
    .expect("the registration ended");

    // Its deregister removes it for everyone.
    owner.deregister(&latest).await.expect("deregister");
    watcher_reaches(&mut watcher, &[], RECOVERY).await;
    list_until(
        fresh.as_ref(),
        &service,
        ctx.deadline(),
        "the deregistered instance leaves a fresh client",
        |l| l.is_empty(),
    )
    .await;
}

/// 11a. The server killed and restarted with its data: the registration is there afterwards,
///      once, with its latest value (through a fresh client and a watcher from before).
pub async fn server_restarted_with_its_data(ctx: Arc<Ctx>) {
    survives(ctx, Fault::Restart).await;
}

/// 11b. The server restarted with its data wiped: the owner writes its registration again.
pub async fn server_wiped(ctx: Arc<Ctx>) {
    survives(ctx, Fault::Wipe).await;
}

/// 11c. The server frozen for longer than the TTL: afterwards the registration is there,
///      written again if it expired.
pub async fn server_paused_past_the_ttl(ctx: Arc<Ctx>) {
    survives(ctx, Fault::PausePastTtl).await;
}

/// A watcher created before `fault` (a restart or a wipe) is told of the outage
/// (`Degraded`), then recovers (`Recovered`) with the true list.
async fn outage_is_told(ctx: Arc<Ctx>, fault: Fault) {
    let service = ctx.service("told");
    let instance = ctx.instance(&service, "a");
    ctx.register(&instance).await;
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    watcher_reaches(
        &mut watcher,
        std::slice::from_ref(&instance),
        ctx.deadline(),
    )
    .await;
    let mut seen = Seen::new(std::slice::from_ref(&instance));
    match fault {
        Fault::Restart => ctx.server().await.restart().await,
        Fault::Wipe => ctx.server().await.wipe().await,
        other => panic!("outage_is_told covers a restart or a wipe, not {other:?}"),
    }
    seen.note("server answers again");
    degraded_within(
        &mut watcher,
        ctx.deadline(),
        "a watcher from before the fault is told of the outage (Degraded)",
        &mut seen,
    )
    .await;
    recovers_to(
        &mut watcher,
        std::slice::from_ref(&instance),
        RECOVERY,
        "the watcher from before the fault recovers (Recovered) with the true list",
        &mut seen,
    )
    .await;
}

/// 11e. A watcher from before a server restart is told of it (`Degraded`), then recovers.
pub async fn restart_is_told_to_watchers(ctx: Arc<Ctx>) {
    outage_is_told(ctx, Fault::Restart).await;
}

/// 11f. A watcher from before a server wipe is told of it (`Degraded`), then recovers.
pub async fn wipe_is_told_to_watchers(ctx: Arc<Ctx>) {
    outage_is_told(ctx, Fault::Wipe).await;
}

/// 11d. The registration deleted behind the owner's back with the server's raw client: the
///      owner writes it again.
pub async fn deleted_from_outside(ctx: Arc<Ctx>) {
    survives(ctx, Fault::DeleteOutside).await;
}

/// Awaits `future`, failing the case with `what` after `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Checks `get_service(service)` through `registry` every 100 ms for `window`, failing the
/// case with `what` the first time `check` does not hold.
async fn list_holds(
    registry: &dyn Registry,
    service: &str,
    window: Duration,
    what: &str,
    check: impl Fn(&[ServiceInstance]) -> bool,
) {
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        let list = registry
            .get_service(service)
            .await
            .unwrap_or_else(|e| panic!("{what}: get_service {service}: {e}"));
        assert!(check(&list), "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 12. The registration's state follows a server that loses it: wiped, the state passes
///     through `Lost` and comes back to `Registered`, and the instance is listed again.
///     (A restart that keeps the data does not lose a registration on every backend: etcd
///     keeps the lease; a wipe loses it everywhere.)
pub async fn state_follows_a_server_wipe(ctx: Arc<Ctx>) {
    let service = ctx.service("state");
    let owner = ctx.connect_short_ttl().await;
    let instance = ctx.instance(&service, "a");
    owner.register(&instance).await.expect("register");
    let mut status = owner
        .registration(&service, &instance.id)
        .expect("a registered instance is held by its handle");
    within(
        ctx.deadline(),
        "Registered after register",
        status.wait_for(RegistrationState::is_registered),
    )
    .await
    .expect("the registration ended");

    // Every state seen from now on, in order.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = {
        let seen = seen.clone();
        let mut status = status.clone();
        tokio::spawn(async move {
            let mut lost = false;
            while let Some(state) = status.changed().await {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{state:?}"));
                lost |= state.is_lost();
                if lost && state.is_registered() {
                    return;
                }
            }
        })
    };

    ctx.server().await.wipe().await;

    let recorded = tokio::time::timeout(RECOVERY, recorder).await;
    let states = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the state recorder failed: {e}; states seen: {states:?}"),
        Err(_) => panic!(
            "the state did not pass through Lost back to Registered within {RECOVERY:?} of the \
             wipe; states seen: {states:?}, now {:?}",
            status.get()
        ),
    }
    assert!(
        !states.iter().any(|s| s.starts_with("Deregistered")),
        "a lost registration is written again, never given up: {states:?}"
    );

    let fresh = ctx.connect().await;
    list_until(
        fresh.as_ref(),
        &service,
        RECOVERY,
        "listed again after the wipe",
        |l| l == [instance.clone()],
    )
    .await;
    owner.deregister(&instance).await.expect("deregister");
    assert!(
        matches!(status.get(), RegistrationState::Deregistered),
        "Deregistered once deregister returned: {:?}",
        status.get()
    );
    assert!(owner.registration(&service, &instance.id).is_none());
}

/// 13. Many register and deregister calls of one id from several tasks at once, then one
///     last call: the registry ends in the state of the last call, seen through a fresh
///     client, and the handle's `registration` agrees.
pub async fn concurrent_register_and_deregister_end_with_the_last_call(ctx: Arc<Ctx>) {
    let service = ctx.service("storm");
    let handle = ctx.connect().await;
    let base = ctx.instance(&service, "x");
    let fresh = ctx.connect().await;
    for last_is_register in [true, false, true] {
        let storm: Vec<_> = (0..4)
            .map(|task| {
                let handle = handle.clone();
                let base = base.clone();
                tokio::spawn(async move {
                    for call in 0..10 {
                        let mut value = base.clone();
                        value
                            .metadata
                            .insert("call".into(), format!("{task}-{call}"));
                        let result = if (task + call) % 2 == 0 {
                            handle.register(&value).await
                        } else {
                            handle.deregister(&value).await
                        };
                        if let Err(e) = result {
                            panic!("call {task}-{call} failed: {e}");
                        }
                    }
                })
            })
            .collect();
        for task in futures::future::join_all(storm).await {
            if let Err(e) = task {
                std::panic::resume_unwind(e.into_panic());
            }
        }

        let mut last = base.clone();
        last.metadata.insert("call".into(), "last".into());
        if last_is_register {
            handle.register(&last).await.expect("the last register");
            list_until(
                fresh.as_ref(),
                &service,
                ctx.deadline(),
                "the last register's value, once",
                |l| l == [last.clone()],
            )
            .await;
            let mut status = handle
                .registration(&service, &last.id)
                .expect("the handle holds the registration of its last register");
            within(
                ctx.deadline(),
                "Registered after the last register",
                status.wait_for(RegistrationState::is_registered),
            )
            .await
            .expect("the registration ended");
            // No call of the storm lands after the last one.
            list_holds(
                fresh.as_ref(),
                &service,
                Duration::from_secs(1),
                "the last register's value stays",
                |l| l == [last.clone()],
            )
            .await;
        } else {
            handle.deregister(&last).await.expect("the last deregister");
            list_until(
                fresh.as_ref(),
                &service,
                ctx.deadline(),
                "nothing after the last deregister",
                |l| l.is_empty(),
            )
            .await;
            assert!(
                handle.registration(&service, &last.id).is_none(),
                "the handle holds nothing after its last deregister"
            );
            list_holds(
                fresh.as_ref(),
                &service,
                Duration::from_secs(1),
                "nothing comes back after the last deregister",
                |l| l.is_empty(),
            )
            .await;
        }
    }
    handle.close().await.expect("close");
}

/// 14. A handle cannot deregister an instance another handle registered: the call fails with
///     `Error::NotOwned` and the instance stays listed. Deregistering an instance listed
///     nowhere succeeds.
pub async fn deregister_of_another_owners_instance_is_refused(ctx: Arc<Ctx>) {
    let service = ctx.service("owned");
    let owner = ctx.connect().await;
    let other = ctx.connect().await;
    let instance = ctx.instance(&service, "x");
    owner.register(&instance).await.expect("register");
    ctx.list_until(&service, ctx.deadline(), "listed", |l| {
        l == [instance.clone()]
    })
    .await;

    match other.deregister(&instance).await {
        Err(Error::NotOwned { name, id }) => {
            assert_eq!(
                (name.as_str(), id.as_str()),
                (service.as_str(), instance.id.as_str())
            );
        }
        other => {
            panic!("deregister of another owner's instance must fail with NotOwned: {other:?}")
        }
    }
    assert_eq!(
        ctx.list(&service).await,
        vec![instance.clone()],
        "the refused deregister changed nothing"
    );
    let fresh = ctx.connect().await;
    assert_eq!(
        fresh.get_service(&service).await.expect("get_service"),
        vec![instance.clone()],
        "a fresh client still lists it"
    );
    assert!(other.registration(&service, &instance.id).is_none());
    assert!(owner.registration(&service, &instance.id).is_some());

    let nowhere = ctx.instance(&service, "nowhere");
    other
        .deregister(&nowhere)
        .await
        .expect("deregistering an instance listed nowhere succeeds");

    owner
        .deregister(&instance)
        .await
        .expect("the owner deregisters");
    ctx.list_until(&service, PROMPT, "the owner's deregister", |l| l.is_empty())
        .await;
}

/// 15. `close()` deregisters everything its handle registered: all gone from a fresh client
///     within 2 s; the handle holds nothing and refuses to register.
pub async fn close_deregisters_everything(ctx: Arc<Ctx>) {
    let service = ctx.service("close");
    let handle = ctx.connect().await;
    let instances: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| ctx.instance(&service, id))
        .collect();
    for instance in &instances {
        handle.register(instance).await.expect("register");
    }
    ctx.list_until(&service, ctx.deadline(), "all three listed", |l| {
        l == instances.as_slice()
    })
    .await;

    handle.close().await.expect("close");
    let fresh = ctx.connect().await;
    list_until(
        fresh.as_ref(),
        &service,
        PROMPT,
        "a closed handle's instances leave a fresh client",
        |l| l.is_empty(),
    )
    .await;
    for instance in &instances {
        assert!(
            handle.registration(&service, &instance.id).is_none(),
            "a closed handle holds nothing"
        );
    }
    match handle.register(&instances[0]).await {
        Err(Error::Closed) => {}
        other => panic!("register after close must fail with Closed: {other:?}"),
    }
}

/// 16. A `register` future dropped at any point leaves either nothing (not listed, and
///     `registration` is `None`) or a registration the handle holds (listed, `registration`
///     is `Some`), which `deregister` and `close` remove. Never listed but untracked.
pub async fn dropped_register_leaves_nothing_or_a_tracked_registration(ctx: Arc<Ctx>) {
    let service = ctx.service("dropped");
    let handle = ctx.connect().await;
    let delays_ms = [0u64, 1, 2, 5, 10, 20, 50, 100, 200];
    let mut tracked = Vec::new();
    for (n, delay) in delays_ms.iter().enumerate() {
        let instance = ctx.instance(&service, &format!("d{n}"));
        let finished =
            tokio::time::timeout(Duration::from_millis(*delay), handle.register(&instance)).await;
        let held = handle.registration(&service, &instance.id).is_some();
        if let Ok(result) = finished {
            result.unwrap_or_else(|e| panic!("register {}: {e}", instance.id));
            assert!(held, "a finished register is held by its handle");
        }
        tracked.push((instance, held));
    }

    // The held ones show up; the others never do.
    let fresh = ctx.connect().await;
    let held: Vec<ServiceInstance> = tracked
        .iter()
        .filter(|(_, held)| *held)
        .map(|(i, _)| i.clone())
        .collect();
    let untracked: Vec<String> = tracked
        .iter()
        .filter(|(_, held)| !*held)
        .map(|(i, _)| i.id.clone())
        .collect();
    let never_untracked = |l: &[ServiceInstance]| !l.iter().any(|i| untracked.contains(&i.id));
    list_until(
        fresh.as_ref(),
        &service,
        ctx.deadline(),
        "exactly the held registrations listed",
        |l| {
            assert!(
                never_untracked(l),
                "a dropped register that the handle does not hold was written: {l:#?}"
            );
            l == held.as_slice()
        },
    )
    .await;
    list_holds(
        fresh.as_ref(),
        &service,
        Duration::from_secs(2),
        "a dropped register that the handle does not hold is never written",
        |l| l == held.as_slice(),
    )
    .await;
    for (instance, was_held) in &tracked {
        assert_eq!(
            handle.registration(&service, &instance.id).is_some(),
            *was_held,
            "{}: held after the drop, held now",
            instance.id
        );
    }

    // Half go by deregister, the rest by close.
    for instance in held.iter().step_by(2) {
        handle.deregister(instance).await.expect("deregister");
        assert!(handle.registration(&service, &instance.id).is_none());
    }
    handle.close().await.expect("close");
    list_until(
        fresh.as_ref(),
        &service,
        PROMPT,
        "nothing left after deregister and close",
        |l| l.is_empty(),
    )
    .await;
}

/// What a watcher delivered during a case, each event with when it came (counted from the
/// fault), for failure messages; and where the watcher stands now.
struct Seen {
    since: Instant,
    log: Vec<String>,
    /// The last list delivered.
    list: Vec<ServiceInstance>,
    /// Told `Degraded`, not yet `Recovered`.
    degraded: bool,
}

impl Seen {
    /// Starts counting now, from a watcher that delivered `list` last.
    fn new(list: &[ServiceInstance]) -> Seen {
        Seen {
            since: Instant::now(),
            log: Vec::new(),
            list: list.to_vec(),
            degraded: false,
        }
    }

    /// Notes what the case did, among the events.
    fn note(&mut self, what: impl std::fmt::Display) {
        let at = self.since.elapsed().as_millis();
        self.log.push(format!("+{at}ms {what}"));
    }

    fn record(&mut self, event: &WatchEvent) {
        match event {
            WatchEvent::Changed(list) => {
                self.list = list.to_vec();
                let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
                self.note(format_args!("Changed({ids:?})"));
            }
            WatchEvent::Degraded(e) => {
                self.degraded = true;
                self.note(format_args!("Degraded({e})"));
            }
            WatchEvent::Recovered => {
                self.degraded = false;
                self.note("Recovered");
            }
            other => self.note(format_args!("{other:?}")),
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.log.join(", "))
    }
}

/// The watcher's next event before `deadline`, recorded in `seen`. Fails the case when the
/// watcher fails or ends (it never does on its own) or the deadline passes.
async fn next_event_before(
    watcher: &mut Watcher,
    deadline: Instant,
    what: &str,
    seen: &mut Seen,
) -> WatchEvent {
    match tokio::time::timeout_at(deadline, watcher.next_event()).await {
        Ok(Ok(event)) => {
            seen.record(&event);
            event
        }
        Ok(Err(e)) => panic!(
            "{what}: the watcher failed with {e:?}, but a watcher never ends on its own; it \
             delivered: {seen}"
        ),
        Err(_) => panic!("{what}: not in time; the watcher delivered: {seen}"),
    }
}

/// Reads events until the watcher is told of an outage (`Degraded`), within `within`.
async fn degraded_within(watcher: &mut Watcher, within: Duration, what: &str, seen: &mut Seen) {
    let deadline = Instant::now() + within;
    let what = format!("{what} (within {within:?})");
    loop {
        if let WatchEvent::Degraded(_) = next_event_before(watcher, deadline, &what, seen).await {
            return;
        }
    }
}

/// Reads events until the watcher is no longer degraded and its list is `truth`, within
/// `within`.
async fn recovers_to(
    watcher: &mut Watcher,
    truth: &[ServiceInstance],
    within: Duration,
    what: &str,
    seen: &mut Seen,
) {
    let deadline = Instant::now() + within;
    let ids: Vec<&str> = truth.iter().map(|i| i.id.as_str()).collect();
    let what = format!("{what} ({ids:?}, within {within:?})");
    while seen.degraded || seen.list != truth {
        next_event_before(watcher, deadline, &what, seen).await;
    }
}

/// How long `watch()` waits for a first list in [`first_list_deadline`].
const WATCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How much later than its `watch_timeout` a failing `watch()` may return.
const WATCH_TIMEOUT_SLACK: Duration = Duration::from_secs(2);

/// 17. `watch()` fails with a typed, temporary error when the first list cannot come within
///     its `watch_timeout` (the server frozen), and no later than that plus 2 s; once the
///     server is back, a watch works and starts with the true list.
pub async fn first_list_deadline(ctx: Arc<Ctx>) {
    let service = ctx.service("first-list");
    let instance = ctx.instance(&service, "a");
    ctx.register(&instance).await;
    ctx.list_until(&service, ctx.deadline(), "listed", |l| {
        l == [instance.clone()]
    })
    .await;
    let url = ctx.url_with(&format!("watch_timeout={}s", WATCH_TIMEOUT.as_secs()));
    let client = registry::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));

    ctx.server().await.pause().await;
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(WATCH_TIMEOUT + WATCH_TIMEOUT_SLACK, client.watch(&service)).await;
    let took = started.elapsed();
    // Thawed before anything is asserted: the case's clean-up needs the server.
    ctx.server().await.resume().await;
    match outcome {
        Ok(Err(e)) if e.is_temporary() => {
            tracing::info!(error = ?e, ?took, "watch of a frozen server failed as it must")
        }
        Ok(Err(e)) => panic!(
            "watch() of a frozen server must fail with a temporary error (Timeout, \
             Unavailable): it failed with a permanent one after {took:?}: {e:?}"
        ),
        Ok(Ok(watcher)) => {
            panic!("watch() of a frozen server returned a watcher after {took:?}: {watcher:?}")
        }
        Err(_) => panic!(
            "watch() with watch_timeout={WATCH_TIMEOUT:?} of a frozen server did not return \
             within {:?}",
            WATCH_TIMEOUT + WATCH_TIMEOUT_SLACK
        ),
    }

    // The server answers again: a watch works, and starts with the true list.
    let deadline = Instant::now() + RECOVERY;
    let mut watcher = loop {
        match client.watch(&service).await {
            Ok(watcher) => break watcher,
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                tracing::debug!(error = %e, "watch after the resume: not yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("watch() after the server resumed (within {RECOVERY:?}): {e:?}"),
        }
    };
    let first = next_within(&mut watcher, ctx.deadline(), "first list after the resume").await;
    assert_eq!(first, vec![instance], "the first list after the resume");
    watcher.stop();
    client.close().await.expect("close");
}

/// How many local watchers [`thousand_watchers`] starts.
const THOUSAND: usize = 1000;

/// The server's count of watches once it holds still: read every 100 ms until ten reads in a
/// row agree (a server may start watches of its own soon after it starts, as Consul's dev
/// agent does), failing after `within`.
async fn watch_count_now(ctx: &Ctx, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut reads: Vec<u64> = Vec::new();
    loop {
        reads.push(ctx.upstream_count().await.watches);
        if let Some(last) = reads.last_chunk::<10>() {
            if last.iter().all(|c| *c == last[0]) {
                return last[0];
            }
        }
        assert!(
            Instant::now() < deadline,
            "the {} server's watch count does not hold still within {within:?}: {reads:?}",
            ctx.target.backend
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the server's count of watches until it is `expected`, failing with `what` after
/// `within`; then checks for 1 s that it never exceeds it.
async fn watch_count_settles_at(ctx: &Ctx, expected: u64, within: Duration, what: &str) {
    let backend = ctx.target.backend;
    let deadline = Instant::now() + within;
    let mut reads = Vec::new();
    loop {
        let count = ctx.upstream_count().await.watches;
        reads.push(count);
        if count == expected {
            tracing::info!(backend, ?reads, "{what}: the server's watch count");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the {backend} server's watch count is not {expected} within {within:?}; \
             reads: {reads:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let count = ctx.upstream_count().await.watches;
        assert!(
            count <= expected,
            "{what}: the {backend} server's watch count went to {count}, above {expected}"
        );
    }
}

/// 1,000 local watchers of one service: each starts with the current list and sees every
/// change (register, update, register another, deregister both).
///
/// With `counted`, by the server's own counts ([`Ctx::upstream_count`]): its watches go up by
/// one for the first watcher and stay there for the other 999; where the server keeps one
/// watch per connection however often it is asked (ZooKeeper, Nacos), the requests it
/// received while the other 999 started are also fewer than one per ten watchers.
/// (A watch count may dip between two requests of one watch, as Consul's blocking queries
/// do: after it reached one more, it may not exceed it.)
async fn thousand_watchers(ctx: &Ctx, service: &str, counted: bool) {
    let backend = ctx.target.backend;
    let before = if counted {
        let count = watch_count_now(ctx, ctx.deadline()).await;
        tracing::info!(backend, count, "the server's watch count before watching");
        Some(count)
    } else {
        None
    };
    let mut requests_at_first = None;
    let mut watchers = Vec::with_capacity(THOUSAND);
    for n in 0..THOUSAND {
        let mut watcher = ctx
            .registry
            .watch(service)
            .await
            .unwrap_or_else(|e| panic!("watch {n}: {e}"));
        let first = next_within(&mut watcher, ctx.deadline(), "first list").await;
        assert!(first.is_empty(), "watcher {n}'s first list: {first:?}");
        watchers.push(watcher);
        if let (Some(before), 0) = (before, n) {
            watch_count_settles_at(
                ctx,
                before + 1,
                ctx.deadline(),
                "one watcher: one upstream watch more than before",
            )
            .await;
            requests_at_first = ctx.upstream_count().await.requests;
        }
    }
    if let Some(before) = before {
        if let Some(at_first) = requests_at_first {
            let now = ctx
                .upstream_count()
                .await
                .requests
                .expect("the hook counted requests before");
            let more = now.saturating_sub(at_first);
            tracing::info!(
                backend,
                at_first,
                now,
                "requests while 999 more watchers started"
            );
            assert!(
                more < (THOUSAND / 10) as u64,
                "999 more watchers of one service cost the {backend} server {more} requests \
                 ({at_first} -> {now}): they must share the first one's upstream watch"
            );
        }
        watch_count_settles_at(
            ctx,
            before + 1,
            ctx.deadline(),
            "1,000 watchers of one service: still one upstream watch more than before, not 1,000",
        )
        .await;
    }
    change_sequence(ctx, service, &mut watchers).await;
}

/// 18a. 1,000 local watchers of one service each see every change.
pub async fn thousand_watchers_see_every_change(ctx: Arc<Ctx>) {
    thousand_watchers(&ctx, &ctx.service("thousand"), false).await;
}

/// 18b. 1,000 local watchers of one service share one upstream watch, by the server's own
///      counts, on a server of the case's own: one watch more than before the first watcher,
///      and still one with all 1,000 (etcd's MVCC watchers, Consul's blocking queries,
///      ZooKeeper's `wchs`, the connections rnacos lists as subscribers); where the
///      server keeps one watch per connection however often it is asked (ZooKeeper, rnacos),
///      also fewer than 100 requests (ZooKeeper's packets, rnacos' gRPC requests) while the
///      other 999 start. Each sees every change. A target whose server exposes no count
///      reports it ignored (the memory backend has no server:
///      [`thousand_watchers_see_every_change`] covers its watchers, not an upstream count).
pub async fn thousand_watchers_share_one_upstream_watch(ctx: Arc<Ctx>) {
    thousand_watchers(&ctx, &ctx.service("thousand"), true).await;
}

/// Polls `list_services` until `check` holds, failing with `what` after `within`.
async fn services_until(
    registry: &dyn Registry,
    within: Duration,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let services = registry
            .list_services()
            .await
            .unwrap_or_else(|e| panic!("{what}: list_services: {e}"));
        if check(&services) {
            return services;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last list: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The names of this run in `services`, in their order.
fn ours(ctx: &Ctx, services: &[String]) -> Vec<String> {
    let prefix = ctx.service("");
    services
        .iter()
        .filter(|s| s.starts_with(&prefix))
        .cloned()
        .collect()
}

/// 19. `list_services` names each service once, sorted in byte order of the full names:
///     `a` before `a-b` (on etcd the keys sort the other way: `a-b/` before `a/`).
pub async fn list_services_is_sorted(ctx: Arc<Ctx>) {
    let a = ctx.service("a");
    let a_b = ctx.service("a-b");
    for service in [&a_b, &a] {
        ctx.register(&ctx.instance(service, "x")).await;
    }
    let want = vec![a.clone(), a_b.clone()];
    let services = services_until(
        ctx.registry.as_ref(),
        ctx.deadline(),
        "list_services names a and a-b",
        |s| ours(&ctx, s).len() == 2,
    )
    .await;
    assert_eq!(ours(&ctx, &services), want, "in byte order: {services:?}");
    assert!(
        services.windows(2).all(|w| w[0] < w[1]),
        "list_services must be sorted, each name once: {services:?}"
    );
}

/// 20. `list_services` names only services with a live instance: a service whose only
///     instance was deregistered leaves it, and so does one whose only owner crashed (a
///     `registry-owner` killed with SIGKILL, or a dropped handle for in-process backends)
///     within the TTL plus the backend's slack, counted from the crash (on Consul its
///     instance is still in the catalog then, critical: not healthy); a live service stays.
pub async fn list_services_names_only_live_services(ctx: Arc<Ctx>) {
    let live = ctx.service("ls-live");
    let gone = ctx.service("ls-gone");
    let crashed = ctx.service("ls-crashed");
    let gone_instance = ctx.instance(&gone, "x");
    ctx.register(&ctx.instance(&live, "x")).await;
    ctx.register(&gone_instance).await;
    services_until(
        ctx.registry.as_ref(),
        ctx.deadline(),
        "list_services names both services",
        |s| s.contains(&live) && s.contains(&gone),
    )
    .await;
    ctx.deregister(&gone_instance).await;
    services_until(
        ctx.registry.as_ref(),
        ctx.deadline(),
        "a service whose only instance was deregistered is no longer named",
        |s| !s.contains(&gone),
    )
    .await;

    let instance = ctx.instance(&crashed, "doomed");
    ctx.remember(&instance);
    enum Owner {
        Process(Box<OwnerProcess>),
        Handle(Arc<dyn Registry>),
    }
    let owner = if ctx.caps.cross_process {
        Owner::Process(Box::new(
            OwnerProcess::spawn(&owner_bin(&ctx), &ctx.short_ttl_url(), &instance).await,
        ))
    } else {
        let owner = ctx.connect_short_ttl().await;
        owner.register(&instance).await.expect("register");
        Owner::Handle(owner)
    };
    services_until(
        ctx.registry.as_ref(),
        ctx.deadline(),
        "the owner's service is named",
        |s| s.contains(&crashed),
    )
    .await;
    let crashed_at = Instant::now();
    match owner {
        Owner::Process(process) => process.kill().await,
        Owner::Handle(handle) => drop(handle),
    }
    let limit = ctx.target.short_ttl + ctx.caps.expiry_slack;
    let services = services_until(
        ctx.registry.as_ref(),
        limit.saturating_sub(crashed_at.elapsed()),
        "a service without a healthy instance (its owner crashed) is no longer named, within \
         the TTL plus the slack",
        |s| !s.contains(&crashed),
    )
    .await;
    assert!(
        services.contains(&live),
        "the live service is still named: {services:?}"
    );
}

/// 21. A plain service name with dots (`{run}-dotted.com.example.Greeter`) round-trips:
///     `get_service`, a watcher's first list and `list_services` (where supported) give it
///     exactly; the service named by its prefix (`{run}-dotted.com.example`) is not given its
///     instances, neither by `get_service` nor by a watcher, whose next list is its own first
///     change.
pub async fn dotted_service_name_round_trips(ctx: Arc<Ctx>) {
    let base = ctx.service("dotted");
    let dotted = format!("{base}.com.example.Greeter");
    let prefix = format!("{base}.com.example");
    let mut prefix_watcher = ctx.registry.watch(&prefix).await.expect("watch the prefix");
    let first = next_within(
        &mut prefix_watcher,
        ctx.deadline(),
        "the prefix's first list",
    )
    .await;
    assert!(first.is_empty(), "the prefix's first list: {first:?}");

    let instance = ctx.instance(&dotted, "a");
    ctx.register(&instance).await;
    let list = ctx
        .list_until(
            &dotted,
            ctx.deadline(),
            "the dotted service's instance",
            |l| !l.is_empty(),
        )
        .await;
    assert_eq!(list, vec![instance.clone()], "get_service({dotted})");
    let mut watcher = ctx.registry.watch(&dotted).await.expect("watch");
    let first = next_within(
        &mut watcher,
        ctx.deadline(),
        "the dotted service's first list",
    )
    .await;
    assert_eq!(first, vec![instance.clone()], "watch({dotted}): first list");
    assert!(
        ctx.list(&prefix).await.is_empty(),
        "get_service({prefix}) must not list the instances of {dotted}"
    );
    if let Some(leaked) = prefix_watcher.next().now_or_never() {
        panic!("the watcher of {prefix} delivered a list for {dotted}: {leaked:?}");
    }
    if ctx.caps.list_services {
        let services = services_until(
            ctx.registry.as_ref(),
            ctx.deadline(),
            "list_services names the dotted service",
            |s| s.contains(&dotted),
        )
        .await;
        assert_eq!(
            ours(&ctx, &services),
            vec![dotted.clone()],
            "list_services names the dotted service exactly, and not its prefix"
        );
    }

    let own = ctx.instance(&prefix, "own");
    ctx.register(&own).await;
    let list = next_within(
        &mut prefix_watcher,
        ctx.deadline(),
        "the prefix's own change",
    )
    .await;
    assert_eq!(
        list,
        vec![own.clone()],
        "the watcher of {prefix}: its next list is its own first change"
    );
    assert_eq!(ctx.list(&prefix).await, vec![own.clone()]);
    assert_eq!(ctx.list(&dotted).await, vec![instance.clone()]);
    if ctx.caps.list_services {
        let services = services_until(
            ctx.registry.as_ref(),
            ctx.deadline(),
            "list_services names both",
            |s| s.contains(&prefix),
        )
        .await;
        assert_eq!(ours(&ctx, &services), vec![prefix, dotted]);
    }
}

//! The cases. Each asserts what a user of a registry relies on; waits poll a condition under
//! a deadline, and no fixed sleep decides a result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use registry::{Error, ServiceInstance, Watcher};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::Ctx;

/// Within how long a graceful deregister must show: well inside any TTL the suite uses.
pub const PROMPT: Duration = Duration::from_secs(2);

async fn next_within(watcher: &mut Watcher, within: Duration, what: &str) -> Vec<ServiceInstance> {
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
    if !ctx.caps.watch {
        return;
    }
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
    if !ctx.caps.watch {
        return;
    }
    let service = ctx.service("watch-seq");
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    assert!(next_within(&mut watcher, ctx.deadline(), "first list")
        .await
        .is_empty());
    change_sequence(&ctx, &service, std::slice::from_mut(&mut watcher)).await;
}

/// 6c. Two watchers of one service both see every change.
pub async fn two_watchers_see_every_change(ctx: Arc<Ctx>) {
    if !ctx.caps.watch {
        return;
    }
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
    if !ctx.caps.watch {
        return;
    }
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
    if !ctx.caps.watch {
        return;
    }
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
    if !ctx.caps.ttl_expiry {
        return;
    }
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
    if !ctx.caps.ttl_expiry {
        return;
    }
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
    if !(ctx.caps.ttl_expiry && ctx.caps.cross_process) {
        return;
    }
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
    owner.deregister().await;
    owner.kill().await;
}

//! Hostile-but-valid data through the real servers: the largest values the core's bounds
//! allow ([`registry::validate`]) and unicode wherever it is allowed come back exactly; what
//! a server cannot hold (a declared [`registry::MetadataLimits`]) is refused with a typed
//! error that writes nothing; and foreign or corrupt values under the case's prefix are
//! skipped, said once, while the watcher keeps delivering.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::FutureExt;
use registry::{validate, Error, ServiceInstance, Watcher};

use crate::{warnings, Ctx};

/// A string of exactly `bytes` bytes, unicode included.
fn filled(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    for c in "héllo wörld ✓ 你好 🚀 ".chars().cycle() {
        if out.len() + c.len_utf8() > bytes {
            break;
        }
        out.push(c);
    }
    while out.len() < bytes {
        out.push('x');
    }
    out
}

async fn next_list(watcher: &mut Watcher, ctx: &Ctx, what: &str) -> Vec<ServiceInstance> {
    let within = ctx.deadline();
    match tokio::time::timeout(within, watcher.next()).await {
        Ok(Ok(list)) => list.to_vec(),
        Ok(Err(e)) => panic!("{what}: the watcher failed: {e}"),
        Err(_) => panic!("{what}: no list within {within:?}"),
    }
}

/// Registers `instance` while a watcher of its service is open: the watcher's next list,
/// `get_service` and a new watcher's first list give exactly the instance; deregistered, the
/// service is empty again.
async fn round_trip(ctx: &Ctx, instance: &ServiceInstance, what: &str) {
    let name = &instance.name;
    let mut watcher = ctx.registry.watch(name).await.expect("watch");
    let first = next_list(&mut watcher, ctx, what).await;
    assert!(first.is_empty(), "{what}: the first list: {first:?}");
    ctx.register(instance).await;
    let seen = next_list(&mut watcher, ctx, what).await;
    assert!(
        seen == [instance.clone()],
        "{what}: the open watcher's next list is exactly the instance; got {seen:#?}"
    );
    assert!(
        ctx.list(name).await == [instance.clone()],
        "{what}: get_service gives exactly the instance"
    );
    let mut fresh = ctx.registry.watch(name).await.expect("watch again");
    let first = next_list(&mut fresh, ctx, what).await;
    assert!(
        first == [instance.clone()],
        "{what}: a new watcher's first list is exactly the instance"
    );
    ctx.deregister(instance).await;
    let last = next_list(&mut watcher, ctx, what).await;
    assert!(last.is_empty(), "{what}: after deregister: {last:#?}");
}

/// Registering `instance` fails with a permanent `InvalidInput` and lists nothing.
async fn refused(ctx: &Ctx, instance: &ServiceInstance, what: &str) {
    match ctx.registry.register(instance).await {
        Err(e @ Error::InvalidInput { .. }) => assert!(!e.is_temporary(), "{what}: {e}"),
        other => panic!("{what}: register must fail with InvalidInput: {other:?}"),
    }
    assert!(
        ctx.list(&instance.name).await.is_empty(),
        "{what}: a refused registration must write nothing"
    );
}

/// 22a. A 64 KiB metadata value (unicode) round-trips; a backend whose server holds less
///      ([`registry::MetadataLimits::value_bytes`], Consul: 512 bytes;
///      [`registry::MetadataLimits::total_chars`], Nacos: 1024 characters with its own keys)
///      refuses it with a typed error that writes nothing, and a value of exactly its limit
///      (half a total bound) round-trips.
pub async fn big_metadata_value_round_trips(ctx: Arc<Ctx>) {
    const BIG: usize = 64 * 1024;
    let service = ctx.service("bigmeta");
    let mut instance = ctx.instance(&service, "big");
    let limits = ctx.caps.metadata;
    let limit = limits.value_bytes;
    if limit < BIG || limits.total_chars < BIG {
        instance.metadata.insert("big".into(), filled(BIG));
        refused(&ctx, &instance, "a 64 KiB value beyond the server's limit").await;
    }
    // A bound on the whole metadata counts the backend's own keys: half of it is left to the
    // value (a byte count bounds the UTF-16 units of the same text).
    let fits = BIG.min(limit).min(limits.total_chars / 2);
    instance.metadata.insert("big".into(), filled(fits));
    round_trip(&ctx, &instance, "the largest metadata value").await;
}

/// 22b. An instance with 100 endpoints (the first two `http` and `grpc`, then 98 schemes of
///      their own, so that every backend can hold them) round-trips in order.
pub async fn hundred_endpoints_round_trip(ctx: Arc<Ctx>) {
    let service = ctx.service("hundred");
    let mut instance = ctx.instance(&service, "many");
    let first_port = 40_000;
    instance.endpoints = vec![
        format!("http://127.0.0.1:{first_port}"),
        format!("grpc://127.0.0.1:{}?isSecure=false", first_port + 1),
    ];
    for i in 2..100u16 {
        instance
            .endpoints
            .push(format!("e{i:02}://127.0.0.1:{}", first_port + i));
    }
    round_trip(&ctx, &instance, "100 endpoints").await;
}

/// 22c. A service name and an instance id of the longest length allowed, and the longest
///      version, round-trip.
pub async fn longest_names_round_trip(ctx: Arc<Ctx>) {
    let pad = |base: String| {
        let mut name = base;
        while name.len() < validate::MAX_LEN {
            name.push('n');
        }
        name
    };
    let service = pad(ctx.service("longest-"));
    let mut instance = ctx.instance(&service, "x");
    instance.id = pad(format!(
        "{}-",
        instance.id.chars().take(20).collect::<String>()
    ));
    instance.id.truncate(validate::MAX_LEN);
    instance.version = filled(validate::MAX_VERSION_LEN);
    assert_eq!(
        (service.len(), instance.id.len()),
        (validate::MAX_LEN, validate::MAX_LEN)
    );
    round_trip(&ctx, &instance, "the longest names").await;
}

/// 22d. Unicode wherever an instance allows it — the version, metadata keys (where the
///      backend does not limit keys to ASCII tokens) and values, an endpoint's path and
///      query, an internationalized host name — round-trips exactly.
pub async fn unicode_round_trips(ctx: Arc<Ctx>) {
    let service = ctx.service("unicode");
    let mut instance = ctx.instance(&service, "u");
    instance.version = "v1-ünï-版本-🚀".into();
    instance
        .metadata
        .insert("zone".into(), "Zürich — 東京 — القاهرة 🌍".into());
    if !ctx.caps.metadata.token_keys {
        instance
            .metadata
            .insert("région.名前 🔑".into(), "é".into());
    }
    instance.endpoints = vec![
        "http://127.0.0.1:40201/ünï/路径?name=名前&isSecure=false".into(),
        "grpc://bücher.example:40202?isSecure=false".into(),
    ];
    round_trip(&ctx, &instance, "unicode").await;
}

/// 22e. Foreign and corrupt values written under the case's service with the server's raw
///      client (one of about 1 MiB, bytes that are not UTF-8, an instance naming another
///      service, an invalid id; each backend writes what its server takes,
///      [`crate::Target::write_foreign`]) are skipped: the watcher opened before them keeps
///      delivering exactly the valid instances through three changes, and `get_service` and a
///      new watcher agree. Each skipped value is warned about, and no warning of this
///      project's crates is repeated.
pub async fn foreign_values_are_skipped_once(ctx: Arc<Ctx>) {
    let service = ctx.service("foreign");
    let a = ctx.instance(&service, "a");
    let b = ctx.instance(&service, "b");
    let mut watcher = ctx.registry.watch(&service).await.expect("watch");
    assert!(next_list(&mut watcher, &ctx, "first list").await.is_empty());
    ctx.register(&a).await;
    assert_eq!(
        next_list(&mut watcher, &ctx, "a registered").await,
        std::slice::from_ref(&a)
    );

    let written = ctx.write_foreign(&service).await;
    let outcome = std::panic::AssertUnwindSafe(async {
        // The foreign values change nothing a watcher shows: the next list it gets is the
        // next real change.
        ctx.register(&b).await;
        let mut both = vec![a.clone(), b.clone()];
        both.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(next_list(&mut watcher, &ctx, "b registered").await, both);
        let mut a2 = a.clone();
        a2.metadata.insert("changed".into(), "yes".into());
        ctx.register(&a2).await;
        let mut both = vec![a2.clone(), b.clone()];
        both.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(next_list(&mut watcher, &ctx, "a updated").await, both);
        ctx.deregister(&b).await;
        assert_eq!(
            next_list(&mut watcher, &ctx, "b deregistered").await,
            [a2.clone()]
        );
        assert_eq!(ctx.list(&service).await, [a2.clone()], "get_service");
        let mut fresh = ctx.registry.watch(&service).await.expect("watch again");
        assert_eq!(
            next_list(&mut fresh, &ctx, "a new watcher").await,
            [a2.clone()]
        );
        // A second handle reads them all again: nothing new is said.
        let other = ctx.connect().await;
        assert_eq!(
            other.get_service(&service).await.expect("get"),
            [a2.clone()]
        );
        let _ = other.close().await;

        // What this project's crates said (nacos-sdk races with itself writing its disk
        // cache, and says so, retrying).
        let said: Vec<_> = warnings::mentioning(&service)
            .into_iter()
            .filter(|w| w.target.starts_with("registry"))
            .collect();
        let skipped = said
            .iter()
            .filter(|w| w.message == "registry value skipped")
            .count();
        assert!(
            skipped >= written,
            "each of the {written} foreign values is warned about: {said:#?}"
        );
        let distinct: BTreeSet<_> = said.iter().collect();
        assert_eq!(
            distinct.len(),
            said.len(),
            "no warning is said twice: {said:#?}"
        );
    })
    .catch_unwind()
    .await;
    ctx.remove_foreign(&service).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

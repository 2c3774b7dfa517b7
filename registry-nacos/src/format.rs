//! The go-kratos shape of an instance in Nacos, both ways.
//!
//! One ephemeral Nacos instance per endpoint, in the service `{name}.{scheme}`, at the
//! endpoint's ip and port, with the instance metadata plus `kind` = scheme and `version`
//! (kratos), and what kratos does not keep, so that one instance with several endpoints is
//! rebuilt as one: `instance_id`, `endpoint` (the whole URL, query included),
//! `endpoint_index`, `endpoint_count` and `instance_digest` (the same on every piece of one
//! value, so that a half-updated instance is never shown).
//!
//! Refused before anything is written (`InvalidInput`): the keys above in the instance's own
//! metadata, two endpoints of one scheme and address (one Nacos instance), an instance
//! without endpoints (nothing would be written), and a `weight` that is not a number from 0 to
//! 10000 (`inf`, `NaN` and `1e400` parse as numbers, but Nacos refuses them).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nacos_sdk::api::naming::ServiceInstance as NacosInstance;
use registry_core::untrusted::MAX_WEIGHT;
use registry_core::{Endpoint, Error, Result, ServiceInstance};

use crate::Config;

const KIND: &str = "kind";
const VERSION: &str = "version";
const ID: &str = "instance_id";
const ENDPOINT: &str = "endpoint";
const INDEX: &str = "endpoint_index";
const COUNT: &str = "endpoint_count";
const DIGEST: &str = "instance_digest";
/// Metadata keys this backend writes; an instance may not carry them itself.
pub(crate) const RESERVED: [&str; 7] = [KIND, VERSION, ID, ENDPOINT, INDEX, COUNT, DIGEST];

/// The most characters (UTF-16 code units, Java's `String.length()`) the keys and values of
/// one Nacos instance's metadata may have together: Nacos' default
/// `nacos.naming.service.metadata.length` (`DefaultParamChecker.checkMetadataFormat`), the keys
/// this backend adds included.
pub(crate) const MAX_METADATA_CHARS: usize = 1024;

/// The length Nacos counts of a metadata map (it leaves out blank keys and values; counting
/// them keeps the bound on the safe side).
fn metadata_chars(metadata: &HashMap<String, String>) -> usize {
    metadata
        .iter()
        .map(|(k, v)| k.encode_utf16().count() + v.encode_utf16().count())
        .sum()
}

/// The Nacos service of `name`'s endpoints with `scheme`.
pub(crate) fn service_of(name: &str, scheme: &str) -> String {
    format!("{name}.{scheme}")
}

/// FNV-1a: a digest that is the same in every process and build.
fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The Nacos instances of `instance`, with their services.
pub(crate) fn to_nacos(
    instance: &ServiceInstance,
    config: &Config,
) -> Result<Vec<(String, NacosInstance)>> {
    to_nacos_within(instance, config, MAX_METADATA_CHARS)
}

/// [`to_nacos`], with metadata of at most `max_chars` per Nacos instance.
fn to_nacos_within(
    instance: &ServiceInstance,
    config: &Config,
    max_chars: usize,
) -> Result<Vec<(String, NacosInstance)>> {
    instance.validate()?;
    if let Some(key) = RESERVED
        .iter()
        .find(|k| instance.metadata.contains_key(**k))
    {
        return Err(Error::invalid(
            "metadata",
            *key,
            "this key is written by the Nacos backend",
        ));
    }
    let endpoints = instance.parsed_endpoints()?;
    if endpoints.is_empty() {
        // Nothing would be written, and the instance would never be listed.
        return Err(Error::invalid(
            "endpoints",
            "no endpoints",
            "Nacos holds an instance as its endpoints (one Nacos instance each): it needs one",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &endpoints {
        if !seen.insert((e.scheme().to_owned(), e.authority())) {
            return Err(Error::invalid(
                "endpoint",
                e.as_str(),
                "Nacos keeps one instance per scheme and address",
            ));
        }
    }
    let weight = match instance.metadata.get("weight") {
        // Nacos refuses a weight outside 0 to 10000; `inf` and `NaN` parse, and cannot be sent.
        Some(w) => match w.parse::<f64>() {
            Ok(weight) if weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&weight) => weight,
            _ => {
                return Err(Error::invalid(
                    "metadata",
                    format!("weight={w}"),
                    "the weight must be a number from 0 to 10000 (Nacos' range)",
                ))
            }
        },
        None => config.weight,
    };
    let digest = digest(&instance.to_json());
    let parts: Vec<(String, NacosInstance)> = endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let mut metadata: HashMap<String, String> =
                instance.metadata.clone().into_iter().collect();
            metadata.insert(KIND.into(), endpoint.scheme().into());
            metadata.insert(VERSION.into(), instance.version.clone());
            metadata.insert(ID.into(), instance.id.clone());
            metadata.insert(ENDPOINT.into(), endpoint.as_str().into());
            metadata.insert(INDEX.into(), index.to_string());
            metadata.insert(COUNT.into(), endpoints.len().to_string());
            metadata.insert(DIGEST.into(), digest.clone());
            let service = service_of(&instance.name, endpoint.scheme());
            let nacos = NacosInstance {
                ip: endpoint.host().to_owned(),
                port: i32::from(endpoint.port()),
                weight,
                cluster_name: Some(config.cluster.clone()),
                ephemeral: true,
                healthy: true,
                enabled: true,
                metadata,
                ..NacosInstance::default()
            };
            (service, nacos)
        })
        .collect();
    if let Some((service, part)) = parts
        .iter()
        .find(|(_, part)| metadata_chars(&part.metadata) > max_chars)
    {
        return Err(Error::invalid(
            "metadata",
            format!("{} characters in {service}", metadata_chars(&part.metadata)),
            format!(
                "Nacos holds at most {max_chars} characters of metadata keys and values per \
                 endpoint, those this backend adds (id, endpoint, digest, ...) included"
            ),
        ));
    }
    Ok(parts)
}

/// One Nacos instance, read back: a piece of one of our instances, or a whole kratos one.
#[derive(Debug, Clone)]
struct Piece {
    id: String,
    version: String,
    metadata: BTreeMap<String, String>,
    endpoint: String,
    index: usize,
    count: usize,
    digest: String,
}

fn piece(service: &str, scheme: &str, nacos: &NacosInstance) -> Option<Piece> {
    if !(nacos.healthy && nacos.enabled) {
        return None;
    }
    let meta = &nacos.metadata;
    let host = if nacos.ip.contains(':') {
        format!("[{}]", nacos.ip)
    } else {
        nacos.ip.clone()
    };
    let kind = meta.get(KIND).map_or(scheme, String::as_str);
    let endpoint = meta
        .get(ENDPOINT)
        .cloned()
        .unwrap_or_else(|| format!("{kind}://{host}:{}", nacos.port));
    if let Err(e) = Endpoint::parse(&endpoint) {
        let key = format!("{service} {}:{}", nacos.ip, nacos.port);
        registry_core::untrusted::skip("nacos", service, &key, e);
        return None;
    }
    let mut metadata: BTreeMap<String, String> = meta
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let ours = meta.get(ID).cloned();
    let kratos = ours.is_none();
    let (id, index, count, digest) = match ours {
        Some(id) => (
            id,
            meta.get(INDEX).and_then(|v| v.parse().ok()).unwrap_or(0),
            meta.get(COUNT).and_then(|v| v.parse().ok()).unwrap_or(1),
            meta.get(DIGEST).cloned().unwrap_or_default(),
        ),
        // Written by kratos (or anyone else): one instance per endpoint, named by its address.
        None => {
            let id: String = format!("{}-{}", nacos.ip, nacos.port)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            (id, 0, 1, String::new())
        }
    };
    if kratos {
        // kratos' `weight` is Nacos' own field; keep the rest as it is.
        metadata.remove("weight");
    }
    Some(Piece {
        id,
        version: meta.get(VERSION).cloned().unwrap_or_default(),
        metadata,
        endpoint,
        index,
        count,
        digest,
    })
}

/// What the Nacos services of one name hold, by service.
pub(crate) type Services = BTreeMap<String, Vec<NacosInstance>>;

/// The scheme part of `service` for `name`: `grpc` for `helloworld.grpc`, `http` for a
/// service called just `name`.
fn scheme_of<'a>(name: &str, service: &'a str) -> &'a str {
    service
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or("http")
}

/// Whether a Nacos instance says it is an endpoint of `scheme` (its `kind` metadata).
pub(crate) fn is_of_scheme(nacos: &NacosInstance, scheme: &str) -> bool {
    nacos.metadata.get(KIND).is_some_and(|kind| kind == scheme)
}

/// The ids of our instances in `services` that are missing pieces: fewer endpoints found
/// than they were written with. A piece may be in a Nacos service the watch does not follow
/// yet (a scheme other than the common ones, registered after the watch started), or not
/// written yet.
pub(crate) fn incomplete(services: &Services) -> BTreeSet<String> {
    let mut found: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for nacos in services.values().flatten() {
        let meta = &nacos.metadata;
        if let Some(id) = meta.get(ID) {
            let count = meta.get(COUNT).and_then(|v| v.parse().ok()).unwrap_or(1);
            let entry = found.entry(id).or_insert((0, count));
            entry.0 += 1;
            entry.1 = entry.1.max(count);
        }
    }
    found
        .into_iter()
        .filter(|(_, (pieces, count))| pieces < count)
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// Rebuilds the instances of `name`. An instance is complete when all its endpoints are
/// there with the same digest; `previous` (the last complete value of each id) is shown for
/// an instance caught half-updated, and an instance never seen complete is not shown yet.
pub(crate) fn assemble(
    name: &str,
    services: &Services,
    previous: &BTreeMap<String, ServiceInstance>,
) -> BTreeMap<String, ServiceInstance> {
    let mut pieces: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
    for (service, instances) in services {
        let scheme = scheme_of(name, service);
        for nacos in instances {
            // In `{name}.{scheme}`, only what says it is of that scheme (kratos and this crate
            // write `kind`): a plain service `com.example.Greeter` is not `com.example`'s.
            if service != name && !is_of_scheme(nacos, scheme) {
                continue;
            }
            if let Some(p) = piece(service, scheme, nacos) {
                pieces.entry(p.id.clone()).or_default().push(p);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (id, mut parts) in pieces {
        parts.sort_by_key(|p| p.index);
        parts.dedup_by_key(|p| p.index);
        let first = &parts[0];
        let complete = parts.len() == first.count
            && parts
                .iter()
                .all(|p| p.digest == first.digest && p.count == first.count);
        let instance = ServiceInstance {
            id: id.clone(),
            name: name.to_owned(),
            version: first.version.clone(),
            metadata: first.metadata.clone(),
            endpoints: parts.iter().map(|p| p.endpoint.clone()).collect(),
        };
        if complete {
            if let Some(instance) = registry_core::untrusted::check("nacos", &id, instance) {
                out.insert(id, instance);
            }
        } else if let Some(last) = previous.get(&id) {
            out.insert(id, last.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(parts: Vec<(String, NacosInstance)>) -> Services {
        let mut services = Services::new();
        for (service, instance) in parts {
            services.entry(service).or_default().push(instance);
        }
        services
    }

    #[test]
    fn an_instance_with_several_endpoints_comes_back_whole() {
        let me = ServiceInstance::builder("id-1", "helloworld")
            .version("v1")
            .metadata("zone", "a")
            .endpoint("http://127.0.0.1:8000")
            .endpoint("grpc://127.0.0.1:9000?isSecure=false")
            .build()
            .unwrap();
        let parts = to_nacos(&me, &Config::default()).unwrap();
        assert_eq!(parts[0].0, "helloworld.http");
        assert_eq!(parts[1].1.metadata["kind"], "grpc");
        assert_eq!(parts[1].1.metadata["version"], "v1");
        let all = assemble("helloworld", &services(parts.clone()), &BTreeMap::new());
        assert_eq!(all.values().cloned().collect::<Vec<_>>(), vec![me.clone()]);

        // Half of it: not shown, unless a complete value was shown before.
        let half = services(parts[..1].to_vec());
        assert!(assemble("helloworld", &half, &BTreeMap::new()).is_empty());
        let before = BTreeMap::from([("id-1".to_owned(), me.clone())]);
        assert_eq!(assemble("helloworld", &half, &before)["id-1"], me);
    }

    #[test]
    fn a_kratos_instance_is_one_endpoint() {
        let kratos = NacosInstance {
            ip: "192.168.56.1".into(),
            port: 9000,
            weight: 100.0,
            metadata: HashMap::from([
                ("kind".into(), "grpc".into()),
                ("version".into(), "v2".into()),
            ]),
            ..NacosInstance::default()
        };
        let all = assemble(
            "helloworld",
            &services(vec![("helloworld.grpc".into(), kratos)]),
            &BTreeMap::new(),
        );
        let instance = &all["192.168.56.1-9000"];
        assert_eq!(instance.endpoints, ["grpc://192.168.56.1:9000"]);
        assert_eq!(instance.version, "v2");
        assert!(instance.metadata.is_empty());
    }

    #[test]
    fn a_dotted_plain_service_is_not_another_name_with_a_scheme() {
        let plain = NacosInstance {
            ip: "10.0.0.1".into(),
            port: 8080,
            metadata: HashMap::from([("zone".into(), "a".into())]),
            ..NacosInstance::default()
        };
        let found = services(vec![("com.example.Greeter".into(), plain)]);
        assert!(assemble("com.example", &found, &BTreeMap::new()).is_empty());
        let own = assemble("com.example.Greeter", &found, &BTreeMap::new());
        assert_eq!(own["10.0.0.1-8080"].endpoints, ["http://10.0.0.1:8080"]);
    }

    #[test]
    fn a_weight_nacos_cannot_take_or_no_endpoint_is_refused() {
        let with_weight = |w: &str| {
            ServiceInstance::builder("1", "s")
                .metadata("weight", w)
                .endpoint("http://h:1")
                .build()
                .unwrap()
        };
        for bad in ["inf", "-inf", "NaN", "-1", "10000.5", "1e400", "heavy"] {
            let refused = to_nacos(&with_weight(bad), &Config::default());
            assert!(
                matches!(refused, Err(Error::InvalidInput { .. })),
                "{bad}: {refused:?}"
            );
        }
        for (good, weight) in [("0", 0.0), ("10000", 10_000.0), ("0.5", 0.5), ("1e3", 1e3)] {
            let parts = to_nacos(&with_weight(good), &Config::default()).unwrap();
            assert_eq!(parts[0].1.weight, weight);
        }
        let none = ServiceInstance::builder("1", "s").build().unwrap();
        assert!(matches!(
            to_nacos(&none, &Config::default()),
            Err(Error::InvalidInput {
                field: "endpoints",
                ..
            })
        ));
    }

    #[test]
    fn reserved_metadata_is_refused() {
        let me = ServiceInstance::builder("1", "s")
            .metadata("kind", "x")
            .endpoint("http://h:1")
            .build()
            .unwrap();
        assert!(matches!(
            to_nacos(&me, &Config::default()),
            Err(Error::InvalidInput { .. })
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use registry_core::strategy::{self, Drawn, Shape};

    use super::*;

    /// What Nacos holds ([`to_nacos`]): at least one endpoint, one per scheme and address,
    /// none of the metadata keys this backend writes, a `weight` that is a number Nacos takes.
    fn nacos() -> Shape {
        Shape {
            min_endpoints: 1,
            one_endpoint_per_address: true,
            reserved_keys: RESERVED.iter().map(|k| k.to_string()).collect(),
            ..Shape::default()
        }
    }

    /// What a Nacos server refuses of a registration ("The weights range from 0.0 to
    /// 10000.0"); it keeps the rest as it is sent.
    fn server_refuses(part: &NacosInstance) -> Option<String> {
        let w = part.weight;
        (!(w.is_finite() && (0.0..=10_000.0).contains(&w))).then(|| format!("weight {w}"))
    }

    /// Writes `instance` as its Nacos instances, groups them by service as a listing of the
    /// name's services does, and rebuilds it: the first difference, or why it could not be
    /// written.
    fn round_trip(
        instance: &ServiceInstance,
        config: &Config,
        max_chars: usize,
    ) -> Result<Option<String>, String> {
        let parts = to_nacos_within(instance, config, max_chars).map_err(|e| e.to_string())?;
        let mut services = Services::new();
        for (service, part) in parts {
            if let Some(refused) = server_refuses(&part) {
                return Err(format!("the server refuses {service}: {refused}"));
            }
            services.entry(service).or_default().push(part);
        }
        let mut all = assemble(&instance.name, &services, &BTreeMap::new());
        let back = all.remove(&instance.id).unwrap_or_default();
        if let Some(other) = all.keys().next() {
            return Ok(Some(format!("another instance {other:?} was read")));
        }
        Ok(strategy::difference(instance, &back))
    }

    proptest! {
        #![proptest_config(strategy::config(256))]

        /// Every valid instance that Nacos holds comes back exactly (endpoints in order,
        /// IPv6 hosts, unicode metadata, an empty version) from its Nacos instances (the
        /// metadata bound left out: a server can raise it).
        #[test]
        fn every_instance_nacos_holds_round_trips(Drawn(instance) in strategy::instance(&nacos())) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            prop_assert_eq!(round_trip(&instance, &Config::default(), usize::MAX), Ok(None));
        }
    }

    /// Nacos' bound on a part's metadata (keys and values, ours included, in UTF-16 units):
    /// exactly at it is written, one character more is refused.
    #[test]
    fn metadata_up_to_nacos_bound_is_written() {
        let mut instance = ServiceInstance::builder("svc", "id-1")
            .endpoint("http://127.0.0.1:8080")
            .build()
            .expect("valid");
        let config = Config::default();
        instance.metadata.insert("big".into(), String::new());
        let ours = metadata_chars(&to_nacos(&instance, &config).expect("fits")[0].1.metadata);
        // '🚀' is two UTF-16 units, as Java counts it.
        let room = MAX_METADATA_CHARS - ours;
        instance
            .metadata
            .insert("big".into(), "🚀".repeat(room / 2) + &"x".repeat(room % 2));
        let parts = to_nacos(&instance, &config).expect("exactly the bound");
        assert_eq!(metadata_chars(&parts[0].1.metadata), MAX_METADATA_CHARS);
        instance.metadata.get_mut("big").expect("set").push('x');
        assert!(matches!(
            to_nacos(&instance, &config),
            Err(Error::InvalidInput { .. })
        ));
    }

    proptest! {
        #![proptest_config(strategy::config(128))]

        /// Whatever a caller passes is refused with a typed error before anything is
        /// written, or is held and read back exactly; never a panic.
        #[test]
        fn any_instance_is_refused_or_round_trips(Drawn(instance) in strategy::any_instance()) {
            match to_nacos(&instance, &Config::default()) {
                Err(Error::InvalidInput { .. }) => {}
                Err(e) => prop_assert!(false, "refused with {e:?}, not InvalidInput"),
                Ok(_) => {
                    prop_assert!(instance.validate().is_ok());
                    prop_assert_eq!(
                        round_trip(&instance, &Config::default(), MAX_METADATA_CHARS),
                        Ok(None)
                    );
                }
            }
        }

        /// One thing Nacos cannot hold, added to a valid instance that it can: refused with
        /// `InvalidInput`, before anything is written.
        #[test]
        fn what_nacos_cannot_hold_is_refused(
            Drawn(instance) in strategy::instance(&nacos()),
            flaw in 0..6usize,
            weight in prop::sample::select(&[
                "inf", "-inf", "infinity", "NaN", "-1", "-0.5", "10000.5", "1e5", "1e400",
                "heavy", "", " 5",
            ][..]),
            reserved in prop::sample::select(&RESERVED[..]),
        ) {
            use registry_core::validate::{MAX_ENDPOINTS, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES};
            let mut bad = instance;
            // Room for the endpoints and the entry added.
            bad.endpoints.truncate(MAX_ENDPOINTS - 2);
            let bytes = |m: &BTreeMap<String, String>| -> usize {
                m.iter().map(|(k, v)| k.len() + v.len()).sum()
            };
            while bad.metadata.len() >= MAX_METADATA_ENTRIES
                || bytes(&bad.metadata) > MAX_METADATA_BYTES - 64
            {
                bad.metadata.pop_last();
            }
            match flaw {
                0 => drop(bad.metadata.insert("weight".into(), weight.into())),
                1 => drop(bad.metadata.insert(reserved.into(), "x".into())),
                2 => {
                    bad.endpoints.push("grpc://10.0.0.1:1".into());
                    bad.endpoints.push("grpc://10.0.0.1:1/other?isSecure=true".into());
                }
                3 => {
                    bad.endpoints.push("http://[::1]:80".into());
                    bad.endpoints.push("HTTP://[0:0::1]:080/".into());
                }
                4 => {
                    bad.endpoints.push("http://LOCALHOST:1".into());
                    bad.endpoints.push("http://localhost:1/".into());
                }
                _ => bad.endpoints.clear(),
            }
            prop_assert!(bad.validate().is_ok(), "{:?}", bad.validate());
            let refused = to_nacos(&bad, &Config::default());
            prop_assert!(
                matches!(refused, Err(Error::InvalidInput { .. })),
                "flaw {}: {:?}", flaw, refused.map(|parts| parts.len())
            );
        }
    }
}

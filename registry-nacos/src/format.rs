//! The go-kratos shape of an instance in Nacos, both ways.
//!
//! One ephemeral Nacos instance per endpoint, in the service `{name}.{scheme}`, at the
//! endpoint's ip and port, with the instance metadata plus `kind` = scheme and `version`
//! (kratos), and what kratos does not keep, so that one instance with several endpoints is
//! rebuilt as one: `instance_id`, `endpoint` (the whole URL, query included),
//! `endpoint_index`, `endpoint_count` and `instance_digest` (the same on every piece of one
//! value, so that a half-updated instance is never shown).

use std::collections::{BTreeMap, HashMap};

use nacos_sdk::api::naming::ServiceInstance as NacosInstance;
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
        Some(w) => w
            .parse()
            .map_err(|_| Error::invalid("metadata", "weight", "the weight must be a number"))?,
        None => config.weight,
    };
    let digest = digest(&instance.to_json());
    Ok(endpoints
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
        .collect())
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

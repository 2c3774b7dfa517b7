//! The go-kratos shape of an instance in Consul, both ways.
//!
//! Writing: an agent service registration with `ID`, `Name`, `Tags` = `version=<version>` plus
//! the configured tags, `Meta` = the metadata, `TaggedAddresses` = `{scheme: {Address: <the
//! whole endpoint URL>, Port}}`, `Address`/`Port` of the first endpoint, and a TTL check
//! `service:<id>` with `DeregisterCriticalServiceAfter`.
//!
//! Reading: the version from the `version=` tag, the endpoints from `TaggedAddresses` (skipping
//! Consul's own `lan`/`wan` keys), or `http://Address:Port` for a plain Consul service.

use std::collections::BTreeMap;

use registry_core::{Endpoint, Error, Result, ServiceInstance};
use serde::{Deserialize, Serialize};

use crate::Config;

/// Tagged address keys Consul itself uses; never endpoints.
const CONSUL_ADDRESS_KEYS: [&str; 6] =
    ["lan", "wan", "lan_ipv4", "wan_ipv4", "lan_ipv6", "wan_ipv6"];
const VERSION_TAG: &str = "version=";

/// The check id of an instance, as kratos names it.
pub(crate) fn check_id(id: &str) -> String {
    format!("service:{id}")
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentRegistration {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: BTreeMap<String, String>,
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    checks: Vec<AgentCheck>,
}

/// One tagged address.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TaggedAddress {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(rename = "TTL")]
    ttl: String,
    status: &'static str,
    deregister_critical_service_after: String,
}

/// Checks what Consul would refuse or lose, so that nothing is written: two endpoints of one
/// scheme (tagged addresses are keyed by scheme), a scheme Consul reserves, and metadata
/// keys or values beyond Consul's rules.
pub(crate) fn check_instance(instance: &ServiceInstance) -> Result<Vec<Endpoint>> {
    instance.validate()?;
    let endpoints = instance.parsed_endpoints()?;
    let mut schemes = std::collections::BTreeSet::new();
    for endpoint in &endpoints {
        if !schemes.insert(endpoint.scheme()) {
            return Err(Error::invalid(
                "endpoint",
                endpoint.as_str(),
                "Consul keeps one endpoint per scheme (tagged addresses are keyed by scheme)",
            ));
        }
        if CONSUL_ADDRESS_KEYS.contains(&endpoint.scheme()) {
            return Err(Error::invalid(
                "endpoint",
                endpoint.as_str(),
                "this scheme names one of Consul's own tagged addresses",
            ));
        }
    }
    if instance.metadata.len() > 64 {
        return Err(Error::invalid(
            "metadata",
            format!("{} entries", instance.metadata.len()),
            "Consul keeps at most 64 metadata entries",
        ));
    }
    for (key, value) in &instance.metadata {
        let key_ok = key.len() <= 128
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !key.starts_with("consul-");
        if !key_ok {
            return Err(Error::invalid(
                "metadata",
                key,
                "Consul metadata keys are up to 128 of A-Z a-z 0-9 _ - and do not start with consul-",
            ));
        }
        if value.len() > 512 {
            return Err(Error::invalid(
                "metadata",
                key,
                "Consul metadata values are at most 512 bytes",
            ));
        }
    }
    Ok(endpoints)
}

/// The registration of `instance` (checked by [`check_instance`]).
pub(crate) fn to_consul(instance: &ServiceInstance, config: &Config) -> Result<AgentRegistration> {
    let endpoints = check_instance(instance)?;
    let (address, port) = endpoints
        .first()
        .map(|e| (e.host().to_owned(), e.port()))
        .unwrap_or_default();
    let mut tags = vec![format!("{VERSION_TAG}{}", instance.version)];
    tags.extend(config.tags.iter().cloned());
    Ok(AgentRegistration {
        id: instance.id.clone(),
        name: instance.name.clone(),
        tags,
        address,
        port,
        meta: instance.metadata.clone().into_iter().collect(),
        tagged_addresses: endpoints
            .iter()
            .map(|e| {
                let tagged = TaggedAddress {
                    address: e.as_str().to_owned(),
                    port: e.port(),
                };
                (e.scheme().to_owned(), tagged)
            })
            .collect(),
        checks: vec![AgentCheck {
            check_id: check_id(&instance.id),
            ttl: go_duration(config.ttl),
            status: "passing",
            deregister_critical_service_after: go_duration(config.deregister_after),
        }],
    })
}

/// A duration as Go's `time.ParseDuration` reads it.
fn go_duration(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One entry of `GET /v1/health/service/:name`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    #[serde(default)]
    node: Option<Node>,
    service: AgentService,
}

impl HealthEntry {
    /// The instance id of the entry.
    pub(crate) fn id(&self) -> &str {
        &self.service.id
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tagged_addresses: Option<BTreeMap<String, TaggedAddress>>,
}

/// The instance an entry describes, or `None` (logged) when it is not a valid one.
pub(crate) fn from_consul(entry: HealthEntry) -> Option<ServiceInstance> {
    let service = entry.service;
    let address = if service.address.is_empty() {
        entry.node.map(|n| n.address).unwrap_or_default()
    } else {
        service.address
    };
    let version = service
        .tags
        .iter()
        .flatten()
        .find_map(|t| t.strip_prefix(VERSION_TAG))
        .unwrap_or_default()
        .to_owned();
    let mut endpoints: Vec<Endpoint> = service
        .tagged_addresses
        .iter()
        .flatten()
        .filter(|(key, _)| !CONSUL_ADDRESS_KEYS.contains(&key.as_str()))
        .filter_map(|(key, tagged)| match Endpoint::parse(&tagged.address) {
            Ok(endpoint) if endpoint.scheme() == key => Some(endpoint),
            _ => {
                registry_core::untrusted::skip(
                    "consul",
                    &service.service,
                    &service.id,
                    format_args!(
                        "tagged address {key:?} = {:?} is not an endpoint of that scheme",
                        tagged.address
                    ),
                );
                None
            }
        })
        .collect();
    // Tagged addresses come back keyed by scheme: the first endpoint registered is the one
    // at Address:Port, the others follow in scheme order.
    endpoints.sort_by_key(|e| !(e.host() == address && e.port() == service.port));
    let mut endpoints: Vec<String> = endpoints.iter().map(|e| e.as_str().to_owned()).collect();
    if endpoints.is_empty() && !address.is_empty() && service.port != 0 {
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address
        };
        endpoints.push(format!("http://{host}:{}", service.port));
    }
    let instance = ServiceInstance {
        id: service.id,
        name: service.service,
        version,
        metadata: service.meta.unwrap_or_default().into_iter().collect(),
        endpoints,
    };
    let id = instance.id.clone();
    registry_core::untrusted::check("consul", &id, instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: serde_json::Value) -> HealthEntry {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_kratos_registration_reads_back() {
        let instance = ServiceInstance::builder("id-1", "helloworld")
            .version("v2")
            .metadata("zone", "eu")
            .endpoint("grpc://10.0.0.1:9000?isSecure=false")
            .endpoint("http://10.0.0.1:8000")
            .build()
            .unwrap();
        let registration = to_consul(&instance, &Config::default()).unwrap();
        let json = serde_json::to_value(&registration).unwrap();
        assert_eq!(json["Address"], "10.0.0.1");
        assert_eq!(json["Port"], 9000);
        assert_eq!(json["Tags"], serde_json::json!(["version=v2"]));
        assert_eq!(
            json["TaggedAddresses"]["grpc"]["Address"],
            "grpc://10.0.0.1:9000?isSecure=false"
        );
        assert_eq!(json["Checks"][0]["CheckID"], "service:id-1");
        let back = from_consul(entry(serde_json::json!({
            "Node": {"Address": "10.9.9.9"},
            "Service": {
                "ID": "id-1", "Service": "helloworld", "Tags": json["Tags"], "Meta": json["Meta"],
                "Address": json["Address"], "Port": json["Port"],
                "TaggedAddresses": {
                    "lan_ipv4": {"Address": "10.0.0.1", "Port": 9000},
                    "http": json["TaggedAddresses"]["http"],
                    "grpc": json["TaggedAddresses"]["grpc"],
                }
            }
        })))
        .unwrap();
        assert_eq!(back, instance);
    }

    #[test]
    fn a_plain_consul_service_is_http_at_its_address() {
        let back = from_consul(entry(serde_json::json!({
            "Node": {"Address": "10.9.9.9"},
            "Service": {"ID": "web-1", "Service": "web", "Tags": null, "Meta": null, "Address": "", "Port": 80}
        })))
        .unwrap();
        assert_eq!(back.endpoints, ["http://10.9.9.9:80"]);
        assert_eq!(back.version, "");
        assert!(back.metadata.is_empty());
    }

    #[test]
    fn what_consul_cannot_hold_is_refused() {
        let two_grpc = ServiceInstance {
            id: "1".into(),
            name: "s".into(),
            endpoints: vec!["grpc://h:1".into(), "grpc://h:2".into()],
            ..Default::default()
        };
        assert!(matches!(
            check_instance(&two_grpc),
            Err(Error::InvalidInput {
                field: "endpoint",
                ..
            })
        ));
        let dotted_key = ServiceInstance::builder("1", "s")
            .metadata("a.b", "x")
            .endpoint("http://h:1")
            .build()
            .unwrap();
        assert!(matches!(
            check_instance(&dotted_key),
            Err(Error::InvalidInput {
                field: "metadata",
                ..
            })
        ));
    }
}

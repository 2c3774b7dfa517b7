//! The go-kratos shape of an instance in Consul, both ways.
//!
//! Writing: an agent service registration with `ID`, `Name`, `Tags` = `version=<version>` plus
//! the configured tags, `Meta` = the metadata, `TaggedAddresses` = `{scheme: {Address: <the
//! whole endpoint URL>, Port}}`, `Address`/`Port` of the first endpoint, and a TTL check
//! `service:<id>` with `DeregisterCriticalServiceAfter`.
//!
//! Reading: the version from the `version=` tag, the endpoints from `TaggedAddresses` (skipping
//! Consul's own `lan`/`wan` keys), or `http://Address:Port` for a plain Consul service.
//!
//! The order of the endpoints: tagged addresses come back keyed by scheme, so a reader puts
//! the endpoint at `Address:Port` first and the others in scheme order (kratos' reading,
//! which keeps no order at all). When an instance's order differs from that, one more tag
//! says it: `endpoints=<scheme>,<scheme>,...`, the schemes in the instance's order. A reader
//! orders by it when it names exactly the schemes of the tagged addresses, and otherwise
//! (kratos' registrations, a tag that does not match) falls back to the rule above. kratos
//! reads only the `version=` tag, so it reads these registrations as before; an instance in
//! the usual order (its first endpoint, then the rest in scheme order: kratos' `http` then
//! `grpc` on one address, any single endpoint) is written without the tag, exactly as kratos
//! writes it. The configured tags may not start with `version=` or `endpoints=`.
//!
//! One instance per id: Consul keys services by id per agent, so two agents (two hosts) may
//! each hold one id, and both pass. A service moved to another host is listed there and,
//! until the servers mark its old agent's node failed, on the old host too; and an agent
//! that comes back with its data shows its old registrations as they were when it died,
//! passing, until it syncs. The latest registration of an id (the highest `ModifyIndex`) is
//! the instance read; the others are left out.

use std::collections::{btree_map, BTreeMap};

use registry_core::{Endpoint, Error, Result, ServiceInstance};
use serde::{Deserialize, Serialize};

use crate::Config;

/// Tagged address keys Consul itself uses; never endpoints.
const CONSUL_ADDRESS_KEYS: [&str; 6] =
    ["lan", "wan", "lan_ipv4", "wan_ipv4", "lan_ipv6", "wan_ipv6"];
const VERSION_TAG: &str = "version=";
/// The tag that keeps the endpoints' order, when the usual reading would not (module docs).
const ENDPOINTS_TAG: &str = "endpoints=";
/// Tags this backend writes; configured tags may not start with them.
pub(crate) const RESERVED_TAG_PREFIXES: [&str; 2] = [VERSION_TAG, ENDPOINTS_TAG];

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
    // The agent answers 400 "Invalid service address" for these (its `ipaddr.IsAny`).
    if let Some(first) = endpoints.first() {
        if matches!(first.host(), "0.0.0.0" | "::") {
            return Err(Error::invalid(
                "endpoint",
                first.as_str(),
                "Consul refuses the any address as a service's address (the first endpoint's host)",
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
    let mut read_back: Vec<&Endpoint> = endpoints.iter().collect();
    read_back.sort_by(|a, b| a.scheme().cmp(b.scheme()));
    usual_order(&mut read_back, &address, port);
    if !read_back
        .iter()
        .map(|e| e.scheme())
        .eq(endpoints.iter().map(|e| e.scheme()))
    {
        let schemes: Vec<&str> = endpoints.iter().map(Endpoint::scheme).collect();
        tags.push(format!("{ENDPOINTS_TAG}{}", schemes.join(",")));
    }
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

/// Orders endpoints read in scheme order as a reader does without the `endpoints=` tag: the
/// one at the service's `address:port` first (a stable sort: the rest keep their order).
fn usual_order(endpoints: &mut [&Endpoint], address: &str, port: u16) {
    endpoints.sort_by_key(|e| !(e.host() == address && e.port() == port));
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
    /// The node's name (its agent's).
    #[serde(default)]
    node: String,
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
    /// The raft index of the registration's last write.
    #[serde(default)]
    modify_index: u64,
}

impl HealthEntry {
    fn node(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.node.as_str())
    }

    /// Whether this entry was written after `other` (the node's name decides between
    /// writes of one index, which one registration request never makes for one id).
    fn later_than(&self, other: &HealthEntry) -> bool {
        (self.service.modify_index, self.node()) > (other.service.modify_index, other.node())
    }
}

/// The instances of a health answer, one per id: of the entries of one id (held by several
/// agents), the one written last; then each as [`from_consul`] reads it.
pub(crate) fn instances(entries: Vec<HealthEntry>) -> Vec<ServiceInstance> {
    let mut latest: BTreeMap<String, HealthEntry> = BTreeMap::new();
    for entry in entries {
        match latest.entry(entry.service.id.clone()) {
            btree_map::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
            btree_map::Entry::Occupied(mut slot) => {
                let older = if entry.later_than(slot.get()) {
                    slot.insert(entry)
                } else {
                    entry
                };
                let kept = slot.get();
                tracing::debug!(
                    service = %kept.service.service,
                    id = %kept.service.id,
                    node = kept.node(),
                    left_out = older.node(),
                    "two agents hold this id: the registration written last is the instance"
                );
            }
        }
    }
    latest.into_values().filter_map(from_consul).collect()
}

/// The instance an entry describes, or `None` (logged) when it is not a valid one.
pub(crate) fn from_consul(entry: HealthEntry) -> Option<ServiceInstance> {
    let service = entry.service;
    let address = if service.address.is_empty() {
        entry.node.map(|n| n.address).unwrap_or_default()
    } else {
        service.address
    };
    let tag = |prefix: &str| {
        service
            .tags
            .iter()
            .flatten()
            .find_map(|t| t.strip_prefix(prefix))
    };
    let version = tag(VERSION_TAG).unwrap_or_default().to_owned();
    let order: Option<Vec<&str>> = tag(ENDPOINTS_TAG).map(|list| list.split(',').collect());
    let endpoints: Vec<Endpoint> = service
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
    // Tagged addresses come back keyed by scheme (so in scheme order): in the order the
    // `endpoints=` tag gives when it names exactly their schemes, else the first endpoint
    // registered is the one at Address:Port and the others follow in scheme order.
    let mut ordered: Vec<&Endpoint> = endpoints.iter().collect();
    let position = |e: &Endpoint| order.iter().flatten().position(|s| *s == e.scheme());
    let exact = order.as_ref().is_some_and(|order| {
        order.len() == endpoints.len() && endpoints.iter().all(|e| position(e).is_some())
    });
    if exact {
        ordered.sort_by_key(|e| position(e));
    } else {
        usual_order(&mut ordered, &address, service.port);
    }
    let mut endpoints: Vec<String> = ordered.iter().map(|e| e.as_str().to_owned()).collect();
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
        for any in [
            "http://0.0.0.0:8000",
            "grpc://[::]:9000",
            "grpc://0.0.0.0:1",
        ] {
            let first = ServiceInstance::builder("1", "s")
                .endpoint(any)
                .endpoint("x://10.0.0.1:1")
                .build()
                .unwrap();
            assert!(matches!(
                check_instance(&first),
                Err(Error::InvalidInput {
                    field: "endpoint",
                    ..
                })
            ));
            // Not first: the service's address is another endpoint's.
            let second = ServiceInstance {
                endpoints: vec!["x://10.0.0.1:1".into(), any.into()],
                ..first
            };
            assert!(check_instance(&second).is_ok());
        }
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

#[cfg(test)]
mod properties {
    use std::net::IpAddr;

    use proptest::prelude::*;
    use registry_core::strategy::{self, Drawn, Shape};
    use serde_json::{json, Value};

    use super::*;

    /// What Consul holds ([`check_instance`]): one endpoint per scheme, none of Consul's own
    /// tagged-address keys as a scheme, not the any address first, at most 64 metadata
    /// entries with keys of up to 128 of `A-Z a-z 0-9 _ -` not starting `consul-`, values of
    /// at most 512 bytes.
    fn consul() -> Shape {
        Shape {
            one_endpoint_per_scheme: true,
            reserved_schemes: CONSUL_ADDRESS_KEYS.iter().map(|k| k.to_string()).collect(),
            any_address_first: false,
            max_metadata_entries: 64,
            max_metadata_key_bytes: 128,
            max_metadata_value_bytes: 512,
            token_keys: true,
            reserved_key_prefixes: vec!["consul-".into()],
            ..Shape::default()
        }
    }

    /// Configured tags: anything but this backend's own.
    fn tags() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            prop_oneof![
                "[a-z0-9=,:.-]{0,12}",
                Just("version".to_owned()),
                Just("endpoints".to_owned())
            ],
            0..3,
        )
        .prop_map(|tags| {
            tags.into_iter()
                .filter(|t| !RESERVED_TAG_PREFIXES.iter().any(|p| t.starts_with(p)))
                .collect()
        })
    }

    /// A Consul agent, as far as these tests go: it takes the body of
    /// `PUT /v1/agent/service/register` (as JSON text), refuses what the agent refuses with a
    /// 400 (the service address `0.0.0.0`, `::` or `[::]`: `ipaddr.IsAny`; metadata beyond
    /// `ValidateServiceMetadata`), adds the tagged addresses it adds itself (`lan_ipv4` and
    /// `wan_ipv4` for an IPv4 service address, `lan_ipv6` and `wan_ipv6` for an IPv6 one), and
    /// answers the entry of `GET /v1/health/service/:name` as JSON text, with the node, the
    /// check and the fields this backend does not read.
    fn agent(registration: &AgentRegistration) -> Result<HealthEntry, String> {
        let body = serde_json::to_string(registration).map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let address = text(&body["Address"]);
        if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err("400 Invalid service address".into());
        }
        let meta = body["Meta"].as_object().cloned().unwrap_or_default();
        if meta.len() > 64 {
            return Err("400 Invalid Service Meta: more than 64 key/value pairs".into());
        }
        for (key, value) in &meta {
            let key_ok = !key.is_empty()
                && key.len() <= 128
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !key.starts_with("consul-");
            if !key_ok || text(value).len() > 512 {
                return Err(format!("400 Invalid Service Meta: {key:?}"));
            }
        }
        let port = body["Port"].clone();
        let mut tagged = body["TaggedAddresses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        // Go's net.ParseIP: an IPv4-mapped IPv6 address is an IPv4 one.
        let own: &[&str] = match address.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => &["lan_ipv4", "wan_ipv4"],
            Ok(IpAddr::V6(ip)) if ip.to_ipv4_mapped().is_some() => &["lan_ipv4", "wan_ipv4"],
            Ok(IpAddr::V6(_)) => &["lan_ipv6", "wan_ipv6"],
            Err(_) => &[],
        };
        for key in own {
            tagged
                .entry(key.to_string())
                .or_insert(json!({"Address": address, "Port": port}));
        }
        let id = text(&body["ID"]);
        let entry = json!({
            "Node": {
                "ID": "1b6d4a2e-0000-4000-8000-000000000001", "Node": "node-1",
                "Address": "10.9.9.9", "Datacenter": "dc1",
                "TaggedAddresses": {"lan": "10.9.9.9", "lan_ipv4": "10.9.9.9", "wan": "10.9.9.9", "wan_ipv4": "10.9.9.9"},
                "Meta": {"consul-network-segment": ""}, "CreateIndex": 5, "ModifyIndex": 6
            },
            "Service": {
                "ID": id, "Service": body["Name"], "Tags": body["Tags"], "Address": address,
                "TaggedAddresses": tagged, "Meta": meta, "Port": port,
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {},
                "PeerName": "", "CreateIndex": 10, "ModifyIndex": 10
            },
            "Checks": [{
                "Node": "node-1", "CheckID": format!("service:{id}"), "Name": "check",
                "Status": "passing", "Notes": "", "Output": "", "ServiceID": id,
                "ServiceName": body["Name"], "ServiceTags": body["Tags"], "Type": "ttl"
            }]
        });
        serde_json::from_str(&entry.to_string()).map_err(|e| e.to_string())
    }

    /// Registers `instance` with the modelled agent and reads it back: the first difference,
    /// or why it could not be registered.
    fn round_trip(instance: &ServiceInstance, config: &Config) -> Result<Option<String>, String> {
        let registration = to_consul(instance, config).map_err(|e| e.to_string())?;
        let entry = agent(&registration)?;
        let back = from_consul(entry).unwrap_or_default();
        Ok(strategy::difference(instance, &back))
    }

    proptest! {
        #![proptest_config(strategy::config(256))]

        /// Every valid instance that Consul holds comes back exactly, endpoints in order,
        /// through the agent's registration and its health answer, with any configured tags.
        #[test]
        fn every_instance_consul_holds_round_trips(
            Drawn(instance) in strategy::instance(&consul()),
            tags in tags(),
        ) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            let config = Config::default().with_tags(tags);
            prop_assert!(config.check().is_ok(), "{:?}", config.check());
            let outcome = round_trip(&instance, &config);
            prop_assert_eq!(outcome, Ok(None));
        }

        /// Whatever a caller passes is refused with a typed error before anything is
        /// written, or is held (the agent takes it) and read back exactly; never a panic.
        #[test]
        fn any_instance_is_refused_or_round_trips(Drawn(instance) in strategy::any_instance()) {
            match to_consul(&instance, &Config::default()) {
                Err(Error::InvalidInput { .. }) => {}
                Err(e) => prop_assert!(false, "refused with {e:?}, not InvalidInput"),
                Ok(_) => {
                    prop_assert!(instance.validate().is_ok());
                    let outcome = round_trip(&instance, &Config::default());
                    prop_assert_eq!(outcome, Ok(None));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(strategy::config(128))]

        /// One thing Consul cannot hold, added to a valid instance that it can: refused with
        /// `InvalidInput`, before anything is written.
        #[test]
        fn what_consul_cannot_hold_is_refused(
            Drawn(instance) in strategy::instance(&consul()),
            flaw in 0..9usize,
        ) {
            let mut bad = instance;
            // Room for the endpoints added.
            bad.endpoints.truncate(registry_core::validate::MAX_ENDPOINTS - 2);
            match flaw {
                0 => {
                    bad.endpoints.push("grpc://10.0.0.1:1".into());
                    bad.endpoints.push("GRPC://10.0.0.2:2".into());
                }
                1 => bad.endpoints.push("lan://10.0.0.1:1".into()),
                2 => bad.endpoints.insert(0, "any1://0.0.0.0:8000".into()),
                3 => bad.endpoints.insert(0, "any2://[0:0::0]:8000".into()),
                4 => drop(bad.metadata.insert("ключ".into(), "v".into())),
                5 => drop(bad.metadata.insert("consul-x".into(), "v".into())),
                6 => drop(bad.metadata.insert("k".repeat(129), "v".into())),
                7 => {
                    for i in 0..65 {
                        bad.metadata.insert(format!("many{i}"), "v".into());
                    }
                }
                _ => drop(bad.metadata.insert("long".into(), "é".repeat(257))),
            }
            prop_assert!(bad.validate().is_ok(), "{:?}", bad.validate());
            let refused = to_consul(&bad, &Config::default());
            prop_assert!(
                matches!(refused, Err(Error::InvalidInput { .. })),
                "flaw {}: {:?}", flaw, refused.err()
            );
        }
    }

    /// The `endpoints=` tag is written only when the usual reading would change the order: a
    /// kratos-shaped instance is written exactly as kratos writes it.
    #[test]
    fn the_order_tag_only_when_needed() {
        let tags_of = |endpoints: &[&str]| {
            let mut instance = ServiceInstance::builder("1", "s").version("v1");
            for e in endpoints {
                instance = instance.endpoint(*e);
            }
            let instance = instance.build().unwrap();
            let registration = to_consul(&instance, &Config::default()).unwrap();
            assert_eq!(round_trip(&instance, &Config::default()), Ok(None));
            registration.tags
        };
        for usual in [
            &[
                "http://10.0.0.1:8000",
                "grpc://10.0.0.1:9000?isSecure=false",
            ][..],
            &["grpc://10.0.0.1:9000", "http://10.0.0.1:8000"],
            &["grpc://[::1]:9000"],
            &["http://h:1", "a://h:2", "b://h:3"],
            &[],
        ] {
            assert_eq!(tags_of(usual), ["version=v1"], "{usual:?}");
        }
        for (unusual, tag) in [
            (&["http://h:1", "grpc://h:1"][..], "endpoints=http,grpc"),
            (
                &["http://h:1", "x://h:2", "grpc://h:3"],
                "endpoints=http,x,grpc",
            ),
            (&["b://h:1", "c://h:2", "a://h:3"], "endpoints=b,c,a"),
        ] {
            assert_eq!(tags_of(unusual), ["version=v1", tag], "{unusual:?}");
        }
        // 100 endpoints, the conformance suite's case: in order.
        let mut hundred = vec![
            "http://127.0.0.1:40000".to_owned(),
            "grpc://127.0.0.1:40001".to_owned(),
        ];
        hundred.extend((2..100u16).map(|i| format!("e{i:02}://127.0.0.1:{}", 40_000 + i)));
        let hundred: Vec<&str> = hundred.iter().map(String::as_str).collect();
        assert_eq!(tags_of(&hundred).len(), 2);
    }

    /// A tag that does not name exactly the tagged schemes (written by someone else, or a
    /// tagged address skipped) is not used: the usual reading applies.
    #[test]
    fn an_order_tag_that_does_not_match_is_ignored() {
        let read = |tag: &str| {
            let entry = serde_json::from_value(json!({
                "Service": {
                    "ID": "1", "Service": "s", "Tags": ["version=", tag], "Address": "h", "Port": 2,
                    "TaggedAddresses": {
                        "a": {"Address": "a://h:1", "Port": 1},
                        "b": {"Address": "b://h:2", "Port": 2},
                        "c": {"Address": "c://h:3", "Port": 3},
                    }
                }
            }))
            .unwrap();
            from_consul(entry).unwrap().endpoints
        };
        assert_eq!(read("endpoints=c,a,b"), ["c://h:3", "a://h:1", "b://h:2"]);
        for other in [
            "endpoints=c,a",
            "endpoints=c,a,b,d",
            "endpoints=c,c,a",
            "endpoints=",
            "x",
        ] {
            assert_eq!(read(other), ["b://h:2", "a://h:1", "c://h:3"], "{other}");
        }
    }

    /// Two agents hold one id (a service moved to another host, its old agent not yet known
    /// dead, or back with its old registrations): the registration written last is the
    /// instance, whatever the order of the answer.
    #[test]
    fn one_instance_per_id_the_one_written_last() {
        let entry = |node: &str, id: &str, host: &str, index: u64| {
            json!({
                "Node": {"Node": node, "Address": "127.0.0.1"},
                "Service": {
                    "ID": id, "Service": "s", "Tags": ["version=v1"],
                    "Address": host, "Port": 9000, "ModifyIndex": index,
                    "TaggedAddresses": {"grpc": {"Address": format!("grpc://{host}:9000"), "Port": 9000}},
                }
            })
        };
        let read = |entries: Vec<Value>| {
            let entries: Vec<HealthEntry> = serde_json::from_value(Value::Array(entries)).unwrap();
            instances(entries)
                .into_iter()
                .map(|i| (i.id, i.endpoints))
                .collect::<Vec<_>>()
        };
        let old = entry("host-0", "i1", "10.0.0.1", 20);
        let moved = entry("host-2", "i1", "10.0.0.3", 35);
        let other = entry("host-0", "i2", "10.0.0.1", 21);
        let expected = [
            ("i1".to_owned(), vec!["grpc://10.0.0.3:9000".to_owned()]),
            ("i2".to_owned(), vec!["grpc://10.0.0.1:9000".to_owned()]),
        ];
        assert_eq!(
            read(vec![old.clone(), moved.clone(), other.clone()]),
            expected
        );
        assert_eq!(
            read(vec![moved.clone(), other.clone(), old.clone()]),
            expected
        );
        // One index for both (never seen): the node's name decides, in any order.
        let twin = entry("host-1", "i1", "10.0.0.2", 20);
        let expected = [("i1".to_owned(), vec!["grpc://10.0.0.2:9000".to_owned()])];
        assert_eq!(read(vec![old.clone(), twin.clone()]), expected);
        assert_eq!(read(vec![twin, old]), expected);
    }
}

//! What the Nacos services of one name hold, as the Nacos backend's watch reads them, rebuilt
//! into our instances (`format::assemble`). Input: JSON
//! `{"name": .., "services": {"helloworld.grpc": [nacos instance, ..], ..}, "previous": [kratos instance, ..]}`,
//! a Nacos instance being nacos-sdk's shape with every field optional. What comes out is a
//! valid instance of that name, under its own id.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use libfuzzer_sys::fuzz_target;
use registry_core::ServiceInstance;
use registry_nacos::fuzzing::{assemble, NacosInstance};
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    name: String,
    #[serde(default)]
    services: BTreeMap<String, Vec<Instance>>,
    /// The last complete value of some ids (what the watch showed before).
    #[serde(default)]
    previous: Vec<ServiceInstance>,
}

/// nacos-sdk's instance, every field optional.
#[derive(Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Instance {
    instance_id: Option<String>,
    ip: String,
    port: i32,
    weight: f64,
    healthy: bool,
    enabled: bool,
    ephemeral: bool,
    cluster_name: Option<String>,
    service_name: Option<String>,
    metadata: HashMap<String, String>,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            instance_id: None,
            ip: String::new(),
            port: 0,
            weight: 1.0,
            healthy: true,
            enabled: true,
            ephemeral: true,
            cluster_name: None,
            service_name: None,
            metadata: HashMap::new(),
        }
    }
}

impl From<Instance> for NacosInstance {
    fn from(i: Instance) -> Self {
        NacosInstance {
            instance_id: i.instance_id,
            ip: i.ip,
            port: i.port,
            weight: i.weight,
            healthy: i.healthy,
            enabled: i.enabled,
            ephemeral: i.ephemeral,
            cluster_name: i.cluster_name,
            service_name: i.service_name,
            metadata: i.metadata,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    // A watch follows valid names only, and shows only valid instances of its name.
    let name = registry_fuzz::watched_name(&input.name);
    let services = input
        .services
        .into_iter()
        .map(|(service, list)| (service, list.into_iter().map(Into::into).collect()))
        .collect();
    let previous: BTreeMap<String, ServiceInstance> = input
        .previous
        .into_iter()
        .filter(|i| i.name == name && i.validate().is_ok())
        .map(|i| (i.id.clone(), i))
        .collect();
    for (id, instance) in assemble(&name, &services, &previous) {
        assert_eq!(id, instance.id, "listed under another id: {instance:?}");
        registry_fuzz::check_instance_of(&instance, &name);
    }
});

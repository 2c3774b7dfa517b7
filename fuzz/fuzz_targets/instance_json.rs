//! An instance's JSON, as read from any registry that stores kratos JSON (etcd, ZooKeeper)
//! or given by a caller: `ServiceInstance::from_json`. What it accepts is valid and
//! round-trips exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_core::ServiceInstance;

fuzz_target!(|data: &[u8]| {
    let Ok(instance) = ServiceInstance::from_json(data) else {
        return;
    };
    if let Err(e) = instance.validate() {
        panic!("from_json accepted an instance that does not validate ({e}): {instance:?}");
    }
    let json = instance.to_json();
    match ServiceInstance::from_json(json.as_bytes()) {
        Ok(back) => assert_eq!(back, instance, "from_json(to_json()) differs; json {json}"),
        Err(e) => panic!("its own JSON is refused ({e}): {json}"),
    }
});

//! A Consul answer to `GET /v1/health/service/:name`: the health entries, then the instance
//! each describes (`format::from_consul`), as the Consul backend's watch reads them. What
//! comes out is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(instances) = registry_consul::fuzzing::health(data) else {
        return;
    };
    for instance in instances {
        if let Err(e) = instance.validate() {
            panic!("an invalid instance came out ({e}): {instance:?}");
        }
    }
});

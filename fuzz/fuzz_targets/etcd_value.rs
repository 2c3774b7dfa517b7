//! A key and value read from etcd under our prefix (any bytes, non-UTF-8 included), decoded
//! as the etcd backend's watch does (`source::decode`). Input: the key, a newline, the
//! value; the service watched is the key's second-to-last segment (`helloworld` in
//! `/microservices/helloworld/1`). What comes out is a valid instance of that service.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value, name) = registry_fuzz::key_value(data);
    if let Some(instance) = registry_etcd::fuzzing::decode(key, value, &name) {
        registry_fuzz::check_instance_of(&instance, &name);
    }
});

//! A node's path and data read from ZooKeeper under our root (any bytes, non-UTF-8
//! included), decoded as the ZooKeeper backend's watch does. Input: the path, a newline,
//! the data; the service watched is the path's second-to-last segment (`helloworld` in
//! `/microservices/helloworld/1`). What comes out is a valid instance of that service.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (path, value, name) = registry_fuzz::key_value(data);
    let path = String::from_utf8_lossy(path);
    if let Some(instance) = registry_zookeeper::fuzzing::decode(&path, value, &name) {
        registry_fuzz::check_instance_of(&instance, &name);
    }
});

//! Values read from a registry are untrusted: this is where they are checked, once, on the
//! way in, and where what is skipped or clamped is said, once.
//!
//! Anyone who can write to a shared registry can put anything under our prefix, and every
//! client watching it reads it again on each change. So a backend hands every value it reads
//! to [`decode`] (JSON values: etcd, ZooKeeper) or [`check`] (instances it rebuilt from the
//! server's own shape: Consul, Nacos), which validate it
//! ([`ServiceInstance::validate`], with the bounds of [`crate::validate`]) and skip it when it
//! is not valid; and a client reads a weight through [`weight`], which clamps it.
//!
//! Each skipped or clamped value is logged as a warning the first time this process meets
//! it (the same backend, service, key and reason) and at debug level afterwards, so that a
//! bad value left in a registry does not repeat its warning on every change of the service.

use std::collections::HashSet;
use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use crate::ServiceInstance;

/// How many distinct skipped values are remembered; past this the memory starts over (and a
/// value may be warned about once more).
const REMEMBERED: usize = 65_536;

static SAID: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Whether this is the first time `what` is said; remembers it.
fn first_time(what: &(&str, &str, &str, &str)) -> bool {
    let mut hasher = DefaultHasher::new();
    what.hash(&mut hasher);
    let fingerprint = hasher.finish();
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.len() >= REMEMBERED {
        said.clear();
    }
    said.insert(fingerprint)
}

/// Says that the value at `key` of service `service`, read from `backend`, was skipped for
/// `reason`: a warning the first time, debug afterwards.
pub fn skip(backend: &str, service: &str, key: &str, reason: impl Display) {
    let reason = reason.to_string();
    if first_time(&(backend, service, key, &reason)) {
        tracing::warn!(%backend, %service, %key, %reason, "registry value skipped");
    } else {
        tracing::debug!(%backend, %service, %key, %reason, "registry value skipped (again)");
    }
}

/// Decodes the JSON value at `key` as an instance of service `name`: `None`, said once, when
/// it is not a valid instance ([`ServiceInstance::from_json`]) or names another service.
pub fn decode(backend: &str, name: &str, key: &str, value: &[u8]) -> Option<ServiceInstance> {
    match ServiceInstance::from_json(value) {
        Ok(instance) if instance.name == name => Some(instance),
        Ok(instance) => {
            skip(
                backend,
                name,
                key,
                format_args!("names another service, {:?}", instance.name),
            );
            None
        }
        Err(e) => {
            skip(backend, name, key, e);
            None
        }
    }
}

/// Passes `instance`, rebuilt from what `backend` holds at `key`, when it is valid
/// ([`ServiceInstance::validate`]); otherwise `None`, said once.
pub fn check(backend: &str, key: &str, instance: ServiceInstance) -> Option<ServiceInstance> {
    match instance.validate() {
        Ok(()) => Some(instance),
        Err(e) => {
            skip(backend, &instance.name, key, e);
            None
        }
    }
}

/// The largest weight an instance can have (Nacos' own bound): a larger one is taken as this,
/// so that sums of weights stay finite.
pub const MAX_WEIGHT: f64 = 10_000.0;

/// The weight of `instance` for load balancing, from its `weight` metadata (go-kratos' key):
/// 1 when absent; 1, said once, when not a positive finite number; at most [`MAX_WEIGHT`],
/// said once when clamped.
pub fn weight(instance: &ServiceInstance) -> f64 {
    let Some(text) = instance.metadata.get("weight") else {
        return 1.0;
    };
    match text.parse::<f64>() {
        Ok(w) if w.is_finite() && w > MAX_WEIGHT => {
            skip(
                "weight",
                &instance.name,
                &instance.id,
                format_args!("weight {text:?} is above {MAX_WEIGHT}; {MAX_WEIGHT} used"),
            );
            MAX_WEIGHT
        }
        Ok(w) if w.is_finite() && w > 0.0 => w,
        _ => {
            skip(
                "weight",
                &instance.name,
                &instance.id,
                format_args!("weight {text:?} is not a positive number; 1 used"),
            );
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_weight(w: &str) -> ServiceInstance {
        ServiceInstance::builder("w", "weights")
            .metadata("weight", w)
            .endpoint("http://127.0.0.1:1")
            .build()
            .unwrap()
    }

    #[test]
    fn weights_are_clamped() {
        assert_eq!(weight(&with_weight("5")), 5.0);
        assert_eq!(weight(&with_weight("1e308")), MAX_WEIGHT);
        for bad in ["inf", "NaN", "-1", "0", "x", ""] {
            assert_eq!(weight(&with_weight(bad)), 1.0, "{bad}");
        }
        let none = ServiceInstance::builder("w", "weights").build().unwrap();
        assert_eq!(weight(&none), 1.0);
    }

    #[test]
    fn a_bad_value_is_said_once() {
        assert!(first_time(&("t", "said-once", "k", "r")));
        assert!(!first_time(&("t", "said-once", "k", "r")));
        assert!(first_time(&("t", "said-once", "k", "another reason")));
        assert!(first_time(&("t", "said-once", "k2", "r")));
    }

    #[test]
    fn decode_skips_what_is_not_an_instance_of_the_service() {
        let json = ServiceInstance::builder("1", "a")
            .endpoint("http://127.0.0.1:1")
            .build()
            .unwrap()
            .to_json();
        assert!(decode("t", "a", "k", json.as_bytes()).is_some());
        assert!(decode("t", "b", "k", json.as_bytes()).is_none());
        assert!(decode("t", "a", "k", b"\xff\xfe not json").is_none());
        assert!(decode("t", "a", "k", &vec![b' '; 3 * 1024 * 1024]).is_none());
    }
}

/// Every valid instance comes back exactly from its JSON through [`decode`]: the property
/// of the etcd and ZooKeeper backends, whose decoders are this one under their names.
#[cfg(all(test, feature = "proptest"))]
mod round_trip {
    use proptest::prelude::*;

    use crate::strategy::{self, Drawn, Shape};

    proptest! {
        #![proptest_config(strategy::config(256))]

        #[test]
        fn every_valid_instance_round_trips(
            Drawn(instance) in strategy::instance(&Shape::default()),
        ) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            let key = format!("/microservices/{}/{}", instance.name, instance.id);
            let value = instance.to_json();
            let Some(back) = super::decode("test", &instance.name, &key, value.as_bytes()) else {
                return Err(TestCaseError::fail(format!(
                    "skipped when read ({} bytes of JSON)",
                    value.len()
                )));
            };
            let difference = strategy::difference(&instance, &back);
            prop_assert!(difference.is_none(), "{:?}", difference);
        }
    }
}

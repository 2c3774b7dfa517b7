//! The service instance, in exactly the go-kratos JSON shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::validate::{
    check_bounds, is_plain_endpoint, validate_id, validate_name, MAX_ENCODED_LEN, MAX_JSON_LEN,
};
use crate::{Endpoint, Error, Result};

/// One running instance of a service.
///
/// Serialises to exactly the go-kratos shape, field names included:
/// `{"id":..,"name":..,"version":..,"metadata":{..},"endpoints":[..]}`. Reading accepts what
/// kratos writes: `"metadata": null`, `"endpoints": null` and missing fields.
///
/// ```
/// use registry_core::ServiceInstance;
/// let instance = ServiceInstance::builder("8fc08b88", "helloworld")
///     .version("v1.2.0")
///     .metadata("zone", "eu-1")
///     .endpoint("http://127.0.0.1:8000")
///     .endpoint("grpc://127.0.0.1:9000?isSecure=false")
///     .build()
///     .unwrap();
/// assert_eq!(instance.endpoint("grpc").unwrap().port(), 9000);
/// let json = serde_json::to_string(&instance).unwrap();
/// assert_eq!(serde_json::from_str::<ServiceInstance>(&json).unwrap(), instance);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Unique id of this instance within its service (see [`crate::validate`] for the rule).
    #[serde(default)]
    pub id: String,
    /// The service name (see [`crate::validate`] for the rule).
    #[serde(default)]
    pub name: String,
    /// The version of the service this instance runs; may be empty.
    #[serde(default)]
    pub version: String,
    /// Free-form key/value metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    /// Endpoint URLs, such as `http://10.0.0.1:8000` and `grpc://10.0.0.1:9000?isSecure=false`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<String>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl ServiceInstance {
    /// Starts building an instance with its id and service name.
    pub fn builder(id: impl Into<String>, name: impl Into<String>) -> ServiceInstanceBuilder {
        ServiceInstanceBuilder {
            instance: ServiceInstance {
                id: id.into(),
                name: name.into(),
                ..Default::default()
            },
        }
    }

    /// Checks the id, the name, every endpoint, and the bounds on the version, endpoints and
    /// metadata ([`crate::validate`]). Every backend runs this before writing anything, so an
    /// invalid instance changes nothing, and on every instance it reads, so an invalid one is
    /// skipped.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        validate_name(&self.name)?;
        check_bounds(&self.version, &self.endpoints, &self.metadata)?;
        for ep in &self.endpoints {
            // The plainest endpoints (`scheme://a.b.c.d:port`) need no URL parser.
            if !is_plain_endpoint(ep) {
                Endpoint::parse(ep)?;
            }
        }
        let json_len = self.json_len();
        if json_len > MAX_JSON_LEN {
            return Err(Error::invalid(
                "instance",
                format!("{json_len} bytes of JSON"),
                format!("more than {MAX_JSON_LEN} bytes once encoded"),
            ));
        }
        Ok(())
    }

    /// The length of [`to_json`](Self::to_json): counted without encoding when even
    /// escaping every byte (six bytes each) would stay within [`MAX_JSON_LEN`].
    fn json_len(&self) -> usize {
        let strings = self.id.len()
            + self.name.len()
            + self.version.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.endpoints.iter().map(String::len).sum::<usize>();
        let items = self.metadata.len() + self.endpoints.len();
        let most = 6 * strings + 6 * items + 64;
        if most <= MAX_JSON_LEN {
            return most;
        }
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // A struct of strings and a string map always serialises.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }

    /// The parsed endpoints, in order; fails on the first that does not parse.
    pub fn parsed_endpoints(&self) -> Result<Vec<Endpoint>> {
        self.endpoints.iter().map(|e| Endpoint::parse(e)).collect()
    }

    /// The first endpoint whose scheme is `scheme` (for example `"grpc"`), skipping any that
    /// do not parse.
    pub fn endpoint(&self, scheme: &str) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .filter_map(|e| Endpoint::parse(e).ok())
            .find(|e| e.scheme() == scheme)
    }

    /// The instance as go-kratos JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings and a string map always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an instance from JSON and validates it. Backends use this for values found in the
    /// registry, so that a foreign or corrupt value is reported, not trusted.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(Error::invalid(
                "instance",
                format!("{} bytes", bytes.len()),
                format!("larger than {MAX_ENCODED_LEN} bytes"),
            ));
        }
        let instance: ServiceInstance = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid(
                "instance",
                String::from_utf8_lossy(bytes),
                format!("not an instance: {e}"),
            )
        })?;
        instance.validate()?;
        Ok(instance)
    }
}

/// Builds a [`ServiceInstance`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct ServiceInstanceBuilder {
    instance: ServiceInstance,
}

impl ServiceInstanceBuilder {
    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.instance.version = version.into();
        self
    }

    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.instance.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds one endpoint URL.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.instance.endpoints.push(endpoint.into());
        self
    }

    /// Validates and returns the instance.
    pub fn build(self) -> Result<ServiceInstance> {
        self.instance.validate()?;
        Ok(self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value captured from a real go-kratos service (WIRE-FORMAT.md).
    const KRATOS: &str = r#"{"id":"8fc08b88-e37b-11ec-bb6f-88d7f62323b4","name":"helloworld","version":"","metadata":null,"endpoints":["http://192.168.56.1:8080","grpc://192.168.56.1:9000"]}"#;

    #[test]
    fn reads_the_captured_kratos_value() {
        let i = ServiceInstance::from_json(KRATOS.as_bytes()).unwrap();
        assert_eq!(i.id, "8fc08b88-e37b-11ec-bb6f-88d7f62323b4");
        assert_eq!(i.name, "helloworld");
        assert_eq!(i.version, "");
        assert!(i.metadata.is_empty());
        assert_eq!(
            i.endpoints,
            ["http://192.168.56.1:8080", "grpc://192.168.56.1:9000"]
        );
        assert_eq!(i.endpoint("grpc").unwrap().port(), 9000);
    }

    #[test]
    fn writes_the_kratos_field_names_in_order() {
        let i = ServiceInstance::builder("1", "helloworld")
            .endpoint("http://127.0.0.1:8000")
            .metadata("k", "v")
            .build()
            .unwrap();
        assert_eq!(
            i.to_json(),
            r#"{"id":"1","name":"helloworld","version":"","metadata":{"k":"v"},"endpoints":["http://127.0.0.1:8000"]}"#
        );
    }

    #[test]
    fn accepts_missing_fields_and_nulls() {
        let i: ServiceInstance =
            serde_json::from_str(r#"{"id":"a","name":"b","endpoints":null}"#).unwrap();
        assert_eq!(i.version, "");
        assert!(i.endpoints.is_empty() && i.metadata.is_empty());
    }

    #[test]
    fn corrupt_values_are_typed_errors() {
        for bad in [&b"not json"[..], br#"{"id":"","name":"x"}"#, b"[1,2]"] {
            let err = ServiceInstance::from_json(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
    }

    #[test]
    fn bounds_hold_both_ways() {
        use crate::validate::*;
        let base = || ServiceInstance::builder("1", "svc").endpoint("http://127.0.0.1:80");
        // At the bounds: accepted.
        let mut at = base()
            .version("v".repeat(MAX_VERSION_LEN))
            .metadata("k".repeat(MAX_METADATA_KEY_LEN), "x".repeat(64 * 1024));
        for i in 1..MAX_ENDPOINTS {
            at = at.endpoint(format!("grpc://127.0.0.1:{}", 1000 + i));
        }
        let at = at.build().expect("at the bounds");
        assert_eq!(
            ServiceInstance::from_json(at.to_json().as_bytes()).unwrap(),
            at
        );
        // Past them: refused, without echoing megabytes.
        let mut too_many = base();
        for i in 0..MAX_ENDPOINTS {
            too_many = too_many.endpoint(format!("grpc://127.0.0.1:{}", 1000 + i));
        }
        for (past, field) in [
            (base().version("v".repeat(MAX_VERSION_LEN + 1)), "version"),
            (too_many, "endpoints"),
            (
                base().endpoint(format!("http://h:80/{}", "p".repeat(MAX_ENDPOINT_LEN))),
                "endpoint",
            ),
            (base().metadata("", "v"), "metadata"),
            (
                base().metadata("k".repeat(MAX_METADATA_KEY_LEN + 1), "v"),
                "metadata",
            ),
            (
                base().metadata("k", "v".repeat(MAX_METADATA_BYTES)),
                "metadata",
            ),
            (base().endpoint("http://127.0.0.1:0"), "endpoint"),
        ] {
            let err = past.build().expect_err(field);
            assert!(
                matches!(err, Error::InvalidInput { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert!(err.to_string().len() < 1000, "{field}: {err}");
        }
        let mut entries = base();
        for i in 0..=MAX_METADATA_ENTRIES {
            entries = entries.metadata(format!("k{i}"), "v");
        }
        assert!(entries.build().is_err());
        // A huge value read from a registry is skipped before parsing.
        let huge = vec![b' '; MAX_ENCODED_LEN + 1];
        let err = ServiceInstance::from_json(&huge).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    /// An instance at every bound made of control characters (each escaped as `\u0001`)
    /// encodes to more than 2 MiB: it is refused (no server would take it in one node or
    /// request), and it is not refused before parsing either, so a foreign writer's longer
    /// encoding of a valid instance is read. One of exactly [`MAX_JSON_LEN`] bytes is valid
    /// and read back.
    #[test]
    fn the_json_bound_is_checked_on_our_encoding() {
        use crate::validate::*;
        let control = |bytes: usize| "\u{1}".repeat(bytes);
        let mut at = ServiceInstance::builder("a".repeat(MAX_LEN), "n".repeat(MAX_LEN))
            .version(control(MAX_VERSION_LEN));
        for i in 0..MAX_ENDPOINTS {
            let base = format!("e{i:03}://127.0.0.1:{}/", i + 1);
            let pad = MAX_ENDPOINT_LEN - base.len();
            at = at.endpoint(base + &control(pad));
        }
        let value_len = MAX_METADATA_BYTES / MAX_METADATA_ENTRIES - 4;
        for i in 0..MAX_METADATA_ENTRIES {
            at = at.metadata(format!("k{i:03}"), control(value_len));
        }
        let err = at.build().expect_err("over the JSON bound");
        assert!(err.to_string().contains("once encoded"), "{err}");

        let mut exact = ServiceInstance::builder("1", "s").metadata("v", "");
        let empty_len = exact.clone().build().unwrap().to_json().len();
        let room = MAX_JSON_LEN - empty_len;
        exact = exact.metadata("v", control(room / 6) + &"x".repeat(room % 6));
        let exact = exact.build().expect("within the JSON bound");
        let json = exact.to_json();
        assert_eq!(json.len(), MAX_JSON_LEN);
        assert_eq!(ServiceInstance::from_json(json.as_bytes()).unwrap(), exact);
        let one_more = ServiceInstance {
            version: "v".into(),
            ..exact
        };
        assert!(one_more.validate().is_err());
        const { assert!(MAX_ENCODED_LEN > 2 * MAX_JSON_LEN) };
    }

    #[test]
    fn builder_rejects_a_bad_endpoint() {
        let err = ServiceInstance::builder("1", "svc")
            .endpoint("nohost")
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidInput {
                field: "endpoint",
                ..
            }
        ));
    }
}

//! Input validation shared by every backend.
//!
//! # The rule for service names and instance ids
//!
//! A name or id is 1 to 128 characters from `A-Z a-z 0-9 . _ -`, and starts with a letter or a
//! digit. Every backend stores such a string unescaped: as an etcd key segment and a ZooKeeper
//! node name (no `/`, never `.` or `..`), as a Consul service name and id, and inside a Nacos
//! service name (no `@@`, no `:`).
//!
//! # Bounds on an instance
//!
//! Whatever an instance carries is bounded, so that a value read from a shared registry
//! (anyone who can write there can put anything under our prefix) costs a bounded amount to
//! read, keep and pass on. [`ServiceInstance::validate`](crate::ServiceInstance::validate)
//! checks them; every backend runs it before writing (a refusal is a typed, permanent error
//! that changes nothing) and on every value it reads (an instance out of bounds is skipped
//! with a warning, the rest of the list is still delivered).
//!
//! | what | at most |
//! |---|---|
//! | name, id | [`MAX_LEN`] characters, as above |
//! | version | [`MAX_VERSION_LEN`] bytes |
//! | endpoints | [`MAX_ENDPOINTS`], each at most [`MAX_ENDPOINT_LEN`] bytes, with a port 1 to 65535 |
//! | metadata | [`MAX_METADATA_ENTRIES`] entries, keys of 1 to [`MAX_METADATA_KEY_LEN`] bytes, [`MAX_METADATA_BYTES`] of keys and values together |
//! | the instance's JSON ([`ServiceInstance::to_json`](crate::ServiceInstance::to_json)) | [`MAX_JSON_LEN`] bytes, so that it fits in one ZooKeeper node and one etcd request |
//! | an encoded instance read from a registry, before it is parsed | [`MAX_ENCODED_LEN`] bytes |

use crate::{Error, Result};

/// The longest accepted service name or instance id.
pub const MAX_LEN: usize = 128;
/// The longest accepted version, in bytes.
pub const MAX_VERSION_LEN: usize = 256;
/// The most endpoints an instance may have.
pub const MAX_ENDPOINTS: usize = 128;
/// The longest accepted endpoint URL, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 1024;
/// The most metadata entries an instance may have.
pub const MAX_METADATA_ENTRIES: usize = 256;
/// The longest accepted metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 256;
/// The most bytes of metadata keys and values, together, an instance may have.
pub const MAX_METADATA_BYTES: usize = 256 * 1024;
/// The longest JSON of a valid instance, in bytes: it fits in one ZooKeeper node (the
/// server's `jute.maxbuffer`, 1 MiB by default, bounds a whole request) and one etcd request
/// (`--max-request-bytes`, 1.5 MiB by default), so that a valid instance is never one the
/// server refuses. It only matters for instances near every other bound at once, or made of
/// characters JSON escapes (a control character takes six bytes).
pub const MAX_JSON_LEN: usize = 1_000_000;

/// The largest encoded instance read from a registry, in bytes: a larger value is skipped
/// before it is parsed.
///
/// It is the longest JSON any writer could give an instance within the other bounds, so
/// that no instance is refused before [`MAX_JSON_LEN`] is checked on our own encoding of
/// it: the id and name (never escaped), every byte of the version, the metadata and the
/// endpoints escaped as `\u00XX` (six bytes each, a control character's escape), and the
/// quotes, separators and field names around them (about 2.25 MiB).
pub const MAX_ENCODED_LEN: usize = 2 * MAX_LEN
    + 6 * (MAX_VERSION_LEN + MAX_METADATA_BYTES + MAX_ENDPOINTS * MAX_ENDPOINT_LEN)
    + 6 * MAX_METADATA_ENTRIES // "k":"v",
    + 3 * MAX_ENDPOINTS // "e",
    + 64; // {"id":"","name":"","version":"","metadata":{},"endpoints":[]}

/// Checks a service name against [the rule](self).
pub fn validate_name(name: &str) -> Result<()> {
    check_token("name", name)
}

/// Checks an instance id against [the rule](self).
pub fn validate_id(id: &str) -> Result<()> {
    check_token("id", id)
}

/// Checks the version, endpoint and metadata bounds of [the table above](self).
pub(crate) fn check_bounds(
    version: &str,
    endpoints: &[String],
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    if version.len() > MAX_VERSION_LEN {
        return Err(Error::invalid(
            "version",
            version,
            format!("longer than {MAX_VERSION_LEN} bytes"),
        ));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(Error::invalid(
            "endpoints",
            format!("{} endpoints", endpoints.len()),
            format!("more than {MAX_ENDPOINTS}"),
        ));
    }
    if let Some(long) = endpoints.iter().find(|e| e.len() > MAX_ENDPOINT_LEN) {
        return Err(Error::invalid(
            "endpoint",
            long.as_str(),
            format!("longer than {MAX_ENDPOINT_LEN} bytes"),
        ));
    }
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!("{} entries", metadata.len()),
            format!("more than {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    if let Some(key) = metadata
        .keys()
        .find(|k| k.is_empty() || k.len() > MAX_METADATA_KEY_LEN)
    {
        return Err(Error::invalid(
            "metadata",
            key.as_str(),
            format!("keys must be 1 to {MAX_METADATA_KEY_LEN} bytes"),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("{bytes} bytes"),
            format!("more than {MAX_METADATA_BYTES} bytes of keys and values"),
        ));
    }
    Ok(())
}

fn check_token(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, value, "must not be empty"));
    }
    if value.len() > MAX_LEN {
        return Err(Error::invalid(
            field,
            value,
            format!("longer than {MAX_LEN} characters"),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(
            field,
            value,
            "must start with an ASCII letter or digit",
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            field,
            value,
            format!("character {bad:?} is not allowed (use A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "helloworld",
            "hello-world",
            "com.example.Greeter",
            "8fc08b88-e37b-11ec-bb6f-88d7f62323b4",
            "a",
            "svc_1",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_a_backend_cannot_store() {
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "", "a/b", ".", "..", "-x", "a b", "a@@b", "a:b", "é", "a\n", &long,
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert!(
                matches!(err, Error::InvalidInput { field: "name", .. }),
                "{err}"
            );
            assert!(!err.is_temporary());
        }
    }
}

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

/// Whether `raw` is an endpoint of the plainest form, `scheme://a.b.c.d:port` with an
/// optional path and query of plain characters (`http://10.0.0.1:8000`,
/// `grpc://10.0.0.1:9000?isSecure=false`), which [`Endpoint::parse`](crate::Endpoint::parse)
/// accepts without a doubt: a lowercase scheme other than `file`, an IPv4 address in dotted decimal (no
/// leading zeros), a port from 1 to 65535 (no leading zeros), then nothing, or `/` or `?`
/// followed only by `A-Z a-z 0-9 - . _ ~ / = & ?`. Checking an instance's endpoints (on every
/// value read from a registry) skips parsing such an endpoint as a URL; any other goes
/// through the parser. A `false` means "parse it", not "invalid".
///
/// Public for the fuzz target that checks it against the parser; not for other use.
#[doc(hidden)]
pub fn is_plain_endpoint(raw: &str) -> bool {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return false;
    };
    // `file:` URLs have no port: the parser refuses them.
    let scheme_ok = scheme != "file"
        && scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return false;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((host, port)) = authority.split_once(':') else {
        return false;
    };
    let mut octets = 0;
    for octet in host.split('.') {
        octets += 1;
        if !is_decimal(octet, 255) {
            return false;
        }
    }
    octets == 4
        && is_decimal(port, 65535)
        && port != "0"
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/=&?".contains(&b))
}

/// Whether `text` is a decimal number from 0 to `max` without leading zeros.
fn is_decimal(text: &str, max: u32) -> bool {
    !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
        && text.parse::<u32>().is_ok_and(|n| n <= max)
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
    use crate::Endpoint;

    /// Every endpoint the plain check passes, the parser accepts, with the same port and
    /// host: the check only ever saves the parse.
    #[test]
    fn a_plain_endpoint_is_one_the_parser_accepts() {
        let schemes = ["http", "https", "grpc", "grpcs", "tcp", "a+b.c-d", "ws"];
        let tails = [
            "",
            "/",
            "?isSecure=false",
            "/a/b?x=1&y=2",
            "/./..?=",
            "?a?b=~_-",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut plain = 0;
        for _ in 0..20_000 {
            let n = next();
            let octet = |shift: u32| match (n >> shift) % 4 {
                0 => "0".to_owned(),
                1 => "255".to_owned(),
                _ => ((n >> (shift + 2)) % 256).to_string(),
            };
            let port = match (n >> 40) % 5 {
                0 => 1,
                1 => 65535,
                2 => 80,
                3 => 443,
                _ => (n >> 44) % 65535 + 1,
            };
            let raw = format!(
                "{}://{}.{}.{}.{}:{port}{}",
                schemes[(n % schemes.len() as u64) as usize],
                octet(4),
                octet(12),
                octet(20),
                octet(28),
                tails[((n >> 60) % tails.len() as u64) as usize],
            );
            assert!(is_plain_endpoint(&raw), "{raw}");
            let parsed = Endpoint::parse(&raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(u64::from(parsed.port()), port, "{raw}");
            assert_eq!(
                parsed.host(),
                raw.split("://")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .unwrap_or_default(),
                "{raw}"
            );
            plain += 1;
        }
        assert_eq!(plain, 20_000);
    }

    /// What is not of the plainest form goes through the parser (valid or not).
    #[test]
    fn anything_else_is_parsed() {
        for other in [
            "http://example.com:80",
            "http://[::1]:80",
            "HTTP://10.0.0.1:80",
            "http://10.0.0.1",
            "http://10.0.0.1:0",
            "http://10.0.0.1:65536",
            "http://10.0.0.1:080",
            "http://010.0.0.1:80",
            "http://10.0.0.256:80",
            "http://10.0.0:80",
            "http://10.0.0.1.2:80",
            "http://user@10.0.0.1:80",
            "http://10.0.0.1:80#x",
            "http://10.0.0.1:80/a%20b",
            "http://10.0.0.1:80\\x:90",
            "http://10.0.0.1:80 ",
            "http:/http://10.0.0.1:80",
            "1http://10.0.0.1:80",
            "://10.0.0.1:80",
            "http://:80",
            "file://10.0.0.1:80",
            "",
        ] {
            assert!(!is_plain_endpoint(other), "{other}");
        }
    }

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

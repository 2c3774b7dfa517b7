//! [`proptest`](mod@proptest) strategies for [`ServiceInstance`]s, for tests: the backends' property tests
//! (every valid instance round-trips exactly through the backend's on-registry format) draw
//! from these. Behind the `proptest` feature, off by default; not for production code.
//!
//! [`instance`] draws instances that pass [`ServiceInstance::validate`] and fit a [`Shape`],
//! what one backend holds on top of the core's bounds ([`crate::validate`]):
//!
//! - seven cases in eight are usual instances: ids and names of `A-Z a-z 0-9 . _ -` starting
//!   with a letter or digit, up to the 128-character maximum; a unicode version (empty
//!   included); a few metadata entries with unicode keys (or Consul's ASCII tokens) and
//!   values, and sometimes a `weight` that is a number from 0 to 10000 in various spellings;
//!   up to six endpoints;
//! - one case in eight is at the bounds: the longest id and name, the longest version, the
//!   most endpoints of the longest length, the most metadata (one value of all the bytes, or
//!   every entry), each filled with one character, a control character or `"` included (their
//!   JSON escapes make the longest encoding), cut back to [`MAX_JSON_LEN`] of JSON where
//!   they are over it (metadata values first, then endpoints).
//!
//! Endpoints: schemes `http`, `https`, `grpc`, ... and made-up ones, upper case included;
//! hosts IPv4, IPv6 (`[::1]`, compressed, full, IPv4-mapped), the any addresses, DNS names
//! (upper case, trailing dot, IDN); ports 1 to 65535, sometimes with a leading zero; paths
//! with unicode and control characters; queries such as `?isSecure=false`; fragments. Many
//! are not in the `url` crate's normalized form (`HTTP://Example.COM:080/ü`, `127.1`,
//! `[0:0:0:0:0:0:0:1]`): the text as given is what must come back.
//!
//! [`any_instance`] also draws invalid instances, for "refused with a typed error, never a
//! panic" properties, and [`config`] sets the number of cases (`PROPTEST_CASES` overrides it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;

use crate::validate::{
    MAX_ENDPOINTS, MAX_ENDPOINT_LEN, MAX_JSON_LEN, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LEN, MAX_VERSION_LEN,
};
use crate::{Endpoint, ServiceInstance};

/// What a backend holds of an instance, on top of the core's bounds. [`Default`] is the core's
/// bounds alone (etcd, ZooKeeper).
///
/// ```
/// use registry_core::strategy::Shape;
/// // Consul: one endpoint per scheme, 64 entries of ASCII-token keys, 512-byte values.
/// let consul = Shape {
///     one_endpoint_per_scheme: true,
///     reserved_schemes: vec!["lan".into(), "wan".into()],
///     any_address_first: false,
///     max_metadata_entries: 64,
///     max_metadata_key_bytes: 128,
///     max_metadata_value_bytes: 512,
///     token_keys: true,
///     reserved_key_prefixes: vec!["consul-".into()],
///     ..Shape::default()
/// };
/// # let _ = consul;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The fewest endpoints.
    pub min_endpoints: usize,
    /// The most endpoints (at most [`MAX_ENDPOINTS`]).
    pub max_endpoints: usize,
    /// At most one endpoint per scheme (Consul keys its tagged addresses by scheme).
    pub one_endpoint_per_scheme: bool,
    /// At most one endpoint per scheme and `host:port` (Nacos: one Nacos instance each).
    pub one_endpoint_per_address: bool,
    /// Schemes never used (Consul's own tagged-address keys).
    pub reserved_schemes: Vec<String>,
    /// Whether the first endpoint's host may be an any address, `0.0.0.0` or `::` (Consul
    /// refuses it as a service's address).
    pub any_address_first: bool,
    /// The most metadata entries (at most [`MAX_METADATA_ENTRIES`]).
    pub max_metadata_entries: usize,
    /// The longest metadata key, in bytes (at most [`MAX_METADATA_KEY_LEN`]).
    pub max_metadata_key_bytes: usize,
    /// The longest metadata value, in bytes.
    pub max_metadata_value_bytes: usize,
    /// Metadata keys of ASCII letters, digits, `_` and `-` only (Consul); unicode otherwise.
    pub token_keys: bool,
    /// Metadata keys never used (those the backend writes itself).
    pub reserved_keys: Vec<String>,
    /// Metadata key prefixes never used (Consul's `consul-`).
    pub reserved_key_prefixes: Vec<String>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            min_endpoints: 0,
            max_endpoints: MAX_ENDPOINTS,
            one_endpoint_per_scheme: false,
            one_endpoint_per_address: false,
            reserved_schemes: Vec::new(),
            any_address_first: true,
            max_metadata_entries: MAX_METADATA_ENTRIES,
            max_metadata_key_bytes: MAX_METADATA_KEY_LEN,
            max_metadata_value_bytes: MAX_METADATA_BYTES,
            token_keys: false,
            reserved_keys: Vec::new(),
            reserved_key_prefixes: Vec::new(),
        }
    }
}

impl Shape {
    fn max_endpoints(&self) -> usize {
        self.max_endpoints.min(MAX_ENDPOINTS)
    }

    fn max_entries(&self) -> usize {
        self.max_metadata_entries.min(MAX_METADATA_ENTRIES)
    }

    fn max_key_bytes(&self) -> usize {
        self.max_metadata_key_bytes.clamp(1, MAX_METADATA_KEY_LEN)
    }

    fn max_value_bytes(&self) -> usize {
        self.max_metadata_value_bytes.min(MAX_METADATA_BYTES)
    }

    fn key_allowed(&self, key: &str) -> bool {
        !self.reserved_keys.iter().any(|k| k == key)
            && !self
                .reserved_key_prefixes
                .iter()
                .any(|p| key.starts_with(p))
    }
}

/// A proptest configuration of `cases` cases; the environment variable `PROPTEST_CASES`
/// overrides the number (to run more in a long job, or fewer).
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        ..Config::default()
    }
}

/// A drawn instance. Its `Debug` shortens long strings, so that what proptest prints of a
/// failing case stays readable (an instance at the bounds is megabytes long; the case's seed,
/// kept in `proptest-regressions/`, draws it again whole).
#[derive(Clone, PartialEq, Eq)]
pub struct Drawn(pub ServiceInstance);

impl fmt::Debug for Drawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let metadata: BTreeMap<String, String> = i
            .metadata
            .iter()
            .map(|(k, v)| (brief(k), brief(v)))
            .collect();
        let endpoints: Vec<String> = i.endpoints.iter().map(|e| brief(e)).collect();
        f.debug_struct("ServiceInstance")
            .field("id", &i.id)
            .field("name", &i.name)
            .field("version", &brief(&i.version))
            .field("metadata", &metadata)
            .field("endpoints", &endpoints)
            .finish()
    }
}

/// `text` itself when short, else its start and its length.
fn brief(text: &str) -> String {
    if text.len() <= 100 {
        text.to_owned()
    } else {
        format!("{}... ({} bytes)", cut(text.to_owned(), 60), text.len())
    }
}

/// Valid instances that fit `shape` (see [the module](self)).
pub fn instance(shape: &Shape) -> BoxedStrategy<Drawn> {
    prop_oneof![7 => usual(shape), 1 => at_bounds(shape)]
        .prop_map(Drawn)
        .boxed()
}

/// Instances that may be invalid in any way (ids, names, endpoints, metadata of any text),
/// half of them valid ones of the core's shape: whatever a caller may pass.
pub fn any_instance() -> BoxedStrategy<Drawn> {
    let loose = || text(12, 64);
    let wild = (
        prop_oneof![token(), loose()],
        prop_oneof![token(), loose()],
        loose(),
        vec((loose(), loose()), 0..4),
        vec(prop_oneof![endpoint(), loose()], 0..4),
    )
        .prop_map(|(id, name, version, metadata, endpoints)| ServiceInstance {
            id,
            name,
            version,
            metadata: metadata.into_iter().collect(),
            endpoints,
        });
    prop_oneof![instance(&Shape::default()), wild.prop_map(Drawn)].boxed()
}

/// An id or a service name: 1 to [`MAX_LEN`](crate::validate::MAX_LEN) of `A-Z a-z 0-9 . _ -`, starting with a letter
/// or a digit; the longest length often.
pub fn token() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[A-Za-z0-9][A-Za-z0-9._-]{0,15}",
        1 => "[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        1 => "[A-Za-z0-9][A-Za-z0-9._-]{127}",
    ]
    .boxed()
}

/// A version: unicode (control characters included), empty sometimes.
pub fn version() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        2 => "v[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}",
        3 => text(24, MAX_VERSION_LEN),
    ]
    .boxed()
}

/// A valid endpoint URL of any kind (see [the module](self)), at most [`MAX_ENDPOINT_LEN`]
/// bytes.
pub fn endpoint() -> BoxedStrategy<String> {
    (
        scheme(),
        host(),
        port(),
        prop_oneof![2 => Just(String::new()), 3 => path(24)],
        query(),
        prop_oneof![6 => Just(String::new()), 1 => text_without(&['#'], 12).prop_map(|f| format!("#{f}"))],
    )
        .prop_map(|(scheme, host, port, path, query, fragment)| {
            let fixed = format!("{scheme}://{host}:{port}{query}{fragment}");
            let room = MAX_ENDPOINT_LEN.saturating_sub(fixed.len());
            let path = cut(path, room);
            format!("{scheme}://{host}:{port}{path}{query}{fragment}")
        })
        .boxed()
}

/// A `weight` metadata value: a number from 0 to 10000, as people write it.
pub fn weight() -> BoxedStrategy<String> {
    prop_oneof![
        2 => select(&["0", "1", "100", "0.5", "10000", "1e3", "+7", "007", "100.0", ".25"][..])
            .prop_map(String::from),
        1 => (0u32..=10_000).prop_map(|w| w.to_string()),
        1 => (0.0f64..=10_000.0).prop_map(|w| w.to_string()),
    ]
    .boxed()
}

/// Drops from `instance` what `shape` does not hold (endpoints of a reserved scheme or a
/// scheme or address already used, an any address first, reserved metadata keys, entries past
/// the shape's count) and pads its endpoints to the shape's fewest. Endpoints that do not
/// parse are kept, so that a test sees them.
pub fn fit(shape: &Shape, mut instance: ServiceInstance) -> ServiceInstance {
    let mut schemes = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut endpoints = Vec::new();
    for raw in std::mem::take(&mut instance.endpoints) {
        if endpoints.len() >= shape.max_endpoints() {
            break;
        }
        // A drawn host the parser refuses (`a.xn--`, not an IDN) is left out: the instance
        // must be valid.
        let Ok(e) = Endpoint::parse(&raw) else {
            continue;
        };
        let scheme = e.scheme().to_owned();
        if shape.reserved_schemes.contains(&scheme)
            || (endpoints.is_empty()
                && !shape.any_address_first
                && matches!(e.host(), "0.0.0.0" | "::"))
            || (shape.one_endpoint_per_scheme && schemes.contains(&scheme))
            || (shape.one_endpoint_per_address
                && addresses.contains(&(scheme.clone(), e.authority())))
        {
            continue;
        }
        addresses.insert((scheme.clone(), e.authority()));
        schemes.insert(scheme);
        endpoints.push(raw);
    }
    let mut n = 0u16;
    while endpoints.len() < shape.min_endpoints.min(shape.max_endpoints()) {
        n += 1;
        let scheme = format!("pad{n}");
        if !shape.reserved_schemes.contains(&scheme) && !schemes.contains(&scheme) {
            endpoints.push(format!("{scheme}://127.0.0.1:{n}"));
        }
    }
    instance.endpoints = endpoints;
    instance.metadata.retain(|k, _| shape.key_allowed(k));
    while instance.metadata.len() > shape.max_entries() {
        instance.metadata.pop_last();
    }
    while metadata_bytes(&instance.metadata) > MAX_METADATA_BYTES {
        instance.metadata.pop_last();
    }
    instance
}

/// The first field in which `got` differs from `expected`, told briefly (an instance at the
/// bounds is megabytes long): `None` when they are equal.
pub fn difference(expected: &ServiceInstance, got: &ServiceInstance) -> Option<String> {
    let b = |text: &str| format!("{:?}", brief(text));
    if expected.id != got.id {
        return Some(format!("id {} became {}", b(&expected.id), b(&got.id)));
    }
    if expected.name != got.name {
        return Some(format!(
            "name {} became {}",
            b(&expected.name),
            b(&got.name)
        ));
    }
    if expected.version != got.version {
        let (e, g) = (b(&expected.version), b(&got.version));
        return Some(format!("version {e} became {g}"));
    }
    if expected.endpoints != got.endpoints {
        let all = |list: &[String]| list.iter().map(|e| brief(e)).collect::<Vec<_>>();
        let (e, g) = (all(&expected.endpoints), all(&got.endpoints));
        return Some(format!("endpoints {e:?} became {g:?}"));
    }
    for (key, value) in &expected.metadata {
        match got.metadata.get(key) {
            None => return Some(format!("metadata {} is missing", b(key))),
            Some(v) if v != value => {
                let (k, e, g) = (b(key), b(value), b(v));
                return Some(format!("metadata {k} = {e} became {g}"));
            }
            Some(_) => {}
        }
    }
    if let Some(key) = got
        .metadata
        .keys()
        .find(|k| !expected.metadata.contains_key(*k))
    {
        return Some(format!("metadata {} was added", b(key)));
    }
    None
}

fn metadata_bytes(metadata: &BTreeMap<String, String>) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn usual(shape: &Shape) -> BoxedStrategy<ServiceInstance> {
    let shape = shape.clone();
    let endpoints = shape.max_endpoints().min(6);
    let entries = shape.max_entries().min(8);
    (
        token(),
        token(),
        version(),
        vec(endpoint(), 0..=endpoints),
        vec((key(&shape), value(&shape)), 0..=entries),
        proptest::option::weighted(0.2, weight()),
    )
        .prop_map(move |(id, name, version, endpoints, entries, weight)| {
            let mut metadata: BTreeMap<String, String> = entries.into_iter().collect();
            metadata.remove("weight");
            if let Some(w) = weight {
                metadata.insert("weight".into(), w);
            }
            within_json_bound(fit(
                &shape,
                ServiceInstance {
                    id,
                    name,
                    version,
                    metadata,
                    endpoints,
                },
            ))
        })
        .boxed()
}

/// `instance` cut until its JSON is within [`MAX_JSON_LEN`]: every metadata value halved,
/// then half the endpoints dropped, then the version halved, as long as it is over (an
/// instance at every other bound, of characters JSON escapes, is over).
fn within_json_bound(mut instance: ServiceInstance) -> ServiceInstance {
    while instance.to_json().len() > MAX_JSON_LEN {
        if instance.metadata.values().any(|v| !v.is_empty()) {
            for value in instance.metadata.values_mut() {
                let half = value.len() / 2;
                *value = cut(std::mem::take(value), half);
            }
        } else if instance.endpoints.len() > 1 {
            let half = instance.endpoints.len() / 2;
            instance.endpoints.truncate(half);
        } else {
            let half = instance.version.len() / 2;
            instance.version = cut(std::mem::take(&mut instance.version), half);
        }
    }
    instance
}

/// The characters a case at the bounds is filled with.
const FILLS: &[char] = &['x', 'é', '你', '🚀', '\u{1}', '"', '\\'];

fn at_bounds(shape: &Shape) -> BoxedStrategy<ServiceInstance> {
    let shape = shape.clone();
    (
        "[A-Za-z0-9][A-Za-z0-9._-]{127}",
        "[A-Za-z0-9][A-Za-z0-9._-]{127}",
        select(FILLS),
        any::<bool>(),
        any::<bool>(),
        select(
            &[
                "127.0.0.1",
                "[::1]",
                "[0:0:0:0:0:0:0:1]",
                "Example.COM",
                "bücher.example",
            ][..],
        ),
    )
        .prop_map(move |(id, name, fill, every_entry, long_keys, host)| {
            let version = filled("", fill, MAX_VERSION_LEN);
            let endpoints = (0..shape.max_endpoints())
                .map(|i| {
                    let base = format!("e{i:03}://{host}:{}/", 1 + i);
                    filled(&base, fill, MAX_ENDPOINT_LEN)
                })
                .collect();
            let entries = if every_entry { shape.max_entries() } else { 1 };
            let key_bytes = if long_keys { shape.max_key_bytes() } else { 8 };
            let key_fill = if shape.token_keys { '_' } else { fill };
            let mut metadata = BTreeMap::new();
            for i in 0..entries {
                metadata.insert(
                    filled(&format!("k{i:03}"), key_fill, key_bytes),
                    String::new(),
                );
            }
            let keys = metadata_bytes(&metadata);
            let room = MAX_METADATA_BYTES.saturating_sub(keys) / entries.max(1);
            let value_bytes = room.min(shape.max_value_bytes());
            for value in metadata.values_mut() {
                *value = filled("", fill, value_bytes);
            }
            within_json_bound(fit(
                &shape,
                ServiceInstance {
                    id,
                    name,
                    version,
                    metadata,
                    endpoints,
                },
            ))
        })
        .boxed()
}

/// `base` followed by as many `fill` as fit in `bytes` bytes.
fn filled(base: &str, fill: char, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    out.push_str(base);
    while out.len() + fill.len_utf8() <= bytes {
        out.push(fill);
    }
    out
}

/// `text` cut to at most `bytes` bytes, on a character boundary.
fn cut(mut text: String, bytes: usize) -> String {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Characters worth a try in any text: JSON escapes, controls, separators, non-BMP.
const TRICKY: &[char] = &[
    '\0',
    '\u{1}',
    '\u{1f}',
    '\t',
    '\n',
    '\r',
    ' ',
    '"',
    '\\',
    '/',
    '%',
    '&',
    '=',
    '+',
    ',',
    '@',
    ':',
    '\u{7f}',
    '\u{80}',
    '\u{a0}',
    '\u{2028}',
    '\u{feff}',
    'é',
    'ß',
    'Ω',
    '你',
    '🚀',
    '\u{10ffff}',
];

fn text_char() -> BoxedStrategy<char> {
    prop_oneof![
        8 => proptest::char::range(' ', '~'),
        3 => any::<char>(),
        2 => select(TRICKY),
    ]
    .boxed()
}

/// Up to `chars` characters of any kind, at most `bytes` bytes.
fn text(chars: usize, bytes: usize) -> BoxedStrategy<String> {
    vec(text_char(), 0..=chars)
        .prop_map(move |cs| cut(cs.into_iter().collect(), bytes))
        .boxed()
}

/// Up to `chars` characters of any kind but `not`.
fn text_without(not: &'static [char], chars: usize) -> BoxedStrategy<String> {
    vec(text_char(), 0..=chars)
        .prop_map(move |cs| cs.into_iter().filter(|c| !not.contains(c)).collect())
        .boxed()
}

fn key(shape: &Shape) -> BoxedStrategy<String> {
    let bytes = shape.max_key_bytes();
    if shape.token_keys {
        prop_oneof![
            6 => "[A-Za-z0-9_-]{1,16}",
            1 => "[A-Za-z0-9_-]{1,128}",
        ]
        .prop_map(move |k| cut(k, bytes))
        .boxed()
    } else {
        prop_oneof![
            6 => text(16, bytes),
            1 => text(bytes, bytes),
        ]
        .prop_map(|k| if k.is_empty() { "k".into() } else { k })
        .boxed()
    }
}

fn value(shape: &Shape) -> BoxedStrategy<String> {
    let bytes = shape.max_value_bytes();
    prop_oneof![
        8 => text(24, bytes),
        // A longer value, cheaply: a few characters repeated.
        1 => (vec(text_char(), 1..4), 1..=bytes.clamp(1, 4096)).prop_map(move |(pattern, len)| {
            let pattern: String = pattern.into_iter().collect();
            cut(pattern.repeat(len.div_ceil(pattern.len())), len.min(bytes))
        }),
    ]
    .boxed()
}

fn scheme() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(&[
            "http", "grpc", "https", "grpcs", "HTTP", "Grpc", "ws", "wss", "ftp", "tcp", "h2c",
            "my+rpc", "a.b-c", "x1",
        ][..])
        .prop_map(String::from),
        2 => "[a-z][a-z0-9+.-]{0,8}".prop_map(|s| {
            // `file` URLs have no port.
            if s == "file" { "files".to_owned() } else { s }
        }),
    ]
    .boxed()
}

fn host() -> BoxedStrategy<String> {
    prop_oneof![
        2 => any::<u32>().prop_map(|n| Ipv4Addr::from(n).to_string()),
        2 => select(&[
            "127.0.0.1", "0.0.0.0", "127.1", "0x7F.0.0.1", "[::1]", "[::]", "[0:0:0:0:0:0:0:1]",
            "[::FFFF:10.0.0.1]", "[fe80::1]", "localhost", "LOCALHOST", "Example.COM", "host.",
            "bücher.example", "xn--bcher-kva.example", "a-b.c_d.example",
        ][..])
        .prop_map(String::from),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        1 => any::<[u16; 8]>().prop_map(|s| {
            let full: Vec<String> = s.iter().map(|g| format!("{g:X}")).collect();
            format!("[{}]", full.join(":"))
        }),
        3 => "[a-z][a-z0-9-]{0,12}(\\.[a-z][a-z0-9-]{0,12}){0,3}",
    ]
    .boxed()
}

fn port() -> BoxedStrategy<String> {
    (1u16..=u16::MAX, 0u8..10)
        .prop_map(|(port, style)| match style {
            0 => format!("0{port}"),
            _ => port.to_string(),
        })
        .boxed()
}

fn path(chars: usize) -> BoxedStrategy<String> {
    text_without(&['?', '#'], chars)
        .prop_map(|p| format!("/{p}"))
        .boxed()
}

fn query() -> BoxedStrategy<String> {
    prop_oneof![
        4 => Just(String::new()),
        3 => select(&["?isSecure=false", "?isSecure=true", "?isSecure=TRUE", "?"][..])
            .prop_map(String::from),
        2 => text_without(&['#'], 16).prop_map(|q| format!("?{q}")),
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(config(256))]

        /// What the strategies draw is valid, and fits its shape.
        #[test]
        fn instances_are_valid(Drawn(instance) in instance(&Shape::default())) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            prop_assert_eq!(fit(&Shape::default(), instance.clone()), instance);
        }

        /// Whatever a caller passes is valid or refused with `InvalidInput` (never a panic),
        /// and a valid one comes back exactly from its JSON.
        #[test]
        fn any_instance_is_refused_or_round_trips(Drawn(instance) in any_instance()) {
            match instance.validate() {
                Err(crate::Error::InvalidInput { .. }) => {}
                Err(e) => prop_assert!(false, "refused with {e:?}, not InvalidInput"),
                Ok(()) => {
                    let back = ServiceInstance::from_json(instance.to_json().as_bytes());
                    let difference = back.map(|back| difference(&instance, &back));
                    prop_assert!(matches!(difference, Ok(None)), "{:?}", difference);
                }
            }
        }

        #[test]
        fn endpoints_parse(raw in endpoint()) {
            let parsed = Endpoint::parse(&raw);
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
        }
    }
}

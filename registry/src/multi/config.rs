//! The `multi:` URL and the composite's settings.

use std::time::Duration;

use registry_core::{Error, RegistryUrl, Result, Url, UrlOptions, WatchConfig};

/// The URL scheme of the composite registry.
pub const SCHEME: &str = "multi";

/// What separates the members of a `multi:` URL. It appears in no registry URL of this
/// toolkit (a `|` inside a member, in a password say, is written `%7C`).
pub const SEPARATOR: char = '|';

/// How long a call (and `connect`) waits for the members that have not answered yet once
/// one member has answered, when no `member_timeout` is given.
pub const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// How the composite reads (`get_service`, `watch`): URL option `read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMode {
    /// `read=merge` (the default): the union of every member's instances, by instance id.
    /// An id that several members list is taken from the first of them in URL order.
    #[default]
    Merge,
    /// `read=first`: the instances of the first member, in URL order, that answers (that a
    /// watch follows); the others only stand in while it does not.
    First,
}

/// The composite's settings: its members' URLs (verbatim, in order) and how it reads and
/// waits. Built from a `multi:` URL ([`from_url`](Self::from_url)) or in code.
///
/// ```
/// use std::time::Duration;
/// use registry::multi::{MultiConfig, ReadMode};
/// let config = MultiConfig::from_url(
///     "multi:?read=first&member_timeout=500ms\
///      |etcd://10.0.0.1:2379,10.0.0.2:2379/microservices?ttl=10s&username=u\
///      |consul://127.0.0.1:8500?ttl=10s&deregister_after=1m",
/// )?;
/// assert_eq!(config.members[0], "etcd://10.0.0.1:2379,10.0.0.2:2379/microservices?ttl=10s&username=u");
/// assert_eq!(config.members[1], "consul://127.0.0.1:8500?ttl=10s&deregister_after=1m");
/// assert_eq!(config.read, ReadMode::First);
/// assert_eq!(config.member_timeout, Duration::from_millis(500));
///
/// let same = MultiConfig::new(["etcd://127.0.0.1:2379", "consul://127.0.0.1:8500"]);
/// assert_eq!(same.to_url(), "multi:etcd://127.0.0.1:2379|consul://127.0.0.1:8500");
/// # Ok::<(), registry::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MultiConfig {
    /// The members' registry URLs, in order (the order [`ReadMode`] and conflicts go by).
    pub members: Vec<String>,
    /// How the composite reads.
    pub read: ReadMode,
    /// How long a call waits for the members still silent once one member has answered
    /// (URL option `member_timeout`, default [`DEFAULT_MEMBER_TIMEOUT`]): a member that is
    /// down or hangs delays a call by at most this much. `connect` waits as long for the
    /// members not connected yet once one is (the others are connected in the background).
    pub member_timeout: Duration,
    /// The composite's own watch settings (URL option `watch_timeout`).
    pub watch: WatchConfig,
}

impl MultiConfig {
    /// A composite of these member URLs with the default settings.
    pub fn new(members: impl IntoIterator<Item = impl Into<String>>) -> Self {
        MultiConfig {
            members: members.into_iter().map(Into::into).collect(),
            read: ReadMode::default(),
            member_timeout: DEFAULT_MEMBER_TIMEOUT,
            watch: WatchConfig::default(),
        }
    }

    /// With another [`ReadMode`].
    pub fn with_read(mut self, read: ReadMode) -> Self {
        self.read = read;
        self
    }

    /// With another member timeout.
    pub fn with_member_timeout(mut self, timeout: Duration) -> Self {
        self.member_timeout = timeout;
        self
    }

    /// Reads a `multi:` URL: `multi:` then the member URLs, verbatim, separated by `|`, with
    /// the composite's own options first when there are any: `multi:?read=first|URL|URL`.
    /// `multi://` is read like `multi:`.
    pub fn from_url(url: &str) -> Result<Self> {
        let Some(rest) = strip_scheme(url) else {
            return Err(Error::invalid_url(
                shown(url),
                "a composite registry URL starts with multi:",
            ));
        };
        let mut config = MultiConfig::new(Vec::<String>::new());
        for (n, part) in rest.split(SEPARATOR).enumerate() {
            if n == 0 {
                if let Some(query) = part.strip_prefix('?') {
                    config.read_options(url, query)?;
                    continue;
                }
            }
            config.members.push(part.to_owned());
        }
        config
            .check()
            .map_err(|reason| Error::invalid_url(shown(url), reason))?;
        Ok(config)
    }

    fn read_options(&mut self, url: &str, query: &str) -> Result<()> {
        let parsed = Url::parse(&format!("{SCHEME}://?{query}"))
            .map_err(|e| Error::invalid_url(shown(url), format!("options: {e}")))?;
        let mut options = UrlOptions::new(&parsed);
        let with_url = |e: Error| match e {
            Error::InvalidUrl { reason, .. } => Error::invalid_url(shown(url), reason),
            other => other,
        };
        match options.string("read").as_deref() {
            None | Some("merge") => self.read = ReadMode::Merge,
            Some("first") => self.read = ReadMode::First,
            Some(other) => {
                return Err(Error::invalid_url(
                    shown(url),
                    format!("option read={other:?}: expected merge or first"),
                ))
            }
        }
        if let Some(timeout) = options.duration("member_timeout").map_err(with_url)? {
            self.member_timeout = timeout;
        }
        self.watch = WatchConfig::from_options(&mut options).map_err(with_url)?;
        options.finish().map_err(with_url)
    }

    /// What is wrong with the members, if anything (messages name the member).
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.members.is_empty() || self.members.iter().all(String::is_empty) {
            return Err("no member: write multi:URL|URL".into());
        }
        if self.member_timeout.is_zero() {
            return Err("member_timeout must be positive".into());
        }
        for (n, member) in self.members.iter().enumerate() {
            let number = n + 1;
            if member.is_empty() {
                return Err(format!("member {number} is empty (a `|` too many?)"));
            }
            if strip_scheme(member).is_some() {
                return Err(format!("member {number}: a member cannot be a multi: URL"));
            }
            if !member.contains("://") {
                return Err(format!(
                    "member {number} ({}) is not a registry URL (scheme://…)",
                    shown(member)
                ));
            }
            if let Some(first) = self.members[..n].iter().position(|m| m == member) {
                return Err(format!(
                    "member {number} repeats member {} ({}): one registry, one member",
                    first + 1,
                    shown(member)
                ));
            }
        }
        Ok(())
    }

    /// The URL of these settings (options only where they differ from the defaults).
    pub fn to_url(&self) -> String {
        self.url_with(self.members.iter().cloned())
    }

    /// The URL with every member's password and secret options replaced by `***`, safe for
    /// errors and logs.
    pub fn redacted(&self) -> String {
        self.url_with(self.members.iter().map(|m| shown(m)))
    }

    fn url_with(&self, members: impl Iterator<Item = String>) -> String {
        let mut options = Vec::new();
        if self.read == ReadMode::First {
            options.push("read=first".to_owned());
        }
        if self.member_timeout != DEFAULT_MEMBER_TIMEOUT {
            options.push(format!(
                "member_timeout={}ms",
                self.member_timeout.as_millis()
            ));
        }
        if self.watch.first_list_timeout != WatchConfig::default().first_list_timeout {
            options.push(format!(
                "watch_timeout={}ms",
                self.watch.first_list_timeout.as_millis()
            ));
        }
        let mut parts: Vec<String> = Vec::new();
        if !options.is_empty() {
            parts.push(format!("?{}", options.join("&")));
        }
        parts.extend(members);
        format!("{SCHEME}:{}", parts.join(&SEPARATOR.to_string()))
    }
}

/// What follows `multi:` (or `multi://`), any case; `None` for another URL.
pub(crate) fn strip_scheme(url: &str) -> Option<&str> {
    let head = url.get(..SCHEME.len() + 1)?;
    if !head.eq_ignore_ascii_case("multi:") {
        return None;
    }
    let rest = &url[head.len()..];
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

/// A URL as it may be shown: passwords and secret options redacted; a composite member by
/// member.
pub(crate) fn shown(url: &str) -> String {
    if let Some(rest) = strip_scheme(url) {
        let parts: Vec<String> = rest
            .split(SEPARATOR)
            .map(|part| {
                if part.starts_with('?') || part.is_empty() {
                    part.to_owned()
                } else {
                    shown(part)
                }
            })
            .collect();
        return format!("{SCHEME}:{}", parts.join(&SEPARATOR.to_string()));
    }
    match RegistryUrl::parse(url) {
        Ok(parsed) => parsed.redacted().to_owned(),
        // Never shows what may hold a password.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                format!("{scheme}://…")
            }
            _ => "(not shown)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_kept_verbatim() {
        let etcd = "etcd://u:hunter2@10.0.0.1:2379,10.0.0.2:2379/ns?ttl=10s&timeout=1s";
        let consul = "consul://[::1]:8500?token=s3cret&deregister_after=1m";
        let config = MultiConfig::from_url(&format!("multi:{etcd}|{consul}")).unwrap();
        assert_eq!(config.members, [etcd, consul]);
        assert_eq!(config.read, ReadMode::Merge);
        assert_eq!(config.member_timeout, DEFAULT_MEMBER_TIMEOUT);
        assert_eq!(config.to_url(), format!("multi:{etcd}|{consul}"));
        let redacted = config.redacted();
        assert!(
            !redacted.contains("hunter2") && !redacted.contains("s3cret"),
            "{redacted}"
        );
        assert!(
            redacted.contains("10.0.0.1:2379,10.0.0.2:2379/ns"),
            "{redacted}"
        );

        let slashes = MultiConfig::from_url(&format!("MULTI://{etcd}|{consul}")).unwrap();
        assert_eq!(slashes.members, config.members);
    }

    #[test]
    fn options_come_first() {
        let config = MultiConfig::from_url(
            "multi:?read=first&member_timeout=250ms&watch_timeout=3s|memory://a|memory://b?ttl=1s",
        )
        .unwrap();
        assert_eq!(config.members, ["memory://a", "memory://b?ttl=1s"]);
        assert_eq!(config.read, ReadMode::First);
        assert_eq!(config.member_timeout, Duration::from_millis(250));
        assert_eq!(config.watch.first_list_timeout, Duration::from_secs(3));
        let again = MultiConfig::from_url(&config.to_url()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("multi:", "no member"),
            ("multi:?read=first", "no member"),
            ("multi:memory://a|", "member 2 is empty"),
            ("multi:memory://a||memory://b", "member 2 is empty"),
            (
                "multi:memory://a|multi:memory://b",
                "member 2: a member cannot be a multi",
            ),
            ("multi:memory://a|127.0.0.1:2379", "is not a registry URL"),
            ("multi:memory://a|memory://a", "member 2 repeats member 1"),
            ("multi:?read=fastest|memory://a", "read=\"fastest\""),
            ("multi:?bogus=1|memory://a", "unknown option \"bogus\""),
            ("multi:?member_timeout=soon|memory://a", "member_timeout"),
            (
                "multi:?member_timeout=0s|memory://a",
                "member_timeout must be positive",
            ),
            ("etcd://127.0.0.1:2379", "starts with multi:"),
        ];
        for (url, expected) in cases {
            let err = MultiConfig::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
            assert!(err.to_string().contains(expected), "{url}: {err}");
        }
        let err = MultiConfig::from_url("multi:etcd://u:hunter2@h:1|etcd://u:hunter2@h:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("repeats") && !err.contains("hunter2"), "{err}");
    }
}

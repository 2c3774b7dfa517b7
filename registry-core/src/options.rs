//! Reading backend options from a registry URL's query, with a clear error for anything
//! unknown or malformed.

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::{Error, Result};

/// The query parameters of a registry URL, taken one by one by the backend that reads them.
/// [`finish`](Self::finish) fails on any parameter nobody took, so a typo is an error rather
/// than a silently ignored option.
///
/// ```
/// use registry_core::UrlOptions;
/// let url = url::Url::parse("etcd://127.0.0.1:2379/ns?ttl=10s&username=u").unwrap();
/// let mut opts = UrlOptions::new(&url);
/// assert_eq!(opts.duration("ttl").unwrap(), Some(std::time::Duration::from_secs(10)));
/// assert_eq!(opts.string("username").as_deref(), Some("u"));
/// opts.finish().unwrap();
/// ```
#[derive(Debug)]
pub struct UrlOptions {
    url: String,
    params: BTreeMap<String, String>,
}

impl UrlOptions {
    /// Collects the query parameters of `url` (the last value wins when a key repeats).
    pub fn new(url: &Url) -> Self {
        UrlOptions {
            url: redact(url),
            params: url.query_pairs().into_owned().collect(),
        }
    }

    /// Takes a string parameter.
    pub fn string(&mut self, key: &str) -> Option<String> {
        self.params.remove(key)
    }

    /// Takes a duration parameter written like `500ms`, `10s`, `1m` or `1h 30m`.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.params
            .remove(key)
            .map(|v| humantime::parse_duration(&v).map_err(|e| self.error(key, &v, &e.to_string())))
            .transpose()
    }

    /// Takes a boolean parameter (`true`/`false`/`1`/`0`).
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.params
            .remove(key)
            .map(|v| match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.error(key, &v, "expected true or false")),
            })
            .transpose()
    }

    /// Takes an unsigned integer parameter.
    pub fn u32(&mut self, key: &str) -> Result<Option<u32>> {
        self.params
            .remove(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| self.error(key, &v, "expected a number"))
            })
            .transpose()
    }

    /// Fails when any parameter was not taken.
    pub fn finish(self) -> Result<()> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(key) => Err(Error::invalid_url(
                self.url,
                format!("unknown option {key:?}"),
            )),
        }
    }

    fn error(&self, key: &str, value: &str, reason: &str) -> Error {
        Error::invalid_url(&self.url, format!("option {key}={value:?}: {reason}"))
    }
}

/// The URL as text with any password or secret-looking query value replaced by `***`, safe
/// for errors and logs.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = ["password", "token", "secret", "digest", "key"]
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s));
                let v = if secret { "***".into() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// One `host[:port]` of a registry URL's authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port, when the URL gives one.
    pub port: Option<u16>,
}

impl HostPort {
    /// `host:port`, with `default_port` when the URL gave none (IPv6 in brackets).
    pub fn with_default_port(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

/// A registry URL whose authority may list several servers, as in
/// `etcd://10.0.0.1:2379,10.0.0.2:2379/microservices?ttl=10s` (which [`Url`] alone refuses).
///
/// [`url`](Self::url) is the URL with the first server only, for the scheme, user, path and
/// options; [`hosts`](Self::hosts) lists every server in order.
///
/// ```
/// use registry_core::RegistryUrl;
/// let url = RegistryUrl::parse("etcd://10.0.0.1:2379,10.0.0.2/ns?ttl=10s").unwrap();
/// assert_eq!(url.scheme(), "etcd");
/// assert_eq!(url.url().path(), "/ns");
/// let hosts: Vec<_> = url.hosts().iter().map(|h| h.with_default_port(2379)).collect();
/// assert_eq!(hosts, ["10.0.0.1:2379", "10.0.0.2:2379"]);
/// ```
#[derive(Debug, Clone)]
pub struct RegistryUrl {
    url: Url,
    hosts: Vec<HostPort>,
    shown: String,
}

impl RegistryUrl {
    /// Parses a registry URL. Errors never show a password.
    pub fn parse(raw: &str) -> Result<Self> {
        let not_shown = || {
            // The text may hold a password: show at most a plausible scheme.
            match raw.split_once("://") {
                Some((scheme, _))
                    if !scheme.is_empty()
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
                {
                    format!("{scheme}://…")
                }
                _ => "(not shown)".to_owned(),
            }
        };
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(Error::invalid_url(not_shown(), "not a URL: no scheme://"));
        };
        // Else `url` reads the scheme, user and hosts elsewhere than this split does
        // (`etcd:x?y://user:password@h` has no user to it, and would show the password).
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !is_scheme {
            return Err(Error::invalid_url(
                not_shown(),
                "not a URL: what comes before :// is not a scheme",
            ));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, authority),
        };
        // `memory://` has no server at all; a list has no empty entries.
        let parts: Vec<&str> = if host_list.is_empty() {
            vec![""]
        } else {
            host_list.split(',').collect()
        };
        let user_prefix = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let first = format!("{scheme}://{user_prefix}{}{tail}", parts[0]);
        let url = Url::parse(&first)
            .map_err(|e| Error::invalid_url(not_shown(), format!("not a URL: {e}")))?;
        let mut hosts = Vec::with_capacity(parts.len());
        for part in parts.iter().filter(|_| !host_list.is_empty()) {
            let one = Url::parse(&format!("{scheme}://{part}"))
                .map_err(|e| Error::invalid_url(not_shown(), format!("server {part:?}: {e}")))?;
            let host = one
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            if host.is_empty() {
                return Err(Error::invalid_url(
                    not_shown(),
                    format!("server {part:?} has no host"),
                ));
            }
            hosts.push(HostPort {
                host,
                port: one.port(),
            });
        }
        // Shown as written, with the password and secret options redacted.
        let redacted = redact(&url);
        let shown = match redacted.split_once("://") {
            Some((s, after)) if parts.len() > 1 => {
                let at = after.find(['/', '?', '#']).unwrap_or(after.len());
                let (auth, tail) = after.split_at(at);
                let user = auth.rsplit_once('@').map(|(u, _)| format!("{u}@"));
                format!("{s}://{}{}{tail}", user.unwrap_or_default(), host_list)
            }
            _ => redacted,
        };
        Ok(RegistryUrl { url, hosts, shown })
    }

    /// The scheme, such as `etcd`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL with its first server only: scheme, user, path and options.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Every server of the authority, in order (none for an empty authority, as in
    /// `memory://`).
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// The URL as written, safe for errors and logs (see [`redact`]).
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    /// The URL, failing when it names more than one server.
    pub fn single(&self) -> Result<&Url> {
        if self.hosts.len() <= 1 {
            Ok(&self.url)
        } else {
            Err(Error::invalid_url(
                &self.shown,
                format!("{}:// takes one server", self.scheme()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_malformed_options_are_errors() {
        let url = Url::parse("memory://x?ttl=soon&password=hunter2").unwrap();
        let mut opts = UrlOptions::new(&url);
        let err = opts.duration("ttl").unwrap_err().to_string();
        assert!(err.contains("ttl"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = opts.finish().unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// Found by the `registry_url` fuzz target: the text before the first `://` was taken as
    /// the scheme, but `url` read a scheme, a path and a query in it, and the user and
    /// password after it as part of the query, shown in errors.
    #[test]
    fn what_comes_before_the_authority_is_a_scheme() {
        for bad in [
            "nacos:x/848?names://nacos:hunter2secret@/cs",
            "etcd:x://user:hunter2secret@h:2379",
            " etcd://user:hunter2secret@h:2379",
            "1etcd://h:2379",
        ] {
            let err = RegistryUrl::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
        }
        let url = RegistryUrl::parse("Etcd+tls.v3-x://h:2379").unwrap();
        assert_eq!(url.scheme(), "etcd+tls.v3-x");
    }

    #[test]
    fn several_servers_in_one_authority() {
        let url =
            RegistryUrl::parse("etcd://u:hunter2@h1:1,[::1]:2,h3/ns?ttl=1s&password=x").unwrap();
        assert_eq!(
            url.hosts(),
            [
                HostPort {
                    host: "h1".into(),
                    port: Some(1)
                },
                HostPort {
                    host: "::1".into(),
                    port: Some(2)
                },
                HostPort {
                    host: "h3".into(),
                    port: None
                },
            ]
        );
        assert_eq!(url.hosts()[1].with_default_port(9), "[::1]:2");
        assert_eq!(url.url().username(), "u");
        assert_eq!(url.url().path(), "/ns");
        assert!(
            url.redacted().contains("h1:1,[::1]:2,h3/ns"),
            "{}",
            url.redacted()
        );
        assert!(!url.redacted().contains("hunter2"), "{}", url.redacted());
        assert!(url.single().is_err());
        let err = RegistryUrl::parse("etcd://h1:1,h2:port/x?password=hunter2").unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(
            RegistryUrl::parse("etcd://h1,/x").is_err(),
            "an empty server is refused"
        );
        assert!(RegistryUrl::parse("no scheme").is_err());
        let empty = RegistryUrl::parse("memory://").unwrap();
        assert!(empty.hosts().is_empty());
        assert_eq!(empty.single().unwrap().as_str(), "memory://");
    }
}

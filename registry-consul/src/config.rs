//! The options of the Consul backend, from a URL or built in code.

use std::fmt;
use std::time::Duration;

use registry_core::config::{Secret, TlsConfig};
use registry_core::watch::WatchConfig;
use registry_core::{Error, RegistryUrl, Result, UrlOptions};

use crate::SCHEME;

/// Consul's HTTP port.
pub const DEFAULT_PORT: u16 = 8500;
/// The check TTL kratos uses: twice its 10 s heartbeat interval.
pub const DEFAULT_TTL: Duration = Duration::from_secs(20);
/// How long kratos lets Consul keep a service whose check is critical.
pub const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(600);
/// The shortest check TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Consul reaps critical services no sooner than this.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// Options of the Consul backend.
///
/// ```
/// use std::time::Duration;
/// use registry_consul::Config;
///
/// let config = Config::new("127.0.0.1:8500")
///     .with_datacenter("dc1")
///     .with_token("secret-token")
///     .with_ttl(Duration::from_secs(10))
///     .with_tags(["blue"]);
/// assert!(!format!("{config:?}").contains("secret-token"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `host:port` of the Consul agent's HTTP API.
    pub address: String,
    /// The datacenter to read from (the agent's own when `None`).
    pub datacenter: Option<String>,
    /// The ACL token, sent as the `X-Consul-Token` header. Never shown by `Debug` or logs.
    pub token: Option<Secret>,
    /// The TTL of each registration's health check; the owner passes it every third of it.
    pub ttl: Duration,
    /// How long Consul keeps a service whose check is critical before reaping it.
    pub deregister_after: Duration,
    /// Tags added to every registration, after `version=<version>`; none may start with
    /// `version=` or `endpoints=` (this backend's own tags).
    pub tags: Vec<String>,
    /// HTTPS, when set.
    pub tls: Option<TlsConfig>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long each request may take (blocking queries add their wait to it).
    pub request_timeout: Duration,
    /// How long a watch's blocking query waits for a change before asking again.
    pub wait: Duration,
    /// The core watch engine's settings (URL option `watch_timeout`: how long `watch()`
    /// waits for the first list).
    pub watch: WatchConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("address", &self.address)
            .field("datacenter", &self.datacenter)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("deregister_after", &self.deregister_after)
            .field("tags", &self.tags)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("wait", &self.wait)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: format!("127.0.0.1:{DEFAULT_PORT}"),
            datacenter: None,
            token: None,
            ttl: DEFAULT_TTL,
            deregister_after: DEFAULT_DEREGISTER_AFTER,
            tags: Vec::new(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            wait: Duration::from_secs(55),
            watch: WatchConfig::default(),
        }
    }
}

impl Config {
    /// The defaults, with the agent at `address` (`host:port`).
    pub fn new(address: impl Into<String>) -> Self {
        Config {
            address: address.into(),
            ..Config::default()
        }
    }

    /// Reads from this datacenter.
    pub fn with_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// Sends this ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Sets the check TTL (default 20 s, at least 1 s).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets how long a critical service stays before Consul reaps it (default 10 min,
    /// at least 1 min).
    pub fn with_deregister_after(mut self, after: Duration) -> Self {
        self.deregister_after = after;
        self
    }

    /// Adds these tags to every registration.
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Talks HTTPS to the agent.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout (default 5 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the wait of watches' blocking queries (default 55 s).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Reads a URL:
    ///
    /// ```text
    /// consul://HOST[:PORT][?OPTION=VALUE&...]
    /// ```
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `dc` | datacenter to read from | the agent's |
    /// | `token` | ACL token (sent as `X-Consul-Token`, never logged) | none |
    /// | `ttl` | health check TTL, passed every third of it; at least `1s` | `20s` |
    /// | `deregister_after` | Consul reaps a service critical this long; at least `1m` | `10m` |
    /// | `tags` | comma-separated tags added to every registration (none may start with `version=` or `endpoints=`) | none |
    /// | `tls` | `true` for HTTPS (checked against the system roots unless `ca_file`) | `false` |
    /// | `ca_file` | PEM CA of the agent's certificate; turns HTTPS on | none |
    /// | `cert_file`, `key_file` | PEM client certificate and key | none |
    /// | `connect_timeout` | connect timeout | `5s` |
    /// | `timeout` | per-request timeout | `5s` |
    /// | `wait` | blocking query wait of watches | `55s` |
    ///
    /// The port defaults to 8500. Unknown options are errors; errors never show the token.
    pub fn from_url(url: &str) -> Result<Config> {
        let parsed = RegistryUrl::parse(url)?;
        let shown = parsed.redacted().to_owned();
        let url = parsed.single()?;
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(shown, "expected consul://"));
        }
        let Some(host) = parsed.hosts().first() else {
            return Err(Error::invalid_url(shown, "no Consul agent address"));
        };
        if !matches!(url.path(), "" | "/") {
            return Err(Error::invalid_url(shown, "consul:// takes no path"));
        }
        let mut config = Config::new(host.with_default_port(DEFAULT_PORT));
        let mut opts = UrlOptions::new(url);
        config.datacenter = opts.string("dc");
        config.token = opts.string("token").map(Secret::from);
        if let Some(ttl) = opts.duration("ttl")? {
            config.ttl = ttl;
        }
        if let Some(after) = opts.duration("deregister_after")? {
            config.deregister_after = after;
        }
        if let Some(tags) = opts.string("tags") {
            config.tags = tags
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(t) = opts.duration("connect_timeout")? {
            config.connect_timeout = t;
        }
        if let Some(t) = opts.duration("timeout")? {
            config.request_timeout = t;
        }
        if let Some(wait) = opts.duration("wait")? {
            config.wait = wait;
        }
        let tls = opts.bool("tls")?;
        let files = TlsConfig::from_options(url, &mut opts, false)?;
        config.watch = WatchConfig::from_options(&mut opts)?;
        opts.finish()?;
        config.tls = match (tls, files) {
            (Some(false), Some(_)) => {
                return Err(Error::invalid_url(shown, "tls=false with TLS files"))
            }
            (_, Some(files)) => Some(files),
            (Some(true), None) => Some(TlsConfig::default()),
            (_, None) => None,
        };
        config
            .check()
            .map_err(|reason| Error::invalid_url(shown, reason))?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.address.is_empty() {
            return Err("no Consul agent address".into());
        }
        if self.ttl < MIN_TTL {
            return Err("ttl below 1s".into());
        }
        if self.deregister_after < MIN_DEREGISTER_AFTER {
            return Err("deregister_after below Consul's minimum of 1m".into());
        }
        if self.wait.is_zero() {
            return Err("wait must be positive".into());
        }
        let reserved = crate::format::RESERVED_TAG_PREFIXES;
        if let Some(tag) = self
            .tags
            .iter()
            .find(|t| reserved.iter().any(|p| t.starts_with(p)))
        {
            return Err(format!(
                "tag {tag:?}: tags starting with {} are written by this backend",
                reserved.join(" or ")
            ));
        }
        Ok(())
    }

    /// How often the owner passes the check: a third of the TTL.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.ttl / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let config = Config::from_url(
            "consul://10.0.0.1?dc=dc2&token=s3cret&ttl=10s&deregister_after=2m&tags=a,b\
             &ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem&timeout=2s&connect_timeout=3s&wait=30s",
        )
        .unwrap();
        assert_eq!(config.address, "10.0.0.1:8500");
        assert_eq!(config.datacenter.as_deref(), Some("dc2"));
        assert_eq!(config.token, Some(Secret::new("s3cret")));
        assert_eq!(config.ttl, Duration::from_secs(10));
        assert_eq!(config.deregister_after, Duration::from_secs(120));
        assert_eq!(config.tags, ["a", "b"]);
        assert_eq!(
            config.tls,
            Some(TlsConfig::new("/ca.pem").with_identity("/c.pem", "/k.pem"))
        );
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.wait, Duration::from_secs(30));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn defaults() {
        let config = Config::from_url("consul://127.0.0.1").unwrap();
        assert_eq!(config.address, "127.0.0.1:8500");
        assert_eq!(config.ttl, DEFAULT_TTL);
        assert_eq!(config.deregister_after, DEFAULT_DEREGISTER_AFTER);
        assert_eq!(config.tls, None);
        assert_eq!(config.heartbeat(), Duration::from_secs(20) / 3);
        let tls = Config::from_url("consul://127.0.0.1:8501?tls=true").unwrap();
        assert_eq!(tls.tls, Some(TlsConfig::default()));
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_token() {
        for (url, why) in [
            ("consul://", "no Consul agent address"),
            ("etcd://127.0.0.1:2379", "expected consul://"),
            ("consul://h/path?token=hunter2", "no path"),
            ("consul://h1,h2?token=hunter2", "one server"),
            ("consul://h?ttl=10ms&token=hunter2", "ttl below"),
            ("consul://h?deregister_after=30s", "minimum of 1m"),
            ("consul://h?datacenter=dc1&token=hunter2", "unknown option"),
            ("consul://h?cert_file=/c.pem", "go together"),
            ("consul://h?tls=false&ca_file=/ca.pem", "tls=false"),
            ("consul://h?tags=a,version=v9", "written by this backend"),
            ("consul://h?tags=endpoints=http", "written by this backend"),
        ] {
            let err = Config::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }
}

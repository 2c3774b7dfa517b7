//! The options of the etcd backend, from a URL or built in code.

use std::fmt;
use std::time::Duration;

use registry_core::config::{Credentials, TlsConfig};
use registry_core::watch::WatchConfig;
use registry_core::{Error, RegistryUrl, Result, UrlOptions};

use crate::{DEFAULT_NAMESPACE, DEFAULT_PORT, DEFAULT_TTL, MIN_TTL, SCHEME};

/// Options of the etcd backend: from a URL ([`Config::from_url`]) or built in code.
///
/// ```
/// use std::time::Duration;
/// use registry_etcd::{Config, TlsConfig};
///
/// let config = Config::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .with_namespace("/microservices")
///     .with_ttl(Duration::from_secs(10))
///     .with_credentials("user", "secret")
///     .with_tls(TlsConfig::new("/etc/etcd/ca.pem").with_identity("/etc/etcd/me.pem", "/etc/etcd/me-key.pem"));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `host:port` of each etcd endpoint.
    pub endpoints: Vec<String>,
    /// The key prefix, such as `/microservices`.
    pub namespace: String,
    /// The lease TTL of each registration (at least [`MIN_TTL`]).
    pub ttl: Duration,
    /// User name and password, when etcd has authentication on. The password is never
    /// shown by `Debug`.
    pub credentials: Option<Credentials>,
    /// TLS, when etcd serves `https`.
    pub tls: Option<TlsConfig>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long to wait for each request.
    pub request_timeout: Duration,
    /// The core watch engine's settings (URL option `watch_timeout`: how long `watch()`
    /// waits for the first list).
    pub watch: WatchConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            namespace: DEFAULT_NAMESPACE.into(),
            ttl: DEFAULT_TTL,
            credentials: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            watch: WatchConfig::default(),
        }
    }
}

impl Config {
    /// The defaults, with these `host:port` endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Config {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Config::default()
        }
    }

    /// Sets the key prefix (default `/microservices`).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the lease TTL (default 15 s, at least 2 s).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Authenticates with this user and password.
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials::new(user, password.into()));
        self
    }

    /// Talks TLS to etcd.
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

    /// Reads a URL:
    ///
    /// ```text
    /// etcd://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/NAMESPACE][?OPTION=VALUE&...]
    /// ```
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `ttl` | lease TTL, such as `10s` (at least `2s`) | `15s` |
    /// | `username`, `password` | etcd authentication (or `USER:PASSWORD@` before the hosts) | none |
    /// | `ca_file` | PEM CA of etcd's certificate; turns TLS on | none (plain) |
    /// | `cert_file`, `key_file` | PEM client certificate and key, with `ca_file` | none |
    /// | `tls_domain` | the name etcd's certificate carries, when not the host | the host |
    /// | `connect_timeout` | connect timeout | `5s` |
    /// | `timeout` | per-request timeout | `5s` |
    ///
    /// The port defaults to 2379 and the namespace to `/microservices`. Unknown options are
    /// errors; errors never show the password.
    pub fn from_url(url: &str) -> Result<Config> {
        let parsed = RegistryUrl::parse(url)?;
        let shown = parsed.redacted().to_owned();
        let url = parsed.url();
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(shown, "expected etcd://"));
        }
        let mut config = Config::new(
            parsed
                .hosts()
                .iter()
                .map(|h| h.with_default_port(DEFAULT_PORT)),
        );
        let path = url.path().trim_end_matches('/');
        if !path.is_empty() {
            config.namespace = path.to_owned();
        }
        let mut opts = UrlOptions::new(url);
        if let Some(ttl) = opts.duration("ttl")? {
            config.ttl = ttl;
        }
        if let Some(t) = opts.duration("connect_timeout")? {
            config.connect_timeout = t;
        }
        if let Some(t) = opts.duration("timeout")? {
            config.request_timeout = t;
        }
        config.credentials = Credentials::from_url(url, &mut opts)?;
        config.tls = TlsConfig::from_options(url, &mut opts, true)?;
        config.watch = WatchConfig::from_options(&mut opts)?;
        opts.finish()?;
        config
            .check()
            .map_err(|reason| Error::invalid_url(shown, reason))?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        if self.ttl < MIN_TTL {
            return Err("ttl below etcd's shortest lease (2s)".into());
        }
        if self.tls.as_ref().is_some_and(|tls| tls.ca_file.is_none()) {
            return Err("TLS options need ca_file".into());
        }
        if !self.namespace.starts_with('/') || self.namespace.ends_with('/') {
            return Err(format!(
                "namespace {:?} must start with / and not end with one",
                self.namespace
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let config = Config::from_url(
            "etcd://u%40x:p%2Fw@10.0.0.1:2379,10.0.0.2,[::1]:3379/ns/sub?ttl=10s&timeout=2s&connect_timeout=3s\
             &ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem&tls_domain=etcd.local",
        )
        .unwrap();
        assert_eq!(
            config.endpoints,
            ["10.0.0.1:2379", "10.0.0.2:2379", "[::1]:3379"]
        );
        assert_eq!(config.namespace, "/ns/sub");
        assert_eq!(config.ttl, Duration::from_secs(10));
        assert_eq!(config.request_timeout, Duration::from_secs(2));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.credentials, Some(Credentials::new("u@x", "p/w")));
        assert_eq!(
            config.tls,
            Some(
                TlsConfig::new("/ca.pem")
                    .with_identity("/c.pem", "/k.pem")
                    .with_domain("etcd.local")
            )
        );
        assert!(!format!("{config:?}").contains("p/w"));
    }

    #[test]
    fn defaults() {
        let config = Config::from_url("etcd://127.0.0.1").unwrap();
        assert_eq!(config.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(config.namespace, DEFAULT_NAMESPACE);
        assert_eq!(config.ttl, DEFAULT_TTL);
        assert_eq!(config.credentials, None);
        assert_eq!(config.tls, None);
    }

    #[test]
    fn bad_urls_are_refused_without_showing_secrets() {
        for (url, why) in [
            ("etcd://", "no etcd endpoint"),
            ("consul://127.0.0.1:8500", "expected etcd://"),
            (
                "etcd://h?ttl=1s&password=hunter2&username=u",
                "shortest lease",
            ),
            ("etcd://h?tll=10s", "unknown option"),
            ("etcd://h?username=u", "go together"),
            ("etcd://h?cert_file=/c.pem&key_file=/k.pem", "need ca_file"),
            ("etcd://h?ca_file=/ca&cert_file=/c.pem", "go together"),
            (
                "etcd://u:hunter2@h?username=v&password=x",
                "user given twice",
            ),
            ("etcd://h1,h2:x/ns?password=hunter2", "server"),
        ] {
            let err = Config::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
            assert!(!err.is_temporary());
        }
    }
}

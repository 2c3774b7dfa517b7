//! The options of the ZooKeeper backend, from a URL or built in code.

use std::fmt;
use std::time::Duration;

use registry_core::config::Credentials;
use registry_core::watch::WatchConfig;
use registry_core::{Error, RegistryUrl, Result, UrlOptions};

use crate::SCHEME;

/// ZooKeeper's client port.
pub const DEFAULT_PORT: u16 = 2181;
/// The root kratos uses.
pub const DEFAULT_ROOT: &str = "/microservices";
/// The session timeout used when none is given: the backend's TTL.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the ZooKeeper backend.
///
/// ```
/// use std::time::Duration;
/// use registry_zookeeper::Config;
///
/// let config = Config::new(["10.0.0.1:2181", "10.0.0.2:2181"])
///     .with_root("/microservices")
///     .with_session_timeout(Duration::from_secs(10))
///     .with_digest("user", "secret");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// The root path, such as `/microservices`.
    pub root: String,
    /// The session timeout: how long after this process is cut off its instances go. The
    /// server clamps it to between 2 and 20 ticks (`minSessionTimeout`, `maxSessionTimeout`).
    pub session_timeout: Duration,
    /// Digest authentication; what we create is then readable and writable by that user
    /// only. The password is never shown by `Debug`.
    pub digest: Option<Credentials>,
    /// How long connecting, and each request, may take.
    pub connect_timeout: Duration,
    /// The core watch engine's settings (URL option `watch_timeout`: how long `watch()`
    /// waits for the first list).
    pub watch: WatchConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("servers", &self.servers)
            .field("root", &self.root)
            .field("session_timeout", &self.session_timeout)
            .field("digest", &self.digest)
            .field("connect_timeout", &self.connect_timeout)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            root: DEFAULT_ROOT.into(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            digest: None,
            connect_timeout: Duration::from_secs(5),
            watch: WatchConfig::default(),
        }
    }
}

impl Config {
    /// The defaults, with these `host:port` servers.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        Config {
            servers: servers.into_iter().map(Into::into).collect(),
            ..Config::default()
        }
    }

    /// Sets the root path (default `/microservices`).
    pub fn with_root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// Sets the session timeout (default 10 s).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Authenticates with digest `user:password` and protects what we create with it.
    pub fn with_digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some(Credentials::new(user, password.into()));
        self
    }

    /// Sets the connect and request timeout (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reads a URL:
    ///
    /// ```text
    /// zk://HOST[:PORT][,HOST[:PORT]...][/ROOT][?OPTION=VALUE&...]
    /// ```
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `session_timeout` | the session timeout, this backend's TTL (the server keeps it between 2 and 20 ticks) | `10s` |
    /// | `digest` | `user:password` for digest authentication and ACLs on what we create | none |
    /// | `connect_timeout` | connect and request timeout | `5s` |
    ///
    /// The port defaults to 2181 and the root to `/microservices`. Unknown options are
    /// errors; errors never show the digest.
    pub fn from_url(url: &str) -> Result<Config> {
        let parsed = RegistryUrl::parse(url)?;
        let shown = parsed.redacted().to_owned();
        let url = parsed.url();
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(shown, "expected zk://"));
        }
        let mut config = Config::new(
            parsed
                .hosts()
                .iter()
                .map(|h| h.with_default_port(DEFAULT_PORT)),
        );
        let path = url.path().trim_end_matches('/');
        if !path.is_empty() {
            config.root = path.to_owned();
        }
        let mut opts = UrlOptions::new(url);
        if let Some(t) = opts.duration("session_timeout")? {
            config.session_timeout = t;
        }
        if let Some(t) = opts.duration("connect_timeout")? {
            config.connect_timeout = t;
        }
        let digest = opts.string("digest");
        config.watch = WatchConfig::from_options(&mut opts)?;
        opts.finish()?;
        if let Some(digest) = digest {
            match digest.split_once(':') {
                Some((user, password)) if !user.is_empty() => {
                    config.digest = Some(Credentials::new(user, password));
                }
                _ => return Err(Error::invalid_url(shown, "digest is user:password")),
            }
        }
        config
            .check()
            .map_err(|reason| Error::invalid_url(shown, reason))?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.servers.is_empty() {
            return Err("no ZooKeeper server".into());
        }
        if self.session_timeout < Duration::from_millis(100) {
            return Err("session_timeout below 100ms".into());
        }
        if self.session_timeout > Duration::from_secs(24 * 3600) {
            return Err("session_timeout above a day".into());
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(3600) {
            return Err("connect_timeout must be between 0 and an hour".into());
        }
        let valid_root =
            self.root.starts_with('/') && !self.root.ends_with('/') && !self.root.contains("//");
        if !valid_root {
            return Err(format!(
                "root {:?} must start with / and not end with one",
                self.root
            ));
        }
        Ok(())
    }

    /// The connect string: `h1:p1,h2:p2`.
    pub(crate) fn cluster(&self) -> String {
        self.servers.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let config = Config::from_url(
            "zk://10.0.0.1:2181,10.0.0.2/svc/reg?session_timeout=4s&digest=u:p%3Aw&connect_timeout=2s",
        )
        .unwrap();
        assert_eq!(config.servers, ["10.0.0.1:2181", "10.0.0.2:2181"]);
        assert_eq!(config.root, "/svc/reg");
        assert_eq!(config.session_timeout, Duration::from_secs(4));
        assert_eq!(config.digest, Some(Credentials::new("u", "p:w")));
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert!(!format!("{config:?}").contains("p:w"));
        assert_eq!(config.cluster(), "10.0.0.1:2181,10.0.0.2:2181");
    }

    #[test]
    fn defaults() {
        let config = Config::from_url("zk://127.0.0.1").unwrap();
        assert_eq!(config.servers, ["127.0.0.1:2181"]);
        assert_eq!(config.root, DEFAULT_ROOT);
        assert_eq!(config.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(config.digest, None);
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_digest() {
        for (url, why) in [
            ("zk://", "no ZooKeeper server"),
            ("etcd://h", "expected zk://"),
            ("zk://h?digest=hunter2", "user:password"),
            ("zk://h?ttl=1s&digest=u:hunter2", "unknown option"),
            ("zk://h?session_timeout=1ms&digest=u:hunter2", "below 100ms"),
            ("zk://h//x?digest=u:hunter2", "must start with /"),
            ("zk://h?session_timeout=1000000000years", "above a day"),
            ("zk://h?connect_timeout=0s", "connect_timeout"),
        ] {
            let err = Config::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }
}

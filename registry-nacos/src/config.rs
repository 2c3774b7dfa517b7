//! The options of the Nacos backend, from a URL or built in code.

use std::fmt;
use std::path::PathBuf;

use registry_core::config::Credentials;
use registry_core::untrusted::MAX_WEIGHT;
use registry_core::watch::WatchConfig;
use registry_core::{Error, RegistryUrl, Result, UrlOptions};

use crate::SCHEME;

/// Nacos' HTTP port (its gRPC port is this + 1000).
pub const DEFAULT_PORT: u16 = 8848;
/// Nacos' default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Nacos' default cluster.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// The weight kratos registers with.
pub const DEFAULT_WEIGHT: f64 = 100.0;

/// Options of the Nacos backend.
///
/// ```
/// use registry_nacos::Config;
///
/// let config = Config::new(["127.0.0.1:8848"])
///     .with_namespace("dev")
///     .with_group("APPS")
///     .with_credentials("nacos", "secret");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `host:port` (HTTP port) of each server.
    pub servers: Vec<String>,
    /// The namespace id (`""` is Nacos' `public`).
    pub namespace: String,
    /// The group of every service.
    pub group: String,
    /// The cluster instances are registered in.
    pub cluster: String,
    /// The weight instances are registered with (metadata `weight` overrides it).
    pub weight: f64,
    /// User name and password, when the server has authentication on. The password is
    /// never shown by `Debug`.
    pub credentials: Option<Credentials>,
    /// Where nacos-sdk keeps its cache of what the server pushes (nothing reads it back);
    /// when `None`, one temporary directory for the whole process, left behind at exit
    /// (nacos-sdk writes to it from tasks of its own, which outlive a closed registry).
    pub cache_dir: Option<PathBuf>,
    /// The core watch engine's settings (URL option `watch_timeout`: how long `watch()`
    /// waits for the first list).
    pub watch: WatchConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("servers", &self.servers)
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("weight", &self.weight)
            .field("credentials", &self.credentials)
            .field("cache_dir", &self.cache_dir)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            namespace: String::new(),
            group: DEFAULT_GROUP.into(),
            cluster: DEFAULT_CLUSTER.into(),
            weight: DEFAULT_WEIGHT,
            credentials: None,
            cache_dir: None,
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

    /// Sets the namespace id (`public` and `""` are Nacos' public namespace).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = public_is_empty(namespace.into());
        self
    }

    /// Sets the group (default `DEFAULT_GROUP`).
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets the cluster (default `DEFAULT`).
    pub fn with_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// Sets the weight (default 100; Nacos takes 0 to 10000).
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
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

    /// Keeps nacos-sdk's cache in this directory.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Reads a URL:
    ///
    /// ```text
    /// nacos://HOST[:PORT][,HOST[:PORT]...][?OPTION=VALUE&...]
    /// ```
    ///
    /// | option | meaning | default |
    /// |---|---|---|
    /// | `namespace` | namespace id (`public` is the public one) | public |
    /// | `group` | group of every service | `DEFAULT_GROUP` |
    /// | `cluster` | cluster instances are registered in | `DEFAULT` |
    /// | `weight` | weight instances are registered with, 0 to 10000 | `100` |
    /// | `username`, `password` | authentication (never logged) | none |
    /// | `cache_dir` | nacos-sdk's cache directory | one temporary directory per process |
    ///
    /// The port (HTTP; gRPC is port + 1000) defaults to 8848. Unknown options are errors;
    /// errors never show the password.
    pub fn from_url(url: &str) -> Result<Config> {
        let parsed = RegistryUrl::parse(url)?;
        let shown = parsed.redacted().to_owned();
        let url = parsed.url();
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(shown, "expected nacos://"));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(Error::invalid_url(
                shown,
                "nacos:// takes no path (use namespace=)",
            ));
        }
        let mut config = Config::new(
            parsed
                .hosts()
                .iter()
                .map(|h| h.with_default_port(DEFAULT_PORT)),
        );
        let mut opts = UrlOptions::new(url);
        if let Some(namespace) = opts.string("namespace") {
            config.namespace = public_is_empty(namespace);
        }
        if let Some(group) = opts.string("group") {
            config.group = group;
        }
        if let Some(cluster) = opts.string("cluster") {
            config.cluster = cluster;
        }
        let weight = opts.string("weight");
        config.credentials = Credentials::from_url(url, &mut opts)?;
        if let Some(dir) = opts.string("cache_dir") {
            config.cache_dir = Some(dir.into());
        }
        config.watch = WatchConfig::from_options(&mut opts)?;
        opts.finish()?;
        if let Some(weight) = weight {
            config.weight = weight.parse().map_err(|_| {
                Error::invalid_url(&shown, format!("weight {weight:?} is not a number"))
            })?;
        }
        config
            .check()
            .map_err(|reason| Error::invalid_url(shown, reason))?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.servers.is_empty() {
            return Err("no Nacos server".into());
        }
        if !(self.weight.is_finite() && (0.0..=MAX_WEIGHT).contains(&self.weight)) {
            return Err("weight must be a number from 0 to 10000 (Nacos' range)".into());
        }
        if self.group.is_empty() || self.cluster.is_empty() {
            return Err("group and cluster must not be empty".into());
        }
        Ok(())
    }
}

fn public_is_empty(namespace: String) -> String {
    if namespace == "public" {
        String::new()
    } else {
        namespace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let config = Config::from_url(
            "nacos://10.0.0.1,10.0.0.2:8849?namespace=dev&group=G&cluster=C&weight=5&username=u&password=s3cret&cache_dir=/tmp/c",
        )
        .unwrap();
        assert_eq!(config.servers, ["10.0.0.1:8848", "10.0.0.2:8849"]);
        assert_eq!(config.namespace, "dev");
        assert_eq!((config.group.as_str(), config.cluster.as_str()), ("G", "C"));
        assert_eq!(config.weight, 5.0);
        assert_eq!(config.credentials, Some(Credentials::new("u", "s3cret")));
        assert_eq!(config.cache_dir, Some(PathBuf::from("/tmp/c")));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(
            Config::from_url("nacos://h?namespace=public")
                .unwrap()
                .namespace,
            ""
        );
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for (url, why) in [
            ("nacos://", "no Nacos server"),
            ("etcd://h", "expected nacos://"),
            ("nacos://h/ns?password=hunter2&username=u", "no path"),
            (
                "nacos://h?weight=heavy&password=hunter2&username=u",
                "not a number",
            ),
            ("nacos://h?weight=10001", "from 0 to 10000"),
            ("nacos://h?weight=inf", "from 0 to 10000"),
            ("nacos://h?password=hunter2", "go together"),
            (
                "nacos://h?groups=x&password=hunter2&username=u",
                "unknown option",
            ),
        ] {
            let err = Config::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(why), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }
}

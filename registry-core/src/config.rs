//! Configuration pieces every backend shares: a secret that never prints, a user and password
//! from a URL, TLS files from URL options, and PEM loading.

use std::fmt;
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use url::Url;

use crate::{Error, Result, UrlOptions};

/// A password or token: `Debug` and `Display` show `***`, never the value.
///
/// ```
/// use registry_core::config::Secret;
/// let secret = Secret::new("hunter2");
/// assert_eq!(format!("{secret:?} {secret}"), "*** ***");
/// assert_eq!(secret.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// A user name and password (etcd and Nacos authentication, ZooKeeper's digest). `Debug`
/// shows the user only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: Secret,
}

impl Credentials {
    /// A user and password.
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// Reads `USER:PASSWORD@` before the hosts, or the `username` and `password` options
    /// (percent-decoded), which go together. Errors never show the password.
    ///
    /// ```
    /// use registry_core::{config::Credentials, UrlOptions};
    /// let url = url::Url::parse("etcd://root:p%40ss@h:2379/ns").unwrap();
    /// let mut opts = UrlOptions::new(&url);
    /// let credentials = Credentials::from_url(&url, &mut opts).unwrap().unwrap();
    /// assert_eq!((credentials.user.as_str(), credentials.password.expose()), ("root", "p@ss"));
    /// ```
    pub fn from_url(url: &Url, opts: &mut UrlOptions) -> Result<Option<Credentials>> {
        let mut user = opts.string("username");
        let mut password = opts.string("password");
        if !url.username().is_empty() {
            if user.is_some() {
                return Err(Error::invalid_url(crate::redact(url), "user given twice"));
            }
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            user = Some(decode(url.username()));
            password = url.password().map(decode).or(password);
        }
        match (user, password) {
            (Some(user), Some(password)) => Ok(Some(Credentials::new(user, password))),
            (None, None) => Ok(None),
            _ => Err(Error::invalid_url(
                crate::redact(url),
                "username and password go together",
            )),
        }
    }
}

/// TLS towards a registry: the CA its certificate is checked against (the system roots when
/// `None`), this client's certificate and key when the server asks for one, and the name the
/// server's certificate must carry when it is not the host. PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The CA certificate(s) the server's certificate is checked against.
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and private key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry, when it is not the host.
    pub domain: Option<String>,
}

/// The files of a [`TlsConfig`], read.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadedTls {
    /// The CA certificate(s), PEM.
    pub ca: Option<Vec<u8>>,
    /// The client certificate and key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The expected server name.
    pub domain: Option<String>,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsConfig {
    /// TLS checked against the CA in `ca_file`.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        TlsConfig {
            ca_file: Some(ca_file.into()),
            ..TlsConfig::default()
        }
    }

    /// Presents this client certificate and key (PEM files).
    pub fn with_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Expects this name in the server's certificate.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the options `ca_file`, `cert_file` and `key_file` (which go together) and, when
    /// `domain` holds, `tls_domain`; `None` when none is given.
    pub fn from_options(url: &Url, opts: &mut UrlOptions, domain: bool) -> Result<Option<Self>> {
        let ca_file = opts.string("ca_file");
        let cert_file = opts.string("cert_file");
        let key_file = opts.string("key_file");
        let tls_domain = if domain {
            opts.string("tls_domain")
        } else {
            None
        };
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_url(
                    crate::redact(url),
                    "cert_file and key_file go together",
                ))
            }
        };
        if ca_file.is_none() && identity.is_none() && tls_domain.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsConfig {
            ca_file: ca_file.map(PathBuf::from),
            identity,
            domain: tls_domain,
        }))
    }

    /// Reads the files.
    pub fn load(&self) -> Result<LoadedTls> {
        let identity = match &self.identity {
            Some((cert, key)) => Some((read_pem("cert_file", cert)?, read_pem("key_file", key)?)),
            None => None,
        };
        Ok(LoadedTls {
            ca: self
                .ca_file
                .as_deref()
                .map(|ca| read_pem("ca_file", ca))
                .transpose()?,
            identity,
            domain: self.domain.clone(),
        })
    }
}

/// Reads a PEM file named by option `field`; a file that cannot be read or holds no PEM
/// block is refused with [`Error::InvalidInput`] naming the field and the path.
pub fn read_pem(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path)
        .map_err(|e| Error::invalid(field, shown.clone(), format!("cannot read: {e}")))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::invalid(field, shown, "not a PEM file"));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_options_or_userinfo_never_both() {
        let url = Url::parse("zk://h?username=u&password=p%2Fw").unwrap();
        let mut opts = UrlOptions::new(&url);
        let credentials = Credentials::from_url(&url, &mut opts).unwrap().unwrap();
        assert_eq!(credentials, Credentials::new("u", "p/w"));
        assert!(!format!("{credentials:?}").contains("p/w"));
        for bad in ["zk://u:hunter2@h?username=v", "zk://h?password=hunter2"] {
            let url = Url::parse(bad).unwrap();
            let err = Credentials::from_url(&url, &mut UrlOptions::new(&url)).unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn tls_files_go_together_and_must_be_pem() {
        let url = Url::parse("etcd://h?ca_file=/ca.pem&tls_domain=etcd").unwrap();
        let mut opts = UrlOptions::new(&url);
        let tls = TlsConfig::from_options(&url, &mut opts, true).unwrap();
        assert_eq!(tls, Some(TlsConfig::new("/ca.pem").with_domain("etcd")));
        let url = Url::parse("etcd://h?cert_file=/c.pem").unwrap();
        assert!(TlsConfig::from_options(&url, &mut UrlOptions::new(&url), true).is_err());

        let dir = std::env::temp_dir().join(format!("registry-core-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("x.pem");
        std::fs::write(&not_pem, b"hello").unwrap();
        let err = read_pem("ca_file", &not_pem).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    field: "ca_file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(read_pem("ca_file", &dir.join("missing.pem")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

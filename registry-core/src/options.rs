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
}

//! A parsed view of an instance endpoint such as `grpc://127.0.0.1:9000?isSecure=false`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use url::Url;

use crate::{Error, Result};

/// One endpoint of an instance: a URL whose scheme names the protocol (`http`, `grpc`, ...)
/// and whose authority is `host:port`.
///
/// The original text is kept as given (it is what goes on the wire); the accessors read the
/// parsed form.
///
/// ```
/// use registry_core::Endpoint;
/// let ep: Endpoint = "grpc://127.0.0.1:9000?isSecure=true".parse().unwrap();
/// assert_eq!(ep.scheme(), "grpc");
/// assert_eq!(ep.host(), "127.0.0.1");
/// assert_eq!(ep.port(), 9000);
/// assert!(ep.is_secure());
/// assert_eq!(ep.authority(), "127.0.0.1:9000");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    raw: String,
    url: Url,
    port: u16,
}

impl Endpoint {
    /// Parses and checks an endpoint: a URL with a scheme and an explicit `host:port`.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |reason: &str| Error::invalid("endpoint", raw, reason);
        let url = Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::invalid(
                "endpoint",
                crate::redact(&url),
                "must not carry credentials",
            ));
        }
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(bad("has no host (expected scheme://host:port)"));
        }
        // `url` hides a port equal to the scheme's default (`http://h:80`), so read the port
        // from the text of the authority: the one after the scheme's own `://`.
        let authority = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(url.scheme()) => {
                rest.split(['/', '?', '#']).next().unwrap_or_default()
            }
            _ => "",
        };
        let port = authority
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| bad("has no port (expected scheme://host:port)"))?;
        if port == 0 {
            return Err(bad("has port 0 (expected a port from 1 to 65535)"));
        }
        // And that port is the URL's: `url` reads some text another way (`http://h:1\x:2` is
        // port 1 to it), and the host comes from `url`.
        if url.port_or_known_default() != Some(port) {
            return Err(bad(
                "its port is not the URL's (expected scheme://host:port)",
            ));
        }
        Ok(Endpoint {
            raw: raw.to_owned(),
            url,
            port,
        })
    }

    /// The protocol: the URL scheme, such as `http` or `grpc`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        let host = self.url.host_str().unwrap_or_default();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with brackets around an IPv6 host, ready to dial.
    pub fn authority(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host(), self.port),
        }
    }

    /// The value of a query parameter, such as `isSecure`.
    pub fn query(&self, key: &str) -> Option<Cow<'_, str>> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether the endpoint asks for TLS: query `isSecure=true` (the go-kratos convention),
    /// or a scheme of `https`/`grpcs`.
    pub fn is_secure(&self) -> bool {
        match self.query("isSecure") {
            Some(v) => v.eq_ignore_ascii_case("true"),
            None => matches!(self.scheme(), "https" | "grpcs"),
        }
    }

    /// The endpoint exactly as written in the instance.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kratos_endpoints() {
        let ep = Endpoint::parse("http://192.168.56.1:8080").unwrap();
        assert_eq!(
            (ep.scheme(), ep.host(), ep.port()),
            ("http", "192.168.56.1", 8080)
        );
        assert!(!ep.is_secure());
        assert_eq!(ep.as_str(), "http://192.168.56.1:8080");

        let ep = Endpoint::parse("grpc://127.0.0.1:9000?isSecure=false").unwrap();
        assert_eq!(ep.query("isSecure").as_deref(), Some("false"));
        assert!(!ep.is_secure());

        let ep = Endpoint::parse("grpc://[::1]:9000").unwrap();
        assert_eq!(ep.host(), "::1");
        assert_eq!(ep.authority(), "[::1]:9000");

        let ep = Endpoint::parse("http://example.com:80").unwrap();
        assert_eq!(ep.port(), 80);
    }

    /// Found by the `endpoint` fuzz target: the host came from where `url` reads it and
    /// the port from elsewhere in the text, so `authority()` named another server than the
    /// URL.
    #[test]
    fn the_port_is_the_urls_own() {
        for bad in [
            "http:/http://user01:3594",
            "http:/h://x:80",
            "http://h:80\\x:90",
            "grpc://h:80\\x:90",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "endpoint",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        let ep = Endpoint::parse("HTTP://example.com:080/x").unwrap();
        assert_eq!((ep.host(), ep.port()), ("example.com", 80));
    }

    #[test]
    fn rejects_what_cannot_be_dialled() {
        for bad in [
            "",
            "127.0.0.1:9000",
            "grpc://127.0.0.1",
            "grpc://:9000",
            "not a url",
            "grpc:///path",
            "http://example.com",
            "grpc://[::1]",
            "http://user:pw@host:80",
            "http://127.0.0.1:0",
            "grpc://127.0.0.1:65536",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "endpoint",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
    }
}

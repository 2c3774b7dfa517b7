//! A small typed client of the Consul HTTP API: the agent, health and catalog endpoints this
//! backend uses, over `reqwest`.

use std::collections::BTreeSet;
use std::time::Duration;

use registry_core::config::Secret;
use registry_core::{Error, Result};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{status_error, transport};
use crate::format::{AgentRegistration, HealthEntry};
use crate::{Config, SCHEME};

/// The Consul agent's HTTP API.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    datacenter: Option<String>,
    request_timeout: Duration,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("registry-consul/", env!("CARGO_PKG_VERSION")));
        let scheme = match &config.tls {
            None => "http",
            Some(tls) => {
                builder = builder.use_rustls_tls().https_only(true);
                let loaded = tls.load()?;
                if let Some(pem) = &loaded.ca {
                    let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                        Error::invalid("ca_file", format!("{:?}", tls.ca_file), e.to_string())
                    })?;
                    builder = builder
                        .tls_built_in_root_certs(false)
                        .add_root_certificate(cert);
                }
                if let Some((cert, key)) = loaded.identity {
                    let mut pem = cert;
                    pem.push(b'\n');
                    pem.extend(key);
                    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                        Error::invalid("cert_file", format!("{:?}", tls.identity), e.to_string())
                    })?;
                    builder = builder.identity(identity);
                }
                "https"
            }
        };
        let http = builder.build().map_err(|e| Error::Backend {
            backend: SCHEME,
            message: format!("HTTP client: {e}"),
            temporary: false,
            source: None,
        })?;
        Ok(Client {
            http,
            base: format!("{scheme}://{}", config.address),
            token: config.token.clone(),
            datacenter: config.datacenter.clone(),
            request_timeout: config.request_timeout,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.request_timeout);
        if let Some(token) = &self.token {
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(token.expose()) {
                value.set_sensitive(true);
                request = request.header("X-Consul-Token", value);
            }
        }
        request
    }

    /// Sends `request` for `operation`, mapping transport failures and error statuses.
    async fn send(&self, operation: &'static str, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await.map_err(|e| transport(operation, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(status_error(operation, status, body.trim()))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        response: Response,
    ) -> Result<T> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport(operation, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Backend {
            backend: SCHEME,
            message: format!("{operation}: unexpected answer: {e}"),
            temporary: true,
            source: None,
        })
    }

    /// The agent answers: `GET /v1/status/leader` (no ACL needed).
    pub(crate) async fn ping(&self) -> Result<()> {
        self.send("status", self.request(Method::GET, "/v1/status/leader"))
            .await
            .map(drop)
    }

    /// `PUT /v1/agent/service/register`.
    pub(crate) async fn register(&self, registration: &AgentRegistration) -> Result<()> {
        let request = self
            .request(Method::PUT, "/v1/agent/service/register")
            .json(registration);
        self.send("register", request).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/:id`. (Consul 1.8 answers an id it does not know
    /// with a 500: callers ask [`service_name`](Self::service_name) first.)
    pub(crate) async fn deregister(&self, id: &str) -> Result<()> {
        let request = self.request(Method::PUT, &format!("/v1/agent/service/deregister/{id}"));
        self.send("deregister", request).await.map(drop)
    }

    /// The name of the service the agent holds under `id`: `GET /v1/agent/service/:id`.
    pub(crate) async fn service_name(&self, id: &str) -> Result<Option<String>> {
        #[derive(serde::Deserialize)]
        struct Named {
            #[serde(rename = "Service")]
            service: String,
        }
        let request = self.request(Method::GET, &format!("/v1/agent/service/{id}"));
        let response = request
            .send()
            .await
            .map_err(|e| transport("agent service", e))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(status_error("agent service", status, body.trim()));
        }
        Ok(Some(
            self.json::<Named>("agent service", response).await?.service,
        ))
    }

    /// `PUT /v1/agent/check/pass/:check_id`.
    pub(crate) async fn pass(&self, check_id: &str) -> Result<()> {
        let request = self.request(Method::PUT, &format!("/v1/agent/check/pass/{check_id}"));
        self.send("check pass", request).await.map(drop)
    }

    /// `GET /v1/health/service/:name?passing=true`, as a blocking query when `block` gives an
    /// index and a wait. Returns the entries and the `X-Consul-Index`.
    pub(crate) async fn health(
        &self,
        name: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<HealthEntry>, u64)> {
        let mut request = self
            .request(Method::GET, &format!("/v1/health/service/{name}"))
            .query(&[("passing", "true")]);
        if let Some(dc) = &self.datacenter {
            request = request.query(&[("dc", dc)]);
        }
        if let Some((index, wait)) = block {
            // Consul adds up to wait/16 of jitter; the client waits longer than that.
            request = request
                .query(&[
                    ("index", index.to_string()),
                    ("wait", format!("{}ms", wait.as_millis())),
                ])
                .timeout(wait + wait / 16 + self.request_timeout);
        }
        let response = self.send("health", request).await?;
        // Every health answer carries its index; one without is not an answer to follow.
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Unavailable {
                message: "Consul health answer without a valid X-Consul-Index".into(),
                source: None,
            })?;
        Ok((self.json("health", response).await?, index))
    }

    /// `GET /v1/health/state/passing`: the names of the services with a passing check.
    pub(crate) async fn passing_services(&self) -> Result<BTreeSet<String>> {
        #[derive(serde::Deserialize)]
        struct Check {
            #[serde(rename = "ServiceName", default)]
            service_name: String,
        }
        let mut request = self.request(Method::GET, "/v1/health/state/passing");
        if let Some(dc) = &self.datacenter {
            request = request.query(&[("dc", dc)]);
        }
        let response = self.send("passing checks", request).await?;
        let checks: Vec<Check> = self.json("passing checks", response).await?;
        Ok(checks
            .into_iter()
            .map(|c| c.service_name)
            .filter(|name| !name.is_empty())
            .collect())
    }
}

//! A small etcd v3 client over tonic and the generated API in [`crate::rpc`]: the calls this
//! backend makes (range, put, delete, lease grant/revoke/keep-alive, watch, status), TLS, and
//! user/password authentication with the token refreshed when etcd forgets it.
//!
//! Why not etcd-client: its build script compiles etcd's protos with `protoc`, so every crate
//! depending on it (and on this one) needed `protoc` installed to build. The generated code is
//! checked in here instead (`scripts/protogen`), and the few calls this backend makes are
//! written over it. One client talks to one endpoint; [`crate::core`] pins one and fails over.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use registry_core::config::{Credentials, LoadedTls};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};

use crate::error::{is_compacted, is_too_large};
use crate::rpc::etcdserverpb::auth_client::AuthClient;
use crate::rpc::etcdserverpb::kv_client::KvClient;
use crate::rpc::etcdserverpb::lease_client::LeaseClient;
use crate::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::rpc::etcdserverpb::watch_client::WatchClient;
use crate::rpc::etcdserverpb::{
    watch_request, AuthenticateRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest, RangeRequest,
    StatusRequest, StatusResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::rpc::mvccpb::KeyValue;

/// How to reach an endpoint.
#[derive(Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: Option<ClientTlsConfig>,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The options cannot work (a TLS setting tonic refuses): permanent.
    Config(tonic::transport::Error),
    /// The endpoint did not answer: temporary.
    Transport(tonic::transport::Error),
    /// The endpoint answered the authentication with an error.
    Rpc(Status),
}

/// The token header etcd reads.
const TOKEN_HEADER: &str = "token";

type Token = Arc<RwLock<Option<MetadataValue<Ascii>>>>;

/// The header by which a request asks for a member that has a leader (etcd's
/// `rpctypes.MetadataRequireLeaderKey`).
const REQUIRE_LEADER_HEADER: &str = "hasleader";

/// Adds the current auth token, if any, to each request, and asks for a member with a leader:
/// a member cut off from its cluster's quorum then refuses a call at once (`Unavailable`,
/// "no leader") instead of letting it wait for the request timeout, and ends the watches and
/// keep-alives it serves within a few election timeouts, instead of keeping them open and
/// silent; the client then moves to another member.
#[derive(Clone)]
pub(crate) struct WithToken(Token);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(REQUIRE_LEADER_HEADER, MetadataValue::from_static("true"));
        let token = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(token) = token {
            request.metadata_mut().insert(TOKEN_HEADER, token);
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, WithToken>;

/// User, password and the token they were last exchanged for.
struct Auth {
    user: String,
    password: String,
    token: Token,
    client: AuthClient<Channel>,
    /// Serializes refreshes, so that calls that all found the token stale authenticate once.
    refreshing: tokio::sync::Mutex<()>,
}

impl Auth {
    async fn authenticate(&self) -> Result<(), Status> {
        let resp = self
            .client
            .clone()
            .authenticate(AuthenticateRequest {
                name: self.user.clone(),
                password: self.password.clone(),
            })
            .await?
            .into_inner();
        let token: MetadataValue<Ascii> = resp
            .token
            .parse()
            .map_err(|_| Status::internal("etcd sent a token that is not a header value"))?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    fn current(&self) -> Option<MetadataValue<Ascii>> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Authenticates again unless a concurrent call already replaced `stale`.
    async fn refresh(&self, stale: Option<MetadataValue<Ascii>>) -> Result<(), Status> {
        let _one_at_a_time = self.refreshing.lock().await;
        if self.current() != stale {
            return Ok(());
        }
        tracing::debug!("etcd auth token refused; authenticating again");
        self.authenticate().await
    }
}

/// Whether etcd refused the token itself, as opposed to the user: then authenticating again
/// helps. etcd answers `Unauthenticated` for a token it does not know (expired, or forgotten
/// in a restart), and `InvalidArgument` with its `ErrAuthOldRevision` text for a token older
/// than a change of users or roles; etcd's Go client tells its errors apart by that text too
/// (`rpctypes`).
pub(crate) fn is_stale_token(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        || (status.code() == Code::InvalidArgument
            && status.message().contains("revision of auth store is old"))
}

/// A client of one etcd endpoint. Cheap to clone; clones share the connection and the token.
#[derive(Clone)]
pub(crate) struct Client {
    kv: KvClient<Svc>,
    lease: LeaseClient<Svc>,
    watch: WatchClient<Svc>,
    maintenance: MaintenanceClient<Svc>,
    auth: Option<Arc<Auth>>,
}

/// A lease keep-alive stream: send a request, read its answer.
pub(crate) struct KeepAlive {
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    answers: Streaming<LeaseKeepAliveResponse>,
    /// The first request went with the opening of the stream: etcd answers the call (its
    /// headers) only with its first message, so the call waits for the first request.
    first_sent: bool,
}

impl KeepAlive {
    /// Asks etcd to renew the lease.
    pub(crate) async fn send(&mut self) -> Result<(), Status> {
        if std::mem::take(&mut self.first_sent) {
            return Ok(());
        }
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::unavailable("keep-alive stream closed"))
    }

    /// The next answer; `None` when etcd ended the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<LeaseKeepAliveResponse>, Status> {
        self.answers.message().await
    }
}

/// A watch stream of one watch.
pub(crate) struct WatchStream {
    /// Kept so that the request side stays open while the watch runs.
    _requests: mpsc::Sender<WatchRequest>,
    answers: Streaming<WatchResponse>,
}

impl WatchStream {
    /// The next response (the first one says the watch was created); `None` when etcd ended
    /// the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<WatchResponse>, Status> {
        self.answers.message().await
    }
}

/// Every key-value under a prefix, read at one revision.
#[derive(Debug)]
pub(crate) struct Listing {
    /// The store revision read at.
    pub(crate) revision: i64,
    /// The keys and values, in key order.
    pub(crate) kvs: Vec<KeyValue>,
}

/// The largest answer the KV client decodes (gRPC's default is 4 MiB): big enough for pages
/// of tens of thousands of instances, so that a big service lists in a few requests (etcd
/// counts the whole rest of the range again for every page).
const MAX_KV_MESSAGE: usize = 16 << 20;

/// How many bytes of keys and values one page of a listing aims at.
pub(crate) const PAGE_BYTES: usize = 12 << 20;

/// The keys asked for in the first page of a listing (about 400 KB of ordinary instances).
const FIRST_PAGE: i64 = 2000;

/// The most keys one page of a listing asks for.
pub(crate) const MAX_PAGE: i64 = 100_000;

/// How many times a listing of the newest revision starts over when etcd compacts it away
/// between two pages.
const RESTARTS: u32 = 3;

/// The end of the range of keys starting with `prefix`, as etcd expects it.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    for (i, byte) in prefix.iter().enumerate().rev() {
        if *byte < 0xff {
            let mut end = prefix[..=i].to_vec();
            end[i] = *byte + 1;
            return end;
        }
    }
    // Every byte is 0xff: no end, all keys from the prefix on.
    vec![0]
}

impl Client {
    /// Connects to `endpoint` (`host:port`) and, with credentials, authenticates.
    pub(crate) async fn connect(
        endpoint: &str,
        options: &ConnectOptions,
    ) -> Result<Client, ConnectError> {
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut builder = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(ConnectError::Config)?
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // Notice a dead connection (a server cut off or frozen) instead of waiting on it:
            // a ping every 5 s (etcd's `--grpc-keepalive-min-time`: it refuses more frequent
            // ones), unanswered for the request timeout (at most 5 s).
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(options.request_timeout.min(Duration::from_secs(5)))
            .keep_alive_while_idle(true);
        if let Some(tls) = &options.tls {
            builder = builder
                .tls_config(tls.clone())
                .map_err(ConnectError::Config)?;
        }
        let channel = builder.connect().await.map_err(ConnectError::Transport)?;
        let token = Token::default();
        let auth = match &options.credentials {
            Some(Credentials { user, password }) => {
                let auth = Arc::new(Auth {
                    user: user.clone(),
                    password: password.expose().to_owned(),
                    token: token.clone(),
                    client: AuthClient::new(channel.clone()),
                    refreshing: tokio::sync::Mutex::new(()),
                });
                auth.authenticate().await.map_err(ConnectError::Rpc)?;
                Some(auth)
            }
            None => None,
        };
        let svc = InterceptedService::new(channel, WithToken(token));
        Ok(Client {
            kv: KvClient::new(svc.clone()).max_decoding_message_size(MAX_KV_MESSAGE),
            lease: LeaseClient::new(svc.clone()),
            watch: WatchClient::new(svc.clone()),
            maintenance: MaintenanceClient::new(svc),
            auth,
        })
    }

    /// Runs `call`; when etcd refuses the token as stale, authenticates again and runs it
    /// once more.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let Some(auth) = &self.auth else {
            return call(self.clone()).await;
        };
        let sent_with = auth.current();
        match call(self.clone()).await {
            Err(status) if is_stale_token(&status) => {
                auth.refresh(sent_with).await?;
                call(self.clone()).await
            }
            other => other,
        }
    }

    /// Reads every key starting with `prefix` at one revision — `revision`, or the newest
    /// when it is 0 — in pages: ranges of at most [`MAX_PAGE`] keys, each from the key after
    /// the last one read, all at the revision of the first page, sized to about
    /// [`PAGE_BYTES`] from what the pages before held, so that no answer comes near the
    /// [`MAX_KV_MESSAGE`] the client decodes (a page that still does is asked again, smaller). When etcd
    /// compacts the newest revision away between two pages, the read starts over.
    pub(crate) async fn get_prefix(&self, prefix: &[u8], revision: i64) -> Result<Listing, Status> {
        let mut attempts = 0;
        loop {
            match self.get_prefix_at(prefix, revision).await {
                // Compacted between two pages: read the newest revision again.
                Err(status) if revision == 0 && is_compacted(&status) && attempts < RESTARTS => {
                    attempts += 1;
                    tracing::debug!(reason = %status.message(), "etcd compacted a listing's revision; reading it again");
                }
                other => return other,
            }
        }
    }

    async fn get_prefix_at(&self, prefix: &[u8], revision: i64) -> Result<Listing, Status> {
        let range_end = prefix_end(prefix);
        let mut listing = Listing {
            revision,
            kvs: Vec::new(),
        };
        let mut key = prefix.to_vec();
        let mut limit = FIRST_PAGE;
        loop {
            let request = RangeRequest {
                key,
                range_end: range_end.clone(),
                revision: listing.revision,
                limit,
                ..RangeRequest::default()
            };
            let answer = self
                .call(|mut c| {
                    let request = request.clone();
                    async move { Ok(c.kv.range(request).await?.into_inner()) }
                })
                .await;
            let page = match answer {
                Ok(page) => page,
                Err(status) if is_too_large(&status) && limit > 1 => {
                    limit = (limit / 4).max(1);
                    tracing::debug!(limit, reason = %status.message(), "etcd page too large; asking for fewer keys");
                    key = request.key;
                    continue;
                }
                Err(status) => return Err(status),
            };
            if listing.revision == 0 {
                listing.revision = page.header.as_ref().map_or(0, |h| h.revision);
                if listing.revision <= 0 {
                    return Err(Status::unknown(
                        "etcd answered a range without its revision",
                    ));
                }
                listing
                    .kvs
                    .reserve(usize::try_from(page.count).unwrap_or(0).min(1 << 20));
            }
            let Some(last) = page.kvs.last() else { break };
            // The next page starts right after the last key of this one.
            key = last.key.clone();
            key.push(0);
            let bytes: usize = page
                .kvs
                .iter()
                .map(|kv| kv.key.len() + kv.value.len())
                .sum();
            let per_key = bytes / page.kvs.len() + 1;
            listing.kvs.extend(page.kvs);
            if !page.more {
                break;
            }
            limit = i64::try_from(PAGE_BYTES / per_key)
                .unwrap_or(MAX_PAGE)
                .clamp(1, MAX_PAGE);
        }
        Ok(listing)
    }

    /// How many keys `key` names: 1 when it exists, else 0.
    pub(crate) async fn count(&self, key: &[u8]) -> Result<i64, Status> {
        let request = RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { Ok(c.kv.range(request).await?.into_inner().count) }
        })
        .await
    }

    /// Writes `value` at `key`, attached to `lease` (0: none).
    pub(crate) async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), Status> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.kv.put(request).await.map(drop) }
        })
        .await
    }

    /// Deletes `key`.
    pub(crate) async fn delete(&self, key: &[u8]) -> Result<(), Status> {
        let request = DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.kv.delete_range(request).await.map(drop) }
        })
        .await
    }

    /// Grants a lease of `ttl_secs`; returns its id.
    pub(crate) async fn lease_grant(&self, ttl_secs: i64) -> Result<i64, Status> {
        self.call(|mut c| async move {
            let request = LeaseGrantRequest {
                ttl: ttl_secs,
                id: 0,
            };
            let resp = c.lease.lease_grant(request).await?.into_inner();
            if resp.error.is_empty() {
                Ok(resp.id)
            } else {
                Err(Status::unknown(resp.error))
            }
        })
        .await
    }

    /// Revokes a lease, deleting the keys attached to it.
    pub(crate) async fn lease_revoke(&self, id: i64) -> Result<(), Status> {
        self.call(|mut c| async move {
            c.lease
                .lease_revoke(LeaseRevokeRequest { id })
                .await
                .map(drop)
        })
        .await
    }

    /// Opens a keep-alive stream for lease `id`, sending its first renewal.
    pub(crate) async fn lease_keep_alive(&self, id: i64) -> Result<KeepAlive, Status> {
        self.call(|mut c| async move {
            let (requests, receiver) = mpsc::channel(4);
            requests
                .send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
            let answers = c
                .lease
                .lease_keep_alive(ReceiverStream::new(receiver))
                .await?
                .into_inner();
            Ok(KeepAlive {
                id,
                requests,
                answers,
                first_sent: true,
            })
        })
        .await
    }

    /// Watches the keys starting with `prefix`, from `start_revision` on. etcd splits an
    /// answer larger than its request limit into fragments (`fragment`), so that no message
    /// of a watch of a big service comes near gRPC's 4 MiB: the last fragment of a batch has
    /// `fragment` false.
    pub(crate) async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<WatchStream, Status> {
        let create = WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            start_revision,
            fragment: true,
            ..WatchCreateRequest::default()
        };
        self.call(|mut c| {
            let create = create.clone();
            async move {
                // Sent before the call: etcd answers it with its first message.
                let (requests, receiver) = mpsc::channel(4);
                requests
                    .send(WatchRequest {
                        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
                    })
                    .await
                    .map_err(|_| Status::unavailable("watch request stream closed"))?;
                let answers = c
                    .watch
                    .watch(ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                Ok(WatchStream {
                    _requests: requests,
                    answers,
                })
            }
        })
        .await
    }

    /// The endpoint's status (its version, whether it is a learner).
    pub(crate) async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(
            |mut c| async move { Ok(c.maintenance.status(StatusRequest {}).await?.into_inner()) },
        )
        .await
    }
}

/// Builds tonic's TLS settings from PEM bytes.
pub(crate) fn tls_config(loaded: LoadedTls) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = loaded.ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = loaded.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = loaded.domain {
        tls = tls.domain_name(domain);
    }
    tls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    /// Values of 250 KB each, 5 per transaction, 5 transactions: more than 4 MiB in all.
    async fn write_big_batch(server: &test_support::EtcdServer, prefix: &str) -> i64 {
        let mut raw = etcd_client::Client::connect([server.endpoint()], None)
            .await
            .expect("raw etcd client");
        let mut first = 0;
        for txn in 0..5 {
            let puts: Vec<etcd_client::TxnOp> = (0..5)
                .map(|i| {
                    let value = vec![b'a' + i as u8; 250_000];
                    etcd_client::TxnOp::put(format!("{prefix}{txn}-{i}"), value, None)
                })
                .collect();
            let resp = raw
                .txn(etcd_client::Txn::new().and_then(puts))
                .await
                .expect("txn");
            if first == 0 {
                first = resp.header().expect("header").revision();
            }
        }
        first
    }

    async fn client(server: &test_support::EtcdServer) -> Client {
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credentials: None,
            tls: None,
        };
        Client::connect(&server.endpoint(), &options)
            .await
            .map_err(|e| format!("{e:?}"))
            .expect("connect")
    }

    /// A watch from an old revision gets the revisions since in one batch, here about
    /// 6 MB: etcd sends it in fragments, each one a message the client can take.
    #[tokio::test]
    async fn a_watch_reads_a_batch_larger_than_a_grpc_message_in_fragments() {
        let server = test_support::EtcdServer::start().await;
        let first = write_big_batch(&server, "/frag/").await;
        let client = client(&server).await;
        let mut stream = client.watch_prefix(b"/frag/", first).await.expect("watch");
        let (mut events, mut fragments) = (0, 0);
        while events < 25 {
            let resp = stream
                .message()
                .await
                .expect("every message of the watch fits")
                .expect("the watch goes on");
            events += resp.events.len();
            fragments += usize::from(resp.fragment);
        }
        assert_eq!(events, 25);
        assert!(fragments > 0, "the batch came in fragments");
    }

    /// A listing of more than one gRPC message's worth is read in pages at one revision.
    #[tokio::test]
    async fn a_listing_larger_than_a_grpc_message_is_read_in_pages() {
        let server = test_support::EtcdServer::start().await;
        write_big_batch(&server, "/pages/").await;
        let client = client(&server).await;
        let listing = client.get_prefix(b"/pages/", 0).await.expect("listing");
        assert_eq!(listing.kvs.len(), 25);
        assert!(listing.kvs.windows(2).all(|w| w[0].key < w[1].key));
        // Everything under the prefix was there at the revision read.
        let again = client
            .get_prefix(b"/pages/", listing.revision)
            .await
            .expect("at the revision");
        assert_eq!(again.kvs, listing.kvs);
    }
}

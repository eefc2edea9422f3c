//! The transport: `gossip.Gossip` over tonic and our TLS, one
//! `GossipStream` per peer (either direction), the handshake on each, and
//! the state messages routed between the streams and the drivers.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use super::crypto::{PkiId, Signer, Verifier};
use super::gen::gossip_client::GossipClient;
use super::gen::gossip_server::{Gossip, GossipServer};
use super::handshake::{conn_establish, verify_conn_establish, ConnInfo, HandshakeError};
use super::membership::Membership;
use super::tls::{PeerInfo, TlsConn, TlsIdentity};
use crate::adapters::tcp::accept;
use crate::adapters::tokio::{Tokio, WeakDriverHandle};
use crate::adapters::{Runtime, SendError, Transport};
use crate::wire::gossip::gossip_message::Content;
use crate::wire::gossip::{Empty, Envelope, GossipMessage};
use crate::{wire, AntiEntropy, Event, PeerState, ResponderEvent, StateResponder};

/// Fabric's minimum interval between a client's keepalive pings
/// (`peer.keepalive.minInterval`): a client pinging more often is sent
/// GOAWAY `too_many_pings`.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of a [`GrpcTransport`]. Defaults are Fabric's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// The channel: state messages are checked against its policy
    /// ([`Verifier::verify_by_channel`]) and membership speaks for it.
    pub channel: Bytes,
    /// Largest gRPC message sent or received, each way. Fabric's 100 MiB
    /// ([`wire::DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// Messages queued for one stream; past it [`Transport::send`] refuses
    /// with [`SendError::Full`]. Default 1024.
    pub queue: usize,
    /// How long the remote's `ConnEstablish` (and a `Ping`) may take:
    /// Fabric's `connTimeout`, 2 s.
    pub conn_timeout: Duration,
    /// TCP connect and TLS when dialling: Fabric's `dialTimeout`, 3 s.
    pub dial_timeout: Duration,
    /// TLS when accepting: Fabric's `peer.connectiontimeout`, 5 s.
    pub accept_timeout: Duration,
    /// First wait before dialling again after a failure. Default 100 ms.
    pub min_backoff: Duration,
    /// Longest wait; each failure in a row doubles it up to this. 10 s.
    pub max_backoff: Duration,
    /// HTTP/2 keepalive pings when we dial: Fabric's 60 s, and never less
    /// ([`MIN_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// A ping unanswered this long closes the connection: Fabric's 20 s.
    pub keepalive_timeout: Duration,
}

impl GrpcConfig {
    /// Fabric's settings for `channel`.
    pub fn new(channel: impl Into<Bytes>) -> Self {
        Self {
            channel: channel.into(),
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            queue: 1024,
            conn_timeout: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(3),
            accept_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }

    /// Names the first setting Fabric would refuse or that cannot work.
    pub fn validate(&self) -> Result<(), GrpcConfigError> {
        if self.keepalive_interval < MIN_KEEPALIVE_INTERVAL {
            return Err(GrpcConfigError::KeepaliveTooFrequent(
                self.keepalive_interval,
            ));
        }
        if self.max_message_size == 0 || self.queue == 0 {
            return Err(GrpcConfigError::Zero);
        }
        if self.min_backoff > self.max_backoff {
            return Err(GrpcConfigError::Backoff);
        }
        Ok(())
    }
}

/// A [`GrpcConfig`] that cannot work with Fabric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcConfigError {
    /// Fabric sends GOAWAY `too_many_pings` to a client pinging more often
    /// than every 60 s.
    #[error("keepalive every {0:?} is more often than Fabric's 60 s minimum")]
    KeepaliveTooFrequent(Duration),
    /// `max_message_size` or `queue` is zero.
    #[error("max_message_size and queue must be positive")]
    Zero,
    /// `min_backoff` exceeds `max_backoff`.
    #[error("min_backoff exceeds max_backoff")]
    Backoff,
}

/// Which side of a connection we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled.
    Dialled,
    /// The remote dialled us.
    Accepted,
}

/// A handshake we refused, or the remote refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The remote's address.
    pub remote: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Why.
    pub error: HandshakeError,
}

/// Counters of a [`GrpcTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcStats {
    /// Streams that passed the handshake (dialled or accepted).
    pub connected: u64,
    /// Of those, streams that ended.
    pub disconnected: u64,
    /// Dials that failed before a handshake (TCP, TLS, Ping, the stream).
    pub dial_failures: u64,
    /// Handshakes refused, either side ([`GrpcTransport::refusals`]).
    pub handshake_refusals: u64,
    /// Probe handshakes answered (Fabric's `Handshake()`), not registered.
    pub probes: u64,
    /// State messages handed to a driver.
    pub state_in: u64,
    /// Messages written to streams.
    pub messages_out: u64,
    /// Streams closed on a payload that is not a `GossipMessage`, as
    /// Fabric closes them.
    pub malformed: u64,
    /// Messages over `max_message_size`: outgoing ones dropped, incoming
    /// ones end their stream (gRPC refuses them).
    pub oversized: u64,
    /// State messages dropped: the remote's handshake does not satisfy the
    /// channel's policy ([`Verifier::verify_by_channel`]).
    pub unauthorized: u64,
    /// Messages nothing here acts on (gossip of blocks, leadership, a state
    /// message with no driver attached for it, …), dropped.
    pub ignored: u64,
    /// StateInfo messages taken into the membership.
    pub state_infos: u64,
    /// StateInfo messages refused (MAC, identity, signature, stale).
    pub state_infos_refused: u64,
    /// Inputs the machines refused ([`Transport::refused`]).
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    disconnected: AtomicU64,
    dial_failures: AtomicU64,
    handshake_refusals: AtomicU64,
    probes: AtomicU64,
    state_in: AtomicU64,
    messages_out: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    unauthorized: AtomicU64,
    ignored: AtomicU64,
    state_infos: AtomicU64,
    state_infos_refused: AtomicU64,
    refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Refusals kept for [`GrpcTransport::refusals`].
const REFUSALS_KEPT: usize = 64;

/// What a stream's writer sends.
enum Out {
    /// A state message: NoopSigned when written.
    Message(GossipMessage),
    /// A signed envelope (handshake, membership).
    Envelope(Envelope),
    /// End the stream with this status (a refused handshake, server side).
    Refuse(Status),
}

/// One live stream to a peer.
struct Link {
    id: u64,
    queue: mpsc::Sender<Out>,
    identity: Bytes,
    /// Dropped with the link: tells the stream's task to end.
    _closer: oneshot::Sender<()>,
}

#[derive(Default)]
struct Routes {
    requester: Option<WeakDriverHandle<AntiEntropy<PkiId>>>,
    responder: Option<WeakDriverHandle<StateResponder<PkiId>>>,
}

struct Inner {
    config: GrpcConfig,
    tls: TlsIdentity,
    signer: Arc<dyn Signer>,
    verifier: Arc<dyn Verifier>,
    links: Mutex<BTreeMap<PkiId, Link>>,
    routes: Mutex<Routes>,
    membership: Mutex<Option<Membership>>,
    tasks: Mutex<JoinSet<()>>,
    refusals: Mutex<VecDeque<Refusal>>,
    /// Bumped whenever a link goes: dialers waiting for one to end.
    gone: watch::Sender<u64>,
    next_id: AtomicU64,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        // Reap the finished ones: reconnections must not grow the set.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn refuse(&self, remote: SocketAddr, direction: Direction, error: HandshakeError) {
        bump(&self.counters.handshake_refusals);
        emit!(DEBUG, %remote, ?direction, %error, "handshake refused");
        let mut refusals = lock(&self.refusals);
        if refusals.len() == REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(Refusal {
            remote,
            direction,
            error,
        });
    }

    fn identity_of(&self, peer: &PkiId) -> Option<Bytes> {
        lock(&self.links)
            .get(peer)
            .map(|link| link.identity.clone())
    }

    fn requester(&self) -> Option<WeakDriverHandle<AntiEntropy<PkiId>>> {
        lock(&self.routes).requester.clone()
    }

    fn responder(&self) -> Option<WeakDriverHandle<StateResponder<PkiId>>> {
        lock(&self.routes).responder.clone()
    }
}

/// Fabric's gossip comm layer for the machines: see the [module
/// docs](super). Clones share the connections; dropping the last clone
/// ends every task and closes every stream.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    /// A transport speaking as `signer`'s identity over `tls`, checking
    /// remotes with `verifier`.
    pub fn new(
        config: GrpcConfig,
        tls: TlsIdentity,
        signer: Arc<dyn Signer>,
        verifier: Arc<dyn Verifier>,
    ) -> Result<Self, GrpcConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tls,
                signer,
                verifier,
                links: Mutex::new(BTreeMap::new()),
                routes: Mutex::new(Routes::default()),
                membership: Mutex::new(None),
                tasks: Mutex::new(JoinSet::new()),
                refusals: Mutex::new(VecDeque::new()),
                gone: watch::channel(0).0,
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
            }),
        })
    }

    /// Our PKI-ID.
    pub fn pki_id(&self) -> PkiId {
        self.inner.signer.pki_id()
    }

    /// State responses, connection events and membership go to this
    /// requester's driver.
    pub fn attach_requester(&self, driver: WeakDriverHandle<AntiEntropy<PkiId>>) {
        lock(&self.inner.routes).requester = Some(driver);
    }

    /// State requests and disconnections go to this responder's driver.
    pub fn attach_responder(&self, driver: WeakDriverHandle<StateResponder<PkiId>>) {
        lock(&self.inner.routes).responder = Some(driver);
    }

    /// Sends our signed Alive and StateInfo (at `height`) on every stream
    /// now and every `interval` (Fabric expires a member after 25 s
    /// without a newer Alive; 4 s is its StateInfo period), with a
    /// StateInfo pull request, and answers Fabric's pull and membership
    /// requests: Fabric peers then list us and ask us for blocks, and
    /// their heights reach the requester as `Event::Membership`.
    /// `endpoint` is the address we advertise (`peer.gossip.endpoint`).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn publish_membership(&self, endpoint: String, height: u64, interval: Duration) {
        // A transport may read the wall clock: Fabric's inc_num is the start
        // time in nanoseconds, so a restart is newer than the last run.
        #[allow(clippy::disallowed_methods)]
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        *lock(&self.inner.membership) = Some(Membership::new(
            self.inner.config.channel.clone(),
            endpoint,
            start,
            height,
        ));
        let weak = Arc::downgrade(&self.inner);
        self.inner.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let peers: Vec<PkiId> = lock(&inner.links).keys().cloned().collect();
                for peer in peers {
                    announce(&inner, &peer);
                }
            }
        });
    }

    /// The height our StateInfo advertises from its next publication on.
    pub fn set_ledger_height(&self, height: u64) {
        if let Some(membership) = lock(&self.inner.membership).as_mut() {
            membership.set_height(height);
        }
    }

    /// Serves `gossip.Gossip` on `listener` (TLS, then HTTP/2): Fabric
    /// peers dial us here. Stops when the last clone of the transport is
    /// dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn serve(&self, listener: TcpListener) {
        let (accepted, incoming) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
        let weak = Arc::downgrade(&self.inner);
        let pause = self.inner.config.min_backoff;
        self.inner.spawn(async move {
            loop {
                let (stream, remote) = accept(&listener, pause).await;
                let Some(inner) = weak.upgrade() else { return };
                let (tls, timeout, accepted) = (
                    inner.tls.clone(),
                    inner.config.accept_timeout,
                    accepted.clone(),
                );
                // TLS on its own task: a slow client holds up no one.
                inner.spawn(async move {
                    if let Ok(conn) = tls.accept(stream, remote, timeout).await {
                        let _ = accepted.send(Ok(conn)).await;
                    }
                });
            }
        });
        let config = &self.inner.config;
        let service = GossipServer::new(Service {
            inner: Arc::downgrade(&self.inner),
        })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
        let server = Server::builder()
            // Fabric's server side: pings every 2 h, 20 s to answer.
            .http2_keepalive_interval(Some(Duration::from_secs(7200)))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(WINDOW))
            .max_frame_size(Some(MAX_FRAME))
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming));
        self.inner.spawn(async move {
            if let Err(_error) = server.await {
                emit!(WARN, %_error, "gRPC server ended");
            }
        });
    }

    /// Keeps a stream to the peer at `addr` up: dials (TLS naming
    /// `server_name`, the host or IP its certificate names), pings, opens
    /// `GossipStream` and runs the handshake, as Fabric does; after a
    /// failure or a lost stream, dials again after a back-off
    /// (`min_backoff` doubling to `max_backoff`, less a random quarter).
    /// With `expected`, refuses another PKI-ID ([`HandshakeError::WrongPeer`])
    /// and does not dial while a stream to that peer is up (one stream per
    /// peer, whoever dialled). Stops when the last clone of the transport
    /// is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn dial(
        &self,
        addr: SocketAddr,
        server_name: ServerName<'static>,
        expected: Option<PkiId>,
    ) {
        let weak = Arc::downgrade(&self.inner);
        let config = self.inner.config.clone();
        let mut gone = self.inner.gone.subscribe();
        self.inner.spawn(async move {
            let mut backoff = config.min_backoff;
            // Jitter only.
            let mut rng = fastrand::Rng::new();
            loop {
                if let Some(peer) = &expected {
                    // Someone else's stream to the peer serves: wait for it to go.
                    loop {
                        let Some(inner) = weak.upgrade() else { return };
                        if !lock(&inner.links).contains_key(peer) {
                            break;
                        }
                        drop(inner);
                        if gone.changed().await.is_err() {
                            return;
                        }
                    }
                }
                let started = Tokio::now();
                match dial_once(&weak, addr, server_name.clone(), expected.as_ref()).await {
                    Some(true) => {
                        // A stream that lasted starts the back-off over.
                        if Tokio::now().saturating_duration_since(started) > backoff {
                            backoff = config.min_backoff;
                        }
                    }
                    Some(false) => {}
                    None => return,
                }
                let jitter = backoff.mul_f64(rng.f64() / 4.0);
                tokio::time::sleep(backoff.saturating_sub(jitter)).await;
                backoff = backoff.saturating_mul(2).min(config.max_backoff);
            }
        });
    }

    /// The peers with a stream up, in order.
    pub fn connected(&self) -> Vec<PkiId> {
        lock(&self.inner.links).keys().cloned().collect()
    }

    /// Closes the stream to `peer`, if any (e.g. to ban it after
    /// refusals). A dialled peer is dialled again after the back-off.
    pub fn disconnect(&self, peer: &PkiId) {
        lock(&self.inner.links).remove(peer);
    }

    /// The last handshakes refused (64 at most), oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        lock(&self.inner.refusals).iter().cloned().collect()
    }

    /// The peers' heights learnt from their StateInfo.
    pub fn membership(&self) -> Vec<PeerState<PkiId>> {
        lock(&self.inner.membership)
            .as_ref()
            .map(Membership::peers)
            .unwrap_or_default()
    }

    /// The transport's counters.
    pub fn stats(&self) -> GrpcStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GrpcStats {
            connected: get(&c.connected),
            disconnected: get(&c.disconnected),
            dial_failures: get(&c.dial_failures),
            handshake_refusals: get(&c.handshake_refusals),
            probes: get(&c.probes),
            state_in: get(&c.state_in),
            messages_out: get(&c.messages_out),
            malformed: get(&c.malformed),
            oversized: get(&c.oversized),
            unauthorized: get(&c.unauthorized),
            ignored: get(&c.ignored),
            state_infos: get(&c.state_infos),
            state_infos_refused: get(&c.state_infos_refused),
            refused: get(&c.refused),
        }
    }
}

/// HTTP/2 flow-control windows: a stream carries up to 100 MiB messages of
/// blocks, and hyper's 64 KiB default would make every response wait on
/// window updates.
const WINDOW: u32 = 16 << 20;

/// The largest HTTP/2 frame we accept: 1 MiB rather than 16 KiB, so that a
/// response of blocks crosses in a few frames.
const MAX_FRAME: u32 = 1 << 20;

impl Transport<PkiId> for GrpcTransport {
    fn send(&mut self, to: &PkiId, message: GossipMessage) -> Result<(), SendError> {
        let links = lock(&self.inner.links);
        let link = links.get(to).ok_or(SendError::Closed)?;
        link.queue
            .try_send(Out::Message(message))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            })
    }

    fn refused(&mut self, _: &PkiId, _: &(dyn std::error::Error + 'static)) {
        bump(&self.inner.counters.refused);
    }

    fn reports_connections(&self) -> bool {
        true
    }
}

/// Queues our Alive, StateInfo and a pull request on the stream to `peer`
/// (dropped if its queue is full: the next round sends newer ones).
fn announce(inner: &Inner, peer: &PkiId) {
    let signer = inner.signer.as_ref();
    let messages = {
        let mut membership = lock(&inner.membership);
        let Some(membership) = membership.as_mut() else {
            return;
        };
        match (membership.alive(signer), membership.state_info(signer)) {
            (Ok(alive), Ok(state_info)) => [
                Out::Envelope(alive),
                Out::Envelope(state_info),
                Out::Message(membership.pull_request(&signer.pki_id())),
            ],
            (Err(_error), _) | (_, Err(_error)) => {
                emit!(WARN, %_error, "cannot sign membership messages");
                return;
            }
        }
    };
    if let Some(link) = lock(&inner.links).get(peer) {
        for message in messages {
            let _ = link.queue.try_send(message);
        }
    }
}

/// The outgoing half of a stream: what the queue holds, NoopSigned or as
/// signed, refusing (and counting) what exceeds the limit.
fn outgoing(
    queue: mpsc::Receiver<Out>,
    inner: Weak<Inner>,
    max: usize,
) -> impl Stream<Item = Result<Envelope, Status>> + Send + 'static {
    tokio_stream::wrappers::ReceiverStream::new(queue).filter_map(move |out| {
        let envelope = match out {
            Out::Message(message) => wire::wrap_envelope(&message),
            Out::Envelope(envelope) => envelope,
            Out::Refuse(status) => return Some(Err(status)),
        };
        let inner = inner.upgrade()?;
        if prost::Message::encoded_len(&envelope) > max {
            // Our own message: the responder caps its answers below the
            // limit, so this is a misconfigured limit. Not sent.
            bump(&inner.counters.oversized);
            return None;
        }
        bump(&inner.counters.messages_out);
        Some(Ok(envelope))
    })
}

/// Reads the remote's `ConnEstablish` within `conn_timeout` and checks it.
async fn remote_handshake(
    inner: &Inner,
    inbound: &mut Streaming<Envelope>,
    remote_cert: Option<&[u8]>,
) -> Result<ConnInfo, HandshakeError> {
    let first = tokio::time::timeout(inner.config.conn_timeout, inbound.message())
        .await
        .map_err(|_| HandshakeError::Timeout)?;
    let envelope = match first {
        Ok(Some(envelope)) => envelope,
        Ok(None) => return Err(HandshakeError::Closed("end of stream".into())),
        Err(status) => return Err(HandshakeError::Closed(status.message().to_owned())),
    };
    verify_conn_establish(&envelope, remote_cert, inner.verifier.as_ref())
}

/// One dial: TLS, Ping, GossipStream, handshake, then the stream until it
/// ends. `Some(true)` if a stream ran, `Some(false)` if the dial or the
/// handshake failed, `None` once the transport is gone.
async fn dial_once(
    weak: &Weak<Inner>,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    expected: Option<&PkiId>,
) -> Option<bool> {
    let inner = weak.upgrade()?;
    let config = inner.config.clone();
    let failed = |inner: &Inner, _why: &dyn fmt::Display| {
        bump(&inner.counters.dial_failures);
        emit!(DEBUG, %addr, %_why, "dial failed");
        Some(false)
    };
    let conn = match inner
        .tls
        .connect(addr, server_name, config.dial_timeout)
        .await
    {
        Ok(conn) => conn,
        Err(error) => return failed(&inner, &error),
    };
    let remote_cert = conn.info.peer_cert.clone();
    // The connection is made: the channel hands it to HTTP/2 once, and
    // never dials by itself (a lost stream is the dial loop's to redo).
    let slot = Arc::new(Mutex::new(Some(conn)));
    let connector = tower::service_fn(move |_| {
        let conn = lock(&slot).take();
        async move {
            conn.map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection used"))
        }
    });
    let endpoint = Endpoint::from_static("http://gossip.invalid")
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME);
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(channel) => channel,
        Err(error) => return failed(&inner, &error),
    };
    let mut client = GossipClient::new(channel)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    match tokio::time::timeout(config.conn_timeout, client.ping(Empty {})).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => return failed(&inner, &status),
        Err(_) => return failed(&inner, &"ping timed out"),
    }
    let ours = match conn_establish(inner.signer.as_ref(), inner.tls.client_cert_hash(), false) {
        Ok(ours) => ours,
        Err(error) => {
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    };
    let (queue, outbound) = mpsc::channel(config.queue);
    let _ = queue.try_send(Out::Envelope(ours));
    // A client stream cannot end with a status: `Refuse` is the server's.
    let stream = outgoing(outbound, weak.clone(), config.max_message_size).filter_map(Result::ok);
    // Fabric's server sends its ConnEstablish at once, so the response
    // headers come without waiting for ours to be checked.
    let opened = tokio::time::timeout(config.conn_timeout, client.gossip_stream(stream)).await;
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            inner.refuse(
                addr,
                Direction::Dialled,
                HandshakeError::Closed(status.message().to_owned()),
            );
            return Some(false);
        }
        Err(_) => {
            inner.refuse(addr, Direction::Dialled, HandshakeError::Timeout);
            return Some(false);
        }
    };
    let info = match remote_handshake(&inner, &mut inbound, remote_cert.as_deref()).await {
        Ok(info) => info,
        Err(error) => {
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    };
    if let Some(expected) = expected {
        if *expected != info.pki_id {
            let error = HandshakeError::WrongPeer {
                expected: expected.clone(),
                got: info.pki_id,
            };
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    }
    drop(inner);
    run(weak.clone(), info, queue, inbound, Direction::Dialled, addr).await;
    Some(true)
}

/// The server side of `gossip.Gossip`.
struct Service {
    inner: Weak<Inner>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Gossip for Service {
    type GossipStreamStream = OutStream;

    async fn gossip_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<OutStream>, Status> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| Status::unavailable("shutting down"))?;
        let Some(peer) = request.extensions().get::<PeerInfo>().cloned() else {
            return Err(Status::internal("no connection info"));
        };
        // Fabric refuses before sending anything of its own.
        let Some(remote_cert) = peer.peer_cert else {
            inner.refuse(
                peer.remote,
                Direction::Accepted,
                HandshakeError::NoClientCertificate,
            );
            return Err(Status::unauthenticated("no TLS certificate"));
        };
        let ours = conn_establish(inner.signer.as_ref(), inner.tls.server_cert_hash(), false)
            .map_err(|error| Status::internal(error.to_string()))?;
        let (queue, outbound) = mpsc::channel(inner.config.queue);
        let _ = queue.try_send(Out::Envelope(ours));
        let mut inbound = request.into_inner();
        let weak = self.inner.clone();
        let remote = peer.remote;
        inner.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let info = match remote_handshake(&inner, &mut inbound, Some(&remote_cert)).await {
                Ok(info) => info,
                Err(error) => {
                    // The stream ends with the reason, as Fabric's handler
                    // returning the error does.
                    let _ = queue.try_send(Out::Refuse(Status::unauthenticated(error.to_string())));
                    inner.refuse(remote, Direction::Accepted, error);
                    return;
                }
            };
            if info.probe {
                // Answered (our ConnEstablish) and ended with OK; not registered.
                bump(&inner.counters.probes);
                return;
            }
            drop(inner);
            run(weak, info, queue, inbound, Direction::Accepted, remote).await;
        });
        let stream = outgoing(outbound, self.inner.clone(), inner.config.max_message_size);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
}

/// Runs an authenticated stream: registers it (an accepted stream replaces
/// one to the same peer, as Fabric's `onConnected`; a dialled one gives way
/// to one already there), tells the requester, routes what arrives, and at
/// the end tells both machines, unless a newer stream replaced it.
async fn run(
    weak: Weak<Inner>,
    info: ConnInfo,
    queue: mpsc::Sender<Out>,
    mut inbound: Streaming<Envelope>,
    direction: Direction,
    remote: SocketAddr,
) {
    let Some(inner) = weak.upgrade() else { return };
    let peer = info.pki_id.clone();
    let (closer, mut closed) = oneshot::channel();
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut links = lock(&inner.links);
        if direction == Direction::Dialled && links.contains_key(&peer) {
            return;
        }
        // Registered before the machine hears of it, so that its first
        // requests find the stream.
        links.insert(
            peer.clone(),
            Link {
                id,
                queue: queue.clone(),
                identity: info.identity.clone(),
                _closer: closer,
            },
        );
    }
    bump(&inner.counters.connected);
    emit!(DEBUG, ?peer, ?direction, "connected");
    let requester = inner.requester();
    let responder = inner.responder();
    announce(&inner, &peer);
    drop(inner);
    if let Some(requester) = &requester {
        let _ = requester
            .send(Event::PeerConnected { peer: peer.clone() })
            .await;
    }
    // The channel's policy over the handshake, per channel named (Fabric
    // evaluates it per message; the answer cannot change on a stream).
    let mut readers: BTreeMap<Bytes, bool> = BTreeMap::new();
    let mut received = false;
    loop {
        let next = tokio::select! {
            _ = &mut closed => break,
            next = inbound.message() => next,
        };
        let envelope = match next {
            Ok(Some(envelope)) => envelope,
            Ok(None) => break,
            Err(status) => {
                if let Some(inner) = weak.upgrade() {
                    if matches!(
                        status.code(),
                        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                    ) {
                        bump(&inner.counters.oversized);
                    } else if !received && direction == Direction::Dialled {
                        // Fabric sends nothing to accept our handshake: its
                        // refusal is the stream ending at once with the reason.
                        let error = HandshakeError::Closed(status.message().to_owned());
                        inner.refuse(remote, direction, error);
                    }
                }
                emit!(DEBUG, ?peer, %status, "stream failed");
                break;
            }
        };
        received = true;
        let Some(inner) = weak.upgrade() else { return };
        let Ok(message) = wire::decode_gossip_message(envelope.payload.clone(), usize::MAX) else {
            // Fabric closes a connection whose payload does not unmarshal.
            bump(&inner.counters.malformed);
            break;
        };
        match &message.content {
            Some(Content::StateRequest(_)) | Some(Content::StateResponse(_)) => {
                let allowed = match readers.get(&message.channel) {
                    Some(allowed) => *allowed,
                    None => {
                        let allowed = inner
                            .verifier
                            .verify_by_channel(
                                &message.channel,
                                &info.identity,
                                &info.auth_signature,
                                &info.auth_payload,
                            )
                            .is_ok();
                        // Bounded: a peer naming endless channels is not cached.
                        if readers.len() < 16 {
                            readers.insert(message.channel.clone(), allowed);
                        }
                        allowed
                    }
                };
                if !allowed {
                    bump(&inner.counters.unauthorized);
                    continue;
                }
                bump(&inner.counters.state_in);
                drop(inner);
                let delivered = if wire::as_state_request(&message).is_some() {
                    match &responder {
                        Some(responder) => responder
                            .send(ResponderEvent::Request {
                                from: peer.clone(),
                                message,
                            })
                            .await
                            .is_ok(),
                        None => false,
                    }
                } else {
                    match &requester {
                        Some(requester) => requester
                            .send(Event::Response {
                                from: peer.clone(),
                                message,
                            })
                            .await
                            .is_ok(),
                        None => false,
                    }
                };
                if !delivered {
                    if let Some(inner) = weak.upgrade() {
                        bump(&inner.counters.ignored);
                    }
                }
            }
            _ => {
                let update = on_membership(&inner, &peer, &envelope, message);
                drop(inner);
                if let (Some(peers), Some(requester)) = (update, &requester) {
                    let _ = requester.send(Event::Membership(peers)).await;
                }
            }
        }
    }
    drop(queue);
    let Some(inner) = weak.upgrade() else { return };
    bump(&inner.counters.disconnected);
    let current = {
        let mut links = lock(&inner.links);
        if links.get(&peer).is_some_and(|link| link.id == id) {
            links.remove(&peer);
            true
        } else {
            false
        }
    };
    if !current {
        return;
    }
    inner.gone.send_modify(|n| *n += 1);
    let forgot = lock(&inner.membership)
        .as_mut()
        .is_some_and(|membership| membership.forget(&peer));
    let peers = forgot.then(|| lock(&inner.membership).as_ref().map(Membership::peers));
    drop(inner);
    emit!(DEBUG, ?peer, "disconnected");
    if let Some(requester) = &requester {
        let _ = requester
            .send(Event::PeerDisconnected { peer: peer.clone() })
            .await;
        if let Some(Some(peers)) = peers {
            let _ = requester.send(Event::Membership(peers)).await;
        }
    }
    if let Some(responder) = &responder {
        let _ = responder
            .send(ResponderEvent::PeerDisconnected { peer })
            .await;
    }
}

/// A message that is not state transfer: membership is answered or taken
/// when published; the rest is ignored. Returns the new membership if a
/// height changed.
fn on_membership(
    inner: &Inner,
    from: &PkiId,
    envelope: &Envelope,
    message: GossipMessage,
) -> Option<Vec<PeerState<PkiId>>> {
    let mut guard = lock(&inner.membership);
    let Some(membership) = guard.as_mut() else {
        bump(&inner.counters.ignored);
        return None;
    };
    let us = inner.signer.pki_id();
    let reply = |message: Out| {
        if let Some(link) = lock(&inner.links).get(from) {
            let _ = link.queue.try_send(message);
        }
    };
    let mut changed = false;
    let mut take = |membership: &mut Membership, envelope: &Envelope| match membership
        .on_state_info(
            envelope,
            &us,
            |peer| inner.identity_of(peer),
            inner.verifier.as_ref(),
        ) {
        Ok(update) => {
            bump(&inner.counters.state_infos);
            changed |= update;
        }
        Err(_error) => {
            bump(&inner.counters.state_infos_refused);
            emit!(DEBUG, ?from, %_error, "StateInfo refused");
        }
    };
    match &message.content {
        Some(Content::StateInfoPullReq(request)) => match membership.snapshot(from, request) {
            Some(snapshot) => reply(Out::Message(snapshot)),
            None => bump(&inner.counters.ignored),
        },
        Some(Content::MemReq(_)) => match membership.alive(inner.signer.as_ref()) {
            Ok(alive) => reply(Out::Message(Membership::membership_response(
                message.nonce,
                alive,
            ))),
            Err(_) => bump(&inner.counters.ignored),
        },
        Some(Content::StateInfo(_)) => take(membership, envelope),
        Some(Content::StateSnapshot(snapshot)) => {
            for element in &snapshot.elements {
                take(membership, element);
            }
        }
        _ => bump(&inner.counters.ignored),
    }
    changed.then(|| membership.peers())
}

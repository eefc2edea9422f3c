//! The transport: `gossip.Gossip` over tonic and our TLS, one
//! `GossipStream` per peer (either direction), the handshake on each, and
//! the state messages routed between the streams and the drivers.
//!
//! By concern: `config` (settings, Fabric's limits, HTTP/2 windows),
//! `server` (accepting: TLS, the `gossip.Gossip` service), `client`
//! (dialling and the back-off), `stream` (one stream: its writer, the
//! handshake, routing to the drivers), `codec` (envelopes on the wire),
//! `members` (membership messages on the streams), `stats` (counters). This file holds the shared
//! state and the transport's public face.

mod client;
mod codec;
mod config;
mod members;
mod server;
mod stats;
mod stream;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub use config::{GrpcConfig, GrpcConfigError, MIN_KEEPALIVE_INTERVAL};
pub use stats::GrpcStats;

use super::crypto::{PkiId, Signer, Verifier};
use super::handshake::HandshakeError;
use super::membership::Membership;
use super::tls::TlsIdentity;
use crate::adapters::send_gate::SendGate;
use crate::adapters::tokio::WeakDriverHandle;
use crate::adapters::{SendError, Transport};
use crate::wire::gossip::GossipMessage;
use crate::{AntiEntropy, PeerState, StateResponder};
use members::announce;
use stats::{bump, Counters};
use stream::{Out, Queues};

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

/// Refusals kept for [`GrpcTransport::refusals`].
const REFUSALS_KEPT: usize = 64;

/// One live stream to a peer.
struct Link {
    id: u64,
    queues: Queues,
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
    /// `None`: plaintext, as Fabric with `peer.tls.enabled: false`.
    tls: Option<TlsIdentity>,
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
    /// Background answers wait for it (`Transport::send_background`).
    gate: Arc<SendGate>,
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

    /// The hash our `ConnEstablish` carries: of our TLS certificate for
    /// the side we are (the client's when we dial, the server's when we
    /// accept), empty without TLS, as Fabric's nil.
    fn own_cert_hash(&self, direction: Direction) -> Bytes {
        match (&self.tls, direction) {
            (None, _) => Bytes::new(),
            (Some(tls), Direction::Dialled) => tls.client_cert_hash(),
            (Some(tls), Direction::Accepted) => tls.server_cert_hash(),
        }
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
        Self::build(config, Some(tls), signer, verifier)
    }

    /// A transport without TLS, for Fabric peers with `peer.tls.enabled:
    /// false` (Fabric's sample configuration): the handshake still signs
    /// and checks identities, but binds no certificate (its hash is
    /// empty), and nothing is encrypted. Bound to no connection, a
    /// `ConnEstablish` can be replayed by whoever saw one (ours is sent to
    /// anyone who connects): as with Fabric without TLS, the peer's
    /// identity is not authenticated. Both sides must agree: a TLS peer and
    /// a plaintext one do not connect.
    pub fn plaintext(
        config: GrpcConfig,
        signer: Arc<dyn Signer>,
        verifier: Arc<dyn Verifier>,
    ) -> Result<Self, GrpcConfigError> {
        Self::build(config, None, signer, verifier)
    }

    fn build(
        config: GrpcConfig,
        tls: Option<TlsIdentity>,
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
                gate: Arc::default(),
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

    // serve: server.rs; dial: client.rs; stats: stats.rs.

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
}

impl Transport<PkiId> for GrpcTransport {
    fn send(&mut self, to: &PkiId, message: GossipMessage) -> Result<(), SendError> {
        let links = lock(&self.inner.links);
        let link = links.get(to).ok_or(SendError::Closed)?;
        link.queues.push(Out::Message(message))
    }

    /// Handed to HTTP/2 once no stream has a foreground message queued.
    /// Foreground messages to the same peer queued later may go first.
    fn send_background(&mut self, to: &PkiId, message: GossipMessage) -> Result<(), SendError> {
        let links = lock(&self.inner.links);
        let link = links.get(to).ok_or(SendError::Closed)?;
        link.queues.push_background(message)
    }

    fn promote(&mut self, to: &PkiId) {
        if let Some(link) = lock(&self.inner.links).get(to) {
            link.queues.promote();
        }
    }

    fn refused(&mut self, _: &PkiId, _: &(dyn std::error::Error + 'static)) {
        bump(&self.inner.counters.refused);
    }

    fn reports_connections(&self) -> bool {
        true
    }
}

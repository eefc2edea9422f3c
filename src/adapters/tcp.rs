//! A TCP transport on tokio (feature `tokio-net`): [`codec`](super::codec)
//! frames over TCP, with reconnection, feeding a driver.
//!
//! [`TcpTransport`] is a host's [`Transport`]: it sends each message on
//! the connection to its peer (through a bounded per-connection queue, so
//! `send` never blocks). [`dial`](TcpTransport::dial) keeps a connection to
//! an address up, reconnecting with exponential back-off;
//! [`listen`](TcpTransport::listen) accepts connections. Each connection's
//! frames go to the driver as raw bytes
//! ([`send_bytes`](super::WeakDriverHandle::send_bytes): the machine
//! decodes and counts malformed ones, the connection stays up), and its
//! life as the machine's connection events ([`Machine::connected`],
//! [`Machine::disconnected`]: `Event::PeerConnected`/`PeerDisconnected` for
//! the requester, `ResponderEvent::PeerDisconnected` for the responder),
//! in order with its frames.
//!
//! **Not Fabric's comm layer**: no gRPC, no TLS, no handshake. A dialled
//! peer is named by the caller; an accepted one by its remote address
//! (through `identify`), so a peer is who it claims to be by address only.
//! Use it between nodes that both run this crate, on a network you trust;
//! to talk to Fabric peers, use the gRPC transport (`antientropy::fabric`,
//! feature `fabric-grpc`).
//!
//! The transport [reports connections](Transport::reports_connections): a
//! request to a peer with no connection up (e.g. at start, before the
//! first dial succeeds) is refused, and `RequesterHost` turns that into
//! `PeerDisconnected`, so the requester moves on (with no one else holding
//! the blocks, a `GiveUp` with `NoEligiblePeer`) and asks at once when the
//! connection comes up, instead of waiting for the request's deadline.
//!
//! The transport's tasks live in a `JoinSet` the transport owns: dropping
//! the last clone of the transport (usually: the host, handed back when the
//! driver ends) aborts them and closes every connection. They hold only a
//! [`WeakDriverHandle`], so they never keep a driver alive, and stop once
//! it has ended.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::codec::FrameCodec;
use super::send_gate::{refusal, Lane, SendGate, Ticket};
use super::tokio::{Tokio, WeakDriverHandle};
use super::{Machine, Runtime, SendError, Transport};
use crate::wire::{self, gossip::GossipMessage};

/// Settings of a [`TcpTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpConfig {
    /// Longest frame read or written (the length prefix not counted).
    /// Default: Fabric's [`wire::DEFAULT_MAX_MESSAGE_SIZE`], 100 MiB; set
    /// it to the machines' `max_message_size`.
    pub max_frame: usize,
    /// Messages queued for one connection's writer; past it
    /// [`Transport::send`] refuses with [`SendError::Full`]. Default 1024.
    pub queue: usize,
    /// First wait before dialling again after a failure. Default 100 ms.
    pub min_backoff: Duration,
    /// Longest wait; each failure in a row doubles it up to this.
    /// Default 10 s.
    pub max_backoff: Duration,
    /// A connection attempt that takes longer fails. Default 5 s.
    pub connect_timeout: Duration,
    /// Sets `TCP_NODELAY`: requests are small and latency-bound. Default on.
    pub nodelay: bool,
    /// A connection whose socket takes no byte of a pending write for this
    /// long is closed (the machine hears it is down): its peer stopped
    /// reading. Default 30 s. Before that, after 2 s without progress, it
    /// stops holding back background answers to other peers.
    pub write_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_frame: wire::DEFAULT_MAX_MESSAGE_SIZE,
            queue: 1024,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            nodelay: true,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a [`TcpTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Connections made (dialled or accepted).
    pub connected: u64,
    /// Connections lost or closed.
    pub disconnected: u64,
    /// Dial attempts that failed or timed out.
    pub dial_failures: u64,
    /// Frames received and handed to the driver.
    pub frames_in: u64,
    /// Messages written.
    pub frames_out: u64,
    /// Connections closed on a framing error (a frame over `max_frame`, a
    /// stream cut inside a frame, an IO error).
    pub read_errors: u64,
    /// Outgoing messages dropped: their frame exceeds `max_frame`.
    pub oversized: u64,
    /// Inputs from a peer the machine refused ([`Transport::refused`]).
    pub refused: u64,
    /// Connections closed because the socket took no byte for
    /// [`TcpConfig::write_timeout`].
    pub write_timeouts: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    disconnected: AtomicU64,
    dial_failures: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    read_errors: AtomicU64,
    oversized: AtomicU64,
    refused: AtomicU64,
    write_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One connection's writer queues, one per send class; `id` tells a newer
/// connection to the same peer from an older one still closing.
struct Link {
    id: u64,
    queues: Queues,
}

/// A connection's two queues. A foreground message holds the transport's
/// gate shut until it is written or dropped; a background one waits for
/// the gate. Two queues, so that a foreground message never waits behind a
/// background one to the same peer (its own ticket would hold the gate
/// shut for good); answers are matched by nonce, so their order between
/// classes does not matter.
#[derive(Clone)]
struct Queues {
    foreground: mpsc::Sender<(GossipMessage, Ticket)>,
    background: mpsc::Sender<GossipMessage>,
    lane: Arc<Lane>,
}

struct Inner<P> {
    config: TcpConfig,
    links: Mutex<BTreeMap<P, Link>>,
    tasks: Mutex<JoinSet<()>>,
    next_id: AtomicU64,
    counters: Counters,
    /// Background messages wait for it (`Transport::send_background`).
    gate: Arc<SendGate>,
}

impl<P: Ord> Inner<P> {
    fn links(&self) -> MutexGuard<'_, BTreeMap<P, Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Reap the finished ones: reconnections must not grow the set.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Queues a message on `to`'s connection without blocking.
    fn queue(&self, to: &P, message: GossipMessage, background: bool) -> Result<(), SendError> {
        let links = self.links();
        let queues = &links.get(to).ok_or(SendError::Closed)?.queues;
        if background {
            let background = &queues.background;
            queues
                .lane
                .queue_background(|| background.try_send(message).map_err(refusal))
        } else {
            let ticket = queues.lane.foreground();
            queues
                .foreground
                .try_send((message, ticket))
                .map_err(refusal)
        }
    }

    /// The connection's queues replace any older ones to the same peer.
    fn register(&self, peer: P, queues: Queues) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.links().insert(peer, Link { id, queues });
        id
    }

    /// Whether the link was still this connection's.
    fn unregister(&self, peer: &P, id: u64) -> bool {
        let mut links = self.links();
        if links.get(peer).is_some_and(|link| link.id == id) {
            links.remove(peer);
            return true;
        }
        false
    }
}

/// The TCP transport: see the module doc. Clones share the connections.
pub struct TcpTransport<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for TcpTransport<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: fmt::Debug + Ord> fmt::Debug for TcpTransport<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("config", &self.inner.config)
            .field("connected", &self.inner.links().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<P> Default for TcpTransport<P>
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new(TcpConfig::default())
    }
}

impl<P> TcpTransport<P>
where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
{
    /// A transport with no connection yet.
    pub fn new(config: TcpConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                links: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(JoinSet::new()),
                next_id: AtomicU64::new(0),
                counters: Counters::default(),
                gate: Arc::default(),
            }),
        }
    }

    /// Keeps a connection to `peer` at `addr` up for `driver`'s machine:
    /// dials, and after a failure or a lost connection dials again after
    /// a back-off (`min_backoff`, doubling per failure in a row up to
    /// `max_backoff`, less a random quarter so that peers restarted together
    /// do not dial in step). Stops once the driver has ended.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn dial<M>(&self, peer: P, addr: SocketAddr, driver: WeakDriverHandle<M>)
    where
        M: Machine<Peer = P> + Send + 'static,
        M::Input: Send + 'static,
    {
        let inner = Arc::downgrade(&self.inner);
        let config = self.inner.config.clone();
        self.inner.spawn(async move {
            let mut backoff = config.min_backoff;
            // Jitter only: no machine logic reads it.
            let mut rng = fastrand::Rng::new();
            while driver.upgrade().is_some() {
                let attempt =
                    tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr));
                match attempt.await {
                    Ok(Ok(stream)) => {
                        let started = Tokio::now();
                        connection(&inner, stream, peer.clone(), &driver).await;
                        // A connection that lasted starts the back-off over.
                        if Tokio::now().saturating_duration_since(started) > backoff {
                            backoff = config.min_backoff;
                        }
                    }
                    Ok(Err(_)) | Err(_) => {
                        let Some(inner) = inner.upgrade() else { return };
                        bump(&inner.counters.dial_failures);
                        emit!(DEBUG, ?peer, %addr, ?backoff, "dial failed");
                    }
                }
                let jitter = backoff.mul_f64(rng.f64() / 4.0);
                tokio::time::sleep(backoff.saturating_sub(jitter)).await;
                backoff = backoff.saturating_mul(2).min(config.max_backoff);
            }
        });
    }

    /// Accepts connections on `listener` for `driver`'s machine, naming
    /// each peer by `identify(remote address)`. Stops once the driver has
    /// ended (at the next connection).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn listen<M>(
        &self,
        listener: TcpListener,
        identify: impl Fn(SocketAddr) -> P + Send + 'static,
        driver: WeakDriverHandle<M>,
    ) where
        M: Machine<Peer = P> + Send + 'static,
        M::Input: Send + 'static,
    {
        let weak = Arc::downgrade(&self.inner);
        let pause = self.inner.config.min_backoff;
        self.inner.spawn(async move {
            loop {
                let (stream, addr) = accept(&listener, pause).await;
                if driver.upgrade().is_none() {
                    return;
                }
                let Some(inner) = weak.upgrade() else { return };
                let (weak, driver, peer) = (weak.clone(), driver.clone(), identify(addr));
                inner.spawn(async move { connection(&weak, stream, peer, &driver).await });
            }
        });
    }

    /// The peers with a connection up, in order.
    pub fn connected(&self) -> Vec<P> {
        self.inner.links().keys().cloned().collect()
    }

    /// Closes the connection to `peer`, if any (e.g. to ban it after
    /// refusals). A dialled peer is dialled again after the back-off.
    pub fn disconnect(&self, peer: &P) {
        // Its writer sees the queue close and shuts the connection down.
        self.inner.links().remove(peer);
    }

    /// The transport's counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TcpStats {
            connected: get(&c.connected),
            disconnected: get(&c.disconnected),
            dial_failures: get(&c.dial_failures),
            frames_in: get(&c.frames_in),
            frames_out: get(&c.frames_out),
            read_errors: get(&c.read_errors),
            oversized: get(&c.oversized),
            refused: get(&c.refused),
            write_timeouts: get(&c.write_timeouts),
        }
    }
}

impl<P: Ord> Transport<P> for TcpTransport<P> {
    fn send(&mut self, to: &P, message: GossipMessage) -> Result<(), SendError> {
        self.inner.queue(to, message, false)
    }

    /// Written once no foreground message is pending on any connection.
    /// Foreground messages to the same peer queued later may go first.
    fn send_background(&mut self, to: &P, message: GossipMessage) -> Result<(), SendError> {
        self.inner.queue(to, message, true)
    }

    fn promote(&mut self, to: &P) {
        if let Some(link) = self.inner.links().get(to) {
            link.queues.lane.promote();
        }
    }

    fn refused(&mut self, _: &P, _: &(dyn std::error::Error + 'static)) {
        bump(&self.inner.counters.refused);
    }

    fn reports_connections(&self) -> bool {
        true
    }
}

/// Runs one connection to its end: registers its queue, tells the machine
/// it is up, reads and writes until either side fails or closes, then
/// tells the machine it is down (unless a newer connection replaced it).
async fn connection<P, M>(
    inner: &Weak<Inner<P>>,
    stream: TcpStream,
    peer: P,
    driver: &WeakDriverHandle<M>,
) where
    P: Clone + Ord + fmt::Debug + Send + Sync + 'static,
    M: Machine<Peer = P> + Send + 'static,
    M::Input: Send + 'static,
{
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let config = strong.config.clone();
    let _ = stream.set_nodelay(config.nodelay);
    let (read, write) = stream.into_split();
    let (foreground, foreground_out) = mpsc::channel(config.queue.max(1));
    let (background, background_out) = mpsc::channel(config.queue.max(1));
    let lane = Arc::new(strong.gate.lane());
    // Registered before the machine hears of it, so the requests it sends
    // at once find the connection.
    let id = strong.register(
        peer.clone(),
        Queues {
            foreground,
            background,
            lane: Arc::clone(&lane),
        },
    );
    bump(&strong.counters.connected);
    drop(strong);
    emit!(DEBUG, ?peer, "connected");
    let codec = FrameCodec::with_max_frame(config.max_frame);
    let up = match M::connected(peer.clone()) {
        Some(input) => driver.send(input).await.is_ok(),
        None => true,
    };
    if up {
        // Either side ending ends the connection.
        futures_lite::future::or(
            read_frames(inner, read, codec, &peer, driver),
            write_frames(
                inner,
                Writer {
                    write,
                    lane,
                    timeout: config.write_timeout,
                },
                codec,
                foreground_out,
                background_out,
            ),
        )
        .await;
    }
    let Some(strong) = inner.upgrade() else {
        return;
    };
    bump(&strong.counters.disconnected);
    if strong.unregister(&peer, id) {
        drop(strong);
        emit!(DEBUG, ?peer, "disconnected");
        if let Some(input) = M::disconnected(peer) {
            let _ = driver.send(input).await;
        }
    }
}

/// Hands each frame to the driver, waiting for room in its inbox (so a
/// busy machine stops the reading, and TCP slows the peer). Ends at the
/// end of the stream, on a framing error, or once the driver has ended.
async fn read_frames<P, M>(
    inner: &Weak<Inner<P>>,
    read: OwnedReadHalf,
    codec: FrameCodec,
    peer: &P,
    driver: &WeakDriverHandle<M>,
) where
    P: Clone + Ord + fmt::Debug,
    M: Machine<Peer = P>,
{
    let mut frames = FramedRead::with_capacity(read, codec, 64 * 1024);
    while let Some(frame) = frames.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match frame {
            Ok(bytes) => {
                bump(&inner.counters.frames_in);
                drop(inner);
                if driver.send_bytes(peer.clone(), bytes).await.is_err() {
                    return; // the driver has ended
                }
            }
            Err(_error) => {
                // A frame over the limit cannot be skipped safely, and a
                // cut frame or an IO error ends the stream anyway.
                bump(&inner.counters.read_errors);
                emit!(DEBUG, ?peer, %_error, "connection closed on a framing error");
                return;
            }
        }
    }
}

/// Writes what the transport queued: foreground messages first, batching
/// what is already waiting into one write; a background message once no
/// connection has a foreground one pending. Ends once the queues are
/// closed (the connection was replaced or dropped), or on an IO error.
async fn write_frames<P: Ord>(
    inner: &Weak<Inner<P>>,
    mut write: Writer,
    codec: FrameCodec,
    mut foreground: mpsc::Receiver<(GossipMessage, Ticket)>,
    mut background: mpsc::Receiver<GossipMessage>,
) {
    /// Past this many bytes the batch is written.
    const BATCH: usize = 1 << 20;
    /// What the writer does next.
    enum Next {
        Foreground(Option<(GossipMessage, Ticket)>),
        /// A background message taken from its queue, to wait for the gate.
        Taken(GossipMessage),
        /// The gate opened for the message taken.
        Open,
    }
    let weak = inner;
    let mut buf = BytesMut::new();
    let mut waiting: Option<GossipMessage> = None;
    loop {
        // `or` polls its first future first: foreground before background.
        let next = if waiting.is_some() {
            futures_lite::future::or(async { Next::Foreground(foreground.recv().await) }, async {
                write.lane.open().await;
                Next::Open
            })
            .await
        } else {
            futures_lite::future::or(async { Next::Foreground(foreground.recv().await) }, async {
                match background.recv().await {
                    Some(message) => Next::Taken(message),
                    // Closed with the foreground queue: wait for it.
                    None => std::future::pending().await,
                }
            })
            .await
        };
        let Some(inner) = inner.upgrade() else { return };
        let encode = |message, buf: &mut BytesMut| match codec.encode_message(message, buf) {
            Ok(()) => bump(&inner.counters.frames_out),
            // Our own message: the responder caps its answers at
            // `max_response_bytes`, so this is a misconfigured limit.
            Err(_) => bump(&inner.counters.oversized),
        };
        // Foreground messages in `buf`: the gate stays shut until written.
        let mut tickets = Vec::new();
        match next {
            Next::Foreground(None) => break,
            Next::Foreground(Some(first)) => {
                let mut item = Some(first);
                while let Some((message, ticket)) = item.take() {
                    encode(message, &mut buf);
                    tickets.push(ticket);
                    if buf.len() < BATCH {
                        item = foreground.try_recv().ok();
                    }
                }
            }
            Next::Taken(message) => {
                waiting = Some(message);
                continue;
            }
            Next::Open => {
                if let Some(message) = waiting.take() {
                    encode(message, &mut buf);
                }
            }
        }
        drop(inner);
        if let Err(error) = write.write_all(&buf).await {
            if error.kind() == std::io::ErrorKind::TimedOut {
                if let Some(inner) = weak.upgrade() {
                    bump(&inner.counters.write_timeouts);
                }
            }
            return;
        }
        buf.clear();
        drop(tickets);
    }
    let _ = write.write.shutdown().await;
}

/// A connection's write half, telling its gate lane of each write's
/// progress.
struct Writer {
    write: OwnedWriteHalf,
    lane: Arc<Lane>,
    timeout: Duration,
}

impl Writer {
    /// Writes all of `buf`; fails on an IO error, or when the socket takes
    /// no byte for `timeout` (the peer stopped reading: the connection is
    /// dropped so that its queue and the machine's requests to it go).
    async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            let written = tokio::time::timeout(self.timeout, self.write.write(buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            buf = &buf[written..];
            self.lane.progressed();
        }
        Ok(())
    }
}

/// The next connection on `listener`. An error (out of file descriptors,
/// say) is logged and retried after `pause`: a listener must not spin.
pub(crate) async fn accept(listener: &TcpListener, pause: Duration) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(_error) => {
                emit!(WARN, %_error, "accept failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

//! One authenticated stream: what its writer sends, the remote's
//! handshake, and the loop that routes what arrives to the drivers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_lite::future::or;
use futures_lite::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::codec::Frame;
use super::members::{announce, on_membership};
use super::stats::bump;
use super::{lock, Direction, Inner, Link};
use crate::adapters::send_gate::{refusal, Lane, SendGate, Ticket};
use crate::adapters::SendError;
use crate::fabric::handshake::{verify_conn_establish, ConnInfo, HandshakeError};
use crate::fabric::membership::Membership;
use crate::wire::gossip::gossip_message::Content;
use crate::wire::gossip::{Envelope, GossipMessage};
use crate::{wire, Event, ResponderEvent};

/// What a stream's writer sends.
pub(super) enum Out {
    /// A state message: NoopSigned when written.
    Message(GossipMessage),
    /// A signed envelope (handshake, membership).
    Envelope(Envelope),
    /// End the stream with this status (a refused handshake, server side).
    Refuse(Status),
}

/// A stream's two queues, as `TcpTransport`'s connections have them: a
/// foreground item holds the transport's gate shut until the stream hands
/// it to HTTP/2; a background message waits for the gate. HTTP/2 buffers
/// what it was handed (up to its flow-control windows), so the priority
/// holds for what is still queued here, not for bytes already framed.
#[derive(Clone)]
pub(super) struct Queues {
    foreground: mpsc::Sender<(Out, Ticket)>,
    background: mpsc::Sender<GossipMessage>,
    lane: Arc<Lane>,
}

/// The receiving side of [`Queues`], read by [`outgoing`].
pub(super) struct Outbound {
    foreground: mpsc::Receiver<(Out, Ticket)>,
    background: mpsc::Receiver<GossipMessage>,
    /// The stream's place in the transport's gate.
    lane: Arc<Lane>,
    /// A background message taken from its queue, waiting for the gate.
    waiting: Option<GossipMessage>,
}

/// Two queues of `capacity` each for one stream, sharing `gate` with
/// every other stream of the transport.
pub(super) fn queues(capacity: usize, gate: &Arc<SendGate>) -> (Queues, Outbound) {
    let (foreground, foreground_out) = mpsc::channel(capacity);
    let (background, background_out) = mpsc::channel(capacity);
    let lane = Arc::new(gate.lane());
    let queues = Queues {
        foreground,
        background,
        lane: Arc::clone(&lane),
    };
    let outbound = Outbound {
        foreground: foreground_out,
        background: background_out,
        lane,
        waiting: None,
    };
    (queues, outbound)
}

impl Queues {
    /// Queues `out` in the foreground without blocking.
    pub(super) fn push(&self, out: Out) -> Result<(), SendError> {
        let ticket = self.lane.foreground();
        self.foreground.try_send((out, ticket)).map_err(refusal)
    }

    /// Queues a state message to be sent once no stream has a foreground
    /// item pending.
    pub(super) fn push_background(&self, message: GossipMessage) -> Result<(), SendError> {
        let background = &self.background;
        self.lane
            .queue_background(|| background.try_send(message).map_err(refusal))
    }

    /// What is queued in the background need not wait for the gate, until
    /// the next background message.
    pub(super) fn promote(&self) {
        self.lane.promote();
    }

    /// When the stream will have held foreground items without handing
    /// any to HTTP/2 for `timeout`, if it holds any: its peer stopped
    /// reading (HTTP/2 flow control stops taking them).
    fn wedged_at(&self, timeout: std::time::Duration) -> Option<tokio::time::Instant> {
        self.lane.waiting_since().map(|since| since + timeout)
    }
}

impl Outbound {
    /// The next item to write: foreground first; a background message once
    /// the gate is open. `None` once the foreground queue is closed (the
    /// stream was replaced or ended).
    async fn next(&mut self) -> Option<Out> {
        /// What came first.
        enum Next {
            Foreground(Option<(Out, Ticket)>),
            Taken(GossipMessage),
            Open,
        }
        loop {
            let Self {
                foreground,
                background,
                lane,
                waiting,
            } = self;
            // `or` polls its first future first: foreground before background.
            let next = if waiting.is_some() {
                or(async { Next::Foreground(foreground.recv().await) }, async {
                    lane.open().await;
                    Next::Open
                })
                .await
            } else {
                or(async { Next::Foreground(foreground.recv().await) }, async {
                    match background.recv().await {
                        Some(message) => Next::Taken(message),
                        // Closed with the foreground queue: wait for it.
                        None => std::future::pending().await,
                    }
                })
                .await
            };
            match next {
                // The ticket goes as the item is handed over.
                Next::Foreground(item) => return item.map(|(out, _ticket)| out),
                Next::Taken(message) => *waiting = Some(message),
                Next::Open => return waiting.take().map(Out::Message),
            }
        }
    }
}

/// The outgoing half of a stream: what the queues hold, NoopSigned or as
/// signed (the codec writes the envelope), refusing (and counting) what
/// exceeds the limit.
pub(super) fn outgoing(
    outbound: Outbound,
    inner: Weak<Inner>,
    max: usize,
) -> impl Stream<Item = Result<Frame, Status>> + Send + 'static {
    futures_lite::stream::unfold(outbound, |mut outbound| async move {
        let out = outbound.next().await?;
        Some((out, outbound))
    })
    .filter_map(move |out| {
        let frame = match out {
            Out::Message(message) => Frame::noop(message),
            Out::Envelope(envelope) => Frame::Signed(envelope),
            Out::Refuse(status) => return Some(Err(status)),
        };
        let inner = inner.upgrade()?;
        if frame.encoded_len() > max {
            // Our own message: the responder caps its answers below the
            // limit, so this is a misconfigured limit. Not sent.
            bump(&inner.counters.oversized);
            return None;
        }
        bump(&inner.counters.messages_out);
        Some(Ok(frame))
    })
}

/// Sleeps until `at`, or for a second if `None` (nothing pending now: an
/// item queued later starts its own wait, looked at within that second).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
    }
}

/// Reads the remote's `ConnEstablish` within `conn_timeout` and checks it.
pub(super) async fn remote_handshake(
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

/// Runs an authenticated stream: registers it (an accepted stream replaces
/// one to the same peer, as Fabric's `onConnected`; a dialled one gives way
/// to one already there), tells the requester, routes what arrives, and at
/// the end tells both machines, unless a newer stream replaced it.
pub(super) async fn run(
    weak: Weak<Inner>,
    info: ConnInfo,
    queues: Queues,
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
                queues: queues.clone(),
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
    let write_timeout = weak
        .upgrade()
        .map_or(std::time::Duration::MAX, |inner| inner.config.write_timeout);
    loop {
        let wedged_at = queues.wedged_at(write_timeout);
        let next = tokio::select! {
            _ = &mut closed => break,
            () = sleep_until(wedged_at) => {
                if queues.wedged_at(write_timeout).is_some_and(|at| at <= tokio::time::Instant::now()) {
                    if let Some(inner) = weak.upgrade() {
                        bump(&inner.counters.write_timeouts);
                    }
                    emit!(DEBUG, ?peer, "stream closed: the peer takes nothing we send");
                    break;
                }
                continue;
            }
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
    drop(queues);
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

//! The requester's inputs, outputs, errors and statistics.

use std::time::Duration;

use crate::range::SeqRange;
use crate::wire::gossip::{GossipMessage, Payload, StateInfo};
use crate::wire::WireError;

/// What one member of the channel advertises, as Fabric learns it from
/// `StateInfo` gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState<P> {
    /// The caller's id of the peer.
    pub id: P,
    /// The advertised ledger height (highest block + 1); `None` if the
    /// peer's `StateInfo` has no `properties`, in which case it is never
    /// asked for blocks.
    pub ledger_height: Option<u64>,
    /// The peer advertises that it left the channel: never asked.
    pub left_channel: bool,
}

impl<P> PeerState<P> {
    /// A peer advertising `ledger_height`, still in the channel.
    pub fn new(id: P, ledger_height: u64) -> Self {
        Self {
            id,
            ledger_height: Some(ledger_height),
            left_channel: false,
        }
    }

    /// The peer's state as its `StateInfo` advertises it.
    pub fn from_state_info(id: P, state_info: &StateInfo) -> Self {
        match crate::wire::advertised(state_info) {
            Ok(advertised) => Self {
                id,
                ledger_height: Some(advertised.ledger_height),
                left_channel: advertised.left_channel,
            },
            Err(_) => Self {
                id,
                ledger_height: None,
                left_channel: false,
            },
        }
    }

    /// The height the peer may be asked for blocks below, if any.
    pub(crate) fn usable_height(&self) -> Option<u64> {
        if self.left_channel {
            None
        } else {
            self.ledger_height
        }
    }
}

/// An input of [`AntiEntropy`](crate::AntiEntropy).
///
/// Where each comes from in a host: gossip's view of the channel
/// (`Membership`), the transport (`Response`, `PeerConnected`,
/// `PeerDisconnected`), the timer (`Timeout`), the ledger (`Committed`,
/// `Rejected`) and the gossip or orderer path (`GossipPayload`).
///
/// ```
/// use std::time::Instant;
/// use antientropy::{wire, AntiEntropy, Config, Event, EventError, PeerState, ResponseError};
///
/// let now = Instant::now();
/// let mut requester = AntiEntropy::new(Config::default(), "ch".into(), 1, 7, now)?;
/// // Gossip's view: each peer's height, from its StateInfo (`wire::advertised`).
/// requester.handle(now, Event::Membership(vec![
///     PeerState::new("peer0", 100),
///     PeerState::new("peer1", 90),
/// ]))?;
/// // The transport's view of a connection.
/// requester.handle(now, Event::PeerDisconnected { peer: "peer1" })?;
/// requester.handle(now, Event::PeerConnected { peer: "peer1" })?;
/// // What a peer sends is checked: a request is no response, and is refused.
/// let stray = wire::state_request(1, "ch".into(), 1, 11);
/// assert_eq!(
///     requester.handle(now, Event::Response { from: "peer0", message: stray }),
///     Err(EventError::Response(ResponseError::NotAResponse))
/// );
/// // The timer armed for `poll_timeout()` fired.
/// requester.handle(now, Event::Timeout)?;
/// while let Some(_action) = requester.poll_action() { /* carry it out */ }
/// assert_eq!(requester.target(), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<P> {
    /// Start an anti-entropy round now (the machine also starts one every
    /// `check_interval` by itself).
    Tick,
    /// The channel's peers and what they advertise: the whole current view,
    /// replacing the previous one (Fabric's `PeersOfChannel`).
    Membership(Vec<PeerState<P>>),
    /// A message that arrived from `from` on the direct (point-to-point)
    /// path; only state responses matter.
    Response {
        /// The peer whose connection carried the message.
        from: P,
        /// The decoded message.
        message: GossipMessage,
    },
    /// A deadline from [`poll_timeout`](crate::AntiEntropy::poll_timeout)
    /// may have passed. Early or repeated timeouts are harmless.
    Timeout,
    /// A block that came by gossip or from the orderer, already verified by
    /// the gossip layer as Fabric's channel layer does.
    GossipPayload(Payload),
    /// The host committed every block below `height`.
    Committed {
        /// The ledger height after the commit.
        height: u64,
    },
    /// The host refused to commit the delivered block `seq` (it failed
    /// verification). Its sender is penalised and delivery resumes from
    /// `seq` with a copy from another peer: the host must drop every payload
    /// it was handed with a number `>= seq` and not yet committed.
    Rejected {
        /// The refused block.
        seq: u64,
    },
    /// The transport lost its connection to `peer` (closed, reset, or a
    /// keep-alive failed). Send it as soon as the transport knows, before
    /// any reconnection attempt: the peer's waiting requests move to other
    /// peers at once, without blame, and it is not asked again until
    /// [`Event::PeerConnected`]. It stays in the membership.
    PeerDisconnected {
        /// The peer whose connection went down.
        peer: P,
    },
    /// A connection to `peer` is up: the first one, or a new one after
    /// [`Event::PeerDisconnected`]. Send it once the transport can carry a
    /// request. The peer's doubts, back-offs and bench (earned while it was
    /// unreachable) are forgiven, and it is asked at once if it has blocks
    /// we lack.
    PeerConnected {
        /// The peer whose connection came up.
        peer: P,
    },
}

/// Where a delivered payload came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin<P> {
    /// A state response from this peer, which was asked for it.
    Peer(P),
    /// The gossip or orderer path ([`Event::GossipPayload`]).
    Gossip,
}

/// Why a range was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Every send of the range failed (timeout, empty or unusable answer).
    RetriesExhausted {
        /// How many of its sends counted against `Config::max_retries`:
        /// hedges do not, and sends lost on a path that works (their peer
        /// answered a later send) count half, rounded down.
        sends: u32,
    },
    /// No reachable peer credibly advertises the range's first block.
    NoEligiblePeer,
    /// The host rejected every copy of block `seq` it was handed, `times`
    /// in all: `max_retries + 1` in a row end the round, and with scored
    /// selection so does the second once every dependable peer holding it
    /// sent a bad copy. Fetching it is retried with an exponential
    /// back-off, and from any new peer at once.
    BlockRejected {
        /// The block.
        seq: u64,
        /// Rejections of it so far.
        times: u32,
    },
}

/// An output of [`AntiEntropy`](crate::AntiEntropy).
///
/// Not `#[non_exhaustive]` on purpose: a driver must handle every action, so
/// a new one should break its build rather than be silently dropped.
///
/// ```
/// use std::time::Instant;
/// use antientropy::{wire, Action, AntiEntropy, Config, Event, GiveUpReason, Origin, PeerState};
/// use prost::Message;
///
/// let now = Instant::now();
/// let mut requester = AntiEntropy::new(Config::fabric(), "ch".into(), 1, 7, now)?;
/// requester.handle(now, Event::Membership(vec![PeerState::new("peer0", 50)]))?;
/// // Fabric's preset starts a round every 10 s; `Tick` starts one now.
/// requester.handle(now, Event::Tick)?;
/// let mut frames = Vec::new();
/// while let Some(action) = requester.poll_action() {
///     match action {
///         Action::SendRequest { to, message } => {
///             // Fabric's NoopSign envelope, encoded: what goes on the wire to `to`.
///             frames.push((to, wire::wrap_envelope(&message).encode_to_vec()));
///         }
///         Action::AddPayload { payload, from } => {
///             // Verify (e.g. wire::verify_chain_link), commit, then
///             // handle(Event::Committed { height: payload.seq_num + 1 }).
///             let _ = (payload, from);
///         }
///         Action::GiveUp { range, reason } => {
///             // Informational: the next round asks again.
///             let _ = (range, reason);
///         }
///     }
/// }
/// // Fabric's preset: one request of 11 blocks in flight.
/// assert_eq!(frames.len(), 1);
/// let envelope = wire::decode_envelope(frames[0].1.clone().into(), wire::DEFAULT_MAX_MESSAGE_SIZE)?;
/// let request = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE)?;
/// let range = wire::as_state_request(&request).unwrap();
/// assert_eq!((range.start_seq_num, range.end_seq_num), (1, 11));
/// # let _ = (Origin::<&str>::Gossip, GiveUpReason::NoEligiblePeer);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Action<P> {
    /// Send `message` (a complete `GossipMessage` with a fresh nonce, our
    /// channel, tag `CHAN_OR_ORG` and a `state_request`) to `to`.
    SendRequest {
        /// The peer to ask.
        to: P,
        /// The request.
        message: GossipMessage,
    },
    /// The next block, in strict sequence order and each number once (after
    /// a [`Event::Rejected`], delivery resumes from the rejected number).
    /// Verify and commit it, then report [`Event::Committed`] or
    /// [`Event::Rejected`].
    AddPayload {
        /// The block.
        payload: Payload,
        /// Who sent it.
        from: Origin<P>,
    },
    /// The machine stopped trying to fetch `range` in this round; the next
    /// round tries again.
    GiveUp {
        /// The range.
        range: SeqRange,
        /// Why.
        reason: GiveUpReason,
    },
}

/// Why a response was ignored. Nothing ignored costs a retry (Fabric
/// re-sends at once on a stray nonce). One on our channel under a nonce
/// unknown or not sent to its peer still shows that peer alive, which may
/// free the peer for a range waiting on one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The message is not a state response.
    #[error("not a state response")]
    NotAResponse,
    /// The message names another channel.
    #[error("state response for another channel")]
    WrongChannel,
    /// No outstanding request has this nonce (stale, duplicate or forged).
    #[error("no outstanding request with nonce {nonce}")]
    UnknownNonce {
        /// The response's nonce.
        nonce: u64,
    },
    /// The nonce is outstanding, but this peer was not asked for it.
    #[error("nonce {nonce} was not sent to this peer")]
    UnexpectedPeer {
        /// The response's nonce.
        nonce: u64,
    },
    /// The bytes did not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// An input that the machine refused; its state is unchanged except for
/// counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A response that was ignored.
    #[error("response ignored: {0}")]
    Response(#[from] ResponseError),
    /// `Committed` reported a height below an earlier one, or above what
    /// was delivered.
    #[error("committed height {height} is outside {low}..={high}")]
    CommittedOutOfRange {
        /// The reported height.
        height: u64,
        /// The lowest acceptable value.
        low: u64,
        /// The highest acceptable value.
        high: u64,
    },
    /// `Rejected` named a block that is not delivered and uncommitted.
    #[error("block {seq} is not awaiting a verdict")]
    NotAwaitingVerdict {
        /// The block named.
        seq: u64,
    },
}

/// Responses and payloads ignored, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IgnoredCounts {
    /// Bytes that did not decode as a gossip message.
    pub malformed: u64,
    /// Messages that are not state responses.
    pub not_a_response: u64,
    /// Responses for another channel.
    pub wrong_channel: u64,
    /// Responses whose nonce is not outstanding.
    pub unknown_nonce: u64,
    /// Responses from a peer that was not asked for that nonce.
    pub unexpected_peer: u64,
    /// Payloads outside the requested range (dropped).
    pub out_of_range_payloads: u64,
    /// Payloads already held or delivered (dropped).
    pub duplicate_payloads: u64,
    /// Payloads whose `data` is not a block with the payload's number.
    pub bad_payloads: u64,
    /// Gossip payloads above the next block but outside
    /// `[committed, committed + block_buffer)`.
    pub gossip_outside_window: u64,
}

/// One peer's record, as the requester sees it
/// ([`AntiEntropy::peer_stats`](crate::AntiEntropy::peer_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Requests sent to it.
    pub requests: u64,
    /// Responses accepted from it.
    pub responses: u64,
    /// Requests to it that timed out.
    pub timeouts: u64,
    /// Responses from it that held no usable payload.
    pub empty_responses: u64,
    /// Blocks from it that the host rejected.
    pub rejected_blocks: u64,
    /// Payloads accepted from it.
    pub blocks: u64,
    /// Bytes of payloads accepted from it.
    pub bytes: u64,
    /// Requests to it now in flight.
    pub in_flight: usize,
    /// Smoothed round-trip time, once measured.
    pub srtt: Option<Duration>,
}

/// A snapshot of the requester's state and counters: plain numbers, so a
/// snapshot costs a copy (per-peer records are apart:
/// [`AntiEntropy::peer_stats`](crate::AntiEntropy::peer_stats),
/// [`AntiEntropy::peer_stats_iter`](crate::AntiEntropy::peer_stats_iter)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The next block to deliver (our height as far as fetching goes).
    pub height: u64,
    /// The host's committed height.
    pub committed: u64,
    /// The best height advertised by eligible peers.
    pub target: u64,
    /// Requests in flight.
    pub in_flight: usize,
    /// Payloads held out of order.
    pub buffered_blocks: usize,
    /// Bytes of payloads held out of order.
    pub buffered_bytes: usize,
    /// Payloads delivered and not yet committed.
    pub uncommitted_blocks: u64,
    /// Bytes of payloads delivered and not yet committed.
    pub uncommitted_bytes: u64,
    /// Rounds started.
    pub rounds: u64,
    /// Requests sent (first sends, retries and hedges).
    pub requests: u64,
    /// Responses accepted.
    pub responses: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Re-sends of a range after a failure.
    pub retries: u64,
    /// Duplicate requests for the range holding back the commit point.
    pub hedges: u64,
    /// Ranges given up.
    pub give_ups: u64,
    /// Payloads delivered (`AddPayload`).
    pub delivered: u64,
    /// Blocks the host rejected.
    pub rejected: u64,
    /// Held payloads dropped to make room in the byte window for lower
    /// blocks (they are fetched again).
    pub evicted: u64,
    /// Times an input came long after a deadline the host was to wake us
    /// for (the host had stalled): deadlines were judged at its next
    /// `Timeout`, after the inputs queued meanwhile.
    pub host_stalls: u64,
    /// Ignored input, by reason.
    pub ignored: IgnoredCounts,
}

//! The responder's public vocabulary: its inputs, outputs, errors and
//! counters.

use std::fmt;
use std::time::Duration;

use crate::range::SeqRange;
use crate::wire::gossip::{GossipMessage, Payload};
use crate::wire::WireError;

// Only for the docs' links.
#[cfg(doc)]
use super::StateResponder;

/// Names one [`ResponderAction::ReadBlocks`]; the host hands it back in
/// [`ResponderEvent::BlocksRead`]. A responder never issues a ticket twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub(super) u64);

impl Ticket {
    /// The ticket's number, e.g. to key the host's pending reads.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An input of [`StateResponder`].
///
/// ```
/// use std::time::Instant;
/// use antientropy::{wire, Config, RequestError, ResponderEvent, StateResponder};
/// use prost::Message;
///
/// let now = Instant::now();
/// let mut responder = StateResponder::new(Config::default(), "ch".into(), 100)?;
/// // Bytes from a peer's connection: a NoopSign envelope around the request.
/// let frame = wire::wrap_envelope(&wire::state_request(9, "ch".into(), 20, 30)).encode_to_vec();
/// let envelope = wire::decode_envelope(frame.into(), wire::DEFAULT_MAX_MESSAGE_SIZE)?;
/// let message = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE)?;
/// responder.handle(now, ResponderEvent::Request { from: "peer1", message })?;
/// // Requests are validated as Fabric does: at most batch_size + 1 blocks.
/// let too_long = wire::state_request(10, "ch".into(), 20, 40);
/// assert!(matches!(
///     responder.handle(now, ResponderEvent::Request { from: "peer1", message: too_long }),
///     Err(RequestError::RangeTooLong { .. })
/// ));
/// // The ledger grew; a peer's connection closed (its queued requests go).
/// responder.handle(now, ResponderEvent::Height(101))?;
/// responder.handle(now, ResponderEvent::PeerDisconnected { peer: "peer1" })?;
/// assert_eq!(responder.stats().refused(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResponderEvent<P> {
    /// A message that arrived from `from` on the direct path; it should be
    /// a state request for our channel.
    Request {
        /// The peer whose (authenticated) connection carried the message:
        /// it gets the response and its rights filter the private data.
        from: P,
        /// The decoded message.
        message: GossipMessage,
    },
    /// The host's answer to [`ResponderAction::ReadBlocks`]: the payloads
    /// of the blocks it could read, in any order. Blocks it could not read
    /// are simply left out.
    BlocksRead {
        /// The ticket of the read.
        ticket: Ticket,
        /// The blocks, each with only the private data the requester may
        /// see.
        payloads: Vec<Payload>,
    },
    /// Our ledger height changed (highest block + 1). Requests already
    /// admitted keep the range they were clamped to.
    Height(u64),
    /// The connection to `peer` is gone: nothing can reach it any more.
    /// Its queued requests are dropped unread, and its reads in progress
    /// are answered to no one when they complete. Send it when the
    /// transport closes the connection a request came on.
    PeerDisconnected {
        /// The peer whose connection closed.
        peer: P,
    },
    /// The deadline from [`StateResponder::poll_timeout`] may have passed.
    /// Early or repeated timeouts are harmless.
    Timeout,
}

/// An output of [`StateResponder`].
///
/// Not `#[non_exhaustive]`, like [`Action`](crate::Action): a driver must
/// handle every output.
///
/// ```
/// use std::time::Instant;
/// use antientropy::wire::{self, gossip::Payload};
/// use antientropy::{Config, ResponderAction, ResponderEvent, StateResponder};
///
/// let now = Instant::now();
/// let mut responder = StateResponder::new(Config::default(), "ch".into(), 100)?;
/// let request = wire::state_request(9, "ch".into(), 20, 30);
/// responder.handle(now, ResponderEvent::Request { from: "peer1", message: request })?;
/// let mut sent = Vec::new();
/// while let Some(action) = responder.poll_action() {
///     match action {
///         ResponderAction::ReadBlocks { ticket, to, range, max_bytes } => {
///             // Read the blocks (keeping only the private data `to` may see),
///             // now or later: answer with the same ticket.
///             let _ = (to, max_bytes);
///             let payloads = (range.start()..=range.end())
///                 .map(|seq| Payload { seq_num: seq, ..Default::default() })
///                 .collect();
///             responder.handle(now, ResponderEvent::BlocksRead { ticket, payloads })?;
///         }
///         // Wrap (wire::wrap_envelope), encode and send to `to`.
///         ResponderAction::SendResponse { to, message, .. } => sent.push((to, message)),
///         // Informational: a request that ended unanswered, counted.
///         ResponderAction::Dropped { .. } => {}
///         // Without a low-priority send queue there is nothing to promote.
///         ResponderAction::Promote { .. } => {}
///     }
/// }
/// assert_eq!(sent.len(), 1);
/// assert_eq!(wire::as_state_response(&sent[0].1).unwrap().payloads.len(), 11);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum ResponderAction<P> {
    /// Read the blocks of `range` from the ledger, with the private data
    /// `to` may see, and hand them back in [`ResponderEvent::BlocksRead`]
    /// with this `ticket` within `read_timeout`.
    ///
    /// # Private data
    ///
    /// The whole block is always returned; its private data is filtered per
    /// requester, as Fabric's coordinator does in `GetPvtDataAndBlockByNum`:
    /// for every transaction of the block with private write sets, keep the
    /// write set of a (namespace, collection) only if that collection's
    /// access policy (its `AccessFilter`) accepts `to`'s identity, and drop
    /// it when the policy cannot be evaluated. The responder knows nothing
    /// of policies: it only names the requester, and the host plugs its
    /// policy in here. `Payload.private_data` holds each transaction's
    /// filtered set as a marshalled `PvtDataPayload`.
    ///
    /// # Size
    ///
    /// Only the longest prefix of the range whose encoded response message
    /// is at most `max_bytes` is sent, and always the first block. A
    /// payload takes at least its [`payload_size`](crate::payload_size) in
    /// that message, so the host may stop reading once the payloads' sizes
    /// would exceed `max_bytes`: nothing after that could be sent. Blocks it
    /// cannot read are skipped: Fabric does the same, and the requester
    /// asks again for what is missing.
    ReadBlocks {
        /// Hand back in [`ResponderEvent::BlocksRead`].
        ticket: Ticket,
        /// The requester; the private data must be filtered for it.
        to: P,
        /// The blocks to read, already clamped to our height.
        range: SeqRange,
        /// The byte budget of the encoded response message.
        max_bytes: usize,
    },
    /// Send `message` (the request's nonce, tag `CHAN_OR_ORG`, our channel
    /// and a `state_response`, possibly empty) to `to`, on the connection
    /// the request came from (Fabric's `msg.Respond`).
    SendResponse {
        /// The requester.
        to: P,
        /// The response.
        message: GossipMessage,
        /// Send it from spare capacity only, if the transport can (a
        /// low-priority send queue, [`Transport::send_background`]): `to`
        /// repeats what it was served, or waits behind a crowd's favoured
        /// peers ([`StateResponder::is_background`] when it was made).
        ///
        /// [`Transport::send_background`]: crate::adapters::Transport::send_background
        /// [`StateResponder::is_background`]: crate::StateResponder::is_background
        background: bool,
    },
    /// Informational, nothing to send: the request `nonce` of `to` was
    /// admitted but will never be answered, because it waited for a read
    /// slot until its requester had surely given up
    /// ([`RequestError::Stale`]) or its read was abandoned after
    /// `read_timeout` ([`RequestError::ReadTimedOut`]). A host may log it
    /// or count it against its storage.
    Dropped {
        /// The requester.
        to: P,
        /// The request's nonce.
        nonce: u64,
        /// Why it is dropped.
        reason: RequestError,
    },
    /// Answers to `to` still queued in the background (sent with
    /// `background: true` because `to` waited behind a crowd's favoured
    /// peers) may go as any other now: that crowd is gone
    /// ([`Transport::promote`]). A host without send classes ignores it.
    ///
    /// [`Transport::promote`]: crate::adapters::Transport::promote
    Promote {
        /// The requester.
        to: P,
    },
}

/// Why an input was refused. A refused request gets no response, which is
/// what a Fabric requester expects (it times out and asks elsewhere),
/// except a load refusal within the peer's busy-reply budget, which gets
/// an empty response (see [`StateResponder`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The bytes did not decode.
    #[error("malformed request: {0}")]
    Malformed(#[from] WireError),
    /// The request names another channel.
    #[error("state request for another channel")]
    WrongChannel,
    /// The message is not a state request.
    #[error("not a state request")]
    NotARequest,
    /// `start > end` (Fabric: "Invalid sequence interval").
    #[error("invalid sequence interval [{start}, {end}]")]
    InvalidRange {
        /// First block asked.
        start: u64,
        /// Last block asked.
        end: u64,
    },
    /// `end - start > batch_size`: more than `batch_size + 1` blocks.
    #[error("range [{start}, {end}] exceeds the batch size {batch_size}")]
    RangeTooLong {
        /// First block asked.
        start: u64,
        /// Last block asked.
        end: u64,
        /// Our `batch_size`.
        batch_size: u64,
    },
    /// The peer already has `max_requests_per_peer` requests queued or
    /// being read.
    #[error("too many requests of this peer being served")]
    TooManyRequests,
    /// The peer's token bucket holds fewer blocks than the request costs.
    #[error("peer exceeded its block rate")]
    RateLimited,
    /// Every read slot is taken and `max_queued_requests` wait already.
    #[error("request queue is full")]
    QueueFull,
    /// An admitted request waited `waited` (at least `read_timeout`) for a
    /// read slot: its requester has given up, so it is dropped before any
    /// read ([`ResponderAction::Dropped`]).
    #[error("request dropped after waiting {waited:?} for a read slot")]
    Stale {
        /// How long it waited in the queue.
        waited: Duration,
    },
    /// The host did not answer the request's read within `read_timeout`:
    /// it is abandoned without a response ([`ResponderAction::Dropped`]).
    #[error("read abandoned after the read timeout")]
    ReadTimedOut,
    /// `BlocksRead` for a ticket that is not outstanding: already answered,
    /// abandoned after `read_timeout`, or never issued.
    #[error("no outstanding read with ticket {0}")]
    UnknownTicket(Ticket),
}

/// A snapshot of the responder's counters and queues.
///
/// Every request counted in `requests` ends up refused (one of the refusal
/// counters, [`refused`](Self::refused), `stale` included), answered
/// (`responses`), abandoned (`expired_reads`), dropped for its peer's
/// disconnection (`disconnected_queued`, `disconnected_reads`), evicted
/// from the queue (`evicted`), or is still `queued` or `reading`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponderStats {
    /// Requests received, bytes that failed to decode included.
    pub requests: u64,
    /// Responses to admitted requests sent, empty ones included (busy
    /// replies are counted apart, in `busy_replies`).
    pub responses: u64,
    /// Responses sent without a payload (start at or beyond our height, or
    /// nothing readable).
    pub empty_responses: u64,
    /// Payloads sent.
    pub blocks_served: u64,
    /// Bytes of payloads sent ([`payload_size`](crate::payload_size)).
    pub bytes_served: u64,
    /// Blocks of a read range the host left out, below the highest block it
    /// returned (the whole range if it returned none); skipped as Fabric
    /// does. Blocks after the highest one returned are not counted: the
    /// host may have stopped at `max_bytes`.
    pub skipped_unreadable: u64,
    /// Responses cut short by `max_response_bytes` (their encoded message
    /// would have been larger).
    pub truncated_by_bytes: u64,
    /// Payloads from the host outside the read range, or repeating a
    /// number: dropped.
    pub dropped_payloads: u64,
    /// Reads abandoned after `read_timeout`, without a response.
    pub expired_reads: u64,
    /// Queued requests dropped unread because their peer disconnected
    /// ([`ResponderEvent::PeerDisconnected`]).
    pub disconnected_queued: u64,
    /// Reads completed for a peer that had disconnected meanwhile: nothing
    /// was sent.
    pub disconnected_reads: u64,
    /// Queued requests whose place a peer holding fewer places took
    /// ([`Config::fair_queue`](crate::Config::fair_queue)): refused late,
    /// with a busy reply as a full queue refuses.
    pub evicted: u64,

    /// Refused: [`RequestError::Malformed`].
    pub malformed: u64,
    /// Refused: [`RequestError::WrongChannel`].
    pub wrong_channel: u64,
    /// Refused: [`RequestError::NotARequest`].
    pub not_a_request: u64,
    /// Refused: [`RequestError::InvalidRange`].
    pub invalid_range: u64,
    /// Refused: [`RequestError::RangeTooLong`].
    pub range_too_long: u64,
    /// Refused: [`RequestError::TooManyRequests`].
    pub too_many_requests: u64,
    /// Refused: [`RequestError::RateLimited`].
    pub rate_limited: u64,
    /// Refused: [`RequestError::QueueFull`].
    pub queue_full: u64,
    /// Dropped after waiting `read_timeout` for a read slot:
    /// [`RequestError::Stale`].
    pub stale: u64,
    /// Empty responses ("busy") sent for load refusals
    /// ([`RequestError::TooManyRequests`], [`RequestError::RateLimited`],
    /// [`RequestError::QueueFull`]), within the peer's busy-reply budget.
    /// Their requests are counted as refused, and these are not in
    /// `responses`.
    pub busy_replies: u64,
    /// Load refusals left silent: the peer's busy-reply budget was spent
    /// (or busy replies are off).
    pub busy_suppressed: u64,
    /// Admitted requests that asked only for blocks served to the same
    /// peer lately (see [`StateResponder::is_repeater`]).
    pub repeat_requests: u64,
    /// Repeaters now ([`StateResponder::is_repeater`]).
    pub background_peers: usize,
    /// Refused host input: [`RequestError::UnknownTicket`] (not a request,
    /// so not part of [`refused`](Self::refused)).
    pub unknown_ticket: u64,

    /// Reads handed to the host and not yet answered.
    pub reading: usize,
    /// Admitted requests waiting for a read slot.
    pub queued: usize,
    /// Per-peer records remembered: a peer's rate state while it has work
    /// or its block bucket is not full again, plus its busy-reply state
    /// while that bucket is not full again, plus what it was served for a
    /// minute after its last request, plus (with `fair_queue`) when its
    /// latest read started, for a minute after it.
    pub tracked_peers: usize,
}

impl ResponderStats {
    /// Requests refused, all reasons together.
    pub fn refused(&self) -> u64 {
        self.malformed
            + self.wrong_channel
            + self.not_a_request
            + self.invalid_range
            + self.range_too_long
            + self.too_many_requests
            + self.rate_limited
            + self.queue_full
            + self.stale
    }
}

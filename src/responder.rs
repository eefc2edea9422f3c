//! [`StateResponder`]: the serving side of state transfer, Fabric's
//! `handleStateRequest` as a sans-IO machine, with the admission control
//! Fabric lacks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::encoding::{encoded_len_varint, key_len};
use prost::Message;

use crate::buffer::payload_size;
use crate::config::{Config, ConfigError};
use crate::range::SeqRange;
use crate::wire::gossip::{GossipMessage, Payload};
use crate::wire::{self, WireError};

/// Names one [`ResponderAction::ReadBlocks`]; the host hands it back in
/// [`ResponderEvent::BlocksRead`]. A responder never issues a ticket twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

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
/// disconnection (`disconnected_queued`, `disconnected_reads`), or is still
/// `queued` or `reading`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponderStats {
    /// Requests received, bytes that failed to decode included.
    pub requests: u64,
    /// Responses sent, empty ones included.
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
    /// Refused host input: [`RequestError::UnknownTicket`] (not a request,
    /// so not part of [`refused`](Self::refused)).
    pub unknown_ticket: u64,

    /// Reads handed to the host and not yet answered.
    pub reading: usize,
    /// Admitted requests waiting for a read slot.
    pub queued: usize,
    /// Per-peer records remembered: a peer's rate state while it has work
    /// or its block bucket is not full again, plus its busy-reply state
    /// while that bucket is not full again.
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

/// Tokens are counted in nano-blocks, so that a bucket refilling at `r`
/// blocks per second gains exactly `r` tokens per nanosecond: integer
/// arithmetic, no rounding, no float. `u128` holds every product.
const NANO: u128 = 1_000_000_000;

/// What an empty response (a request starting at or beyond our height)
/// costs: one block. It costs no read, but it is a message we send, so a
/// peer cannot make us answer faster than its block rate.
const EMPTY_RESPONSE_COST: u128 = NANO;

/// The serving side of Fabric's state transfer.
///
/// It answers state requests the way Fabric's `handleStateRequest` does:
/// validate (`start <= end <= start + batch_size`), clamp to the last
/// block we have, read the blocks with the private data the requester may
/// see, skip those that cannot be read, and reply with the request's nonce.
/// Fabric's clamp to `height` (one block too far) is fixed to
/// `height - 1`, and a request starting at or beyond our height gets an
/// empty response at once, without a read.
///
/// On top of Fabric, each request passes admission control before any
/// read, and a refused request is a typed error, counted. A request refused
/// for load (the first three limits below) gets a busy reply, an empty
/// response with its nonce, within a per-peer budget
/// (`busy_replies_per_second`, `busy_reply_burst`), so the requester asks
/// elsewhere at once; past the budget, and for every other refusal, there
/// is no response, as in Fabric:
///
/// - **Per-peer concurrency:** at most `max_requests_per_peer` of a peer's
///   requests queued or being read ([`RequestError::TooManyRequests`]).
/// - **Per-peer rate:** a token bucket of `peer_burst_blocks` blocks,
///   refilled at `peer_blocks_per_second` in the time given by `now`. A
///   request costs the blocks of its clamped range; an empty response costs
///   one ([`RequestError::RateLimited`]). A refused request costs nothing.
/// - **Global concurrency:** at most `max_concurrent_reads` reads handed to
///   the host; further requests wait in a queue of at most
///   `max_queued_requests` ([`RequestError::QueueFull`]). A freed slot goes
///   round-robin across the peers with requests waiting (each peer's own
///   oldest first), so a flooder with a full per-peer queue gets one read
///   in turn with everyone else, not all of them.
/// - **Read timeout:** a read the host has not answered after
///   `read_timeout` is abandoned: its slot is freed and no response is
///   sent ([`ResponderAction::Dropped`], [`RequestError::ReadTimedOut`]).
/// - **Staleness:** a request still queued `read_timeout` after its
///   admission is dropped without a read ([`ResponderAction::Dropped`],
///   [`RequestError::Stale`]): its requester has given up on it. These are
///   the only timers.
///
/// A peer's state is forgotten once it has no work and its bucket is full
/// again (a forgotten peer has a full bucket), so memory is bounded by the
/// peers recently active.
///
/// ```
/// use std::time::Instant;
/// use antientropy::wire::{self, gossip::Payload};
/// use antientropy::{Config, ResponderAction, ResponderEvent, StateResponder};
///
/// let now = Instant::now(); // the host's clock; the machine never reads one
/// let mut responder: StateResponder<&str> =
///     StateResponder::new(Config::default(), "mychannel".into(), 16).unwrap();
/// let request = wire::state_request(7, "mychannel".into(), 10, 20);
/// responder
///     .handle(now, ResponderEvent::Request { from: "peer1", message: request })
///     .unwrap();
/// let mut sent = Vec::new();
/// while let Some(action) = responder.poll_action() {
///     match action {
///         ResponderAction::ReadBlocks { ticket, to, range, .. } => {
///             // Read the ledger; keep only the private data `to` may see.
///             let payloads = (range.start()..=range.end())
///                 .map(|seq| Payload { seq_num: seq, ..Default::default() })
///                 .collect();
///             responder
///                 .handle(now, ResponderEvent::BlocksRead { ticket, payloads })
///                 .unwrap();
///         }
///         ResponderAction::SendResponse { to, message } => sent.push((to, message)),
///         ResponderAction::Dropped { .. } => {} // informational
///         ResponderAction::Dropped { .. } => {} // informational
///     }
/// }
/// let response = wire::as_state_response(&sent[0].1).unwrap();
/// assert_eq!(sent[0].1.nonce, 7);
/// // Clamped to our last block, 15.
/// let seqs: Vec<u64> = response.payloads.iter().map(|p| p.seq_num).collect();
/// assert_eq!(seqs, [10, 11, 12, 13, 14, 15]);
/// ```
#[derive(Debug, Clone)]
pub struct StateResponder<P> {
    config: Config,
    channel: Bytes,
    height: u64,
    /// The latest `now` seen: an earlier one is clamped to it.
    now: Option<Instant>,
    next_ticket: u64,
    /// Reads handed to the host. Tickets are issued when a read starts,
    /// `now` never goes back and `read_timeout` is fixed, so ticket order is
    /// deadline order: the first entry expires first.
    reads: BTreeMap<Ticket, Read<P>>,
    /// Admitted requests waiting for a read slot. Non-empty only while
    /// every slot is taken.
    queue: Queue<P>,
    buckets: Buckets<P>,
    /// Busy replies per peer; `None` when `busy_reply_burst` is zero.
    busy: Option<Buckets<P>>,
    actions: VecDeque<ResponderAction<P>>,
    stats: ResponderStats,
}

/// Admitted requests waiting for a read slot.
///
/// Reads start round-robin across peers, each peer's oldest first; stale
/// requests leave in admission order. Both take `O(log n)`.
#[derive(Debug, Clone)]
struct Queue<P> {
    /// Every queued job by admission number: oldest first, since `now`
    /// never goes back.
    jobs: BTreeMap<u64, Job<P>>,
    /// Per peer with jobs queued: their admission numbers, oldest first.
    peers: BTreeMap<P, VecDeque<u64>>,
    next: u64,
    /// The peer whose job started last: the rotation resumes after it,
    /// whether or not it still has jobs.
    last: Option<P>,
}

impl<P: Clone + Ord> Queue<P> {
    fn new() -> Self {
        Self {
            jobs: BTreeMap::new(),
            peers: BTreeMap::new(),
            next: 0,
            last: None,
        }
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn push(&mut self, job: Job<P>) {
        let number = self.next;
        self.next += 1;
        self.peers
            .entry(job.from.clone())
            .or_default()
            .push_back(number);
        self.jobs.insert(number, job);
    }

    /// The job admitted first.
    fn oldest(&self) -> Option<&Job<P>> {
        self.jobs.values().next()
    }

    /// Removes the job admitted first. It is its peer's oldest too.
    fn pop_oldest(&mut self) -> Option<Job<P>> {
        let (number, job) = self.jobs.pop_first()?;
        self.unlink(&job.from, number);
        Some(job)
    }

    /// Removes every job of `peer`, oldest first.
    fn remove_peer(&mut self, peer: &P) -> Vec<Job<P>> {
        let numbers = self.peers.remove(peer).unwrap_or_default();
        numbers
            .into_iter()
            .filter_map(|number| self.jobs.remove(&number))
            .collect()
    }

    /// Removes the oldest job of the next peer in the rotation.
    fn pop_next(&mut self) -> Option<Job<P>> {
        let after = self.last.as_ref().and_then(|last| {
            self.peers
                .range((Bound::Excluded(last), Bound::Unbounded))
                .next()
        });
        let (peer, numbers) = after.or_else(|| self.peers.iter().next())?;
        let (peer, number) = (peer.clone(), *numbers.front()?);
        self.unlink(&peer, number);
        self.last = Some(peer);
        self.jobs.remove(&number)
    }

    /// Takes `number` off the front of `peer`'s list, dropping the list
    /// once empty so that `peers` holds only peers with jobs.
    fn unlink(&mut self, peer: &P, number: u64) {
        if let Some(numbers) = self.peers.get_mut(peer) {
            if numbers.front() == Some(&number) {
                numbers.pop_front();
            }
            if numbers.is_empty() {
                self.peers.remove(peer);
            }
        }
    }
}

/// An admitted request.
#[derive(Debug, Clone)]
struct Job<P> {
    from: P,
    nonce: u64,
    /// Clamped to our height at admission.
    range: SeqRange,
    /// When it was admitted: a job still queued `read_timeout` later is
    /// stale.
    admitted: Instant,
}

/// A read handed to the host.
#[derive(Debug, Clone)]
struct Read<P> {
    job: Job<P>,
    /// `None` if `now + read_timeout` is beyond what `Instant` holds: such a
    /// read never expires.
    deadline: Option<Instant>,
    /// Its peer disconnected: the read still holds its slot until the host
    /// answers or it expires, but nothing is sent, and it no longer counts
    /// against the peer.
    orphaned: bool,
}

impl<P: Clone + Ord + fmt::Debug> StateResponder<P> {
    /// A responder for `channel` whose ledger holds `height` blocks
    /// (`0..height`).
    pub fn new(config: Config, channel: Bytes, height: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let buckets = Buckets::new(
            u128::from(config.peer_burst_blocks) * NANO,
            u128::from(config.peer_blocks_per_second),
        );
        let busy = (config.busy_reply_burst > 0).then(|| {
            Buckets::new(
                u128::from(config.busy_reply_burst) * NANO,
                u128::from(config.busy_replies_per_second),
            )
        });
        Ok(Self {
            busy,
            config,
            channel,
            height,
            now: None,
            next_ticket: 0,
            reads: BTreeMap::new(),
            queue: Queue::new(),
            buckets,
            actions: VecDeque::new(),
            stats: ResponderStats::default(),
        })
    }

    /// Feeds one input. Before it, reads whose deadline is `<= now` are
    /// abandoned, so a `BlocksRead` that comes too late is refused
    /// ([`RequestError::UnknownTicket`]) whether or not the `Timeout` was
    /// handled first.
    pub fn handle(&mut self, now: Instant, event: ResponderEvent<P>) -> Result<(), RequestError> {
        let now = self.advance(now);
        match event {
            ResponderEvent::Request { from, message } => self.on_request(now, from, Ok(message)),
            ResponderEvent::BlocksRead { ticket, payloads } => {
                self.on_blocks_read(now, ticket, payloads)
            }
            ResponderEvent::Height(height) => {
                self.height = height;
                Ok(())
            }
            ResponderEvent::PeerDisconnected { peer } => {
                self.on_disconnected(&peer);
                Ok(())
            }
            // `advance` did the work.
            ResponderEvent::Timeout => Ok(()),
        }
    }

    /// Decodes `bytes` (at most `max_message_size`) as a `GossipMessage`
    /// and handles it as [`ResponderEvent::Request`]. Bytes that do not
    /// decode are a [`RequestError::Malformed`] request.
    pub fn handle_request_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), RequestError> {
        let now = self.advance(now);
        let message = wire::decode_gossip_message(bytes, self.config.max_message_size);
        self.on_request(now, from, message)
    }

    /// The next action to carry out; call until `None` after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<ResponderAction<P>> {
        self.actions.pop_front()
    }

    /// When to handle a [`ResponderEvent::Timeout`]: the earliest deadline
    /// of an outstanding read or of the oldest queued request's wait, if
    /// any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let read = self.reads.values().next().and_then(|read| read.deadline);
        let wait = self.queue.oldest().and_then(|job| self.stale_at(job));
        match (read, wait) {
            (Some(read), Some(wait)) => Some(read.min(wait)),
            (read, wait) => read.or(wait),
        }
    }

    /// When `job` has waited too long: `None` if beyond what `Instant`
    /// holds, as for reads.
    fn stale_at(&self, job: &Job<P>) -> Option<Instant> {
        job.admitted.checked_add(self.config.read_timeout)
    }

    /// A snapshot of the counters and queues.
    pub fn stats(&self) -> ResponderStats {
        ResponderStats {
            reading: self.reads.len(),
            queued: self.queue.len(),
            tracked_peers: self.buckets.peers.len()
                + self.busy.as_ref().map_or(0, |busy| busy.peers.len()),
            ..self.stats.clone()
        }
    }

    /// Our ledger height, as last given to [`new`](Self::new) or by
    /// [`ResponderEvent::Height`].
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Clamps `now` to the latest instant seen, abandons the reads that are
    /// due, drops the queued requests that waited `read_timeout`, forgets
    /// peers that are idle with a full bucket, and starts queued reads in
    /// the freed slots.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |latest| latest.max(now));
        self.now = Some(now);
        while let Some(entry) = self.reads.first_entry() {
            if entry.get().deadline.is_none_or(|deadline| deadline > now) {
                break;
            }
            let read = entry.remove();
            self.stats.expired_reads += 1;
            if !read.orphaned {
                self.buckets.finish(&read.job.from);
            }
            self.actions.push_back(ResponderAction::Dropped {
                to: read.job.from,
                nonce: read.job.nonce,
                reason: RequestError::ReadTimedOut,
            });
        }
        // The queue is in admission order, so the stale jobs are in front.
        // Our requester's deadline is at most `read_timeout` by default and
        // Fabric's is 3 s: an answer after this wait is wasted, and reading
        // it would delay the requests still wanted.
        while let Some(job) = self.queue.oldest() {
            if self.stale_at(job).is_none_or(|stale_at| stale_at > now) {
                break;
            }
            let Some(job) = self.queue.pop_oldest() else {
                break;
            };
            self.stats.stale += 1;
            self.buckets.finish(&job.from);
            self.actions.push_back(ResponderAction::Dropped {
                to: job.from,
                nonce: job.nonce,
                reason: RequestError::Stale {
                    waited: now.saturating_duration_since(job.admitted),
                },
            });
        }
        self.buckets.forget_full(now);
        if let Some(busy) = &mut self.busy {
            busy.forget_full(now);
        }
        self.start_reads(now);
        now
    }

    fn on_request(
        &mut self,
        now: Instant,
        from: P,
        message: Result<GossipMessage, WireError>,
    ) -> Result<(), RequestError> {
        self.stats.requests += 1;
        let nonce = message.as_ref().map_or(0, |message| message.nonce);
        let result = message
            .map_err(RequestError::from)
            .and_then(|message| self.admit(now, from.clone(), &message));
        if let Err(
            RequestError::TooManyRequests | RequestError::RateLimited | RequestError::QueueFull,
        ) = &result
        {
            self.busy_reply(now, from, nonce);
        }
        if let Err(error) = &result {
            let counter = match error {
                RequestError::Malformed(_) => &mut self.stats.malformed,
                RequestError::WrongChannel => &mut self.stats.wrong_channel,
                RequestError::NotARequest => &mut self.stats.not_a_request,
                RequestError::InvalidRange { .. } => &mut self.stats.invalid_range,
                RequestError::RangeTooLong { .. } => &mut self.stats.range_too_long,
                RequestError::TooManyRequests => &mut self.stats.too_many_requests,
                RequestError::RateLimited => &mut self.stats.rate_limited,
                RequestError::QueueFull => &mut self.stats.queue_full,
                RequestError::Stale { .. } => &mut self.stats.stale,
                RequestError::ReadTimedOut => &mut self.stats.expired_reads,
                RequestError::UnknownTicket(_) => &mut self.stats.unknown_ticket,
            };
            *counter += 1;
        }
        result
    }

    /// Validates a request and admits it, or says why not. Every check
    /// comes before any state changes, so a refusal costs the peer nothing.
    fn admit(
        &mut self,
        now: Instant,
        from: P,
        message: &GossipMessage,
    ) -> Result<(), RequestError> {
        let request = wire::as_state_request(message).ok_or(RequestError::NotARequest)?;
        if message.channel != self.channel {
            return Err(RequestError::WrongChannel);
        }
        // Fabric's stateRequestValidator, without its overflow: it computes
        // `start + batchSize`, which wraps near u64::MAX.
        let (start, end) = (request.start_seq_num, request.end_seq_num);
        let invalid = RequestError::InvalidRange { start, end };
        if start > end {
            return Err(invalid);
        }
        if end - start > self.config.batch_size {
            return Err(RequestError::RangeTooLong {
                start,
                end,
                batch_size: self.config.batch_size,
            });
        }

        if start >= self.height {
            // Nothing to read: answer at once, as Fabric does (with an empty
            // response) for a start beyond its height.
            if self.buckets.tokens(&from, now) < EMPTY_RESPONSE_COST {
                return Err(RequestError::RateLimited);
            }
            self.buckets.charge(&from, now, EMPTY_RESPONSE_COST, false);
            self.respond(from, message.nonce, Vec::new());
            return Ok(());
        }
        // Our last block is height - 1; Fabric clamps to `height` and then
        // fails to read that block. `start < height`, so this is never None.
        let range = SeqRange::new(start, end.min(self.height - 1)).ok_or(invalid)?;

        if self.buckets.active(&from) >= self.config.max_requests_per_peer {
            return Err(RequestError::TooManyRequests);
        }
        let cost = u128::from(range.len()) * NANO;
        if self.buckets.tokens(&from, now) < cost {
            return Err(RequestError::RateLimited);
        }
        let slot_free = self.reads.len() < self.config.max_concurrent_reads;
        if !slot_free && self.queue.len() >= self.config.max_queued_requests {
            return Err(RequestError::QueueFull);
        }
        self.buckets.charge(&from, now, cost, true);
        self.queue.push(Job {
            from,
            nonce: message.nonce,
            range,
            admitted: now,
        });
        self.start_reads(now);
        Ok(())
    }

    /// Drops `peer`'s queued jobs and orphans its reads. Both stop counting
    /// against the peer at once: a reconnected peer is a new process, with
    /// its own window of requests.
    fn on_disconnected(&mut self, peer: &P) {
        for job in self.queue.remove_peer(peer) {
            self.stats.disconnected_queued += 1;
            self.buckets.finish(&job.from);
        }
        // At most `max_concurrent_reads` reads: a scan is cheap.
        let mut orphaned = 0;
        for read in self.reads.values_mut() {
            if !read.orphaned && read.job.from == *peer {
                read.orphaned = true;
                orphaned += 1;
            }
        }
        for _ in 0..orphaned {
            self.buckets.finish(peer);
        }
    }

    /// Hands queued requests to the host while read slots are free.
    fn start_reads(&mut self, now: Instant) {
        while self.reads.len() < self.config.max_concurrent_reads {
            let Some(job) = self.queue.pop_next() else {
                break;
            };
            let ticket = Ticket(self.next_ticket);
            self.next_ticket = self.next_ticket.wrapping_add(1);
            self.actions.push_back(ResponderAction::ReadBlocks {
                ticket,
                to: job.from.clone(),
                range: job.range,
                max_bytes: self.config.max_response_bytes,
            });
            let deadline = now.checked_add(self.config.read_timeout);
            self.reads.insert(
                ticket,
                Read {
                    job,
                    deadline,
                    orphaned: false,
                },
            );
        }
    }

    fn on_blocks_read(
        &mut self,
        now: Instant,
        ticket: Ticket,
        payloads: Vec<Payload>,
    ) -> Result<(), RequestError> {
        let Some(read) = self.reads.remove(&ticket) else {
            self.stats.unknown_ticket += 1;
            return Err(RequestError::UnknownTicket(ticket));
        };
        if read.orphaned {
            // No one to send it to; the slot goes on.
            self.stats.disconnected_reads += 1;
            self.start_reads(now);
            return Ok(());
        }
        self.buckets.finish(&read.job.from);
        let header = wire::state_response(read.job.nonce, self.channel.clone(), Vec::new());
        // Without its content: `response_len` adds the oneof field back.
        let header = GossipMessage {
            content: None,
            ..header
        }
        .encoded_len();
        let selection = select(
            read.job.range,
            payloads,
            header,
            self.config.max_response_bytes,
        );
        self.stats.dropped_payloads += selection.dropped;
        self.stats.skipped_unreadable += selection.unreadable;
        self.stats.truncated_by_bytes += u64::from(selection.truncated);
        self.respond(read.job.from, read.job.nonce, selection.payloads);
        self.start_reads(now);
        Ok(())
    }

    /// Answers a load refusal with an empty response, if the peer's budget
    /// allows: our requester and Fabric's both take an empty answer as "ask
    /// another peer now", which costs them a round trip instead of a
    /// timeout. Validation refusals stay silent, as Fabric's: they come
    /// from a broken or hostile peer, which a reply would not help.
    fn busy_reply(&mut self, now: Instant, to: P, nonce: u64) {
        let Some(busy) = &mut self.busy else {
            self.stats.busy_suppressed += 1;
            return;
        };
        if busy.tokens(&to, now) < NANO {
            self.stats.busy_suppressed += 1;
            return;
        }
        busy.charge(&to, now, NANO, false);
        self.stats.busy_replies += 1;
        let message = wire::state_response(nonce, self.channel.clone(), Vec::new());
        self.actions
            .push_back(ResponderAction::SendResponse { to, message });
    }

    fn respond(&mut self, to: P, nonce: u64, payloads: Vec<Payload>) {
        self.stats.responses += 1;
        if payloads.is_empty() {
            self.stats.empty_responses += 1;
        }
        self.stats.blocks_served += payloads.len() as u64;
        let bytes: usize = payloads.iter().map(payload_size).sum();
        self.stats.bytes_served = self.stats.bytes_served.saturating_add(bytes as u64);
        let message = wire::state_response(nonce, self.channel.clone(), payloads);
        self.actions
            .push_back(ResponderAction::SendResponse { to, message });
    }
}

/// The payloads a response carries, and what was left out.
#[derive(Debug)]
struct Selection {
    payloads: Vec<Payload>,
    dropped: u64,
    unreadable: u64,
    truncated: bool,
}

/// `GossipMessage.state_response`'s field number (`message.proto`).
const STATE_RESPONSE_FIELD: u32 = 19;
/// `RemoteStateResponse.payloads`'s field number.
const PAYLOADS_FIELD: u32 = 1;

/// The encoded length of a state response whose `GossipMessage` fields
/// other than the content take `header` bytes and whose
/// `RemoteStateResponse` takes `body`: the oneof field's key, its length
/// varint, then the body.
fn response_len(header: usize, body: usize) -> usize {
    header
        .saturating_add(key_len(STATE_RESPONSE_FIELD))
        .saturating_add(encoded_len_varint(body as u64))
        .saturating_add(body)
}

/// What one payload adds to a `RemoteStateResponse`: its field key, its
/// length varint and its encoding.
fn payload_field_len(payload: &Payload) -> usize {
    let len = payload.encoded_len();
    key_len(PAYLOADS_FIELD)
        .saturating_add(encoded_len_varint(len as u64))
        .saturating_add(len)
}

/// Picks what to send of the host's answer to a read of `range`: the
/// payloads inside the range, ascending, each number once (the host's first
/// copy), then the longest prefix whose encoded response (with `header`
/// bytes of nonce, channel and tag) is at most `max_bytes`, but always the
/// first payload, or a block larger than the cap could never be served.
/// The length is summed from each field's size, which is exactly what
/// prost encodes, so no trial encoding is needed. Missing numbers are
/// skipped, as Fabric skips unreadable blocks: the requester keeps what
/// came and asks again for the rest.
fn select(
    range: SeqRange,
    mut payloads: Vec<Payload>,
    header: usize,
    max_bytes: usize,
) -> Selection {
    let received = payloads.len();
    payloads.retain(|payload| range.contains(payload.seq_num));
    // Stable, so among equal numbers the host's first copy stays first.
    payloads.sort_by_key(|payload| payload.seq_num);
    payloads.dedup_by_key(|payload| payload.seq_num);
    let dropped = (received - payloads.len()) as u64;

    let unreadable = match payloads.last() {
        // `payloads` holds distinct numbers of `start..=last`.
        Some(last) => (last.seq_num - range.start())
            .saturating_add(1)
            .saturating_sub(payloads.len() as u64),
        None => range.len(),
    };

    // The encoded length grows with the body, so the first prefix that
    // does not fit ends the search.
    let mut body = 0usize;
    let fitting = payloads
        .iter()
        .enumerate()
        .take_while(|(index, payload)| {
            body = body.saturating_add(payload_field_len(payload));
            *index == 0 || response_len(header, body) <= max_bytes
        })
        .count();
    let truncated = fitting < payloads.len();
    payloads.truncate(fitting);
    Selection {
        payloads,
        dropped,
        unreadable,
        truncated,
    }
}

/// Per-peer token buckets and request counts, kept only for peers that
/// have work or a bucket not yet full.
#[derive(Debug, Clone)]
struct Buckets<P> {
    /// Capacity in nano-blocks.
    capacity: u128,
    /// Refill in nano-blocks per nanosecond, which is blocks per second.
    rate: u128,
    peers: BTreeMap<P, PeerBucket>,
    /// Peers without work, by the instant their bucket is full again: they
    /// are forgotten then.
    idle: BTreeSet<(Instant, P)>,
}

#[derive(Debug, Clone)]
struct PeerBucket {
    /// Nano-blocks at `updated`.
    tokens: u128,
    updated: Instant,
    /// Requests queued or being read.
    active: usize,
    /// Its key in `idle`, while it is there.
    full_at: Option<Instant>,
}

impl<P: Clone + Ord> Buckets<P> {
    fn new(capacity: u128, rate: u128) -> Self {
        Self {
            capacity,
            // `Config::validate` refuses a zero rate; `max` keeps the
            // division below safe regardless.
            rate: rate.max(1),
            peers: BTreeMap::new(),
            idle: BTreeSet::new(),
        }
    }

    /// Forgets the idle peers whose bucket is full by `now`.
    fn forget_full(&mut self, now: Instant) {
        while self
            .idle
            .first()
            .is_some_and(|(full_at, _)| *full_at <= now)
        {
            if let Some((_, peer)) = self.idle.pop_first() {
                self.peers.remove(&peer);
            }
        }
    }

    fn active(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |state| state.active)
    }

    /// The peer's tokens at `now`; a peer not remembered has a full bucket.
    fn tokens(&self, peer: &P, now: Instant) -> u128 {
        self.peers.get(peer).map_or(self.capacity, |state| {
            let elapsed = now.saturating_duration_since(state.updated).as_nanos();
            let refill = elapsed.saturating_mul(self.rate);
            state.tokens.saturating_add(refill).min(self.capacity)
        })
    }

    /// Takes `cost` tokens (the caller checked they are there) and, with
    /// `work`, counts a request being served until [`finish`](Self::finish).
    fn charge(&mut self, peer: &P, now: Instant, cost: u128, work: bool) {
        let tokens = self.tokens(peer, now).saturating_sub(cost);
        let state = self.peers.entry(peer.clone()).or_insert(PeerBucket {
            tokens,
            updated: now,
            active: 0,
            full_at: None,
        });
        state.tokens = tokens;
        state.updated = now;
        if work {
            state.active += 1;
        }
        self.reindex(peer);
    }

    /// A request of `peer` is no longer being served.
    fn finish(&mut self, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.active = state.active.saturating_sub(1);
        }
        self.reindex(peer);
    }

    /// Files the peer in `idle` exactly when it has no work, keyed by the
    /// instant its bucket is full again.
    fn reindex(&mut self, peer: &P) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        if let Some(full_at) = state.full_at.take() {
            self.idle.remove(&(full_at, peer.clone()));
        }
        if state.active > 0 {
            return;
        }
        let missing = self.capacity.saturating_sub(state.tokens);
        let nanos = missing.div_ceil(self.rate);
        // `None` only if the bucket fills after `Instant`'s range ends
        // (a burst of centuries): such a peer is kept.
        let full_at = u64::try_from(nanos)
            .ok()
            .and_then(|nanos| state.updated.checked_add(Duration::from_nanos(nanos)));
        if let Some(full_at) = full_at {
            state.full_at = Some(full_at);
            self.idle.insert((full_at, peer.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test is the host: it may read the clock, the machine may not.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn payload(seq: u64, size: usize) -> Payload {
        Payload {
            seq_num: seq,
            data: Bytes::from(vec![0u8; size]),
            private_data: vec![],
        }
    }

    fn seqs(payloads: &[Payload]) -> Vec<u64> {
        payloads.iter().map(|p| p.seq_num).collect()
    }

    #[test]
    fn select_filters_sorts_dedups_and_counts_holes() {
        let range = SeqRange::new(10, 15).unwrap();
        let mut first_12 = payload(12, 1);
        first_12.private_data.push(Bytes::from_static(b"first"));
        let answer = vec![
            payload(14, 1),
            first_12.clone(),
            payload(9, 1),
            payload(10, 1),
            payload(12, 2),
            payload(16, 1),
        ];
        let s = select(range, answer, HEADER, usize::MAX);
        assert_eq!(seqs(&s.payloads), [10, 12, 14]);
        assert_eq!(s.payloads[1], first_12, "the host's first copy wins");
        assert_eq!(s.dropped, 3);
        assert_eq!(s.unreadable, 2, "11 and 13; 15 may be the host's byte stop");
        assert!(!s.truncated);

        let s = select(range, vec![payload(3, 1)], HEADER, usize::MAX);
        assert!(s.payloads.is_empty());
        assert_eq!((s.dropped, s.unreadable), (1, 6));
    }

    /// The encoded length of the response carrying `payloads` (nonce 0,
    /// no channel).
    fn encoded(payloads: &[Payload]) -> usize {
        wire::state_response(0, Bytes::new(), payloads.to_vec()).encoded_len()
    }

    /// Nonce 0 and the empty channel are not encoded: only the tag.
    const HEADER: usize = 2;

    #[test]
    fn select_serves_a_prefix_but_always_the_first() {
        let range = SeqRange::new(0, 3).unwrap();
        let answer = || (0..=3).map(|seq| payload(seq, 10)).collect::<Vec<_>>();
        let two = encoded(&answer()[..2]);
        let s = select(range, answer(), HEADER, two);
        assert_eq!(seqs(&s.payloads), [0, 1]);
        assert!(s.truncated);
        let s = select(range, answer(), HEADER, encoded(&answer()[..3]) - 1);
        assert_eq!(seqs(&s.payloads), [0, 1], "one byte short of three");
        let s = select(range, answer(), HEADER, encoded(&answer()));
        assert_eq!(seqs(&s.payloads), [0, 1, 2, 3]);
        assert!(!s.truncated);
        let s = select(range, answer(), HEADER, 1);
        assert_eq!(seqs(&s.payloads), [0], "a block above the cap still goes");
        assert!(s.truncated);
        // A prefix: a small block after one that does not fit is not sent.
        let s = select(
            range,
            vec![payload(0, 5), payload(1, 50), payload(2, 1)],
            HEADER,
            30,
        );
        assert_eq!(seqs(&s.payloads), [0]);
    }

    #[test]
    fn header_is_the_message_without_its_content() {
        let message = wire::state_response(0, Bytes::new(), vec![]);
        let header = GossipMessage {
            content: None,
            ..message.clone()
        };
        assert_eq!(header.encoded_len(), HEADER);
        assert_eq!(response_len(HEADER, 0), message.encoded_len());
    }

    #[test]
    fn bucket_refills_exactly_and_forgets_full_idle_peers() {
        let t0 = epoch();
        let mut b: Buckets<u8> = Buckets::new(11 * NANO, 10);
        assert_eq!(b.tokens(&1, t0), 11 * NANO);
        b.charge(&1, t0, 11 * NANO, true);
        assert_eq!(b.tokens(&1, t0), 0);
        assert_eq!(b.tokens(&1, t0 + Duration::from_millis(100)), NANO);
        assert_eq!(b.tokens(&1, t0 + Duration::from_secs(5)), 11 * NANO);
        assert!(b.idle.is_empty(), "busy peers are not idle");
        b.finish(&1);
        let full_at = t0 + Duration::from_millis(1100);
        assert_eq!(b.peers[&1].full_at, Some(full_at));
        b.forget_full(full_at - Duration::from_nanos(1));
        assert_eq!(b.peers.len(), 1);
        b.forget_full(full_at);
        assert!(b.peers.is_empty() && b.idle.is_empty());
    }

    #[test]
    fn bucket_arithmetic_survives_fabric_limits() {
        let config = Config::fabric();
        let t0 = epoch();
        let mut b: Buckets<u8> = Buckets::new(
            u128::from(config.peer_burst_blocks) * NANO,
            u128::from(config.peer_blocks_per_second),
        );
        b.charge(&1, t0, u128::from(u64::MAX) * NANO, false);
        assert_eq!(b.tokens(&1, t0), 0);
        let far = t0 + Duration::from_secs(u32::MAX.into());
        assert_eq!(b.tokens(&1, far), b.capacity);
        // Full again within a second: forgotten.
        b.forget_full(t0 + Duration::from_secs(1));
        assert!(b.peers.is_empty());
    }

    #[test]
    fn ticket_order_is_deadline_order() {
        let config = Config {
            max_concurrent_reads: 3,
            ..Config::default()
        };
        let mut r: StateResponder<u8> = StateResponder::new(config, "ch".into(), 100).unwrap();
        let t0 = epoch();
        for (i, peer) in [1u8, 2, 3].into_iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let request = wire::state_request(1, "ch".into(), 0, 5);
            r.handle(
                now,
                ResponderEvent::Request {
                    from: peer,
                    message: request,
                },
            )
            .unwrap();
        }
        let deadlines: Vec<_> = r
            .reads
            .values()
            .map(|read| read.deadline.unwrap())
            .collect();
        assert!(deadlines.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(r.poll_timeout(), Some(deadlines[0]));
    }

    #[test]
    fn an_unbounded_read_timeout_never_expires() {
        let config = Config {
            read_timeout: Duration::MAX,
            ..Config::default()
        };
        let mut r: StateResponder<u8> = StateResponder::new(config, "ch".into(), 100).unwrap();
        let t0 = epoch();
        let request = wire::state_request(1, "ch".into(), 0, 5);
        r.handle(
            t0,
            ResponderEvent::Request {
                from: 1,
                message: request,
            },
        )
        .unwrap();
        assert_eq!(r.poll_timeout(), None);
        r.handle(t0 + Duration::from_secs(1 << 40), ResponderEvent::Timeout)
            .unwrap();
        assert_eq!(r.stats().reading, 1);
    }
}

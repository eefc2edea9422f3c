//! [`StateResponder`]: the serving side of state transfer, Fabric's
//! `handleStateRequest` as a sans-IO machine, with the admission control
//! Fabric lacks.

mod admission;
mod fair_queue;
mod priority;
mod reads;
mod types;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use crate::buffer::payload_size;
use crate::config::{Config, ConfigError};
use crate::range::SeqRange;
use crate::wire::gossip::{GossipMessage, Payload};
use crate::wire::{self, WireError};

use admission::{Buckets, Job, Queue, EMPTY_RESPONSE_COST, NANO};
use fair_queue::{Holder, ReadStarts};
use priority::{Asked, Priorities};
use reads::{response_len, select, Read, Reads};
pub use types::{RequestError, ResponderAction, ResponderEvent, ResponderStats, Ticket};

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
///         ResponderAction::SendResponse { to, message, .. } => sent.push((to, message)),
///         ResponderAction::Dropped { .. } => {} // informational
///         ResponderAction::Promote { .. } => {} // one send class here
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
    /// The encoded length of a response's fields but its nonce and content
    /// (channel, tag): the same for every response.
    header_len: usize,
    height: u64,
    /// The latest `now` seen: an earlier one is clamped to it.
    now: Option<Instant>,
    next_ticket: u64,
    /// Reads handed to the host. Tickets are issued when a read starts,
    /// `now` never goes back and `read_timeout` is fixed, so ticket order is
    /// deadline order: the first entry expires first.
    reads: Reads<P>,
    /// Admitted requests waiting for a read slot. Non-empty only while
    /// every slot is taken.
    queue: Queue<P>,
    buckets: Buckets<P>,
    /// Busy replies per peer; `None` when `busy_reply_burst` is zero.
    busy: Option<Buckets<P>>,
    /// What each peer was served lately; who is in the background.
    priorities: Priorities<P>,
    /// Peers whose latest answer went to the background only because they
    /// waited behind a crowd's favoured peers: once the crowd is gone,
    /// [`ResponderAction::Promote`] tells the host.
    held_back: BTreeSet<P>,
    /// When each peer's latest read started, for the fair queue's turns;
    /// empty when it is off.
    read_starts: ReadStarts<P>,
    /// When idle peers' histories are next forgotten.
    forget_at: Option<Instant>,
    actions: VecDeque<Queued<P>>,
    stats: ResponderStats,
}

/// An action as queued: a response's message is made when it is polled.
/// A `GossipMessage` is 200 bytes, moved on every push and pop of the
/// queue; a flood pushes two actions per request.
#[derive(Debug, Clone)]
pub(crate) enum Queued<P> {
    Read {
        ticket: Ticket,
        to: P,
        range: SeqRange,
    },
    Send {
        to: P,
        nonce: u64,
        payloads: Vec<Payload>,
        background: bool,
        /// The response's encoded length, summed when its payloads were
        /// selected. Read by the simulator only.
        #[cfg_attr(not(feature = "sim"), allow(dead_code))]
        len: usize,
    },
    Dropped {
        to: P,
        nonce: u64,
        reason: RequestError,
    },
    Promote {
        to: P,
    },
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
            priorities: Priorities::new(config.background_repeaters, config.favoured_peers),
            held_back: BTreeSet::new(),
            read_starts: ReadStarts::new(),
            forget_at: None,
            config,
            header_len: GossipMessage {
                content: None,
                ..wire::state_response(0, channel.clone(), Vec::new())
            }
            .encoded_len(),
            channel,
            height,
            now: None,
            next_ticket: 0,
            reads: Reads::new(),
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
        self.input(now, |r, now| match event {
            ResponderEvent::Request { from, message } => r.on_request(now, from, Ok(&message)),
            ResponderEvent::BlocksRead { ticket, payloads } => {
                r.on_blocks_read(now, ticket, payloads)
            }
            ResponderEvent::Height(height) => {
                r.height = height;
                Ok(())
            }
            ResponderEvent::PeerDisconnected { peer } => {
                r.on_disconnected(&peer);
                Ok(())
            }
            // `advance` did the work.
            ResponderEvent::Timeout => Ok(()),
        })
    }

    /// Every input: the clock advanced first, then `handle`, then what a
    /// crowd held back let go if the crowd is gone.
    fn input(
        &mut self,
        now: Instant,
        handle: impl FnOnce(&mut Self, Instant) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        let now = self.advance(now);
        let result = handle(self, now);
        self.release_held_back(now);
        result
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
        self.input(now, |r, now| {
            let message = wire::decode_gossip_message(bytes, r.config.max_message_size);
            r.on_request(now, from, message.as_ref().map_err(Clone::clone))
        })
    }

    /// Decodes an `Envelope` (what Fabric's gossip stream carries; at most
    /// `max_message_size` bytes), takes the `GossipMessage` out of it as
    /// [`wire::unwrap_envelope`] does and handles it as
    /// [`ResponderEvent::Request`]. Bytes that decode as neither are a
    /// [`RequestError::Malformed`] request.
    pub fn handle_envelope_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), RequestError> {
        self.input(now, |r, now| {
            let max = r.config.max_message_size;
            let message =
                wire::decode_envelope(bytes, max).and_then(|e| wire::unwrap_envelope(&e, max));
            r.on_request(now, from, message.as_ref().map_err(Clone::clone))
        })
    }

    /// [`handle`](Self::handle) of a [`ResponderEvent::Request`], the message
    /// borrowed: the simulator feeds a flood's requests from one message
    /// it rewrites, instead of building and moving one per request.
    #[cfg(feature = "sim")]
    pub(crate) fn handle_request(
        &mut self,
        now: Instant,
        from: P,
        message: &GossipMessage,
    ) -> Result<(), RequestError> {
        self.input(now, |r, now| r.on_request(now, from, Ok(message)))
    }

    /// [`handle`](Self::handle) of a [`ResponderEvent::BlocksRead`]: the
    /// simulator answers a flood's every read, and an event is a 200-byte
    /// enum (a request's message) to build and move for each.
    #[cfg(feature = "sim")]
    pub(crate) fn handle_blocks_read(
        &mut self,
        now: Instant,
        ticket: Ticket,
        payloads: Vec<Payload>,
    ) -> Result<(), RequestError> {
        self.input(now, |r, now| r.on_blocks_read(now, ticket, payloads))
    }

    /// The byte cap of a read's answer, as [`ResponderAction::ReadBlocks`]
    /// gives it.
    #[cfg(feature = "sim")]
    pub(crate) fn max_read_bytes(&self) -> usize {
        self.config.max_response_bytes
    }

    /// The next action to carry out; call until `None` after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<ResponderAction<P>> {
        let queued = self.actions.pop_front()?;
        Some(self.action(queued))
    }

    /// The next action as queued, a response still its nonce and
    /// payloads: the simulator makes a message only of the responses it
    /// sends as one (a flooder's go as their length alone).
    #[cfg(feature = "sim")]
    pub(crate) fn poll_queued(&mut self) -> Option<Queued<P>> {
        self.actions.pop_front()
    }

    /// The action `queued` stands for.
    pub(crate) fn action(&self, queued: Queued<P>) -> ResponderAction<P> {
        match queued {
            Queued::Read { ticket, to, range } => ResponderAction::ReadBlocks {
                ticket,
                to,
                range,
                max_bytes: self.config.max_response_bytes,
            },
            Queued::Send {
                to,
                nonce,
                payloads,
                background,
                ..
            } => ResponderAction::SendResponse {
                to,
                message: wire::state_response(nonce, self.channel.clone(), payloads),
                background,
            },
            Queued::Dropped { to, nonce, reason } => ResponderAction::Dropped { to, nonce, reason },
            Queued::Promote { to } => ResponderAction::Promote { to },
        }
    }

    /// When to handle a [`ResponderEvent::Timeout`]: the earliest deadline
    /// of an outstanding read or of the oldest queued request's wait, if
    /// any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let read = self.reads.first().and_then(|read| read.deadline);
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
                + self.busy.as_ref().map_or(0, |busy| busy.peers.len())
                + self.priorities.len()
                + self.read_starts.len(),
            background_peers: self.priorities.background_count(),
            ..self.stats.clone()
        }
    }

    /// Requests queued and reads in progress: [`stats`](Self::stats)'s
    /// `queued` and `reading` without the copy of every counter, for the
    /// simulator's peaks, read after each of a flood's requests.
    #[cfg(feature = "sim")]
    pub(crate) fn load(&self) -> (usize, usize) {
        (self.queue.len(), self.reads.len())
    }

    /// Whether `peer` repeats itself: most of its recent requests asked
    /// for blocks we had just served it, as a flood does (a peer catching
    /// up asks for each block about once). It may hold an eighth of the
    /// others' requests, and its reads start only when no other peer has
    /// one waiting. Off in the Fabric preset
    /// (`Config::background_repeaters`).
    pub fn is_repeater(&self, peer: &P) -> bool {
        self.priorities.is_background(peer)
    }

    /// Whether an answer to `peer` made now goes in the background: it is
    /// a repeater ([`is_repeater`](Self::is_repeater)), or it waits behind
    /// a crowd's favoured peers (`Config::favoured_peers`). A host whose
    /// transport can should send such answers only from spare capacity (a
    /// low-priority send queue): serving them in turn with everyone's
    /// would still give a flooder its share of our uplink.
    pub fn is_background(&self, peer: &P) -> bool {
        self.is_repeater(peer) || self.priorities.is_later(peer)
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
        self.priorities.advance(now);
        while let Some(read) = self.reads.first() {
            if read.deadline.is_none_or(|deadline| deadline > now) {
                break;
            }
            let Some(read) = self.reads.pop_first() else {
                break;
            };
            self.stats.expired_reads += 1;
            emit!(DEBUG, peer = ?read.job.from, nonce = read.job.nonce, "read abandoned after read_timeout");
            if !read.orphaned {
                self.buckets.finish(&read.job.from);
                self.not_served(&read.job);
            }
            self.actions.push_back(Queued::Dropped {
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
            emit!(DEBUG, peer = ?job.from, nonce = job.nonce, "queued request dropped as stale");
            self.buckets.finish(&job.from);
            self.not_served(&job);
            self.actions.push_back(Queued::Dropped {
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
        if self.forget_at.is_none_or(|at| at <= now) {
            // Once a second: the histories expire by the minute.
            self.priorities.forget_idle(now);
            // Bounded by the peers remembered, as the histories are.
            let priorities = &self.priorities;
            self.held_back.retain(|peer| priorities.knows(peer));
            self.read_starts.forget_old(now);
            self.forget_at = now.checked_add(std::time::Duration::from_secs(1));
        }
        self.start_reads(now);
        now
    }

    fn on_request(
        &mut self,
        now: Instant,
        from: P,
        message: Result<&GossipMessage, WireError>,
    ) -> Result<(), RequestError> {
        self.stats.requests += 1;
        let nonce = message.as_ref().map_or(0, |message| message.nonce);
        let result = message
            .map_err(RequestError::from)
            .and_then(|message| self.admit(now, from.clone(), message));
        if let Err(error) = &result {
            emit!(DEBUG, peer = ?from, nonce, %error, "request refused");
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
        if let Err(
            RequestError::TooManyRequests | RequestError::RateLimited | RequestError::QueueFull,
        ) = &result
        {
            // A busy reply saves an honest requester a timeout; a flooder
            // gets nothing but silence.
            if !self.priorities.is_background(&from) {
                self.busy_reply(now, from, nonce);
            }
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
            self.respond(from, message.nonce, Vec::new(), 0, 0);
            return Ok(());
        }
        // Our last block is height - 1; Fabric clamps to `height` and then
        // fails to read that block. `start < height`, so this is never None.
        let range = SeqRange::new(start, end.min(self.height - 1)).ok_or(invalid)?;

        if self.buckets.active(&from) >= self.request_limit(&from) {
            return Err(RequestError::TooManyRequests);
        }
        let cost = u128::from(range.len()) * NANO;
        if self.buckets.tokens(&from, now) < cost {
            return Err(RequestError::RateLimited);
        }
        let slot_free = self.reads.len() < self.config.max_concurrent_reads;
        if !slot_free && self.queue.len() >= self.config.max_queued_requests {
            // The last check: a place is made only for a request admitted.
            let victim = self
                .fair_queue_victim(now, &from)
                .ok_or(RequestError::QueueFull)?;
            self.evict_newest(now, &victim);
        }
        self.buckets.charge(&from, now, cost, true);
        let asked = self.priorities.on_request(&from, range, now);
        if asked.is_repeat() {
            self.stats.repeat_requests += 1;
        }
        let job = Job {
            from,
            nonce: message.nonce,
            range,
            admitted: now,
            fresh: asked == Asked::Fresh,
        };
        let slots = self.config.max_concurrent_reads;
        if self.queue.is_empty()
            && self.reads.len() < slots
            && may_read(
                slots,
                &self.reads,
                &self.priorities,
                &job.from,
                self.background_reads(),
            )
        {
            // What `start_reads` would do with the job alone in the queue,
            // without the queue's bookkeeping: the usual case, on every
            // request of a flood.
            self.queue.pass(&job.from);
            self.start_read(now, job);
        } else {
            self.queue.push(job);
            self.start_reads(now);
        }
        Ok(())
    }

    /// Whose queued request a request of `from` may take the place of in a
    /// full queue ([`Config::fair_queue`]); see [`fair_queue`] for the
    /// rules. Runs only when the queue is full: its cost is the peers
    /// queued times the read slots.
    fn fair_queue_victim(&self, now: Instant, from: &P) -> Option<P> {
        if !self.config.fair_queue {
            return None;
        }
        let holder = |peer, queued, newest| Holder {
            peer,
            held: queued + self.reading_for(peer),
            newest,
            background: self.priorities.is_background(peer),
            latest_read: self.read_starts.latest(peer, now),
        };
        let newcomer = holder(from, self.queue.queued_of(from), 0);
        let holders = self
            .queue
            .queued_peers()
            .map(|(peer, queued, newest)| holder(peer, queued, newest));
        fair_queue::victim(newcomer, holders).cloned()
    }

    /// Reads under way for `peer` (not orphaned by a disconnection).
    fn reading_for(&self, peer: &P) -> usize {
        reading_for(&self.reads, peer)
    }

    /// Drops `victim`'s newest queued request to make room, refused as a
    /// full queue refuses: a busy reply unless the peer is in the
    /// background.
    fn evict_newest(&mut self, now: Instant, victim: &P) {
        let Some(job) = self.queue.pop_newest_of(victim) else {
            return;
        };
        self.stats.evicted += 1;
        self.buckets.finish(victim);
        self.not_served(&job);
        emit!(DEBUG, peer = ?victim, nonce = job.nonce, "queued request evicted");
        if !self.priorities.is_background(victim) {
            self.busy_reply(now, job.from, job.nonce);
        }
    }

    /// `job` is dropped unread: asking for its blocks again is no repeat
    /// (an honest peer whose requests are displaced or expire asks again,
    /// and would drift into the background). Only a fresh job's blocks are
    /// taken back: one overlapping what was served before would take that
    /// back too, and a flooder would look less like one.
    fn not_served(&mut self, job: &Job<P>) {
        if job.fresh {
            let range = job.range;
            self.priorities
                .on_not_served(&job.from, range.start(), range.end());
        }
    }

    /// The blocks of `job`'s range that its response (`payloads`) leaves
    /// out (holes the host could not read, the tail cut by the byte cap)
    /// were not served: taken back, if `job` was fresh (see `not_served`).
    fn take_back_unsent(&mut self, job: &Job<P>, payloads: &[Payload]) {
        if !job.fresh {
            return;
        }
        let (start, end) = (job.range.start(), job.range.end());
        let mut next = start;
        match payloads.last() {
            // Selected payloads are distinct and ascending inside the range:
            // as many as the numbers from its start to the last are all of
            // them, with no hole but the tail (a flood's every read).
            Some(last) if last.seq_num - start == payloads.len() as u64 - 1 => {
                next = last.seq_num.saturating_add(1);
            }
            _ => {
                for seq in payloads.iter().map(|p| p.seq_num) {
                    if seq > next {
                        self.priorities.on_not_served(&job.from, next, seq - 1);
                    }
                    next = seq.saturating_add(1);
                }
            }
        }
        if end.checked_add(1).is_some_and(|after| after > next) {
            self.priorities.on_not_served(&job.from, next, end);
        }
    }

    /// Drops `peer`'s queued jobs and orphans its reads. Both stop counting
    /// against the peer at once: a reconnected peer is a new process, with
    /// its own window of requests.
    fn on_disconnected(&mut self, peer: &P) {
        self.priorities.forget(peer);
        // Its connection's queues are gone with it.
        self.held_back.remove(peer);
        emit!(DEBUG, ?peer, "peer disconnected");
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

    /// Requests of `peer` it may have queued or being read: an eighth of
    /// `max_requests_per_peer` in the background, so that a flooder holds
    /// little of the queue (and of a slow host's reads) while it lasts.
    fn request_limit(&self, peer: &P) -> usize {
        if self.priorities.is_background(peer) {
            (self.config.max_requests_per_peer / 8).max(1)
        } else {
            self.config.max_requests_per_peer
        }
    }

    /// Hands queued requests to the host while read slots are free. A peer
    /// holds three quarters of the slots at most (and leaves at least one
    /// to the others whenever there are two), and peers in the
    /// background a quarter together, only when no other peer has a read
    /// waiting: on a host whose reads take seconds, a slot is held that
    /// long, and a flood that came first would hold them all.
    fn start_reads(&mut self, now: Instant) {
        let slots = self.config.max_concurrent_reads;
        if self.queue.is_empty() || self.reads.len() >= slots {
            // The usual cases: nothing waits for a slot, or (a slow host
            // under a flood) no slot is free.
            return;
        }
        let mut background_reads = self.background_reads();
        while self.reads.len() < slots {
            let (reads, priorities) = (&self.reads, &self.priorities);
            let allowed = |peer: &P| may_read(slots, reads, priorities, peer, background_reads);
            let Some(job) = self
                .queue
                .pop_next(|peer| priorities.is_background(peer), allowed)
            else {
                break;
            };
            if priorities.is_background(&job.from) {
                background_reads += 1;
            }
            self.start_read(now, job);
        }
    }

    /// Reads of peers in the background. A peer's own reads are counted in
    /// `reads` when asked: at most `max_concurrent_reads` of them, where a
    /// map by peer cost an allocation for every read started.
    fn background_reads(&self) -> usize {
        self.reads
            .values()
            .filter(|read| !read.orphaned && self.priorities.is_background(&read.job.from))
            .count()
    }

    /// Hands `job` to the host as a read.
    fn start_read(&mut self, now: Instant, job: Job<P>) {
        if self.config.fair_queue {
            self.read_starts.record(&job.from, now);
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.actions.push_back(Queued::Read {
            ticket,
            to: job.from.clone(),
            range: job.range,
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
        // Without its content: `response_len` adds the oneof field back.
        let header = self.header_len + nonce_len(read.job.nonce);
        let selection = select(
            read.job.range,
            payloads,
            header,
            self.config.max_response_bytes,
        );
        self.stats.dropped_payloads += selection.dropped;
        self.stats.skipped_unreadable += selection.unreadable;
        self.stats.truncated_by_bytes += u64::from(selection.truncated);
        self.take_back_unsent(&read.job, &selection.payloads);
        self.respond(
            read.job.from,
            read.job.nonce,
            selection.payloads,
            selection.body,
            selection.bytes,
        );
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
            emit!(DEBUG, peer = ?to, nonce, "busy reply suppressed");
            return;
        };
        if busy.tokens(&to, now) < NANO {
            self.stats.busy_suppressed += 1;
            emit!(DEBUG, peer = ?to, nonce, "busy reply suppressed");
            return;
        }
        busy.charge(&to, now, NANO, false);
        self.stats.busy_replies += 1;
        emit!(DEBUG, peer = ?to, nonce, "busy reply");
        self.send(to, nonce, Vec::new(), 0);
    }

    /// Queues a response with `payloads` to `to`'s request `nonce`;
    /// `body`: their `RemoteStateResponse`'s encoded length.
    fn send(&mut self, to: P, nonce: u64, payloads: Vec<Payload>, body: usize) {
        let repeater = self.priorities.is_background(&to);
        let background = repeater || self.priorities.is_later(&to);
        if background && !repeater {
            self.held_back.insert(to.clone());
        } else {
            self.held_back.remove(&to);
        }
        let len = response_len(self.header_len + nonce_len(nonce), body);
        debug_assert_eq!(
            len,
            wire::state_response(nonce, self.channel.clone(), payloads.clone()).encoded_len(),
            "a response's summed length"
        );
        self.actions.push_back(Queued::Send {
            to,
            nonce,
            payloads,
            background,
            len,
        });
    }

    /// Once no crowd is catching up from us (counting the peers held back,
    /// which wait for our answers rather than ask), tells the host that
    /// the held-back peers' answers still queued in the background may go
    /// as any other: the favoured peers they waited behind are gone. Their
    /// answers keep their class otherwise until the next is sent, and a
    /// peer whose window is full sends no request for one. Four flooding
    /// identities that came first held a crowd's favoured places until
    /// their random ranges overlapped, and the three laggers' answers queued
    /// meanwhile left the only source 1 s later (sweep seed 2 925 without
    /// loss: 1.96 s flooded against 0.44 s, 0.74 s with this; crowd
    /// unchanged, as it stays a crowd). Counting only the peers that asked
    /// within 0.5 s, as [`Priorities::is_later`] does, released them as
    /// the favoured laggers paused: crowd 21–27× Kumar–Ross, not 8.4–8.8.
    ///
    /// A held-back peer counts only while it asked within `read_timeout`
    /// (our requester's longest deadline): one that has its answers and
    /// finished would keep a crowd alive for a minute, until forgotten.
    /// Cost: nothing while none is held back; else a scan of the peers
    /// remembered (a crowd's, a flood's few identities) per input.
    fn release_held_back(&mut self, now: Instant) {
        if self.held_back.is_empty() {
            return;
        }
        let held_back = &self.held_back;
        let wait = |peer: &P| held_back.contains(peer);
        if self
            .priorities
            .crowded(now, self.config.read_timeout, &wait)
        {
            return;
        }
        for to in std::mem::take(&mut self.held_back) {
            if !self.priorities.is_background(&to) {
                self.actions.push_back(Queued::Promote { to });
            }
        }
    }

    /// Queues a response with `payloads`, `body` as in [`send`](Self::send),
    /// `bytes` their blocks and private data (summed when selected).
    fn respond(&mut self, to: P, nonce: u64, payloads: Vec<Payload>, body: usize, bytes: usize) {
        debug_assert_eq!(bytes, payloads.iter().map(payload_size).sum::<usize>());
        self.stats.responses += 1;
        if payloads.is_empty() {
            self.stats.empty_responses += 1;
        }
        self.stats.blocks_served += payloads.len() as u64;
        self.stats.bytes_served = self.stats.bytes_served.saturating_add(bytes as u64);
        self.send(to, nonce, payloads, body);
    }
}

/// The encoded length of a message's nonce field: none if zero (proto3
/// leaves a default out), else its key and varint.
fn nonce_len(nonce: u64) -> usize {
    if nonce == 0 {
        0
    } else {
        prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(nonce)
    }
}

/// Reads in `reads` under way for `peer`, not orphaned by a disconnection.
fn reading_for<P: Ord>(reads: &Reads<P>, peer: &P) -> usize {
    reads
        .values()
        .filter(|read| !read.orphaned && read.job.from.cmp(peer).is_eq())
        .count()
}

/// Whether `peer` may have one more of `slots` reads, `reads` being under
/// way, `background_reads` of them for peers in the background (see
/// [`StateResponder::start_reads`]).
fn may_read<P: Clone + Ord>(
    slots: usize,
    reads: &Reads<P>,
    priorities: &Priorities<P>,
    peer: &P,
    background_reads: usize,
) -> bool {
    // Every other peer keeps at least one slot: `slots - slots / 4` left
    // none with two or three slots, and a flooder held both reads of a
    // host with two (sweep seed 49 425: three laggers stuck for 1 500 s).
    let per_peer = (slots - (slots / 4).max(1)).max(1);
    let background_slots = (slots / 4).max(1);
    reading_for(reads, peer) < per_peer
        && (background_reads < background_slots || !priorities.is_background(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The test is the host: it may read the clock, the machine may not.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn header_len_is_a_response_without_its_content() {
        let r: StateResponder<u8> = StateResponder::new(Config::default(), "ch".into(), 1).unwrap();
        for nonce in [0, 1, 127, 128, 1 << 35, u64::MAX] {
            let header = GossipMessage {
                content: None,
                ..wire::state_response(nonce, "ch".into(), Vec::new())
            };
            assert_eq!(r.header_len + nonce_len(nonce), header.encoded_len());
        }
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

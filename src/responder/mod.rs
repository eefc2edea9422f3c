//! [`StateResponder`]: the serving side of state transfer, Fabric's
//! `handleStateRequest` as a sans-IO machine, with the admission control
//! Fabric lacks.

mod admission;
mod fair_queue;
mod priority;
mod reads;
mod requests;
mod serving;
mod types;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use crate::config::{Config, ConfigError};
use crate::range::SeqRange;
use crate::wire;
use crate::wire::gossip::{GossipMessage, Payload};

use admission::{Buckets, Job, Queue, NANO};
use fair_queue::ReadStarts;
use priority::Priorities;
use reads::Reads;
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
                // Its orphaned reads no longer count against the
                // background's slots: a repeater's queued request may start
                // (the fuzz harness found one waiting by a free slot).
                r.start_reads(now);
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
            background_peers: self.priorities.repeater_count(),
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
        self.priorities.is_repeater(peer)
    }

    /// Whether an answer to `peer` made now goes in the background: it is
    /// a repeater ([`is_repeater`](Self::is_repeater)), or it waits behind
    /// a crowd's favoured peers (`Config::favoured_peers`). A host whose
    /// transport can should send such answers only from spare capacity (a
    /// low-priority send queue): serving them in turn with everyone's
    /// would still give a flooder its share of our uplink.
    pub fn is_background(&self, peer: &P) -> bool {
        self.is_repeater(peer)
            || self
                .now
                .is_some_and(|now| self.priorities.is_later(peer, now))
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
}

#[cfg(test)]
mod tests {
    use super::serving::nonce_len;
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

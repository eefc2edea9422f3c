//! Incoming requests: validation, admission or a typed refusal (with a
//! busy reply where it saves an honest requester a timeout), eviction from
//! a full queue, and a peer's disconnection.

use std::fmt;
use std::time::Instant;

use super::admission::{Job, EMPTY_RESPONSE_COST, NANO};
use super::fair_queue::{self, Holder};
use super::priority::Asked;
use super::serving::may_read;
use super::{RequestError, StateResponder};
use crate::range::SeqRange;
use crate::wire::gossip::GossipMessage;
use crate::wire::{self, WireError};

impl<P: Clone + Ord + fmt::Debug> StateResponder<P> {
    pub(super) fn on_request(
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
            if !self.priorities.is_repeater(&from) {
                self.busy_reply(now, from, nonce);
            }
        }
        result
    }

    /// Validates a request and admits it, or says why not. Every check
    /// comes before any state changes, so a refusal costs the peer nothing.
    pub(super) fn admit(
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
    /// full queue ([`Config::fair_queue`](crate::Config::fair_queue)); see [`fair_queue`] for the
    /// rules. Runs only when the queue is full: its cost is the peers
    /// queued times the read slots.
    pub(super) fn fair_queue_victim(&self, now: Instant, from: &P) -> Option<P> {
        if !self.config.fair_queue {
            return None;
        }
        let holder = |peer, queued, newest| Holder {
            peer,
            held: queued + self.reading_for(peer),
            newest,
            background: self.priorities.is_repeater(peer),
            latest_read: self.read_starts.latest(peer, now),
        };
        let newcomer = holder(from, self.queue.queued_of(from), 0);
        let holders = self
            .queue
            .queued_peers()
            .map(|(peer, queued, newest)| holder(peer, queued, newest));
        fair_queue::victim(newcomer, holders).cloned()
    }

    /// Drops `victim`'s newest queued request to make room, refused as a
    /// full queue refuses: a busy reply unless the peer is in the
    /// background.
    pub(super) fn evict_newest(&mut self, now: Instant, victim: &P) {
        let Some(job) = self.queue.pop_newest_of(victim) else {
            return;
        };
        self.stats.evicted += 1;
        self.buckets.finish(victim);
        self.not_served(&job);
        emit!(DEBUG, peer = ?victim, nonce = job.nonce, "queued request evicted");
        if !self.priorities.is_repeater(victim) {
            self.busy_reply(now, job.from, job.nonce);
        }
    }

    /// `job` is dropped unread: asking for its blocks again is no repeat
    /// (an honest peer whose requests are displaced or expire asks again,
    /// and would drift into the background). Only a fresh job's blocks are
    /// taken back: one overlapping what was served before would take that
    /// back too, and a flooder would look less like one.
    pub(super) fn not_served(&mut self, job: &Job<P>) {
        if job.fresh {
            let range = job.range;
            self.priorities
                .on_not_served(&job.from, range.start(), range.end());
        }
    }

    /// Drops `peer`'s queued jobs and orphans its reads. Both stop counting
    /// against the peer at once: a reconnected peer is a new process, with
    /// its own window of requests.
    pub(super) fn on_disconnected(&mut self, peer: &P) {
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
    pub(super) fn request_limit(&self, peer: &P) -> usize {
        if self.priorities.is_repeater(peer) {
            (self.config.max_requests_per_peer / 8).max(1)
        } else {
            self.config.max_requests_per_peer
        }
    }

    /// Answers a load refusal with an empty response, if the peer's budget
    /// allows: our requester and Fabric's both take an empty answer as "ask
    /// another peer now", which costs them a round trip instead of a
    /// timeout. Validation refusals stay silent, as Fabric's: they come
    /// from a broken or hostile peer, which a reply would not help.
    pub(super) fn busy_reply(&mut self, now: Instant, to: P, nonce: u64) {
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
}

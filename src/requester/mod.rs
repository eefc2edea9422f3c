//! [`AntiEntropy`]: the requester side of state transfer.

mod peers;
mod requests;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::{payload_size, PayloadBuffer};
use crate::config::{Config, ConfigError};
use crate::range::SeqRange;
use crate::wire::gossip::{GossipMessage, Payload};
use crate::wire::{self, block_number};
use peers::Peers;
use requests::{Attempt, AttemptState, Request, Requests};
pub use types::{
    Action, Event, EventError, GiveUpReason, IgnoredCounts, Origin, PeerState, PeerStats,
    ResponseError, Stats,
};

/// Why a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    First,
    /// After a failure; counts against `max_retries`.
    Retry,
    /// A duplicate for the range holding back the commit point; free.
    Hedge,
}

/// Whom a range can go to now.
enum Pick<P> {
    Peer(P),
    /// Peers advertise the range but none is free.
    Busy,
    /// No peer advertises the range.
    NoneEligible,
}

/// Hedges per request at most: bounds the sends of a range at
/// `max_retries + 1 + MAX_HEDGES`.
const MAX_HEDGES: u32 = 3;

/// A payload handed to the host and not yet committed.
#[derive(Debug, Clone)]
struct Delivered<P> {
    seq: u64,
    origin: Origin<P>,
    size: u64,
}

/// The requester: finds the blocks we lack, asks peers for them, and hands
/// them to the host strictly in order.
///
/// One engine, two presets: [`Config::fabric`] reproduces Fabric's
/// `antiEntropy` loop (a round every 10 s, one 11-block request in flight to
/// a random eligible peer, 3 s timeout, 4 sends then the round ends);
/// [`Config::default`] keeps many disjoint requests in flight across peers
/// within a window bounded in blocks and bytes, with adaptive deadlines,
/// benching of failing peers and a hedge for the range that holds back the
/// commit point.
///
/// # Driving it
///
/// Feed [`Event`]s to [`handle`](Self::handle) with the current time, then
/// drain [`poll_action`](Self::poll_action) until it returns `None`, then arm
/// a timer for [`poll_timeout`](Self::poll_timeout) and feed
/// [`Event::Timeout`] when it fires. Due deadlines are also processed by
/// every other event, so a late timer loses nothing.
///
/// # Guarantees, whatever peers send
///
/// - [`Action::AddPayload`] comes strictly in sequence order starting at the
///   initial height, each number once (after [`Event::Rejected`] delivery
///   resumes at the rejected number), and only from a peer that was asked
///   for a range holding it (or from the gossip path).
/// - Outstanding nonces are unique; outstanding ranges are disjoint,
///   non-empty, at most `batch_size + 1` long, and sent only to peers whose
///   advertised height exceeds their end.
/// - At most `max_in_flight` requests (and `max_in_flight_per_peer` waiting
///   sends to one peer; a send that timed out frees its slot but stays
///   answerable, so a slow peer may hold more) are outstanding; every requested block lies below
///   `committed + window_blocks`; payloads held out of order plus those
///   delivered and not committed stay within `window_blocks + block_buffer`
///   blocks and `window_bytes` plus one block.
#[derive(Debug)]
pub struct AntiEntropy<P> {
    config: Config,
    channel: Bytes,
    rng: fastrand::Rng,
    now: Instant,
    buffer: PayloadBuffer,
    committed: u64,
    uncommitted: VecDeque<Delivered<P>>,
    uncommitted_bytes: u64,
    peers: Peers<P>,
    requests: Requests<P>,
    /// The inclusive end of the active round's range.
    round_end: Option<u64>,
    /// When the next round starts, while none is active.
    next_round_at: Option<Instant>,
    /// Peers whose copy of a block was rejected, by block number.
    rejected_by: BTreeMap<u64, Vec<P>>,
    /// Who sent each payload held in `buffer`.
    origins: BTreeMap<u64, Origin<P>>,
    /// Running estimate of a payload's size, for the byte window.
    block_bytes_estimate: u64,
    actions: VecDeque<Action<P>>,
    stats: Stats<P>,
}

impl<P: Clone + Ord + std::fmt::Debug> AntiEntropy<P> {
    /// A requester for `channel` whose ledger holds `height` blocks (so block
    /// `height` is the first one fetched). `seed` drives every random choice
    /// (nonces, peer choice); `now` starts the round timer.
    ///
    /// Fabric panics on a ledger height of 0; here it is
    /// [`ConfigError::Zero`] naming `height`.
    pub fn new(
        config: Config,
        channel: Bytes,
        height: u64,
        seed: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if height == 0 {
            return Err(ConfigError::Zero { field: "height" });
        }
        let max_blocks = config.window_blocks.saturating_add(config.block_buffer);
        let buffer = PayloadBuffer::new(
            height,
            usize::try_from(max_blocks).unwrap_or(usize::MAX),
            usize::try_from(config.window_bytes).unwrap_or(usize::MAX),
        );
        let block_bytes_estimate =
            (config.window_bytes / config.window_blocks).clamp(1, config.max_message_size as u64);
        Ok(Self {
            next_round_at: now.checked_add(config.check_interval),
            config,
            channel,
            rng: fastrand::Rng::with_seed(seed),
            now,
            buffer,
            committed: height,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            peers: Peers::default(),
            requests: Requests::default(),
            round_end: None,
            rejected_by: BTreeMap::new(),
            origins: BTreeMap::new(),
            block_bytes_estimate,
            actions: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// Applies one input. Drain [`poll_action`](Self::poll_action) afterwards.
    ///
    /// An error means the input was refused and counted; the machine is
    /// consistent either way.
    pub fn handle(&mut self, now: Instant, event: Event<P>) -> Result<(), EventError> {
        let now = self.observe(now);
        self.expire(now);
        let result = match event {
            Event::Tick => {
                self.on_tick(now);
                Ok(())
            }
            Event::Membership(view) => {
                self.on_membership(now, view);
                Ok(())
            }
            Event::Response { from, message } => self
                .on_response(now, from, &message)
                .map_err(EventError::from),
            Event::Timeout => Ok(()),
            Event::GossipPayload(payload) => {
                self.on_gossip_payload(payload);
                Ok(())
            }
            Event::Committed { height } => self.on_committed(height),
            Event::Rejected { seq } => self.on_rejected(now, seq),
            Event::PeerDisconnected { peer } => {
                self.on_disconnected(now, &peer);
                Ok(())
            }
            Event::PeerConnected { peer } => {
                self.on_connected(now, &peer);
                Ok(())
            }
        };
        self.deliver();
        self.fill(now);
        // The event may have made another request the one holding back the
        // commit point, with its hedge already due: so that `poll_timeout`
        // never lies in the past, hedge it now.
        if self.hedge_due().is_some_and(|due| due <= now) {
            self.hedge(now);
        }
        result
    }

    /// Decodes a message received from `from` (refusing more than
    /// `max_message_size` bytes) and handles it as [`Event::Response`].
    pub fn handle_response_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), EventError> {
        match wire::decode_gossip_message(bytes, self.config.max_message_size) {
            Ok(message) => self.handle(now, Event::Response { from, message }),
            Err(error) => {
                // Still an input at `now`: due deadlines are processed.
                let _ = self.handle(now, Event::Timeout);
                self.stats.ignored.malformed += 1;
                Err(ResponseError::Wire(error).into())
            }
        }
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When to feed [`Event::Timeout`] next: the earliest of the next round,
    /// a request's deadline and a hedge.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self
            .requests
            .iter()
            .flat_map(|(_, request)| request.waiting().filter_map(|attempt| attempt.deadline));
        deadlines
            .chain(self.next_round_at)
            .chain(self.hedge_due())
            .min()
    }

    /// A snapshot of state and counters.
    pub fn stats(&self) -> Stats<P> {
        let mut stats = self.stats.clone();
        stats.height = self.buffer.next();
        stats.committed = self.committed;
        stats.target = self.peers.target();
        stats.in_flight = self.requests.len();
        stats.buffered_blocks = self.buffer.len();
        stats.buffered_bytes = self.buffer.bytes();
        stats.uncommitted_blocks = self.uncommitted.len() as u64;
        stats.uncommitted_bytes = self.uncommitted_bytes;
        stats.peers = self
            .peers
            .iter()
            .map(|(id, peer)| {
                let mut record = peer.stats.clone();
                record.in_flight = peer.in_flight;
                record.srtt = peer.rtt.srtt();
                (id.clone(), record)
            })
            .collect();
        stats
    }

    /// The next block to deliver.
    pub fn height(&self) -> u64 {
        self.buffer.next()
    }

    /// The host's committed height, as last reported.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The best height advertised by a peer that may be asked.
    pub fn target(&self) -> u64 {
        self.peers.target()
    }

    /// Requests (ranges) outstanding.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn observe(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    // --- timers -------------------------------------------------------------

    fn expire(&mut self, now: Instant) {
        if self.next_round_at.is_some_and(|at| at <= now) {
            self.next_round_at = None;
            self.start_round(now);
        }
        // Only requests with a send past its deadline; on most events there
        // is none, and this allocates nothing.
        let due: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, request)| {
                request
                    .waiting()
                    .any(|attempt| attempt.deadline.is_some_and(|d| d <= now))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(request) = self.requests.get_mut(id) else {
                continue;
            };
            let mut expired = Vec::new();
            for attempt in &mut request.attempts {
                if attempt.state == AttemptState::Waiting
                    && attempt.deadline.is_some_and(|d| d <= now)
                {
                    attempt.state = AttemptState::TimedOut;
                    expired.push(attempt.peer.clone());
                }
            }
            if expired.is_empty() {
                continue;
            }
            for peer_id in &expired {
                self.stats.timeouts += 1;
                if let Some(peer) = self.peers.get_mut(peer_id) {
                    peer.in_flight -= 1;
                    peer.stats.timeouts += 1;
                    peer.timed_out();
                    peer.failed(now, 1, self.config.peer_selection);
                }
            }
            self.retry_if_idle(now, id);
        }
        if self.hedge_due().is_some_and(|due| due <= now) {
            self.hedge(now);
        }
    }

    /// When the request holding back the commit point should be hedged: once
    /// its only waiting send is older than `max(hedge_after, 2·SRTT)` of the
    /// peer asked, at most [`MAX_HEDGES`] times per request.
    fn hedge_due(&self) -> Option<Instant> {
        let hedge_after = self.config.hedge_after?;
        let (_, request) = self.requests.covering(self.buffer.next())?;
        if request.hedges >= MAX_HEDGES {
            return None;
        }
        let mut waiting = request.waiting();
        let attempt = waiting.next()?;
        if waiting.next().is_some() {
            return None; // a hedge is already racing it
        }
        let srtt = self
            .peers
            .get(&attempt.peer)
            .and_then(|peer| peer.rtt.srtt())
            .unwrap_or(Duration::ZERO);
        let due = attempt.sent_at.checked_add(hedge_after.max(srtt * 2))?;
        Some(
            request
                .hedge_not_before
                .map_or(due, |not_before| due.max(not_before)),
        )
    }

    /// Asks another peer for the range holding back the commit point, so a
    /// slow, silent or lying peer cannot stall the window. If no other peer
    /// is free, tries again `hedge_after` later.
    fn hedge(&mut self, now: Instant) {
        let Some((id, request)) = self.requests.covering(self.buffer.next()) else {
            return;
        };
        let end = request.range.end();
        let asked: Vec<P> = request.attempts.iter().map(|a| a.peer.clone()).collect();
        let range = request.range;
        // A hedge goes only to a peer not already working on the range, and
        // never to one whose copy of a block in it was rejected.
        let mut exclude: Vec<P> = request.waiting().map(|a| a.peer.clone()).collect();
        exclude.extend(self.rejected_in(range));
        let choice = self
            .peers
            .choose(&self.config, end, &asked, &exclude, now, &mut self.rng)
            .filter(|peer| !exclude.contains(peer));
        match choice {
            Some(peer) => {
                if let Some(request) = self.requests.get_mut(id) {
                    request.hedges += 1;
                }
                self.stats.hedges += 1;
                self.send_attempt(now, id, peer, Send::Hedge);
            }
            None => {
                if let (Some(request), Some(hedge_after)) =
                    (self.requests.get_mut(id), self.config.hedge_after)
                {
                    request.hedge_not_before = now.checked_add(hedge_after);
                }
            }
        }
    }

    // --- rounds -------------------------------------------------------------

    fn on_tick(&mut self, now: Instant) {
        match self.round_end {
            None => {
                self.next_round_at = None;
                self.start_round(now);
            }
            Some(_) => self.extend_round(),
        }
    }

    fn start_round(&mut self, now: Instant) {
        let target = self.peers.target();
        if target > self.buffer.next() {
            self.stats.rounds += 1;
            self.round_end = Some(target - 1);
        } else {
            self.next_round_at = now.checked_add(self.config.check_interval);
        }
    }

    /// Our engine keeps a round going while peers advance; Fabric's range is
    /// fixed when its round starts.
    fn extend_round(&mut self) {
        if !self.config.round_on_membership {
            return;
        }
        if let Some(end) = self.round_end.as_mut() {
            *end = (*end).max(self.peers.target().saturating_sub(1));
        }
    }

    fn end_round(&mut self, now: Instant) {
        self.round_end = None;
        self.next_round_at = now.checked_add(self.config.check_interval);
    }

    fn give_up(&mut self, now: Instant, range: SeqRange, reason: GiveUpReason) {
        self.stats.give_ups += 1;
        self.actions.push_back(Action::GiveUp { range, reason });
        self.end_round(now);
    }

    // --- membership -----------------------------------------------------------

    fn on_membership(&mut self, now: Instant, view: Vec<PeerState<P>>) {
        let departed = self.peers.replace(view);
        self.cancel_sends_to(now, &departed);
        self.round_on_news(now);
    }

    fn on_disconnected(&mut self, now: Instant, peer: &P) {
        let Some(record) = self.peers.get_mut(peer) else {
            return;
        };
        record.connected = false;
        self.cancel_sends_to(now, std::slice::from_ref(peer));
    }

    fn on_connected(&mut self, now: Instant, peer: &P) {
        let Some(record) = self.peers.get_mut(peer) else {
            return;
        };
        record.reconnected();
        self.round_on_news(now);
    }

    /// A peer ahead may have appeared: keep the round going, or start one.
    fn round_on_news(&mut self, now: Instant) {
        match self.round_end {
            Some(_) => self.extend_round(),
            None if self.config.round_on_membership && self.peers.target() > self.buffer.next() => {
                self.next_round_at = None;
                self.start_round(now);
            }
            None => {}
        }
    }

    /// Sends to `gone` peers end without blame; their ranges move on at once.
    fn cancel_sends_to(&mut self, now: Instant, gone: &[P]) {
        if !gone.is_empty() {
            let departed = gone;
            for id in self.requests.ids() {
                let Some(request) = self.requests.get_mut(id) else {
                    continue;
                };
                let mut cancelled = Vec::new();
                for attempt in &mut request.attempts {
                    if attempt.state == AttemptState::Waiting && departed.contains(&attempt.peer) {
                        attempt.state = AttemptState::Failed;
                        cancelled.push(attempt.peer.clone());
                    }
                }
                for peer_id in &cancelled {
                    // A peer that left the channel keeps its record: free its slot.
                    if let Some(peer) = self.peers.get_mut(peer_id) {
                        peer.in_flight -= 1;
                    }
                }
                if !cancelled.is_empty() {
                    self.retry_if_idle(now, id);
                }
            }
        }
    }

    // --- requests ---------------------------------------------------------------

    /// Sends requests while the round has missing blocks, the window has
    /// room and peers have free slots.
    fn fill(&mut self, now: Instant) {
        self.drop_obsolete();
        self.resend_idle(now);
        let Some(end) = self.round_end else {
            return;
        };
        if self.buffer.next() > end {
            self.end_round(now);
            return;
        }
        while self.requests.len() < self.config.max_in_flight {
            let Some(range) = self.next_missing(end) else {
                return;
            };
            if !self.window_admits(range) {
                return;
            }
            let peer = match self.pick(now, range, &[]) {
                Pick::Peer(peer) => peer,
                Pick::Busy if !self.nothing_waiting() => return,
                // Nothing in flight will wake us: end the round and let the
                // round timer try again.
                Pick::Busy | Pick::NoneEligible => {
                    self.give_up(now, range, GiveUpReason::NoEligiblePeer);
                    return;
                }
            };
            let id = self.requests.insert(range);
            self.send_attempt(now, id, peer, Send::First);
        }
    }

    /// Whether every block of `range` is delivered or held already.
    fn obsolete(&self, range: SeqRange) -> bool {
        let from = range.start().max(self.buffer.next());
        from > range.end()
            || self.buffer.stored_in(from, range.end()).count() as u64 == range.end() - from + 1
    }

    /// Drops requests whose blocks all came another way (gossip, a hedge's
    /// twin, a rewind), freeing their slots without blame.
    fn drop_obsolete(&mut self) {
        let obsolete: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, request)| self.obsolete(request.range))
            .map(|(id, _)| *id)
            .collect();
        for id in obsolete {
            self.drop_request(id);
        }
    }

    /// The first run of blocks from `next` that is neither held nor
    /// requested, at most `batch_size + 1` long and within `..=end`.
    fn next_missing(&self, end: u64) -> Option<SeqRange> {
        let mut seq = self.buffer.next();
        loop {
            if seq > end {
                return None;
            }
            if self.buffer.contains(seq) {
                seq += 1;
            } else if let Some((_, request)) = self.requests.covering(seq) {
                seq = request.range.end().checked_add(1)?;
            } else {
                break;
            }
        }
        let mut last = end.min(seq.saturating_add(self.config.batch_size));
        if let Some(held) = self.buffer.stored_in(seq, last).next() {
            last = held - 1;
        }
        if let Some(start) = self.requests.next_start_after(seq) {
            last = last.min(start - 1);
        }
        SeqRange::new(seq, last)
    }

    /// Back-pressure: a request may not reach `window_blocks` past the
    /// committed height, nor push the bytes held and expected past
    /// `window_bytes` (unless nothing is in flight, so a wrong size
    /// estimate cannot stall us).
    fn window_admits(&self, range: SeqRange) -> bool {
        let span = range.end() - self.committed + 1;
        if span > self.config.window_blocks {
            return false;
        }
        // With nothing in flight and nothing awaiting a commit, the block at
        // `next` is accepted whatever its size (see `accept_payload`), so a
        // wrong estimate cannot stall us; while blocks await a commit, wait
        // for it rather than fetch what would be dropped.
        if self.requests.is_empty() && self.uncommitted.is_empty() {
            return true;
        }
        let held = self.held_bytes();
        let expected =
            (self.requests.blocks() + range.len()).saturating_mul(self.block_bytes_estimate);
        held.saturating_add(expected) <= self.config.window_bytes
    }

    fn rejected_in(&self, range: SeqRange) -> Vec<P> {
        let mut peers: Vec<P> = self
            .rejected_by
            .range(range.start()..=range.end())
            .flat_map(|(_, peers)| peers.iter().cloned())
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    fn nothing_waiting(&self) -> bool {
        self.requests
            .iter()
            .all(|(_, request)| request.waiting().next().is_none())
    }

    fn fresh_nonce(&mut self) -> u64 {
        loop {
            let nonce = self.rng.u64(1..);
            if self.requests.with_nonce(nonce).is_none() {
                return nonce;
            }
        }
    }

    /// Sends request `id` to `to` under a fresh nonce of its own.
    fn send_attempt(&mut self, now: Instant, id: u64, to: P, kind: Send) {
        let nonce = self.fresh_nonce();
        let Some(peer) = self.peers.get_mut(&to) else {
            return;
        };
        let Some(request) = self.requests.get(id) else {
            return;
        };
        peer.in_flight += 1;
        peer.stats.requests += 1;
        self.stats.requests += 1;
        if kind == Send::Retry {
            self.stats.retries += 1;
        }
        let message = wire::state_request(
            nonce,
            self.channel.clone(),
            request.range.start(),
            request.range.end(),
        );
        let deadline = now.checked_add(peer.timeout(&self.config));
        self.requests.push_attempt(
            id,
            Attempt {
                nonce,
                peer: to.clone(),
                sent_at: now,
                deadline,
                state: AttemptState::Waiting,
            },
        );
        self.actions.push_back(Action::SendRequest { to, message });
    }

    /// A peer that answers is alive and working through its queue: the
    /// requests it holds that were sent after the one it answered (queued
    /// behind it) get at least one more timeout from now, so a deep pipeline
    /// is not mistaken for a silent peer. Requests sent before the answered
    /// one were overtaken (a responder serves in order) and keep their
    /// deadline. Never past `max_response_timeout` after the send, so a peer
    /// that answers some requests and drops others cannot hold the rest for
    /// long. Fixed (Fabric) timeouts are left alone.
    fn extend_deadlines(&mut self, now: Instant, from: &P, answered_sent_at: Instant) {
        if !self.config.adaptive_timeout {
            return;
        }
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        let timeout = peer.timeout(&self.config);
        let cap = self.config.max_response_timeout;
        for request in self.requests.iter_mut() {
            for attempt in &mut request.attempts {
                if attempt.state != AttemptState::Waiting
                    || &attempt.peer != from
                    || attempt.sent_at < answered_sent_at
                {
                    continue;
                }
                let extended = now.checked_add(timeout);
                let latest = attempt.sent_at.checked_add(cap);
                if let (Some(deadline), Some(extended), Some(latest)) =
                    (attempt.deadline, extended, latest)
                {
                    attempt.deadline = Some(deadline.max(extended.min(latest)));
                }
            }
        }
    }

    /// A request with no send still waiting is sent again, or given up.
    fn retry_if_idle(&mut self, now: Instant, id: u64) {
        let Some(request) = self.requests.get(id) else {
            return;
        };
        if request.waiting().next().is_some() {
            return;
        }
        let range = request.range;
        let sends = request.counted_sends();
        let failed: Vec<P> = request.attempts.iter().map(|a| a.peer.clone()).collect();
        if self.obsolete(range) {
            // Everything it asked for came another way (gossip): no re-send.
            self.drop_request(id);
            return;
        }
        if sends > self.config.max_retries {
            self.drop_request(id);
            self.give_up(now, range, GiveUpReason::RetriesExhausted { sends });
            return;
        }
        match self.pick(now, range, &failed) {
            Pick::Peer(peer) => self.send_attempt(now, id, peer, Send::Retry),
            // `resend_idle` tries again when a slot frees, and gives up if
            // nothing is left in flight.
            Pick::Busy => {}
            Pick::NoneEligible => {
                self.drop_request(id);
                self.give_up(now, range, GiveUpReason::NoEligiblePeer);
            }
        }
    }

    /// The peer to send `range` to: one that advertises it, is free, and
    /// preferably not among `failed` nor a sender of a rejected block in it.
    fn pick(&mut self, now: Instant, range: SeqRange, failed: &[P]) -> Pick<P> {
        if !self.peers.any_covers(range.end()) {
            return Pick::NoneEligible;
        }
        let rejected = self.rejected_in(range);
        self.peers
            .choose(
                &self.config,
                range.end(),
                failed,
                &rejected,
                now,
                &mut self.rng,
            )
            .map_or(Pick::Busy, Pick::Peer)
    }

    /// Re-sends requests left without a waiting send; gives them up when
    /// nothing in flight could free a peer.
    fn resend_idle(&mut self, now: Instant) {
        let idle: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, request)| request.waiting().next().is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.retry_if_idle(now, id);
            let still_idle = self
                .requests
                .get(id)
                .is_some_and(|request| request.waiting().next().is_none());
            if still_idle && self.nothing_waiting() {
                let range = self.requests.get(id).map(|r| r.range);
                self.drop_request(id);
                if let Some(range) = range {
                    self.give_up(now, range, GiveUpReason::NoEligiblePeer);
                }
            }
        }
    }

    /// Removes a request, freeing the slots of its waiting sends.
    fn drop_request(&mut self, id: u64) -> Option<Request<P>> {
        let request = self.requests.remove(id)?;
        for attempt in request.waiting() {
            if let Some(peer) = self.peers.get_mut(&attempt.peer) {
                peer.in_flight -= 1;
            }
        }
        Some(request)
    }

    // --- responses --------------------------------------------------------------

    fn on_response(
        &mut self,
        now: Instant,
        from: P,
        message: &GossipMessage,
    ) -> Result<(), ResponseError> {
        let ignored = &mut self.stats.ignored;
        let Some(response) = wire::as_state_response(message) else {
            ignored.not_a_response += 1;
            return Err(ResponseError::NotAResponse);
        };
        if message.channel != self.channel {
            ignored.wrong_channel += 1;
            return Err(ResponseError::WrongChannel);
        }
        let nonce = message.nonce;
        let unknown = ResponseError::UnknownNonce { nonce };
        let Some(id) = self.requests.with_nonce(nonce) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        let Some(request) = self.requests.get_mut(id) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        let range = request.range;
        let Some(attempt) = request.attempt_with(nonce) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        if attempt.peer != from {
            ignored.unexpected_peer += 1;
            return Err(ResponseError::UnexpectedPeer { nonce });
        }
        if attempt.state == AttemptState::Failed {
            // This send was answered already (or cancelled): a duplicate.
            ignored.unknown_nonce += 1;
            return Err(unknown);
        }
        let answered_sent_at = attempt.sent_at;
        let rtt = now.saturating_duration_since(answered_sent_at);
        let was_waiting = attempt.state == AttemptState::Waiting;

        let mut usable = 0u64;
        let mut malformed = false;
        let mut bytes = 0u64;
        for payload in &response.payloads {
            if !range.contains(payload.seq_num) {
                self.stats.ignored.out_of_range_payloads += 1;
                continue;
            }
            if block_number(&payload.data) != Ok(payload.seq_num) {
                self.stats.ignored.bad_payloads += 1;
                malformed = true;
                continue;
            }
            usable += 1;
            let size = payload_size(payload) as u64;
            bytes += size;
            self.block_bytes_estimate = self
                .block_bytes_estimate
                .saturating_mul(7)
                .saturating_add(size)
                .div_ceil(8);
            self.accept_payload(payload.clone(), size, Origin::Peer(from.clone()));
        }

        let peer = self.peers.get_mut(&from);
        if usable == 0 {
            // An empty or useless answer counts against the peer, and the
            // range goes to the next try at once (as Fabric retries).
            if let Some(attempt) = self
                .requests
                .get_mut(id)
                .and_then(|request| request.attempt_with(nonce))
            {
                attempt.state = AttemptState::Failed;
            }
            if let Some(peer) = peer {
                if was_waiting {
                    peer.in_flight -= 1;
                }
                peer.stats.empty_responses += 1;
                peer.failed(now, 1, self.config.peer_selection);
            }
            self.retry_if_idle(now, id);
            return Ok(());
        }
        if let Some(peer) = peer {
            peer.answered(rtt, &self.config);
            peer.stats.responses += 1;
            peer.stats.blocks += usable;
            peer.stats.bytes += bytes;
            if malformed {
                peer.failed(now, 1, self.config.peer_selection);
            } else {
                peer.succeeded();
            }
        }
        self.stats.responses += 1;
        // Blocks of the range that did not arrive are simply missing again:
        // the planner asks for them in a new request.
        self.drop_request(id);
        self.extend_deadlines(now, &from, answered_sent_at);
        Ok(())
    }

    fn accept_payload(&mut self, payload: Payload, size: u64, origin: Origin<P>) {
        let seq = payload.seq_num;
        if seq < self.buffer.next() || self.buffer.contains(seq) {
            self.stats.ignored.duplicate_payloads += 1;
            return;
        }
        // The block that unblocks delivery may overshoot the byte window by
        // itself when nothing awaits a commit (else out-of-order blocks could
        // fill the window for good).
        let unblocks = seq == self.buffer.next() && self.uncommitted.is_empty();
        // Lower blocks are needed first: a full window makes room by
        // evicting the highest held ones (fetched again later), so that
        // after a rewind the gap refills at full speed, not one block per
        // round trip.
        while !unblocks && self.held_bytes().saturating_add(size) > self.config.window_bytes {
            match self.buffer.highest() {
                Some(highest) if highest > seq => {
                    self.buffer.remove(highest);
                    self.origins.remove(&highest);
                    self.stats.evicted += 1;
                }
                // Otherwise it waits for commits: dropped now, fetched later.
                _ => return,
            }
        }
        if self.buffer.push(payload).is_kept() {
            self.origins.insert(seq, origin);
        }
    }

    /// Bytes of payloads held: buffered out of order, or delivered and not
    /// yet committed.
    fn held_bytes(&self) -> u64 {
        self.buffer.bytes() as u64 + self.uncommitted_bytes
    }

    /// Hands every consecutive payload to the host.
    fn deliver(&mut self) {
        while let Some(payload) = self.buffer.pop() {
            let seq = payload.seq_num;
            let origin = self.origins.remove(&seq).unwrap_or(Origin::Gossip);
            let size = payload_size(&payload) as u64;
            self.uncommitted.push_back(Delivered {
                seq,
                origin: origin.clone(),
                size,
            });
            self.uncommitted_bytes += size;
            self.stats.delivered += 1;
            self.actions.push_back(Action::AddPayload {
                payload,
                from: origin,
            });
        }
    }

    // --- the gossip path and the host's verdicts ----------------------------------

    /// Fabric's non-blocking path: kept only within
    /// `[height, height + block_buffer)` of the committed height (Fabric
    /// compares with the ledger height too), so gossip alone never holds more
    /// than `block_buffer` blocks ahead of the ledger; older or duplicate
    /// blocks are dropped without error.
    fn on_gossip_payload(&mut self, payload: Payload) {
        let seq = payload.seq_num;
        if seq < self.buffer.next() {
            self.stats.ignored.duplicate_payloads += 1;
            return;
        }
        if seq - self.committed >= self.config.block_buffer {
            self.stats.ignored.gossip_outside_window += 1;
            return;
        }
        let size = payload_size(&payload) as u64;
        self.accept_payload(payload, size, Origin::Gossip);
    }

    fn on_committed(&mut self, height: u64) -> Result<(), EventError> {
        let (low, high) = (self.committed, self.buffer.next());
        if height < low || height > high {
            return Err(EventError::CommittedOutOfRange { height, low, high });
        }
        while self.uncommitted.front().is_some_and(|d| d.seq < height) {
            if let Some(done) = self.uncommitted.pop_front() {
                self.uncommitted_bytes -= done.size;
            }
        }
        self.committed = height;
        self.rejected_by = self.rejected_by.split_off(&height);
        Ok(())
    }

    fn on_rejected(&mut self, now: Instant, seq: u64) -> Result<(), EventError> {
        if seq < self.committed || seq >= self.buffer.next() {
            return Err(EventError::NotAwaitingVerdict { seq });
        }
        self.stats.rejected += 1;
        let position = self.uncommitted.iter().position(|d| d.seq == seq);
        if let Some(Delivered {
            origin: Origin::Peer(sender),
            ..
        }) = position.and_then(|i| self.uncommitted.get(i))
        {
            let sender = sender.clone();
            if let Some(peer) = self.peers.get_mut(&sender) {
                peer.stats.rejected_blocks += 1;
                peer.failed(now, 2, self.config.peer_selection);
            }
            let peers = self.rejected_by.entry(seq).or_default();
            if !peers.contains(&sender) {
                peers.push(sender);
            }
        }
        // The host drops what it holds from `seq` on; so do we, including
        // deliveries not yet drained.
        while self.uncommitted.back().is_some_and(|d| d.seq >= seq) {
            if let Some(dropped) = self.uncommitted.pop_back() {
                self.uncommitted_bytes -= dropped.size;
            }
        }
        let queued = self.actions.len();
        self.actions.retain(|action| {
            !matches!(action, Action::AddPayload { payload, .. } if payload.seq_num >= seq)
        });
        // Withdrawn before the host saw them: not delivered after all.
        self.stats.delivered -= (queued - self.actions.len()) as u64;
        self.buffer.rewind(seq);
        if self.round_end.is_none() {
            self.next_round_at = None;
            self.start_round(now);
        }
        Ok(())
    }
}

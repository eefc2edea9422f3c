//! Rounds and requests: which blocks to ask for, of whom, and when.

use std::time::{Duration, Instant};

use super::peers::{Choice, Finish, CLOCK_GRANULARITY};
use super::requests::{Attempt, AttemptState, Request};
use super::{Action, AntiEntropy, GiveUpReason, PeerState, Pick, Send};
use crate::config::PeerSelection;
use crate::range::SeqRange;
use crate::wire;

impl<P: Clone + Ord + std::fmt::Debug> AntiEntropy<P> {
    pub(super) fn on_tick(&mut self, now: Instant) {
        match self.round_end {
            None => {
                self.next_round_at = None;
                self.start_round(now);
            }
            Some(_) => self.extend_round(),
        }
    }

    pub(super) fn start_round(&mut self, now: Instant) {
        let target = self.peers.target(self.now);
        if target > self.buffer.next() {
            self.stats.rounds += 1;
            self.round_end = Some(target - 1);
            emit!(DEBUG, end = target - 1, "round started");
        } else {
            self.next_round_at = now.checked_add(self.config.check_interval);
        }
    }

    /// Our engine keeps a round going while peers advance; Fabric's range is
    /// fixed when its round starts.
    pub(super) fn extend_round(&mut self) {
        if !self.config.round_on_membership {
            return;
        }
        if let Some(end) = self.round_end.as_mut() {
            *end = (*end).max(self.peers.target(self.now).saturating_sub(1));
        }
    }

    pub(super) fn end_round(&mut self, now: Instant) {
        self.round_end = None;
        self.next_round_at = now.checked_add(self.config.check_interval);
    }

    pub(super) fn give_up(&mut self, now: Instant, range: SeqRange, reason: GiveUpReason) {
        self.stats.give_ups += 1;
        emit!(INFO, %range, ?reason, "range given up");
        self.actions.push_back(Action::GiveUp { range, reason });
        self.end_round(now);
    }

    // --- membership and connections ----------------------------------------

    pub(super) fn on_membership(&mut self, now: Instant, view: Vec<PeerState<P>>) {
        let departed = self.peers.replace(view);
        self.cancel_sends_to(now, &departed);
        self.round_on_news(now);
    }

    pub(super) fn on_disconnected(&mut self, now: Instant, peer: &P) {
        let Some(record) = self.peers.get_mut(peer) else {
            return;
        };
        record.connected = false;
        emit!(DEBUG, ?peer, "peer disconnected");
        self.cancel_sends_to(now, std::slice::from_ref(peer));
    }

    pub(super) fn on_connected(&mut self, now: Instant, peer: &P) {
        let Some(record) = self.peers.get_mut(peer) else {
            return;
        };
        record.reconnected();
        emit!(DEBUG, ?peer, "peer connected");
        self.round_on_news(now);
    }

    /// A peer ahead may have appeared: keep the round going, or start one.
    pub(super) fn round_on_news(&mut self, now: Instant) {
        match self.round_end {
            Some(_) => self.extend_round(),
            None if self.config.round_on_membership
                && self.peers.target(self.now) > self.buffer.next() =>
            {
                self.next_round_at = None;
                self.start_round(now);
            }
            None => {}
        }
    }

    /// Sends to `gone` peers end without blame; their ranges move on at once.
    pub(super) fn cancel_sends_to(&mut self, now: Instant, gone: &[P]) {
        if !gone.is_empty() {
            let departed = gone;
            for id in self.requests.ids() {
                let Some(request) = self.requests.get(id) else {
                    continue;
                };
                let cancelled: Vec<(u64, P, u64)> = request
                    .waiting()
                    .filter(|attempt| departed.contains(&attempt.peer))
                    .map(|attempt| (attempt.nonce, attempt.peer.clone(), attempt.asked.len()))
                    .collect();
                for (nonce, peer_id, blocks) in &cancelled {
                    self.requests.end_send(id, *nonce, AttemptState::Failed);
                    // A peer that left the channel keeps its record: free its slot.
                    if let Some(peer) = self.peers.get_mut(peer_id) {
                        peer.send_ended(*blocks);
                    }
                }
                if !cancelled.is_empty() {
                    self.retry_if_idle(now, id);
                }
            }
        }
    }

    // --- requests --------------------------------------------------------------

    /// Sends requests while the round has missing blocks, the window has
    /// room and peers have free slots.
    pub(super) fn fill(&mut self, now: Instant) {
        self.drop_obsolete();
        self.resend_idle(now);
        self.look_again_at = None;
        let Some(end) = self.round_end else {
            return;
        };
        if self.buffer.next() > end {
            self.end_round(now);
            return;
        }
        while self.requests.len() < self.config.max_in_flight {
            if self.probing(now) && !self.requests.is_empty() {
                return;
            }
            let Some(range) = self.next_missing(end, now) else {
                self.split_first_flight(now);
                self.end_game(now);
                return;
            };
            if !self.window_admits(range) {
                return;
            }
            let tail = self.tail_end(now, range);
            let finish = tail.map(|_| Finish {
                now,
                block_bytes: self.block_bytes_estimate,
                per_request: self.blocks_per_request(),
                blocks: range.len(),
            });
            let peer = match self.pick(now, range, &[], finish, &[]) {
                Pick::Peer(peer) => peer,
                // Its bad block waits for its back-off (the timer wakes us).
                // Blocks past it would be delivered after it and, when only
                // its rejected senders hold the range, dropped with it if
                // their copy is rejected again: not fetched.
                Pick::Later => return,
                Pick::Busy if !self.nothing_waiting() => return,
                // Nothing in flight will wake us: end the round and let the
                // round timer try again.
                Pick::Busy | Pick::NoneEligible => {
                    self.give_up(now, range, GiveUpReason::NoEligiblePeer);
                    return;
                }
            };
            let mut range = self.probe_or_trim(now, &peer, range);
            if let Some(end_in) = tail {
                match self.tail_share(now, &peer, end_in, range) {
                    Some(share) => range = share,
                    // It would deliver nothing before the faster peers
                    // are done: one of them takes it when a slot frees.
                    None if !self.requests.is_empty() => return,
                    None => {}
                }
            }
            let id = self.requests.insert(range);
            self.send_attempt(now, id, peer, Send::First);
        }
    }

    /// Whether every block of `range` is delivered or held already.
    pub(super) fn obsolete(&self, range: SeqRange) -> bool {
        let from = range.start().max(self.buffer.next());
        from > range.end()
            || self.buffer.stored_in(from, range.end()).count() as u64 == range.end() - from + 1
    }

    /// Drops requests whose blocks all came another way (gossip, a hedge's
    /// twin, a rewind), freeing their slots without blame.
    /// Only a stored block can make a request obsolete, and only a gossiped
    /// one another request than its own: the requests holding the blocks
    /// gossiped since the last call are the only ones to check.
    pub(super) fn drop_obsolete(&mut self) {
        let mut gossiped = std::mem::take(&mut self.gossiped);
        for seq in gossiped.drain(..) {
            let Some((id, request)) = self.requests.covering(seq) else {
                continue;
            };
            if self.obsolete(request.range) {
                self.drop_request(id);
            }
        }
        // Its allocation is kept for the next gossiped blocks.
        self.gossiped = gossiped;
        debug_assert!(self.requests.iter().all(|(_, r)| !self.obsolete(r.range)));
    }

    /// The first run of blocks from `next` that is neither held nor
    /// requested, at most `batch_size + 1` long, within `..=end`, below the
    /// next credible height above its start (so every peer holding its
    /// first block can serve all of it) and below the next rejected block
    /// above its start.
    pub(super) fn next_missing(&mut self, end: u64, now: Instant) -> Option<SeqRange> {
        let mut seq = self.buffer.next().max(self.covered_below);
        loop {
            if seq > end {
                self.covered_below = seq;
                return None;
            }
            if self.buffer.contains(seq) {
                seq += 1;
            } else if let Some(requested) = self.requests.covering_end(seq) {
                seq = requested.checked_add(1)?;
            } else {
                break;
            }
        }
        self.covered_below = seq;
        debug_assert_eq!(Some(seq), self.first_missing_from_next(end));
        let mut last = end.min(seq.saturating_add(self.blocks_per_request() - 1));
        if let Some(held) = self.buffer.stored_in(seq, last).next() {
            last = held - 1;
        }
        if let Some(start) = self.requests.next_start_after(seq) {
            last = last.min(start - 1);
        }
        if let Some(boundary) = self.peers.next_boundary(seq, now) {
            last = last.min(boundary - 1);
        }
        // A rejected block starts a range of its own: the peers to avoid
        // for a range are then those of its first block, and stay so when
        // the chosen peer's share cuts it shorter. (Spanning two rejected
        // blocks of two peers, a range avoided neither and went, cut to
        // the first block's part, to the peer whose copy of it was bad
        // while the other was free: property test seed 17.)
        if let Some((&rejected, _)) = self.rejected_by.range(seq.saturating_add(1)..).next() {
            last = last.min(rejected - 1);
        }
        SeqRange::new(seq, last)
    }

    /// The first block from `next` neither held nor requested, found the
    /// slow way: checks `covered_below` in debug builds.
    fn first_missing_from_next(&self, end: u64) -> Option<u64> {
        let mut seq = self.buffer.next();
        while seq <= end {
            if self.buffer.contains(seq) {
                seq += 1;
            } else if let Some((_, request)) = self.requests.covering(seq) {
                seq = request.range.end().checked_add(1)?;
            } else {
                return Some(seq);
            }
        }
        None
    }

    /// The first block of `range`, from `next` on, that is not held.
    fn first_not_held(&self, range: SeqRange) -> Option<u64> {
        let mut seq = range.start().max(self.buffer.next());
        if seq > range.end() {
            return None;
        }
        for held in self.buffer.stored_in(seq, range.end()) {
            if held != seq {
                break;
            }
            seq += 1;
        }
        (seq <= range.end()).then_some(seq)
    }

    /// Block `seq` may be neither held nor requested any more: planning
    /// looks for missing blocks from there again.
    pub(super) fn uncover(&mut self, seq: u64) {
        self.covered_below = self.covered_below.min(seq);
    }

    /// How many blocks a request asks for: `batch_size + 1`, as Fabric asks;
    /// with the adaptive window, no more than one response of
    /// `max_response_bytes` holds at the blocks' estimated size. Asking for
    /// more would get a partial answer whose rest goes to the same peer one
    /// round trip later (with 8 MiB blocks, one block per round trip from
    /// one peer at a time); asking for what fits spreads the blocks over the
    /// window and every peer.
    pub(super) fn blocks_per_request(&self) -> u64 {
        self.config.blocks_per_request(self.block_bytes_estimate)
    }

    /// Planning looks again at `at` (see `poll_timeout`).
    pub(super) fn look_again(&mut self, at: Instant) {
        self.look_again_at = Some(self.look_again_at.map_or(at, |next| next.min(at)));
    }

    /// Back-pressure: a request may not reach `window_blocks` past the
    /// committed height, nor push the bytes held and expected past
    /// `window_bytes` (unless nothing is in flight, so a wrong size
    /// estimate cannot stall us).
    pub(super) fn window_admits(&self, range: SeqRange) -> bool {
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
        // An answer carries at most what one response holds: requests
        // asked before the block size was known (a first flight of 11-block
        // ranges, answered with one 8 MiB block each) count for that much,
        // not for 11 blocks each (they held every other peer idle for an
        // answer's time: huge blocks at 1.26× the bound).
        let requests = self.requests.len() as u64 + 1;
        let blocks = (self.requests.blocks() + range.len())
            .min(requests.saturating_mul(self.blocks_per_request()));
        let expected = blocks.saturating_mul(self.block_bytes_estimate);
        if held.saturating_add(expected) <= self.config.window_bytes {
            return true;
        }
        // Held blocks above the range give way to its blocks when they
        // come (`accept_payload` evicts the highest): without counting them
        // out, blocks far ahead of a hole (a first flight of 11-block
        // requests each answered with one 8 MiB block: 1, 12, 23, 34, …)
        // filled the window and the hole was fetched one block at a time
        // (huge blocks at 3× the bound).
        // Counted from the highest down, only as far as the excess: this
        // runs on every answer while the window is full.
        let excess = held
            .saturating_add(expected)
            .saturating_sub(self.config.window_bytes);
        let enough = usize::try_from(excess).unwrap_or(usize::MAX);
        self.buffer.bytes_above(range.end(), enough) >= enough
    }

    /// Whether a block not yet committed, up to the commit point, was
    /// rejected and only peers that sent a bad copy hold it: then nothing
    /// past its range is asked (it is a probe), since blocks delivered after
    /// it are dropped with it if it is bad again.
    pub(super) fn probing(&self, now: Instant) -> bool {
        self.rejected_by
            .range(..=self.buffer.next())
            .any(|(seq, rejecters)| {
                !self
                    .peers
                    .iter()
                    .any(|(id, peer)| peer.covers(*seq, now) && !rejecters.contains(id))
            })
    }

    /// When the rejected blocks of `range` may be fetched again from a
    /// peer that sent a rejected copy.
    pub(super) fn backoff_until(&self, range: SeqRange) -> Option<Instant> {
        self.backoffs
            .range(range.start()..=range.end())
            .map(|(_, backoff)| backoff.not_before)
            .max()
    }

    pub(super) fn rejected_in(&self, range: SeqRange) -> Vec<P> {
        let mut peers: Vec<P> = self
            .rejected_by
            .range(range.start()..=range.end())
            .flat_map(|(_, peers)| peers.iter().cloned())
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    pub(super) fn nothing_waiting(&self) -> bool {
        self.requests.all_idle()
    }

    pub(super) fn fresh_nonce(&mut self) -> u64 {
        loop {
            let nonce = self.rng.u64(1..);
            if self.requests.with_nonce(nonce).is_none() {
                return nonce;
            }
        }
    }

    /// Sends request `id` to `peer` as a hedge (`why`: which kind, for the
    /// trace), counted against the request's [`MAX_HEDGES`](super::MAX_HEDGES).
    pub(super) fn send_hedge(&mut self, now: Instant, id: u64, peer: P, why: &'static str) {
        self.stats.hedges += 1;
        emit!(DEBUG, ?peer, id, why, "hedge");
        let _ = why; // read by `emit!` only with the `tracing` feature
        self.send_attempt(now, id, peer, Send::Hedge);
    }

    /// Sends request `id` to `to` under a fresh nonce of its own.
    pub(super) fn send_attempt(&mut self, now: Instant, id: u64, to: P, kind: Send) {
        let nonce = self.fresh_nonce();
        let Some(peer) = self.peers.get_mut(&to) else {
            return;
        };
        let Some(request) = self.requests.get(id) else {
            return;
        };
        peer.sent(now, request.range.len());
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
        emit!(DEBUG, peer = ?to, range = %request.range, nonce, ?kind, "request sent");
        self.requests.push_attempt(
            id,
            Attempt {
                nonce,
                peer: to.clone(),
                asked: request.range,
                sent_at: now,
                deadline,
                state: AttemptState::Waiting,
                extended: false,
                order: self.stats.requests,
                overtaken_at: None,
                lost: false,
                hedge: kind == Send::Hedge,
            },
        );
        self.actions.push_back(Action::SendRequest { to, message });
    }

    /// A peer that answers is alive and working through its queue: the
    /// requests it holds that were sent after the one it answered (queued
    /// behind it) get at least one more timeout from now, so a deep pipeline
    /// is not mistaken for a silent peer. Never past `max_response_timeout`
    /// after the send, so a peer that answers some requests and drops others
    /// cannot hold the rest for long.
    ///
    /// Requests sent to it before the answered one were overtaken: a
    /// responder mostly answers a peer's requests in order (Fabric's one
    /// goroutine does; ours may finish concurrent reads out of order, and
    /// sends a repeater's answers later), so the request or its answer was
    /// probably lost. They are marked: hedged a reordering allowance later
    /// when they hold the commit point (`hedge_due`), copied at the round's
    /// end (`end_game`). And they time out a reordering allowance later
    /// (RACK, RFC 8985), as lost (`Silence::Lost`: nothing backs off): the
    /// slot and the range are free for a retry, and a late answer is
    /// still taken. Waiting for its deadline instead held a
    /// window slot and the range for a backed-off timeout per loss (at 20 %
    /// loss, four peers' catch-up took 10 times as long as without loss).
    /// With fixed (Fabric) timeouts none of this is done.
    pub(super) fn reschedule_after_answer(&mut self, now: Instant, from: &P, answered: u64) {
        if !self.config.adaptive_timeout {
            return;
        }
        let Some(peer) = self.peers.get(from) else {
            return;
        };
        let timeout = peer.timeout(&self.config);
        let cap = self.config.max_response_timeout;
        // Two requests swapped on the way are answered in swapped order,
        // one answer's time on the peer's link apart: so long at least is
        // waited for an overtaken answer (a quarter of an SRTT made 7
        // needless copies of 11 × 64 KiB blocks in `many-laggers`, 5 %
        // reordering: 1.82 → 1.89 of the bound).
        let request_bytes = self
            .blocks_per_request()
            .saturating_mul(self.block_bytes_estimate) as f64;
        let one_answer = peer
            .rate()
            .and_then(|rate| Duration::try_from_secs_f64(request_bytes / rate).ok())
            .unwrap_or_default();
        // At least a clock's granularity: a deadline at `now` would be due
        // before this event is over, and only the next would judge it.
        let allowance = peer
            .reorder_allowance(timeout)
            .max(one_answer)
            .max(CLOCK_GRANULARITY);
        let lost_at = now.checked_add(allowance);
        let mut brought_forward = false;
        for request in self.requests.iter_mut() {
            for attempt in &mut request.attempts {
                if attempt.state != AttemptState::Waiting || &attempt.peer != from {
                    continue;
                }
                if attempt.order < answered {
                    if attempt.overtaken_at.is_none() {
                        attempt.overtaken_at = Some(now);
                        if let (Some(deadline), Some(lost_at)) = (attempt.deadline, lost_at) {
                            if lost_at < deadline {
                                attempt.deadline = Some(lost_at);
                                brought_forward = true;
                            }
                        }
                    }
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
        if let (true, Some(lost_at)) = (brought_forward, lost_at) {
            self.requests.deadline_set(lost_at);
        }
    }

    /// A request with no send still waiting is sent again, or given up.
    pub(super) fn retry_if_idle(&mut self, now: Instant, id: u64) {
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
            // Every peer asked failed the range: none is believed to hold
            // its first block for a while, so the next round does not ask
            // them the same at once.
            for peer in &failed {
                if let Some(peer) = self.peers.get_mut(peer) {
                    peer.doubt(range.start(), now);
                }
            }
            self.drop_request(id);
            self.give_up(now, range, GiveUpReason::RetriesExhausted { sends });
            return;
        }
        // Cut to what a peer of better standing holds than every peer that
        // holds all of it, when the cut range can go at once: planned while
        // such peers held less (or were not known yet), the range went only
        // to liars and hung peers until its retries ran out, and then,
        // planned again, to the better peer (wild seeds without loss,
        // flooded: 429, 58.7 s against 15.2 s unflooded, 18.1 s now;
        // 41 431, 119.3 s against 1.34 s, 18.3 s now).
        let mut barred = Vec::new();
        self.bar_peers_that_lost(now, id, &mut barred);
        if let Some(kept) = self.cut_for_another(now, range, true) {
            // Whoever is picked never held the whole range, so none of
            // its sends waits queued there (`queued_until`); a check
            // after the pick would also make the retry hang on the
            // seed's tie-break, which a second pass at the same instant
            // may break otherwise (the property harness found it).
            if let Pick::Peer(peer) = self.pick(now, kept, &failed, None, &barred) {
                if self.send_cut(now, id, kept, peer, Send::Retry) {
                    return;
                }
            }
        }
        // A peer whose timed-out send of it is still queued there, by all
        // signs, is not sent it again (the range would cross the same slow
        // link twice): it counts as busy. Picked and then passed over, it
        // left the retry to the seed's tie-break, which the next input at
        // the same instant could break otherwise (a refused answer led to
        // a send: the property harness, seed 2).
        let mut queued = barred;
        for attempt in self.requests.get(id).map_or(&[][..], |r| &r.attempts) {
            let peer = &attempt.peer;
            if attempt.state == AttemptState::TimedOut
                && !queued.contains(peer)
                && self.queued_until(now, id, peer).is_some()
            {
                queued.push(peer.clone());
            }
        }
        match self.pick(now, range, &failed, None, &queued) {
            Pick::Peer(peer) => self.send_attempt(now, id, peer, Send::Retry),
            // `resend_idle` tries again when a slot frees or the back-off
            // ends (`poll_timeout` wakes us then), and gives up if nothing
            // is left in flight to free a slot.
            Pick::Busy | Pick::Later => {}
            Pick::NoneEligible => {
                self.drop_request(id);
                self.give_up(now, range, GiveUpReason::NoEligiblePeer);
            }
        }
    }

    /// `range` cut to what a peer holds that is of a better standing
    /// (`strict`; or at least as good) than every peer holding all of it
    /// (`Peers::prefix_end`), if any such peer holds part of it and the
    /// part is not all held already. Only with scored selection.
    pub(super) fn cut_for_another(
        &self,
        now: Instant,
        range: SeqRange,
        strict: bool,
    ) -> Option<SeqRange> {
        if self.config.peer_selection != PeerSelection::Scored {
            return None;
        }
        let rejected = self.rejected_in(range);
        self.peers
            .prefix_end(range, &rejected, now, strict)
            .and_then(|end| SeqRange::new(range.start(), end))
            .filter(|kept| !self.obsolete(*kept))
    }

    /// Narrows request `id` to `kept` (its lower part: the rest is planned
    /// again) and sends it to `peer`. Whether it did.
    pub(super) fn send_cut(
        &mut self,
        now: Instant,
        id: u64,
        kept: SeqRange,
        peer: P,
        kind: Send,
    ) -> bool {
        if self.requests.narrow(id, kept.end()).is_none() {
            return false;
        }
        emit!(DEBUG, %kept, ?peer, ?kind, "range cut for a better peer");
        self.uncover(kept.end() + 1);
        match kind {
            Send::Hedge => self.send_hedge(now, id, peer, "the commit point's range, cut"),
            kind => self.send_attempt(now, id, peer, kind),
        }
        true
    }

    /// Whether a send of request `id` to `peer` timed out while, by all
    /// signs, it waits in the peer's queue behind a link slower than
    /// measured: the peer's last answer itself took longer than a
    /// deadline before back-off (not a loss: a loss leaves later answers
    /// on time), it answered a send made before this one since this one
    /// was made (it answers in order), and not longer ago than its timeout
    /// (it still answers). The late answer is taken when it comes. Re-sent,
    /// each range crossed the slow link twice: the only peer's uplink 40
    /// times slower (`catchup --peers 1 --blocks 200 --block-size 4096
    /// --uplink-mbps 2 --slowdown 0:1:0.05`) took 185 s, against about
    /// 94 s for the link; 148.5 s now. Without the first condition, taken
    /// for queued, lost sends waited at loss: 4 000 lossy wild clusters
    /// 6.9 % slower; with it, unchanged.
    /// Until when, if so: then it is sent again (`queued_wake` wakes the
    /// machine), unless its answer came first. Only with adaptive
    /// timeouts: Fabric's preset re-sends at its fixed timeout.
    fn queued_until(&self, now: Instant, id: u64, peer: &P) -> Option<Instant> {
        if !self.config.adaptive_timeout {
            return None;
        }
        let (request, record) = (self.requests.get(id)?, self.peers.get(peer)?);
        let (answered_at, answered_sent) = (record.last_answer_at?, record.last_answered_sent_at?);
        let slow = answered_at.saturating_duration_since(answered_sent)
            >= record.unbacked_timeout(&self.config);
        let until = answered_at
            .checked_add(record.timeout(&self.config))
            .filter(|until| now < *until)?;
        let queued = request.attempts.iter().any(|attempt| {
            &attempt.peer == peer
                && attempt.state == AttemptState::TimedOut
                && answered_sent <= attempt.sent_at
                && attempt.sent_at < answered_at
        });
        (slow && queued).then_some(until)
    }

    /// Adds to `barred` each peer that lost two sends of request `id` (it
    /// answered later sends meanwhile), while a dependable peer that did
    /// not covers the range: the retry waits for that one's slot rather
    /// than go back to where the range vanished twice. A peer that drops
    /// the requests for chosen blocks (`sim::Behaviour::Dropping`) looks
    /// like random loss on a working path, and every retry sent back to it
    /// was lost again: the commit point's range went to the same peer four
    /// times (`catchup --peers 4 --blocks 20000 --block-size 16384
    /// --droppers 3`: 22.74 s, 10.67 s now). After one loss, as at random
    /// loss, the retry still goes to whichever peer is free: barred after
    /// one, retries at heavy loss waited for busy peers that lose as much
    /// (`catchup --peers 6 --blocks 1500 --block-size 65536 --slow 1
    /// --lying 1 --loss 0.3 --seed 1`: 16.3× the bound against 4.6×
    /// unbarred; 4.95× now).
    fn bar_peers_that_lost(&self, now: Instant, id: u64, barred: &mut Vec<P>) {
        /// Losses of one range at one peer that bar it from the range.
        const LOSSES_TO_BAR: usize = 2;
        let Some(request) = self.requests.get(id) else {
            return;
        };
        let losses = |peer: &P| {
            let lost_there = |attempt: &&Attempt<P>| attempt.lost && &attempt.peer == peer;
            request.attempts.iter().filter(lost_there).count()
        };
        let lost: Vec<&P> = request
            .attempts
            .iter()
            .filter(|attempt| attempt.lost && losses(&attempt.peer) >= LOSSES_TO_BAR)
            .map(|attempt| &attempt.peer)
            .collect();
        if lost.is_empty() {
            return;
        }
        let end = request.range.end();
        let other = self
            .peers
            .iter()
            .any(|(id, peer)| !lost.contains(&id) && peer.covers(end, now) && peer.dependable(now));
        if other {
            for peer in lost {
                if !barred.contains(peer) {
                    barred.push(peer.clone());
                }
            }
        }
    }

    /// `range` cut for `peer`: to its request length, or to one block for a
    /// peer silent so far while a trusted peer holds the range (a probe,
    /// `Peer::probe_due`, or a pick made because the trusted ones were
    /// full): cheap to lose, and least likely to hold a block the peer
    /// withholds (scored selection only: Fabric's random choice has no
    /// probes and asks whole ranges). Not where no trusted peer holds it:
    /// cut to one block whenever a peer silent so far was asked (the only
    /// one holding the range, say), 12 000 wild clusters without loss were
    /// 0.17 % slower.
    fn probe_or_trim(&self, now: Instant, peer: &P, range: SeqRange) -> SeqRange {
        let Some(record) = self.peers.get(peer) else {
            return range;
        };
        let probe = self.config.peer_selection == PeerSelection::Scored
            && record.silent_so_far()
            && self
                .peers
                .iter()
                .any(|(_, other)| other.trusted() && other.covers(range.end(), now));
        if probe {
            SeqRange::new(range.start(), range.start()).unwrap_or(range)
        } else {
            record.trim(range)
        }
    }

    /// The bytes left in the round after `range`, if a peer silent so far
    /// may be probed with it (`Peers::probe_pays` decides whether that
    /// pays): a first send, before the round's tail, under scored
    /// selection (Fabric's random choice has no probes).
    fn probe_left(&self, range: SeqRange, failed: &[P], finish: Option<Finish>) -> Option<f64> {
        let end = self.round_end?;
        let scored = self.config.peer_selection == PeerSelection::Scored;
        (scored && failed.is_empty() && finish.is_none())
            .then(|| end.saturating_sub(range.end()) as f64 * self.block_bytes_estimate as f64)
    }

    /// The peer to send `range` to: one that advertises it, is free, and
    /// preferably not among `failed` nor a sender of a rejected block in it.
    pub(super) fn pick(
        &mut self,
        now: Instant,
        range: SeqRange,
        failed: &[P],
        finish: Option<Finish>,
        barred: &[P],
    ) -> Pick<P> {
        if !self.peers.any_covers(range.end(), now) {
            return Pick::NoneEligible;
        }
        let rejected = self.rejected_in(range);
        // Only peers whose copy of a block in it was rejected hold the range:
        // ask them again only once that block's back-off has passed.
        // (Without a rejected block in it, every holder is fresh.)
        let fresh_holder = rejected.is_empty()
            || self
                .peers
                .iter()
                .any(|(id, peer)| peer.alternative(id, range.end(), now, failed, &rejected));
        if !fresh_holder && self.backoff_until(range).is_some_and(|until| until > now) {
            return Pick::Later;
        }
        let choice = Choice {
            prefer_not: failed,
            exclude: &rejected,
            hedge: None,
            finish,
            probe_left: self.probe_left(range, failed, finish),
        };
        self.peers
            .choose_except(
                &self.config,
                range.end(),
                choice,
                barred,
                now,
                &mut self.rng,
            )
            .map_or(Pick::Busy, Pick::Peer)
    }

    /// Re-sends requests left without a waiting send; gives them up when
    /// nothing in flight could free a peer.
    pub(super) fn resend_idle(&mut self, now: Instant) {
        self.queued_wake = None;
        let idle: Vec<u64> = self.requests.idle().collect();
        for id in idle {
            self.retry_if_idle(now, id);
            let still_idle = self
                .requests
                .get(id)
                .is_some_and(|request| request.waiting().next().is_none());
            let queued = self.requests.get(id).and_then(|request| {
                request
                    .attempts
                    .iter()
                    .filter_map(|attempt| self.queued_until(now, id, &attempt.peer))
                    .min()
            });
            if still_idle {
                if let Some(until) = queued {
                    self.queued_wake = Some(self.queued_wake.map_or(until, |at| at.min(until)));
                }
            }
            let deferred = queued.is_some()
                || self.requests.get(id).is_some_and(|request| {
                    self.backoff_until(request.range)
                        .is_some_and(|until| until > now)
                });
            if still_idle && !deferred && self.nothing_waiting() {
                let range = self.requests.get(id).map(|r| r.range);
                self.drop_request(id);
                if let Some(range) = range {
                    self.give_up(now, range, GiveUpReason::NoEligiblePeer);
                }
            }
        }
    }

    /// Removes a request, freeing the slots of its waiting sends.
    pub(super) fn drop_request(&mut self, id: u64) -> Option<Request<P>> {
        let request = self.requests.remove(id)?;
        for attempt in request.waiting() {
            if let Some(peer) = self.peers.get_mut(&attempt.peer) {
                peer.send_ended(attempt.asked.len());
            }
        }
        // Planning must look at its blocks again, from the first one not
        // held (an answered range is usually held whole: then from none).
        if let Some(seq) = self.first_not_held(request.range) {
            self.uncover(seq);
        }
        Some(request)
    }
}

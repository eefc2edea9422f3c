//! The round's end: the last ranges shared by the peers' rates, the first
//! flight split across idle peers, and copies of a range to a free peer
//! that would deliver it first (the end game).

use std::time::{Duration, Instant};

use super::requests::AttemptState;
use super::{AntiEntropy, Send};
use crate::range::SeqRange;

impl<P: Clone + Ord + std::fmt::Debug> AntiEntropy<P> {
    /// Near the round's end: in how many seconds every block left would be
    /// in if the dependable measured peers shared them by rate so as to
    /// finish together (water-filling over when each one's sends in flight
    /// are done); `None` while every one of them could still deliver a
    /// full request after its sends in flight before then (no tail yet),
    /// or nothing is measured.
    ///
    /// Planning gives each range to the first free peer, a full request at
    /// a time: on thin links (an 11-block answer takes 2.9 s at 2 Mbit/s)
    /// the catch-up ended with three peers sending their last full ranges
    /// while the fourth had been idle for 5 s (thin at 1.11× the bound).
    pub(super) fn tail_end(&self, now: Instant, range: SeqRange) -> Option<f64> {
        // With every window full the range waits anyway (most of the time
        // once the windows are open): no need to know.
        if !self.config.adaptive_window || self.peers.all_full(&self.config) {
            return None;
        }
        let end = self.round_end?;
        let block_bytes = self.block_bytes_estimate;
        let per_request = self.blocks_per_request();
        let left = (end + 1)
            .saturating_sub(self.buffer.next())
            .saturating_sub(self.buffer.len() as u64)
            .saturating_sub(self.requests.blocks())
            .max(range.len());
        let work = left as f64 * block_bytes as f64;
        let full = (per_request * block_bytes) as f64;
        let measured = || {
            self.peers.iter().filter_map(move |(_, peer)| {
                if !peer.covers(range.end(), now) || !peer.dependable(now) {
                    return None;
                }
                Some((peer.drain(now, block_bytes, per_request)?, peer.rate()?))
            })
        };
        // Cheap test first (this runs for every range planned, and reading
        // the clock for each peer was 8 % of the machine's instructions):
        // even if every peer started its backlog only now, would the work
        // left outlast the time the slowest needs for its backlog and one
        // more full request?
        let (mut latest, mut rates) = (0.0f64, 0.0);
        for (_, peer) in self.peers.iter() {
            if let Some(rate) = peer.rate() {
                if peer.covers(range.end(), now) && peer.dependable(now) {
                    let backlog = peer.backlog(block_bytes, per_request) as f64;
                    latest = latest.max((backlog + full) / rate);
                    rates += rate;
                }
            }
        }
        if work >= latest * rates {
            return None;
        }
        // By when could each peer deliver one more full request, and would
        // they all be busy until then?
        let horizon = measured()
            .map(|(drain, rate)| drain + full / rate)
            .fold(None, |most: Option<f64>, at| {
                Some(most.map_or(at, |m| m.max(at)))
            })?;
        let capacity: f64 = measured()
            .map(|(drain, rate)| rate * (horizon - drain))
            .sum();
        if work >= capacity {
            return None;
        }
        let mut peers: Vec<(f64, f64)> = measured().collect();
        peers.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rates, mut weighted) = (0.0, 0.0);
        for (i, &(drain, rate)) in peers.iter().enumerate() {
            rates += rate;
            weighted += rate * drain;
            let done = (work + weighted) / rates;
            if peers.get(i + 1).is_none_or(|next| done <= next.0) {
                return Some(done);
            }
        }
        None
    }

    /// Every block of the round is asked before any block is seen: splits
    /// the rest of a waiting range off for another peer with a free slot,
    /// from the block after its first one not held, lowest range first: the
    /// part split off is the lowest range next, so blocks 1, 2, 3, … of the
    /// commit point go to as many peers at once.
    ///
    /// Ranges are asked `batch_size + 1` blocks at a time of the peers
    /// heard first (their `StateInfo`s come one at a time), so a short
    /// round can be all asked before the others are heard: they idled until
    /// a hedge, which then copied ranges whose first block was being sent
    /// already (`huge`, 40 × 8 MiB from four peers: two idle for 0.5 s).
    /// A responder's byte cap makes an answer of large blocks hold only the
    /// first one or two of its range, so the idle peers now serve the
    /// blocks right after those instead. If blocks turn out small, the
    /// first answer holds the whole range and a split-off copy is a
    /// duplicate: at most `batch_size` blocks per free slot, and only before
    /// the first block is seen (while a peer's window is its first one, two
    /// requests). Giving the
    /// splits to idle peers only left huge at 1.14 of the bound on some
    /// seeds, against 1.07 on every seed this way.
    pub(super) fn split_first_flight(&mut self, now: Instant) {
        if self.block_size_seen || !self.config.adaptive_window {
            return;
        }
        // Each split adds a request: at most `max_in_flight` of them. (Bounded
        // by the requests there were, the splits stopped before every free
        // slot was used, and the next event, even a refused one, went on
        // splitting: property test seed 9.)
        for _ in 0..self.config.max_in_flight {
            if self.requests.len() >= self.config.max_in_flight {
                return;
            }
            let mut waiting: Vec<(u64, u64, P)> = self
                .requests
                .iter()
                .filter_map(|(&id, request)| {
                    let at = self.split_point(request.range)?;
                    let mut sends = request.waiting();
                    match (sends.next(), sends.next()) {
                        (Some(send), None) => Some((at, id, send.peer.clone())),
                        _ => None,
                    }
                })
                .collect();
            waiting.sort_unstable_by_key(|&(at, ..)| at);
            let split = waiting.into_iter().find_map(|(at, id, busy)| {
                let end = self.requests.get(id)?.range.end();
                let peer = self.peers.choose(
                    &self.config,
                    end,
                    &[],
                    std::slice::from_ref(&busy),
                    now,
                    &mut self.rng,
                    None,
                    None,
                )?;
                // A peer whose requests were shortened (it timed out) takes
                // only the top of the rest, as long as it is trusted with.
                let rest = SeqRange::new(at, end)?;
                let len = self
                    .peers
                    .get(&peer)
                    .map_or(rest.len(), |p| p.trim(rest).len());
                (peer != busy).then_some((id, end - (len - 1), peer))
            });
            let Some((id, at, peer)) = split else {
                return;
            };
            if let Some(rest) = self.requests.split(id, at) {
                emit!(DEBUG, ?peer, at, "first flight split");
                self.send_attempt(now, rest, peer, Send::First);
            }
        }
    }

    /// Where `range` may be split for another peer: after its first block
    /// not held (the part kept must not be obsolete), if neither part is
    /// empty and no block of the part split off is held (gossip may have
    /// brought one: it is not asked again).
    pub(super) fn split_point(&self, range: SeqRange) -> Option<u64> {
        let mut first = range.start().max(self.buffer.next());
        while first < range.end() && self.buffer.contains(first) {
            first += 1;
        }
        let at = first + 1;
        let rest_held =
            at <= range.end() && self.buffer.stored_in(at, range.end()).next().is_some();
        (at <= range.end() && !rest_held).then_some(at)
    }

    /// Every block is held or asked: copies ranges to free peers (see
    /// `end_game_copy`) until none is worth one, so that the next event at
    /// the same instant finds nothing more to do.
    pub(super) fn end_game(&mut self, now: Instant) {
        // After a host stall every send looks overdue while its answer may
        // be next in the host's queue: copies wait for the `Timeout` that
        // follows the backlog (a 3 s stall with three peers copied 15
        // ranges whose answers were queued:
        // `a_host_stall_makes_no_end_game_copies_of_queued_answers`).
        if self.stalled_since.is_some() {
            return;
        }
        // Each copy takes a free slot or a hedge of a request: bounded.
        for _ in 0..=self.requests.len() {
            if !self.end_game_copy(now) {
                return;
            }
        }
    }

    /// A free peer that would deliver a range before the peer asked for it
    /// is expected to (that one slower, or the range deep in its queue) is
    /// sent a copy of it, the latest such range first; a range whose send
    /// is taken for lost or overdue goes before any. Ranges given to a
    /// 2 Mbit/s peer before the tail waited behind its queue: the last came
    /// 1 s after the 20 Mbit/s peer had sent everything else (hetero).
    /// Whether a copy was sent.
    pub(super) fn end_game_copy(&mut self, now: Instant) -> bool {
        if !self.config.adaptive_window || self.peers.all_full(&self.config) {
            return false;
        }
        // The earliest time a send below is taken for lost or overdue, so
        // that it is looked at then, not at some later event.
        let mut next_look: Option<Instant> = None;
        let mut look_at = |at: Instant| {
            if at > now {
                next_look = Some(next_look.map_or(at, |next: Instant| next.min(at)));
            }
        };
        let block_bytes = self.block_bytes_estimate;
        let per_request = self.blocks_per_request();
        // Each request with a single send waiting, in its peer's queue
        // order (a responder answers in order).
        let mut queued: Vec<(P, Instant, u64, u64)> = Vec::new();
        // Sends waiting at a peer that never answered, longest first.
        let mut unmeasured: Vec<(Instant, u64)> = Vec::new();
        let mut stranded: Option<u64> = None;
        let mut retried: Vec<u64> = Vec::new();
        for (id, request) in self.requests.iter() {
            if request.hedges() >= super::MAX_HEDGES {
                continue;
            }
            let mut waiting = request.waiting();
            let (Some(attempt), None) = (waiting.next(), waiting.next()) else {
                continue;
            };
            // A send of it timed out already: under random loss its retry
            // is as likely lost, and waiting for that alone made the tail
            // (at 10 % loss the last two ranges took 0.5 s, sent to one
            // peer at a time, while three were idle). A free peer gets a
            // copy, whoever failed it before.
            if request
                .attempts
                .iter()
                .any(|attempt| attempt.state == AttemptState::TimedOut)
            {
                retried.push(*id);
            }
            // Taken for lost (a silent peer's ranges, probed mid-run, were
            // fetched one at a time as each reached the commit point,
            // hostile: 1.5 s of tail): first, to any free peer.
            match self.presumed_lost_at(attempt) {
                Some(at) if at <= now => {
                    stranded = stranded.or(Some(*id));
                    continue;
                }
                Some(at) => look_at(at),
                None => {}
            }
            // What the send asked, as `Peer::backlog` counts it: a first
            // flight's split narrows a request, not what its send asked.
            let blocks = attempt.asked.len().min(per_request);
            queued.push((attempt.peer.clone(), attempt.sent_at, *id, blocks));
        }
        queued.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut latest: Option<(f64, u64, f64)> = None;
        let mut ahead = 0u64;
        for (i, (peer_id, _, id, blocks)) in queued.iter().enumerate() {
            if i == 0 || queued[i - 1].0 != *peer_id {
                ahead = 0;
            }
            ahead += blocks;
            let Some(peer) = self.peers.get(peer_id) else {
                continue;
            };
            let (Some(rate), Some(since)) = (peer.rate(), peer.busy_for(now)) else {
                // Speculative, as taking a send for lost is: not without
                // hedges.
                if peer.rate().is_none() && self.config.hedge_after.is_some() {
                    unmeasured.push((queued[i].1, *id));
                }
                continue;
            };
            let due = (ahead * block_bytes) as f64 / rate - since;
            // Overdue by more than its fastest round trip: probably lost
            // (a lost request to a byzantine peer held hostile seed 19's
            // commit point for 2.6 s after everything else was in). The
            // expected time counts its queue already; an SRTT, inflated by
            // that queue, as the margin put a copy after the timeout.
            let margin = peer.base_rtt().map(|rtt| rtt.as_secs_f64());
            let overdue = margin.is_some_and(|margin| due < -margin);
            if let Some(margin) = margin.filter(|_| !overdue) {
                // A nanosecond past the boundary, so that the wake-up
                // finds it overdue whichever way the rounding went.
                let at = Duration::try_from_secs_f64(due + margin)
                    .ok()
                    .and_then(|wait| now.checked_add(wait + Duration::from_nanos(1)));
                if let Some(at) = at {
                    look_at(at);
                }
            }
            // Then any free peer is faster.
            let (due, rate) = if overdue {
                (f64::INFINITY, 0.0)
            } else {
                (due, rate)
            };
            if latest.is_none_or(|(at, _, _)| due > at) {
                latest = Some((due, *id, rate));
            }
        }
        // A send waiting at a peer that never answered has no expected
        // time; it is copied once it has waited as long as a free peer
        // would take to deliver it, so that the range takes at most twice
        // what the better choice would have (the rent-or-buy rule). Before,
        // it waited to be taken for lost (`max(hedge_after, 2 × the slowest
        // SRTT)`): a silent peer's first ranges held the tail 0.35 s after
        // everything else was in (wild seed 4 598 flooded and steady, 0.27 s
        // unattacked).
        unmeasured.sort_unstable();
        // A stranded send is due never, and any free peer is faster; so is
        // a range lost once. Each in turn, until one finds a free peer: one
        // that none can take (no free peer holds it) must not keep the
        // others from theirs. The last field: whether it waits for its
        // copy (a send at a peer that never answered).
        let candidates = stranded
            .map(|id| (f64::INFINITY, id, 0.0, false, false))
            .into_iter()
            .chain(
                retried
                    .into_iter()
                    .map(|id| (f64::INFINITY, id, 0.0, true, false)),
            )
            .chain(unmeasured.into_iter().map(|(sent_at, id)| {
                let waited = now.saturating_duration_since(sent_at).as_secs_f64();
                (waited, id, 0.0, false, true)
            }))
            .chain(latest.map(|(due, id, slow)| (due, id, slow, false, false)));
        let mut tried: Vec<u64> = Vec::new();
        let mut copied = false;
        for (due, id, slow, lost_before, waits) in candidates {
            if tried.contains(&id) {
                continue;
            }
            tried.push(id);
            match self.end_game_peer(now, id, slow, lost_before) {
                Some((at, _, peer)) if at < due => {
                    self.send_hedge(now, id, peer, "end-game copy");
                    copied = true;
                    break;
                }
                // Looked at again once it has waited that long: the wait
                // grows as the free peer's backlog drains, so they meet
                // halfway, or once the backlog is gone.
                Some((at, drain, _)) if waits => {
                    let gap = at - due;
                    let wait = (gap / 2.0).max(gap - drain);
                    if let Some(at) = Duration::try_from_secs_f64(wait + 1e-9)
                        .ok()
                        .and_then(|wait| now.checked_add(wait))
                    {
                        look_at(at);
                    }
                }
                _ => {}
            }
        }
        if let Some(at) = next_look {
            self.look_again(at);
        }
        copied
    }

    /// The free dependable peer that would deliver request `id` soonest,
    /// at least twice as fast as `slow` (bytes a second), in how many
    /// seconds, and how many of them its sends in flight take, if any; not
    /// one already asked for it (with `lost_before`,
    /// not one waiting on it: a peer that lost it may well deliver it
    /// now), nor a sender of a rejected block in it.
    fn end_game_peer(
        &self,
        now: Instant,
        id: u64,
        slow: f64,
        lost_before: bool,
    ) -> Option<(f64, f64, P)> {
        let block_bytes = self.block_bytes_estimate;
        let per_request = self.blocks_per_request();
        let request = self.requests.get(id)?;
        let range = request.range;
        let asked: Vec<P> = if lost_before {
            request.waiting().map(|a| a.peer.clone()).collect()
        } else {
            request.attempts.iter().map(|a| a.peer.clone()).collect()
        };
        let rejected = self.rejected_in(range);
        let bytes = (range.len().min(per_request) * block_bytes) as f64;
        let mut best: Option<(f64, f64, P)> = None;
        for (id, peer) in self.peers.iter() {
            if peer.in_flight >= peer.limit(&self.config)
                || !peer.covers(range.end(), now)
                || !peer.dependable(now)
                || asked.contains(id)
                || rejected.contains(id)
            {
                continue;
            }
            let (Some(drain), Some(rate), Some(base)) = (
                peer.drain(now, block_bytes, per_request),
                peer.rate(),
                peer.base_rtt(),
            ) else {
                continue;
            };
            // Its fastest round trip on top, counted whole (it holds an
            // answer's time on the link too): only a clear gain.
            let at = drain + bytes / rate + base.as_secs_f64();
            // Only to a clearly faster peer: where the round trip, not the
            // link, sets the pace (answers with no transfer time at all)
            // the rates say little, and equal peers copying each other's
            // queues only add requests.
            if rate < slow * 2.0 {
                continue;
            }
            if best.as_ref().is_none_or(|(b, _, _)| at < *b) {
                best = Some((at, drain, id.clone()));
            }
        }
        best
    }

    /// `range` cut to what `peer` can deliver before the others are done
    /// (`end_in` seconds, see `tail_end`), or `None` if that is nothing.
    pub(super) fn tail_share(
        &self,
        now: Instant,
        peer: &P,
        end_in: f64,
        range: SeqRange,
    ) -> Option<SeqRange> {
        let peer = self.peers.get(peer)?;
        let block_bytes = self.block_bytes_estimate;
        let (Some(drain), Some(rate)) = (
            peer.drain(now, block_bytes, self.blocks_per_request()),
            peer.rate(),
        ) else {
            return Some(range);
        };
        if drain >= end_in {
            return None;
        }
        let blocks = ((end_in - drain) * rate / block_bytes as f64).ceil() as u64;
        SeqRange::new(
            range.start(),
            range.start() + blocks.clamp(1, range.len()) - 1,
        )
    }
}

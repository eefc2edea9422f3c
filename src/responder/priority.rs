//! Which peers are served only from spare capacity: those that keep asking
//! for blocks they were just served.
//!
//! A peer catching up asks for each block about once: again only when an
//! answer was lost, or a duplicated request came twice. A flooder asking
//! valid ranges as fast as its link allows soon asks mostly for blocks it
//! already got (a chain is finite). Its first pass over the chain costs
//! what one more lagger costs, and nothing tells the two apart; what comes
//! after is repeats, and a peer whose recent requests are mostly repeats is
//! put in the *background*: its reads start only when no other peer has one
//! waiting, and [`StateResponder::is_background`] tells the host to send
//! its answers only from spare uplink, as the simulator does.
//!
//! [`StateResponder::is_background`]: super::StateResponder::is_background

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::range::SeqRange;

/// Served ranges remembered per peer; past it, the lowest are forgotten
/// (a peer catching up asks upwards, so they are the least likely asked
/// again). An honest peer's ranges merge into a few; 64 keeps a random
/// flood's coverage of a small chain exact.
const MAX_RANGES: usize = 64;

/// The repeat share is in 1/1024ths, a running mean over about 4 requests:
/// a flood's answers admitted before it is told apart sit in the host's
/// send queue ahead of everyone's, so it must be told apart within a few
/// requests. Over about 16, it took some 21 repeats, and on a 2 Mbit/s
/// uplink the flood's answers queued by then delayed a lagger's first ones
/// by 0.1 s (in the sweep's clusters without timed faults or loss, a
/// flood's cost, geometric mean: 1.051 → 1.045 with one flooder, 1.131 →
/// 1.101 with several). The price: an honest peer repeating at random
/// (lost answers, duplicated requests) is now and then in the background,
/// 0.2 % of its requests at 20 % repeats, 1.6 % at 30 %, 7 % at 40 % (none
/// over 16); that costs it only while another peer waits, and 10–40 %
/// loss with several laggers ran as fast (`heavy_loss_degrades_gracefully`).
const ONE: u32 = 1024;
const SMOOTHING: u32 = 4;
/// Into the background above three repeats in four (losses of 20 % and
/// duplicates of 20 % make honest peers repeat up to about 40 %)...
const ENTER: u32 = ONE * 3 / 4;
/// ...and out again below one in two.
const LEAVE: u32 = ONE / 2;

/// A peer whose recent requests overlap what it was served is no lagger of
/// a crowd: it neither holds a favoured place nor counts toward one. A
/// lagger's ranges are disjoint but for its retries; a flood's random ones
/// overlap within a few requests, long before they are repeats enough for
/// the background. Before, four flooding identities that came first took
/// the three favoured places and the laggers were served from what they
/// left (sweep, several flooders without loss: 1.126 → 1.100 of the
/// unattacked time). The share is a running mean over about four requests
/// and the bar an eighth: one overlap keeps a peer out for its next three.
const CROWD_OVERLAP: u32 = ONE / 8;
const OVERLAP_SMOOTHING: u32 = 4;

/// A peer not heard from for this long is forgotten: memory stays bounded
/// by the peers recently active.
const MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct History {
    /// Disjoint ranges served to the peer, by start.
    served: BTreeMap<u64, u64>,
    /// Running share of the blocks its requests asked that it was
    /// served before (a repeat counts whole, a fresh range nothing).
    repeat_share: u32,
    /// Running share of its requests that asked for any block served
    /// before (a repeat, or a range overlapping one): a lagger's ranges are
    /// disjoint but for its retries, a flood's random ones overlap at once.
    overlap_share: u32,
    /// Most of its recent requests repeat what it was served.
    repeater: bool,
    last_seen: Instant,
    /// When its current run of requests began (a pause longer than
    /// [`PAUSE`] starts a new one): the earliest runs are favoured.
    since: Instant,
}

/// A peer that asked nothing for this long has finished (or paused) its
/// catch-up: it no longer holds a favoured place.
const PAUSE: Duration = Duration::from_millis(500);

impl History {
    /// Whether it is catching up from us: no repeater, its ranges
    /// disjoint, and it asked within [`PAUSE`] of `now` or, if it
    /// `waits` for answers of ours, within `waiting_for`.
    fn catching_up(&self, now: Instant, waits: bool, waiting_for: Duration) -> bool {
        let quiet = now.saturating_duration_since(self.last_seen);
        !self.repeater
            && self.overlap_share <= CROWD_OVERLAP
            && (quiet <= PAUSE || (waits && quiet <= waiting_for))
    }

    fn covers(&self, range: SeqRange) -> bool {
        self.served
            .range(..=range.start())
            .next_back()
            .is_some_and(|(_, &end)| end >= range.end())
    }

    /// How many blocks of `range` it was served.
    fn served_in(&self, range: SeqRange) -> u64 {
        let mut count = 0;
        for (&start, &end) in self.served.range(..=range.end()).rev() {
            if end < range.start() {
                break;
            }
            count += end.min(range.end()) - start.max(range.start()) + 1;
        }
        count
    }

    fn overlaps(&self, range: SeqRange) -> bool {
        self.served
            .range(..=range.end())
            .next_back()
            .is_some_and(|(_, &end)| end >= range.start())
    }

    /// Removes `first..=last`, splitting the range it falls in.
    fn remove(&mut self, first: u64, last: u64) {
        // Overlapping ranges from the highest down, looked up one at a time
        // (no vector on every call): the ranges are disjoint, so the lowest
        // one may leave a part below `first`, which ends the loop.
        while let Some((&start, &end)) = self.served.range(..=last).next_back() {
            if end < first {
                break;
            }
            self.served.remove(&start);
            if start < first {
                self.served.insert(start, first - 1);
            }
            if end > last {
                self.served.insert(last + 1, end);
            }
        }
    }

    /// Adds `first..=last`, merging with the ranges it touches.
    fn add(&mut self, first: u64, last: u64) {
        let (mut first, mut last) = (first, last);
        // Touching ranges from the highest down, one at a time, as in
        // `remove`; the bounds are those of the range added.
        let (below, above) = (first, last.saturating_add(1));
        while let Some((&start, &end)) = self.served.range(..=above).next_back() {
            if end.saturating_add(1) < below {
                break;
            }
            self.served.remove(&start);
            first = first.min(start);
            last = last.max(end);
        }
        self.served.insert(first, last);
        while self.served.len() > MAX_RANGES {
            self.served.pop_first();
        }
    }
}

/// `share` moved toward `sample` by one `smoothing`th (shares in
/// 1/[`ONE`]ths).
fn running_mean(share: u32, sample: u32, smoothing: u32) -> u32 {
    (share * (smoothing - 1) + sample) / smoothing
}

/// Runs that began this close together began at once. A crowd that one
/// `StateInfo` round sends to several relays reaches each within a few
/// milliseconds, in an order its links decide and that differs from relay
/// to relay: by arrival alone, the relays of crowd seed 1 favoured three
/// different trios, each lagger waited at some relay, and only one lagger
/// finished within the next round.
const SAME_START: Duration = Duration::from_millis(250);

/// Whether the run `a` (its start and peer) is ahead of `b`: it began
/// clearly earlier, or at once and its peer sorts first, an order every
/// responder that a crowd reaches at once agrees on.
fn begins_before<P: Ord>(a: (Instant, &P), b: (Instant, &P)) -> bool {
    if a.0.checked_add(SAME_START).is_some_and(|end| end < b.0) {
        true
    } else if b.0.checked_add(SAME_START).is_some_and(|end| end < a.0) {
        false
    } else {
        a.1 < b.1
    }
}

/// How much of an admitted request's range its peer was served before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// None of it: if it is not served after all, its range is taken back
    /// ([`Priorities::on_not_served`]). Taking back a range that overlaps
    /// what was served before would forget that too.
    Fresh,
    /// Some of it.
    Partly,
    /// All of it: a repeat.
    Repeat,
}

impl Asked {
    pub(super) fn is_repeat(self) -> bool {
        self == Self::Repeat
    }
}

/// Per-peer service history and the background set.
#[derive(Debug, Clone)]
pub(super) struct Priorities<P> {
    peers: BTreeMap<P, History>,
    /// Off in the Fabric preset: Fabric serves everyone alike.
    enabled: bool,
    /// Peers served in the foreground at once; the rest wait in the
    /// background (0: everyone is served alike).
    favoured: usize,
}

impl<P: Clone + Ord> Priorities<P> {
    pub(super) fn new(enabled: bool, favoured: usize) -> Self {
        Self {
            peers: BTreeMap::new(),
            enabled,
            favoured,
        }
    }

    /// A request of `peer` for `range` (clamped to our height) was
    /// admitted: counts whether it asks only for blocks it was served (or
    /// is being served: counted at admission, since a slow host's reads
    /// take seconds, which a flood fills), moves the peer in or out of the
    /// background, and counts `range` as served. Returns how much of it
    /// the peer was served before.
    pub(super) fn on_request(&mut self, peer: &P, range: SeqRange, now: Instant) -> Asked {
        if !self.enabled {
            return Asked::Fresh;
        }
        let history = self.peers.entry(peer.clone()).or_insert_with(|| History {
            served: BTreeMap::new(),
            repeat_share: 0,
            overlap_share: 0,
            repeater: false,
            last_seen: now,
            since: now,
        });
        if now.saturating_duration_since(history.last_seen) > PAUSE {
            history.since = now;
        }
        history.last_seen = now;
        let asked = if history.covers(range) {
            Asked::Repeat
        } else if history.overlaps(range) {
            Asked::Partly
        } else {
            Asked::Fresh
        };
        // A range partly served counts by the share of its blocks served:
        // a flood's random ranges over a small chain mostly overlap what it
        // got without covering it, and counted as fresh they kept it in
        // the foreground (sweep seeds 0–2 999, steady clusters: a flood's
        // cost 1.043 → 1.037 with one flooder, 1.119 → 1.101 with several).
        let sample = match asked {
            Asked::Repeat => ONE,
            Asked::Fresh => 0,
            Asked::Partly => {
                let share = u64::from(ONE) * history.served_in(range) / range.len();
                u32::try_from(share).unwrap_or(ONE)
            }
        };
        history.repeat_share = running_mean(history.repeat_share, sample, SMOOTHING);
        let overlap = if asked == Asked::Fresh { 0 } else { ONE };
        history.overlap_share = running_mean(history.overlap_share, overlap, OVERLAP_SMOOTHING);
        if history.repeat_share > ENTER {
            history.repeater = true;
        } else if history.repeat_share < LEAVE {
            history.repeater = false;
        }
        if asked != Asked::Repeat {
            // A repeat adds nothing: the ranges are disjoint and never
            // touch (`add` merges touching ones, `remove` leaves a gap), so
            // the one covering `range` is all it touches, and merging gives
            // it back. A flood's every request in the background is one.
            history.add(range.start(), range.end());
        }
        asked
    }

    /// Blocks `first..=last` of an admitted request were not sent to
    /// `peer` after all (cut by the byte cap, unreadable, or the request
    /// dropped): asking for them again is no repeat.
    pub(super) fn on_not_served(&mut self, peer: &P, first: u64, last: u64) {
        if let Some(history) = self.peers.get_mut(peer) {
            history.remove(first, last);
        }
    }

    /// Whether `peer` is a repeater: most of its recent requests asked for
    /// blocks it was served (`StateResponder::is_repeater`).
    pub(super) fn is_repeater(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|h| h.repeater)
    }

    /// Whether `peer` waits for the favoured ones: more than twice
    /// `favoured` peers are catching up from us, and `favoured` of them
    /// began before it (within [`SAME_START`] by peer, so every responder
    /// that several laggers reach at once favours the same ones), counted
    /// at `now`: the latest input's time, not the latest request's (a read
    /// finishing seconds later classed its answer by a crowd long gone).
    pub(super) fn is_later(&self, peer: &P, now: Instant) -> bool {
        let Some(history) = self.peers.get(peer) else {
            return false;
        };
        // No crowd can be larger than the peers remembered: the usual case
        // (a few laggers and a flooder), told without a scan on every
        // response.
        if self.favoured == 0
            || history.repeater
            || self.peers.len() <= self.favoured.saturating_mul(2)
        {
            return false;
        }
        let mut crowd = 0;
        let mut ahead = 0;
        let catching_up = |h: &&History| h.catching_up(now, false, PAUSE);
        for (other, h) in self.peers.iter().filter(|(_, h)| catching_up(h)) {
            crowd += 1;
            if begins_before((h.since, other), (history.since, peer)) {
                ahead += 1;
            }
        }
        crowd > 2 * self.favoured && ahead >= self.favoured
    }

    /// Whether more than twice `favoured` peers are catching up from us at
    /// `now`, so that some wait for the favoured ones: those that asked
    /// lately, and those that `wait` for answers of ours and asked within
    /// `waiting_for` (past it, a requester has given up on them).
    pub(super) fn crowded(
        &self,
        now: Instant,
        waiting_for: Duration,
        wait: &dyn Fn(&P) -> bool,
    ) -> bool {
        if self.favoured == 0 || self.peers.len() <= self.favoured.saturating_mul(2) {
            return false;
        }
        let catching_up = self
            .peers
            .iter()
            .filter(|(peer, h)| h.catching_up(now, wait(peer), waiting_for))
            .count();
        catching_up > 2 * self.favoured
    }

    /// Repeaters now.
    pub(super) fn repeater_count(&self) -> usize {
        self.peers.values().filter(|h| h.repeater).count()
    }

    /// Whether `peer` is remembered.
    pub(super) fn knows(&self, peer: &P) -> bool {
        self.peers.contains_key(peer)
    }

    /// Peers remembered.
    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    /// A reconnected peer is a new process: it starts afresh.
    pub(super) fn forget(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// Forgets the peers not heard from for [`MEMORY`].
    pub(super) fn forget_idle(&mut self, now: Instant) {
        self.peers
            .retain(|_, history| now.saturating_duration_since(history.last_seen) < MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> SeqRange {
        SeqRange::new(start, end).unwrap()
    }

    #[test]
    fn served_ranges_merge_and_cover() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 0);
        assert!(!p.on_request(&1, range(1, 11), now).is_repeat());
        assert!(!p.on_request(&1, range(23, 33), now).is_repeat());
        assert!(p.on_request(&1, range(3, 9), now).is_repeat());
        assert!(
            !p.on_request(&1, range(10, 15), now).is_repeat(),
            "12..=15 never asked"
        );
        assert!(!p.on_request(&1, range(16, 22), now).is_repeat());
        let history = &p.peers[&1];
        assert_eq!(history.served.iter().collect::<Vec<_>>(), [(&1, &33)]);
        assert!(p.on_request(&1, range(1, 33), now).is_repeat());
        // A response cut short: the rest was not served, asking again is
        // no repeat.
        p.on_not_served(&1, 5, 7);
        let history = &p.peers[&1];
        assert_eq!(
            history.served.iter().collect::<Vec<_>>(),
            [(&1, &4), (&8, &33)]
        );
        assert!(!p.on_request(&1, range(4, 8), now).is_repeat());
        assert!(p.on_request(&1, range(4, 8), now).is_repeat());
    }

    #[test]
    fn fresh_means_disjoint_from_everything_served() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 0);
        assert_eq!(
            p.on_request(&1, range(0, 10), now),
            Asked::Fresh,
            "nothing served yet"
        );
        assert_eq!(p.on_request(&1, range(5, 15), now), Asked::Partly);
        assert_eq!(p.on_request(&1, range(15, 15), now), Asked::Repeat);
        assert_eq!(p.on_request(&1, range(16, 21), now), Asked::Fresh);
        assert_eq!(
            p.on_request(&2, range(0, 10), now),
            Asked::Fresh,
            "per peer"
        );
    }

    #[test]
    fn a_peer_asking_mostly_repeats_goes_to_the_background_and_back() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 0);
        p.on_request(&1, range(1, 11), now);
        // An honest peer's lost answer: one repeat among fresh requests.
        for i in 1..40u64 {
            let repeat = i % 4 == 0;
            let start = if repeat { 1 } else { 11 * i + 1 };
            p.on_request(&1, range(start, start + 10), now);
        }
        assert!(!p.is_repeater(&1), "a quarter of repeats is not a flood");
        // Then nothing but repeats.
        let mut requests = 0;
        while !p.is_repeater(&1) {
            p.on_request(&1, range(1, 11), now);
            requests += 1;
            assert!(requests < 40, "never demoted");
        }
        assert!(
            requests > 4,
            "one burst of repeats is not enough: {requests}"
        );
        assert_eq!(p.repeater_count(), 1);
        // Fresh requests bring it back.
        let mut fresh = 1_000;
        while p.is_repeater(&1) {
            p.on_request(&1, range(fresh, fresh + 10), now);
            fresh += 11;
            assert!(fresh < 2_000, "never restored");
        }
    }

    #[test]
    fn an_honest_peer_under_loss_is_seldom_in_the_background() {
        // An honest peer asks a served range again only when its answer
        // was lost (or its request duplicated): at random, a fifth or two
        // fifths of its requests. A mean over about 4 requests puts it in
        // the background now and then, which costs it only while another
        // peer waits (the background is work-conserving).
        for (repeats, most) in [(0.2, 0.01), (0.4, 0.1)] {
            let now = crate::test_epoch();
            let mut p = Priorities::new(true, 0);
            let mut rng = fastrand::Rng::with_seed(7);
            let (mut next, mut background) = (1u64, 0);
            for _ in 0..2_000 {
                let start = if next > 1 && rng.f64() < repeats {
                    next - 11
                } else {
                    next += 11;
                    next - 11
                };
                p.on_request(&1, range(start, start + 10), now);
                background += usize::from(p.is_repeater(&1));
            }
            let share = background as f64 / 2_000.0;
            assert!(share < most, "{repeats}: {share}");
        }
    }

    #[test]
    fn random_ranges_over_a_small_chain_go_to_the_background_soon() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 0);
        // A flood's random 11-block ranges over a 40-block chain: after
        // the first few, most overlap what it was served without being
        // covered by it. Counted as fresh, those kept it in the foreground
        // until its 12th request; counted by the share served, its 10th.
        let starts = [1, 20, 10, 25, 5, 28, 15, 30, 3, 26, 12, 29, 7, 22];
        let entered = starts.iter().position(|&start| {
            p.on_request(&1, range(start, start + 10), now);
            p.is_repeater(&1)
        });
        assert_eq!(entered, Some(9));
    }

    #[test]
    fn a_crowd_is_served_first_come_first_favoured() {
        let t0 = crate::test_epoch();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut p = Priorities::new(true, 2);
        // Four peers catching up: no more than twice two, all alike.
        for peer in 0..4u64 {
            p.on_request(&peer, range(peer * 100 + 1, peer * 100 + 11), ms(peer));
        }
        assert!((0..4).all(|peer| !p.is_later(&peer, ms(3))));
        // A fifth: the two that began first are favoured, ties by peer.
        p.on_request(&4, range(401, 411), ms(4));
        let later: Vec<u64> = (0..5).filter(|peer| p.is_later(peer, ms(4))).collect();
        assert_eq!(later, [2, 3, 4]);
        // Peer 0 stops asking (it caught up); the others go on.
        for peer in 1..5u64 {
            p.on_request(&peer, range(peer * 100 + 12, peer * 100 + 22), ms(450));
        }
        // Past the pause it no longer counts: four peers are no crowd.
        p.on_request(&1, range(123, 133), ms(520));
        assert!((1..5).all(|peer| !p.is_later(&peer, ms(520))));
        // A newcomer makes a crowd again, and 2 has moved up.
        p.on_request(&5, range(501, 511), ms(530));
        let later: Vec<u64> = (1..6).filter(|peer| p.is_later(peer, ms(530))).collect();
        assert_eq!(later, [3, 4, 5]);
        // Coming back after the pause, peer 0 queues behind the others.
        p.on_request(&0, range(12, 22), ms(540));
        assert!(p.is_later(&0, ms(540)));
    }

    #[test]
    fn responders_a_crowd_reaches_in_different_orders_favour_the_same_peers() {
        let t0 = crate::test_epoch();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let favoured_by = |arrivals: &[u64]| {
            let mut p = Priorities::new(true, 2);
            // A peer that began a second earlier (and kept asking) stays
            // ahead of them all.
            for (i, ms) in [0, 400, 800].into_iter().enumerate() {
                let start = 11 * i as u64 + 1;
                p.on_request(&9, range(start, start + 10), t0 + Duration::from_millis(ms));
            }
            let late = t0 + Duration::from_secs(1);
            for (i, &peer) in arrivals.iter().enumerate() {
                p.on_request(
                    &peer,
                    range(1, 11),
                    late + Duration::from_micros(i as u64 * 40),
                );
            }
            p.on_request(&9, range(34, 44), at(1_000_300));
            let mut favoured: Vec<u64> = (0..10)
                .filter(|peer| !p.is_later(peer, at(1_000_300)))
                .collect();
            favoured.sort_unstable();
            favoured
        };
        let one = favoured_by(&[5, 1, 7, 3, 2, 8]);
        let other = favoured_by(&[8, 7, 3, 2, 5, 1]);
        // Peers 0, 4 and 6 never asked; of the rest, 9 began first, then 1.
        assert_eq!(one, [0, 1, 4, 6, 9]);
        assert_eq!(one, other);
    }

    #[test]
    fn repeaters_are_no_crowd_and_favouring_can_be_off() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 1);
        for peer in 0..3u64 {
            p.on_request(&peer, range(1, 11), now);
        }
        // Peer 0 floods: it goes to the background as a repeater and
        // leaves the two others, no crowd for one favoured place.
        while !p.is_repeater(&0) {
            p.on_request(&0, range(1, 11), now);
        }
        assert!((0..3).all(|peer| !p.is_later(&peer, now)));
        let mut off = Priorities::new(true, 0);
        for peer in 0..10u64 {
            off.on_request(&peer, range(1, 11), now);
        }
        assert!((0..10).all(|peer| !off.is_later(&peer, now)));
    }

    #[test]
    fn peers_asking_overlapping_ranges_hold_no_favoured_place() {
        let t0 = crate::test_epoch();
        let mut p = Priorities::new(true, 3);
        // Four flooding identities come first, each asking ranges that
        // overlap what it was served (not yet repeats enough for the
        // background), then three laggers ask fresh ranges.
        for peer in 0..4u64 {
            p.on_request(&peer, range(1, 11), t0);
            p.on_request(&peer, range(6, 16), t0);
        }
        let later = t0 + Duration::from_millis(50);
        for peer in 4..7u64 {
            p.on_request(&peer, range(1, 11), later);
        }
        assert!((0..4).all(|peer| !p.is_repeater(&peer)));
        // Before, the flooders took the three places (they began first)
        // and every lagger was served from what they left.
        assert!((4..7).all(|peer| !p.is_later(&peer, later)));
        // A lagger's own retry costs it its place for a few requests only.
        p.on_request(&4, range(1, 11), later);
        let fresh = [(12, 22), (23, 33), (34, 44)];
        for (start, end) in fresh {
            p.on_request(&4, range(start, end), later);
        }
        assert!(p.peers[&4].overlap_share <= CROWD_OVERLAP);
    }

    #[test]
    fn memory_is_bounded() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(true, 0);
        for i in 0..1_000u64 {
            p.on_request(&1, range(i * 3, i * 3), now);
        }
        assert_eq!(p.peers[&1].served.len(), MAX_RANGES);
        // The highest are kept.
        assert!(p.on_request(&1, range(2_997, 2_997), now).is_repeat());
        p.forget_idle(now + MEMORY);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn off_means_everyone_is_foreground() {
        let now = crate::test_epoch();
        let mut p = Priorities::new(false, 0);
        for _ in 0..100 {
            assert!(!p.on_request(&1, range(1, 11), now).is_repeat());
        }
        assert!(!p.is_repeater(&1));
        assert_eq!(p.len(), 0);
    }
}

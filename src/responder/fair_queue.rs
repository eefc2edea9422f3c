//! Whose queued request a newcomer may displace when the queue is full
//! ([`Config::fair_queue`](crate::Config::fair_queue)).
//!
//! A flood fills a short queue before any of its requests is served, so
//! it is never seen to repeat itself; left alone, its requests would keep
//! every other peer out for as long as it lasts. Three rules, tried in
//! order, each only among peers with requests queued:
//!
//! 1. A peer in the foreground takes the place of one in the background
//!    (which is served from spare capacity anyway); a peer in the
//!    background never takes a foreground peer's place.
//! 2. A peer holding at least two places fewer (queued and being read)
//!    than the peer holding the most takes that peer's newest place. Two,
//!    not one: peers one apart would take each other's places in turn.
//! 3. A peer holding no place takes the place of the peer whose latest
//!    read started last, if that read started after its own latest. With
//!    more flooding identities than places, each held one and a lagger
//!    holding none was only one behind: rule 2 never fired and the places
//!    never went round. Read starts change only when a read starts, never
//!    on an eviction, so two peers cannot displace each other in turn:
//!    the displaced peer was served more lately, and stays behind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A read start older than this is forgotten: its peer then ranks as never
/// served, which is still behind every peer served since. Memory stays
/// bounded by the peers served in the last minute.
const MEMORY: Duration = Duration::from_secs(60);

fn remembered(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) < MEMORY
}

/// When each peer's latest read started.
#[derive(Debug, Clone)]
pub(super) struct ReadStarts<P> {
    latest: BTreeMap<P, Instant>,
}

impl<P: Clone + Ord> ReadStarts<P> {
    pub(super) fn new() -> Self {
        Self {
            latest: BTreeMap::new(),
        }
    }

    /// A read of `peer` started at `now`. Called for every read: no clone
    /// of the peer unless it is new.
    pub(super) fn record(&mut self, peer: &P, now: Instant) {
        match self.latest.get_mut(peer) {
            Some(at) => *at = now,
            None => {
                self.latest.insert(peer.clone(), now);
            }
        }
    }

    /// The start of `peer`'s latest read, if within [`MEMORY`] of `now`;
    /// `None` sorts first, as never served. Forgetting is by age alone, so
    /// when [`forget_old`](Self::forget_old) runs changes nothing.
    pub(super) fn latest(&self, peer: &P, now: Instant) -> Option<Instant> {
        self.latest
            .get(peer)
            .copied()
            .filter(|&at| remembered(at, now))
    }

    /// Frees the read starts [`latest`](Self::latest) no longer gives.
    pub(super) fn forget_old(&mut self, now: Instant) {
        self.latest.retain(|_, &mut at| remembered(at, now));
    }

    pub(super) fn len(&self) -> usize {
        self.latest.len()
    }
}

/// A peer with requests queued, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holder<'a, P> {
    pub(super) peer: &'a P,
    /// Places held: requests queued and being read.
    pub(super) held: usize,
    /// Admission number of its newest queued request: of peers alike, the
    /// one that queued last gives its place.
    pub(super) newest: u64,
    pub(super) background: bool,
    pub(super) latest_read: Option<Instant>,
}

/// The peer whose newest queued request a request of `newcomer` takes the
/// place of, by the rules above; `None`: the request is refused.
pub(super) fn victim<'a, P: Ord>(
    newcomer: Holder<'_, P>,
    holders: impl Iterator<Item = Holder<'a, P>> + Clone,
) -> Option<&'a P> {
    let others = holders.filter(|h| h.peer != newcomer.peer);
    let most_held = |h: &Holder<'a, P>| (h.held, h.newest);
    if !newcomer.background {
        if let Some(h) = others
            .clone()
            .filter(|h| h.background)
            .max_by_key(most_held)
        {
            return Some(h.peer);
        }
    }
    // Rule 1 took any background place a foreground peer may have; a
    // background peer may take only another's.
    let eligible = others.filter(|h| h.background == newcomer.background);
    let top = eligible.clone().max_by_key(most_held)?;
    if top.held >= newcomer.held + 2 {
        return Some(top.peer);
    }
    if newcomer.held > 0 {
        return None;
    }
    let last_served = eligible.max_by_key(|h| (h.latest_read, h.newest))?;
    (last_served.latest_read > newcomer.latest_read).then_some(last_served.peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(peer: &u8, held: usize, newest: u64, latest_read: Option<u64>) -> Holder<'_, u8> {
        let t0 = crate::test_epoch();
        Holder {
            peer,
            held,
            newest,
            background: false,
            latest_read: latest_read.map(|ms| t0 + Duration::from_millis(ms)),
        }
    }

    #[test]
    fn a_peer_two_places_behind_takes_the_most_held() {
        let (a, b, c) = (1, 2, 3);
        let holders = [holder(&a, 3, 5, Some(10)), holder(&b, 3, 7, Some(5))];
        // Of two holding the most, the one that queued last.
        let newcomer = holder(&c, 1, 0, None);
        assert_eq!(victim(newcomer, holders.iter().copied()), Some(&b));
        // One place apart is not enough, however long ago it was served.
        let newcomer = holder(&c, 2, 0, None);
        assert_eq!(victim(newcomer, holders.iter().copied()), None);
        // Nor is a peer ever its own victim.
        let holders = [holder(&c, 4, 7, Some(5))];
        assert_eq!(
            victim(holder(&c, 0, 0, None), holders.iter().copied()),
            None
        );
    }

    #[test]
    fn places_go_round_among_peers_one_apart() {
        let (f1, f2, f3, lagger) = (1, 2, 3, 9);
        // Three flooders hold a place each; the lagger, served before them
        // all, holds none: it takes the place of the one served last.
        let holders = [
            holder(&f1, 1, 4, Some(30)),
            holder(&f2, 1, 5, Some(40)),
            holder(&f3, 1, 6, None),
        ];
        let newcomer = holder(&lagger, 0, 0, Some(20));
        assert_eq!(victim(newcomer, holders.iter().copied()), Some(&f2));
        // The displaced flooder, served after the lagger, cannot take the
        // place back: no peer displaces another in turn.
        let holders = [holder(&lagger, 1, 7, Some(20))];
        assert_eq!(
            victim(holder(&f2, 0, 0, Some(40)), holders.iter().copied()),
            None
        );
        // Served after every holder, the newcomer waits its turn.
        let holders = [holder(&f1, 1, 4, Some(30))];
        assert_eq!(
            victim(holder(&lagger, 0, 0, Some(35)), holders.iter().copied()),
            None
        );
        // Two never served: neither goes first.
        let holders = [holder(&f3, 1, 6, None)];
        assert_eq!(
            victim(holder(&lagger, 0, 0, None), holders.iter().copied()),
            None
        );
    }

    #[test]
    fn the_background_gives_way_and_never_takes() {
        let (flooder, lagger, other) = (1, 2, 3);
        let background = Holder {
            background: true,
            ..holder(&flooder, 1, 3, Some(1))
        };
        // A foreground peer takes a background place, whatever it holds.
        let newcomer = holder(&lagger, 2, 0, Some(50));
        let holders = [background, holder(&other, 3, 4, Some(60))];
        assert_eq!(victim(newcomer, holders.iter().copied()), Some(&flooder));
        // A background peer never takes a foreground place.
        let newcomer = Holder {
            background: true,
            ..holder(&flooder, 0, 0, None)
        };
        let holders = [holder(&lagger, 3, 4, Some(60))];
        assert_eq!(victim(newcomer, holders.iter().copied()), None);
    }

    #[test]
    fn old_read_starts_are_forgotten() {
        let t0 = crate::test_epoch();
        let mut starts = ReadStarts::new();
        starts.record(&1u8, t0);
        starts.record(&2u8, t0 + Duration::from_secs(30));
        starts.record(&1u8, t0 + Duration::from_secs(10));
        let later = t0 + MEMORY + Duration::from_secs(10);
        assert_eq!(
            starts.latest(&1, later - Duration::from_nanos(1)),
            Some(t0 + Duration::from_secs(10))
        );
        assert_eq!(starts.latest(&1, later), None, "by age, before it is freed");
        assert_eq!(starts.len(), 2);
        starts.forget_old(later);
        assert_eq!(
            (starts.latest(&2, later), starts.len()),
            (Some(t0 + Duration::from_secs(30)), 1)
        );
    }
}

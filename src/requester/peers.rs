//! What the requester knows of each peer: its advertisement, its load, its
//! round trips and its failures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::types::{PeerState, PeerStats};
use crate::config::{Config, PeerSelection};

/// Longest time a failing peer is benched for.
const MAX_BENCH: Duration = Duration::from_secs(30);
/// First bench after a failure; doubles with each further strike.
const BASE_BENCH: Duration = Duration::from_millis(500);

/// Jacobson/Karels round-trip estimator (RFC 6298).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    pub(crate) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let deviation = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + deviation) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// SRTT + 4·RTTVAR, if measured.
    pub(crate) fn rto(&self) -> Option<Duration> {
        self.srtt.map(|srtt| srtt + self.rttvar * 4)
    }
}

/// One member of the channel.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) advertised: Option<u64>,
    pub(crate) in_flight: usize,
    pub(crate) rtt: RttEstimator,
    /// Failures not yet paid back by successes; drives the bench time.
    strikes: u32,
    benched_until: Option<Instant>,
    pub(crate) stats: PeerStats,
}

impl Peer {
    fn new(advertised: Option<u64>) -> Self {
        Self {
            advertised,
            in_flight: 0,
            rtt: RttEstimator::default(),
            strikes: 0,
            benched_until: None,
            stats: PeerStats::default(),
        }
    }

    /// Whether the peer advertises block `end` (height > end).
    pub(crate) fn covers(&self, end: u64) -> bool {
        self.advertised.is_some_and(|height| height > end)
    }

    fn benched(&self, now: Instant) -> bool {
        self.benched_until.is_some_and(|until| until > now)
    }

    /// The deadline of a request sent to this peer now.
    pub(crate) fn timeout(&self, config: &Config) -> Duration {
        match (config.adaptive_timeout, self.rtt.rto()) {
            (true, Some(rto)) => {
                rto.clamp(config.min_response_timeout, config.max_response_timeout)
            }
            _ => config.response_timeout,
        }
    }

    pub(crate) fn succeeded(&mut self) {
        self.strikes = self.strikes.saturating_sub(1);
        if self.strikes == 0 {
            self.benched_until = None;
        }
    }

    /// Records a failure; under scored selection the peer is benched for a
    /// time doubling with its outstanding strikes.
    pub(crate) fn failed(&mut self, now: Instant, weight: u32, selection: PeerSelection) {
        self.strikes = self.strikes.saturating_add(weight);
        if selection == PeerSelection::Scored {
            let doublings = self.strikes.saturating_sub(1).min(16);
            let bench = BASE_BENCH.saturating_mul(1 << doublings).min(MAX_BENCH);
            self.benched_until = Some(now + bench);
        }
    }
}

/// The channel's members as last advertised, with local records.
#[derive(Debug, Clone)]
pub(crate) struct Peers<P> {
    map: BTreeMap<P, Peer>,
}

impl<P> Default for Peers<P> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<P: Clone + Ord> Peers<P> {
    /// Replaces the view. Records of peers that stay are kept; departed
    /// peers are forgotten (memory stays bounded by the membership). Returns
    /// the peers that may no longer be asked: departed, left the channel, or
    /// advertising nothing.
    pub(crate) fn replace(&mut self, view: Vec<PeerState<P>>) -> Vec<P> {
        let mut next = BTreeMap::new();
        let mut unusable = Vec::new();
        for state in view {
            if state.usable_height().is_none() {
                unusable.push(state.id.clone());
            }
            let advertised = state.usable_height();
            let mut peer = self
                .map
                .remove(&state.id)
                .unwrap_or_else(|| Peer::new(advertised));
            peer.advertised = advertised;
            next.insert(state.id, peer);
        }
        let departed = std::mem::replace(&mut self.map, next);
        unusable.extend(departed.into_keys());
        unusable
    }

    pub(crate) fn get(&self, id: &P) -> Option<&Peer> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &P) -> Option<&mut Peer> {
        self.map.get_mut(id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&P, &Peer)> {
        self.map.iter()
    }

    /// The best height advertised by a peer that may be asked.
    pub(crate) fn target(&self) -> u64 {
        self.map
            .values()
            .filter_map(|peer| peer.advertised)
            .max()
            .unwrap_or(0)
    }

    /// Whether any peer, busy or not, advertises block `end`.
    pub(crate) fn any_covers(&self, end: u64) -> bool {
        self.map.values().any(|peer| peer.covers(end))
    }

    /// Picks the peer for a request ending at `end`, or `None` if every
    /// eligible peer is at its in-flight cap (or benched).
    ///
    /// `avoid` lists peers that already failed this range: under scored
    /// selection they are used only if no other peer can serve; under random
    /// selection (Fabric) they are skipped only when `strict` (a rejected
    /// block must be fetched from someone else).
    pub(crate) fn choose(
        &self,
        config: &Config,
        end: u64,
        avoid: &[P],
        strict: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<P> {
        let available = |id: &P, peer: &Peer| {
            peer.covers(end)
                && peer.in_flight < config.max_in_flight_per_peer
                && !(config.peer_selection == PeerSelection::Scored && peer.benched(now))
                && (!strict || !avoid.contains(id))
        };
        let mut candidates: Vec<(&P, &Peer)> = self
            .map
            .iter()
            .filter(|(id, peer)| available(id, peer))
            .collect();
        if config.peer_selection == PeerSelection::Random {
            if candidates.is_empty() {
                return None;
            }
            return Some(candidates[rng.usize(..candidates.len())].0.clone());
        }
        let fresh: Vec<(&P, &Peer)> = candidates
            .iter()
            .copied()
            .filter(|(id, _)| !avoid.contains(id))
            .collect();
        if !fresh.is_empty() {
            candidates = fresh;
        }
        // Least loaded first, then the fastest; ties broken by the seed so
        // that equal peers share the load.
        let key = |peer: &Peer| (peer.in_flight, peer.rtt.srtt().unwrap_or(Duration::ZERO));
        let best = candidates.iter().map(|(_, peer)| key(peer)).min()?;
        let tied: Vec<&P> = candidates
            .iter()
            .filter(|(_, peer)| key(peer) == best)
            .map(|(id, _)| *id)
            .collect();
        Some(tied[rng.usize(..tied.len())].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_estimator_follows_rfc6298() {
        let mut rtt = RttEstimator::default();
        assert_eq!(rtt.rto(), None);
        rtt.sample(Duration::from_millis(100));
        assert_eq!(rtt.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(rtt.rto(), Some(Duration::from_millis(300)));
        rtt.sample(Duration::from_millis(200));
        // srtt = 7/8·100 + 1/8·200; rttvar = 3/4·50 + 1/4·100
        assert_eq!(rtt.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(rtt.rto(), Some(Duration::from_micros(112_500 + 4 * 62_500)));
    }

    #[test]
    fn scored_choice_prefers_unloaded_and_skips_failed() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = Peers::default();
        peers.replace(vec![PeerState::new("a", 100), PeerState::new("b", 100)]);
        peers.get_mut(&"a").unwrap().in_flight = 1;
        assert_eq!(
            peers.choose(&config, 50, &[], false, now, &mut rng),
            Some("b")
        );
        assert_eq!(
            peers.choose(&config, 50, &["b"], false, now, &mut rng),
            Some("a")
        );
        // Only "b" can serve: the failed peer is still used rather than stall.
        peers.get_mut(&"a").unwrap().advertised = Some(10);
        assert_eq!(
            peers.choose(&config, 50, &["b"], false, now, &mut rng),
            Some("b")
        );
        assert_eq!(peers.choose(&config, 50, &["b"], true, now, &mut rng), None);
    }

    #[test]
    fn eligibility_needs_height_above_end() {
        let config = Config::fabric();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = Peers::default();
        peers.replace(vec![PeerState::new("a", 11)]);
        // Fabric asks a peer with height == end (it lacks block `end`).
        assert_eq!(peers.choose(&config, 11, &[], false, now, &mut rng), None);
        assert_eq!(
            peers.choose(&config, 10, &[], false, now, &mut rng),
            Some("a")
        );
    }

    #[test]
    fn failures_bench_scored_peers_with_backoff() {
        let now = crate::test_epoch();
        let mut peer = Peer::new(Some(10));
        peer.failed(now, 1, PeerSelection::Scored);
        assert!(peer.benched(now + BASE_BENCH - Duration::from_millis(1)));
        assert!(!peer.benched(now + BASE_BENCH));
        peer.failed(now, 1, PeerSelection::Scored);
        assert!(peer.benched(now + BASE_BENCH));
        peer.succeeded();
        peer.succeeded();
        assert!(!peer.benched(now));
        let mut fabric = Peer::new(Some(10));
        fabric.failed(now, 1, PeerSelection::Random);
        assert!(
            !fabric.benched(now),
            "Fabric's random choice remembers nothing"
        );
    }
}

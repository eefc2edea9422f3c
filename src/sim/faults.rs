//! Faults beyond the links' loss and delay: nodes that crash, restart, join
//! or leave ([`Outage`]), partitions that heal ([`Partition`]), a block
//! whose copies are corrupt at some of its sources ([`CorruptBlock`]),
//! ledgers cut back at a restart ([`Rollback`]), and per-node links
//! ([`Link`]).
//!
//! Reachability is a pure function of virtual time: nodes `a` and `b` can
//! talk at `t` iff neither is in an outage and no partition separates them.
//! Each pair has a *connection generation*, bumped whenever it breaks, so a
//! message sent before a break is lost even if it lands after the heal (the
//! TCP connection that carried it is gone).

use std::collections::BTreeSet;
use std::time::Duration;

/// A node down from `from` until `until` (`None`: for good). While down its
/// connections are closed (every requester that knew it gets
/// `Event::PeerDisconnected`), messages to and from it are lost, and its
/// reads in progress are lost. When it returns it is a new process over the
/// same ledger: fresh machines, the ledger intact, and `PeerConnected` at
/// every requester that knew it.
///
/// An outage from zero is a node that *joins* at `until`; one without an
/// end is a node that *leaves* at `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// The node (index in the cluster: up-to-date peers, then laggers).
    pub node: usize,
    /// When it goes down.
    pub from: Duration,
    /// When it comes back, if it does.
    pub until: Option<Duration>,
}

/// Up-to-date peer `node` stops answering state requests from `from` until
/// `until` (for good if `None`), while it stays connected and keeps
/// advertising its height: a hung disk or a deadlocked state provider. No
/// connection event tells anyone; its requesters' deadlines must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hang {
    /// The peer (index among the up-to-date peers).
    pub node: usize,
    /// When it stops answering.
    pub from: Duration,
    /// When it answers again, if it does.
    pub until: Option<Duration>,
}

/// Node `node`'s uplink carries only `uplink_bps` from `from` until
/// `until` (for good if `None`), then its own rate again: a link that
/// degrades (a congested route, a neighbour's backup, a throttled cloud
/// instance). The node does nothing different; its peers see its answers
/// slow down, past what they measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slowdown {
    /// The node (an up-to-date peer or a lagger).
    pub node: usize,
    /// When its uplink slows down.
    pub from: Duration,
    /// When it is back to its own rate, if it is.
    pub until: Option<Duration>,
    /// Its uplink meanwhile, bits per second.
    pub uplink_bps: u64,
}

/// Node `node` comes back from a crash at `at` with its ledger cut back to
/// `height` (kept if lower): Fabric's `peer node rollback`, or a ledger
/// restored from an older backup. Its `StateInfo` advertises the lower
/// height from then on, but whoever heard the old one still believes it
/// until that arrives; a peer with a requester catches up again, a lagger
/// fetches again what it lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollback {
    /// The node (index in the cluster: up-to-date peers, then laggers).
    pub node: usize,
    /// When it restarts: the end of one of its outages.
    pub at: Duration,
    /// Its ledger height after the restart.
    pub height: u64,
}

/// Node `node`'s process is paused from `from` until `until` (SIGSTOP, a
/// frozen container, a VM descheduled, swapping): it handles nothing, its
/// connections stay up, what reaches it waits in its socket buffers and
/// what it already wrote keeps leaving. At `until` it handles what
/// arrived, in order, then its timers, which all fell due meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// The node (index in the cluster: up-to-date peers, then laggers).
    pub node: usize,
    /// When it stops.
    pub from: Duration,
    /// When it resumes.
    pub until: Duration,
}

/// Nodes in `side` cannot reach nodes outside it from `from` until `until`
/// (connection events at both ends, at both instants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// One side of the cut (node indices); the other side is everyone else.
    pub side: BTreeSet<usize>,
    /// When the cut starts.
    pub from: Duration,
    /// When it heals.
    pub until: Duration,
}

/// Block `seq` is corrupt at `sources` of the up-to-date peers that serve
/// it: the host rejects those copies (`Event::Rejected`). `sources:
/// usize::MAX` (or any count at least the serving peers') makes every copy
/// bad: the block is bad at its only source, and no lagger can pass it.
/// The `k`-th corrupt block of a scenario (from 0, in the order added) is
/// bad at the peers that serve it from the `k`-th up-to-date peer on (in
/// index order, wrapping around): two blocks bad at one source each are
/// bad at two peers when both peers serve both blocks (a liar, serving
/// half the chain, may be skipped for one and not the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptBlock {
    /// The block.
    pub seq: u64,
    /// How many of its sources hold a bad copy.
    pub sources: usize,
}

/// One node's access link; overrides the scenario's uniform values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Its share of the one-way latency: a path's latency is the mean of
    /// its two ends' (so uniform links keep the scenario's latency).
    pub latency: Duration,
    /// Uplink, bits per second.
    pub uplink_bps: u64,
    /// Downlink, bits per second.
    pub downlink_bps: u64,
}

/// The schedule of outages and partitions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schedule {
    outages: Vec<Outage>,
    partitions: Vec<Partition>,
    pauses: Vec<Pause>,
    /// Every instant at which reachability may change, or a peer stops
    /// serving for good (which lowers liveness targets), ascending, deduped.
    transitions: Vec<Duration>,
}

impl Schedule {
    pub(crate) fn new(
        outages: &[Outage],
        partitions: &[Partition],
        hangs: &[Hang],
        pauses: &[Pause],
    ) -> Self {
        let mut transitions: BTreeSet<Duration> = BTreeSet::new();
        for p in pauses {
            transitions.insert(p.from);
            transitions.insert(p.until);
        }
        transitions.extend(hangs.iter().filter(|h| h.until.is_none()).map(|h| h.from));
        for o in outages {
            transitions.insert(o.from);
            transitions.extend(o.until);
        }
        for p in partitions {
            transitions.insert(p.from);
            transitions.insert(p.until);
        }
        Self {
            outages: outages.to_vec(),
            partitions: partitions.to_vec(),
            pauses: pauses.to_vec(),
            transitions: transitions.into_iter().collect(),
        }
    }

    /// Whether `node` is running at `t`.
    pub(crate) fn up(&self, node: usize, t: Duration) -> bool {
        !self
            .outages
            .iter()
            .any(|o| o.node == node && o.from <= t && o.until.is_none_or(|u| t < u))
    }

    /// When `node` resumes, if it is paused at `t`.
    pub(crate) fn paused_until(&self, node: usize, t: Duration) -> Option<Duration> {
        self.pauses
            .iter()
            .filter(|p| p.node == node && p.from <= t && t < p.until)
            .map(|p| p.until)
            .max()
    }

    /// The end of `node`'s latest pause begun by `t` (over or not): its
    /// timers that fell due before it wait until then.
    pub(crate) fn last_resume(&self, node: usize, t: Duration) -> Option<Duration> {
        self.pauses
            .iter()
            .filter(|p| p.node == node && p.from <= t)
            .map(|p| p.until)
            .max()
    }

    /// Whether `a` and `b` can reach each other at `t`.
    pub(crate) fn reachable(&self, a: usize, b: usize, t: Duration) -> bool {
        self.up(a, t)
            && self.up(b, t)
            && !self
                .partitions
                .iter()
                .any(|p| p.from <= t && t < p.until && p.side.contains(&a) != p.side.contains(&b))
    }

    /// The first transition strictly after `t`.
    pub(crate) fn next_after(&self, t: Duration) -> Option<Duration> {
        self.transitions.iter().copied().find(|&x| x > t)
    }

    /// Whether `node` comes back from a crash (not a first join) at `t`.
    pub(crate) fn restarts_at(&self, node: usize, t: Duration) -> bool {
        self.outages
            .iter()
            .any(|o| o.node == node && o.until == Some(t) && !o.from.is_zero())
    }
}

/// `count` links drawn from `seed`: latency share uniform in `latency_ms`,
/// each bandwidth one of `bandwidths` (bits per second).
pub fn random_links(
    seed: u64,
    count: usize,
    latency_ms: std::ops::RangeInclusive<u64>,
    bandwidths: &[u64],
) -> Vec<Link> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let pick = |rng: &mut fastrand::Rng| {
        if bandwidths.is_empty() {
            100_000_000
        } else {
            bandwidths[rng.usize(0..bandwidths.len())]
        }
    };
    (0..count)
        .map(|_| Link {
            latency: Duration::from_millis(rng.u64(latency_ms.clone())),
            uplink_bps: pick(&mut rng),
            downlink_bps: pick(&mut rng),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_follows_outages_and_partitions() {
        let s = Duration::from_secs;
        let schedule = Schedule::new(
            &[
                Outage {
                    node: 1,
                    from: s(10),
                    until: Some(s(20)),
                },
                Outage {
                    node: 2,
                    from: s(5),
                    until: None,
                },
            ],
            &[Partition {
                side: [0].into(),
                from: s(30),
                until: s(40),
            }],
            &[Hang {
                node: 0,
                from: s(50),
                until: None,
            }],
            &[Pause {
                node: 3,
                from: s(60),
                until: s(62),
            }],
        );
        assert!(schedule.reachable(0, 1, s(9)));
        assert!(!schedule.reachable(0, 1, s(10)));
        assert!(schedule.reachable(0, 1, s(20)), "back at `until`");
        assert!(!schedule.up(2, s(1000)), "left for good");
        assert!(!schedule.reachable(0, 3, s(35)));
        assert!(schedule.reachable(1, 3, s(35)), "same side");
        assert!(schedule.reachable(0, 3, s(40)), "healed");
        assert_eq!(schedule.next_after(s(10)), Some(s(20)));
        assert_eq!(schedule.next_after(s(40)), Some(s(50)), "a hang for good");
        assert_eq!(schedule.next_after(s(50)), Some(s(60)), "a pause");
        assert_eq!(schedule.paused_until(3, s(61)), Some(s(62)));
        assert_eq!(schedule.paused_until(3, s(62)), None, "resumed at `until`");
        assert_eq!(schedule.last_resume(3, s(100)), Some(s(62)));
        assert_eq!(schedule.last_resume(3, s(59)), None);
        assert!(schedule.reachable(3, 0, s(61)), "connected while paused");
        assert_eq!(schedule.next_after(s(60)), Some(s(62)));
        assert_eq!(schedule.next_after(s(62)), None);
        assert!(schedule.restarts_at(1, s(20)));
    }
}

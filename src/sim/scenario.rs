//! What a simulation runs: the cluster, its links and its faulty peers.

use std::collections::BTreeSet;
use std::time::Duration;

use super::faults::{CorruptBlock, Hang, Link, Outage, Partition, Pause, Rollback, Slowdown};
use super::network::BurstLoss;

/// Smallest bandwidth accepted, bits per second.
const MIN_BANDWIDTH: u64 = 1_000;
/// Longest duration accepted in a scenario: virtual time stays far from
/// what an `Instant` can hold.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How an up-to-date peer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Behaviour {
    /// Serves what it has, at once.
    #[default]
    Honest,
    /// Advertises its height but never answers a request.
    Silent,
    /// Honest, but each read of blocks takes [`Scenario::slow_delay`] more.
    Slow,
    /// Advertises the full chain while holding only its first half
    /// (`1 + blocks / 2` blocks); serves what it really has.
    Lying,
    /// Advertises the full chain and answers every request with one of, by
    /// the seed: blocks that fail verification, a wrong nonce, payloads
    /// outside the requested range, payloads whose number is not their
    /// block's, garbage bytes, or the right blocks under a nonce the
    /// requester sent to another peer (overheard).
    Byzantine,
    /// Holds the whole chain but advertises [`Scenario::overclaim_by`]
    /// blocks more, answering as [`Overclaim`] says (issue #8.1).
    Overclaiming(Overclaim),
    /// Runs no machine; sends valid state requests to every responder as
    /// fast as its uplink (and send buffers) allow.
    Flooder,
    /// Holds the whole chain and answers like an honest peer, but silently
    /// drops every request whose range holds one of the blocks it chose
    /// (one in [`DROPPED_ONE_IN`], by a hash of the block's number and the
    /// peer), so a retry of such a range to it fails as the first send did.
    /// A peer with a damaged stretch of ledger behind a responder that
    /// fails the whole read, or one that withholds chosen blocks on
    /// purpose: to the requester it looks like random loss on a working
    /// path.
    Dropping,
}

/// A [`Behaviour::Dropping`] peer drops the requests for ranges holding
/// about one block in this many (an 11-block range: about half of them).
pub const DROPPED_ONE_IN: u64 = 16;

/// How an overclaiming peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overclaim {
    /// Never answers.
    Silent,
    /// Answers every request with no payload.
    Empty,
    /// Serves what it truly holds (the chain), nothing above.
    Partial,
}

/// A cluster: `peers` up-to-date peers (nodes `0..peers`, behaving as
/// [`behaviours`](Self::behaviours) says) and `laggers` honest peers holding
/// only the genesis block (nodes `peers..peers + laggers`), which must catch
/// up `blocks` blocks. Every node runs an `AntiEntropy` and a
/// `StateResponder` (faulty peers run only what their behaviour needs), and
/// laggers serve each other what they already have.
///
/// `Default` is the `catchup` example's cluster: 4 peers, one lagger 10 000
/// blocks of 64 KiB behind, 100 ms round trip, 100 Mbit/s uplinks, 1 Gbit/s
/// downlinks, no faults.
///
/// Build one from the default with struct update syntax, then add faults
/// with the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use antientropy::sim::{Overclaim, Scenario};
///
/// let scenario = Scenario { laggers: 2, blocks: 500, ..Scenario::default() }
///     .with_overclaimers(1, Overclaim::Silent, 1000) // one peer advertises 1000 blocks it lacks
///     .with_crash(0, Duration::from_secs(1), Duration::from_secs(2)) // node 0 down from 1 s to 3 s
///     .with_corrupt_block(42, 1); // one source serves a bad block 42
/// scenario.validate().unwrap();
/// assert_eq!(scenario.target_height(), 501);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Up-to-date peers (honest or faulty).
    pub peers: usize,
    /// Peers that start at height 1 (the genesis block) and catch up.
    pub laggers: usize,
    /// Blocks the laggers lack: the chain's height is `blocks + 1`.
    pub blocks: u64,
    /// Bytes of transaction data per block (the encoded block is a few
    /// dozen bytes larger).
    pub block_size: usize,
    /// One-way latency between any two nodes (half the round trip).
    pub latency: Duration,
    /// Every node's uplink, bits per second (at least 1 000).
    pub uplink_bps: u64,
    /// Every node's downlink, bits per second (at least 1 000).
    pub downlink_bps: u64,
    /// Probability that a message (or a `StateInfo`) is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message gets an extra delay of up to
    /// [`reorder_delay`](Self::reorder_delay).
    pub reorder: f64,
    /// Largest extra delay of a reordered message.
    pub reorder_delay: Duration,
    /// Losses in bursts on every connection, if any: in a burst a message
    /// is lost with the burst's probability instead of
    /// [`loss`](Self::loss).
    pub burst_loss: Option<BurstLoss>,
    /// Behaviour of up-to-date peer `i` (`Honest` past the end).
    pub behaviours: Vec<Behaviour>,
    /// Messages each connection's send buffer holds until they leave the
    /// uplink; more are dropped (Fabric's `peer.gossip.sendBuffSize`: 200).
    pub send_buffer: usize,
    /// Extra service time of a [`Behaviour::Slow`] peer, per read.
    pub slow_delay: Duration,
    /// How long a lagger's ledger takes to verify and commit a block, its
    /// process busy meanwhile (a host that commits synchronously, as
    /// `adapters::RequesterHost` does): what reaches it waits, in order.
    /// Zero: commits are instant.
    pub commit_time: Duration,
    /// Every node advertises its height (a `StateInfo`) to all others this
    /// often, starting at time zero (Fabric: 4 s).
    pub state_info_interval: Duration,
    /// Steps after which the run stops as a livelock.
    pub max_steps: u64,
    /// Virtual time after which the run stops unconverged.
    pub max_virtual_time: Duration,
    /// How far above the chain an [`Behaviour::Overclaiming`] peer
    /// advertises, in blocks.
    pub overclaim_by: u64,
    /// Blocks corrupt at some or all of their sources.
    pub corrupt: Vec<CorruptBlock>,
    /// Crashes, restarts, joins and leaves.
    pub outages: Vec<Outage>,
    /// Ledgers cut back when their node restarts.
    pub rollbacks: Vec<Rollback>,
    /// Partitions that heal.
    pub partitions: Vec<Partition>,
    /// Peers that stop answering while connected.
    pub hangs: Vec<Hang>,
    /// Nodes whose process is paused for a while.
    pub pauses: Vec<Pause>,
    /// Nodes whose uplink slows down for a while.
    pub slowdowns: Vec<Slowdown>,
    /// Per-node links (node `i` gets `links[i]`; nodes past the end get
    /// the uniform `latency`, `uplink_bps`, `downlink_bps`).
    pub links: Vec<Link>,
    /// A run whose unfinished laggers make no progress (no commit, no
    /// give-up for a bad block) for this long, with no outage or partition
    /// pending, stops as [`Outcome::Stalled`](super::Outcome::Stalled).
    pub stall_after: Duration,
    /// Flooders stay idle: the same cluster unattacked, the baseline a
    /// flood is measured against.
    pub idle_flooders: bool,
    /// Mixed into the seeds of the nodes' machines only (0: none): the
    /// same cluster whose peers choose differently, to tell what a change
    /// costs from the spread of lossy runs (a placebo).
    pub machine_seed_salt: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            peers: 4,
            laggers: 1,
            blocks: 10_000,
            block_size: 64 * 1024,
            latency: Duration::from_millis(50),
            uplink_bps: 100_000_000,
            downlink_bps: 1_000_000_000,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(50),
            burst_loss: None,
            behaviours: Vec::new(),
            send_buffer: 200,
            slow_delay: Duration::from_millis(500),
            commit_time: Duration::ZERO,
            state_info_interval: Duration::from_secs(4),
            max_steps: 5_000_000,
            max_virtual_time: Duration::from_secs(24 * 3600),
            overclaim_by: 1000,
            corrupt: Vec::new(),
            outages: Vec::new(),
            rollbacks: Vec::new(),
            hangs: Vec::new(),
            pauses: Vec::new(),
            slowdowns: Vec::new(),
            partitions: Vec::new(),
            links: Vec::new(),
            stall_after: Duration::from_secs(600),
            idle_flooders: false,
            machine_seed_salt: 0,
        }
    }
}

impl Scenario {
    /// Makes the last up-to-date peers faulty: `silent`, then `slow`, then
    /// `lying`, then `byzantine` ones, counted from the end, so peer 0 stays
    /// honest as long as one honest peer is left.
    pub fn with_faults(
        mut self,
        silent: usize,
        slow: usize,
        lying: usize,
        byzantine: usize,
    ) -> Self {
        let faulty = [
            (Behaviour::Byzantine, byzantine),
            (Behaviour::Lying, lying),
            (Behaviour::Slow, slow),
            (Behaviour::Silent, silent),
        ];
        let mut behaviours = vec![Behaviour::Honest; self.peers];
        let mut slots = (0..self.peers).rev();
        for (behaviour, count) in faulty {
            for _ in 0..count {
                if let Some(i) = slots.next() {
                    behaviours[i] = behaviour;
                }
            }
        }
        self.behaviours = behaviours;
        self
    }

    /// Makes the last honest up-to-date peers overclaim by `by` blocks,
    /// answering as `mode` says (at least one honest peer is kept).
    pub fn with_overclaimers(mut self, count: usize, mode: Overclaim, by: u64) -> Self {
        self.behaviours.resize(self.peers, Behaviour::Honest);
        let mut honest: Vec<usize> = (0..self.peers)
            .filter(|&i| self.behaviours[i] == Behaviour::Honest)
            .collect();
        // The first honest peer stays honest.
        if !honest.is_empty() {
            honest.remove(0);
        }
        honest.reverse();
        honest.truncate(count);
        for i in honest {
            self.behaviours[i] = Behaviour::Overclaiming(mode);
        }
        self.overclaim_by = by;
        self
    }

    /// Makes the last honest up-to-date peers [`Behaviour::Dropping`] (at
    /// least one honest peer is kept).
    pub fn with_droppers(mut self, count: usize) -> Self {
        self.behaviours.resize(self.peers, Behaviour::Honest);
        let honest = (0..self.peers).filter(|&i| self.behaviours[i] == Behaviour::Honest);
        let last: Vec<usize> = honest.skip(1).collect();
        for &i in last.iter().rev().take(count) {
            self.behaviours[i] = Behaviour::Dropping;
        }
        self
    }

    /// Adds `count` flooders as the last up-to-date peers (on top of the
    /// existing ones).
    pub fn with_flooders(mut self, count: usize) -> Self {
        self.behaviours.resize(self.peers, Behaviour::Honest);
        self.behaviours
            .extend(std::iter::repeat_n(Behaviour::Flooder, count));
        self.peers += count;
        self
    }

    /// Makes block `seq` bad at `sources` of its sources (`usize::MAX`: at
    /// all of them). Called again, adds another bad block, whose bad copies
    /// start one peer later (see [`CorruptBlock`]), so that different
    /// peers hold bad copies of different blocks.
    pub fn with_corrupt_block(mut self, seq: u64, sources: usize) -> Self {
        self.corrupt.push(CorruptBlock { seq, sources });
        self
    }

    /// Node `node` crashes at `at` and restarts `down_for` later, its
    /// ledger intact.
    pub fn with_crash(mut self, node: usize, at: Duration, down_for: Duration) -> Self {
        self.outages.push(Outage {
            node,
            from: at,
            until: Some(at.saturating_add(down_for)),
        });
        self
    }

    /// Node `node` crashes at `at` and restarts `down_for` later with its
    /// ledger cut back to `height` (see [`Rollback`]).
    pub fn with_rollback(self, node: usize, at: Duration, down_for: Duration, height: u64) -> Self {
        let mut scenario = self.with_crash(node, at, down_for);
        scenario.rollbacks.push(Rollback {
            node,
            at: at.saturating_add(down_for),
            height,
        });
        scenario
    }

    /// Node `node` joins the cluster at `at` (it is down before).
    pub fn with_join(mut self, node: usize, at: Duration) -> Self {
        self.outages.push(Outage {
            node,
            from: Duration::ZERO,
            until: Some(at),
        });
        self
    }

    /// Node `node` leaves the cluster for good at `at`.
    pub fn with_leave(mut self, node: usize, at: Duration) -> Self {
        self.outages.push(Outage {
            node,
            from: at,
            until: None,
        });
        self
    }

    /// Up-to-date peer `node` hangs from `from` for `hung_for` (for good if
    /// `None`): it takes requests and answers none, connected and still
    /// advertising (see [`Hang`]).
    pub fn with_hang(mut self, node: usize, from: Duration, hung_for: Option<Duration>) -> Self {
        self.hangs.push(Hang {
            node,
            from,
            until: hung_for.map(|d| from.saturating_add(d)),
        });
        self
    }

    /// Node `node`'s uplink carries `uplink_bps` from `from` for
    /// `slow_for` (for good if `None`), then its own rate (see
    /// [`Slowdown`]).
    pub fn with_slowdown(
        mut self,
        node: usize,
        from: Duration,
        slow_for: Option<Duration>,
        uplink_bps: u64,
    ) -> Self {
        self.slowdowns.push(Slowdown {
            node,
            from,
            until: slow_for.map(|d| from.saturating_add(d)),
            uplink_bps,
        });
        self
    }

    /// Node `node` (an up-to-date peer or a lagger) is paused from `from`
    /// for `paused_for` (see [`Pause`]).
    pub fn with_pause(mut self, node: usize, from: Duration, paused_for: Duration) -> Self {
        self.pauses.push(Pause {
            node,
            from,
            until: from.saturating_add(paused_for),
        });
        self
    }

    /// Nodes in `side` cannot reach the others from `from` until `until`.
    pub fn with_partition(
        mut self,
        side: impl IntoIterator<Item = usize>,
        from: Duration,
        until: Duration,
    ) -> Self {
        self.partitions.push(Partition {
            side: side.into_iter().collect::<BTreeSet<_>>(),
            from,
            until,
        });
        self
    }

    /// Gives node `i` the link `links[i]`.
    pub fn with_links(mut self, links: Vec<Link>) -> Self {
        self.links = links;
        self
    }

    /// Node `i`'s link: its own, or the uniform one.
    pub fn link(&self, i: usize) -> Link {
        self.links.get(i).copied().unwrap_or(Link {
            latency: self.latency,
            uplink_bps: self.uplink_bps,
            downlink_bps: self.downlink_bps,
        })
    }

    /// The behaviour of up-to-date peer `i`.
    pub fn behaviour(&self, i: usize) -> Behaviour {
        self.behaviours.get(i).copied().unwrap_or_default()
    }

    /// The height every lagger must reach: the chain's.
    pub fn target_height(&self) -> u64 {
        self.blocks.saturating_add(1)
    }

    /// Checks that the scenario can run and can converge.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        use ScenarioError::*;
        if self.peers == 0 {
            return Err(Invalid("peers must be at least 1"));
        }
        if self.laggers == 0 {
            return Err(Invalid("laggers must be at least 1"));
        }
        if self.blocks == 0 {
            return Err(Invalid("blocks must be at least 1"));
        }
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Probability(name));
            }
        }
        if self.loss >= 1.0 {
            return Err(Invalid("loss must be below 1, or nothing arrives"));
        }
        if let Some(bursts) = self.burst_loss {
            if !(0.0..=1.0).contains(&bursts.loss) {
                return Err(Probability("burst loss"));
            }
            if bursts.every.is_zero() || bursts.length.is_zero() {
                return Err(Invalid("bursts must last a while, a while apart"));
            }
            if bursts.every > MAX_DURATION || bursts.length > MAX_DURATION {
                return Err(Invalid("durations must not exceed a year"));
            }
        }
        if self.behaviours.len() > self.peers {
            return Err(Invalid("more behaviours than peers"));
        }
        if !(0..self.peers).any(|i| self.behaviour(i) == Behaviour::Honest) {
            return Err(Invalid("at least one up-to-date peer must be honest"));
        }
        let nodes = self.peers + self.laggers;
        if self.outages.iter().any(|o| o.node >= nodes)
            || self
                .partitions
                .iter()
                .any(|p| p.side.iter().any(|&n| n >= nodes))
        {
            return Err(Invalid("outages and partitions must name existing nodes"));
        }
        // Only an honest ledger is cut back: the others' heights are their
        // lies, not their ledgers.
        if self.rollbacks.iter().any(|r| {
            r.node >= nodes
                || !matches!(self.behaviour(r.node), Behaviour::Honest | Behaviour::Slow)
                || !self
                    .outages
                    .iter()
                    .any(|o| o.node == r.node && o.until == Some(r.at) && !o.from.is_zero())
        }) {
            return Err(Invalid(
                "a rollback must name an honest or slow node at the end of one of its crashes",
            ));
        }
        if self
            .hangs
            .iter()
            .any(|h| h.node >= self.peers || h.until.is_some_and(|u| u <= h.from))
        {
            return Err(Invalid(
                "a hang must name an up-to-date peer and end after it starts",
            ));
        }
        if self.pauses.iter().any(|p| {
            p.node >= nodes
                || p.until <= p.from
                || (p.node < self.peers && self.behaviour(p.node) == Behaviour::Flooder)
        }) {
            return Err(Invalid(
                "a pause must name a peer or lagger (not a flooder) and end after it starts",
            ));
        }
        if self.slowdowns.iter().any(|d| {
            d.node >= nodes
                || d.until.is_some_and(|u| u <= d.from)
                || d.uplink_bps < MIN_BANDWIDTH
                || d.from > MAX_DURATION
        }) {
            return Err(Invalid(
                "a slowdown must name a node, end after it starts and leave at least 1 kbit/s",
            ));
        }
        if self
            .outages
            .iter()
            .any(|o| o.node >= self.peers && o.until.is_none())
        {
            return Err(Invalid("a lagger may crash but not leave for good"));
        }
        if self
            .outages
            .iter()
            .any(|o| o.until.is_some_and(|u| u <= o.from) && !o.from.is_zero())
            || self.partitions.iter().any(|p| p.until <= p.from)
        {
            return Err(Invalid("an outage or partition must end after it starts"));
        }
        if self
            .corrupt
            .iter()
            .any(|c| c.seq == 0 || c.seq > self.blocks)
        {
            return Err(Invalid("a corrupt block must be in 1..=blocks"));
        }
        let mut seqs: Vec<u64> = self.corrupt.iter().map(|c| c.seq).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) {
            return Err(Invalid("a block may be made corrupt only once"));
        }
        if self.stall_after.is_zero() {
            return Err(Invalid("stall_after must not be zero"));
        }
        let links = (0..nodes).map(|i| self.link(i));
        if links
            .clone()
            .any(|l| l.uplink_bps < MIN_BANDWIDTH || l.downlink_bps < MIN_BANDWIDTH)
        {
            return Err(Invalid("bandwidths must be at least 1 kbit/s"));
        }
        if links.clone().any(|l| l.latency > MAX_DURATION) {
            return Err(Invalid("durations must not exceed a year"));
        }
        if self.uplink_bps < MIN_BANDWIDTH || self.downlink_bps < MIN_BANDWIDTH {
            return Err(Invalid("bandwidths must be at least 1 kbit/s"));
        }
        if self.send_buffer == 0 {
            return Err(Invalid("send_buffer must be at least 1"));
        }
        if self.state_info_interval.is_zero() {
            return Err(Invalid("state_info_interval must not be zero"));
        }
        let durations = [
            self.latency,
            self.reorder_delay,
            self.slow_delay,
            self.state_info_interval,
            self.max_virtual_time,
            self.stall_after,
        ];
        if durations.iter().any(|d| *d > MAX_DURATION) {
            return Err(Invalid("durations must not exceed a year"));
        }
        Ok(())
    }
}

/// A scenario that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// A probability outside `0..=1`.
    #[error("`{0}` must be a probability in 0..=1")]
    Probability(&'static str),
    /// Another inconsistency.
    #[error("{0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_leave_peer_zero_honest() {
        let s = Scenario {
            peers: 5,
            ..Scenario::default()
        }
        .with_faults(1, 1, 1, 1);
        use Behaviour::*;
        assert_eq!(s.behaviours, [Honest, Silent, Slow, Lying, Byzantine]);
        s.validate().unwrap();
        let s = Scenario {
            peers: 2,
            ..Scenario::default()
        }
        .with_faults(1, 0, 0, 1);
        assert!(s.validate().is_err());
    }

    #[test]
    fn validate_checks_probabilities() {
        let s = Scenario {
            reorder: 1.5,
            ..Scenario::default()
        };
        assert_eq!(s.validate(), Err(ScenarioError::Probability("reorder")));
        let s = Scenario {
            loss: f64::NAN,
            ..Scenario::default()
        };
        assert_eq!(s.validate(), Err(ScenarioError::Probability("loss")));
        Scenario::default().validate().unwrap();
    }

    #[test]
    fn validate_checks_slowdowns() {
        let at = Duration::from_secs(1);
        let base = Scenario::default();
        base.clone()
            .with_slowdown(0, at, Some(at), 50_000)
            .validate()
            .unwrap();
        for bad in [
            base.clone()
                .with_slowdown(base.peers + base.laggers, at, None, 50_000),
            base.clone()
                .with_slowdown(0, at, Some(Duration::ZERO), 50_000),
            base.clone().with_slowdown(0, at, None, MIN_BANDWIDTH - 1),
        ] {
            assert!(matches!(bad.validate(), Err(ScenarioError::Invalid(_))));
        }
    }

    #[test]
    fn validate_checks_bursts_of_loss() {
        let bursts = BurstLoss {
            every: Duration::from_secs(2),
            length: Duration::from_millis(200),
            loss: 1.0,
        };
        let with = |bursts| Scenario {
            burst_loss: Some(bursts),
            ..Scenario::default()
        };
        with(bursts).validate().unwrap();
        assert_eq!(
            with(BurstLoss {
                loss: f64::NAN,
                ..bursts
            })
            .validate(),
            Err(ScenarioError::Probability("burst loss"))
        );
        for zero in [
            BurstLoss {
                every: Duration::ZERO,
                ..bursts
            },
            BurstLoss {
                length: Duration::ZERO,
                ..bursts
            },
        ] {
            assert!(matches!(
                with(zero).validate(),
                Err(ScenarioError::Invalid(_))
            ));
        }
    }

    #[test]
    fn validate_checks_corrupt_blocks() {
        let s = Scenario::default().with_corrupt_block(10, 1);
        s.clone().with_corrupt_block(20, 1).validate().unwrap();
        let twice = s.clone().with_corrupt_block(10, 2).validate();
        assert_eq!(
            twice,
            Err(ScenarioError::Invalid(
                "a block may be made corrupt only once"
            ))
        );
        let beyond = s.with_corrupt_block(10_001, 1).validate();
        assert_eq!(
            beyond,
            Err(ScenarioError::Invalid(
                "a corrupt block must be in 1..=blocks"
            ))
        );
    }
}

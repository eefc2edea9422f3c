//! A deterministic network simulator for the two machines (feature `sim`).
//!
//! A [`Scenario`] describes a cluster: up-to-date peers (honest or faulty,
//! see [`Behaviour`]), laggers that must catch up, and the links between
//! them. [`Simulation::run`] plays it out in virtual time and returns a
//! [`Report`]: whether every lagger caught up, how long it took against a
//! lower [`Bound`], what it cost, and every invariant violation seen.
//!
//! ```
//! use antientropy::sim::{Scenario, Simulation};
//! use antientropy::Config;
//!
//! let scenario = Scenario { blocks: 200, block_size: 1024, ..Scenario::default() };
//! let report = Simulation::new(scenario, Config::default(), 7).unwrap().run(|_| {});
//! assert!(report.passed(), "{report:#?}");
//! println!("{}", report.to_json());
//! ```
//!
//! # How it runs
//!
//! - **Virtual time** jumps from event to event: the next message delivery
//!   (see [`network`] for the link model), the earliest deadline of any
//!   node's requester or responder (`poll_timeout`), the next round of
//!   `StateInfo`, or a slow peer's read finishing. No clock is read but one
//!   epoch `Instant` at construction; everything else is that epoch plus
//!   durations. Each event is one step; the step cap stops a livelock.
//! - **One seed** drives everything random: the network's faults, the
//!   byzantine answers, and each machine's seed, all derived from it. The
//!   same scenario, config and seed give the same [`Report`] (wall time
//!   aside).
//! - **One chain** ([`Chain`]) of real encoded `common.Block`s is built once
//!   and shared by every node (a ledger is a height over it); messages cross
//!   the network encoded and are decoded on arrival with
//!   [`wire::decode_gossip_message`](crate::wire::decode_gossip_message).
//! - **The host** of each node serves its responder's reads from its ledger
//!   at once (a slow peer after a delay), verifies each delivered block
//!   (header number, data hash, signature marker), commits in order and
//!   reports `Committed` or `Rejected` at once, and feeds its requester a
//!   `Membership` with every peer's newest `StateInfo` whenever one arrives.
//!   Every node advertises its height every `state_info_interval`, starting
//!   at time zero; a `StateInfo` takes the one-way latency, suffers loss,
//!   duplication and reordering, but takes no bandwidth.
//!
//! # Faults and what a run checks beyond the invariants
//!
//! Besides the links' loss, duplication and reordering and the peers'
//! [`Behaviour`]s, a scenario can hold overclaimers, a [`CorruptBlock`],
//! [`Outage`]s (crash and restart, join, leave), healing [`Partition`]s,
//! per-node [`Link`]s and flooders; see [`Scenario`]'s `with_*` builders.
//! A run converges when every lagger reached its liveness target
//! ([`Simulation::liveness_targets`]; cut at a block bad at every reachable
//! source, where a give-up is also required) with no outage
//! or partition pending; it is [`Outcome::Stalled`] when a lagger is short
//! of it and nothing moved for [`Scenario::stall_after`]. Each lagger's
//! request and byte amplification is checked against the bound documented
//! on [`Amplification`].
//!
//! # Invariants, checked at every step
//!
//! - Blocks are committed in order, each once: every `AddPayload` is the
//!   ledger's next block.
//! - An `AddPayload` from `Origin::Peer(p)` is for a block in a range that
//!   was sent to `p` (and the simulator sends no gossip payloads).
//! - A `SendRequest` is a state request for a non-empty range of at most
//!   `batch_size + 1` blocks, starting at or above the committed height and
//!   ending below `committed + window_blocks`, sent to a peer (not itself)
//!   whose advertised height (in the last `Membership`) exceeds its end.
//! - Requests in flight stay within `max_in_flight`, and per peer within
//!   `max_in_flight_per_peer`.
//! - Blocks held (buffered + delivered uncommitted) stay within
//!   `window_blocks + block_buffer`, bytes held within `window_bytes` plus
//!   one block: the requester's documented guarantees.
//! - `Committed` and `Rejected` verdicts are accepted; after a `Timeout`,
//!   `poll_timeout` is later than now.

mod chain;
mod events;
mod faults;
pub mod matrix;
pub mod network;
mod node;
mod report;
mod scenario;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use chain::{checksum, forged_block, verify, Chain, VerifyError, VALID_SIGNATURE};
pub use faults::{
    random_links, CorruptBlock, Hang, Link, Outage, Partition, Pause, Rollback, Slowdown,
};
pub use network::{BurstLoss, Delivery, Faults, NetStats, Network, Wake};
pub use node::NodeId;
pub use report::{Amplification, Bound, Outcome, Progress, Report};
pub use scenario::{Behaviour, Overclaim, Scenario, ScenarioError, DROPPED_ONE_IN};

use crate::wire::gossip::{GossipMessage, Payload};
use crate::{Config, ConfigError, SeqRange, Ticket};
use events::Events;
use faults::Schedule;
use node::{Machine, Node};

/// The channel every simulated node is on.
const CHANNEL: &[u8] = b"simchannel";
/// Violation messages kept in a report (all are counted).
const KEPT_VIOLATIONS: usize = 10;
/// Requests remembered per requester for byzantine replays.
const OVERHEARD: usize = 16;
/// Steps between two progress callbacks.
const PROGRESS_EVERY: u64 = 512;

/// Why a simulation cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario is invalid.
    #[error("scenario: {0}")]
    Scenario(#[from] ScenarioError),
    /// The machines refused the configuration.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The chain given to [`Simulation::with_chain`] does not fit the
    /// scenario.
    #[error("the chain has {height} blocks of {block_size} bytes; the scenario needs {blocks} + 1 of {wanted}")]
    ChainMismatch {
        /// The chain's height.
        height: u64,
        /// The chain's block size.
        block_size: usize,
        /// The scenario's blocks.
        blocks: u64,
        /// The scenario's block size.
        wanted: usize,
    },
}

/// Something due at an instant.
#[derive(Debug)]
enum Pending {
    /// A message arriving at `to`.
    Message {
        from: NodeId,
        to: NodeId,
        bytes: Wire,
        generation: u64,
    },
    /// A `StateInfo` of `from` arriving at `to`.
    StateInfo {
        from: NodeId,
        to: NodeId,
        height: u64,
        published: Instant,
        generation: u64,
    },
    /// A slow node's read finishing.
    ReadDone {
        node: NodeId,
        ticket: Ticket,
        payloads: Vec<Payload>,
        incarnation: u64,
    },
    /// A connection event held for a node that was paused when it
    /// happened (it handles it on resuming, in order with its messages).
    Connection {
        node: NodeId,
        peer: NodeId,
        up: bool,
        incarnation: u64,
    },
    /// A flooder's next burst.
    Flood { node: NodeId },
    /// A node's uplink hands out the messages that have left it.
    Uplink(Wake),
    /// A node's uplink changes its rate (a [`Slowdown`] starts or ends).
    UplinkRate { node: usize, bits_per_second: u64 },
}

/// What a message on the network carries.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    /// An encoded message.
    Encoded(Bytes),
    /// A message that is decoded on arrival, as it is, and its encoded
    /// length (see [`World::send_message`]).
    Decoded {
        message: Box<GossipMessage>,
        len: usize,
    },
    /// A flooder's burst of that many valid state requests, back to back
    /// (made on arrival: one network event for many requests).
    Requests(u32),
    /// Bytes nobody reads (an answer to a flooder): only their size counts.
    Opaque,
}

/// How often a flooder refills its send buffers.
const FLOOD_TICK: Duration = Duration::from_millis(10);

/// Requests per tick and target of a flooder with an unlimited uplink
/// (10 000 a second to each responder).
const UNLIMITED_FLOOD_PER_TICK: u128 = 100;

/// What the next step does.
#[derive(Debug, Clone, Copy)]
enum Next {
    Publish,
    Transition,
    Queue,
    Timer(usize, Machine),
}

/// Everything but the nodes: the nodes borrow it mutably while they act.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) now: Instant,
    /// The schedule's answers as of `now`, per node and per ordered pair
    /// (`a * nodes + b`), until the instant `reach_until`: it changes only
    /// at its transitions, and is asked on every send, delivery and step.
    /// An instant, so that a step compares `now` with it without
    /// subtracting the epoch.
    up: Vec<bool>,
    reach: Vec<bool>,
    /// Per node, when it resumes if it is paused.
    resume: Vec<Option<Instant>>,
    /// Per node, just after its latest pause (begun, over or not) ends:
    /// a timer due earlier fires then, after what reached it meanwhile.
    timer_floor: Vec<Option<Instant>>,
    reach_until: Option<Instant>,
    pub(crate) config: Config,
    pub(crate) chain: Chain,
    pub(crate) rng: fastrand::Rng,
    /// Flood requests' ranges and nonces: a stream of their own, so a flood
    /// does not change what the rest of the run draws.
    pub(crate) flood_rng: fastrand::Rng,
    pub(crate) max_block_bytes: u64,
    pub(crate) bytes_received: u64,
    pub(crate) caught_up: usize,
    /// Carries encoded messages with their connection's generation.
    network: Network<(Wire, u64)>,
    /// What left an uplink, kept between steps for its allocation.
    deliveries: Vec<Delivery<(Wire, u64)>>,
    queue: Events<Pending>,
    slow_delay: Duration,
    /// How long a lagger's commit of a block keeps its process busy.
    commit_time: Duration,
    /// Per node, until when it is busy committing (`committed_one`).
    busy_until: Vec<Option<Instant>>,
    violations: u64,
    violation_messages: Vec<String>,
    epoch: Instant,
    /// The last requests of each requester, as `(nonce, to, range)`: what a
    /// byzantine peer could overhear.
    overheard: BTreeMap<NodeId, VecDeque<(u64, NodeId, SeqRange)>>,
    schedule: Schedule,
    /// Per unordered pair `(a, b)`, `a <= b`, at `a * nodes + b`: bumped
    /// each time its connection breaks.
    generations: Vec<u64>,
    /// Per node, bumped at each restart.
    incarnations: Vec<u64>,
    overclaim_by: u64,
    /// `stall_after` past the last lagger commit, give-up or connection
    /// change (`None` beyond what an `Instant` holds): made when one
    /// happens, not on every step.
    stall_at: Option<Instant>,
    stall_after: Duration,
    /// One happened since the laggers' targets were last checked: a target
    /// is a scan of every node, and flooded runs take millions of steps
    /// that change none.
    targets_stale: bool,
    /// Messages lost because their ends could not reach each other.
    unreachable_lost: u64,
    /// Per node, whether it ignores what it receives (a flooder): answers
    /// to it take their size on the network but are neither encoded nor
    /// decoded.
    sinks: Vec<bool>,
    /// The node whose requester is traced, and its trace so far.
    trace: Option<(NodeId, Vec<String>)>,
}

impl World {
    fn schedule(&mut self, at: Instant, pending: Pending) {
        self.queue.push(at, pending);
    }

    /// Whether `from` may send to `to` now. If not (the connection's send
    /// buffer is full), the message is counted as dropped and need not be
    /// encoded.
    pub(crate) fn can_send(&mut self, from: NodeId, to: NodeId) -> bool {
        self.network.try_reserve(from.0, to.0)
    }

    /// Whether `from → to` has room, without counting a drop.
    pub(crate) fn network_has_room(&mut self, from: NodeId, to: NodeId) -> bool {
        self.network.has_room(from.0, to.0)
    }

    /// `now`, and the schedule's answers if it passed a transition;
    /// whether it did (who is up may have changed).
    fn set_now(&mut self, now: Instant) -> bool {
        self.now = now;
        let passed = self.reach_until.is_some_and(|until| now >= until);
        if passed {
            self.refresh_reach();
        }
        passed
    }

    /// Who is up and who reaches whom from now until the schedule's next
    /// transition, when it is asked again.
    fn refresh_reach(&mut self) {
        let t = self.elapsed();
        let n = self.incarnations.len();
        self.up = (0..n).map(|i| self.schedule.up(i, t)).collect();
        self.resume = (0..n)
            .map(|i| {
                let until = self.schedule.paused_until(i, t)?;
                self.epoch.checked_add(until)
            })
            .collect();
        self.timer_floor = (0..n)
            .map(|i| {
                let until = self.schedule.last_resume(i, t)?;
                self.epoch.checked_add(until + Duration::from_nanos(1))
            })
            .collect();
        self.reach = (0..n * n)
            .map(|ab| self.schedule.reachable(ab / n, ab % n, t))
            .collect();
        // Beyond what an `Instant` holds, `now` never gets there.
        self.reach_until = self
            .schedule
            .next_after(t)
            .and_then(|until| self.epoch.checked_add(until));
    }

    /// Whether `node` is running now.
    pub(crate) fn up(&self, node: usize) -> bool {
        match self.up.get(node) {
            Some(&up) => up,
            None => self.schedule.up(node, self.elapsed()),
        }
    }

    /// When `node` resumes, if it is paused now: what reaches it waits
    /// until then.
    pub(crate) fn resume_at(&self, node: usize) -> Option<Instant> {
        let paused = match self.resume.get(node) {
            Some(&resume) => resume,
            None => self
                .schedule
                .paused_until(node, self.elapsed())
                .and_then(|until| self.epoch.checked_add(until)),
        };
        let busy = self
            .busy_until
            .get(node)
            .copied()
            .flatten()
            .filter(|&until| until > self.now);
        paused.max(busy)
    }

    /// `node` committed a block: its process is busy for `commit_time`
    /// more (after what it is busy with already).
    pub(crate) fn committed_one(&mut self, node: usize) {
        if self.commit_time.is_zero() {
            return;
        }
        if let Some(slot) = self.busy_until.get_mut(node) {
            let from = slot.filter(|&until| until > self.now).unwrap_or(self.now);
            *slot = from.checked_add(self.commit_time);
        }
    }

    /// When a timer of `node` due at `at` fires: not before its latest
    /// pause is over and what reached it meanwhile was handled.
    fn timer_at(&self, node: usize, at: Instant) -> Instant {
        let at = match self.timer_floor.get(node) {
            Some(&Some(floor)) => at.max(floor),
            _ => at,
        };
        match self.busy_until.get(node) {
            Some(&Some(until)) => at.max(until + Duration::from_nanos(1)),
            _ => at,
        }
    }

    /// `now - epoch`.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now.duration_since(self.epoch)
    }

    /// Whether `a` and `b` can reach each other now.
    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        let n = self.incarnations.len();
        match self.reach.get(a * n + b) {
            Some(&reach) if a < n && b < n => reach,
            _ => self.schedule.reachable(a, b, self.elapsed()),
        }
    }

    fn generation(&self, a: usize, b: usize) -> u64 {
        let n = self.incarnations.len();
        self.generations
            .get(a.min(b) * n + a.max(b))
            .copied()
            .unwrap_or(0)
    }

    /// Something moved a lagger on (or may let it move): resets the stall
    /// clock.
    pub(crate) fn progressed(&mut self) {
        self.stall_at = self.now.checked_add(self.stall_after);
        self.targets_stale = true;
    }

    /// Puts `bytes` on the network from `from` to `to`.
    pub(crate) fn send(&mut self, from: NodeId, to: NodeId, bytes: Bytes) {
        self.put(from, to, bytes.len(), Wire::Encoded(bytes));
    }

    /// Puts `message` on the network from `from` to `to`, its encoding's
    /// length taking the links. One the receiver decodes (not over
    /// `max_message_size`) goes as it is: decoding its encoding gives it
    /// back, so encoding it (a copy of every block) and decoding it again
    /// would change nothing.
    pub(crate) fn send_message(&mut self, from: NodeId, to: NodeId, message: GossipMessage) {
        let len = prost::Message::encoded_len(&message);
        if len > self.config.max_message_size {
            // Refused undecoded: the receiver needs its bytes.
            self.send(
                from,
                to,
                Bytes::from(prost::Message::encode_to_vec(&message)),
            );
            return;
        }
        debug_assert_eq!(
            crate::wire::decode_gossip_message(
                prost::Message::encode_to_vec(&message).into(),
                self.config.max_message_size
            )
            .as_ref(),
            Ok(&message),
            "a message sent decoded must survive encoding"
        );
        let message = Box::new(message);
        self.put(from, to, len, Wire::Decoded { message, len });
    }

    /// Puts `wire`, `len` bytes on the links, on the network from `from` to
    /// `to`.
    fn put(&mut self, from: NodeId, to: NodeId, len: usize, wire: Wire) {
        if !self.reachable(from.0, to.0) {
            // No connection: the transport refuses it (no uplink used).
            self.unreachable_lost += 1;
            return;
        }
        let generation = self.generation(from.0, to.0);
        if let Some(wake) = self
            .network
            .send(self.now, from.0, to.0, len, (wire, generation))
        {
            self.schedule(wake.at, Pending::Uplink(wake));
        }
    }

    /// Puts `from`'s connection to `to` in the background class of its
    /// uplink, or back in the foreground: what a host does with
    /// `StateResponder::is_background` (`ResponderAction::SendResponse`).
    pub(crate) fn set_background(&mut self, from: NodeId, to: NodeId, background: bool) {
        if let Some(wake) = self
            .network
            .set_background(self.now, from.0, to.0, background)
        {
            self.schedule(wake.at, Pending::Uplink(wake));
        }
    }

    /// Whether `node` ignores what it receives (see [`World::send_unencoded`]).
    pub(crate) fn is_sink(&self, node: NodeId) -> bool {
        self.sinks.get(node.0).copied().unwrap_or(false)
    }

    /// Puts `len` bytes carrying `wire` on the network: a message that is
    /// not encoded (to a sink, or a flooder's burst).
    pub(crate) fn send_unencoded(&mut self, from: NodeId, to: NodeId, len: usize, wire: Wire) {
        if !self.reachable(from.0, to.0) {
            self.unreachable_lost += 1;
            return;
        }
        let generation = self.generation(from.0, to.0);
        let wake = if matches!(wire, Wire::Opaque) {
            self.network
                .send_merged(self.now, from.0, to.0, len, (wire, generation))
        } else {
            self.network
                .send(self.now, from.0, to.0, len, (wire, generation))
        };
        if let Some(wake) = wake {
            self.schedule(wake.at, Pending::Uplink(wake));
        }
    }

    /// Messages that left an uplink go on their way.
    fn transmit(&mut self, wake: Wake) {
        let mut deliveries = std::mem::take(&mut self.deliveries);
        let next = self.network.transmit_into(self.now, wake, &mut deliveries);
        for Delivery {
            to,
            at,
            message: (bytes, generation),
        } in deliveries.drain(..)
        {
            if matches!(bytes, Wire::Opaque) {
                // Nobody reads it: it has taken its share of the links.
                continue;
            }
            let pending = Pending::Message {
                from: NodeId(wake.node),
                to: NodeId(to),
                bytes,
                generation,
            };
            self.schedule(at, pending);
        }
        self.deliveries = deliveries;
        if let Some(wake) = next {
            self.schedule(wake.at, Pending::Uplink(wake));
        }
    }

    /// A slow node answers its read after the scenario's delay.
    pub(crate) fn read_later(&mut self, node: NodeId, ticket: Ticket, payloads: Vec<Payload>) {
        let at = self.now + self.slow_delay;
        let incarnation = self.incarnations[node.0];
        self.schedule(
            at,
            Pending::ReadDone {
                node,
                ticket,
                payloads,
                incarnation,
            },
        );
    }

    /// Remembers a request `from` sent, for byzantine peers to replay.
    pub(crate) fn overhear(&mut self, from: NodeId, nonce: u64, to: NodeId, range: SeqRange) {
        let heard = self.overheard.entry(from).or_default();
        if heard.len() == OVERHEARD {
            heard.pop_front();
        }
        heard.push_back((nonce, to, range));
    }

    /// The requests of `requester` a byzantine peer overheard, newest first.
    pub(crate) fn overheard(
        &self,
        requester: NodeId,
    ) -> impl Iterator<Item = (u64, NodeId, SeqRange)> + '_ {
        self.overheard
            .get(&requester)
            .into_iter()
            .flatten()
            .rev()
            .copied()
    }

    /// Whether `node`'s requester is traced.
    pub(crate) fn tracing(&self, node: NodeId) -> bool {
        self.trace
            .as_ref()
            .is_some_and(|(traced, _)| *traced == node)
    }

    /// Appends a line to the trace if `node` is the traced one; `line` is
    /// only made then.
    pub(crate) fn trace(&mut self, node: NodeId, line: impl FnOnce() -> String) {
        let at = self.now.duration_since(self.epoch).as_secs_f64();
        if let Some((traced, lines)) = self.trace.as_mut() {
            if *traced == node {
                lines.push(format!("{at:10.6} {}", line()));
            }
        }
    }

    /// Records an invariant violation.
    pub(crate) fn violation(&mut self, node: NodeId, message: String) {
        self.violations += 1;
        if self.violation_messages.len() < KEPT_VIOLATIONS {
            let at = self.now.duration_since(self.epoch).as_secs_f64();
            self.violation_messages
                .push(format!("t={at:.6}s {node}: {message}"));
        }
    }
}

/// A cluster playing out a [`Scenario`] with one [`Config`] and one seed.
///
/// Comparing two configurations on one cluster, as the `catchup` example
/// does:
///
/// ```
/// use std::time::Duration;
/// use antientropy::sim::{Scenario, Simulation};
/// use antientropy::Config;
///
/// // 3 peers, one of them silent, 100 blocks of 4 KiB, 20 ms round trips.
/// let scenario = Scenario {
///     peers: 3,
///     blocks: 100,
///     block_size: 4096,
///     latency: Duration::from_millis(10),
///     ..Scenario::default()
/// }
/// .with_faults(1, 0, 0, 0);
/// let run = |config| Simulation::new(scenario.clone(), config, 1).unwrap().run(|_| {});
/// let (fabric, ours) = (run(Config::fabric()), run(Config::default()));
/// assert!(fabric.passed() && ours.passed());
/// // Virtual time: the same seed gives the same figures on any machine.
/// assert!(ours.catchup.unwrap() < fabric.catchup.unwrap());
/// ```
#[derive(Debug)]
pub struct Simulation {
    scenario: Scenario,
    seed: u64,
    epoch: Instant,
    nodes: Vec<Node>,
    world: World,
    publish_at: Instant,
    steps: u64,
    outcome: Option<Outcome>,
    /// `epoch + max_virtual_time`, if an `Instant` can hold it.
    time_cap: Option<Instant>,
    channel: Bytes,
    /// Who can reach whom, as of the last transition.
    connected: Vec<Vec<bool>>,
    /// The next outage or partition change.
    transition_at: Option<Instant>,
    /// Whether every lagger reached its target, as of the last check.
    finished: bool,
    /// See [`Simulation::flood_request_bytes`].
    flood_request_bytes: Option<usize>,
    /// The earliest timer of a running node, lowest node first on a tie,
    /// as of the last scan; `None` inside when no running node has one.
    /// Scanned again only after a step that may have moved a timer (one
    /// that touched a node, a transition, a change of who is up): most
    /// steps (an uplink's departures, a flood's ticks) touch no node.
    earliest_timer: Option<Option<(Instant, usize, Machine)>>,
}

impl Simulation {
    /// Builds the chain for `scenario` and the cluster. Runs nothing yet.
    pub fn new(scenario: Scenario, config: Config, seed: u64) -> Result<Self, SimError> {
        scenario.validate()?;
        config.validate()?;
        let chain = Chain::new(scenario.target_height(), scenario.block_size);
        Self::with_chain(scenario, config, seed, chain)
    }

    /// The same on a chain built beforehand (and shared: build a large one
    /// once for several runs). It must hold `scenario.blocks + 1` blocks of
    /// `scenario.block_size` bytes.
    pub fn with_chain(
        scenario: Scenario,
        config: Config,
        seed: u64,
        chain: Chain,
    ) -> Result<Self, SimError> {
        scenario.validate()?;
        config.validate()?;
        if chain.height() != scenario.target_height() || chain.block_size() != scenario.block_size {
            return Err(SimError::ChainMismatch {
                height: chain.height(),
                block_size: chain.block_size(),
                blocks: scenario.blocks,
                wanted: scenario.block_size,
            });
        }
        // The simulator's only clock read: the epoch that virtual time counts
        // from. Nothing depends on its value, only on durations after it.
        #[allow(clippy::disallowed_methods)]
        let epoch = Instant::now();
        let scenario_cap = scenario.max_virtual_time;
        let channel = Bytes::from_static(CHANNEL);
        let total = scenario.peers + scenario.laggers;
        let mut nodes = Vec::with_capacity(total);
        for i in 0..total {
            let lagger = i >= scenario.peers;
            let behaviour = if lagger {
                Behaviour::Honest
            } else {
                scenario.behaviour(i)
            };
            let height = match behaviour {
                _ if lagger => 1,
                Behaviour::Lying => 1 + scenario.blocks / 2,
                Behaviour::Flooder => 1,
                _ => chain.height(),
            };
            let node_seed = derive(seed ^ scenario.machine_seed_salt, 0x1000 + i as u64);
            nodes.push(Node::new(
                NodeId(i),
                behaviour,
                lagger,
                height,
                &config,
                &channel,
                node_seed,
                epoch,
            )?);
        }
        // The k-th corrupt block's bad copies: from the k-th up-to-date
        // node on (one fixed order, wrapping), those that serve the block.
        let up_to_date: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].lagger).collect();
        for (k, corrupt) in scenario.corrupt.iter().enumerate() {
            let first = k % up_to_date.len().max(1);
            let order = up_to_date[first..].iter().chain(&up_to_date[..first]);
            let sources: Vec<usize> = order
                .copied()
                .filter(|&i| nodes[i].serving_height() > corrupt.seq)
                .take(corrupt.sources)
                .collect();
            for i in sources {
                nodes[i].corrupt_block(corrupt.seq, scenario.block_size);
            }
        }
        for hang in &scenario.hangs {
            nodes[hang.node].hang(hang.from, hang.until);
        }
        let links: Vec<_> = (0..total).map(|i| scenario.link(i)).collect();
        let faults = Faults {
            loss: scenario.loss,
            duplicate: scenario.duplicate,
            reorder: scenario.reorder,
            reorder_delay: scenario.reorder_delay,
            bursts: scenario.burst_loss,
        };
        let mut network = Network::new(
            epoch,
            scenario.latency,
            &links.iter().map(|l| l.uplink_bps).collect::<Vec<_>>(),
            &links.iter().map(|l| l.downlink_bps).collect::<Vec<_>>(),
            scenario.send_buffer,
            faults,
            derive(seed, 1),
        );
        if !scenario.links.is_empty() {
            network.set_latencies(links.iter().map(|l| l.latency).collect());
        }
        // Only answers to sinks go merged, and nothing else goes to a sink.
        network.discard_merged();
        let schedule = Schedule::new(
            &scenario.outages,
            &scenario.partitions,
            &scenario.hangs,
            &scenario.pauses,
        );
        let connected = (0..total)
            .map(|a| {
                (0..total)
                    .map(|b| schedule.reachable(a, b, Duration::ZERO))
                    .collect()
            })
            .collect();
        let transition_at = schedule
            .next_after(Duration::ZERO)
            .and_then(|d| epoch.checked_add(d));
        let world = World {
            now: epoch,
            up: Vec::new(),
            reach: Vec::new(),
            resume: Vec::new(),
            timer_floor: Vec::new(),
            reach_until: None,
            max_block_bytes: chain.max_block_bytes() as u64,
            config,
            chain,
            rng: fastrand::Rng::with_seed(derive(seed, 2)),
            flood_rng: fastrand::Rng::with_seed(derive(seed, 3)),
            bytes_received: 0,
            caught_up: 0,
            network,
            deliveries: Vec::new(),
            queue: Events::new(epoch),
            slow_delay: scenario.slow_delay,
            commit_time: scenario.commit_time,
            busy_until: vec![None; total],
            violations: 0,
            violation_messages: Vec::new(),
            epoch,
            overheard: BTreeMap::new(),
            schedule,
            generations: vec![0; total * total],
            incarnations: vec![0; total],
            overclaim_by: scenario.overclaim_by,
            stall_at: epoch.checked_add(scenario.stall_after),
            stall_after: scenario.stall_after,
            targets_stale: true,
            unreachable_lost: 0,
            sinks: nodes
                .iter()
                .map(|n| n.behaviour == Behaviour::Flooder)
                .collect(),
            trace: None,
        };
        let mut world = world;
        world.refresh_reach();
        for node in &nodes {
            if node.behaviour == Behaviour::Flooder && !scenario.idle_flooders {
                world.schedule(epoch, Pending::Flood { node: node.id });
            }
        }
        // Each slowdown is two changes of its node's uplink, at its start
        // and end (the later change wins where two overlap).
        for slowdown in &scenario.slowdowns {
            let node = slowdown.node;
            let changes = [
                Some((slowdown.from, slowdown.uplink_bps)),
                slowdown.until.map(|until| (until, links[node].uplink_bps)),
            ];
            for (at, bits_per_second) in changes.into_iter().flatten() {
                if let Some(at) = epoch.checked_add(at) {
                    world.schedule(
                        at,
                        Pending::UplinkRate {
                            node,
                            bits_per_second,
                        },
                    );
                }
            }
        }
        Ok(Self {
            scenario,
            seed,
            epoch,
            nodes,
            world,
            publish_at: epoch,
            steps: 0,
            outcome: None,
            finished: false,
            flood_request_bytes: None,
            earliest_timer: None,
            time_cap: epoch.checked_add(scenario_cap),
            channel,
            connected,
            transition_at,
        })
    }

    /// Traces `node`'s requester: every request it sends, every answer and
    /// give-up it gets, every block it commits, one line each with the
    /// virtual time. For finding out why a run is slow; the trace grows
    /// with the run (a line per request and per block), so trace short runs.
    pub fn trace(&mut self, node: NodeId) {
        self.world.trace = Some((node, Vec::new()));
    }

    /// The trace so far (empty unless [`trace`](Self::trace) was called).
    pub fn take_trace(&mut self) -> Vec<String> {
        self.world
            .trace
            .as_mut()
            .map(|(_, lines)| std::mem::take(lines))
            .unwrap_or_default()
    }

    /// Runs until every lagger caught up or a cap is reached, calling
    /// `progress` now and then (and once at the end).
    pub fn run(&mut self, mut progress: impl FnMut(Progress)) -> Report {
        let outcome = loop {
            if let Some(outcome) = self.outcome {
                break outcome;
            }
            if std::mem::take(&mut self.world.targets_stale) {
                self.finished = self.update_finished();
            }
            let finished = self.finished;
            if finished && self.transition_at.is_none() {
                break Outcome::Converged;
            }
            if self.steps >= self.scenario.max_steps {
                break Outcome::StepCap;
            }
            let (at, next) = self.next_event();
            let stall_at = self.world.stall_at;
            if !finished
                && self.transition_at.is_none_or(|t| Some(t) > stall_at)
                && stall_at.is_some_and(|s| at > s)
            {
                break Outcome::Stalled;
            }
            if self.time_cap.is_some_and(|cap| at > cap) {
                break Outcome::TimeCap;
            }
            if self.world.set_now(self.world.now.max(at)) {
                self.earliest_timer = None;
            }
            self.step(next);
            self.steps += 1;
            if self.steps.is_multiple_of(PROGRESS_EVERY) {
                progress(self.progress());
            }
        };
        self.outcome = Some(outcome);
        progress(self.progress());
        self.report()
    }

    /// The height each lagger must reach (its liveness target): the
    /// highest height that an honest node reachable from it now holds and
    /// serves (an overclaimer counts for what it holds, a liar for its
    /// half; silent, byzantine and flooding nodes, and a peer hung for
    /// good, not at all; a peer hung for a while does count), cut at a
    /// corrupt block that no such node holds a good copy of, or at a block
    /// that only nodes withholding it hold ([`Behaviour::Dropping`]). A
    /// lagger's own height is a floor.
    pub fn liveness_targets(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.lagger)
            .map(|lagger| self.target_of(lagger))
            .collect()
    }

    /// The liveness target of `lagger`, and whether a block no source
    /// serves (corrupt, or withheld) cut it.
    fn target_and_cut(&self, lagger: &Node) -> (u64, bool) {
        // `connected` is the schedule's reachability as of the last
        // transition: the same answer, without the schedule's arithmetic on
        // every step.
        let connected = &self.connected[lagger.id.0];
        let t = self.world.elapsed();
        let sources = || {
            self.nodes
                .iter()
                .filter(|n| n.id != lagger.id && connected[n.id.0] && !n.hung_for_good(t))
        };
        let best = sources()
            .map(Node::serving_height)
            .max()
            .unwrap_or(0)
            .max(lagger.height);
        let serves = |n: &Node, seq: u64| {
            n.serving_height() > seq && !n.bad_blocks.contains_key(&seq) && !n.withholds(seq)
        };
        // The lowest block below `best` that the lagger lacks and no source
        // it reaches serves a good copy of: a corrupt one, or one that only
        // peers withholding it hold (above what the others hold; looked
        // for from there, so the scan is short: they withhold one block in
        // `DROPPED_ONE_IN` each).
        let full = sources()
            .filter(|n| n.behaviour != Behaviour::Dropping)
            .map(Node::serving_height)
            .max()
            .unwrap_or(0);
        let withheld =
            (full.max(lagger.height)..best).find(|&seq| !sources().any(|n| serves(n, seq)));
        let cut = self
            .scenario
            .corrupt
            .iter()
            .map(|corrupt| corrupt.seq)
            .filter(|&seq| lagger.height <= seq && seq < best)
            .filter(|&seq| !sources().any(|n| serves(n, seq)))
            .chain(withheld)
            .min();
        match cut {
            Some(seq) => (seq, true),
            None => (best, false),
        }
    }

    fn target_of(&self, lagger: &Node) -> u64 {
        self.target_and_cut(lagger).0
    }

    /// Marks laggers that reached their target (and, where a corrupt block
    /// cut it, gave up on that block); whether all did.
    fn update_finished(&mut self) -> bool {
        let mut all = true;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].lagger {
                continue;
            }
            let (target, cut) = self.target_and_cut(&self.nodes[i]);
            let node = &self.nodes[i];
            // Any give-up reports the cut: with silent peers about, Fabric's
            // preset mostly exhausts its tries on timeouts before a bad copy
            // is rejected `max_retries + 1` times (`tests/adversity.rs`
            // checks `BlockRejected` itself where the bad block is all
            // there is). With several corrupt blocks, a give-up of one that
            // was got past later counts too: give-ups are kept by reason,
            // not by block.
            let gave_up = node.give_ups.values().sum::<u64>() > 0;
            let done = node.height >= target && (!cut || gave_up);
            let node = &mut self.nodes[i];
            if !done {
                node.caught_up_at = None;
                all = false;
            } else if node.caught_up_at.is_none() {
                node.caught_up_at = Some(self.world.now);
            }
        }
        self.world.caught_up = self
            .nodes
            .iter()
            .filter(|n| n.lagger && n.caught_up_at.is_some())
            .count();
        all
    }

    /// Where the run is.
    pub fn progress(&self) -> Progress {
        let laggers = self.nodes.iter().filter(|n| n.lagger);
        Progress {
            virtual_time: self.world.now.duration_since(self.epoch),
            steps: self.steps,
            blocks_committed: laggers.map(|n| n.height - 1).sum(),
            blocks_total: self.scenario.blocks * self.scenario.laggers as u64,
        }
    }

    /// The chain the nodes share.
    pub fn chain(&self) -> &Chain {
        &self.world.chain
    }

    /// The scenario being run.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The lower bound for this scenario (see [`Bound`]).
    pub fn bound(&self) -> Bound {
        let s = &self.scenario;
        let serving: Vec<usize> = (0..s.peers)
            .filter(|&i| {
                matches!(
                    s.behaviour(i),
                    Behaviour::Honest
                        | Behaviour::Slow
                        | Behaviour::Lying
                        | Behaviour::Dropping
                        | Behaviour::Overclaiming(Overclaim::Partial)
                )
            })
            .collect();
        let laggers = s.peers..s.peers + s.laggers;
        let latency = serving
            .iter()
            .flat_map(|&a| laggers.clone().map(move |b| (a, b)))
            .map(|(a, b)| self.world.network.path_latency(a, b))
            .min()
            .unwrap_or(s.latency);
        Bound {
            latency,
            bytes: self.world.chain.bytes_between(1, s.target_height()),
            laggers: s.laggers,
            source_uplink_bps: serving.iter().map(|&i| s.link(i).uplink_bps).sum(),
            lagger_uplink_bps: laggers.clone().map(|i| s.link(i).uplink_bps).sum(),
            min_downlink_bps: laggers
                .map(|i| s.link(i).downlink_bps)
                .min()
                .unwrap_or(s.downlink_bps),
            state_info_interval: s.state_info_interval,
            late_source_uplink_bps: serving
                .iter()
                .filter(|&&i| s.behaviour(i) == Behaviour::Slow)
                .map(|&i| s.link(i).uplink_bps)
                .sum(),
            late_start: s.slow_delay,
        }
    }

    /// The report of the run so far (`outcome` is `StepCap` if `run` never
    /// finished).
    pub fn report(&self) -> Report {
        let mut report = Report {
            seed: self.seed,
            outcome: self.outcome.unwrap_or(Outcome::StepCap),
            violations: self.world.violations,
            violation_messages: self.world.violation_messages.clone(),
            catchup: None,
            lagger_catchup: Vec::new(),
            lagger_heights: Vec::new(),
            lagger_targets: self.liveness_targets(),
            amplification: Vec::new(),
            give_ups_by_reason: BTreeMap::new(),
            responder_peak_queued: 0,
            responder_peak_reading: 0,
            unreachable_lost: self.world.unreachable_lost + self.world.network.stats().flushed,
            bound: self.bound(),
            requests: 0,
            timeouts: 0,
            retries: 0,
            hedges: 0,
            host_stalls: 0,
            give_ups: 0,
            rejected: 0,
            ignored: 0,
            refused_requests: 0,
            bytes_received: self.world.bytes_received,
            messages_lost: self.world.network.stats().lost,
            send_buffer_drops: self.world.network.stats().overflowed,
            peak_buffer_bytes: 0,
            steps: self.steps,
            virtual_time: self.world.now.duration_since(self.epoch),
            wall: None,
        };
        let c = &self.world.config;
        let block = self.world.max_block_bytes.max(1);
        // As the requester plans at the largest block's size.
        let k = c.blocks_per_request(block);
        let answer_cap = k
            .saturating_mul(block)
            .min((c.max_response_bytes as u64).max(block));
        // `max_retries + 1` sends, twice as many lost at random (they
        // count half), and 3 hedges.
        let per_range = 2 * (u64::from(c.max_retries) + 1) + 3;
        let others = (self.nodes.len() - 1) as u64;
        let seconds = report.virtual_time.as_secs_f64().ceil() as u64;
        // One window of ranges a peer advertised but does not hold, sent
        // before its first empty answer doubts it; again after each
        // reconnection, which forgives it.
        let episodes = 1 + (self.scenario.outages.len() + self.scenario.partitions.len()) as u64;
        let window_waste = others
            .saturating_mul(c.max_in_flight_per_peer as u64)
            .saturating_mul(episodes);
        let targets = report.lagger_targets.clone();
        let mut lagger = 0;
        for node in &self.nodes {
            if node.behaviour != Behaviour::Flooder {
                report.responder_peak_queued = report.responder_peak_queued.max(node.peak_queued);
                report.responder_peak_reading =
                    report.responder_peak_reading.max(node.peak_reading);
            }
            for (reason, n) in &node.give_ups {
                *report
                    .give_ups_by_reason
                    .entry((*reason).to_string())
                    .or_default() += n;
            }
            if node.lagger {
                let target = targets.get(lagger).copied().unwrap_or(1);
                lagger += 1;
                let needed = target.saturating_sub(1).saturating_add(node.refetch);
                let requests =
                    node.past_requests + node.requester.as_ref().map_or(0, |r| r.stats().requests);
                let request_bound = per_range
                    .saturating_mul(needed.div_ceil(k))
                    .saturating_add(4u64.saturating_mul(others).saturating_mul(seconds))
                    .saturating_add(window_waste);
                report.amplification.push(Amplification {
                    requests,
                    blocks: node.height.saturating_sub(1),
                    bytes_received: node.bytes_received,
                    bytes_needed: self.world.chain.bytes_between(1, target),
                    request_bound,
                    byte_bound: 4u64
                        .saturating_mul(requests)
                        .saturating_mul(answer_cap.saturating_add(512)),
                });
            }
            report.refused_requests += node.refused_requests;
            report.rejected += node.rejected;
            report.peak_buffer_bytes = report.peak_buffer_bytes.max(node.peak_held_bytes);
            if let Some(requester) = &node.requester {
                let s = requester.stats();
                report.requests += s.requests;
                report.timeouts += s.timeouts;
                report.retries += s.retries;
                report.hedges += s.hedges;
                report.host_stalls += s.host_stalls;
                report.give_ups += s.give_ups;
                let i = &s.ignored;
                report.ignored += i.not_a_response
                    + i.wrong_channel
                    + i.unknown_nonce
                    + i.unexpected_peer
                    + i.out_of_range_payloads
                    + i.duplicate_payloads
                    + i.bad_payloads
                    + i.gossip_outside_window;
            }
            if node.lagger {
                report.lagger_heights.push(node.height);
                report
                    .lagger_catchup
                    .push(node.caught_up_at.map(|t| t.duration_since(self.epoch)));
            }
        }
        if report.outcome == Outcome::Converged {
            report.catchup = report.lagger_catchup.iter().flatten().max().copied();
        }
        report
    }

    /// The earliest thing due; ties go to the `StateInfo` round, then the
    /// queue, then timers by node.
    fn next_event(&mut self) -> (Instant, Next) {
        let mut best = (self.publish_at, Next::Publish);
        if let Some(at) = self.transition_at {
            if at < best.0 {
                best = (at, Next::Transition);
            }
        }
        if let Some(at) = self.world.queue.first_at() {
            if at < best.0 {
                best = (at, Next::Queue);
            }
        }
        let (nodes, world) = (&self.nodes, &self.world);
        let earliest = *self.earliest_timer.get_or_insert_with(|| {
            let mut earliest: Option<(Instant, usize, Machine)> = None;
            for (i, node) in nodes.iter().enumerate() {
                // The earlier of the node's two timers, the requester's on a
                // tie, as comparing both in turn picks. The schedule is asked
                // only about a node whose timer would be picked.
                let Some((at, machine)) = node.next_timer else {
                    continue;
                };
                // A paused (or busy) node's timers wait until it resumes,
                // and then come after what reached it meanwhile.
                let at = world.timer_at(i, at);
                // A node that is down does nothing until it returns.
                if earliest.is_none_or(|(first, ..)| at < first) && world.up(i) {
                    earliest = Some((at, i, machine));
                }
            }
            earliest
        });
        if let Some((at, i, machine)) = earliest {
            if at < best.0 {
                best = (at, Next::Timer(i, machine));
            }
        }
        best
    }

    fn step(&mut self, next: Next) {
        let touched = match next {
            Next::Publish => {
                self.publish();
                None
            }
            Next::Transition => {
                self.transition();
                // Restarts and connection events moved timers.
                self.earliest_timer = None;
                None
            }
            Next::Queue => {
                let Some((_, pending)) = self.world.queue.pop() else {
                    return;
                };
                // A paused (or busy) process handles nothing: what reaches
                // it waits, in order, until it resumes.
                let target = match &pending {
                    Pending::Message { to, .. } | Pending::StateInfo { to, .. } => Some(to.0),
                    Pending::ReadDone { node, .. } | Pending::Connection { node, .. } => {
                        Some(node.0)
                    }
                    Pending::Flood { .. } | Pending::Uplink(_) | Pending::UplinkRate { .. } => None,
                };
                if let Some(resume) = target.and_then(|node| self.world.resume_at(node)) {
                    self.world.schedule(resume, pending);
                    return;
                }
                match pending {
                    Pending::Message {
                        from,
                        to,
                        bytes,
                        generation,
                    } => {
                        if !self.connection_alive(from.0, to.0, generation) {
                            self.world.unreachable_lost += 1;
                            return;
                        }
                        match bytes {
                            Wire::Encoded(bytes) => {
                                self.nodes[to.0].on_message(&mut self.world, from, bytes);
                            }
                            Wire::Decoded { message, len } => {
                                self.nodes[to.0].on_decoded(&mut self.world, from, len, *message);
                            }
                            Wire::Requests(count) => {
                                let channel = &self.channel;
                                self.nodes[to.0].on_flood(&mut self.world, from, count, channel);
                            }
                            // Dropped when it left the uplink (`transmit`).
                            Wire::Opaque => return,
                        }
                        Some(to.0)
                    }
                    Pending::StateInfo {
                        from,
                        to,
                        height,
                        published,
                        generation,
                    } => {
                        if !self.connection_alive(from.0, to.0, generation) {
                            self.world.unreachable_lost += 1;
                            return;
                        }
                        self.nodes[to.0].on_state_info(&mut self.world, from, height, published);
                        Some(to.0)
                    }
                    Pending::ReadDone {
                        node,
                        ticket,
                        payloads,
                        incarnation,
                    } => {
                        let up = self.world.up(node.0);
                        if !up || self.world.incarnations[node.0] != incarnation {
                            // The read died with the process.
                            return;
                        }
                        self.nodes[node.0].on_read_done(&mut self.world, ticket, payloads);
                        Some(node.0)
                    }
                    Pending::Connection {
                        node,
                        peer,
                        up,
                        incarnation,
                    } => {
                        // Dropped if the process restarted meanwhile: the
                        // new one starts from what is true then.
                        if !self.world.up(node.0) || self.world.incarnations[node.0] != incarnation
                        {
                            return;
                        }
                        self.nodes[node.0].on_connection(&mut self.world, peer, up);
                        Some(node.0)
                    }
                    Pending::Flood { node } => {
                        self.flood(node);
                        None
                    }
                    Pending::Uplink(wake) => {
                        self.world.transmit(wake);
                        None
                    }
                    Pending::UplinkRate {
                        node,
                        bits_per_second,
                    } => {
                        let now = self.world.now;
                        if let Some(wake) =
                            self.world.network.set_uplink(now, node, bits_per_second)
                        {
                            self.world.schedule(wake.at, Pending::Uplink(wake));
                        }
                        None
                    }
                }
            }
            Next::Timer(i, machine) => {
                self.nodes[i].on_timeout(&mut self.world, machine);
                Some(i)
            }
        };
        if let Some(i) = touched {
            self.nodes[i].check(&mut self.world);
            self.earliest_timer = None;
        }
    }

    /// Whether a message sent on the connection `from → to` in
    /// `generation` can still be delivered: the connection never broke since.
    fn connection_alive(&self, from: usize, to: usize, generation: u64) -> bool {
        self.world.reachable(from, to) && self.world.generation(from, to) == generation
    }

    /// Outages and partitions change: broken connections get a new
    /// generation, returning nodes restart, and the requesters at both ends
    /// of every changed connection hear of it.
    fn transition(&mut self) {
        let t = self.world.elapsed();
        let n = self.nodes.len();
        let mut changed = Vec::new();
        for a in 0..n {
            for b in 0..n {
                let now = self.world.schedule.reachable(a, b, t);
                if a != b && now != self.connected[a][b] {
                    self.connected[a][b] = now;
                    changed.push((a, b, now));
                    if a < b && !now {
                        self.world.generations[a * n + b] += 1;
                        let at = self.world.now;
                        for wake in self.world.network.disconnect(at, a, b) {
                            self.world.schedule(wake.at, Pending::Uplink(wake));
                        }
                    }
                }
            }
        }
        for i in 0..n {
            if self.world.schedule.restarts_at(i, t) {
                for rollback in self
                    .scenario
                    .rollbacks
                    .iter()
                    .filter(|r| r.node == i && r.at == t)
                {
                    self.nodes[i].roll_back(rollback.height);
                }
                self.world.incarnations[i] += 1;
                let seed = derive(
                    self.seed ^ self.scenario.machine_seed_salt,
                    0x2000 + i as u64 + (self.world.incarnations[i] << 20),
                );
                self.nodes[i].restart(&self.world, &self.channel, seed);
            }
        }
        for (a, b, up) in changed {
            if !self.world.schedule.up(a, t) {
                continue;
            }
            // A paused process hears of it when it resumes.
            if let Some(resume) = self.world.resume_at(a) {
                let pending = Pending::Connection {
                    node: NodeId(a),
                    peer: NodeId(b),
                    up,
                    incarnation: self.world.incarnations[a],
                };
                self.world.schedule(resume, pending);
                continue;
            }
            self.nodes[a].on_connection(&mut self.world, NodeId(b), up);
            self.nodes[a].check(&mut self.world);
        }
        self.world.progressed();
        self.transition_at = self
            .world
            .schedule
            .next_after(t)
            .and_then(|d| self.epoch.checked_add(d));
    }

    /// A flooder's burst to every node with a responder: as many requests
    /// as its share of the uplink carries in a [`FLOOD_TICK`], while the
    /// connection's send buffer has room (so the uplink stays saturated
    /// and the buffers bounded); then the next burst a tick later.
    fn flood(&mut self, node: NodeId) {
        let targets: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.id != node && n.has_responder() && self.world.reachable(node.0, n.id.0))
            .map(|n| n.id)
            .collect();
        if self.world.up(node.0) && !targets.is_empty() {
            let uplink = self.world.network.uplink_bps(node.0);
            let request_bytes = self.flood_request_bytes();
            let per_tick = u128::from(uplink) * FLOOD_TICK.as_nanos()
                / 8
                / 1_000_000_000
                / request_bytes as u128
                / targets.len() as u128;
            // An unlimited uplink floods at a stated rate rather than an
            // infinite one.
            let per_tick = if uplink == 0 {
                UNLIMITED_FLOOD_PER_TICK
            } else {
                per_tick.max(1)
            };
            let count = u32::try_from(per_tick).unwrap_or(u32::MAX);
            for to in targets {
                if self.world.network_has_room(node, to) {
                    let len = request_bytes * count as usize;
                    self.world
                        .send_unencoded(node, to, len, Wire::Requests(count));
                }
            }
        }
        let next = self.world.now + FLOOD_TICK;
        self.world.schedule(next, Pending::Flood { node });
    }

    /// The largest a flood request encodes to: a full nonce, the channel,
    /// the chain's last range. The same for the whole run, so encoded once.
    fn flood_request_bytes(&mut self) -> usize {
        let height = self.world.chain.height();
        let channel = &self.channel;
        *self.flood_request_bytes.get_or_insert_with(|| {
            let largest =
                crate::wire::state_request(u64::MAX, channel.clone(), height, height + 10);
            prost::Message::encoded_len(&largest)
        })
    }

    /// Every node advertises its height to every node that listens.
    fn publish(&mut self) {
        let now = self.world.now;
        let chain_height = self.world.chain.height();
        let t = self.world.elapsed();
        for from in 0..self.nodes.len() {
            // A paused node gossips nothing this round (one busy committing
            // does: gossip runs apart from the ledger).
            if self.world.schedule.paused_until(from, t).is_some() {
                continue;
            }
            let height = self.nodes[from].advertised_height(chain_height, self.world.overclaim_by);
            for to in 0..self.nodes.len() {
                if to == from
                    || !self.nodes[to].wants_state_info()
                    || !self.world.schedule.reachable(from, to, t)
                {
                    continue;
                }
                let generation = self.world.generation(from, to);
                for at in self.world.network.control(now, from, to) {
                    let pending = Pending::StateInfo {
                        from: NodeId(from),
                        to: NodeId(to),
                        height,
                        published: now,
                        generation,
                    };
                    self.world.schedule(at, pending);
                }
            }
        }
        self.publish_at = now + self.scenario.state_info_interval;
    }
}

/// A seed for stream `stream`, derived from the run's seed (SplitMix64).
fn derive(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ() {
        assert_ne!(derive(1, 1), derive(1, 2));
        assert_ne!(derive(1, 1), derive(2, 1));
        assert_eq!(derive(7, 3), derive(7, 3));
    }

    fn bad_blocks(sim: &Simulation) -> Vec<Vec<u64>> {
        let bad = |n: &Node| n.bad_blocks.keys().copied().collect();
        sim.nodes.iter().map(bad).collect()
    }

    /// Each further corrupt block is bad from the next up-to-date node on,
    /// skipping those that do not serve it; laggers hold none.
    #[test]
    fn corrupt_blocks_start_one_up_to_date_node_later() {
        let small = Scenario {
            peers: 3,
            blocks: 100,
            block_size: 64,
            ..Scenario::default()
        };
        let scenario = small
            .clone()
            .with_corrupt_block(30, 1)
            .with_corrupt_block(60, 2);
        let sim = Simulation::new(scenario, Config::default(), 1).unwrap();
        assert_eq!(bad_blocks(&sim), [vec![30], vec![60], vec![60], vec![]]);
        // A liar (node 1) serves the first half only: it is skipped for 60.
        let with_liar = Scenario {
            behaviours: vec![Behaviour::Honest, Behaviour::Lying, Behaviour::Honest],
            ..small.clone()
        };
        let scenario = with_liar
            .with_corrupt_block(10, 1)
            .with_corrupt_block(60, 1);
        let sim = Simulation::new(scenario, Config::default(), 1).unwrap();
        assert_eq!(bad_blocks(&sim), [vec![10], vec![], vec![60], vec![]]);
        // The liveness target stops at the lowest block without a good copy.
        let none_good = small
            .with_corrupt_block(60, usize::MAX)
            .with_corrupt_block(30, usize::MAX);
        let sim = Simulation::new(none_good, Config::default(), 1).unwrap();
        assert_eq!(sim.liveness_targets(), [30]);
    }

    /// A block that only peers withholding it hold cuts the liveness
    /// target there: the honest peer leaves at once, the dropper serves
    /// the rest, and the default preset reaches the first block it
    /// withholds and gives it up.
    #[test]
    fn a_withheld_block_cuts_the_target_where_only_droppers_hold_it() {
        let scenario = Scenario {
            peers: 2,
            blocks: 300,
            block_size: 256,
            ..Scenario::default()
        }
        .with_droppers(1)
        .with_leave(0, Duration::ZERO);
        assert_eq!(
            scenario.behaviours,
            [Behaviour::Honest, Behaviour::Dropping]
        );
        let mut sim = Simulation::new(scenario, Config::default(), 1).unwrap();
        let withheld = (1..=300).find(|&seq| sim.nodes[1].withholds(seq)).unwrap();
        let report = sim.run(|_| {});
        assert!(report.passed(), "{:?}", report.failures());
        assert_eq!(report.lagger_targets, [withheld]);
        assert_eq!(report.lagger_heights, [withheld]);
        assert!(report.give_ups > 0);
    }
}

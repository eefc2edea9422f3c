//! [`AntiEntropy`]: the requester side of state transfer.

mod delivery;
mod end_game;
mod peers;
mod planning;
mod reorder;
mod requests;
mod responses;
mod timers;
mod types;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::wire;
use crate::wire::gossip::Payload;
use peers::Peers;
use reorder::ReorderBuffer;
use requests::Requests;
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
    /// Only senders of a rejected block in it hold the range, and that
    /// block's back-off has not passed.
    Later,
}

/// First wait before a rejected block is fetched again from a peer that
/// sent a rejected copy; doubles with each rejection.
const BASE_BLOCK_BACKOFF: Duration = Duration::from_millis(250);
/// Longest such wait: a block bad at its only source costs about one
/// request a minute, not a loop.
const MAX_BLOCK_BACKOFF: Duration = Duration::from_secs(64);

/// The rejections of one block not yet committed.
#[derive(Debug, Clone, Copy)]
struct BlockBackoff {
    times: u32,
    not_before: Instant,
}

/// An input this long after a send's deadline shows the host stalled
/// (suspended, stopped, starved of CPU) when it was to wake us: the answers
/// that reached it meanwhile are queued behind this input. Until the
/// host's next `Timeout`, which comes after them, no deadline
/// is judged and no answer to a send made before is taken as a round-trip
/// sample. Judged at once, a 2 s pause of the lagger re-sent every range in
/// flight whose answer was queued, and timed its peers out 30 times (`catchup
/// --pause 3:0.3:2`). Far beyond a timer's lateness on a loaded runtime,
/// far below a pause that costs a round of timeouts.
const HOST_STALL: Duration = Duration::from_millis(250);

/// Hedges per request at most: bounds the sends of a range at
/// `2 · (max_retries + 1) + MAX_HEDGES` (sends lost on a path that works
/// count half against `max_retries`).
const MAX_HEDGES: u32 = 3;

/// A payload handed to the host and not yet committed.
#[derive(Debug, Clone)]
struct Delivered<P> {
    seq: u64,
    origin: Origin<P>,
    size: u64,
    /// A copy (its bytes shared with the host's, not duplicated): when the
    /// host rejects an earlier block it drops this one unverified, and it
    /// goes back to the buffer instead of being fetched again.
    payload: Payload,
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
///
/// # Example: a whole catch-up
///
/// A lagger at height 1 catches up to 30 from a [`StateResponder`](crate::StateResponder),
/// with no network: each request is handed straight to the responder.
///
/// ```
/// use std::time::Instant;
/// use antientropy::wire::{common::{Block, BlockHeader}, gossip::Payload};
/// use antientropy::{Action, AntiEntropy, Config, Event, PeerState};
/// use antientropy::{ResponderAction, ResponderEvent, StateResponder};
/// use prost::Message;
///
/// // A stored block: a marshalled common.Block (the requester checks its number).
/// fn block(seq: u64) -> Payload {
///     let header = BlockHeader { number: seq, ..Default::default() };
///     let data = Block { header: Some(header), ..Default::default() }.encode_to_vec();
///     Payload { seq_num: seq, data: data.into(), private_data: vec![] }
/// }
///
/// let mut now = Instant::now(); // the host's clock
/// let mut lagger = AntiEntropy::new(Config::default(), "ch".into(), 1, 7, now)?;
/// let mut server = StateResponder::new(Config::default(), "ch".into(), 30)?;
/// lagger.handle(now, Event::Membership(vec![PeerState::new("server", 30)]))?;
///
/// let mut height = 1;
/// while height < 30 {
///     let Some(action) = lagger.poll_action() else {
///         // Nothing to do until a deadline: let time pass.
///         now = lagger.poll_timeout().expect("a deadline while behind");
///         lagger.handle(now, Event::Timeout)?;
///         continue;
///     };
///     match action {
///         Action::SendRequest { message, .. } => {
///             server.handle(now, ResponderEvent::Request { from: "lagger", message })?;
///             let mut responses = Vec::new();
///             while let Some(output) = server.poll_action() {
///                 match output {
///                     ResponderAction::ReadBlocks { ticket, range, .. } => {
///                         let payloads = (range.start()..=range.end()).map(block).collect();
///                         server.handle(now, ResponderEvent::BlocksRead { ticket, payloads })?;
///                     }
///                     ResponderAction::SendResponse { message, .. } => responses.push(message),
///                     ResponderAction::Dropped { .. } | ResponderAction::Promote { .. } => {}
///                 }
///             }
///             for message in responses {
///                 lagger.handle(now, Event::Response { from: "server", message })?;
///             }
///         }
///         Action::AddPayload { payload, .. } => {
///             // Verify, commit, and say so.
///             height = payload.seq_num + 1;
///             lagger.handle(now, Event::Committed { height })?;
///         }
///         Action::GiveUp { range, reason } => panic!("gave up {range}: {reason:?}"),
///     }
/// }
/// assert_eq!(lagger.committed(), 30);
/// assert_eq!(lagger.stats().timeouts, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AntiEntropy<P> {
    config: Config,
    channel: Bytes,
    rng: fastrand::Rng,
    now: Instant,
    /// Payloads held out of order, with their senders.
    buffer: ReorderBuffer<P>,
    committed: u64,
    uncommitted: VecDeque<Delivered<P>>,
    uncommitted_bytes: u64,
    peers: Peers<P>,
    requests: Requests<P>,
    /// Every block from `buffer.next()` below this one is held or
    /// requested, so planning looks for the next missing run from here
    /// rather than from `next` (walking every held block and request in
    /// flight on each send was a quarter of the machine's cost per block).
    /// Lowered whenever a block leaves both sets: a request dropped with
    /// blocks not held, a held block evicted, a rewind.
    covered_below: u64,
    /// Blocks offered by the gossip path since the last `drop_obsolete`:
    /// only they can complete another request's range (a response's blocks
    /// lie in the range its send asked: its own request's, which the answer
    /// ends, or a request holding a part split off it, which the answer
    /// drops), so only their requests are checked, not every request on
    /// every event.
    gossiped: Vec<u64>,
    /// The inclusive end of the active round's range.
    round_end: Option<u64>,
    /// When the next round starts, while none is active.
    next_round_at: Option<Instant>,
    /// When a send the end game waits on is next taken for lost or
    /// overdue: planning looks again then (`end_game::end_game`).
    look_again_at: Option<Instant>,
    /// When the first range held back as still queued at a slowed peer
    /// (`planning::queued_until`) is no longer taken for queued: it is
    /// sent again then, unless an answer came first.
    queued_wake: Option<Instant>,
    /// When the host was seen to have stalled (an input came long after a
    /// deadline it was asked to wake us for), until its next `Timeout`: see
    /// [`HOST_STALL`].
    stalled_since: Option<Instant>,
    /// Peers whose copy of a block was rejected, by block number.
    rejected_by: BTreeMap<u64, Vec<P>>,
    /// Back-off of each rejected block not yet committed.
    backoffs: BTreeMap<u64, BlockBackoff>,
    /// Running estimate of a payload's size, for the byte window.
    block_bytes_estimate: u64,
    /// Whether any block was seen yet: before, `block_bytes_estimate` is
    /// only the window's mean (`window_bytes / window_blocks`).
    block_size_seen: bool,
    actions: VecDeque<Action<P>>,
    stats: Stats,
}

/// A peer's counters with its live gauges.
fn peer_record(peer: &peers::Peer) -> PeerStats {
    PeerStats {
        in_flight: peer.in_flight,
        srtt: peer.rtt.srtt(),
        ..peer.stats
    }
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
        let buffer = ReorderBuffer::new(
            height,
            usize::try_from(max_blocks).unwrap_or(usize::MAX),
            usize::try_from(config.window_bytes).unwrap_or(usize::MAX),
        );
        let block_bytes_estimate =
            (config.window_bytes / config.window_blocks).clamp(1, config.max_message_size as u64);
        Ok(Self {
            next_round_at: now.checked_add(config.check_interval),
            look_again_at: None,
            queued_wake: None,
            stalled_since: None,
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
            covered_below: height,
            gossiped: Vec::new(),
            round_end: None,
            rejected_by: BTreeMap::new(),
            backoffs: BTreeMap::new(),
            block_bytes_estimate,
            block_size_seen: false,
            actions: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// Applies one input. Drain [`poll_action`](Self::poll_action) afterwards.
    ///
    /// An error means the input was refused and counted; the machine is
    /// consistent either way.
    pub fn handle(&mut self, now: Instant, event: Event<P>) -> Result<(), EventError> {
        let now = self.begin_input(now, matches!(event, Event::Timeout));
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
                .on_response(now, from, message)
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
        self.end_input(now);
        result
    }

    /// What every input does first: time passes; deadlines are judged
    /// unless the host was seen to stall (`timer`: the input is a
    /// `Timeout`, which judges them whatever came before).
    fn begin_input(&mut self, now: Instant, timer: bool) -> Instant {
        let now = self.observe(now);
        match self.stalled_since {
            // The backlog was the host's to hand in within `HOST_STALL`:
            // deadlines are not held back for longer (a host under a steady
            // stream of inputs would starve them).
            Some(since) if timer || since.checked_add(HOST_STALL).is_some_and(|end| now > end) => {
                self.stalled_since = None;
            }
            None if !timer && self.host_stalled(now) => {
                self.stalled_since = Some(now);
                self.stats.host_stalls += 1;
            }
            _ => {}
        }
        if self.stalled_since.is_none() {
            self.expire(now);
        }
        now
    }

    /// What every input does last: deliveries, planning, a due hedge.
    fn end_input(&mut self, now: Instant) {
        self.deliver();
        self.fill(now);
        // The event may have made another request the one holding back the
        // commit point, with its hedge already due: so that `poll_timeout`
        // never lies in the past, hedge it now (after a host stall, at the
        // `Timeout` that follows the inputs).
        if self.stalled_since.is_none() && self.hedge_due().is_some_and(|due| due <= now) {
            self.hedge(now);
            // The hedge loaded a peer: a range waiting on it may now be worth
            // a copy, which the next event would make otherwise.
            self.fill(now);
        }
        #[cfg(debug_assertions)]
        self.check_in_flight();
    }

    /// Each peer's count of sends in flight, and of the blocks they asked,
    /// is what its waiting sends add up to (a send's slot is freed by the
    /// range it asked, which a split may leave wider than its request's).
    #[cfg(debug_assertions)]
    fn check_in_flight(&self) {
        let mut waiting: BTreeMap<&P, (usize, u64)> = BTreeMap::new();
        for (_, request) in self.requests.iter() {
            for attempt in request.waiting() {
                let entry = waiting.entry(&attempt.peer).or_default();
                entry.0 += 1;
                entry.1 += attempt.asked.len();
            }
        }
        for (id, peer) in self.peers.iter() {
            let expected = waiting.get(id).copied().unwrap_or_default();
            debug_assert_eq!(peer.in_flight_counts(), expected, "peer {id:?}");
        }
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
            Err(error) => self.malformed(now, error),
        }
    }

    /// Decodes an `Envelope` received from `from` (what Fabric's gossip
    /// stream carries; at most `max_message_size` bytes), takes the
    /// `GossipMessage` out of it as [`wire::unwrap_envelope`] does and
    /// handles it as [`Event::Response`]. Bytes that decode as neither are
    /// counted in `ignored.malformed`.
    pub fn handle_envelope_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), EventError> {
        let max = self.config.max_message_size;
        match wire::decode_envelope(bytes, max).and_then(|e| wire::unwrap_envelope(&e, max)) {
            Ok(message) => self.handle(now, Event::Response { from, message }),
            Err(error) => self.malformed(now, error),
        }
    }

    /// Refuses bytes that did not decode.
    fn malformed(&mut self, now: Instant, error: wire::WireError) -> Result<(), EventError> {
        // Still an input at `now`, like any other.
        let now = self.begin_input(now, false);
        self.end_input(now);
        self.stats.ignored.malformed += 1;
        Err(ResponseError::Wire(error).into())
    }

    /// Whether the machine saw its host stall (an input came long after a
    /// deadline it was to be woken for) and judges no deadline until the
    /// next [`Event::Timeout`], or for a short while at
    /// most: a host with inputs queued should hand them in before that
    /// `Timeout`, though [`poll_timeout`](Self::poll_timeout) has passed.
    /// The answers that reached a stopped process are then taken as answers,
    /// not as timeouts followed by strays.
    #[must_use]
    pub fn deadlines_deferred(&self) -> bool {
        self.stalled_since.is_some()
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When to feed [`Event::Timeout`] next: the earliest of the next round,
    /// a request's deadline and a hedge. Never late, sometimes early (after
    /// an answer, until the next timer event): a `Timeout` with nothing due
    /// does nothing.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A lower bound on the sends' deadlines: a wake-up before the real
        // one finds nothing due and makes it exact.
        let deadlines = self.requests.earliest_deadline().into_iter();
        // A back-off still to come holds a range back: wake up when it ends.
        let backoffs = self
            .backoffs
            .values()
            .map(|backoff| backoff.not_before)
            .filter(|at| *at > self.now);
        deadlines
            .chain(self.next_round_at)
            .chain(self.look_again_at)
            .chain(self.queued_wake.filter(|at| *at > self.now))
            .chain(self.hedge_due())
            .chain(backoffs)
            .min()
    }

    /// A snapshot of state and counters: a copy of plain numbers, no
    /// allocation, so it may be read after every input.
    pub fn stats(&self) -> Stats {
        Stats {
            height: self.buffer.next(),
            committed: self.committed,
            target: self.peers.target(self.now),
            in_flight: self.requests.len(),
            buffered_blocks: self.buffer.len(),
            buffered_bytes: self.buffer.bytes(),
            uncommitted_blocks: self.uncommitted.len() as u64,
            uncommitted_bytes: self.uncommitted_bytes,
            ..self.stats
        }
    }

    /// The record of `peer`, if it is in the current membership.
    pub fn peer_stats(&self, peer: &P) -> Option<PeerStats> {
        self.peers.get(peer).map(peer_record)
    }

    /// The record of every peer in the current membership, in peer order.
    pub fn peer_stats_iter(&self) -> impl Iterator<Item = (&P, PeerStats)> + '_ {
        self.peers.iter().map(|(id, peer)| (id, peer_record(peer)))
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
        self.peers.target(self.now)
    }

    /// Requests (ranges) outstanding.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether an input at `now` comes more than [`HOST_STALL`] after a
    /// send's deadline: the host was not running (suspended, stopped,
    /// starved) when it should have woken us, and the inputs that reached it
    /// meanwhile are still queued behind this one.
    fn host_stalled(&self, now: Instant) -> bool {
        // Compared first as instants: nearly every input comes before the
        // deadline, and this runs on each (a commit per block).
        self.requests
            .earliest_deadline()
            .is_some_and(|deadline| now > deadline && now - deadline > HOST_STALL)
    }

    fn observe(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }
}

//! What the requester knows of each peer: its advertisement, its load, its
//! round trips and its failures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::types::{PeerState, PeerStats};
use super::window::PeerWindow;
use crate::config::{Config, PeerSelection};
use crate::range::SeqRange;

/// Longest time a failing peer is benched for.
const MAX_BENCH: Duration = Duration::from_secs(30);
/// First bench after a failure; doubles with each further strike.
const BASE_BENCH: Duration = Duration::from_millis(500);

/// Bytes a peer's window holds after its first answer, at the block size
/// seen: 256 KiB is 23 requests of 1 KiB blocks (a 20 Mbit/s × 100 ms
/// product), and no more than the initial 2 of 64 KiB blocks.
const START_BYTES: u64 = 256 * 1024;

/// Sends past its window a peer may take for a hedge when the peer holding
/// the commit point never answered.
pub(crate) const HEDGE_HEADROOM: usize = 1;

/// First doubt of a peer's advertisement; doubles with each further one.
/// Short, because a busy responder answers empty too (ours does, to spare
/// the requester a timeout): a busy peer is back in the rotation within a
/// few round trips, while an overclaimer is asked ever more rarely.
const BASE_DOUBT: Duration = Duration::from_millis(500);
/// Longest doubt: an overclaimer is asked about once a minute at most, and a
/// peer that really catches up is believed again within a minute even if it
/// never reconnects.
const MAX_DOUBT: Duration = Duration::from_secs(64);

/// A peer failed to serve a block it advertised: until `until`, it is
/// believed to hold only the blocks below `from`.
#[derive(Debug, Clone, Copy)]
struct Doubt {
    from: u64,
    until: Instant,
}

/// What a send's timeout says of its peer, by what the peer answered since
/// the send was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Silence {
    /// It answered a send made after this one: this one or its answer was
    /// lost on a path that works (random loss, not a sign of a slow or
    /// dead peer).
    Lost,
    /// Answers came since it was made, none to a later send: lost, or
    /// queued behind them.
    Unclear,
    /// Nothing came since it was made: the peer may be gone or hung.
    Dead,
}

/// Jacobson/Karels round-trip estimator with exponential back-off of the
/// timeout after a timeout (RFC 6298 §5.5): under a sudden queue the
/// deadline grows instead of expiring every request in turn.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
}

/// The back-off doubles the timeout at most this many times.
const MAX_BACKOFF: u32 = 6;

/// The least margin of a deadline over the SRTT (RFC 9002's
/// `kGranularity`): once round trips stop varying, RTTVAR decays to zero
/// and an answer as slow as the average would be taken for lost.
pub(crate) const CLOCK_GRANULARITY: Duration = Duration::from_millis(1);

/// Timeouts in a row, with no answer between, after which a peer is quiet
/// (`Peer::quiet`). One is a lost message at most: counting a single one
/// (at up to 20 % loss) cost 4 000 lossy wild clusters 0.05 %, two cost
/// nothing.
const QUIET_AFTER_TIMEOUTS: u32 = 2;

impl RttEstimator {
    pub(crate) fn sample(&mut self, rtt: Duration) {
        self.backoff = 0;
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

    /// An answer came that cannot time the path: the timeout's back-off
    /// ends as after a sample, the estimate stays.
    pub(crate) fn answered_unmeasured(&mut self) {
        self.backoff = 0;
    }

    /// A request timed out: double the timeout until the next sample.
    pub(crate) fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
    }

    /// (SRTT + 4·RTTVAR) · 2^backoff, or `initial` · 2^backoff before any
    /// sample (RFC 6298 backs off the initial timeout too: under a queue
    /// longer than it, every first request would otherwise expire).
    pub(crate) fn rto(&self, initial: Duration) -> Duration {
        self.unbacked_rto(initial).saturating_mul(1 << self.backoff)
    }

    /// The timeout before any back-off: SRTT + max(4·RTTVAR, granularity),
    /// or `initial` before any sample.
    pub(crate) fn unbacked_rto(&self, initial: Duration) -> Duration {
        self.srtt.map_or(initial, |srtt| {
            srtt + (self.rttvar * 4).max(CLOCK_GRANULARITY)
        })
    }
}

/// The least round trip of the last 64 to 128 answers (two epochs of 64): a
/// queue-free round trip that follows the path when it slows, as the
/// least ever seen (`base_rtt`) does not. What `timers::head_of_queue_due`
/// expects a send alone at its peer to take.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecentMinRtt {
    current: Option<Duration>,
    previous: Option<Duration>,
    samples: u32,
}

impl RecentMinRtt {
    const EPOCH: u32 = 64;

    pub(crate) fn sample(&mut self, rtt: Duration) {
        self.current = Some(self.current.map_or(rtt, |least| least.min(rtt)));
        self.samples += 1;
        if self.samples >= Self::EPOCH {
            self.previous = self.current.take();
            self.samples = 0;
        }
    }

    pub(crate) fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(current), Some(previous)) => Some(current.min(previous)),
            (current, previous) => current.or(previous),
        }
    }
}

/// Near a round's end (see `AntiEntropy::tail_end`), a range goes to the
/// free peer expected to deliver it first: after its sends in flight, at
/// its measured rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finish {
    pub(crate) now: Instant,
    pub(crate) block_bytes: u64,
    pub(crate) per_request: u64,
    pub(crate) blocks: u64,
}

impl Finish {
    /// Seconds until `peer` would have delivered the range; `None` if its
    /// rate is unknown.
    pub(crate) fn of(&self, peer: &Peer) -> Option<f64> {
        let drain = peer.drain(self.now, self.block_bytes, self.per_request)?;
        Some(drain + (self.blocks * self.block_bytes) as f64 / peer.rate?)
    }
}

/// One member of the channel.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) advertised: Option<u64>,
    pub(crate) in_flight: usize,
    /// Blocks asked by its sends in flight.
    in_flight_blocks: u64,
    /// Its answers' rate to us, bytes per second: a running mean of each
    /// answer's bytes over its time on the link (the gap since the previous
    /// answer, or its round trip if shorter). `None` before an answer.
    rate: Option<f64>,
    /// Since when the answer at the head of its queue has been on its way:
    /// the last answer, or the send that ended an idle spell.
    busy_from: Option<Instant>,
    pub(crate) rtt: RttEstimator,
    /// Its least round trip lately.
    pub(crate) recent_min_rtt: RecentMinRtt,
    window: PeerWindow,
    /// Failures not yet paid back by successes; drives the bench time.
    strikes: u32,
    benched_until: Option<Instant>,
    /// False between `PeerDisconnected` and `PeerConnected`: not asked.
    pub(crate) connected: bool,
    doubt: Option<Doubt>,
    /// Doubts in a row, not yet cleared by the peer serving what it was
    /// doubted for: drives the doubt's length.
    doubts: u32,
    /// Blocks it sent that the host rejected and that are not committed
    /// yet: its strikes never drop below twice this, whatever else it
    /// serves well.
    pub(crate) unfixed_rejections: u32,
    /// Longest request it is sent, in blocks: halved by a timeout, one more
    /// per answer (unbounded until its first timeout).
    length_cap: u64,
    /// When its last answer came, for the dispersion of the next one.
    pub(crate) last_answer_at: Option<Instant>,
    /// When the request it answered last was sent: a request sent after
    /// it is still queued behind earlier ones.
    pub(crate) last_answered_sent_at: Option<Instant>,
    /// The place in our send order (`Attempt::order`) of the latest send
    /// it answered with a usable block: a send made before it that times
    /// out was lost on a path that works (`Silence::Lost`). The order, not
    /// the time: sends of one flight leave at the same instant, and one
    /// queued behind the answered one is not overtaken.
    latest_answered_order: Option<u64>,
    /// Whether its link's rate was measured yet.
    bandwidth_seen: bool,
    /// How long an overtaken send may still be on its way, in quarters of
    /// the SRTT: doubled, up to 2 SRTT, each time one already taken for
    /// lost was answered after all (RACK's reordering window, RFC 8985
    /// §6.2). It does not shrink back.
    reorder_quarters: u32,
    /// A send to it was beaten by a copy sent later to another peer (a
    /// hedge answered first) while it had never answered: it counts as
    /// silent (`silent_so_far`) until it sends an answer of any kind.
    beaten_unanswered: bool,
    /// It sent an answer of some kind (matched or not): an idle peer never
    /// measured may take a hedge only then.
    heard: bool,
    /// Sends to it timed out in a row and it has not answered since: until
    /// then (the backed-off timeout after the last one) it is quiet.
    quiet_until: Option<Instant>,
    /// When the last send to it was made.
    last_sent_at: Option<Instant>,
    /// Sends made to it while it was silent so far, since its last answer
    /// or reconnection: each doubles the wait before the next
    /// (`probe_due`).
    silent_probes: u32,
    pub(crate) stats: PeerStats,
}

impl Peer {
    fn new(advertised: Option<u64>) -> Self {
        Self {
            advertised,
            in_flight: 0,
            in_flight_blocks: 0,
            rate: None,
            busy_from: None,
            rtt: RttEstimator::default(),
            recent_min_rtt: RecentMinRtt::default(),
            window: PeerWindow::new(),
            strikes: 0,
            benched_until: None,
            connected: true,
            doubt: None,
            doubts: 0,
            unfixed_rejections: 0,
            length_cap: u64::MAX,
            last_answer_at: None,
            last_answered_sent_at: None,
            latest_answered_order: None,
            bandwidth_seen: false,
            reorder_quarters: 1,
            beaten_unanswered: false,
            heard: false,
            quiet_until: None,
            last_sent_at: None,
            silent_probes: 0,
            stats: PeerStats::default(),
        }
    }

    /// A send of `blocks` blocks to it is now in flight.
    pub(crate) fn sent(&mut self, now: Instant, blocks: u64) {
        if self.in_flight == 0 {
            self.busy_from = Some(now);
        }
        if self.silent_so_far() {
            self.silent_probes = self.silent_probes.saturating_add(1);
        }
        self.last_sent_at = Some(now);
        self.in_flight += 1;
        self.in_flight_blocks = self.in_flight_blocks.saturating_add(blocks);
    }

    /// A send of `blocks` blocks to it ended (answered, timed out, failed,
    /// cancelled): its slot is free.
    pub(crate) fn send_ended(&mut self, blocks: u64) {
        self.in_flight -= 1;
        self.in_flight_blocks = self.in_flight_blocks.saturating_sub(blocks);
    }

    /// Whether it has answered, with no bad answer outstanding.
    pub(crate) fn trusted(&self) -> bool {
        self.rtt.srtt().is_some() && self.doubts == 0 && self.unfixed_rejections == 0
    }

    /// Whether it never answered though some of its sends timed out or
    /// were beaten by a copy sent later.
    pub(crate) fn silent_so_far(&self) -> bool {
        self.rtt.srtt().is_none() && (self.stats.timeouts > 0 || self.beaten_unanswered)
    }

    /// Whether a peer silent so far may be sent one range again although a
    /// trusted peer could take it: nothing of it in flight, and its
    /// timeout, doubled for each such probe, has passed since the last send
    /// to it. Without probes a peer whose first sends were lost (in a burst,
    /// or by a peer that drops chosen ranges) was never asked again while
    /// another served: one such peer of four left a quarter of the uplinks
    /// unused for a whole catch-up (`catchup --peers 4 --blocks 20000
    /// --block-size 16384 --droppers 1`: 9.02 s, as with a silent peer;
    /// 7.79 s now, with the window below). The doubling keeps what a truly
    /// silent peer costs to a one-block range per probe, ever more rarely.
    pub(crate) fn probe_due(&self, now: Instant, config: &Config) -> bool {
        const MAX_DOUBLINGS: u32 = 5;
        // Its timeout with back-off: a probe that timed out backs it off
        // too, so a peer that stays silent is probed ever more rarely,
        // faster than by the doubling alone. From the timeout before
        // back-off, laggers of a crowd (silent to each other until they
        // hold something) were probed more often: crowd seeds 1-3 8.55,
        // 8.39, 9.15 against 8.69, 9.29, 9.32.
        let wait = self
            .timeout(config)
            .saturating_mul(1 << self.silent_probes.min(MAX_DOUBLINGS));
        self.in_flight == 0
            && self
                .last_sent_at
                .is_none_or(|sent| sent.checked_add(wait).is_some_and(|due| now >= due))
    }

    /// Whether it gave a bad answer not yet made good: doubted (an empty or
    /// short answer, or a range it failed to the end, until it serves what
    /// it was doubted for), a block of its rejected and not committed
    /// since, or silent so far. Such a peer comes after every other.
    pub(crate) fn suspect(&self) -> bool {
        self.doubts > 0 || self.unfixed_rejections > 0 || self.silent_so_far()
    }

    /// How far it is trusted with a range, best first: a suspect last;
    /// for a retry (a range some peer failed), one never measured or
    /// quiet (sends timed out in a row) before it, after the others.
    /// A retry of the commit point's range went to a peer never measured
    /// (a lagger, and then a byzantine peer) and waited out its 6 s
    /// deadline twice, while the measured honest peer whose answer had
    /// been lost was benched or ranked after them (wild seed 2 252, 19 %
    /// loss: 28.3 s against 4.8 s before the bench rule above).
    pub(crate) fn standing(&self, now: Instant, retry: bool) -> u8 {
        if self.suspect() {
            2
        } else if retry && (self.rtt.srtt().is_none() || self.quiet(now)) {
            1
        } else {
            0
        }
    }

    /// Whether it is a source of the blocks up to `end` other than the
    /// `excluded` (the senders of a rejected copy): one that covers them,
    /// unless it is a suspect that failed the range already (`failed`).
    /// Counted as one, a silent peer kept a range whose block was bad at
    /// every source from the peers that sent it, and so from its
    /// `BlockRejected` give-up, for six sends of 10 s (wild seed 3 389).
    pub(crate) fn alternative<P: PartialEq>(
        &self,
        id: &P,
        end: u64,
        now: Instant,
        failed: &[P],
        excluded: &[P],
    ) -> bool {
        self.covers(end, now) && !excluded.contains(id) && !(self.suspect() && failed.contains(id))
    }

    /// Whether it is silent so far, or answered before but its sends have
    /// timed out in a row since, the last less than its backed-off timeout
    /// ago. A peer that hangs keeps its measured rate: counted on in the
    /// tail, it was expected to deliver most of what was left, the slow
    /// honest peer beside it got ranges of one to four blocks, and the
    /// hung one the commit point's range whenever a slot freed, held until
    /// hedged (5 000 blocks: 55 s against 2.8 s from the slow peer alone).
    /// The spell doubles with the back-off (with `adaptive_timeout`); an
    /// answer with a usable block ends it. Two sends lost in one burst and
    /// expiring together make a peer quiet at once: its other sends in
    /// flight, answered, end it.
    pub(crate) fn quiet(&self, now: Instant) -> bool {
        self.silent_so_far() || self.quiet_until.is_some_and(|until| until > now)
    }

    /// A send to it was beaten by a copy sent later to another peer.
    pub(crate) fn beaten(&mut self) {
        self.beaten_unanswered |= self.rtt.srtt().is_none();
    }

    /// It sent an answer on our channel, matched or not.
    pub(crate) fn heard_from(&mut self) {
        self.beaten_unanswered = false;
        self.heard = true;
    }

    /// Its measured rate, bytes per second.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Whether it has no bad answer outstanding, is not benched and not
    /// quiet: its rate can be counted on.
    pub(crate) fn dependable(&self, now: Instant) -> bool {
        self.doubts == 0 && self.unfixed_rejections == 0 && !self.benched(now) && !self.quiet(now)
    }

    /// Seconds from `now` until the answers to its sends in flight are
    /// expected in, at its measured rate: each answers at most
    /// `per_request` blocks of `block_bytes`.
    pub(crate) fn drain(&self, now: Instant, block_bytes: u64, per_request: u64) -> Option<f64> {
        let backlog = self.backlog_secs(block_bytes, per_request)?;
        let started = self
            .busy_from
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        Some((backlog - started).max(0.0))
    }

    /// When the answers to its sends in flight are expected in, as
    /// [`drain`](Self::drain) counts them, though that is past: `None`
    /// before its rate is measured or while it has nothing in flight.
    pub(crate) fn drained_at(&self, block_bytes: u64, per_request: u64) -> Option<Instant> {
        let backlog = self.backlog_secs(block_bytes, per_request)?;
        self.busy_from?
            .checked_add(Duration::try_from_secs_f64(backlog).ok()?)
    }

    /// Seconds its sends in flight take on its link at its measured rate.
    fn backlog_secs(&self, block_bytes: u64, per_request: u64) -> Option<f64> {
        Some(self.backlog(block_bytes, per_request) as f64 / self.rate?)
    }

    /// Its fastest round trip yet.
    pub(crate) fn base_rtt(&self) -> Option<Duration> {
        self.window.base_rtt
    }

    /// Seconds the answer at the head of its queue has been on its way.
    pub(crate) fn busy_for(&self, now: Instant) -> Option<f64> {
        self.busy_from
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
    }

    /// Its sends in flight and the blocks they asked, as counted.
    #[cfg(debug_assertions)]
    pub(crate) fn in_flight_counts(&self) -> (usize, u64) {
        (self.in_flight, self.in_flight_blocks)
    }

    /// Bytes its sends in flight are expected to bring, each at most
    /// `per_request` blocks of `block_bytes`.
    pub(crate) fn backlog(&self, block_bytes: u64, per_request: u64) -> u64 {
        self.in_flight_blocks
            .min((self.in_flight as u64).saturating_mul(per_request))
            .saturating_mul(block_bytes)
    }

    /// How many requests may be in flight to this peer now.
    pub(crate) fn limit(&self, config: &Config) -> usize {
        if self.doubts > 0 {
            // On probation since a doubt: one request at a time until it
            // serves what it was doubted for, or an overclaimer would be
            // asked a whole window of ranges it does not hold.
            return 1;
        }
        if config.adaptive_window {
            self.window.size.min(config.max_in_flight_per_peer)
        } else {
            config.max_in_flight_per_peer
        }
    }

    /// A response came back that says nothing of the link's timing (it
    /// waited out a stall of our host): the peer is alive, nothing more.
    pub(crate) fn answered_unmeasured(&mut self, now: Instant) {
        self.rtt.answered_unmeasured();
        // Its queue moves: the next answer's time on the link counts from
        // here, not from before the stall.
        self.busy_from = Some(now);
        self.answer_came();
    }

    /// It answered our send number `order` with a usable block.
    pub(crate) fn answered_send(&mut self, order: u64) {
        self.latest_answered_order =
            Some(self.latest_answered_order.map_or(order, |o| o.max(order)));
    }

    /// What any answer with a usable block tells, timed or not: the peer
    /// is not quiet, and its requests may grow again, a block at a time.
    fn answer_came(&mut self) {
        self.quiet_until = None;
        self.silent_probes = 0;
        self.length_cap = self.length_cap.saturating_add(1);
    }

    /// A response of `bytes` to a request sent at `sent_at` came back at
    /// `now`; a request is about `request_bytes` long.
    pub(crate) fn answered(
        &mut self,
        now: Instant,
        sent_at: Instant,
        bytes: u64,
        config: &Config,
        request_bytes: u64,
    ) {
        let rtt = now.saturating_duration_since(sent_at);
        self.rtt.sample(rtt);
        if !rtt.is_zero() {
            self.recent_min_rtt.sample(rtt);
        }
        self.answer_came();
        let floor = usize::try_from(START_BYTES / request_bytes.max(1)).unwrap_or(usize::MAX);
        let max = config.max_in_flight_per_peer;
        self.window.on_sample(now, sent_at, max, floor);
        // Dispersion: if this request reached the peer before its previous
        // answer left (sent a base round trip before that answer came), the
        // two answers left back to back, and the gap between them is this
        // one's time on the peer's link. The first such gap sizes the
        // window: 1 KiB blocks at 100 ms need about 100 requests in flight
        // per 100 Mbit/s peer, and doubling there from the start takes
        // three round trips of a transfer that lasts four.
        let previous = self.last_answer_at.replace(now);
        self.last_answered_sent_at = Some(sent_at);
        // Its time on the link: since the previous answer if it was queued
        // behind it, else at most its round trip (a lower bound on the
        // rate when the peer idled in between).
        let on_link = previous
            .map(|previous| now.saturating_duration_since(previous))
            .filter(|gap| !gap.is_zero())
            .map_or(rtt, |gap| gap.min(rtt));
        if !on_link.is_zero() && bytes > 0 {
            let sample = bytes as f64 / on_link.as_secs_f64();
            self.rate = Some(self.rate.map_or(sample, |rate| rate * 0.75 + sample * 0.25));
        }
        self.busy_from = Some(now);
        if let (Some(previous), Some(base), false) =
            (previous, self.window.base_rtt, self.bandwidth_seen)
        {
            let gap = now.saturating_duration_since(previous);
            if sent_at.checked_add(base).is_some_and(|at| at <= previous) && !gap.is_zero() {
                self.bandwidth_seen = true;
                let rate = bytes as f64 / gap.as_secs_f64();
                self.window.on_bandwidth(now, rate, request_bytes, max);
            }
        }
    }

    /// A request of `blocks` blocks to this peer timed out: its next ones
    /// are half as long (at least one block), so that on a link too thin
    /// for a full answer within the longest deadline (four laggers sharing
    /// 100 kbit/s: 58 s for 11 × 16 KiB) an answer still fits.
    pub(crate) fn shorten_requests(&mut self, blocks: u64) {
        self.length_cap = self.length_cap.min(blocks).div_ceil(2).max(1);
    }

    /// `range`, cut to the request length this peer is trusted with.
    pub(crate) fn trim(&self, range: SeqRange) -> SeqRange {
        if range.len() <= self.length_cap {
            return range;
        }
        SeqRange::new(range.start(), range.start() + self.length_cap - 1).unwrap_or(range)
    }

    /// How long after an answer to a later send an overtaken send to this
    /// peer is taken for lost; `timeout` until a round trip is measured.
    pub(crate) fn reorder_allowance(&self, timeout: Duration) -> Duration {
        self.rtt
            .srtt()
            .map_or(timeout, |srtt| srtt * self.reorder_quarters / 4)
    }

    /// A send it overtook was answered after all: its answers can come out
    /// of order.
    pub(crate) fn reordered(&mut self) {
        self.reorder_quarters = (self.reorder_quarters * 2).min(8);
    }

    /// Our send number `order` to this peer, made at `sent_at`, timed
    /// out: what that says of the peer depends on what it answered since
    /// (`Silence`).
    pub(crate) fn timed_out(
        &mut self,
        now: Instant,
        order: u64,
        sent_at: Instant,
        config: &Config,
    ) -> Silence {
        let silence = if self.latest_answered_order.is_some_and(|o| o > order) {
            Silence::Lost
        } else if self.last_answer_at.is_some_and(|at| at > sent_at) {
            Silence::Unclear
        } else {
            Silence::Dead
        };
        self.silent(now, silence, config);
        silence
    }

    /// A send to this peer timed out, its silence not told apart (fixed
    /// timeouts): it counts as `Silence::Dead`, as every timeout did.
    pub(crate) fn timed_out_unclassified(&mut self, now: Instant, config: &Config) -> Silence {
        self.silent(now, Silence::Dead, config);
        Silence::Dead
    }

    /// What a timeout's `silence` backs off: nothing for a loss; the
    /// timeout, and the window if the last answer met a queue, for an
    /// unclear one; both, and quiet after two in a row, for a dead one.
    fn silent(&mut self, now: Instant, silence: Silence, config: &Config) {
        if silence == Silence::Lost {
            self.window.grow_on_loss(config.max_in_flight_per_peer);
            return;
        }
        self.rtt.back_off();
        self.window.on_timeout(silence == Silence::Unclear);
        if silence == Silence::Dead && self.rtt.backoff >= QUIET_AFTER_TIMEOUTS {
            self.quiet_until = now.checked_add(self.timeout(config));
        }
    }

    /// The height we believe the peer holds now: what it advertises, cut
    /// to a doubt in force; `None` while it is unreachable or advertises
    /// nothing.
    pub(crate) fn credible_height(&self, now: Instant) -> Option<u64> {
        if !self.connected {
            return None;
        }
        let advertised = self.advertised?;
        Some(match self.doubt {
            Some(doubt) if doubt.until > now => advertised.min(doubt.from),
            _ => advertised,
        })
    }

    /// Whether the peer is reachable and credibly holds block `end`.
    pub(crate) fn covers(&self, end: u64, now: Instant) -> bool {
        self.credible_height(now).is_some_and(|height| height > end)
    }

    /// The peer failed to serve block `from`, which it advertised: believe
    /// it holds only the blocks below for a while, doubling with each doubt
    /// in a row. Asked only of what it advertised, an honest peer is never
    /// doubted; an overclaimer is asked ever more rarely.
    pub(crate) fn doubt(&mut self, from: u64, now: Instant) {
        if self
            .doubt
            .is_some_and(|doubt| doubt.until > now && doubt.from <= from)
        {
            return; // same episode
        }
        self.doubts = self.doubts.saturating_add(1);
        let length = BASE_DOUBT
            .saturating_mul(1 << self.doubts.saturating_sub(1).min(16))
            .min(MAX_DOUBT);
        if let Some(until) = now.checked_add(length) {
            self.doubt = Some(Doubt { from, until });
        }
    }

    /// The peer served block `seq`: a doubt at or below it was wrong.
    pub(crate) fn served(&mut self, seq: u64) {
        if self.doubt.is_some_and(|doubt| doubt.from <= seq) {
            self.doubt = None;
            self.doubts = 0;
        }
    }

    /// The connection came back: what it earned while unreachable is
    /// forgiven, since a restarted peer is a new process.
    pub(crate) fn reconnected(&mut self) {
        self.connected = true;
        self.strikes = self.unfixed_rejections.saturating_mul(2);
        self.benched_until = None;
        self.doubt = None;
        self.doubts = 0;
        self.rtt = RttEstimator::default();
        self.quiet_until = None;
        self.silent_probes = 0;
    }

    fn benched(&self, now: Instant) -> bool {
        self.benched_until.is_some_and(|until| until > now)
    }

    /// The deadline of a request sent to this peer now.
    pub(crate) fn timeout(&self, config: &Config) -> Duration {
        Self::deadline(config, self.rtt.rto(config.response_timeout))
    }

    /// The deadline of a send to this peer before any back-off: what it
    /// takes when no timeout came before.
    pub(crate) fn unbacked_timeout(&self, config: &Config) -> Duration {
        Self::deadline(config, self.rtt.unbacked_rto(config.response_timeout))
    }

    /// `rto` clamped to the configured range, or the fixed deadline
    /// without `adaptive_timeout`.
    fn deadline(config: &Config, rto: Duration) -> Duration {
        if config.adaptive_timeout {
            rto.clamp(config.min_response_timeout, config.max_response_timeout)
        } else {
            config.response_timeout
        }
    }

    /// A good answer pays a strike back, but not those of its rejected
    /// blocks: serving other blocks well does not fix a bad one.
    pub(crate) fn succeeded(&mut self) {
        self.strikes = self
            .strikes
            .saturating_sub(1)
            .max(self.unfixed_rejections.saturating_mul(2));
        if self.strikes == 0 {
            self.benched_until = None;
        }
    }

    /// Records a failure; under scored selection the peer is benched for a
    /// time doubling with its outstanding strikes.
    ///
    /// Failures while already benched belong to the same episode (several
    /// requests in flight to a peer that stalls all time out together) and
    /// add no strike, so one bad moment cannot bench a peer for long.
    pub(crate) fn failed(&mut self, now: Instant, weight: u32, selection: PeerSelection) {
        if self.benched(now) {
            return;
        }
        self.strikes = self.strikes.saturating_add(weight);
        if selection == PeerSelection::Scored {
            let doublings = self.strikes.saturating_sub(1).min(16);
            let bench = BASE_BENCH.saturating_mul(1 << doublings).min(MAX_BENCH);
            self.benched_until = now.checked_add(bench);
            emit!(DEBUG, ?bench, strikes = self.strikes, "peer benched");
        }
    }
}

/// What [`Peers::choose_except`] weighs besides the range's end: see
/// [`Peers::choose`].
#[derive(Debug)]
pub(crate) struct Choice<'a, P> {
    pub(crate) prefer_not: &'a [P],
    pub(crate) exclude: &'a [P],
    pub(crate) hedge: Option<usize>,
    pub(crate) finish: Option<Finish>,
    /// Bytes left after the range, when a peer silent so far may be
    /// probed with it (`Peer::probe_due`) if that pays (`probe_pays`).
    pub(crate) probe_left: Option<f64>,
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
        // The usual view: the same peers, listed once each in order. Their
        // records are updated in place, which is what moving each into a
        // new map comes to (no peer departs), without moving them.
        let same_peers = view.len() == self.map.len()
            && view.windows(2).all(|w| w[0].id < w[1].id)
            && view
                .iter()
                .zip(self.map.keys())
                .all(|(state, id)| state.id == *id);
        if same_peers {
            for (state, peer) in view.iter().zip(self.map.values_mut()) {
                peer.advertised = state.usable_height();
            }
            return self
                .map
                .iter()
                .filter(|(_, peer)| peer.advertised.is_none())
                .map(|(id, _)| id.clone())
                .collect();
        }
        // A peer listed twice keeps one record (the last entry wins), so its
        // in-flight count is never reset behind our back.
        let mut latest: BTreeMap<P, Option<u64>> = BTreeMap::new();
        for state in view {
            let advertised = state.usable_height();
            latest.insert(state.id, advertised);
        }
        // Records are updated where they are, new peers inserted and
        // departed ones removed: rebuilding the map moved every record on
        // every change, and a view growing one peer at a time (each
        // `StateInfo` of a channel's first round) cost O(n²) record moves,
        // a third of a 128-peer catch-up's time.
        let departed: Vec<P> = self
            .map
            .keys()
            .filter(|id| !latest.contains_key(*id))
            .cloned()
            .collect();
        for id in &departed {
            self.map.remove(id);
        }
        for (id, advertised) in latest {
            self.map
                .entry(id)
                .and_modify(|peer| peer.advertised = advertised)
                .or_insert_with(|| Peer::new(advertised));
        }
        let mut unusable: Vec<P> = self
            .map
            .iter()
            .filter(|(_, peer)| peer.advertised.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        unusable.extend(departed);
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

    /// The best height credibly held by a reachable peer.
    pub(crate) fn target(&self, now: Instant) -> u64 {
        self.map
            .values()
            .filter_map(|peer| peer.credible_height(now))
            .max()
            .unwrap_or(0)
    }

    /// Whether every peer has its window full: no range can be sent now.
    pub(crate) fn all_full(&self, config: &Config) -> bool {
        self.map
            .values()
            .all(|peer| peer.in_flight >= peer.limit(config))
    }

    /// Whether any peer, busy or not, credibly holds block `end`.
    pub(crate) fn any_covers(&self, end: u64, now: Instant) -> bool {
        self.map.values().any(|peer| peer.covers(end, now))
    }

    /// The lowest credible height above `seq`: a range from `seq` that ends
    /// below it can go to every peer holding `seq`, so ranges are cut there
    /// and no block a peer holds waits behind one only an overclaimer
    /// claims.
    pub(crate) fn next_boundary(&self, seq: u64, now: Instant) -> Option<u64> {
        self.map
            .values()
            .filter_map(|peer| peer.credible_height(now))
            .filter(|height| *height > seq)
            .min()
    }

    /// Where `range` is best cut for a peer that holds only its lower part:
    /// below the highest credible height within it of a peer of a better
    /// standing (`Peer::standing`, for a retry) than every peer that holds
    /// the whole range (with `strict` false, at least as good), the best
    /// standing first; senders of a rejected block in it (`excluded`) are
    /// neither. A range planned while such peers held less (or were not
    /// known yet) kept going only to the peers that claim all of it.
    pub(crate) fn prefix_end(
        &self,
        range: SeqRange,
        excluded: &[P],
        now: Instant,
        strict: bool,
    ) -> Option<u64>
    where
        P: PartialEq,
    {
        let considered = || {
            self.map
                .iter()
                .filter(|(id, _)| !excluded.contains(id))
                .filter_map(|(_, peer)| {
                    Some((peer.credible_height(now)?, peer.standing(now, true)))
                })
        };
        let whole = considered()
            .filter(|&(height, _)| height > range.end())
            .map(|(_, standing)| standing)
            .min();
        considered()
            .filter(|&(height, standing)| {
                height > range.start()
                    && height <= range.end()
                    && whole.is_none_or(|whole| standing < whole || (!strict && standing == whole))
            })
            .min_by_key(|&(height, standing)| (standing, std::cmp::Reverse(height)))
            .map(|(height, _)| height - 1)
    }

    /// Picks the peer for a request ending at `end`, or `None` if every
    /// eligible peer is at its in-flight cap (or benched while others are
    /// not).
    ///
    /// `exclude` lists peers whose copy of a block in the range was rejected:
    /// they are used only if no other peer advertises the range (a single
    /// peer is asked again rather than never). `prefer_not` lists peers that
    /// already failed the range: under scored selection they are used only
    /// when no other peer is free; random selection (Fabric) ignores it.
    ///
    /// `hedge` is `Some(headroom)` for a hedge of the request holding back
    /// the commit point: then only peers that have answered before (or idle
    /// ones while none has) are chosen, and one may take `headroom` sends
    /// past its window (never past `max_in_flight_per_peer`, never on
    /// probation). The planner fills every window with ranges ahead; without
    /// the headroom a hedge found no free peer until far ranges came back
    /// (hostile scenario: the commit point waited 1.5 s on a silent peer,
    /// hedge due after 0.5 s).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn choose(
        &self,
        config: &Config,
        end: u64,
        prefer_not: &[P],
        exclude: &[P],
        now: Instant,
        rng: &mut fastrand::Rng,
        hedge: Option<usize>,
        finish: Option<Finish>,
    ) -> Option<P> {
        let choice = Choice {
            prefer_not,
            exclude,
            hedge,
            finish,
            probe_left: None,
        };
        self.choose_except(config, end, choice, &[], now, rng)
    }

    /// Whether a probe of a peer silent so far could pay when `left` bytes
    /// remain after its range: they take the measured peers longer than
    /// two initial deadlines, so the probe neither holds the round's last
    /// blocks (probed at 2.05 s of a 2.2 s catch-up, the three silent
    /// peers of `catchup --peers 4 --blocks 3000 --block-size 8192
    /// --silent 3` held the last blocks until hedged: 2.41 s against
    /// 2.23 s) nor finds a peer too late to help. Asked only of a peer
    /// whose probe is due: summed for every range planned, the rates
    /// cost 1 % of the default preset's instructions per block.
    fn probe_pays(&self, left: f64, config: &Config) -> bool {
        let rates: f64 = self.map.values().filter_map(Peer::rate).sum();
        let horizon = 2.0 * config.response_timeout.as_secs_f64();
        rates > 0.0 && left > rates * horizon
    }

    /// [`choose`](Self::choose), but never one of `barred` (a peer that
    /// holds the range queued already: it is as busy as a full one).
    pub(crate) fn choose_except(
        &self,
        config: &Config,
        end: u64,
        choice: Choice<'_, P>,
        barred: &[P],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<P> {
        let Choice {
            prefer_not,
            exclude,
            hedge,
            finish,
            probe_left,
        } = choice;
        let headroom = hedge.unwrap_or(0);
        // No headroom on probation: a doubted peer gets one request.
        let cap = |peer: &Peer| {
            let headroom = if peer.doubts > 0 { 0 } else { headroom };
            (peer.limit(config) + headroom).min(config.max_in_flight_per_peer)
        };
        // While the windows are full (most of the time once they are open)
        // nobody is free: say so before the costlier tests below.
        if self.map.values().all(|peer| peer.in_flight >= cap(peer)) {
            return None;
        }
        let hedge = hedge.is_some();
        let none_proven = hedge && self.map.values().all(|peer| peer.rtt.srtt().is_none());
        let scored = config.peer_selection == PeerSelection::Scored;
        let others_cover = self
            .map
            .iter()
            .any(|(id, peer)| peer.alternative(id, end, now, prefer_not, exclude));
        let usable =
            |id: &P, peer: &Peer| peer.covers(end, now) && !(others_cover && exclude.contains(id));
        // Benching steers load to better peers; it must not stall us when
        // every peer that can serve the range is benched, nor send it to a
        // peer of a worse standing (a suspect; for a retry, one never
        // measured or quiet) while every peer of the best is benched: a
        // benched peer lost answers (or was slow), a suspect served nothing
        // of what it claimed. Honoured regardless, the bench sent a range whose
        // only measured honest source had lost it twice at 15 % loss to
        // liars alone until its retries ran out (wild seed 9 303 with a slow
        // ledger: 12.0 s against 3.4 s unflooded).
        let retry = !prefer_not.is_empty();
        let standing = |peer: &Peer| peer.standing(now, retry);
        let best_standing = self
            .map
            .iter()
            .filter(|(id, peer)| usable(id, peer))
            .map(|(_, peer)| standing(peer))
            .min();
        let respect_bench = scored
            && self.map.iter().any(|(id, peer)| {
                usable(id, peer) && !peer.benched(now) && Some(standing(peer)) == best_standing
            });
        // A peer that never answered though a send timed out or was beaten
        // gets nothing while a trusted peer can serve the range: the range
        // waits for that peer's slot. Ranked last only, it took what full
        // windows left, and near the end those ranges held the commit point
        // until hedged (hostile seeds 1–40: 1.483 → 1.438). No stall: the
        // trusted peer's sends end and free a slot.
        let available =
            |id: &P, peer: &Peer| usable(id, peer) && !(respect_bench && peer.benched(now));
        let trusted_usable = scored
            && self
                .map
                .iter()
                .any(|(id, peer)| available(id, peer) && peer.trusted());
        let proven_free = hedge
            && self.map.iter().any(|(id, peer)| {
                available(id, peer) && peer.rtt.srtt().is_some() && peer.in_flight < cap(peer)
            });
        let candidates: Vec<(&P, &Peer)> = self
            .map
            .iter()
            .filter(|(id, peer)| {
                if trusted_usable
                    && peer.silent_so_far()
                    && !(probe_left.is_some_and(|left| self.probe_pays(left, config))
                        && peer.probe_due(now, config))
                {
                    return false;
                }
                // A hedge goes to a peer that has answered before (an
                // unproven one is as likely to be silent or slow, and on thin
                // links a hedge only adds load), or, while none has, to an
                // idle one; or, while none of those is free, to an idle one
                // heard from (some answer, if only a stray) that never
                // failed: an honest peer whose answers all came after
                // hedges' is never measured, and the commit point's hedges
                // went only to a liar (wild seed 4 041: 6.43 → 1.71 s).
                let proven = !hedge
                    || peer.rtt.srtt().is_some()
                    || (peer.in_flight == 0
                        && (none_proven || (!proven_free && peer.heard && !peer.silent_so_far())));
                available(id, peer) && proven && peer.in_flight < cap(peer) && !barred.contains(id)
            })
            .collect();
        if !scored {
            if candidates.is_empty() {
                return None;
            }
            return Some(candidates[rng.usize(..candidates.len())].0.clone());
        }
        // A peer with a bad answer not yet made good (doubted, for an empty
        // or short answer or a range it failed to the end, until it serves
        // what it was doubted for; or a block of its rejected and not
        // committed since) after every other; then the least loaded, then
        // the fastest (a peer never measured last: its round trip is
        // unknown, not short); ties broken by the seed so that equal peers
        // share the load. Load alone put the byzantine and the lying peer
        // first, being idle because avoided: a range whose sends timed out
        // at three busy honest peers went to both before an honest peer
        // had it again (hostile, seed 9: 5.45× the bound, 3.45× now).
        // The doubt counts until made good, not only while in force: a
        // peer that answered empty once often does again (ordering by the
        // doubt in force only: hostile seeds 1–40 1.876 against 1.791).
        // Near a round's end, the expected delivery of the range replaces
        // the load (a peer not measured last).
        //
        // A peer that failed the range comes after the others of its
        // standing only (`Peer::standing`): a good peer whose send timed out
        // (lost, most likely) before a bad one, and for a retry before one
        // never measured; a peer that never answered but timed out is a bad
        // one. Failed peers after every other peer sent a range whose only
        // honest source had lost one answer to a silent, a lying and a
        // byzantine peer in turn. Over 4 000 wild clusters (`wild_tail_probe`)
        // the geometric mean of each cluster's catch-up fell 1.3 % alone,
        // 8.6 % → 9.8 % with the tail loss probe (`timers::hedge`).
        let key = |id: &P, peer: &Peer| {
            let load = match finish {
                Some(finish) => finish
                    .of(peer)
                    .map_or(u64::MAX, |seconds| (seconds * 1e9) as u64),
                None => peer.in_flight as u64,
            };
            (
                standing(peer),
                prefer_not.contains(id),
                load,
                peer.rtt.srtt().unwrap_or(Duration::MAX),
            )
        };
        let best = candidates.iter().map(|(id, peer)| key(id, peer)).min()?;
        let tied = || candidates.iter().filter(|(id, peer)| key(id, peer) == best);
        let chosen = rng.usize(..tied().count());
        tied().nth(chosen).map(|(id, _)| (*id).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peers advertising these heights, as a view first seen.
    fn peers_at(view: &[(&'static str, u64)]) -> Peers<&'static str> {
        let mut peers = Peers::default();
        peers.replace(
            view.iter()
                .map(|&(id, height)| PeerState::new(id, height))
                .collect(),
        );
        peers
    }

    #[test]
    fn rtt_estimator_follows_rfc6298() {
        let mut rtt = RttEstimator::default();
        let initial = Duration::from_secs(1);
        assert_eq!(rtt.rto(initial), initial);
        rtt.back_off();
        assert_eq!(
            rtt.rto(initial),
            initial * 2,
            "the initial timeout backs off too"
        );
        rtt.sample(Duration::from_millis(100));
        assert_eq!(rtt.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(
            rtt.rto(initial),
            Duration::from_millis(300),
            "a sample ends the back-off"
        );
        rtt.sample(Duration::from_millis(200));
        // srtt = 7/8·100 + 1/8·200; rttvar = 3/4·50 + 1/4·100
        assert_eq!(rtt.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(
            rtt.rto(initial),
            Duration::from_micros(112_500 + 4 * 62_500)
        );
        rtt.back_off();
        rtt.back_off();
        assert_eq!(
            rtt.rto(initial),
            Duration::from_micros(4 * (112_500 + 4 * 62_500))
        );
        rtt.sample(Duration::from_micros(112_500));
        assert_eq!(rtt.srtt(), Some(Duration::from_micros(112_500)));
        assert!(
            rtt.rto(initial) < Duration::from_millis(400),
            "a sample ends the back-off"
        );
        for _ in 0..200 {
            rtt.sample(Duration::from_micros(112_500));
        }
        assert_eq!(
            rtt.rto(initial),
            Duration::from_micros(112_500) + CLOCK_GRANULARITY,
            "round trips that stop varying still leave a margin"
        );
    }

    #[test]
    fn scored_choice_prefers_unloaded_and_skips_failed() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("a", 100), ("b", 100)]);
        peers.get_mut(&"a").unwrap().in_flight = 1;
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("b")
        );
        assert_eq!(
            peers.choose(&config, 50, &["b"], &[], now, &mut rng, None, None),
            Some("a")
        );
        // Only "b" can serve: the failed peer is still used rather than stall.
        peers.get_mut(&"a").unwrap().advertised = Some(10);
        assert_eq!(
            peers.choose(&config, 50, &["b"], &[], now, &mut rng, None, None),
            Some("b")
        );
        // An excluded peer is still asked when nobody else advertises the range.
        assert_eq!(
            peers.choose(&config, 50, &[], &["b"], now, &mut rng, None, None),
            Some("b")
        );
        peers.get_mut(&"a").unwrap().advertised = Some(100);
        peers.get_mut(&"a").unwrap().in_flight = config.max_in_flight_per_peer;
        assert_eq!(
            peers.choose(&config, 50, &[], &["b"], now, &mut rng, None, None),
            None,
            "another peer advertises it: wait for it rather than ask the excluded one"
        );
    }

    #[test]
    fn a_peer_with_a_bad_answer_outstanding_comes_after_busier_ones() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("honest", 100), ("liar", 100)]);
        peers.get_mut(&"honest").unwrap().in_flight = 1;
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("liar"),
            "idle and clean: least loaded first"
        );
        peers.get_mut(&"liar").unwrap().unfixed_rejections = 1;
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("honest")
        );
        peers.get_mut(&"liar").unwrap().unfixed_rejections = 0;
        // Doubted above the range: it still covers 50, on probation.
        peers.get_mut(&"liar").unwrap().doubt(60, now);
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("honest")
        );
        // Until it serves what it was doubted for, even once the doubt
        // itself has run out.
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            peers.choose(&config, 50, &[], &[], later, &mut rng, None, None),
            Some("honest")
        );
        peers.get_mut(&"liar").unwrap().served(60);
        assert_eq!(
            peers.choose(&config, 50, &[], &[], later, &mut rng, None, None),
            Some("liar")
        );
        peers.get_mut(&"liar").unwrap().doubt(60, later);
        // Still asked when the others are full: an order, not a ban.
        peers.get_mut(&"honest").unwrap().in_flight = config.max_in_flight_per_peer;
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("liar")
        );
    }

    #[test]
    fn a_good_peer_that_failed_the_range_comes_before_a_bad_one() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("honest", 100), ("silent", 100), ("liar", 100)]);
        peers
            .get_mut(&"honest")
            .unwrap()
            .rtt
            .sample(Duration::from_millis(80));
        // Never answered, and timed out: silent so far.
        peers.get_mut(&"silent").unwrap().stats.timeouts = 1;
        peers.get_mut(&"liar").unwrap().unfixed_rejections = 1;
        // The honest peer's send of the range timed out (lost): still the
        // one asked, rather than a silent or a rejected one.
        assert_eq!(
            peers.choose(&config, 50, &["honest"], &[], now, &mut rng, None, None),
            Some("honest")
        );
        // Among good peers, one that did not fail the range comes first.
        peers.get_mut(&"silent").unwrap().stats.timeouts = 0;
        peers
            .get_mut(&"silent")
            .unwrap()
            .rtt
            .sample(Duration::from_millis(80));
        assert_eq!(
            peers.choose(&config, 50, &["honest"], &[], now, &mut rng, None, None),
            Some("silent")
        );
    }

    #[test]
    fn the_dispersion_of_a_first_flight_sizes_the_window() {
        let config = Config::default();
        let sent = crate::test_epoch() + Duration::from_secs(10);
        let request_bytes = 12_000;
        let mut peer = Peer::new(Some(100_000));
        // Two requests sent together; their answers of 12 000 bytes come
        // 100 ms and 101 ms later: 12 MB/s on the peer's link, a product
        // of 1.2 MB at 100 ms, i.e. 100 requests.
        peer.answered(
            sent + Duration::from_millis(100),
            sent,
            12_000,
            &config,
            request_bytes,
        );
        // The first answer lifts it to 256 KiB of requests, eightfold at most.
        assert_eq!(peer.limit(&config), 16, "one answer: no dispersion yet");
        peer.answered(
            sent + Duration::from_millis(101),
            sent,
            12_000,
            &config,
            request_bytes,
        );
        assert_eq!(peer.limit(&config), 100);
        // Capped by max_in_flight_per_peer on a faster link.
        let mut fast = Peer::new(Some(100_000));
        fast.answered(
            sent + Duration::from_millis(100),
            sent,
            12_000,
            &config,
            request_bytes,
        );
        fast.answered(
            sent + Duration::from_micros(100_010),
            sent,
            12_000,
            &config,
            request_bytes,
        );
        assert_eq!(fast.limit(&config), config.max_in_flight_per_peer);
        // A request sent after the previous answer came did not wait behind
        // it: its gap says nothing of the link.
        let mut idle = Peer::new(Some(100_000));
        let first = sent + Duration::from_millis(100);
        idle.answered(first, sent, 12_000, &config, request_bytes);
        idle.answered(
            first + Duration::from_millis(101),
            first,
            12_000,
            &config,
            request_bytes,
        );
        assert_eq!(idle.limit(&config), 17, "the start, and one");
    }

    #[test]
    fn the_only_peer_is_never_benched_out() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("a", 100), ("b", 5)]);
        peers
            .get_mut(&"a")
            .unwrap()
            .failed(now, 1, PeerSelection::Scored);
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("a")
        );
        peers.replace(vec![PeerState::new("a", 100), PeerState::new("b", 100)]);
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("b")
        );
    }

    #[test]
    fn duplicate_ids_keep_one_record() {
        let mut peers = peers_at(&[("a", 10)]);
        peers.get_mut(&"a").unwrap().in_flight = 3;
        let gone = peers.replace(vec![PeerState::new("a", 20), PeerState::new("a", 30)]);
        assert!(gone.is_empty());
        let a = peers.get(&"a").unwrap();
        assert_eq!((a.in_flight, a.advertised), (3, Some(30)));
        let left = PeerState {
            id: "a",
            ledger_height: Some(30),
            left_channel: true,
        };
        assert_eq!(peers.replace(vec![left]), vec!["a"]);
        assert_eq!(peers.get(&"a").unwrap().in_flight, 3, "the record stays");
    }

    #[test]
    fn a_benched_good_peer_comes_before_unbenched_suspects() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("honest", 100), ("liar", 100), ("other", 100)]);
        let honest = peers.get_mut(&"honest").unwrap();
        honest.rtt.sample(Duration::from_millis(80));
        // Two of its sends failed: benched.
        honest.failed(now, 1, config.peer_selection);
        honest.failed(now + BASE_BENCH, 1, config.peer_selection);
        let later = now + BASE_BENCH + Duration::from_millis(1);
        assert!(peers.get(&"honest").unwrap().benched(later));
        // An empty answer long ago: its doubt ended, not made good.
        let liar = peers.get_mut(&"liar").unwrap();
        liar.rtt.sample(Duration::from_millis(80));
        liar.doubt(1, now - MAX_DOUBT);
        // Measured, unbenched, no bad answer: the bench holds.
        peers
            .get_mut(&"other")
            .unwrap()
            .rtt
            .sample(Duration::from_millis(80));
        assert_eq!(
            peers.choose(&config, 50, &["honest"], &[], later, &mut rng, None, None),
            Some("other")
        );
        // Only suspects are left unbenched: the benched good peer is asked.
        peers.get_mut(&"other").unwrap().doubt(1, now - MAX_DOUBT);
        assert_eq!(
            peers.choose(&config, 50, &["honest"], &[], later, &mut rng, None, None),
            Some("honest")
        );
    }

    #[test]
    fn a_retry_goes_to_a_measured_peer_before_one_never_measured() {
        let config = Config::default();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut peers = peers_at(&[("measured", 100), ("unmeasured", 100)]);
        peers
            .get_mut(&"measured")
            .unwrap()
            .rtt
            .sample(Duration::from_millis(80));
        // A first send goes to the idle peer never measured, to measure it.
        peers.get_mut(&"measured").unwrap().in_flight = 1;
        assert_eq!(
            peers.choose(&config, 50, &[], &[], now, &mut rng, None, None),
            Some("unmeasured")
        );
        // A retry of a range the measured peer failed (lost) goes back to
        // it, not to a peer whose speed and honesty are unknown.
        assert_eq!(
            peers.choose(&config, 50, &["measured"], &[], now, &mut rng, None, None),
            Some("measured")
        );
        // Unless its sends time out in a row (quiet): then no better.
        let measured = peers.get_mut(&"measured").unwrap();
        measured.timed_out(now, 1, now, &config);
        measured.timed_out(now, 2, now, &config);
        assert!(measured.quiet(now));
        assert_eq!(
            peers.choose(&config, 50, &["measured"], &[], now, &mut rng, None, None),
            Some("unmeasured")
        );
    }

    #[test]
    fn a_suspect_that_failed_a_range_is_no_alternative_to_its_rejected_senders() {
        let now = crate::test_epoch();
        let mut peers = peers_at(&[("sender", 100), ("silent", 100)]);
        peers.get_mut(&"silent").unwrap().stats.timeouts = 1;
        let silent = peers.get(&"silent").unwrap();
        // Not yet asked for the range: another source than the sender of
        // the rejected copy.
        assert!(silent.alternative(&"silent", 50, now, &[], &["sender"]));
        // It failed the range too: the rejected sender is all there is.
        assert!(!silent.alternative(&"silent", 50, now, &["silent"], &["sender"]));
        // A good peer that failed the range (a lost answer) still counts.
        let good = peers.get_mut(&"silent").unwrap();
        good.stats.timeouts = 0;
        good.rtt.sample(Duration::from_millis(80));
        let good = peers.get(&"silent").unwrap();
        assert!(good.alternative(&"silent", 50, now, &["silent"], &["sender"]));
    }

    #[test]
    fn eligibility_needs_height_above_end() {
        let config = Config::fabric();
        let now = crate::test_epoch();
        let mut rng = fastrand::Rng::with_seed(1);
        let peers = peers_at(&[("a", 11)]);
        // Fabric asks a peer with height == end (it lacks block `end`).
        assert_eq!(
            peers.choose(&config, 11, &[], &[], now, &mut rng, None, None),
            None
        );
        assert_eq!(
            peers.choose(&config, 10, &[], &[], now, &mut rng, None, None),
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
        assert!(
            !peer.benched(now + BASE_BENCH),
            "same episode: no extra strike"
        );
        let later = now + BASE_BENCH;
        peer.failed(later, 1, PeerSelection::Scored);
        assert!(
            peer.benched(later + BASE_BENCH),
            "second episode: bench doubles"
        );
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

    #[test]
    fn a_timeout_says_what_the_peer_answered_since() {
        let ms = Duration::from_millis;
        let config = Config::default();
        let start = crate::test_epoch() + Duration::from_secs(10);
        let at = |t: u64| start + ms(t);
        let mut peer = Peer::new(Some(100));
        // Sends 1 and 3 (made at 0 and 10 ms) are answered in 100 ms, no
        // queue: the window grows.
        let answer = |peer: &mut Peer, order: u64, sent: u64, came: u64| {
            peer.answered(at(came), at(sent), 11_000, &config, 11_000);
            peer.answered_send(order);
        };
        answer(&mut peer, 1, 0, 100);
        answer(&mut peer, 3, 10, 110);
        let window = peer.window.size;
        assert!(window > 2, "window {window}");
        // Send 2, made at 5 ms, was overtaken: lost on a path that works.
        // Nothing backs off, however many, and each lost send grows the
        // window by one (it carried nothing).
        for _ in 0..3 {
            assert_eq!(peer.timed_out(at(400), 2, at(5), &config), Silence::Lost);
        }
        assert_eq!(peer.rtt.backoff, 0);
        assert_eq!(peer.window.size, window + 3);
        let window = peer.window.size;
        // Send 4 left at the same instant as send 3 but after it: queued
        // behind it, not overtaken. And send 5, made at 50 ms: answers came
        // since, none to a later send. Both unclear: the timeout backs off,
        // but the last answer met no queue, so the window stays, and the
        // peer is not quiet.
        assert_eq!(
            peer.timed_out(at(400), 4, at(10), &config),
            Silence::Unclear
        );
        assert_eq!(
            peer.timed_out(at(500), 5, at(50), &config),
            Silence::Unclear
        );
        assert_eq!(peer.rtt.backoff, 2);
        assert_eq!(peer.window.size, window);
        assert!(!peer.quiet(at(500)));
        // An answer that met a queue (280 ms against a 100 ms base): then
        // an unclear timeout halves the window too.
        answer(&mut peer, 6, 120, 400);
        let queued = peer.window.size;
        assert_eq!(
            peer.timed_out(at(600), 7, at(300), &config),
            Silence::Unclear
        );
        assert_eq!(peer.window.size, queued / 2);
        // Nothing came since these were made: the window halves with each,
        // and after two in a row the peer is quiet.
        answer(&mut peer, 8, 410, 510);
        let window = peer.window.size;
        assert_eq!(peer.timed_out(at(1000), 9, at(600), &config), Silence::Dead);
        assert_eq!(peer.window.size, (window / 2).max(1));
        assert!(!peer.quiet(at(1000)));
        assert_eq!(
            peer.timed_out(at(1000), 10, at(700), &config),
            Silence::Dead
        );
        assert_eq!(peer.window.size, (window / 4).max(1));
        assert!(peer.quiet(at(1000)));
    }

    // A peer silent so far (its first sends beaten by copies elsewhere) is
    // not written off: while it has nothing in flight it is due a probe
    // once its timeout has passed since the last send to it, and each
    // probe doubles the wait for the next.
    #[test]
    fn a_peer_silent_so_far_is_probed_ever_more_rarely() {
        let config = Config::default();
        let start = crate::test_epoch() + Duration::from_secs(10);
        let mut peer = Peer::new(Some(100));
        peer.sent(start, 11);
        peer.send_ended(11);
        peer.beaten();
        assert!(peer.silent_so_far());
        let timeout = peer.timeout(&config);
        assert!(!peer.probe_due(start + timeout - Duration::from_millis(1), &config));
        let mut sent = start + timeout;
        assert!(peer.probe_due(sent, &config));
        for doubling in 1..=3u32 {
            peer.sent(sent, 1);
            assert!(!peer.probe_due(sent + timeout * 64, &config), "in flight");
            peer.send_ended(1);
            let wait = timeout * (1 << doubling);
            assert!(!peer.probe_due(sent + wait - Duration::from_millis(1), &config));
            assert!(peer.probe_due(sent + wait, &config));
            sent += wait;
        }
        // An answer ends the silence.
        peer.answered(
            sent + Duration::from_millis(100),
            sent,
            1_000,
            &config,
            11_000,
        );
        assert!(!peer.silent_so_far());
    }
}

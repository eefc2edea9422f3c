//! Links: latency, per-node uplink and downlink bandwidth, and faults.
//!
//! # The timing model
//!
//! A node's uplink is shared fairly by its connections, as TCP flows share
//! a bottleneck: each connection (ordered pair of nodes) sends its messages
//! in order, and the connections with something to send split the uplink's
//! bandwidth equally (processor sharing). So a connection that always has
//! data queued (a flooder's answers, say) takes its share and no more: a
//! message on another connection is not queued behind it.
//!
//! A message of `S` bytes from `a` to `b` starts when the messages before
//! it on its connection have left, and its last bit leaves at `up_end`
//! once the connection's share of `a`'s uplink has carried `S` bytes. Its
//! first bit reaches `b` one latency after it started; it takes a slot of
//! `S / down(b)` on `b`'s downlink (FIFO):
//! `down_start = max(up_start + latency, down_free(b))`,
//! `down_free(b) = down_start + S / down(b)`. It is delivered when both its
//! downlink slot and its last bit are in:
//! `max(down_start + S / down(b), up_end + latency)`.
//!
//! So one message over an idle path of bandwidth `B` arrives after
//! `latency + S / B`; back-to-back messages on a connection queue; several
//! senders share a receiver's downlink (their slots are serialised, at most
//! `down(b)` in total) without one slow sender holding it for its whole
//! transmission.
//!
//! When the uplink's next message leaves depends on what is sent after it,
//! so the network does not compute it at send time: [`Network::send`] and
//! [`Network::transmit`] return a [`Wake`], the instant the host calls
//! [`Network::transmit`] for that uplink, which hands out the messages that
//! left with their delivery instants.
//!
//! Each connection has a send buffer of `send_buffer` messages, like
//! Fabric's `peer.gossip.sendBuffSize` (200): a message stays in it until
//! its last bit left the uplink, and a message sent while it is full is
//! dropped, as Fabric's comm layer drops it. This keeps a sender that
//! outpaces its uplink from queueing without bound. A connection that
//! breaks loses what its buffer holds ([`Network::disconnect`]).
//!
//! Faults, each drawn per message when it leaves the uplink, from its
//! connection's own RNG (seeded from the network's seed, so one
//! connection's traffic does not shift another's faults): a lost message still occupied the sender's uplink; a
//! duplicate takes a second downlink slot; a reordered one gets a uniform
//! extra delay in `(0, reorder_delay]` after its downlink slot.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::arith::{div, div_ceil};

/// Work units per bit: a flow served alone at `r` bit/s for one nanosecond
/// receives `r` units, so a bit is 10^9 units.
const UNITS_PER_BIT: u128 = 1_000_000_000;

/// The time `bytes` take over a link of `bits_per_second` (rounded up to the
/// nanosecond; zero bandwidth means an unlimited link).
pub fn transmission_time(bytes: usize, bits_per_second: u64) -> Duration {
    if bits_per_second == 0 {
        return Duration::ZERO;
    }
    let nanos = div_ceil(
        bytes as u128 * 8 * 1_000_000_000,
        u128::from(bits_per_second),
    );
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Fault probabilities of every link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is delayed by an extra random time, so
    /// that later messages overtake it.
    pub reorder: f64,
    /// Largest extra delay of a reordered message.
    pub reorder_delay: Duration,
    /// Losses that come in bursts on top of `loss`, if any.
    pub bursts: Option<BurstLoss>,
}

/// Losses in bursts, as real links lose packets (a queue overflowing, a
/// radio fading, a route flapping): each connection is in a burst or
/// not, a two-state (Gilbert–Elliott) channel in continuous time. Out of
/// a burst a message is lost with [`Faults::loss`], in one with `loss`.
/// Independent losses at the same mean rate rarely lose the two or three
/// messages in a row that a retry policy must survive; a burst loses all
/// that one connection sends for a while, requests and their retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    /// Mean time between two bursts on a connection.
    pub every: Duration,
    /// Mean time a burst lasts.
    pub length: Duration,
    /// Probability that a message sent in a burst is lost.
    pub loss: f64,
}

impl BurstLoss {
    /// Whether a connection is in a burst `elapsed` after it was (or was
    /// not, `was`), given `draw` uniform in `0..1`: the two-state chain's
    /// transition over that time, exactly (it forgets its state at the
    /// rate of both switches together).
    fn bursting(&self, was: bool, elapsed: Duration, draw: f64) -> bool {
        let (every, length) = (self.every.as_secs_f64(), self.length.as_secs_f64());
        let share = length / (every + length);
        let kept = (-elapsed.as_secs_f64() * (1.0 / every + 1.0 / length)).exp();
        let bursting = if was {
            share + (1.0 - share) * kept
        } else {
            share * (1.0 - kept)
        };
        draw < bursting
    }
}

/// When the host must call [`Network::transmit`] for `node`'s uplink. A
/// later `Wake` for the same node supersedes an earlier one (its `epoch`
/// is higher); `transmit` ignores a superseded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// The sending node.
    pub node: usize,
    /// The instant of the next departure.
    pub at: Instant,
    /// Which schedule of the uplink this is.
    pub epoch: u64,
}

/// A message that left an uplink, and when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<M> {
    /// The receiving node.
    pub to: usize,
    /// When it is delivered.
    pub at: Instant,
    /// What was sent.
    pub message: M,
}

/// A receiver's downlink.
#[derive(Debug, Clone, Copy)]
struct Downlink {
    bits_per_second: u64,
    free_at: Instant,
}

/// One connection's messages on an uplink, the first being sent. It is
/// active (shares the uplink) while its queue holds a message.
#[derive(Debug, Clone)]
struct Flow<M> {
    queue: VecDeque<Queued<M>>,
    /// Messages queued, merged ones counted one by one: what the send
    /// buffer bounds.
    messages: usize,
    /// Its class's virtual time at which the first message has left.
    finish: u128,
    /// When the first message started.
    started: Instant,
    /// In the background class: sent only while no foreground connection
    /// has data queued. Kept while the connection is idle.
    background: bool,
}

impl<M> Flow<M> {
    fn idle(epoch: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            messages: 0,
            finish: 0,
            started: epoch,
            background: false,
        }
    }

    fn active(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// A message queued on a connection.
#[derive(Debug, Clone)]
struct Queued<M> {
    bytes: usize,
    message: M,
    /// More messages may be merged into it (see [`Network::send_merged`]).
    mergeable: bool,
    /// Messages it stands for.
    count: usize,
}

impl<M> Queued<M> {
    fn new(bytes: usize, message: M, mergeable: bool) -> Self {
        Self {
            bytes,
            message,
            mergeable,
            count: 1,
        }
    }
}

/// A sender's uplink, shared equally by its foreground connections with
/// data queued; background connections share what they leave (strict
/// priority, as a host's low-priority send queue would).
#[derive(Debug, Clone)]
struct Uplink<M> {
    bits_per_second: u64,
    /// Connections, by receiver (a vector: the receivers are few, and a
    /// flood puts millions of messages through them).
    flows: Vec<Flow<M>>,
    /// Active connections: all, and those in the foreground class.
    active: usize,
    foreground: usize,
    /// Work units each active connection of a class has received since
    /// the start: foreground, background.
    virtual_time: [u128; 2],
    updated: Instant,
    epoch: u64,
}

impl<M> Uplink<M> {
    /// The class being served now (background only while no foreground
    /// connection has data) and how many connections share it.
    fn serving(&self) -> (usize, u128) {
        if self.foreground > 0 {
            (0, self.foreground as u128)
        } else {
            (1, self.active as u128)
        }
    }

    /// The active connection to `to`, if any.
    fn flow_mut(&mut self, to: usize) -> Option<&mut Flow<M>> {
        self.flows.get_mut(to).filter(|f| f.active())
    }

    /// Counts a connection of the class `background` in (`joins`) or out
    /// of the active ones.
    fn count(&mut self, background: bool, joins: bool) {
        if joins {
            self.active += 1;
            self.foreground += usize::from(!background);
        } else {
            self.active -= 1;
            self.foreground -= usize::from(!background);
        }
    }

    /// Brings the virtual time of the class being served to `now`.
    fn advance(&mut self, now: Instant) {
        let (class, active) = self.serving();
        if active > 0 && now > self.updated {
            let nanos = now.duration_since(self.updated).as_nanos();
            self.virtual_time[class] += div(nanos * u128::from(self.bits_per_second), active);
        }
        self.updated = now;
    }

    /// Whether `flow` has sent its first message by its class's time.
    fn done(&self, flow: &Flow<M>) -> bool {
        flow.finish <= self.virtual_time[usize::from(flow.background)]
    }

    /// When the next message leaves, if any: the smallest finish of the
    /// class being served, reached at its current share (rounded up, so it
    /// has been reached by then).
    fn next_departure(&self, now: Instant) -> Option<Instant> {
        let (class, active) = self.serving();
        let finish = self
            .flows
            .iter()
            .filter(|f| f.active() && usize::from(f.background) == class)
            .map(|f| f.finish)
            .min()?;
        if self.bits_per_second == 0 {
            return Some(now);
        }
        let left = finish.saturating_sub(self.virtual_time[class]);
        let nanos = div_ceil(left * active, u128::from(self.bits_per_second));
        Some(now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// A new schedule: supersedes the last one.
    fn wake(&mut self, node: usize, now: Instant) -> Option<Wake> {
        let at = self.next_departure(now)?;
        self.epoch += 1;
        Some(Wake {
            node,
            at,
            epoch: self.epoch,
        })
    }
}

/// The work units of `bytes` on an uplink of `bits_per_second` (none on an
/// unlimited one: it leaves at once).
fn work(bytes: usize, bits_per_second: u64) -> u128 {
    if bits_per_second == 0 {
        0
    } else {
        bytes as u128 * 8 * UNITS_PER_BIT
    }
}

/// Counters of the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Bytes handed to the network.
    pub sent_bytes: u64,
    /// Messages lost.
    pub lost: u64,
    /// Messages dropped because their connection's send buffer was full.
    pub overflowed: u64,
    /// Messages lost from send buffers because their connection broke.
    pub flushed: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages given an extra delay.
    pub reordered: u64,
}

/// The network between the nodes `0..n`, carrying messages of type `M`.
#[derive(Debug, Clone)]
pub struct Network<M> {
    latency: Duration,
    /// Per-node share of the latency, if set: a path's latency is the mean
    /// of its ends'.
    latencies: Vec<Duration>,
    up: Vec<Uplink<M>>,
    down: Vec<Downlink>,
    faults: Faults,
    seed: u64,
    /// Per connection (`from * receivers + to`), the RNG its faults are
    /// drawn from, made on first use: one connection's traffic (a flood,
    /// say) does not shift another's faults.
    rngs: Vec<Option<fastrand::Rng>>,
    /// The same for connections outside `rngs` (a node without a link).
    other_rngs: BTreeMap<(usize, usize), fastrand::Rng>,
    /// Per connection with bursts of losses (see [`BurstLoss`]), whether
    /// it was in one when it last sent, and when.
    bursting: BTreeMap<(usize, usize), (bool, Instant)>,
    stats: NetStats,
    send_buffer: usize,
    /// Messages that left an uplink, kept between calls of `transmit`
    /// for their allocation; whether each was sent merged.
    left: Vec<(usize, usize, Instant, M, bool)>,
    /// Whether merged messages (see [`Network::send_merged`]) leave no
    /// delivery (see [`Network::discard_merged`]).
    discard_merged: bool,
}

impl<M: Clone> Network<M> {
    /// A network whose node `i` has uplink `uplinks[i]` and downlink
    /// `downlinks[i]` (bits per second), one-way `latency` between any two
    /// nodes, send buffers of `send_buffer` messages per connection, and
    /// `faults` drawn from `seed`.
    pub fn new(
        epoch: Instant,
        latency: Duration,
        uplinks: &[u64],
        downlinks: &[u64],
        send_buffer: usize,
        faults: Faults,
        seed: u64,
    ) -> Self {
        Self {
            latency,
            latencies: Vec::new(),
            up: uplinks
                .iter()
                .map(|&bits_per_second| Uplink {
                    bits_per_second,
                    flows: (0..downlinks.len()).map(|_| Flow::idle(epoch)).collect(),
                    active: 0,
                    foreground: 0,
                    virtual_time: [0; 2],
                    updated: epoch,
                    epoch: 0,
                })
                .collect(),
            down: downlinks
                .iter()
                .map(|&bits_per_second| Downlink {
                    bits_per_second,
                    free_at: epoch,
                })
                .collect(),
            faults,
            seed,
            rngs: (0..uplinks.len() * downlinks.len()).map(|_| None).collect(),
            other_rngs: BTreeMap::new(),
            bursting: BTreeMap::new(),
            stats: NetStats::default(),
            send_buffer,
            left: Vec::new(),
            discard_merged: false,
        }
    }

    /// Gives each node its own share of the latency (see [`Self::path_latency`]).
    pub fn set_latencies(&mut self, latencies: Vec<Duration>) {
        self.latencies = latencies;
    }

    /// The one-way latency from `a` to `b`: the mean of their shares if
    /// set, else the network's.
    pub fn path_latency(&self, a: usize, b: usize) -> Duration {
        match (self.latencies.get(a), self.latencies.get(b)) {
            (Some(&x), Some(&y)) => (x + y) / 2,
            _ => self.latency,
        }
    }

    /// `node`'s uplink bandwidth, bits per second (0: unlimited).
    pub fn uplink_bps(&self, node: usize) -> u64 {
        self.up.get(node).map_or(0, |u| u.bits_per_second)
    }

    /// Whether the connection `from → to` has room in its send buffer.
    pub fn has_room(&self, from: usize, to: usize) -> bool {
        self.up
            .get(from)
            .and_then(|u| u.flows.get(to))
            .is_none_or(|f| !f.active() || f.messages < self.send_buffer)
    }

    /// [`has_room`](Self::has_room), counting a message dropped if not.
    pub fn try_reserve(&mut self, from: usize, to: usize) -> bool {
        let room = self.has_room(from, to);
        if !room {
            self.stats.overflowed += 1;
        }
        room
    }

    /// Queues `message` (`bytes` long) from `from` to `to` at `now`. Returns
    /// the uplink's new schedule if it changed; nothing if the send buffer
    /// is full (the message is dropped).
    pub fn send(
        &mut self,
        now: Instant,
        from: usize,
        to: usize,
        bytes: usize,
        message: M,
    ) -> Option<Wake> {
        self.enqueue(now, from, to, Queued::new(bytes, message, false))
    }

    /// [`send`](Self::send) for messages whose content nobody reads (answers
    /// to a flooder): one queued behind the message being sent and behind
    /// another such message is merged into it, its bytes added. The links
    /// carry the same bytes at the same times, and the send buffer counts
    /// each message, but a flood takes a network event per burst instead
    /// of one per message.
    pub fn send_merged(
        &mut self,
        now: Instant,
        from: usize,
        to: usize,
        bytes: usize,
        message: M,
    ) -> Option<Wake> {
        if let Some(flow) = self.up.get_mut(from).and_then(|u| u.flow_mut(to)) {
            if flow.queue.len() >= 2 && flow.messages < self.send_buffer {
                if let Some(last) = flow.queue.back_mut().filter(|q| q.mergeable) {
                    last.bytes += bytes;
                    last.count += 1;
                    flow.messages += 1;
                    self.stats.sent += 1;
                    self.stats.sent_bytes += bytes as u64;
                    return None;
                }
            }
        }
        self.enqueue(now, from, to, Queued::new(bytes, message, true))
    }

    fn enqueue(&mut self, now: Instant, from: usize, to: usize, queued: Queued<M>) -> Option<Wake> {
        if !self.try_reserve(from, to) {
            return None;
        }
        self.stats.sent += 1;
        self.stats.sent_bytes += queued.bytes as u64;
        let uplink = &mut self.up[from];
        uplink.advance(now);
        if let Some(flow) = uplink.flow_mut(to) {
            // Behind the connection's earlier messages: nothing changes
            // until they have left.
            flow.messages += queued.count;
            flow.queue.push_back(queued);
            return None;
        }
        let [foreground_time, background_time] = uplink.virtual_time;
        let work = work(queued.bytes, uplink.bits_per_second);
        let flow = &mut uplink.flows[to];
        let background = flow.background;
        flow.finish = if background {
            background_time
        } else {
            foreground_time
        } + work;
        flow.messages = queued.count;
        flow.queue.push_back(queued);
        flow.started = now;
        uplink.count(background, true);
        uplink.wake(from, now)
    }

    /// Puts the connection `from → to` in the background class (sent only
    /// while no other connection of `from` has data queued) or back in the
    /// foreground, at `now`. Returns the uplink's new schedule if it
    /// changed.
    pub fn set_background(
        &mut self,
        now: Instant,
        from: usize,
        to: usize,
        background: bool,
    ) -> Option<Wake> {
        let uplink = self.up.get_mut(from)?;
        let flow = uplink.flows.get_mut(to)?;
        if flow.background == background {
            return None;
        }
        let active = flow.active();
        if !active {
            flow.background = background;
        }
        uplink.advance(now);
        if !active {
            return None;
        }
        uplink.count(!background, false);
        uplink.count(background, true);
        let [foreground_time, background_time] = uplink.virtual_time;
        let flow = &mut uplink.flows[to];
        // What is left of its first message carries over to the new class.
        let (old, new) = if background {
            (foreground_time, background_time)
        } else {
            (background_time, foreground_time)
        };
        flow.finish = new + flow.finish.saturating_sub(old);
        flow.background = background;
        uplink.wake(from, now)
    }

    /// The messages that have left `wake.node`'s uplink by `now`, with
    /// their delivery instants (none if lost, two if duplicated), and the
    /// uplink's next schedule. A superseded `wake` does nothing.
    pub fn transmit(&mut self, now: Instant, wake: Wake) -> (Vec<Delivery<M>>, Option<Wake>) {
        let mut deliveries = Vec::new();
        let next = self.transmit_into(now, wake, &mut deliveries);
        (deliveries, next)
    }

    /// [`transmit`](Self::transmit), appending the deliveries to
    /// `deliveries` (a host reuses one vector for every call).
    pub fn transmit_into(
        &mut self,
        now: Instant,
        wake: Wake,
        deliveries: &mut Vec<Delivery<M>>,
    ) -> Option<Wake> {
        let from = wake.node;
        let uplink = self.up.get_mut(from)?;
        if uplink.epoch != wake.epoch {
            return None;
        }
        uplink.advance(now);
        let mut left = std::mem::take(&mut self.left);
        // By receiver, as they left; one connection's departure changes no
        // other's.
        for to in 0..uplink.flows.len() {
            let flow = &uplink.flows[to];
            if !flow.active() || !uplink.done(flow) {
                continue;
            }
            let flow = &mut uplink.flows[to];
            let Some(Queued {
                bytes,
                message,
                count,
                mergeable,
            }) = flow.queue.pop_front()
            else {
                continue;
            };
            flow.messages -= count;
            left.push((to, bytes, flow.started, message, mergeable));
            match flow.queue.front().map(|q| q.bytes) {
                Some(next) => {
                    let class = usize::from(flow.background);
                    flow.finish = uplink.virtual_time[class] + work(next, uplink.bits_per_second);
                    flow.started = now;
                }
                None => {
                    let background = flow.background;
                    uplink.count(background, false);
                }
            }
        }
        let next = uplink.wake(from, now);
        for (to, bytes, started, message, merged) in left.drain(..) {
            if merged && self.discard_merged {
                self.discard(now, from, to);
                continue;
            }
            self.deliver(now, from, to, bytes, started, message, deliveries);
        }
        self.left = left;
        next
    }

    /// The connection between `a` and `b` broke: both directions lose what
    /// their send buffers hold. Returns the uplinks' new schedules.
    pub fn disconnect(&mut self, now: Instant, a: usize, b: usize) -> Vec<Wake> {
        let mut wakes = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            let Some(uplink) = self.up.get_mut(from) else {
                continue;
            };
            uplink.advance(now);
            if let Some(flow) = uplink.flow_mut(to) {
                self.stats.flushed += flow.messages as u64;
                flow.queue.clear();
                flow.messages = 0;
                let background = flow.background;
                uplink.count(background, false);
                // Fewer connections share the uplink: the others speed up.
                wakes.extend(uplink.wake(from, now));
            }
        }
        wakes
    }

    /// The arrivals of a message that left `from`'s uplink at `now`.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        now: Instant,
        from: usize,
        to: usize,
        bytes: usize,
        started: Instant,
        message: M,
        deliveries: &mut Vec<Delivery<M>>,
    ) {
        let Some(copies) = self.draw_copies(now, from, to) else {
            return;
        };
        let latency = self.path_latency(from, to);
        let mut arrivals = [now; 2];
        for arrival in &mut arrivals[..copies] {
            let down = &mut self.down[to];
            let slot = transmission_time(bytes, down.bits_per_second);
            let down_start = (started + latency).max(down.free_at);
            down.free_at = down_start + slot;
            *arrival = (down_start + slot).max(now + latency) + self.reorder_delay(from, to);
        }
        // The message itself goes with the last copy: a decoded message is
        // cloned only for a duplicate.
        if copies == 2 {
            deliveries.push(Delivery {
                to,
                at: arrivals[0],
                message: message.clone(),
            });
        }
        deliveries.push(Delivery {
            to,
            at: arrivals[copies - 1],
            message,
        });
    }

    /// Merged messages leave no delivery from now on: the host drops them
    /// unread, and a receiver of merged messages receives nothing else
    /// (the simulator's sinks), so its downlink's timing is never looked
    /// at. Their faults are still drawn, as [`deliver`](Self::deliver)
    /// draws them, so that losses are counted and the connection's faults
    /// stay the same.
    pub(crate) fn discard_merged(&mut self) {
        self.discard_merged = true;
    }

    /// Whether a message from `from` to `to` is lost (`None`, counted) or
    /// arrives once or twice (a duplicate, counted): the draws every
    /// message makes, in this order.
    fn draw_copies(&mut self, now: Instant, from: usize, to: usize) -> Option<usize> {
        if self.lost(now, from, to) {
            self.stats.lost += 1;
            return None;
        }
        if self.chance(from, to, self.faults.duplicate) {
            self.stats.duplicated += 1;
            Some(2)
        } else {
            Some(1)
        }
    }

    /// A merged message's faults, drawn as [`deliver`](Self::deliver)
    /// draws them, with no delivery.
    fn discard(&mut self, now: Instant, from: usize, to: usize) {
        let Some(copies) = self.draw_copies(now, from, to) else {
            return;
        };
        for _ in 0..copies {
            self.reorder_delay(from, to);
        }
    }

    /// A small control message (a `StateInfo`) that takes no bandwidth:
    /// latency and faults only.
    pub fn control(&mut self, now: Instant, from: usize, to: usize) -> Vec<Instant> {
        let latency = self.path_latency(from, to);
        if self.lost(now, from, to) {
            return Vec::new();
        }
        let copies = if self.chance(from, to, self.faults.duplicate) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| now + latency + self.reorder_delay(from, to))
            .collect()
    }

    /// The one-way latency.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// From `now` on, `node`'s uplink carries `bits_per_second`; what is
    /// queued leaves at the new rate from here. The uplink's schedule
    /// changes: the `Wake` returned supersedes the last. An unlimited
    /// rate (0) is for uplinks made so (`new`): asked here, nothing
    /// changes (the work of what is queued was counted at a finite rate).
    pub fn set_uplink(&mut self, now: Instant, node: usize, bits_per_second: u64) -> Option<Wake> {
        if bits_per_second == 0 {
            return None;
        }
        let uplink = self.up.get_mut(node)?;
        uplink.advance(now);
        uplink.bits_per_second = bits_per_second;
        uplink.wake(node, now)
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn reorder_delay(&mut self, from: usize, to: usize) -> Duration {
        if self.faults.reorder_delay.is_zero() || !self.chance(from, to, self.faults.reorder) {
            return Duration::ZERO;
        }
        self.stats.reordered += 1;
        let max = u64::try_from(self.faults.reorder_delay.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng(from, to).u64(1..=max))
    }

    /// Whether a message `from → to` sent at `now` is lost: whether the
    /// connection is in a burst then is drawn first (one more draw, only
    /// with bursts set, so that runs without them draw as before). A
    /// connection starts out of a burst.
    fn lost(&mut self, now: Instant, from: usize, to: usize) -> bool {
        let Some(bursts) = self.faults.bursts else {
            return self.chance(from, to, self.faults.loss);
        };
        let (was, since) = self
            .bursting
            .get(&(from, to))
            .copied()
            .unwrap_or((false, now));
        let draw = self.rng(from, to).f64();
        let bursting = bursts.bursting(was, now.saturating_duration_since(since), draw);
        self.bursting.insert((from, to), (bursting, now));
        let loss = if bursting {
            bursts.loss
        } else {
            self.faults.loss
        };
        self.chance(from, to, loss)
    }

    fn chance(&mut self, from: usize, to: usize, probability: f64) -> bool {
        probability > 0.0 && self.rng(from, to).f64() < probability
    }

    fn rng(&mut self, from: usize, to: usize) -> &mut fastrand::Rng {
        let seed = self.seed;
        let make = || {
            // Distinct, well-mixed streams per connection.
            let stream = ((from as u64) << 32 | to as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            fastrand::Rng::with_seed(seed ^ stream)
        };
        let receivers = self.down.len();
        if from < self.up.len() && to < receivers {
            self.rngs[from * receivers + to].get_or_insert_with(make)
        } else {
            self.other_rngs.entry((from, to)).or_insert_with(make)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Any instant will do: only durations after it matter.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn net(epoch: Instant, up: u64, down: u64) -> Network<u32> {
        Network::new(
            epoch,
            ms(50),
            &[up; 3],
            &[down; 3],
            200,
            Faults::default(),
            1,
        )
    }

    /// A host for the network: sends scripted messages `(at, from, to,
    /// bytes, id)` and runs the uplinks' wakes in time order. Returns each
    /// delivery as `(id, at)`, in delivery order.
    fn drive(
        n: &mut Network<u32>,
        sends: &[(Instant, usize, usize, usize, u32)],
    ) -> Vec<(u32, Instant)> {
        let mut sends: VecDeque<_> = sends.iter().copied().collect();
        let mut wakes: Vec<Wake> = Vec::new();
        let mut out = Vec::new();
        loop {
            wakes.sort_by_key(|w| std::cmp::Reverse(w.at));
            let send_first = match (sends.front(), wakes.last()) {
                (Some(send), Some(wake)) => send.0 <= wake.at,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if send_first {
                if let Some((at, from, to, bytes, id)) = sends.pop_front() {
                    wakes.extend(n.send(at, from, to, bytes, id));
                }
            } else if let Some(wake) = wakes.pop() {
                let (left, next) = n.transmit(wake.at, wake);
                out.extend(left.into_iter().map(|d| (d.message, d.at)));
                wakes.extend(next);
            }
        }
        out.sort_by_key(|&(id, at)| (at, id));
        out
    }

    #[test]
    fn transmission_time_is_bytes_over_bandwidth() {
        assert_eq!(transmission_time(125_000, MBIT), Duration::from_secs(1));
        assert_eq!(transmission_time(1, 8_000_000_000), Duration::from_nanos(1));
        assert_eq!(
            transmission_time(1, 3_000_000_000),
            Duration::from_nanos(3),
            "rounded up"
        );
        assert_eq!(transmission_time(1 << 20, 0), Duration::ZERO);
    }

    #[test]
    fn one_message_arrives_after_latency_plus_size_over_bandwidth() {
        let t0 = epoch();
        // 1.25 MB over 100 Mbit/s = 100 ms, on both ends.
        let one = |up, down| drive(&mut net(t0, up, down), &[(t0, 0, 1, 1_250_000, 1)]);
        assert_eq!(one(100 * MBIT, 100 * MBIT), [(1, t0 + ms(150))]);
        // The faster end does not help: the slower one sets the pace.
        assert_eq!(one(100 * MBIT, 1000 * MBIT), [(1, t0 + ms(150))]);
        assert_eq!(one(1000 * MBIT, 100 * MBIT), [(1, t0 + ms(150))]);
        // An unlimited uplink: latency and the downlink only.
        assert_eq!(one(0, 100 * MBIT), [(1, t0 + ms(150))]);
        assert_eq!(one(0, 0), [(1, t0 + ms(50))]);
    }

    #[test]
    fn an_uplink_that_slows_down_sends_the_rest_at_its_new_rate() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        // 1.25 MB: 100 ms at 100 Mbit/s. Halfway, the uplink halves: the
        // other half takes 100 ms, so it leaves at 150 ms, arrives at 200.
        let first = n.send(t0, 0, 1, 1_250_000, 1).expect("a wake");
        assert_eq!(first.at, t0 + ms(100));
        let slowed = n.set_uplink(t0 + ms(50), 0, 50 * MBIT).expect("a wake");
        assert_eq!(slowed.at, t0 + ms(150));
        // The first schedule is superseded: nothing leaves then.
        let (left, _) = n.transmit(first.at, first);
        assert!(left.is_empty());
        let (left, next) = n.transmit(slowed.at, slowed);
        let arrivals: Vec<_> = left.iter().map(|d| (d.message, d.at)).collect();
        assert_eq!(arrivals, [(1, t0 + ms(200))]);
        assert!(next.is_none());
        // Idle, a change of rate schedules nothing.
        assert!(n.set_uplink(t0 + ms(300), 0, 100 * MBIT).is_none());
        // Unlimited (0) is refused: the schedule stands (set, it left the
        // queued message due at once, for ever).
        let wake = n.send(t0 + ms(400), 0, 1, 1_250_000, 2).expect("a wake");
        assert!(n.set_uplink(t0 + ms(450), 0, 0).is_none());
        let (left, _) = n.transmit(wake.at, wake);
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn a_connection_is_fifo() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        let got = drive(
            &mut n,
            &[
                (t0, 0, 1, 1_250_000, 1),
                (t0, 0, 1, 1_250_000, 2),
                // After the uplink drained, no wait.
                (t0 + ms(500), 0, 1, 125_000, 3),
            ],
        );
        assert_eq!(
            got,
            [(1, t0 + ms(150)), (2, t0 + ms(250)), (3, t0 + ms(560))]
        );
    }

    #[test]
    fn connections_share_the_uplink_fairly() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        // Two connections, 1.25 MB each, sent at once: each gets half the
        // uplink, both leave at 200 ms.
        let got = drive(
            &mut n,
            &[(t0, 0, 1, 1_250_000, 1), (t0, 0, 2, 1_250_000, 2)],
        );
        assert_eq!(got, [(1, t0 + ms(250)), (2, t0 + ms(250))]);
        // A connection with a long queue (ten 1.25 MB messages) does not
        // hold up a small message on another one: at half the uplink,
        // 12.5 kB take 2 ms.
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        let mut sends: Vec<_> = (0..10).map(|i| (t0, 0, 1, 1_250_000, i)).collect();
        sends.push((t0 + ms(10), 0, 2, 12_500, 99));
        let got = drive(&mut n, &sends);
        let small = got.iter().find(|d| d.0 == 99).unwrap().1;
        assert_eq!(small, t0 + ms(10 + 2 + 50));
        // The queue lost 1 ms of uplink to it: its last message leaves
        // at 1001 ms.
        let last = got.iter().find(|d| d.0 == 9).unwrap().1;
        assert_eq!(last, t0 + ms(1001 + 50));
    }

    #[test]
    fn a_background_connection_gets_only_what_the_others_leave() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        n.set_background(t0, 0, 2, true);
        // The background connection's 1.25 MB waits while the foreground
        // one sends its two: 100 ms each at the whole uplink, then 100 ms.
        let got = drive(
            &mut n,
            &[
                (t0, 0, 2, 1_250_000, 9),
                (t0, 0, 1, 1_250_000, 1),
                (t0, 0, 1, 1_250_000, 2),
            ],
        );
        assert_eq!(
            got,
            [(1, t0 + ms(150)), (2, t0 + ms(250)), (9, t0 + ms(350))]
        );
        // Moved to the background halfway through its message: the
        // foreground newcomer takes the whole uplink, then the rest goes.
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        let mut wakes: Vec<Wake> = n.send(t0, 0, 2, 1_250_000, 9).into_iter().collect();
        wakes.extend(n.set_background(t0 + ms(50), 0, 2, true));
        wakes.extend(n.send(t0 + ms(50), 0, 1, 1_250_000, 1));
        let mut got = Vec::new();
        while let Some(wake) = wakes.iter().copied().min_by_key(|w| w.at) {
            wakes.retain(|w| *w != wake);
            let (left, next) = n.transmit(wake.at, wake);
            got.extend(left.into_iter().map(|d| (d.message, d.at)));
            wakes.extend(next);
        }
        assert_eq!(got, [(1, t0 + ms(200)), (9, t0 + ms(250))]);
    }

    #[test]
    fn merged_messages_take_their_bytes_and_count_in_the_send_buffer() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        // 125 kB take 10 ms at 100 Mbit/s: the second and third are merged
        // and leave as one, when the third would have.
        let mut wakes: Vec<Wake> = Vec::new();
        for id in 1..=3 {
            wakes.extend(n.send_merged(t0, 0, 1, 125_000, id));
        }
        assert_eq!(n.stats().sent, 3);
        let mut got = Vec::new();
        while let Some(wake) = wakes.pop() {
            let (left, next) = n.transmit(wake.at, wake);
            got.extend(left.into_iter().map(|d| (d.message, d.at)));
            wakes.extend(next);
        }
        assert_eq!(got, [(1, t0 + ms(60)), (2, t0 + ms(80))]);
        // The send buffer counts merged messages one by one.
        let mut n = Network::new(t0, ms(50), &[MBIT; 2], &[MBIT; 2], 3, Faults::default(), 1);
        for id in 0..5 {
            n.send_merged(t0, 0, 1, 1_000, id);
        }
        assert_eq!((n.stats().sent, n.stats().overflowed), (3, 2));
    }

    #[test]
    fn downlink_is_shared_fifo() {
        let t0 = epoch();
        // Two senders at 100 Mbit/s into a 100 Mbit/s downlink: the
        // downlink carries both one after the other, 200 ms in all.
        let mut n = net(t0, 100 * MBIT, 100 * MBIT);
        let got = drive(
            &mut n,
            &[(t0, 0, 2, 1_250_000, 1), (t0, 1, 2, 1_250_000, 2)],
        );
        let times: Vec<Instant> = got.iter().map(|d| d.1).collect();
        assert_eq!(times, [t0 + ms(150), t0 + ms(250)], "one after the other");
        // Into a 1 Gbit/s downlink they stream side by side: both arrive
        // when their own uplinks finish.
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        let got = drive(
            &mut n,
            &[(t0, 0, 2, 1_250_000, 1), (t0, 1, 2, 1_250_000, 2)],
        );
        assert_eq!(got, [(1, t0 + ms(150)), (2, t0 + ms(150))]);
    }

    #[test]
    fn a_full_send_buffer_drops() {
        let t0 = epoch();
        let mut n = Network::new(
            t0,
            ms(50),
            &[100 * MBIT; 3],
            &[100 * MBIT; 3],
            2,
            Faults::default(),
            1,
        );
        // Each message takes 100 ms of uplink: two fit, the third is dropped.
        let first = n.send(t0, 0, 1, 1_250_000, 1).expect("a new schedule");
        assert_eq!(first.at, t0 + ms(100));
        assert_eq!(n.send(t0, 0, 1, 1_250_000, 2), None, "queued behind");
        assert!(!n.has_room(0, 1));
        assert_eq!(n.send(t0, 0, 1, 1_250_000, 3), None);
        // Another connection has its own buffer (and shares the uplink):
        // the first message now leaves later.
        let second = n.send(t0, 0, 2, 1_250_000, 4).expect("a new schedule");
        assert_eq!(second.at, t0 + ms(200));
        // The superseded schedule does nothing.
        assert_eq!(n.transmit(first.at, first), (Vec::new(), None));
        // Once the first message left the uplink, there is room again.
        let (left, _) = n.transmit(second.at, second);
        assert_eq!(left.len(), 2);
        assert!(n.has_room(0, 1));
        assert_eq!(n.stats().overflowed, 1);
        assert_eq!(n.stats().sent, 3);
    }

    #[test]
    fn a_broken_connection_loses_its_buffer() {
        let t0 = epoch();
        let mut n = net(t0, 100 * MBIT, 1000 * MBIT);
        n.send(t0, 0, 1, 1_250_000, 1);
        n.send(t0, 0, 1, 1_250_000, 2);
        let wake = n.send(t0, 0, 2, 1_250_000, 3).unwrap();
        // At 100 ms both connections are half way; 0 → 1 breaks: 0 → 2 has
        // the uplink to itself and is done 50 ms later.
        let wakes = n.disconnect(t0 + ms(100), 1, 0);
        assert_eq!(wakes.len(), 1);
        assert_eq!(wakes[0].at, t0 + ms(150));
        assert_eq!(n.transmit(wake.at, wake), (Vec::new(), None));
        let (left, next) = n.transmit(wakes[0].at, wakes[0]);
        assert_eq!(left.iter().map(|d| d.message).collect::<Vec<_>>(), [3]);
        assert_eq!(next, None);
        assert_eq!(n.stats().flushed, 2);
        assert!(n.has_room(0, 1));
    }

    #[test]
    fn faults_follow_the_seed() {
        let t0 = epoch();
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            reorder: 0.5,
            reorder_delay: ms(30),
            bursts: None,
        };
        let run = |seed| {
            let mut n = Network::new(t0, ms(5), &[MBIT; 2], &[MBIT; 2], 1000, faults, seed);
            let sends: Vec<_> = (0..200)
                .map(|i| (t0 + ms(i), 0, 1, 100, i as u32))
                .collect();
            let got = drive(&mut n, &sends);
            (got, n.stats())
        };
        let (a, stats) = run(9);
        assert_eq!(run(9).0, a);
        assert_ne!(run(10).0, a);
        assert!(stats.lost > 10 && stats.lost < 80, "{stats:?}");
        assert!(stats.duplicated > 10, "{stats:?}");
        assert!(stats.reordered > 30, "{stats:?}");
        let copies = |id| a.iter().filter(|d| d.0 == id).count();
        assert!((0..200).any(|id| copies(id) == 0) && (0..200).any(|id| copies(id) == 2));
    }

    #[test]
    fn bursty_losses_come_in_runs_at_their_mean_rate() {
        let t0 = epoch();
        // The losses of 20 000 messages on one connection, one every
        // millisecond, as runs.
        let runs = |faults: Faults| {
            let mut n: Network<u32> =
                Network::new(t0, ms(5), &[MBIT; 2], &[MBIT; 2], 1000, faults, 7);
            let lost: Vec<bool> = (0..20_000)
                .map(|i| n.control(t0 + ms(i), 0, 1).is_empty())
                .collect();
            let mut runs = Vec::new();
            let mut current = 0;
            for lost in lost {
                if lost {
                    current += 1;
                } else if current > 0 {
                    runs.push(current);
                    current = 0;
                }
            }
            runs
        };
        let bursty = Faults {
            bursts: Some(BurstLoss {
                every: ms(100),
                length: ms(10),
                loss: 1.0,
            }),
            ..Faults::default()
        };
        let bursts = runs(bursty);
        let lost: usize = bursts.iter().sum();
        // Bursts of 10 ms on average, 100 ms apart: about 10 / 110 of the
        // messages lost, in runs of about 10.
        let rate = lost as f64 / 20_000.0;
        assert!((0.07..0.11).contains(&rate), "loss rate {rate}");
        let mean_run = lost as f64 / bursts.len() as f64;
        assert!((8.0..12.5).contains(&mean_run), "mean run {mean_run}");
        // Independent losses at that rate rarely lose five in a row.
        let independent = runs(Faults {
            loss: rate,
            ..Faults::default()
        });
        let long = |runs: &[usize]| runs.iter().filter(|&&r| r >= 5).count();
        assert!(long(&bursts) > 50 * long(&independent).max(1), "{bursts:?}");
    }

    #[test]
    fn a_burst_outlasts_a_quiet_spell_only_as_often_as_its_length_says() {
        let bursts = BurstLoss {
            every: ms(900),
            length: ms(100),
            loss: 1.0,
        };
        // Long after, the state is a tenth in a burst whatever it was.
        for was in [false, true] {
            assert!(bursts.bursting(was, ms(60_000), 0.099));
            assert!(!bursts.bursting(was, ms(60_000), 0.101));
        }
        // At once, it is what it was.
        assert!(bursts.bursting(true, Duration::ZERO, 0.999));
        assert!(!bursts.bursting(false, Duration::ZERO, 0.0));
    }
}

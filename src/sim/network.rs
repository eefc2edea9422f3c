//! Links: latency, per-node uplink and downlink bandwidth, and faults.
//!
//! # The timing model
//!
//! A message of `S` bytes sent at `t` from `a` to `b`:
//!
//! 1. waits for `a`'s uplink (FIFO) and occupies it for `S / up(a)`:
//!    `up_start = max(t, up_free(a))`, `up_end = up_start + S / up(a)`;
//! 2. its first bit reaches `b` one latency after `up_start`; it then takes a
//!    slot of `S / down(b)` on `b`'s downlink (FIFO):
//!    `down_start = max(up_start + latency, down_free(b))`,
//!    `down_free(b) = down_start + S / down(b)`;
//! 3. it is delivered when both its downlink slot and its last bit are in:
//!    `max(down_start + S / down(b), up_end + latency)`.
//!
//! So one message over an idle path of bandwidth `B` arrives after
//! `latency + S / B`; back-to-back messages queue; several senders share a
//! receiver's downlink (their slots are serialised, at most `down(b)` in
//! total) without one slow sender holding it for its whole transmission.
//!
//! Each connection (ordered pair of nodes) has a send buffer of
//! `send_buffer` messages, like Fabric's `peer.gossip.sendBuffSize` (200): a
//! message stays in it until its last bit left the uplink, and a message
//! sent while it is full is dropped, as Fabric's comm layer drops it. This
//! keeps a sender that outpaces its uplink from queueing without bound.
//!
//! Faults, each drawn per message from the network's own seeded RNG: a lost
//! message still occupies the sender's uplink; a duplicate takes a second
//! downlink slot; a reordered one gets a uniform extra delay in
//! `(0, reorder_delay]` after its downlink slot.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// The time `bytes` take over a link of `bits_per_second` (rounded up to the
/// nanosecond; zero bandwidth means an unlimited link).
pub fn transmission_time(bytes: usize, bits_per_second: u64) -> Duration {
    if bits_per_second == 0 {
        return Duration::ZERO;
    }
    let nanos = (bytes as u128 * 8 * 1_000_000_000).div_ceil(u128::from(bits_per_second));
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
}

/// One direction of a node's access link.
#[derive(Debug, Clone, Copy)]
struct Port {
    bits_per_second: u64,
    free_at: Instant,
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
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages given an extra delay.
    pub reordered: u64,
}

/// The network between the nodes `0..n`.
#[derive(Debug, Clone)]
pub struct Network {
    latency: Duration,
    /// Per-node share of the latency, if set: a path's latency is the mean
    /// of its ends'.
    latencies: Vec<Duration>,
    up: Vec<Port>,
    down: Vec<Port>,
    faults: Faults,
    rng: fastrand::Rng,
    stats: NetStats,
    send_buffer: usize,
    /// Per connection, when each buffered message leaves the uplink.
    buffered: BTreeMap<(usize, usize), VecDeque<Instant>>,
}

impl Network {
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
        let port = |&bits_per_second: &u64| Port {
            bits_per_second,
            free_at: epoch,
        };
        Self {
            latency,
            latencies: Vec::new(),
            up: uplinks.iter().map(port).collect(),
            down: downlinks.iter().map(port).collect(),
            faults,
            rng: fastrand::Rng::with_seed(seed),
            stats: NetStats::default(),
            send_buffer,
            buffered: BTreeMap::new(),
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

    /// When `node`'s uplink is next idle.
    pub fn uplink_free_at(&self, node: usize) -> Option<Instant> {
        self.up.get(node).map(|p| p.free_at)
    }

    /// Whether the connection `from → to` has room in its send buffer now.
    pub fn has_room(&mut self, now: Instant, from: usize, to: usize) -> bool {
        let Some(queue) = self.buffered.get_mut(&(from, to)) else {
            return true;
        };
        while queue.front().is_some_and(|&left| left <= now) {
            queue.pop_front();
        }
        if queue.is_empty() {
            self.buffered.remove(&(from, to));
            return true;
        }
        queue.len() < self.send_buffer
    }

    /// [`has_room`](Self::has_room), counting a message dropped if not.
    pub fn try_reserve(&mut self, now: Instant, from: usize, to: usize) -> bool {
        let room = self.has_room(now, from, to);
        if !room {
            self.stats.overflowed += 1;
        }
        room
    }

    /// Sends `bytes` bytes from `from` to `to` at `now`; returns the
    /// delivery instants: none if lost or the send buffer is full, two if
    /// duplicated.
    pub fn send(&mut self, now: Instant, from: usize, to: usize, bytes: usize) -> Vec<Instant> {
        if !self.try_reserve(now, from, to) {
            return Vec::new();
        }
        self.stats.sent += 1;
        self.stats.sent_bytes += bytes as u64;
        let up = &mut self.up[from];
        let up_start = now.max(up.free_at);
        let up_end = up_start + transmission_time(bytes, up.bits_per_second);
        up.free_at = up_end;
        self.buffered
            .entry((from, to))
            .or_default()
            .push_back(up_end);
        if self.chance(self.faults.loss) {
            self.stats.lost += 1;
            return Vec::new();
        }
        let copies = if self.chance(self.faults.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut deliveries = Vec::with_capacity(copies);
        let latency = self.path_latency(from, to);
        for _ in 0..copies {
            let down = &mut self.down[to];
            let slot = transmission_time(bytes, down.bits_per_second);
            let down_start = (up_start + latency).max(down.free_at);
            down.free_at = down_start + slot;
            let at = (down_start + slot).max(up_end + latency);
            deliveries.push(at + self.reorder_delay());
        }
        deliveries
    }

    /// A small control message (a `StateInfo`) that takes no bandwidth:
    /// latency and faults only.
    pub fn control(&mut self, now: Instant, from: usize, to: usize) -> Vec<Instant> {
        let latency = self.path_latency(from, to);
        if self.chance(self.faults.loss) {
            return Vec::new();
        }
        let copies = if self.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| now + latency + self.reorder_delay())
            .collect()
    }

    /// The one-way latency.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn reorder_delay(&mut self) -> Duration {
        if self.faults.reorder_delay.is_zero() || !self.chance(self.faults.reorder) {
            return Duration::ZERO;
        }
        self.stats.reordered += 1;
        let max = u64::try_from(self.faults.reorder_delay.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(1..=max))
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.f64() < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    /// Any instant will do: only durations after it matter.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn net(epoch: Instant, up: u64, down: u64) -> Network {
        Network::new(
            epoch,
            Duration::from_millis(50),
            &[up; 3],
            &[down; 3],
            200,
            Faults::default(),
            1,
        )
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
        let epoch = epoch();
        // 1.25 MB over 100 Mbit/s = 100 ms, on both ends.
        let mut n = net(epoch, 100 * MBIT, 100 * MBIT);
        let at = n.send(epoch, 0, 1, 1_250_000);
        assert_eq!(at, [epoch + Duration::from_millis(150)]);
        // The faster end does not help: the slower one sets the pace.
        let mut n = net(epoch, 100 * MBIT, 1000 * MBIT);
        assert_eq!(
            n.send(epoch, 0, 1, 1_250_000),
            [epoch + Duration::from_millis(150)]
        );
        let mut n = net(epoch, 1000 * MBIT, 100 * MBIT);
        assert_eq!(
            n.send(epoch, 0, 1, 1_250_000),
            [epoch + Duration::from_millis(150)]
        );
    }

    #[test]
    fn uplink_is_fifo() {
        let epoch = epoch();
        let mut n = net(epoch, 100 * MBIT, 1000 * MBIT);
        let ms = Duration::from_millis;
        let first = n.send(epoch, 0, 1, 1_250_000);
        // Sent at once, to another node: waits for the first to leave.
        let second = n.send(epoch, 0, 2, 1_250_000);
        assert_eq!(first, [epoch + ms(150)]);
        assert_eq!(second, [epoch + ms(250)]);
        // After the uplink drained, no wait.
        let third = n.send(epoch + ms(500), 0, 1, 125_000);
        assert_eq!(third, [epoch + ms(560)]);
    }

    #[test]
    fn downlink_is_shared_fifo() {
        let epoch = epoch();
        // Two senders at 100 Mbit/s into a 100 Mbit/s downlink: the
        // downlink carries both one after the other, 200 ms in all.
        let mut n = net(epoch, 100 * MBIT, 100 * MBIT);
        let a = n.send(epoch, 0, 2, 1_250_000);
        let b = n.send(epoch, 1, 2, 1_250_000);
        assert_eq!(a, [epoch + Duration::from_millis(150)]);
        assert_eq!(b, [epoch + Duration::from_millis(250)]);
        // Into a 1 Gbit/s downlink they stream side by side: both arrive
        // when their own uplinks finish (the second 10 ms of downlink
        // later at most).
        let mut n = net(epoch, 100 * MBIT, 1000 * MBIT);
        let a = n.send(epoch, 0, 2, 1_250_000);
        let b = n.send(epoch, 1, 2, 1_250_000);
        assert_eq!(a, [epoch + Duration::from_millis(150)]);
        assert_eq!(b, [epoch + Duration::from_millis(150)]);
    }

    #[test]
    fn a_full_send_buffer_drops() {
        let epoch = epoch();
        let ms = Duration::from_millis;
        let mut n = Network::new(
            epoch,
            ms(50),
            &[100 * MBIT; 3],
            &[100 * MBIT; 3],
            2,
            Faults::default(),
            1,
        );
        // Each message takes 100 ms of uplink: two fit, the third is dropped.
        assert_eq!(n.send(epoch, 0, 1, 1_250_000).len(), 1);
        assert_eq!(n.send(epoch, 0, 1, 1_250_000).len(), 1);
        assert!(!n.has_room(epoch, 0, 1));
        assert_eq!(n.send(epoch, 0, 1, 1_250_000), []);
        // Another connection has its own buffer (but shares the uplink).
        assert_eq!(n.send(epoch, 0, 2, 1_250_000), [epoch + ms(350)]);
        // Once the first message left the uplink, there is room again.
        assert!(n.has_room(epoch + ms(100), 0, 1));
        assert_eq!(n.stats().overflowed, 1);
        assert_eq!(n.stats().sent, 3);
    }

    #[test]
    fn faults_follow_the_seed() {
        let epoch = epoch();
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            reorder: 0.5,
            reorder_delay: Duration::from_millis(30),
        };
        let run = |seed| {
            let mut n = Network::new(
                epoch,
                Duration::from_millis(5),
                &[MBIT; 2],
                &[MBIT; 2],
                1000,
                faults,
                seed,
            );
            let times: Vec<Vec<Instant>> = (0..200)
                .map(|i| n.send(epoch + Duration::from_millis(i), 0, 1, 100))
                .collect();
            (times, n.stats())
        };
        let (a, stats) = run(9);
        assert_eq!(run(9).0, a);
        assert_ne!(run(10).0, a);
        assert!(stats.lost > 10 && stats.lost < 80, "{stats:?}");
        assert!(stats.duplicated > 10, "{stats:?}");
        assert!(stats.reordered > 30, "{stats:?}");
        assert!(a.iter().any(Vec::is_empty) && a.iter().any(|d| d.len() == 2));
    }
}

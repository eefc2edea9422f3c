//! How many requests a peer gets at once: its window, sized like TCP
//! Vegas sizes a congestion window, from its round trips and the spacing of
//! its answers.

use std::time::{Duration, Instant};

/// How many times its window the first answer may lift a peer's window to.
const START_GROWTH: usize = 8;

/// The number of requests kept in flight to one peer, sized like TCP
/// Vegas sizes its window: it grows while round trips stay near the fastest
/// seen (the peer's link is not queueing our requests), shrinks when more
/// than a few requests wait in its queue and add a noticeable delay, and
/// halves on a timeout. So each peer gets about its bandwidth-delay product,
/// whatever the block size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerWindow {
    pub(super) size: usize,
    pub(super) base_rtt: Option<Duration>,
    slow_start: bool,
    /// Whether the last answer met a queue at the peer.
    queueing: bool,
    /// When the window last stepped (a jump or a shrink): requests sent
    /// by then say nothing of the new window.
    changed_at: Option<Instant>,
}

impl PeerWindow {
    /// Requests in flight before any round trip is measured.
    const INITIAL: usize = 2;
    /// Below this many of our requests queued at the peer, grow.
    const ALPHA: f64 = 1.0;
    /// Above this many, shrink.
    const BETA: f64 = 3.0;
    /// A shrink leaves this many requests queued at the peer, so that its
    /// link does not idle while the next ones travel.
    const KEEP_QUEUED: usize = 2;
    /// Below a queueing delay of the base round trip over this, grow
    /// whatever the count (5 ms at 100 ms): relative, so that on a loopback
    /// or LAN the count governs as in plain Vegas.
    const ALPHA_DELAY_DIVISOR: u32 = 20;
    /// Shrink only above a delay of the base round trip over this too.
    const BETA_DELAY_DIVISOR: u32 = 5;

    pub(super) fn new() -> Self {
        Self {
            size: Self::INITIAL,
            base_rtt: None,
            slow_start: true,
            queueing: false,
            changed_at: None,
        }
    }

    pub(super) fn on_sample(&mut self, now: Instant, sent_at: Instant, max: usize, floor: usize) {
        let rtt = now.saturating_duration_since(sent_at);
        if rtt.is_zero() {
            // No information (an answer in the same instant): a zero base
            // would make every later answer look queued.
            return;
        }
        let first = self.base_rtt.is_none();
        let base = self.base_rtt.map_or(rtt, |base| base.min(rtt));
        self.base_rtt = Some(base);
        if first {
            // The first answer shows the peer is there: start from a
            // window of `peers::START_BYTES` at the block size seen, not 2
            // requests, since small blocks need hundreds in flight; at most
            // eightfold at once (a jump to 128 from each of four peers
            // overran a host serving one answer per millisecond: 86
            // timeouts in `benches/machines.rs`).
            let start = self.size.max(floor.min(max).min(self.size * START_GROWTH));
            if start > self.size {
                self.size = start;
                self.changed_at = Some(now);
            }
            return;
        }
        // Vegas: window × (1 − base/rtt) requests are waiting in a queue.
        // Counted in requests alone, a queue of three 11 KiB answers (3 ms
        // at 100 Mbit/s, less than a burst's own spread) held tiny blocks at
        // a quarter of the link; so a queue must also add delay, relative
        // to the round trip, to count.
        let queued = self.size as f64 * (1.0 - base.as_secs_f64() / rtt.as_secs_f64());
        let delay = rtt.saturating_sub(base);
        let queueing = queued > Self::BETA && delay > base / Self::BETA_DELAY_DIVISOR;
        self.queueing = queueing;
        if queueing {
            self.slow_start = false;
            if self.changed_at.is_some_and(|at| sent_at <= at) {
                // Sent before the window last stepped: the queue it met is
                // the old window's (after a jump to the product the last
                // of its burst waits a whole round trip), and shrinking
                // for it again would collapse the window.
                return;
            }
            // Once per round trip, straight to what keeps the link busy
            // with a few requests queued: shrinking by one per answer went
            // on for a whole round trip after the queue was gone (128 down
            // to 16 with 1 KiB blocks).
            let busy = (self.size as f64 * base.as_secs_f64() / rtt.as_secs_f64()).ceil() as usize;
            let size = (busy + Self::KEEP_QUEUED).max(self.size / 2).max(1);
            if size < self.size {
                self.size = size;
                self.changed_at = Some(now);
            }
        } else if self.slow_start
            || queued < Self::ALPHA
            || delay < base / Self::ALPHA_DELAY_DIVISOR
        {
            self.size = (self.size + 1).min(max);
        }
    }

    /// The peer's link was measured at `bytes_per_second` (its answers'
    /// dispersion): while still growing from the start, jump to the
    /// bandwidth-delay product at the base round trip, in requests of
    /// `request_bytes`, instead of doubling there one round trip at a time.
    pub(super) fn on_bandwidth(
        &mut self,
        now: Instant,
        bytes_per_second: f64,
        request_bytes: u64,
        max: usize,
    ) {
        let (Some(base), true) = (self.base_rtt, self.slow_start) else {
            return;
        };
        let product = bytes_per_second * base.as_secs_f64() / request_bytes.max(1) as f64;
        if product.is_finite() && product > 0.0 {
            let product = (product.ceil() as usize).min(max);
            if product > self.size {
                self.size = product;
                self.changed_at = Some(now);
            }
        }
    }

    /// A send was lost on a path that works (its peer answered a later
    /// one): it carried nothing, so the window grows by one, unless the
    /// last answer met a queue; for good, until Vegas sees a queue and
    /// shrinks it. The window counts requests, and a lost one holds its
    /// slot until taken for lost: a peer that drops a share of its
    /// requests kept that share fewer answers in flight than its link
    /// needed, and its link idled for it.
    pub(super) fn grow_on_loss(&mut self, max: usize) {
        if !self.queueing {
            self.size = (self.size + 1).min(max);
        }
    }

    /// A send timed out. The window halves unless answers came since it
    /// was made (`answered_since`) and the last of them met no queue: then
    /// it was lost at random, not to congestion, which the round trips
    /// would show. Halving on every loss held four peers' windows at one
    /// or two at 20 % loss (`catchup --peers 4 --laggers 1 --loss 0.2`).
    pub(super) fn on_timeout(&mut self, answered_since: bool) {
        self.slow_start = false;
        if answered_since && !self.queueing {
            return;
        }
        self.size = (self.size / 2).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `window` an answer that took `rtt` to a request sent just
    /// after the previous answer came.
    fn sample(
        window: &mut PeerWindow,
        clock: &mut Instant,
        rtt: Duration,
        max: usize,
        floor: usize,
    ) {
        let sent_at = *clock + Duration::from_millis(1);
        *clock = sent_at + rtt;
        window.on_sample(*clock, sent_at, max, floor);
    }

    // A lost send grows the window by one while the answers meet no queue,
    // never past the cap; once they meet one, Vegas alone decides.
    #[test]
    fn a_lost_send_grows_the_window_unless_answers_queue() {
        let mut window = PeerWindow::new();
        window.grow_on_loss(3);
        assert_eq!(window.size, 3);
        window.grow_on_loss(3);
        assert_eq!(window.size, 3);
        window.queueing = true;
        window.grow_on_loss(128);
        assert_eq!(window.size, 3);
    }

    #[test]
    fn window_starts_from_bytes_and_grows_past_short_bursts() {
        let ms = Duration::from_millis;
        let mut clock = crate::test_epoch() + Duration::from_secs(10);
        let mut window = PeerWindow::new();
        // The first answer lifts the window to the byte floor...
        sample(&mut window, &mut clock, ms(100), 128, 13);
        assert_eq!(window.size, 13);
        // ...at most eightfold (2 → 16)...
        let mut steep = PeerWindow::new();
        sample(&mut steep, &mut clock, ms(100), 128, 100);
        assert_eq!(steep.size, 16);
        // ...never past the cap.
        let mut capped = PeerWindow::new();
        sample(&mut capped, &mut clock, ms(100), 8, 13);
        assert_eq!(capped.size, 8);
        // At 24, past the start, for the delay checks below.
        window.size = 24;
        window.slow_start = false;
        // 4.5 ms over a 100 ms base is a burst's spread, not a queue: it grows
        // although 24 × (1 − 100/104.5) ≈ 1.03 requests look queued; at
        // 10 ms (2.3 requests, between α and β) it holds.
        sample(
            &mut window,
            &mut clock,
            Duration::from_micros(104_500),
            128,
            0,
        );
        assert_eq!(window.size, 25);
        sample(&mut window, &mut clock, ms(110), 128, 0);
        assert_eq!(window.size, 25);
        // A queue of requests that adds under 20 ms does not shrink it.
        sample(&mut window, &mut clock, ms(115), 128, 0);
        assert_eq!(window.size, 25);
        // One that adds more does, in one step, to what keeps the link busy
        // (25 · 100/200, rounded up) and two more...
        sample(&mut window, &mut clock, ms(200), 128, 0);
        assert_eq!(window.size, 13 + PeerWindow::KEEP_QUEUED);
        // ...and answers to requests sent before the shrink met the old
        // window's queue: no second shrink for them.
        let before = clock - ms(1);
        clock += ms(150);
        window.on_sample(clock, before, 128, 0);
        assert_eq!(window.size, 15);
        // Requests sent after it judge the new window.
        sample(
            &mut window,
            &mut clock,
            Duration::from_micros(100_100),
            128,
            0,
        );
        assert_eq!(window.size, 16);
    }

    #[test]
    fn a_shrink_halves_at_most() {
        let ms = Duration::from_millis;
        let mut clock = crate::test_epoch() + Duration::from_secs(10);
        let mut window = PeerWindow::new();
        sample(&mut window, &mut clock, ms(100), 128, 100);
        window.size = 100;
        // Ten times the base: 10 busy, but a shrink halves at most.
        sample(&mut window, &mut clock, ms(1000), 128, 0);
        assert_eq!(window.size, 50);
    }

    #[test]
    fn window_grows_without_queueing_and_shrinks_with_it() {
        let ms = Duration::from_millis;
        let mut clock = crate::test_epoch() + Duration::from_secs(10);
        let mut window = PeerWindow::new();
        for _ in 0..10 {
            sample(&mut window, &mut clock, ms(100), 32, 0);
        }
        // The first answer only measures (no byte floor here).
        assert_eq!(window.size, PeerWindow::INITIAL + 9, "no queue: grow");
        // RTT doubled: half the window (5.5) is queued, over BETA: shrink
        // to the 6 that keep the link busy, and two more.
        sample(&mut window, &mut clock, ms(200), 32, 0);
        assert_eq!(window.size, 8);
        window.on_timeout(false);
        assert_eq!(window.size, 4);
        for _ in 0..100 {
            sample(&mut window, &mut clock, ms(100), 8, 0);
        }
        assert_eq!(window.size, 8, "capped by max_in_flight_per_peer");
    }
}

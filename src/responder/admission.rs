//! Admission control: per-peer token buckets and request counts, and the
//! queue of admitted requests waiting for a read slot.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use crate::arith::div_ceil;
use crate::range::SeqRange;

/// Tokens are counted in nano-blocks, so that a bucket refilling at `r`
/// blocks per second gains exactly `r` tokens per nanosecond: integer
/// arithmetic, no rounding, no float. `u128` holds every product.
pub(super) const NANO: u128 = 1_000_000_000;

/// What an empty response (a request starting at or beyond our height)
/// costs: one block. It costs no read, but it is a message we send, so a
/// peer cannot make us answer faster than its block rate.
pub(super) const EMPTY_RESPONSE_COST: u128 = NANO;

/// Admitted requests waiting for a read slot.
///
/// Reads start round-robin across peers, each peer's oldest first; stale
/// requests leave in admission order. Both take `O(log n)`.
#[derive(Debug, Clone)]
pub(super) struct Queue<P> {
    /// Every queued job by admission number: oldest first, since `now`
    /// never goes back.
    jobs: BTreeMap<u64, Job<P>>,
    /// Per peer with jobs queued: their admission numbers, oldest first.
    peers: BTreeMap<P, VecDeque<u64>>,
    next: u64,
    /// The peer whose job started last: the rotation resumes after it,
    /// whether or not it still has jobs.
    last: Option<P>,
}

impl<P: Clone + Ord> Queue<P> {
    pub(super) fn new() -> Self {
        Self {
            jobs: BTreeMap::new(),
            peers: BTreeMap::new(),
            next: 0,
            last: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn push(&mut self, job: Job<P>) {
        let number = self.next;
        self.next += 1;
        self.peers
            .entry(job.from.clone())
            .or_default()
            .push_back(number);
        self.jobs.insert(number, job);
    }

    /// What [`push`](Self::push) and then [`pop_next`](Self::pop_next) do
    /// to an empty queue with a job of `peer`, when the job goes at once.
    pub(super) fn pass(&mut self, peer: &P) {
        self.next += 1;
        self.last = Some(peer.clone());
    }

    /// The job admitted first.
    pub(super) fn oldest(&self) -> Option<&Job<P>> {
        self.jobs.values().next()
    }

    /// Removes the job admitted first. It is its peer's oldest too.
    pub(super) fn pop_oldest(&mut self) -> Option<Job<P>> {
        let (number, job) = self.jobs.pop_first()?;
        self.unlink(&job.from, number);
        Some(job)
    }

    /// Removes every job of `peer`, oldest first.
    pub(super) fn remove_peer(&mut self, peer: &P) -> Vec<Job<P>> {
        let numbers = self.peers.remove(peer).unwrap_or_default();
        numbers
            .into_iter()
            .filter_map(|number| self.jobs.remove(&number))
            .collect()
    }

    /// Removes the oldest job of the next peer in the rotation that is
    /// `allowed` a read and not in the `background`; of the next allowed
    /// background one if no other is waiting.
    pub(super) fn pop_next(
        &mut self,
        background: impl Fn(&P) -> bool,
        allowed: impl Fn(&P) -> bool,
    ) -> Option<Job<P>> {
        let rotation = || {
            let after = self.last.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            self.peers
                .range((after, Bound::Unbounded))
                .chain(self.peers.iter())
                .filter(|(peer, _)| allowed(peer))
        };
        let (peer, numbers) = rotation()
            .find(|(peer, _)| !background(peer))
            .or_else(|| rotation().next())?;
        let (peer, number) = (peer.clone(), *numbers.front()?);
        self.unlink(&peer, number);
        self.last = Some(peer);
        self.jobs.remove(&number)
    }

    /// Jobs of `peer` queued.
    pub(super) fn queued_of(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, VecDeque::len)
    }

    /// The peers with jobs queued: each with its jobs queued and the
    /// admission number of its newest.
    pub(super) fn queued_peers(&self) -> impl Iterator<Item = (&P, usize, u64)> + Clone {
        self.peers
            .iter()
            .filter_map(|(peer, numbers)| Some((peer, numbers.len(), *numbers.back()?)))
    }

    /// Removes `peer`'s newest job.
    pub(super) fn pop_newest_of(&mut self, peer: &P) -> Option<Job<P>> {
        let numbers = self.peers.get_mut(peer)?;
        let number = numbers.pop_back()?;
        if numbers.is_empty() {
            self.peers.remove(peer);
        }
        self.jobs.remove(&number)
    }

    /// Takes `number` off the front of `peer`'s list, dropping the list
    /// once empty so that `peers` holds only peers with jobs.
    pub(super) fn unlink(&mut self, peer: &P, number: u64) {
        if let Some(numbers) = self.peers.get_mut(peer) {
            if numbers.front() == Some(&number) {
                numbers.pop_front();
            }
            if numbers.is_empty() {
                self.peers.remove(peer);
            }
        }
    }
}

/// An admitted request.
#[derive(Debug, Clone)]
pub(super) struct Job<P> {
    pub(super) from: P,
    pub(super) nonce: u64,
    /// Clamped to our height at admission.
    pub(super) range: SeqRange,
    /// When it was admitted: a job still queued `read_timeout` later is
    /// stale.
    pub(super) admitted: Instant,
    /// Whether it asked only for blocks its peer had not been served: only
    /// then are its blocks taken back from what the peer was served if
    /// they are not sent after all (a request overlapping earlier ones
    /// would take those back too).
    pub(super) fresh: bool,
}

/// Per-peer token buckets and request counts, kept only for peers that
/// have work or a bucket not yet full.
#[derive(Debug, Clone)]
pub(super) struct Buckets<P> {
    /// Capacity in nano-blocks.
    pub(super) capacity: u128,
    /// Refill in nano-blocks per nanosecond, which is blocks per second.
    pub(super) rate: u128,
    pub(super) peers: BTreeMap<P, PeerBucket>,
    /// Peers without work, by the instant their bucket is full again: they
    /// are forgotten then.
    pub(super) idle: Sorted<(Instant, P)>,
}

#[derive(Debug, Clone)]
pub(super) struct PeerBucket {
    /// Nano-blocks at `updated`.
    pub(super) tokens: u128,
    pub(super) updated: Instant,
    /// Requests queued or being read.
    pub(super) active: usize,
    /// Its key in `idle`, while it is there.
    pub(super) full_at: Option<Instant>,
}

impl<P: Clone + Ord> Buckets<P> {
    pub(super) fn new(capacity: u128, rate: u128) -> Self {
        Self {
            capacity,
            // `Config::validate` refuses a zero rate; `max` keeps the
            // division below safe regardless.
            rate: rate.max(1),
            peers: BTreeMap::new(),
            idle: Sorted::default(),
        }
    }

    /// Forgets the idle peers whose bucket is full by `now`.
    pub(super) fn forget_full(&mut self, now: Instant) {
        while self
            .idle
            .first()
            .is_some_and(|(full_at, _)| *full_at <= now)
        {
            if let Some((_, peer)) = self.idle.pop_first() {
                self.peers.remove(&peer);
            }
        }
    }

    pub(super) fn active(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |state| state.active)
    }

    /// The peer's tokens at `now`; a peer not remembered has a full bucket.
    pub(super) fn tokens(&self, peer: &P, now: Instant) -> u128 {
        self.peers.get(peer).map_or(self.capacity, |state| {
            refilled(state, now, self.capacity, self.rate)
        })
    }

    /// Takes `cost` tokens (the caller checked they are there) and, with
    /// `work`, counts a request being served until [`finish`](Self::finish).
    pub(super) fn charge(&mut self, peer: &P, now: Instant, cost: u128, work: bool) {
        let (capacity, rate) = (self.capacity, self.rate);
        let state = self.peers.entry(peer.clone()).or_insert(PeerBucket {
            tokens: capacity,
            updated: now,
            active: 0,
            full_at: None,
        });
        // A new peer's bucket is full, as `tokens` has it.
        state.tokens = refilled(state, now, capacity, rate).saturating_sub(cost);
        state.updated = now;
        if work {
            state.active += 1;
        }
        reindex(&mut self.idle, capacity, rate, peer, state);
    }

    /// A request of `peer` is no longer being served.
    pub(super) fn finish(&mut self, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.active = state.active.saturating_sub(1);
            reindex(&mut self.idle, self.capacity, self.rate, peer, state);
        }
    }
}

/// A set as a sorted deque: the idle peers are the few that asked lately,
/// one enters and leaves on every request served, and a B-tree's node
/// insertion and removal cost more than moving a few entries.
#[derive(Debug, Clone)]
pub(super) struct Sorted<T> {
    items: VecDeque<T>,
}

impl<T> Default for Sorted<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
        }
    }
}

impl<T: Ord> Sorted<T> {
    pub(super) fn first(&self) -> Option<&T> {
        self.items.front()
    }

    pub(super) fn pop_first(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub(super) fn insert(&mut self, item: T) {
        if let Err(at) = self.items.binary_search(&item) {
            self.items.insert(at, item);
        }
    }

    pub(super) fn remove(&mut self, item: &T) {
        if let Ok(at) = self.items.binary_search(item) {
            self.items.remove(at);
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// `state`'s tokens at `now`, refilled at `rate` up to `capacity`.
fn refilled(state: &PeerBucket, now: Instant, capacity: u128, rate: u128) -> u128 {
    if now <= state.updated {
        // Nothing to add (a burst of requests at one instant): the same
        // as the arithmetic below, without it.
        return state.tokens.min(capacity);
    }
    let elapsed = now.saturating_duration_since(state.updated).as_nanos();
    let refill = elapsed.saturating_mul(rate);
    state.tokens.saturating_add(refill).min(capacity)
}

/// Files `peer` (whose bucket is `state`) in `idle` exactly when it has no
/// work, keyed by the instant its bucket is full again. Given the peer's
/// bucket, so that the callers look it up once.
fn reindex<P: Clone + Ord>(
    idle: &mut Sorted<(Instant, P)>,
    capacity: u128,
    rate: u128,
    peer: &P,
    state: &mut PeerBucket,
) {
    if let Some(full_at) = state.full_at.take() {
        idle.remove(&(full_at, peer.clone()));
    }
    if state.active > 0 {
        return;
    }
    let missing = capacity.saturating_sub(state.tokens);
    // Made on every request served.
    let nanos = div_ceil(missing, rate);
    // `None` only if the bucket fills after `Instant`'s range ends
    // (a burst of centuries): such a peer is kept.
    let full_at = u64::try_from(nanos)
        .ok()
        .and_then(|nanos| state.updated.checked_add(Duration::from_nanos(nanos)));
    if let Some(full_at) = full_at {
        state.full_at = Some(full_at);
        idle.insert((full_at, peer.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The test is the host: it may read the clock, the machine may not.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    fn job(from: u8, admitted: Instant) -> Job<u8> {
        Job {
            from,
            nonce: 0,
            range: SeqRange::single(0),
            admitted,
            fresh: true,
        }
    }

    #[test]
    fn queue_rotates_across_peers_and_ages_in_admission_order() {
        let t0 = epoch();
        let mut q: Queue<u8> = Queue::new();
        for (i, from) in [1u8, 1, 1, 2, 3, 3].into_iter().enumerate() {
            q.push(job(from, t0 + Duration::from_secs(i as u64)));
        }
        let order: Vec<u8> = std::iter::from_fn(|| q.pop_next(|_| false, |_| true).map(|j| j.from))
            .take(4)
            .collect();
        assert_eq!(order, [1, 2, 3, 1], "one per peer per rotation");
        // Left: 1's third (admitted at 2 s) and 3's second (at 5 s).
        assert_eq!(
            q.oldest().map(|j| j.admitted),
            Some(t0 + Duration::from_secs(2))
        );
        assert_eq!(q.pop_oldest().map(|j| j.from), Some(1));
        q.push(job(2, t0 + Duration::from_secs(9)));
        assert_eq!(q.remove_peer(&3).len(), 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_next(|_| false, |_| true).map(|j| j.from), Some(2));
        assert!(q.pop_next(|_| false, |_| true).is_none() && q.peers.is_empty());
    }

    #[test]
    fn background_peers_wait_for_the_others() {
        let t0 = epoch();
        let mut q: Queue<u8> = Queue::new();
        for from in [1u8, 1, 2, 2, 3] {
            q.push(job(from, t0));
        }
        let background = |peer: &u8| *peer == 1;
        let order: Vec<u8> =
            std::iter::from_fn(|| q.pop_next(background, |_| true).map(|j| j.from)).collect();
        assert_eq!(order, [2, 3, 2, 1, 1], "1 only once nobody else waits");
        q.push(job(1, t0));
        q.push(job(2, t0));
        let not_1 = |peer: &u8| *peer != 1;
        assert_eq!(q.pop_next(|_| false, not_1).map(|j| j.from), Some(2));
        assert!(q.pop_next(|_| false, not_1).is_none(), "1 is not allowed");
    }

    #[test]
    fn bucket_refills_exactly_and_forgets_full_idle_peers() {
        let t0 = epoch();
        let mut b: Buckets<u8> = Buckets::new(11 * NANO, 10);
        assert_eq!(b.tokens(&1, t0), 11 * NANO);
        b.charge(&1, t0, 11 * NANO, true);
        assert_eq!(b.tokens(&1, t0), 0);
        assert_eq!(b.tokens(&1, t0 + Duration::from_millis(100)), NANO);
        assert_eq!(b.tokens(&1, t0 + Duration::from_secs(5)), 11 * NANO);
        assert!(b.idle.is_empty(), "busy peers are not idle");
        b.finish(&1);
        let full_at = t0 + Duration::from_millis(1100);
        assert_eq!(b.peers[&1].full_at, Some(full_at));
        b.forget_full(full_at - Duration::from_nanos(1));
        assert_eq!(b.peers.len(), 1);
        b.forget_full(full_at);
        assert!(b.peers.is_empty() && b.idle.is_empty());
    }

    #[test]
    fn bucket_arithmetic_survives_fabric_limits() {
        let config = Config::fabric();
        let t0 = epoch();
        let mut b: Buckets<u8> = Buckets::new(
            u128::from(config.peer_burst_blocks) * NANO,
            u128::from(config.peer_blocks_per_second),
        );
        b.charge(&1, t0, u128::from(u64::MAX) * NANO, false);
        assert_eq!(b.tokens(&1, t0), 0);
        let far = t0 + Duration::from_secs(u32::MAX.into());
        assert_eq!(b.tokens(&1, far), b.capacity);
        // Full again within a second: forgotten.
        b.forget_full(t0 + Duration::from_secs(1));
        assert!(b.peers.is_empty());
    }
}

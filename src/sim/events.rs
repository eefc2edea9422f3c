//! The simulator's queue of things due: earliest first, ties in the order
//! they were scheduled.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Events by `(instant, sequence)`, the sequence numbering them as they
/// are scheduled, so equal instants keep their scheduling order.
///
/// A binary heap of small keys over a slab of the events: a flood puts
/// millions of events through the queue, and a heap (or a B-tree) of the
/// events themselves moves them around on every insertion and removal.
/// A key is the instant in nanoseconds after an epoch and the sequence,
/// packed in one integer: one comparison instead of an `Instant`'s two
/// fields and the sequence's.
#[derive(Debug)]
pub(crate) struct Events<T> {
    epoch: Instant,
    heap: BinaryHeap<Reverse<Key>>,
    /// Each event with the instant its key stands for: kept, so that the
    /// key need not be turned back into an `Instant` (a `Timespec`'s
    /// arithmetic) on every step.
    slots: Vec<Option<(Instant, T)>>,
    /// Slots free for reuse.
    free: Vec<usize>,
    sequence: u64,
}

/// Bits of a key below the sequence: the event's slot. A slab of 2^24
/// events pending at once (gigabytes) is far beyond any run.
const SLOT_BITS: u32 = 24;
/// Bits of the sequence: 2^40 events scheduled in one run, far beyond its
/// step cap.
const SEQUENCE_BITS: u32 = 64 - SLOT_BITS;

/// `nanoseconds << 64 | sequence << 24 | slot`: one 16-byte integer, half
/// of a key and a separate slot, for the heap to move around. Keys are
/// unique (the sequence is), so the slot never decides the order.
type Key = u128;

impl<T> Events<T> {
    /// A queue of events at or after `epoch`.
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            sequence: 0,
        }
    }

    /// Schedules `event` at `at`, after everything already scheduled then.
    /// An instant before the epoch counts as the epoch (the simulator
    /// schedules none).
    pub(crate) fn push(&mut self, at: Instant, event: T) {
        self.sequence += 1;
        // 2^64 ns is 584 years: beyond any run's time cap.
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        let (nanos, at) = match u64::try_from(nanos) {
            // `at` itself, unless it is before the epoch.
            Ok(nanos) if at >= self.epoch => (nanos, at),
            // The instant the key stands for, as `instant` makes it.
            Ok(nanos) => (nanos, self.instant_of(nanos)),
            Err(_) => (u64::MAX, self.instant_of(u64::MAX)),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some((at, event));
                slot
            }
            None => {
                self.slots.push(Some((at, event)));
                self.slots.len() - 1
            }
        };
        assert!(
            self.sequence < 1 << SEQUENCE_BITS && slot < 1 << SLOT_BITS,
            "event queue beyond its key's bits"
        );
        let low = self.sequence << SLOT_BITS | slot as u64;
        self.heap
            .push(Reverse(u128::from(nanos) << 64 | u128::from(low)));
    }

    /// When the first event is due.
    pub(crate) fn first_at(&self) -> Option<Instant> {
        let &Reverse(key) = self.heap.peek()?;
        let (at, _) = self.slots.get(slot(key))?.as_ref()?;
        Some(*at)
    }

    /// Removes the first event.
    pub(crate) fn pop(&mut self) -> Option<(Instant, T)> {
        let Reverse(key) = self.heap.pop()?;
        let slot = slot(key);
        let event = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(event)
    }

    /// The instant `nanos` after the epoch.
    fn instant_of(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// The slot of `key`.
fn slot(key: Key) -> usize {
    (key as u64 & ((1 << SLOT_BITS) - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_ties_in_scheduling_order() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut events = Events::new(t0);
        for (at, id) in [(5, 'a'), (1, 'b'), (5, 'c'), (3, 'd'), (1, 'e')] {
            events.push(ms(at), id);
        }
        assert_eq!(events.first_at(), Some(ms(1)));
        let mut order = Vec::new();
        while let Some((at, id)) = events.pop() {
            order.push((at, id));
            if id == 'd' {
                // Slots are reused; order still holds.
                events.push(ms(4), 'f');
                events.push(ms(5), 'g');
            }
        }
        let expected = [
            (1, 'b'),
            (1, 'e'),
            (3, 'd'),
            (4, 'f'),
            (5, 'a'),
            (5, 'c'),
            (5, 'g'),
        ];
        assert_eq!(order, expected.map(|(at, id)| (ms(at), id)));
        assert_eq!(events.first_at(), None);
    }
}

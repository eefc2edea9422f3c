//! The simulator's queue of things due: earliest first, ties in the order
//! they were scheduled.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Events by `(instant, sequence)`, the sequence numbering them as they
/// are scheduled, so equal instants keep their scheduling order.
///
/// A binary heap of small keys over a slab of the events: a flood puts
/// millions of events through the queue, and a heap (or a B-tree) of the
/// events themselves moves them around on every insertion and removal.
#[derive(Debug)]
pub(crate) struct Events<T> {
    /// `(at, sequence, slot)`: sequences are unique, so the slot never
    /// decides the order.
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<T>>,
    /// Slots free for reuse.
    free: Vec<usize>,
    sequence: u64,
}

impl<T> Events<T> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            sequence: 0,
        }
    }

    /// Schedules `event` at `at`, after everything already scheduled then.
    pub(crate) fn push(&mut self, at: Instant, event: T) {
        self.sequence += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                self.slots.len() - 1
            }
        };
        self.heap.push(Reverse((at, self.sequence, slot)));
    }

    /// When the first event is due.
    pub(crate) fn first_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes the first event.
    pub(crate) fn pop(&mut self) -> Option<(Instant, T)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let event = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some((at, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_ties_in_scheduling_order() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut events = Events::new();
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

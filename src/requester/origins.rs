//! Who sent each payload held out of order.

use std::collections::VecDeque;

use super::Origin;

/// The sender of each payload in the reorder buffer, by its distance from
/// the next block to deliver. Held blocks lie within the window above that
/// block, so a ring of slots does what a map by block number did, without
/// its insertion and removal per block (a twelfth of the default preset's
/// cost per block).
///
/// `next` must follow the buffer's: [`take_next`](Self::take_next) on each
/// pop, [`rewind`](Self::rewind) on each rewind.
#[derive(Debug, Clone)]
pub(crate) struct Origins<P> {
    /// The block of the first slot: the buffer's next block.
    next: u64,
    /// One slot per block from `next`; the last one, if any, is filled.
    slots: VecDeque<Option<Origin<P>>>,
}

impl<P> Origins<P> {
    /// No origins, the next block being `next`.
    pub(crate) fn new(next: u64) -> Self {
        Self {
            next,
            slots: VecDeque::new(),
        }
    }

    /// Records who sent block `seq`, held from now on (`seq >= next`).
    pub(crate) fn insert(&mut self, seq: u64, origin: Origin<P>) {
        let Some(index) = self.index(seq) else {
            debug_assert!(false, "origin of block {seq} below {}", self.next);
            return;
        };
        if index < self.slots.len() {
            self.slots[index] = Some(origin);
        } else {
            self.slots.resize_with(index, || None);
            self.slots.push_back(Some(origin));
        }
    }

    /// Forgets who sent block `seq` (evicted from the buffer).
    pub(crate) fn remove(&mut self, seq: u64) {
        if let Some(slot) = self.index(seq).and_then(|index| self.slots.get_mut(index)) {
            *slot = None;
        }
        while self.slots.back().is_some_and(Option::is_none) {
            self.slots.pop_back();
        }
    }

    /// The buffer popped block `next`: who sent it, if recorded.
    pub(crate) fn take_next(&mut self) -> Option<Origin<P>> {
        self.next += 1;
        self.slots.pop_front().flatten()
    }

    /// The buffer's next block moved back to `seq`: the blocks from there
    /// to the old next are delivered again, and none of them is held.
    pub(crate) fn rewind(&mut self, seq: u64) {
        while self.next > seq {
            self.next -= 1;
            if !self.slots.is_empty() {
                self.slots.push_front(None);
            }
        }
    }

    /// The slot of block `seq`, if it is not below `next` (and, on a 32-bit
    /// target, not absurdly far above it).
    fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.next)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_buffer() {
        let mut origins = Origins::new(10);
        origins.insert(12, Origin::Peer("a"));
        origins.insert(11, Origin::Gossip);
        origins.insert(15, Origin::Peer("b"));
        origins.remove(15);
        assert_eq!(origins.slots.len(), 3, "trailing empty slots go");
        assert_eq!(origins.take_next(), None, "10 unknown");
        assert_eq!(origins.take_next(), Some(Origin::Gossip));
        origins.rewind(9);
        assert_eq!(origins.next, 9);
        assert_eq!(origins.take_next(), None);
        assert_eq!(origins.take_next(), None);
        assert_eq!(origins.take_next(), None);
        assert_eq!(origins.take_next(), Some(Origin::Peer("a")));
        assert!(origins.slots.is_empty());
        assert_eq!(origins.take_next(), None, "nothing held");
        assert_eq!(origins.next, 14);
    }
}

//! The requester's reorder buffer: payloads held out of order, with their
//! senders, in a ring of slots by distance from the next block to deliver.

use std::collections::VecDeque;

use super::Origin;
use crate::buffer::{payload_size, PushOutcome};
use crate::wire::gossip::Payload;

/// A payload held, with what delivery needs of it.
#[derive(Debug, Clone)]
pub(crate) struct Held<P> {
    pub(crate) payload: Payload,
    /// Who sent it.
    pub(crate) origin: Origin<P>,
    /// Its [`payload_size`], counted once.
    pub(crate) size: usize,
}

/// [`PayloadBuffer`](crate::PayloadBuffer)'s rules (the same bounds, the
/// same outcomes, the block at `next` always kept), over a ring instead of
/// a map by block number. Held blocks lie within the window above the next
/// block to deliver, so slot `i` holds block `next + i`: a push, a pop or a
/// lookup is an index, not a tree walk (the map's insertion and removal per
/// block were a sixth of the default preset's instructions per block). The
/// ring spans the blocks from `next` to the highest held, empty slots
/// included: at most `window_blocks` or `block_buffer` slots, the furthest
/// a requested or gossiped block lies above the committed height. Its last
/// slot, if any, is filled.
#[derive(Debug, Clone)]
pub(crate) struct ReorderBuffer<P> {
    next: u64,
    slots: VecDeque<Option<Held<P>>>,
    len: usize,
    bytes: usize,
    max_blocks: usize,
    max_bytes: usize,
}

impl<P> ReorderBuffer<P> {
    /// An empty buffer whose first pop will be block `next`.
    pub(crate) fn new(next: u64, max_blocks: usize, max_bytes: usize) -> Self {
        Self {
            next,
            slots: VecDeque::new(),
            len: 0,
            bytes: 0,
            max_blocks,
            max_bytes,
        }
    }

    /// Offers a payload from `origin`, as [`PayloadBuffer::push`](crate::PayloadBuffer::push).
    pub(crate) fn push(&mut self, payload: Payload, origin: Origin<P>) -> PushOutcome {
        let seq = payload.seq_num;
        let Some(index) = self.index(seq) else {
            return PushOutcome::Stale;
        };
        if seq == u64::MAX {
            return PushOutcome::TooHigh;
        }
        if self.slots.get(index).is_some_and(Option::is_some) {
            return PushOutcome::Duplicate;
        }
        let size = payload_size(&payload);
        let fits = self.len < self.max_blocks && self.bytes.saturating_add(size) <= self.max_bytes;
        if !fits && seq != self.next {
            return PushOutcome::Full;
        }
        self.bytes = self.bytes.saturating_add(size);
        self.len += 1;
        let held = Some(Held {
            payload,
            origin,
            size,
        });
        if index < self.slots.len() {
            self.slots[index] = held;
        } else {
            self.slots.resize_with(index, || None);
            self.slots.push_back(held);
        }
        PushOutcome::Kept
    }

    /// Takes the payload numbered `next`, if held, and advances `next`.
    pub(crate) fn pop(&mut self) -> Option<Held<P>> {
        if !self.slots.front().is_some_and(Option::is_some) {
            return None;
        }
        let held = self.slots.pop_front().flatten()?;
        self.len -= 1;
        self.bytes = self.bytes.saturating_sub(held.size);
        self.next += 1;
        Some(held)
    }

    /// The number of the next payload [`pop`](Self::pop) will return.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Payloads held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held (blocks and private data).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether block `seq` is held.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.slot(seq).is_some()
    }

    /// The highest block held.
    pub(crate) fn highest(&self) -> Option<u64> {
        let last = self.slots.len().checked_sub(1)?;
        Some(self.next + last as u64)
    }

    /// Takes out block `seq` (to make room for lower ones).
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Held<P>> {
        let held = self
            .index(seq)
            .and_then(|index| self.slots.get_mut(index))
            .and_then(Option::take)?;
        self.len -= 1;
        self.bytes = self.bytes.saturating_sub(held.size);
        while self.slots.back().is_some_and(Option::is_none) {
            self.slots.pop_back();
        }
        Some(held)
    }

    /// As [`PayloadBuffer::bytes_above`](crate::PayloadBuffer::bytes_above):
    /// the bytes held above `seq`, counted from the highest down and no
    /// further than `enough`.
    pub(crate) fn bytes_above(&self, seq: u64, enough: usize) -> usize {
        let Some(from) = seq.checked_add(1) else {
            return 0;
        };
        let first = self.index(from).unwrap_or(0).min(self.slots.len());
        let mut total = 0usize;
        for held in self.slots.range(first..).rev().flatten() {
            if total >= enough {
                break;
            }
            total = total.saturating_add(held.size);
        }
        total.min(enough)
    }

    /// The held block numbers in `from..=to`, ascending.
    pub(crate) fn stored_in(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        let from = from.max(self.next);
        let first = self.index(from).unwrap_or(0).min(self.slots.len());
        let end = self
            .index(to)
            .map_or(0, |last| last.saturating_add(1))
            .min(self.slots.len());
        let slots = self.slots.range(first..end.max(first));
        slots
            .zip(from..)
            .filter_map(|(held, seq)| held.as_ref().map(|_| seq))
    }

    /// Moves delivery back to `seq` (at most `next`): the blocks from there
    /// to the old `next` are delivered again; none of them is held.
    pub(crate) fn rewind(&mut self, seq: u64) {
        while self.next > seq {
            self.next -= 1;
            if !self.slots.is_empty() {
                self.slots.push_front(None);
            }
        }
    }

    /// The payload of block `seq`, if held.
    fn slot(&self, seq: u64) -> Option<&Held<P>> {
        self.slots.get(self.index(seq)?)?.as_ref()
    }

    /// The slot of block `seq`, if it is not below `next` (nor, on a 32-bit
    /// target, absurdly far above it).
    fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.next)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PayloadBuffer;
    use bytes::Bytes;

    fn payload(seq: u64, size: usize) -> Payload {
        Payload {
            seq_num: seq,
            data: Bytes::from(vec![0u8; size]),
            private_data: vec![],
        }
    }

    /// Every operation on a random sequence gives what `PayloadBuffer`
    /// gives, origins aside.
    #[test]
    fn behaves_as_the_payload_buffer() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let (next, max_blocks, max_bytes) =
                (rng.u64(0..5), rng.usize(1..12), rng.usize(1..400));
            let mut ring = ReorderBuffer::new(next, max_blocks, max_bytes);
            let mut map = PayloadBuffer::new(next, max_blocks, max_bytes);
            for _ in 0..300 {
                let seq = map.next().saturating_sub(2) + rng.u64(0..24);
                match rng.u8(0..6) {
                    0 | 1 => {
                        let size = rng.usize(0..60);
                        let kept = ring.push(payload(seq, size), Origin::Peer(seq));
                        assert_eq!(kept, map.push(payload(seq, size)));
                    }
                    2 => {
                        let popped = ring.pop().map(|h| (h.payload.seq_num, h.origin));
                        let expected = map.pop().map(|p| (p.seq_num, Origin::Peer(p.seq_num)));
                        assert_eq!(popped, expected);
                    }
                    3 => {
                        let removed = ring.remove(seq).map(|h| h.payload.seq_num);
                        assert_eq!(removed, map.remove(seq).map(|p| p.seq_num));
                    }
                    4 => {
                        let to = seq + rng.u64(0..8);
                        let ours: Vec<u64> = ring.stored_in(seq, to).collect();
                        assert_eq!(ours, map.stored_in(seq, to).collect::<Vec<_>>());
                        let enough = rng.usize(0..200);
                        assert_eq!(ring.bytes_above(seq, enough), map.bytes_above(seq, enough));
                    }
                    _ => {
                        let back = map.next().saturating_sub(rng.u64(0..3));
                        ring.rewind(back);
                        map.rewind(back);
                    }
                }
                assert_eq!(ring.next(), map.next());
                assert_eq!((ring.len(), ring.bytes()), (map.len(), map.bytes()));
                assert_eq!(ring.highest(), map.highest());
                assert_eq!(ring.contains(seq), map.contains(seq));
            }
        }
    }
}

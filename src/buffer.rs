//! [`PayloadBuffer`]: blocks in any order in, strictly consecutive blocks out.

use std::collections::BTreeMap;

use crate::wire::gossip::Payload;

/// The bytes a payload holds in memory: its block and its private data.
/// Saturating: `Bytes` clones of one buffer cost nothing to make, so a host
/// could hand in more than `usize::MAX` of them.
pub fn payload_size(payload: &Payload) -> usize {
    payload
        .private_data
        .iter()
        .fold(payload.data.len(), |total, p| total.saturating_add(p.len()))
}

/// What [`PayloadBuffer::push`] did with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// Stored; it will be popped in order.
    Kept,
    /// Its number is below [`PayloadBuffer::next`]: already delivered.
    Stale,
    /// A payload with this number is already stored: the first copy wins.
    Duplicate,
    /// Storing it would exceed the block or byte bound.
    Full,
    /// Its number is `u64::MAX`: no ledger height can follow it.
    TooHigh,
}

impl PushOutcome {
    /// Whether the buffer kept the payload.
    pub fn is_kept(self) -> bool {
        self == PushOutcome::Kept
    }
}

/// A reorder buffer for blocks: Fabric's `PayloadsBuffer`, bounded.
///
/// Payloads are pushed in any order and popped strictly in sequence from
/// [`next`](Self::next), each number at most once. The buffer holds at most
/// `max_blocks` payloads and `max_bytes` bytes, with one exception: the
/// payload numbered `next` is always kept, since popping it is what frees
/// room (refusing it could stall delivery for good). Pop it before pushing
/// more, or (after [`rewind`](Self::rewind)) the exception can repeat.
///
/// ```
/// use antientropy::{PayloadBuffer, wire::gossip::Payload};
/// let mut buffer = PayloadBuffer::new(5, 100, 1 << 20);
/// let block = |seq| Payload { seq_num: seq, ..Default::default() };
/// assert!(buffer.push(block(6)).is_kept());
/// assert!(buffer.pop().is_none()); // 5 is missing
/// assert!(buffer.push(block(5)).is_kept());
/// assert_eq!(buffer.pop().map(|p| p.seq_num), Some(5));
/// assert_eq!(buffer.pop().map(|p| p.seq_num), Some(6));
/// assert_eq!(buffer.next(), 7);
/// ```
#[derive(Debug, Clone)]
pub struct PayloadBuffer {
    next: u64,
    payloads: BTreeMap<u64, Payload>,
    bytes: usize,
    max_blocks: usize,
    max_bytes: usize,
}

impl PayloadBuffer {
    /// An empty buffer whose first pop will be block `next`.
    pub fn new(next: u64, max_blocks: usize, max_bytes: usize) -> Self {
        Self {
            next,
            payloads: BTreeMap::new(),
            bytes: 0,
            max_blocks,
            max_bytes,
        }
    }

    /// Offers a payload. Old and duplicate payloads are refused, so are
    /// payloads that do not fit (except the one numbered `next`).
    pub fn push(&mut self, payload: Payload) -> PushOutcome {
        let seq = payload.seq_num;
        if seq < self.next {
            return PushOutcome::Stale;
        }
        if seq == u64::MAX {
            return PushOutcome::TooHigh;
        }
        if self.payloads.contains_key(&seq) {
            return PushOutcome::Duplicate;
        }
        let size = payload_size(&payload);
        let fits = self.payloads.len() < self.max_blocks
            && self.bytes.saturating_add(size) <= self.max_bytes;
        if !fits && seq != self.next {
            return PushOutcome::Full;
        }
        self.bytes = self.bytes.saturating_add(size);
        self.payloads.insert(seq, payload);
        PushOutcome::Kept
    }

    /// Takes the payload numbered `next`, if present, and advances `next`.
    pub fn pop(&mut self) -> Option<Payload> {
        let payload = self.payloads.remove(&self.next)?;
        self.bytes = self.bytes.saturating_sub(payload_size(&payload));
        self.next += 1;
        Some(payload)
    }

    /// The number of the next payload [`pop`](Self::pop) will return.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Payloads stored.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Bytes stored (blocks and private data).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a payload with this number is stored.
    pub fn contains(&self, seq: u64) -> bool {
        self.payloads.contains_key(&seq)
    }

    /// The highest stored payload number.
    pub fn highest(&self) -> Option<u64> {
        self.payloads.last_key_value().map(|(seq, _)| *seq)
    }

    /// Takes out the payload numbered `seq` (to make room for lower ones).
    pub fn remove(&mut self, seq: u64) -> Option<Payload> {
        let payload = self.payloads.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(payload_size(&payload));
        Some(payload)
    }

    /// Bytes of the stored payloads numbered above `seq`, counted from
    /// the highest down and no further than `enough`: the answer is
    /// `min(their total, enough)`, at the cost of the payloads counted.
    pub fn bytes_above(&self, seq: u64, enough: usize) -> usize {
        let Some(from) = seq.checked_add(1) else {
            return 0;
        };
        let mut total = 0usize;
        for (_, payload) in self.payloads.range(from..).rev() {
            if total >= enough {
                break;
            }
            total = total.saturating_add(payload_size(payload));
        }
        total.min(enough)
    }

    /// The stored payload numbers in `from..=to`, ascending.
    pub fn stored_in(&self, from: u64, to: u64) -> impl Iterator<Item = u64> + '_ {
        self.payloads.range(from..=to).map(|(seq, _)| *seq)
    }

    /// Moves delivery back to `seq` (the host rejected a delivered block, so
    /// it and the ones after it must be delivered again). Stored payloads,
    /// all above the old `next`, stay. Returns false, changing nothing, if
    /// `seq` is above `next`.
    pub fn rewind(&mut self, seq: u64) -> bool {
        if seq > self.next {
            return false;
        }
        self.next = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn payload(seq: u64, size: usize) -> Payload {
        Payload {
            seq_num: seq,
            data: Bytes::from(vec![0u8; size]),
            private_data: vec![],
        }
    }

    // Fabric's TestNewPayloadsBuffer and TestPayloadsBufferImpl_Push.
    #[test]
    fn push_refuses_old_and_keeps_next() {
        let mut b = PayloadBuffer::new(10, 100, 1 << 20);
        assert_eq!(b.next(), 10);
        assert_eq!(b.push(payload(9, 1)), PushOutcome::Stale);
        assert_eq!(b.push(payload(10, 1)), PushOutcome::Kept);
        assert_eq!(b.next(), 10, "push does not advance next");
        assert_eq!(b.len(), 1);
    }

    // Fabric's TestPayloadsBufferImpl_ConcurrentPush: first copy wins.
    #[test]
    fn first_copy_wins() {
        let mut b = PayloadBuffer::new(1, 100, 1 << 20);
        assert!(b.push(payload(3, 1)).is_kept());
        assert_eq!(b.push(payload(3, 2)), PushOutcome::Duplicate);
        assert_eq!(b.len(), 1);
        assert_eq!(b.bytes(), 1);
    }

    // Fabric's TestPayloadsBufferImpl_Interleave: pops are consecutive only.
    #[test]
    fn pops_only_consecutive() {
        let mut b = PayloadBuffer::new(1, 100, 1 << 20);
        assert!(b.pop().is_none());
        b.push(payload(3, 1));
        b.push(payload(1, 1));
        assert_eq!(b.pop().unwrap().seq_num, 1);
        assert!(b.pop().is_none(), "2 is missing");
        b.push(payload(2, 1));
        assert_eq!(b.pop().unwrap().seq_num, 2);
        assert_eq!(b.pop().unwrap().seq_num, 3);
        assert!(b.pop().is_none());
        assert_eq!((b.len(), b.bytes(), b.next()), (0, 0, 4));
    }

    #[test]
    fn bounded_in_blocks_and_bytes_but_next_always_fits() {
        let mut b = PayloadBuffer::new(0, 2, 100);
        assert!(b.push(payload(5, 10)).is_kept());
        assert!(b.push(payload(6, 10)).is_kept());
        assert_eq!(b.push(payload(7, 10)), PushOutcome::Full);
        assert!(b.push(payload(0, 10)).is_kept(), "next is never refused");
        let mut b = PayloadBuffer::new(0, 100, 100);
        assert!(b.push(payload(3, 60)).is_kept());
        assert_eq!(b.push(payload(4, 60)), PushOutcome::Full);
        assert_eq!(b.bytes(), 60);
    }

    #[test]
    fn highest_and_remove_free_room() {
        let mut b = PayloadBuffer::new(0, 10, 100);
        b.push(payload(4, 10));
        b.push(payload(9, 20));
        assert_eq!(b.highest(), Some(9));
        assert_eq!(b.remove(9).map(|p| p.seq_num), Some(9));
        assert_eq!((b.highest(), b.bytes(), b.len()), (Some(4), 10, 1));
        assert!(b.remove(9).is_none());
    }

    #[test]
    fn the_last_u64_is_refused() {
        let mut b = PayloadBuffer::new(u64::MAX - 1, 10, 1000);
        assert!(b.push(payload(u64::MAX - 1, 1)).is_kept());
        assert_eq!(b.push(payload(u64::MAX, 1)), PushOutcome::TooHigh);
        assert_eq!(b.pop().unwrap().seq_num, u64::MAX - 1);
        assert_eq!(b.next(), u64::MAX);
        assert!(b.pop().is_none());
    }

    #[test]
    fn rewind_redelivers_and_keeps_stored() {
        let mut b = PayloadBuffer::new(0, 10, 1000);
        b.push(payload(0, 5));
        b.push(payload(3, 5));
        assert_eq!(b.pop().unwrap().seq_num, 0);
        assert!(!b.rewind(2), "cannot skip forward");
        assert!(b.rewind(0));
        assert_eq!(b.next(), 0);
        assert!(
            b.push(payload(0, 5)).is_kept(),
            "the rejected number is wanted again"
        );
        assert!(b.contains(3));
        assert_eq!(b.bytes(), 10);
    }
}

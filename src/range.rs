//! Inclusive block ranges, as Fabric's state requests use them.

use std::fmt;

/// A non-empty inclusive range of block numbers, `start..=end`: the unit of a
/// state request. Fabric's requests and logs disagree on inclusivity (its
/// logs print half-open ranges); on the wire both ends are inclusive, and so
/// is this type.
///
/// ```
/// use antientropy::SeqRange;
///
/// let range = SeqRange::new(5, 15).unwrap();
/// assert_eq!((range.start(), range.end(), range.len()), (5, 15, 11));
/// assert!(range.contains(15) && !range.contains(16));
/// assert!(range.overlaps(&SeqRange::single(10)));
/// assert_eq!(range.to_string(), "[5, 15]");
/// assert_eq!(SeqRange::new(15, 5), None); // never empty
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqRange {
    start: u64,
    end: u64,
}

impl SeqRange {
    /// The range `start..=end`, or `None` if `start > end`.
    pub const fn new(start: u64, end: u64) -> Option<Self> {
        if start > end {
            None
        } else {
            Some(Self { start, end })
        }
    }

    /// The range of one block.
    pub const fn single(seq: u64) -> Self {
        Self {
            start: seq,
            end: seq,
        }
    }

    /// The first block number.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The last block number (inclusive).
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// The number of blocks, saturating at `u64::MAX` for `0..=u64::MAX`.
    pub const fn len(&self) -> u64 {
        (self.end - self.start).saturating_add(1)
    }

    /// Always false: a `SeqRange` holds at least one block.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether `seq` lies in the range.
    pub const fn contains(&self, seq: u64) -> bool {
        self.start <= seq && seq <= self.end
    }

    /// Whether the two ranges share a block.
    pub const fn overlaps(&self, other: &SeqRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_reversed_and_counts_inclusively() {
        assert_eq!(SeqRange::new(10, 5), None);
        let range = SeqRange::new(1, 11).unwrap();
        assert_eq!(range.len(), 11);
        assert!(range.contains(1) && range.contains(11) && !range.contains(12));
        assert_eq!(SeqRange::new(0, u64::MAX).unwrap().len(), u64::MAX);
        assert_eq!(range.to_string(), "[1, 11]");
    }

    #[test]
    fn overlap_is_symmetric_and_inclusive() {
        let a = SeqRange::new(1, 5).unwrap();
        let b = SeqRange::new(5, 9).unwrap();
        let c = SeqRange::new(6, 9).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
    }
}

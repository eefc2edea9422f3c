//! The table of outstanding requests: by nonce for matching responses, by
//! start for planning disjoint ranges.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::range::SeqRange;

/// Where one send of a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptState {
    /// Sent; its peer's in-flight slot is taken until it ends.
    Waiting,
    /// Ended without an answer in time; a late answer is still accepted.
    TimedOut,
    /// Ended with an unusable answer, or the peer left the channel.
    Failed,
}

/// One send of a request to one peer.
#[derive(Debug, Clone)]
pub(crate) struct Attempt<P> {
    pub(crate) peer: P,
    pub(crate) sent_at: Instant,
    /// `None` if the timeout is too long to represent: never expires.
    pub(crate) deadline: Option<Instant>,
    pub(crate) state: AttemptState,
}

/// A range asked for under one nonce, possibly of several peers in turn
/// (retries) or at once (a hedge).
#[derive(Debug, Clone)]
pub(crate) struct Request<P> {
    pub(crate) range: SeqRange,
    /// Every send, oldest first; at most `max_retries + 1` plus the hedges.
    pub(crate) attempts: Vec<Attempt<P>>,
    /// Hedges sent: they do not count against `max_retries`.
    pub(crate) hedges: u32,
    /// No hedge before this (none was possible at the last try).
    pub(crate) hedge_not_before: Option<Instant>,
}

impl<P: PartialEq> Request<P> {
    /// Sends that count against `max_retries`: all but the hedges.
    pub(crate) fn counted_sends(&self) -> u32 {
        self.attempts.len() as u32 - self.hedges
    }

    pub(crate) fn waiting(&self) -> impl Iterator<Item = &Attempt<P>> {
        self.attempts
            .iter()
            .filter(|attempt| attempt.state == AttemptState::Waiting)
    }

    /// The latest send to `peer`.
    pub(crate) fn attempt_to(&mut self, peer: &P) -> Option<&mut Attempt<P>> {
        self.attempts
            .iter_mut()
            .rev()
            .find(|attempt| &attempt.peer == peer)
    }
}

/// Outstanding requests. Their ranges are disjoint.
#[derive(Debug, Clone)]
pub(crate) struct Requests<P> {
    by_nonce: BTreeMap<u64, Request<P>>,
    by_start: BTreeMap<u64, u64>,
    blocks: u64,
}

impl<P> Default for Requests<P> {
    fn default() -> Self {
        Self {
            by_nonce: BTreeMap::new(),
            by_start: BTreeMap::new(),
            blocks: 0,
        }
    }
}

impl<P> Requests<P> {
    pub(crate) fn insert(&mut self, nonce: u64, request: Request<P>) {
        debug_assert!(self.covering(request.range.start()).is_none());
        self.blocks += request.range.len();
        self.by_start.insert(request.range.start(), nonce);
        self.by_nonce.insert(nonce, request);
    }

    pub(crate) fn remove(&mut self, nonce: u64) -> Option<Request<P>> {
        let request = self.by_nonce.remove(&nonce)?;
        self.by_start.remove(&request.range.start());
        self.blocks -= request.range.len();
        Some(request)
    }

    pub(crate) fn get(&self, nonce: u64) -> Option<&Request<P>> {
        self.by_nonce.get(&nonce)
    }

    pub(crate) fn get_mut(&mut self, nonce: u64) -> Option<&mut Request<P>> {
        self.by_nonce.get_mut(&nonce)
    }

    pub(crate) fn contains(&self, nonce: u64) -> bool {
        self.by_nonce.contains_key(&nonce)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_nonce.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_nonce.is_empty()
    }

    /// Blocks covered by outstanding requests.
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &Request<P>)> {
        self.by_nonce.iter()
    }

    pub(crate) fn nonces(&self) -> Vec<u64> {
        self.by_nonce.keys().copied().collect()
    }

    /// The request whose range holds `seq`.
    pub(crate) fn covering(&self, seq: u64) -> Option<(u64, &Request<P>)> {
        let (_, nonce) = self.by_start.range(..=seq).next_back()?;
        let request = &self.by_nonce[nonce];
        request.range.contains(seq).then_some((*nonce, request))
    }

    /// The lowest start of an outstanding range above `seq`.
    pub(crate) fn next_start_after(&self, seq: u64) -> Option<u64> {
        let after = seq.checked_add(1)?;
        self.by_start.range(after..).next().map(|(start, _)| *start)
    }
}

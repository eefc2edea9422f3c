//! The table of outstanding requests: by id, by the nonce of each send for
//! matching responses, and by start for planning disjoint ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::range::SeqRange;

/// Where one send of a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptState {
    /// Sent; its peer's in-flight slot is taken until it ends.
    Waiting,
    /// Ended without an answer in time; a late answer is still accepted.
    TimedOut,
    /// Answered with nothing usable, or the peer left the channel: a
    /// further answer to it (a duplicate) is ignored.
    Failed,
}

/// One send of a request to one peer, under its own nonce: an answer is
/// matched to the very send it answers, so a stale or duplicated answer
/// cannot count against a later send, and its round trip is measured from
/// the right instant (Karn).
#[derive(Debug, Clone)]
pub(crate) struct Attempt<P> {
    pub(crate) nonce: u64,
    pub(crate) peer: P,
    /// The blocks this send asked for: its request's range when sent,
    /// which a split may since have narrowed (see `split_first_flight`).
    /// Its answer may hold any of them, and its peer's count of blocks in
    /// flight counts them.
    pub(crate) asked: SeqRange,
    pub(crate) sent_at: Instant,
    /// `None` if the timeout is too long to represent: never expires.
    pub(crate) deadline: Option<Instant>,
    pub(crate) state: AttemptState,
    /// Its deadline was pushed back once because no peer had answered
    /// anything yet (see `expire`).
    pub(crate) extended: bool,
    /// Its place among all our sends (the machine's count of sends when it
    /// was made): a responder answers a peer's requests in this order.
    pub(crate) order: u64,
    /// When an answer to a later send to the same peer came first: the
    /// request or its answer was probably lost.
    pub(crate) overtaken_at: Option<Instant>,
    /// It timed out though its peer answered a later send
    /// (`Silence::Lost`): a loss on a path that works, which costs the
    /// request half a retry.
    pub(crate) lost: bool,
    /// It was a hedge: not counted against `max_retries`.
    pub(crate) hedge: bool,
}

/// A range asked for, possibly of several peers in turn (retries) or at
/// once (hedges).
#[derive(Debug, Clone)]
pub(crate) struct Request<P> {
    pub(crate) range: SeqRange,
    /// Every send, oldest first; at most `2 · (max_retries + 1)` plus the
    /// hedges (see `counted_sends`).
    pub(crate) attempts: Vec<Attempt<P>>,
    /// No hedge, nor retry once the hedges are spent, before this (none
    /// was possible at the last try).
    pub(crate) hedge_not_before: Option<Instant>,
    /// A hedge went to a peer already working on it (a tail loss probe,
    /// see `hedge`): at most one per request.
    pub(crate) probed: bool,
}

impl<P: PartialEq> Request<P> {
    /// `due`, or later if a hedge found no peer free (`hedge_not_before`).
    pub(crate) fn held_back(&self, due: Instant) -> Instant {
        self.hedge_not_before
            .map_or(due, |not_before| due.max(not_before))
    }

    /// Hedges sent: they do not count against `max_retries`.
    pub(crate) fn hedges(&self) -> u32 {
        self.attempts.iter().filter(|attempt| attempt.hedge).count() as u32
    }

    /// Sends that count against `max_retries`: all but the hedges, those
    /// lost on a path that works at half (rounded down). A range whose
    /// sends are lost at random is not given up after a few (at 35 % loss
    /// a send and its answer both arrive 42 % of the time); one whose sends
    /// peers fail otherwise is given up as before.
    pub(crate) fn counted_sends(&self) -> u32 {
        let (mut whole, mut lost) = (0u32, 0u32);
        for attempt in self.attempts.iter().filter(|attempt| !attempt.hedge) {
            if attempt.lost {
                lost += 1;
            } else {
                whole += 1;
            }
        }
        whole + lost / 2
    }

    pub(crate) fn waiting(&self) -> impl Iterator<Item = &Attempt<P>> {
        self.attempts
            .iter()
            .filter(|attempt| attempt.state == AttemptState::Waiting)
    }

    /// The send that used `nonce`.
    pub(crate) fn attempt_with(&mut self, nonce: u64) -> Option<&mut Attempt<P>> {
        self.attempts
            .iter_mut()
            .find(|attempt| attempt.nonce == nonce)
    }
}

/// Outstanding requests. Their ranges are disjoint; every nonce of every
/// send of theirs is unique and answerable until the request ends.
#[derive(Debug, Clone)]
pub(crate) struct Requests<P> {
    by_id: BTreeMap<u64, Request<P>>,
    /// Start of each range → (its end, its request): planning asks whether
    /// a block is requested several times per event, answered without
    /// reaching the request itself.
    by_start: BTreeMap<u64, (u64, u64)>,
    by_nonce: BTreeMap<u64, u64>,
    /// Requests with no send waiting (new, or every send ended): what
    /// `resend_idle` retries, found without walking every request on each
    /// event.
    idle: BTreeSet<u64>,
    blocks: u64,
    next_id: u64,
    /// No waiting send has a deadline before this: exact after
    /// [`recompute_earliest`](Self::recompute_earliest), a lower bound once
    /// sends are answered. So a timer poll and an event without a due
    /// deadline scan no request (with 512 in flight that scan was most of
    /// the machine's cost per block; an answer still walks the requests
    /// queued behind it at its peer).
    earliest: Option<Instant>,
}

impl<P> Default for Requests<P> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_start: BTreeMap::new(),
            by_nonce: BTreeMap::new(),
            idle: BTreeSet::new(),
            blocks: 0,
            next_id: 0,
            earliest: None,
        }
    }
}

impl<P> Requests<P> {
    /// Adds a request (with no send yet) and returns its id.
    pub(crate) fn insert(&mut self, range: SeqRange) -> u64 {
        debug_assert!(self.covering(range.start()).is_none());
        let id = self.next_id;
        self.next_id += 1;
        self.blocks += range.len();
        self.by_start.insert(range.start(), (range.end(), id));
        self.idle.insert(id);
        self.by_id.insert(
            id,
            Request {
                range,
                attempts: Vec::new(),
                hedge_not_before: None,
                probed: false,
            },
        );
        id
    }

    /// Narrows request `id` to the blocks below `at` and makes the rest a
    /// request of its own (with no send yet), whose id it returns. Its
    /// sends keep what they asked (`Attempt::asked`).
    pub(crate) fn split(&mut self, id: u64, at: u64) -> Option<u64> {
        let request = self.by_id.get_mut(&id)?;
        let (start, end) = (request.range.start(), request.range.end());
        let (Some(kept), Some(rest)) = (
            SeqRange::new(start, at.checked_sub(1)?),
            SeqRange::new(at, end),
        ) else {
            return None;
        };
        request.range = kept;
        self.by_start.insert(start, (kept.end(), id));
        self.blocks -= rest.len();
        Some(self.insert(rest))
    }

    /// Narrows request `id` to its blocks up to `end`; the rest is no longer
    /// requested. Its sends keep what they asked (`Attempt::asked`).
    pub(crate) fn narrow(&mut self, id: u64, end: u64) -> Option<SeqRange> {
        let request = self.by_id.get_mut(&id)?;
        let start = request.range.start();
        let kept = SeqRange::new(start, end).filter(|kept| kept.end() < request.range.end())?;
        self.blocks -= request.range.len() - kept.len();
        request.range = kept;
        self.by_start.insert(start, (end, id));
        Some(kept)
    }

    /// Records a send of request `id`.
    pub(crate) fn push_attempt(&mut self, id: u64, attempt: Attempt<P>) {
        if let Some(request) = self.by_id.get_mut(&id) {
            self.by_nonce.insert(attempt.nonce, id);
            if attempt.state == AttemptState::Waiting {
                self.idle.remove(&id);
            }
            if let Some(deadline) = attempt.deadline {
                lower_to(&mut self.earliest, deadline);
            }
            request.attempts.push(attempt);
        }
    }

    /// No waiting send's deadline is before this (it may be earlier than
    /// the earliest one: see [`recompute_earliest`](Self::recompute_earliest)).
    pub(crate) fn earliest_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// A waiting send's deadline was set, or brought forward, to
    /// `deadline`: the earliest stays a lower bound.
    pub(crate) fn deadline_set(&mut self, deadline: Instant) {
        lower_to(&mut self.earliest, deadline);
    }

    /// Makes [`earliest_deadline`](Self::earliest_deadline) exact again.
    pub(crate) fn recompute_earliest(&mut self)
    where
        P: PartialEq,
    {
        self.earliest = self
            .by_id
            .values()
            .flat_map(|request| request.waiting().filter_map(|attempt| attempt.deadline))
            .min();
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Request<P>> {
        let request = self.by_id.remove(&id)?;
        self.by_start.remove(&request.range.start());
        self.idle.remove(&id);
        for attempt in &request.attempts {
            self.by_nonce.remove(&attempt.nonce);
        }
        self.blocks -= request.range.len();
        if self.by_id.is_empty() {
            self.earliest = None;
        }
        Some(request)
    }

    /// Ends the send of request `id` that used `nonce`, as `state` says
    /// (timed out, failed or cancelled).
    pub(crate) fn end_send(&mut self, id: u64, nonce: u64, state: AttemptState)
    where
        P: PartialEq,
    {
        debug_assert_ne!(state, AttemptState::Waiting);
        let Some(request) = self.by_id.get_mut(&id) else {
            return;
        };
        if let Some(attempt) = request.attempt_with(nonce) {
            attempt.state = state;
        }
        if request.waiting().next().is_none() {
            self.idle.insert(id);
        }
    }

    /// The requests with no send waiting, in id order.
    pub(crate) fn idle(&self) -> impl Iterator<Item = u64> + '_
    where
        P: PartialEq,
    {
        debug_assert!(self
            .by_id
            .iter()
            .all(|(id, r)| r.waiting().next().is_none() == self.idle.contains(id)));
        self.idle.iter().copied()
    }

    /// Whether no request has a send waiting.
    pub(crate) fn all_idle(&self) -> bool {
        self.idle.len() == self.by_id.len()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Request<P>> {
        self.by_id.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Request<P>> {
        self.by_id.get_mut(&id)
    }

    /// The request one of whose sends used `nonce`.
    pub(crate) fn with_nonce(&self, nonce: u64) -> Option<u64> {
        self.by_nonce.get(&nonce).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Blocks covered by outstanding requests.
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &Request<P>)> {
        self.by_id.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Request<P>> {
        self.by_id.values_mut()
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }

    /// The request whose range holds `seq`.
    pub(crate) fn covering(&self, seq: u64) -> Option<(u64, &Request<P>)> {
        let (_, &(end, id)) = self.by_start.range(..=seq).next_back()?;
        (seq <= end).then(|| (id, &self.by_id[&id]))
    }

    /// The end of the range that holds `seq`, if one does.
    pub(crate) fn covering_end(&self, seq: u64) -> Option<u64> {
        let (_, &(end, _)) = self.by_start.range(..=seq).next_back()?;
        (seq <= end).then_some(end)
    }

    /// The lowest start of an outstanding range above `seq`.
    pub(crate) fn next_start_after(&self, seq: u64) -> Option<u64> {
        let after = seq.checked_add(1)?;
        self.by_start.range(after..).next().map(|(start, _)| *start)
    }
}

/// `earliest` lowered to `deadline` if that is earlier (or it was unset).
fn lower_to(earliest: &mut Option<Instant>, deadline: Instant) {
    *earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(nonce: u64, lost: bool) -> Attempt<&'static str> {
        Attempt {
            nonce,
            peer: "p",
            asked: SeqRange::new(1, 11).unwrap(),
            sent_at: crate::test_epoch(),
            deadline: None,
            state: AttemptState::TimedOut,
            extended: false,
            order: nonce,
            overtaken_at: None,
            lost,
            hedge: false,
        }
    }

    fn request(attempts: Vec<Attempt<&'static str>>) -> Request<&'static str> {
        Request {
            range: SeqRange::new(1, 11).unwrap(),
            attempts,
            hedge_not_before: None,
            probed: false,
        }
    }

    #[test]
    fn sends_lost_on_a_working_path_count_half() {
        // Four sends lost at random count as two; one that timed out
        // otherwise counts whole.
        let lost = (0..4).map(|n| attempt(n, true));
        let sends = request(lost.chain([attempt(4, false)]).collect());
        assert_eq!(sends.counted_sends(), 3);
        // Hedges count nothing, lost or not (a lost hedge subtracted from
        // the count wrapped it, and gave the range up at once), and take
        // nothing off the sends that count.
        let hedge = |nonce, lost| Attempt {
            hedge: true,
            ..attempt(nonce, lost)
        };
        assert_eq!(request(vec![hedge(0, true)]).counted_sends(), 0);
        let mixed = vec![
            attempt(0, true),
            attempt(1, true),
            hedge(2, true),
            hedge(3, false),
        ];
        assert_eq!(request(mixed).counted_sends(), 1);
    }
}

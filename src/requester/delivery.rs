//! Delivery to the host, the gossip path, and the host's verdicts.

use std::time::Instant;

use super::reorder::Held;
use super::{
    Action, AntiEntropy, BlockBackoff, Delivered, EventError, GiveUpReason, Origin,
    BASE_BLOCK_BACKOFF, MAX_BLOCK_BACKOFF,
};
use crate::buffer::payload_size;
use crate::config::PeerSelection;
use crate::range::SeqRange;
use crate::wire::gossip::Payload;

impl<P: Clone + Ord + std::fmt::Debug> AntiEntropy<P> {
    /// Hands every consecutive payload to the host.
    pub(super) fn deliver(&mut self) {
        while let Some(Held {
            payload,
            origin,
            size,
        }) = self.buffer.pop()
        {
            let seq = payload.seq_num;
            let size = size as u64;
            self.uncommitted.push_back(Delivered {
                seq,
                origin: origin.clone(),
                size,
                payload: payload.clone(),
            });
            self.uncommitted_bytes += size;
            self.stats.delivered += 1;
            self.actions.push_back(Action::AddPayload {
                payload,
                from: origin,
            });
        }
    }

    /// Fabric's non-blocking path: kept only within
    /// `[height, height + block_buffer)` of the committed height (Fabric
    /// compares with the ledger height too), so gossip alone never holds more
    /// than `block_buffer` blocks ahead of the ledger; older or duplicate
    /// blocks are dropped without error.
    pub(super) fn on_gossip_payload(&mut self, payload: Payload) {
        let seq = payload.seq_num;
        if seq < self.buffer.next() {
            self.stats.ignored.duplicate_payloads += 1;
            return;
        }
        if seq - self.committed >= self.config.block_buffer {
            self.stats.ignored.gossip_outside_window += 1;
            return;
        }
        let size = payload_size(&payload) as u64;
        self.accept_payload(payload, size, Origin::Gossip);
        self.gossiped.push(seq);
    }

    pub(super) fn on_committed(&mut self, height: u64) -> Result<(), EventError> {
        let (low, high) = (self.committed, self.buffer.next());
        if height < low || height > high {
            return Err(EventError::CommittedOutOfRange { height, low, high });
        }
        while self.uncommitted.front().is_some_and(|d| d.seq < height) {
            if let Some(done) = self.uncommitted.pop_front() {
                self.uncommitted_bytes -= done.size;
            }
        }
        self.committed = height;
        // The committed blocks are fixed: their senders' rejected copies no
        // longer hold their strikes up.
        let kept = self.rejected_by.split_off(&height);
        for sender in std::mem::replace(&mut self.rejected_by, kept)
            .into_values()
            .flatten()
        {
            if let Some(peer) = self.peers.get_mut(&sender) {
                peer.unfixed_rejections = peer.unfixed_rejections.saturating_sub(1);
            }
        }
        self.backoffs = self.backoffs.split_off(&height);
        Ok(())
    }

    /// Whether every dependable peer holding block `seq` sent a bad copy
    /// of it (scored selection only: Fabric's preset counts tries). Then
    /// asking again only waits out the back-off for another bad copy, and
    /// the host hears at once that the block is stuck: counting rejections
    /// alone, one bad everywhere took six back-offs, 0.5 s doubling (wild
    /// seed 6 508: the give-up at 90 s, or at 23.6 s where a timeout
    /// exhausted the range's tries first). A benched or doubted holder
    /// counts for none: if it holds the only good copy, the round ends and
    /// the next one fetches it, a `check_interval` later; counting every
    /// holder that answers gave up too rarely (12 000 wild clusters 6–8 %
    /// slower).
    fn no_good_copy_left(&self, now: Instant, seq: u64) -> bool {
        if self.config.peer_selection != PeerSelection::Scored {
            return false;
        }
        let Some(rejecters) = self.rejected_by.get(&seq) else {
            return false;
        };
        !self.peers.iter().any(|(id, peer)| {
            peer.covers(seq, now) && !rejecters.contains(id) && peer.dependable(now)
        })
    }

    pub(super) fn on_rejected(&mut self, now: Instant, seq: u64) -> Result<(), EventError> {
        if seq < self.committed || seq >= self.buffer.next() {
            return Err(EventError::NotAwaitingVerdict { seq });
        }
        self.stats.rejected += 1;
        let position = self.uncommitted.iter().position(|d| d.seq == seq);
        if let Some(Delivered {
            origin: Origin::Peer(sender),
            ..
        }) = position.and_then(|i| self.uncommitted.get(i))
        {
            let sender = sender.clone();
            let peers = self.rejected_by.entry(seq).or_default();
            let first_time = !peers.contains(&sender);
            if first_time {
                peers.push(sender.clone());
            }
            if let Some(peer) = self.peers.get_mut(&sender) {
                peer.stats.rejected_blocks += 1;
                emit!(DEBUG, peer = ?sender, seq, "block rejected by the host");
                if first_time {
                    peer.unfixed_rejections += 1;
                }
                peer.failed(now, 2, self.config.peer_selection);
            }
        }
        // Each rejection doubles the wait before the block is fetched again
        // from a peer that sent a bad copy (a new peer is asked at once).
        let backoff = self.backoffs.entry(seq).or_insert(BlockBackoff {
            times: 0,
            not_before: now,
        });
        backoff.times = backoff.times.saturating_add(1);
        let wait = BASE_BLOCK_BACKOFF
            .saturating_mul(1 << backoff.times.saturating_sub(1).min(16))
            .min(MAX_BLOCK_BACKOFF);
        backoff.not_before = now.checked_add(wait).unwrap_or(now);
        let times = backoff.times;
        // The host drops what it holds from `seq` on, and so do we,
        // including deliveries not yet drained; but the blocks after `seq`
        // were never judged: those from another source go back to the
        // buffer, to be delivered again once a good `seq` is in. (Dropped,
        // a bad block at the commit point cost a refetch of the whole window
        // behind it: hostile seed 9 received 112.5 MB for 65.6 MB of
        // blocks, 69.9 MB now.) The rejected source's, and
        // those of any peer with a rejected block not committed since, are
        // fetched again.
        let rejected_source = position
            .and_then(|i| self.uncommitted.get(i))
            .map(|d| d.origin.clone());
        let mut undelivered = Vec::new();
        while self.uncommitted.back().is_some_and(|d| d.seq >= seq) {
            if let Some(dropped) = self.uncommitted.pop_back() {
                self.uncommitted_bytes -= dropped.size;
                let suspect = Some(&dropped.origin) == rejected_source.as_ref()
                    || matches!(&dropped.origin, Origin::Peer(peer)
                        if self.rejected_by.values().any(|senders| senders.contains(peer)));
                if dropped.seq > seq && !suspect {
                    undelivered.push((dropped.payload, dropped.size, dropped.origin));
                }
            }
        }
        // Withdrawn before the host saw them: not delivered after all.
        let queued = self.actions.len();
        self.actions.retain(|action| {
            !matches!(action, Action::AddPayload { payload, .. } if payload.seq_num >= seq)
        });
        self.stats.delivered -= (queued - self.actions.len()) as u64;
        self.buffer.rewind(seq);
        self.uncover(seq);
        // Lowest first: if the window is full, the highest are evicted.
        for (payload, size, origin) in undelivered.into_iter().rev() {
            self.accept_payload(payload, size, origin);
        }
        // Not while a request for it is still out: that may bring a good
        // copy, and a range given up must not be asked (the fuzz harness
        // found both rules giving up with one out; the next bad copy
        // decides instead).
        let asked = self.requests.covering(seq).is_some();
        if !asked
            && (times > self.config.max_retries || (times >= 2 && self.no_good_copy_left(now, seq)))
        {
            // As many bad copies as a range has sends, or a second one
            // with every dependable holder having sent one (a single bad
            // copy may be a glitch the same peer's next copy fixes): give
            // the round up, as Fabric does after its four tries; the
            // back-off keeps growing.
            let range = SeqRange::single(seq);
            self.give_up(now, range, GiveUpReason::BlockRejected { seq, times });
        } else if self.round_end.is_none() {
            self.next_round_at = None;
            self.start_round(now);
        }
        Ok(())
    }
}

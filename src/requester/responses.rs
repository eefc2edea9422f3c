//! State responses: matching them to requests and taking their payloads.

use std::time::Instant;

use super::requests::AttemptState;
use super::{AntiEntropy, Origin, ResponseError};
use crate::buffer::{payload_size, PushOutcome};
use crate::wire::block_number;
use crate::wire::gossip::gossip_message::Content;
use crate::wire::gossip::{GossipMessage, Payload};

impl<P: Clone + Ord + std::fmt::Debug> AntiEntropy<P> {
    pub(super) fn on_response(
        &mut self,
        now: Instant,
        from: P,
        message: GossipMessage,
    ) -> Result<(), ResponseError> {
        let ignored = &mut self.stats.ignored;
        // Taken by value: the payloads move into the buffer, no clone.
        let GossipMessage {
            nonce,
            channel,
            content,
            ..
        } = message;
        let Some(Content::StateResponse(response)) = content else {
            ignored.not_a_response += 1;
            return Err(ResponseError::NotAResponse);
        };
        if channel != self.channel {
            ignored.wrong_channel += 1;
            return Err(ResponseError::WrongChannel);
        }
        // An answer of any kind, even to a send cancelled since (its nonce
        // forgotten), shows the peer is not silent: slow peers' answers
        // come after the copies that beat them.
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.heard_from();
        }
        let unknown = ResponseError::UnknownNonce { nonce };
        let Some(id) = self.requests.with_nonce(nonce) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        let Some(request) = self.requests.get_mut(id) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        let range = request.range;
        let Some(attempt) = request.attempt_with(nonce) else {
            ignored.unknown_nonce += 1;
            return Err(unknown);
        };
        if attempt.peer != from {
            ignored.unexpected_peer += 1;
            return Err(ResponseError::UnexpectedPeer { nonce });
        }
        if attempt.state == AttemptState::Failed {
            // This send was answered already (or cancelled): a duplicate.
            ignored.unknown_nonce += 1;
            return Err(unknown);
        }
        let asked = attempt.asked;
        let answered_sent_at = attempt.sent_at;
        let answered_order = attempt.order;
        let was_waiting = attempt.state == AttemptState::Waiting;
        // Answered although already taken for lost: the allowance was too
        // short for this peer (an answer within it widens nothing).
        let overtaken_at = attempt.overtaken_at;

        let mut usable = 0u64;
        let mut split_off = Vec::new();
        let mut highest = None;
        let mut malformed = false;
        let mut bytes = 0u64;
        for payload in response.payloads {
            if !asked.contains(payload.seq_num) {
                // Padding costs the peer like a wrong block number: else a
                // peer could fill every answer to the message limit and
                // stay preferred.
                self.stats.ignored.out_of_range_payloads += 1;
                malformed = true;
                continue;
            }
            if block_number(&payload.data) != Ok(payload.seq_num) {
                self.stats.ignored.bad_payloads += 1;
                malformed = true;
                continue;
            }
            usable += 1;
            highest = highest.max(Some(payload.seq_num));
            if !range.contains(payload.seq_num) {
                // Asked before a split gave it to another request.
                split_off.push(payload.seq_num);
            }
            let size = payload_size(&payload) as u64;
            bytes += size;
            // Up fast to a larger block, down slowly (an eighth per
            // block): underestimating costs partial answers and timeouts,
            // overestimating only shorter requests.
            self.block_bytes_estimate = if self.block_size_seen {
                // Up to a larger block at once, but at most doubling per
                // block: one peer's unverified payload cannot set it alone.
                let ewma = self
                    .block_bytes_estimate
                    .saturating_mul(7)
                    .saturating_add(size)
                    .div_ceil(8);
                ewma.max(size.min(self.block_bytes_estimate.saturating_mul(2)))
            } else {
                // The first block replaces the prior outright.
                size
            };
            self.block_size_seen = true;
            self.accept_payload(payload, size, Origin::Peer(from.clone()));
        }

        let request_bytes = self
            .blocks_per_request()
            .saturating_mul(self.block_bytes_estimate);
        let mut peer = self.peers.get_mut(&from);
        if let (Some(at), Some(peer)) = (overtaken_at, peer.as_mut()) {
            let allowance = peer.reorder_allowance(peer.timeout(&self.config));
            if at.checked_add(allowance).is_some_and(|lost| lost <= now) {
                peer.reordered();
            }
        }
        if usable == 0 {
            // An empty or useless answer counts against the peer, and the
            // range goes to the next try at once (as Fabric retries).
            self.requests.end_send(id, nonce, AttemptState::Failed);
            if let Some(peer) = peer {
                if was_waiting {
                    peer.send_ended(asked.len());
                }
                peer.stats.empty_responses += 1;
                emit!(DEBUG, peer = ?from, nonce, "answer without a usable block");
                peer.failed(now, 1, self.config.peer_selection);
                // It was asked only for blocks it advertised, and served
                // none: it is not believed to hold them for a while (a busy
                // responder answers so too, and is back soon).
                peer.doubt(range.start(), now);
            }
            self.retry_if_idle(now, id);
            return Ok(());
        }
        // An answer handled after a host stall to a send made before it
        // took the stall too: no round-trip, rate or window sample.
        let measured = self
            .stalled_since
            .is_none_or(|resumed| answered_sent_at >= resumed);
        if let Some(peer) = peer {
            if measured {
                peer.answered(now, answered_sent_at, bytes, &self.config, request_bytes);
            } else {
                peer.answered_unmeasured(now);
            }
            peer.answered_send(answered_order);
            peer.stats.responses += 1;
            peer.stats.blocks += usable;
            peer.stats.bytes += bytes;
            if let Some(highest) = highest {
                peer.served(highest);
            }
            if malformed {
                peer.failed(now, 1, self.config.peer_selection);
            } else {
                peer.succeeded();
            }
        }
        self.stats.responses += 1;
        // A send of the range made earlier to a peer that never answered
        // was beaten by this one: that peer is slower than a hedge's delay
        // and this round trip together. Its send is cancelled below, so it
        // never times out, and without this it would rank as an idle peer
        // of unknown speed (a commit point's retry went to it, 0.47 s late
        // already, rather than to the measured peer one answer from free).
        if let Some(request) = self.requests.get(id) {
            let beaten = request
                .waiting()
                .filter(|attempt| attempt.sent_at < answered_sent_at && attempt.peer != from);
            for attempt in beaten {
                if let Some(peer) = self.peers.get_mut(&attempt.peer) {
                    peer.beaten();
                }
            }
        }
        // Blocks of the range that did not arrive are simply missing again:
        // the planner asks for them in a new request.
        self.drop_request(id);
        // So are those of any request holding a block that came although
        // outside the range (a part split off it, or one planned again from
        // such a part): asked again from its start, it would ask for blocks
        // held (the sweep saw one asked below the committed height). Its
        // sends' answers, if they come, are strays.
        for seq in split_off {
            if let Some((other, _)) = self.requests.covering(seq) {
                self.drop_request(other);
            }
        }
        self.reschedule_after_answer(now, &from, answered_order);
        Ok(())
    }

    pub(super) fn accept_payload(&mut self, payload: Payload, size: u64, origin: Origin<P>) {
        let seq = payload.seq_num;
        if seq < self.buffer.next() {
            self.stats.ignored.duplicate_payloads += 1;
            return;
        }
        // The block that unblocks delivery may overshoot the byte window by
        // itself when nothing awaits a commit (else out-of-order blocks could
        // fill the window for good).
        let unblocks = seq == self.buffer.next() && self.uncommitted.is_empty();
        let over = |this: &Self| this.held_bytes().saturating_add(size) > this.config.window_bytes;
        if !unblocks && over(self) {
            // A copy already held must not evict anything.
            if self.buffer.contains(seq) {
                self.stats.ignored.duplicate_payloads += 1;
                return;
            }
            // Lower blocks are needed first: a full window makes room by
            // evicting the highest held ones (fetched again later), so that
            // after a rewind the gap refills at full speed, not one block
            // per round trip.
            while over(self) {
                match self.buffer.highest() {
                    Some(highest) if highest > seq => {
                        self.buffer.remove(highest);
                        self.uncover(highest);
                        self.stats.evicted += 1;
                    }
                    // Otherwise it waits for commits: dropped now, fetched later.
                    _ => return,
                }
            }
        }
        // The buffer finds a copy already held (no lookup of our own first:
        // it was one per block).
        if self.buffer.push(payload, origin) == PushOutcome::Duplicate {
            self.stats.ignored.duplicate_payloads += 1;
        }
    }

    /// Bytes of payloads held: buffered out of order, or delivered and not
    /// yet committed.
    pub(super) fn held_bytes(&self) -> u64 {
        self.buffer.bytes() as u64 + self.uncommitted_bytes
    }
}

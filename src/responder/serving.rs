//! Serving admitted requests: reads started in fair order, the host's
//! answers cut to the byte cap and sent in the foreground or background,
//! and held-back answers promoted once a crowd is gone.

use std::fmt;
use std::time::Instant;

use prost::Message;

use super::admission::Job;
use super::priority::Priorities;
use super::reads::{response_len, select, Read, Reads};
use super::{Queued, RequestError, StateResponder, Ticket};
use crate::buffer::payload_size;
use crate::wire::{self, gossip::Payload};

impl<P: Clone + Ord + fmt::Debug> StateResponder<P> {
    /// Reads under way for `peer` (not orphaned by a disconnection).
    pub(super) fn reading_for(&self, peer: &P) -> usize {
        reading_for(&self.reads, peer)
    }

    /// The blocks of `job`'s range that its response (`payloads`) leaves
    /// out (holes the host could not read, the tail cut by the byte cap)
    /// were not served: taken back, if `job` was fresh (see `not_served`).
    pub(super) fn take_back_unsent(&mut self, job: &Job<P>, payloads: &[Payload]) {
        if !job.fresh {
            return;
        }
        let (start, end) = (job.range.start(), job.range.end());
        let mut next = start;
        match payloads.last() {
            // Selected payloads are distinct and ascending inside the range:
            // as many as the numbers from its start to the last are all of
            // them, with no hole but the tail (a flood's every read).
            Some(last) if last.seq_num - start == payloads.len() as u64 - 1 => {
                next = last.seq_num.saturating_add(1);
            }
            _ => {
                for seq in payloads.iter().map(|p| p.seq_num) {
                    if seq > next {
                        self.priorities.on_not_served(&job.from, next, seq - 1);
                    }
                    next = seq.saturating_add(1);
                }
            }
        }
        if end.checked_add(1).is_some_and(|after| after > next) {
            self.priorities.on_not_served(&job.from, next, end);
        }
    }

    /// Hands queued requests to the host while read slots are free. A peer
    /// holds three quarters of the slots at most (and leaves at least one
    /// to the others whenever there are two), and repeaters
    /// ([`StateResponder::is_repeater`]) a quarter together, only when no other peer has a read
    /// waiting: on a host whose reads take seconds, a slot is held that
    /// long, and a flood that came first would hold them all.
    pub(super) fn start_reads(&mut self, now: Instant) {
        let slots = self.config.max_concurrent_reads;
        if self.queue.is_empty() || self.reads.len() >= slots {
            // The usual cases: nothing waits for a slot, or (a slow host
            // under a flood) no slot is free.
            return;
        }
        let mut background_reads = self.background_reads();
        while self.reads.len() < slots {
            let (reads, priorities) = (&self.reads, &self.priorities);
            let allowed = |peer: &P| may_read(slots, reads, priorities, peer, background_reads);
            let Some(job) = self
                .queue
                .pop_next(|peer| priorities.is_repeater(peer), allowed)
            else {
                break;
            };
            if priorities.is_repeater(&job.from) {
                background_reads += 1;
            }
            self.start_read(now, job);
        }
    }

    /// Reads of repeaters. A peer's own reads are counted in
    /// `reads` when asked: at most `max_concurrent_reads` of them, where a
    /// map by peer cost an allocation for every read started.
    pub(super) fn background_reads(&self) -> usize {
        self.reads
            .values()
            .filter(|read| !read.orphaned && self.priorities.is_repeater(&read.job.from))
            .count()
    }

    /// Hands `job` to the host as a read.
    pub(super) fn start_read(&mut self, now: Instant, job: Job<P>) {
        if self.config.fair_queue {
            self.read_starts.record(&job.from, now);
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.actions.push_back(Queued::Read {
            ticket,
            to: job.from.clone(),
            range: job.range,
        });
        let deadline = now.checked_add(self.config.read_timeout);
        self.reads.insert(
            ticket,
            Read {
                job,
                deadline,
                orphaned: false,
            },
        );
    }

    pub(super) fn on_blocks_read(
        &mut self,
        now: Instant,
        ticket: Ticket,
        payloads: Vec<Payload>,
    ) -> Result<(), RequestError> {
        let Some(read) = self.reads.remove(&ticket) else {
            self.stats.unknown_ticket += 1;
            return Err(RequestError::UnknownTicket(ticket));
        };
        if read.orphaned {
            // No one to send it to; the slot goes on.
            self.stats.disconnected_reads += 1;
            self.start_reads(now);
            return Ok(());
        }
        self.buckets.finish(&read.job.from);
        // Without its content: `response_len` adds the oneof field back.
        let header = self.header_len + nonce_len(read.job.nonce);
        let selection = select(
            read.job.range,
            payloads,
            header,
            self.config.max_response_bytes,
        );
        self.stats.dropped_payloads += selection.dropped;
        self.stats.skipped_unreadable += selection.unreadable;
        self.stats.truncated_by_bytes += u64::from(selection.truncated);
        self.take_back_unsent(&read.job, &selection.payloads);
        self.respond(
            read.job.from,
            read.job.nonce,
            selection.payloads,
            selection.body,
            selection.bytes,
        );
        self.start_reads(now);
        Ok(())
    }

    /// Queues a response with `payloads` to `to`'s request `nonce`;
    /// `body`: their `RemoteStateResponse`'s encoded length.
    pub(super) fn send(&mut self, to: P, nonce: u64, payloads: Vec<Payload>, body: usize) {
        let repeater = self.priorities.is_repeater(&to);
        let background = self.is_background(&to);
        if background && !repeater {
            self.held_back.insert(to.clone());
        } else {
            self.held_back.remove(&to);
        }
        let len = response_len(self.header_len + nonce_len(nonce), body);
        debug_assert_eq!(
            len,
            wire::state_response(nonce, self.channel.clone(), payloads.clone()).encoded_len(),
            "a response's summed length"
        );
        self.actions.push_back(Queued::Send {
            to,
            nonce,
            payloads,
            background,
            len,
        });
    }

    /// Once no crowd is catching up from us (counting the peers held back,
    /// which wait for our answers rather than ask), tells the host that
    /// the held-back peers' answers still queued in the background may go
    /// as any other: the favoured peers they waited behind are gone. Their
    /// answers keep their class otherwise until the next is sent, and a
    /// peer whose window is full sends no request for one. Four flooding
    /// identities that came first held a crowd's favoured places until
    /// their random ranges overlapped, and the three laggers' answers queued
    /// meanwhile left the only source 1 s later (sweep seed 2 925 without
    /// loss: 1.96 s flooded against 0.44 s, 0.74 s with this; crowd
    /// unchanged, as it stays a crowd). Counting only the peers that asked
    /// within 0.5 s, as [`Priorities::is_later`] does, released them as
    /// the favoured laggers paused: crowd 21–27× Kumar–Ross, not 8.4–8.8.
    ///
    /// A held-back peer counts only while it asked within `read_timeout`
    /// (our requester's longest deadline): one that has its answers and
    /// finished would keep a crowd alive for a minute, until forgotten.
    /// Cost: nothing while none is held back; else a scan of the peers
    /// remembered (a crowd's, a flood's few identities) per input.
    pub(super) fn release_held_back(&mut self, now: Instant) {
        if self.held_back.is_empty() {
            return;
        }
        let held_back = &self.held_back;
        let wait = |peer: &P| held_back.contains(peer);
        if self
            .priorities
            .crowded(now, self.config.read_timeout, &wait)
        {
            return;
        }
        for to in std::mem::take(&mut self.held_back) {
            if !self.priorities.is_repeater(&to) {
                self.actions.push_back(Queued::Promote { to });
            }
        }
    }

    /// Queues a response with `payloads`, `body` as in [`send`](Self::send),
    /// `bytes` their blocks and private data (summed when selected).
    pub(super) fn respond(
        &mut self,
        to: P,
        nonce: u64,
        payloads: Vec<Payload>,
        body: usize,
        bytes: usize,
    ) {
        debug_assert_eq!(bytes, payloads.iter().map(payload_size).sum::<usize>());
        self.stats.responses += 1;
        if payloads.is_empty() {
            self.stats.empty_responses += 1;
        }
        self.stats.blocks_served += payloads.len() as u64;
        self.stats.bytes_served = self.stats.bytes_served.saturating_add(bytes as u64);
        self.send(to, nonce, payloads, body);
    }
}

/// The encoded length of a message's nonce field: none if zero (proto3
/// leaves a default out), else its key and varint.
pub(super) fn nonce_len(nonce: u64) -> usize {
    if nonce == 0 {
        0
    } else {
        prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(nonce)
    }
}

/// Reads in `reads` under way for `peer`, not orphaned by a disconnection.
pub(super) fn reading_for<P: Ord>(reads: &Reads<P>, peer: &P) -> usize {
    reads
        .values()
        .filter(|read| !read.orphaned && read.job.from.cmp(peer).is_eq())
        .count()
}

/// Whether `peer` may have one more of `slots` reads, `reads` being under
/// way, `background_reads` of them for repeaters (see
/// [`StateResponder::start_reads`]).
pub(super) fn may_read<P: Clone + Ord>(
    slots: usize,
    reads: &Reads<P>,
    priorities: &Priorities<P>,
    peer: &P,
    background_reads: usize,
) -> bool {
    // Every other peer keeps at least one slot: `slots - slots / 4` left
    // none with two or three slots, and a flooder held both reads of a
    // host with two (sweep seed 49 425: three laggers stuck for 1 500 s).
    let per_peer = (slots - (slots / 4).max(1)).max(1);
    let background_slots = (slots / 4).max(1);
    reading_for(reads, peer) < per_peer
        && (background_reads < background_slots || !priorities.is_repeater(peer))
}

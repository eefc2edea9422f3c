//! Reads handed to the host, and what of the host's answer a response
//! carries: the exact byte cap.

use std::collections::VecDeque;
use std::time::Instant;

use prost::encoding::{encoded_len_varint, key_len};
use prost::Message;

use super::admission::Job;
use super::Ticket;
use crate::buffer::payload_size;
use crate::range::SeqRange;
use crate::wire::gossip::Payload;

/// A read handed to the host.
#[derive(Debug, Clone)]
pub(super) struct Read<P> {
    pub(super) job: Job<P>,
    /// `None` if `now + read_timeout` is beyond what `Instant` holds: such a
    /// read never expires.
    pub(super) deadline: Option<Instant>,
    /// Its peer disconnected: the read still holds its slot until the host
    /// answers or it expires, but nothing is sent, and it no longer counts
    /// against the peer.
    pub(super) orphaned: bool,
}

/// The payloads a response carries, and what was left out.
/// Reads handed to the host, by ticket: a vector in ticket order. Tickets
/// are issued in increasing order and reads end mostly in that order, so
/// an insertion goes at the back and a removal is at or near the front;
/// there are at most `max_concurrent_reads` of them. A map cost a node
/// insertion and removal on a flood's every request.
#[derive(Debug, Clone)]
pub(super) struct Reads<P> {
    reads: VecDeque<(Ticket, Read<P>)>,
}

impl<P> Reads<P> {
    pub(super) fn new() -> Self {
        Self {
            reads: VecDeque::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.reads.len()
    }

    /// The read of the lowest ticket.
    pub(super) fn first(&self) -> Option<&Read<P>> {
        self.reads.front().map(|(_, read)| read)
    }

    pub(super) fn pop_first(&mut self) -> Option<Read<P>> {
        self.reads.pop_front().map(|(_, read)| read)
    }

    pub(super) fn insert(&mut self, ticket: Ticket, read: Read<P>) {
        // At the back unless the ticket counter wrapped (after 2^64 reads),
        // where the order stays the tickets'.
        if self.reads.back().is_none_or(|(last, _)| *last < ticket) {
            self.reads.push_back((ticket, read));
            return;
        }
        let at = self.reads.partition_point(|(t, _)| *t < ticket);
        self.reads.insert(at, (ticket, read));
    }

    pub(super) fn remove(&mut self, ticket: &Ticket) -> Option<Read<P>> {
        // Reads end mostly in ticket order: the first, without a search.
        if self.reads.front().is_some_and(|(first, _)| first == ticket) {
            return self.reads.pop_front().map(|(_, read)| read);
        }
        let at = self.reads.binary_search_by_key(ticket, |(t, _)| *t).ok()?;
        self.reads.remove(at).map(|(_, read)| read)
    }

    /// The reads in ticket order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Read<P>> {
        self.reads.iter().map(|(_, read)| read)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Read<P>> {
        self.reads.iter_mut().map(|(_, read)| read)
    }
}

#[derive(Debug)]
pub(super) struct Selection {
    pub(super) payloads: Vec<Payload>,
    /// The encoded length of a `RemoteStateResponse` of `payloads`.
    pub(super) body: usize,
    /// Their blocks' and private data's bytes (`payload_size`'s sum).
    pub(super) bytes: usize,
    pub(super) dropped: u64,
    pub(super) unreadable: u64,
    pub(super) truncated: bool,
}

/// `GossipMessage.state_response`'s field number (`message.proto`).
pub(super) const STATE_RESPONSE_FIELD: u32 = 19;
/// `RemoteStateResponse.payloads`'s field number.
pub(super) const PAYLOADS_FIELD: u32 = 1;

/// The encoded length of a state response whose `GossipMessage` fields
/// other than the content take `header` bytes and whose
/// `RemoteStateResponse` takes `body`: the oneof field's key, its length
/// varint, then the body.
pub(super) fn response_len(header: usize, body: usize) -> usize {
    header
        .saturating_add(key_len(STATE_RESPONSE_FIELD))
        .saturating_add(encoded_len_varint(body as u64))
        .saturating_add(body)
}

/// What one payload adds to a `RemoteStateResponse`: its field key, its
/// length varint and its encoding.
pub(super) fn payload_field_len(payload: &Payload) -> usize {
    let len = payload.encoded_len();
    key_len(PAYLOADS_FIELD)
        .saturating_add(encoded_len_varint(len as u64))
        .saturating_add(len)
}

/// Picks what to send of the host's answer to a read of `range`: the
/// payloads inside the range, ascending, each number once (the host's first
/// copy), then the longest prefix whose encoded response (with `header`
/// bytes of nonce, channel and tag) is at most `max_bytes`, but always the
/// first payload, or a block larger than the cap could never be served.
/// The length is summed from each field's size, which is exactly what
/// prost encodes, so no trial encoding is needed. Missing numbers are
/// skipped, as Fabric skips unreadable blocks: the requester keeps what
/// came and asks again for the rest.
pub(super) fn select(
    range: SeqRange,
    mut payloads: Vec<Payload>,
    header: usize,
    max_bytes: usize,
) -> Selection {
    let received = payloads.len();
    // A host reads a range in order: strictly ascending numbers, the first
    // and last inside the range, leave nothing to filter, sort or
    // deduplicate. One pass over them says so and sums the whole answer
    // (a flood's every read goes through here).
    let mut whole = Some(Sums::default());
    let mut previous = None;
    for payload in &payloads {
        let seq = payload.seq_num;
        if previous.is_some_and(|previous| previous >= seq) || !range.contains(seq) {
            whole = None;
            break;
        }
        previous = Some(seq);
        whole = whole.map(|sums| sums.add(payload));
    }
    let whole = match whole {
        Some(whole) => whole,
        None => {
            payloads.retain(|payload| range.contains(payload.seq_num));
            // Stable, so among equal numbers the host's first copy stays
            // first.
            payloads.sort_by_key(|payload| payload.seq_num);
            payloads.dedup_by_key(|payload| payload.seq_num);
            payloads.iter().fold(Sums::default(), Sums::add)
        }
    };
    let dropped = (received - payloads.len()) as u64;

    let unreadable = match payloads.last() {
        // `payloads` holds distinct numbers of `start..=last`.
        Some(last) => (last.seq_num - range.start())
            .saturating_add(1)
            .saturating_sub(payloads.len() as u64),
        None => range.len(),
    };

    // The encoded length grows with the body, so the first prefix that
    // does not fit ends the search; if the whole answer fits, every prefix
    // does, and the one sum says so.
    let (fitting, sums) = if response_len(header, whole.body) <= max_bytes {
        (payloads.len(), whole)
    } else {
        let mut sums = Sums::default();
        let mut fitting = 0;
        for (index, payload) in payloads.iter().enumerate() {
            let longer = sums.add(payload);
            if index > 0 && response_len(header, longer.body) > max_bytes {
                break;
            }
            sums = longer;
            fitting += 1;
        }
        (fitting, sums)
    };
    let truncated = fitting < payloads.len();
    payloads.truncate(fitting);
    Selection {
        payloads,
        body: sums.body,
        bytes: sums.bytes,
        dropped,
        unreadable,
        truncated,
    }
}

/// Running sums over a response's payloads: the `RemoteStateResponse`'s
/// encoded length and the bytes served.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    body: usize,
    bytes: usize,
}

impl Sums {
    fn add(self, payload: &Payload) -> Self {
        Self {
            body: self.body.saturating_add(payload_field_len(payload)),
            bytes: self.bytes.saturating_add(payload_size(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, gossip::GossipMessage};
    use bytes::Bytes;

    fn payload(seq: u64, size: usize) -> Payload {
        Payload {
            seq_num: seq,
            data: Bytes::from(vec![0u8; size]),
            private_data: vec![],
        }
    }

    fn seqs(payloads: &[Payload]) -> Vec<u64> {
        payloads.iter().map(|p| p.seq_num).collect()
    }

    #[test]
    fn select_filters_sorts_dedups_and_counts_holes() {
        let range = SeqRange::new(10, 15).unwrap();
        let mut first_12 = payload(12, 1);
        first_12.private_data.push(Bytes::from_static(b"first"));
        let answer = vec![
            payload(14, 1),
            first_12.clone(),
            payload(9, 1),
            payload(10, 1),
            payload(12, 2),
            payload(16, 1),
        ];
        let s = select(range, answer, HEADER, usize::MAX);
        assert_eq!(seqs(&s.payloads), [10, 12, 14]);
        assert_eq!(s.payloads[1], first_12, "the host's first copy wins");
        assert_eq!(s.dropped, 3);
        assert_eq!(s.unreadable, 2, "11 and 13; 15 may be the host's byte stop");
        assert!(!s.truncated);

        let s = select(range, vec![payload(3, 1)], HEADER, usize::MAX);
        assert!(s.payloads.is_empty());
        assert_eq!((s.dropped, s.unreadable), (1, 6));
    }

    /// The encoded length of the response carrying `payloads` (nonce 0,
    /// no channel).
    fn encoded(payloads: &[Payload]) -> usize {
        wire::state_response(0, Bytes::new(), payloads.to_vec()).encoded_len()
    }

    /// Nonce 0 and the empty channel are not encoded: only the tag.
    const HEADER: usize = 2;

    #[test]
    fn select_serves_a_prefix_but_always_the_first() {
        let range = SeqRange::new(0, 3).unwrap();
        let answer = || (0..=3).map(|seq| payload(seq, 10)).collect::<Vec<_>>();
        let two = encoded(&answer()[..2]);
        let s = select(range, answer(), HEADER, two);
        assert_eq!(seqs(&s.payloads), [0, 1]);
        assert!(s.truncated);
        let s = select(range, answer(), HEADER, encoded(&answer()[..3]) - 1);
        assert_eq!(seqs(&s.payloads), [0, 1], "one byte short of three");
        let s = select(range, answer(), HEADER, encoded(&answer()));
        assert_eq!(seqs(&s.payloads), [0, 1, 2, 3]);
        assert!(!s.truncated);
        assert_eq!(response_len(HEADER, s.body), encoded(&answer()));
        let s = select(range, answer(), HEADER, two);
        assert_eq!(response_len(HEADER, s.body), two, "the prefix's length");
        let s = select(range, answer(), HEADER, 1);
        assert_eq!(seqs(&s.payloads), [0], "a block above the cap still goes");
        assert!(s.truncated);
        // A prefix: a small block after one that does not fit is not sent.
        let s = select(
            range,
            vec![payload(0, 5), payload(1, 50), payload(2, 1)],
            HEADER,
            30,
        );
        assert_eq!(seqs(&s.payloads), [0]);
    }

    #[test]
    fn header_is_the_message_without_its_content() {
        let message = wire::state_response(0, Bytes::new(), vec![]);
        let header = GossipMessage {
            content: None,
            ..message.clone()
        };
        assert_eq!(header.encoded_len(), HEADER);
        assert_eq!(response_len(HEADER, 0), message.encoded_len());
    }
}

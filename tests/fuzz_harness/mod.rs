//! The fuzz harness: pure functions of `&[u8]` that drive the crate and
//! check its invariants with `assert!` (a panic is a finding).
//!
//! Shared by the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and by
//! `tests/fuzz_replay.rs` (stable), which replays the committed corpus in
//! `tests/fuzz_corpus/` and a fixed-seed stream of random inputs. It is
//! self-contained: it uses only the crate, `bytes` and `prost`.
//!
//! - [`wire_decode`]: every decoder of `antientropy::wire` over the bytes,
//!   with several size limits: `Ok` or `Err`, never a panic, and what
//!   decodes re-encodes to the same message.
//! - [`requester_events`]: the bytes are a program of operations on an
//!   `AntiEntropy<u8>` driven by a modelled host and honest or hostile
//!   peers; the documented guarantees are checked after every operation.
//! - [`responder_requests`]: the bytes are a program of requests (raw bytes
//!   and structured), ledger reads, height changes and time on a
//!   `StateResponder<u8>`; every response is checked against a model.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use antientropy::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};
use antientropy::wire::gossip::gossip_message::{Content, Tag};
use antientropy::wire::gossip::{
    DataMessage, Envelope, GossipMessage, Payload, RemoteStateRequest, StateInfo,
};
use antientropy::wire::{self, WireError, DEFAULT_MAX_MESSAGE_SIZE};
use antientropy::{
    payload_size, Action, AntiEntropy, Config, Event, EventError, GiveUpReason, Origin,
    PeerSelection, PeerState, RequestError, ResponderAction, ResponderEvent, ResponseError,
    SeqRange, StateResponder, Ticket,
};
use bytes::Bytes;
use prost::Message;

// --- shared helpers ---------------------------------------------------------

/// The channel both machines serve.
const CHANNEL: &[u8] = b"fuzzchannel";

fn channel() -> Bytes {
    Bytes::from_static(CHANNEL)
}

/// The epoch virtual time counts from: read once per process, so the same
/// input always drives the machines through the same relative instants.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // The harness is the host: the one clock read, the machines never read one.
    #[allow(clippy::disallowed_methods)]
    *EPOCH.get_or_init(Instant::now)
}

/// A tiny cursor over the fuzz input: reads past the end give zeros, so
/// every input is a valid program.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((byte, rest)) => {
                self.data = rest;
                *byte
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for byte in &mut bytes {
            *byte = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A number in `0..n` (`n` at most 256; 0 if `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u8()) % n
        }
    }

    /// Up to `n` raw bytes.
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// An encoded `common.Block` numbered `seq` with `size` bytes of data, as
/// `tests/common/mod.rs` builds them.
fn block(seq: u64, size: usize) -> Bytes {
    Block {
        header: Some(BlockHeader {
            number: seq,
            previous_hash: Bytes::from_static(b"prev"),
            data_hash: Bytes::from_static(b"hash"),
        }),
        data: Some(BlockData {
            data: vec![Bytes::from(vec![seq as u8; size])],
        }),
        metadata: Some(BlockMetadata {
            metadata: vec![Bytes::from_static(b"sig")],
        }),
    }
    .encode_to_vec()
    .into()
}

/// Data sizes of the blocks the harness makes.
const BLOCK_SIZES: [usize; 4] = [8, 64, 300, 1500];

/// A real payload for block `seq`, possibly with private data.
fn payload(seq: u64, size: usize, private: bool) -> Payload {
    Payload {
        seq_num: seq,
        data: block(seq, size),
        private_data: if private {
            vec![Bytes::from_static(b"pvt")]
        } else {
            vec![]
        },
    }
}

/// The largest `payload_size` the harness can make.
fn max_payload_size() -> usize {
    payload_size(&payload(u64::MAX, BLOCK_SIZES[3], true))
}

/// Virtual-time steps: around every timer of both presets.
const STEPS_MS: [u64; 16] = [
    0, 1, 10, 100, 199, 200, 499, 500, 999, 1_000, 2_000, 3_000, 5_000, 10_000, 30_000, 61_000,
];

fn step(cursor: &mut Cursor<'_>) -> Duration {
    let base = STEPS_MS[cursor.below(STEPS_MS.len())];
    Duration::from_millis(base + u64::from(cursor.u8() % 4))
}

// --- 1. wire decoding ---------------------------------------------------------

/// Runs every decoder of `antientropy::wire` over `data` with several size
/// limits. They must return `Ok` or `Err`, never panic; a size refusal must
/// be exactly `len > limit`; what decodes must re-encode to the same message.
pub fn wire_decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let len = data.len();
    let limits = [
        0,
        1,
        len.saturating_sub(1),
        len,
        DEFAULT_MAX_MESSAGE_SIZE,
        usize::MAX,
    ];

    let unlimited_message = wire::decode_gossip_message(bytes.clone(), usize::MAX);
    let unlimited_envelope = wire::decode_envelope(bytes.clone(), usize::MAX);
    for limit in limits {
        let message = wire::decode_gossip_message(bytes.clone(), limit);
        check_limited(len, limit, &message, &unlimited_message);
        if let Ok(message) = &message {
            check_gossip_message(message);
        }
        let envelope = wire::decode_envelope(bytes.clone(), limit);
        check_limited(len, limit, &envelope, &unlimited_envelope);
        if let Ok(envelope) = &envelope {
            check_envelope(envelope, limit);
        }
    }

    // A block's header number, read without decoding the block.
    let number = wire::block_number(&bytes);
    if let Ok(block) = Block::decode(bytes.clone()) {
        // Whatever decodes as a whole block has its number read the same way.
        match &block.header {
            Some(header) => assert_eq!(number, Ok(header.number), "block_number of a block"),
            None => assert_eq!(number, Err(WireError::MissingField("header"))),
        }
    }
    if let Err(error) = &number {
        assert!(
            matches!(
                error,
                WireError::Malformed(_) | WireError::MissingField("header")
            ),
            "block_number: unexpected error {error:?}"
        );
    }

    // A bare StateInfo, as a host would decode one, and a bare Payload.
    if let Ok(state_info) = StateInfo::decode(bytes.clone()) {
        check_state_info(&state_info);
    }
    if let Ok(payload) = Payload::decode(bytes.clone()) {
        check_payload(&payload);
    }
}

/// A size-limited decode agrees with the unlimited one.
fn check_limited<T: PartialEq + std::fmt::Debug>(
    len: usize,
    limit: usize,
    limited: &Result<T, WireError>,
    unlimited: &Result<T, WireError>,
) {
    if len > limit {
        assert_eq!(
            limited,
            &Err(WireError::TooLarge {
                size: len,
                max: limit
            }),
            "{len} bytes over a limit of {limit} must be refused unread"
        );
    } else {
        assert_eq!(limited, unlimited, "within the limit, the limit is moot");
    }
    if let Err(error) = limited {
        assert!(
            matches!(error, WireError::TooLarge { .. } | WireError::Malformed(_)),
            "decoding fails only as TooLarge or Malformed, not {error:?}"
        );
    }
}

fn check_envelope(envelope: &Envelope, limit: usize) {
    let reencoded = Envelope::decode(Bytes::from(envelope.encode_to_vec()));
    assert_eq!(reencoded.as_ref(), Ok(envelope), "envelope re-encodes");
    let inner = wire::unwrap_envelope(envelope, limit);
    let size = envelope.payload.len();
    if size > limit {
        assert_eq!(inner, Err(WireError::TooLarge { size, max: limit }));
    } else {
        assert_eq!(
            inner,
            wire::decode_gossip_message(envelope.payload.clone(), usize::MAX),
            "unwrap_envelope decodes the payload"
        );
    }
    if let Ok(message) = inner {
        check_gossip_message(&message);
    }
}

fn check_gossip_message(message: &GossipMessage) {
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len(), "encoded_len is exact");
    let again = wire::decode_gossip_message(Bytes::from(encoded), usize::MAX);
    assert_eq!(again.as_ref(), Ok(message), "a decoded message re-encodes");

    let wrapped = wire::wrap_envelope(message);
    assert!(wrapped.signature.is_empty(), "NoopSign: no signature");
    assert_eq!(
        wire::unwrap_envelope(&wrapped, usize::MAX).as_ref(),
        Ok(message),
        "wrap then unwrap is the identity"
    );

    let request = wire::as_state_request(message);
    let response = wire::as_state_response(message);
    assert!(request.is_none() || response.is_none(), "one content only");
    if let Some(request) = request {
        if message.tag == Tag::ChanOrOrg as i32 {
            let rebuilt = wire::state_request(
                message.nonce,
                message.channel.clone(),
                request.start_seq_num,
                request.end_seq_num,
            );
            assert_eq!(&rebuilt, message, "state_request builds what Fabric sends");
        }
    }
    if let Some(response) = response {
        for payload in &response.payloads {
            check_payload(payload);
        }
        if message.tag == Tag::ChanOrOrg as i32 {
            let rebuilt = wire::state_response(
                message.nonce,
                message.channel.clone(),
                response.payloads.clone(),
            );
            assert_eq!(&rebuilt, message, "state_response builds what Fabric sends");
        }
    }
    match &message.content {
        Some(Content::StateInfo(state_info)) => check_state_info(state_info),
        Some(Content::DataMsg(DataMessage {
            payload: Some(payload),
        })) => check_payload(payload),
        _ => {}
    }
}

fn check_state_info(state_info: &StateInfo) {
    let advertised = wire::advertised(state_info);
    let peer = PeerState::from_state_info(0u8, state_info);
    match (&state_info.properties, advertised) {
        (Some(properties), Ok(advertised)) => {
            assert_eq!(advertised.ledger_height, properties.ledger_height);
            assert_eq!(advertised.left_channel, properties.left_channel);
            assert_eq!(peer.ledger_height, Some(properties.ledger_height));
            assert_eq!(peer.left_channel, properties.left_channel);
        }
        (None, Err(WireError::MissingField("properties"))) => {
            assert_eq!(peer.ledger_height, None);
            assert!(!peer.left_channel);
        }
        (properties, advertised) => {
            panic!("advertised({properties:?}) gave {advertised:?}")
        }
    }
}

fn check_payload(payload: &Payload) {
    let size = payload_size(payload);
    assert!(size >= payload.data.len(), "payload_size counts the block");
    // Any answer but a panic.
    let _ = wire::block_number(&payload.data);
}

// --- 2. the requester -------------------------------------------------------------

/// The requester configurations the first input byte chooses from.
fn requester_config(selector: u8) -> Config {
    match selector % 4 {
        0 => Config::fabric(),
        1 => Config::default(),
        // A small window: back-pressure in blocks and bytes binds early.
        2 => {
            let mut config = Config::default();
            config.window_blocks = 24;
            config.window_bytes = 4096;
            config.block_buffer = 8;
            config.max_in_flight = 4;
            config.max_in_flight_per_peer = 2;
            config.max_retries = 2;
            config
        }
        // The same, with Fabric's random selection and fixed timeouts.
        _ => {
            let mut config = Config::default();
            config.window_blocks = 16;
            config.window_bytes = 2048;
            config.block_buffer = 4;
            config.max_in_flight = 3;
            config.max_in_flight_per_peer = 3;
            config.max_retries = 1;
            config.peer_selection = PeerSelection::Random;
            config.adaptive_timeout = false;
            config.round_on_membership = false;
            config.hedge_after = None;
            config
        }
    }
}

/// A request the requester has outstanding, as seen from outside: a
/// range, sent to one peer or more (retries, hedges). Before any block is
/// seen, its upper part may be split off as a request of its own: then
/// its range shrinks, and its earlier sends keep what they asked.
#[derive(Debug)]
struct Outstanding {
    range: SeqRange,
    /// Every send of it, oldest first.
    sends: Vec<Sent>,
}

/// One send of a request.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Its nonce: its own, or shared by every send of the request (both
    /// are allowed; a nonce never names two requests).
    nonce: u64,
    peer: u8,
    /// The blocks it asked for: its answer may hold any of them.
    asked: SeqRange,
    state: SentState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SentState {
    /// Answerable.
    Open,
    /// Answered with nothing usable: a second answer may be refused as a
    /// duplicate (`UnknownNonce`) or handled again.
    Answered,
    /// Its peer left the view or stopped being usable: the send may have
    /// been cancelled (if it was still waiting) or not (if it timed out).
    MaybeCancelled,
}

/// What the model expects of a response.
#[derive(Debug, PartialEq)]
enum Expect {
    Exactly(Result<(), ResponseError>),
    /// `Ok`, or `UnknownNonce` for a send that may be closed.
    OkOrUnknown,
}

/// The host and the network around an `AntiEntropy<u8>`, and what they
/// have seen of it.
struct RequesterModel {
    machine: AntiEntropy<u8>,
    config: Config,
    /// The host's clock.
    now: Instant,
    /// The latest `now` the machine was given (the host's timer may be late).
    seen: Instant,
    /// The next block `AddPayload` must deliver.
    next: u64,
    /// The host's committed height; delivered and uncommitted is
    /// `committed..next`.
    committed: u64,
    /// Outstanding requests by the start of their range.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Every range each peer was ever asked for.
    asked: BTreeMap<u8, Vec<SeqRange>>,
    /// Every block given to the machine in a usable response or by gossip.
    offered: BTreeSet<u64>,
    /// The current membership view, last entry of an id winning.
    view: Vec<PeerState<u8>>,
    /// The view before the current operation.
    previous_view: Vec<PeerState<u8>>,
    /// The largest payload made.
    max_payload: u64,
    /// A response with a usable block was taken: the block size is known,
    /// and ranges are no longer split.
    block_seen: bool,
}

/// The height `id` advertises in `view` (the last entry for it wins), if
/// it may be asked.
fn usable_height(view: &[PeerState<u8>], id: u8) -> Option<u64> {
    let state = view.iter().rev().find(|state| state.id == id)?;
    if state.left_channel {
        None
    } else {
        state.ledger_height
    }
}

/// The peer that probes for requests dropped without an action: never in
/// a view, never asked (views name peers 0 to 5, responses come from 0 to 7).
const PROBE: u8 = u8::MAX;

/// Interprets `data` as a program of operations on an `AntiEntropy<u8>`
/// and checks the documented guarantees after each one (see the module
/// docs of the requester): in-order delivery from the initial height
/// (resuming at a rejected number), delivery from a peer only of a block it
/// was asked for, unique nonces with disjoint ranges, the in-flight caps,
/// the window, and a timer always in the future.
pub fn requester_events(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let config = requester_config(cursor.u8());
    let height_byte = cursor.u8();
    let height = if height_byte < 0xE0 {
        1 + u64::from(height_byte)
    } else {
        // Near the top of u64: ranges and heights must not overflow.
        u64::MAX - u64::from(height_byte - 0xE0) * 3
    };
    let seed = u64::from(cursor.u16());
    let now = epoch();
    let machine = AntiEntropy::new(config.clone(), channel(), height, seed, now)
        .expect("the harness's configurations are valid");
    let mut model = RequesterModel {
        machine,
        config,
        now,
        seen: now,
        next: height,
        committed: height,
        outstanding: BTreeMap::new(),
        block_seen: false,
        asked: BTreeMap::new(),
        offered: BTreeSet::new(),
        view: Vec::new(),
        previous_view: Vec::new(),
        max_payload: max_payload_size() as u64,
    };
    model.check_state();
    while !cursor.is_empty() {
        model.step(&mut cursor);
    }
}

impl RequesterModel {
    /// The start of the outstanding request one of whose sends used `nonce`.
    fn with_nonce(&self, nonce: u64) -> Option<u64> {
        self.outstanding
            .iter()
            .find(|(_, request)| request.sends.iter().any(|sent| sent.nonce == nonce))
            .map(|(start, _)| *start)
    }

    fn handle(&mut self, at: Instant, event: Event<u8>) -> Result<(), EventError> {
        self.seen = self.seen.max(at);
        let timer = matches!(event, Event::Timeout);
        let result = self.machine.handle(at, event);
        assert!(
            !(timer && self.machine.deadlines_deferred()),
            "a Timeout judges the deadlines"
        );
        result
    }

    fn handle_bytes(&mut self, at: Instant, from: u8, bytes: Bytes) -> Result<(), EventError> {
        // Bytes that do not decode are an input at `at` too.
        self.seen = self.seen.max(at);
        self.machine.handle_response_bytes(at, from, bytes)
    }

    fn step(&mut self, cursor: &mut Cursor<'_>) {
        self.previous_view = self.view.clone();
        match cursor.u8() % 16 {
            0 | 1 => self.membership(cursor),
            2 => {
                let result = self.handle(self.now, Event::Tick);
                assert_eq!(result, Ok(()), "Tick is never refused");
                self.drain();
            }
            3 | 4 => {
                self.now += step(cursor);
                let result = self.handle(self.now, Event::Timeout);
                assert_eq!(result, Ok(()), "Timeout is never refused");
                self.drain();
            }
            5 => {
                // The host's timer fires when asked.
                if let Some(deadline) = self.machine.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                let result = self.handle(self.now, Event::Timeout);
                assert_eq!(result, Ok(()), "Timeout is never refused");
                self.drain();
            }
            6..=9 => self.respond(cursor),
            10 => {
                // Garbage from a peer's connection.
                let from = cursor.below(6) as u8;
                let len = cursor.below(48);
                let garbage = Bytes::copy_from_slice(cursor.bytes(len));
                let _ = self.handle_bytes(self.now, from, garbage);
                self.drain();
            }
            11 => self.gossip(cursor),
            12 | 13 => self.commit(cursor),
            14 => self.reject(cursor),
            _ => {
                let delta = step(cursor);
                if cursor.bool() {
                    // The host's timer is late: the next input finds the
                    // deadlines already passed.
                    self.now += delta;
                } else {
                    // An earlier `now` counts as the latest one seen.
                    let earlier = self.now.checked_sub(delta).unwrap_or(self.now);
                    let result = self.handle(earlier, Event::Timeout);
                    assert_eq!(result, Ok(()), "Timeout is never refused");
                    self.drain();
                }
            }
        }
    }

    fn membership(&mut self, cursor: &mut Cursor<'_>) {
        let count = cursor.below(5);
        let mut view = Vec::with_capacity(count);
        for _ in 0..count {
            let id = cursor.below(6) as u8;
            let offset = u64::from(cursor.u8() % 48);
            let around = self.next.saturating_add(offset).saturating_sub(4);
            let state = match cursor.u8() % 16 {
                0 => PeerState {
                    id,
                    ledger_height: None,
                    left_channel: false,
                },
                1 => PeerState {
                    id,
                    ledger_height: Some(around),
                    left_channel: true,
                },
                2 => PeerState::new(id, u64::MAX),
                3 => PeerState::new(id, 0),
                _ => PeerState::new(id, around),
            };
            view.push(state);
        }
        self.view = view.clone();
        let result = self.handle(self.now, Event::Membership(view));
        assert_eq!(result, Ok(()), "Membership is never refused");
        self.drain();
        // After the drain: a send made before the view changed (a retry of a
        // timed-out send, by the same input) may be cancelled by it too.
        for request in self.outstanding.values_mut() {
            for sent in &mut request.sends {
                if sent.state == SentState::Open && usable_height(&self.view, sent.peer).is_none() {
                    sent.state = SentState::MaybeCancelled;
                }
            }
        }
    }

    fn gossip(&mut self, cursor: &mut Cursor<'_>) {
        let offset = i64::from(cursor.u8() % 80) - 8;
        let seq = if offset < 0 {
            self.next.saturating_sub(offset.unsigned_abs())
        } else {
            self.next.saturating_add(offset.unsigned_abs())
        };
        let size = BLOCK_SIZES[cursor.below(BLOCK_SIZES.len())];
        let payload = payload(seq, size, cursor.u8().is_multiple_of(4));
        self.offered.insert(seq);
        let result = self.handle(self.now, Event::GossipPayload(payload));
        assert_eq!(result, Ok(()), "GossipPayload is never refused");
        self.drain();
    }

    fn commit(&mut self, cursor: &mut Cursor<'_>) {
        let (low, high) = (self.committed, self.next);
        let height = match cursor.u8() % 8 {
            0 => low.saturating_sub(1),
            1 => high.saturating_add(1 + u64::from(cursor.u8() % 4)),
            2 => low.saturating_add(u64::from(cursor.u8()) % (high - low + 1).max(1)),
            _ => high,
        };
        let result = self.handle(self.now, Event::Committed { height });
        if (low..=high).contains(&height) {
            assert_eq!(result, Ok(()), "Committed {height} within {low}..={high}");
            self.committed = height;
        } else {
            assert_eq!(
                result,
                Err(EventError::CommittedOutOfRange { height, low, high }),
                "Committed {height} outside {low}..={high}"
            );
        }
        self.drain();
    }

    fn reject(&mut self, cursor: &mut Cursor<'_>) {
        let (low, high) = (self.committed, self.next);
        let seq = match cursor.u8() % 4 {
            0 => high,
            1 => low.saturating_sub(1),
            _ => low.saturating_add(u64::from(cursor.u8()) % (high - low).max(1)),
        };
        let result = self.handle(self.now, Event::Rejected { seq });
        if low <= seq && seq < high {
            assert_eq!(result, Ok(()), "Rejected {seq} within {low}..{high}");
            // The host drops every block from `seq` on; delivery resumes there.
            self.next = seq;
        } else {
            assert_eq!(
                result,
                Err(EventError::NotAwaitingVerdict { seq }),
                "Rejected {seq} outside {low}..{high}"
            );
        }
        self.drain();
    }

    /// A peer answers one outstanding request: honestly, in part, or not
    /// as asked.
    fn respond(&mut self, cursor: &mut Cursor<'_>) {
        // Let due deadlines pass first, so that this input's outcome is
        // exactly the response's (a late timer is exercised elsewhere).
        let result = self.handle(self.now, Event::Timeout);
        assert_eq!(result, Ok(()), "Timeout is never refused");
        self.drain();

        let Some(index) =
            (!self.outstanding.is_empty()).then(|| cursor.below(self.outstanding.len()))
        else {
            return;
        };
        let request = self
            .outstanding
            .values()
            .nth(index)
            .expect("index is in bounds");
        let sent = request.sends[cursor.below(request.sends.len())];
        let range = sent.asked;
        let (nonce, mut from) = (sent.nonce, sent.peer);
        let size = BLOCK_SIZES[cursor.below(BLOCK_SIZES.len())];
        let private = cursor.u8().is_multiple_of(4);
        let honest = |seqs: &mut dyn Iterator<Item = u64>| -> Vec<Payload> {
            seqs.map(|seq| payload(seq, size, private)).collect()
        };
        let (start, end) = (range.start(), range.end());
        let mut message_nonce = nonce;
        let mut message_channel = channel();
        let mut not_a_response = false;
        let payloads = match cursor.u8() % 14 {
            0..=3 => honest(&mut (start..=end)),
            // A prefix.
            4 => {
                let last = start.saturating_add(u64::from(cursor.u8()) % range.len());
                honest(&mut (start..=last))
            }
            // Holes.
            5 => {
                let mask = cursor.u16();
                honest(&mut (start..=end).filter(|seq| mask & (1 << (seq % 16)) != 0))
            }
            // Nothing.
            6 => Vec::new(),
            // Outside the range, with maybe one block inside.
            7 => {
                let mut seqs = vec![
                    start.saturating_sub(1),
                    end.saturating_add(1),
                    end.saturating_add(u64::from(cursor.u8())),
                ];
                if cursor.bool() {
                    seqs.push(start.saturating_add(u64::from(cursor.u8()) % range.len()));
                }
                honest(&mut seqs.into_iter())
            }
            // Numbers that do not match their block, or no block at all.
            8 => {
                let seq = start.saturating_add(u64::from(cursor.u8()) % range.len());
                let len = cursor.below(24);
                let data = if cursor.bool() {
                    block(seq.wrapping_add(1), size)
                } else {
                    Bytes::copy_from_slice(cursor.bytes(len))
                };
                let mut payloads = honest(&mut (start..seq));
                payloads.push(Payload {
                    seq_num: seq,
                    data,
                    private_data: vec![],
                });
                payloads
            }
            // Out of order, with duplicates.
            9 => {
                let mut payloads = honest(&mut (start..=end).rev());
                payloads.extend(honest(&mut (start..=end).step_by(2)));
                payloads
            }
            10 => {
                message_nonce = match cursor.u8() % 3 {
                    0 => nonce.wrapping_add(1),
                    1 => 0,
                    _ => cursor.u64(),
                };
                honest(&mut (start..=end))
            }
            11 => {
                from = cursor.below(8) as u8;
                honest(&mut (start..=end))
            }
            12 => {
                message_channel = Bytes::from_static(b"otherchannel");
                honest(&mut (start..=end))
            }
            _ => {
                not_a_response = true;
                Vec::new()
            }
        };
        // Usable: inside the range that send asked for.
        let named = self.with_nonce(message_nonce);
        let usable_range = named
            .and_then(|start| {
                self.outstanding[&start]
                    .sends
                    .iter()
                    .find(|sent| sent.nonce == message_nonce && sent.peer == from)
            })
            .map_or(range, |sent| sent.asked);
        let usable: Vec<u64> = payloads
            .iter()
            .filter(|p| {
                usable_range.contains(p.seq_num) && wire::block_number(&p.data) == Ok(p.seq_num)
            })
            .map(|p| p.seq_num)
            .collect();
        let message = if not_a_response {
            wire::state_request(message_nonce, message_channel, start, end)
        } else {
            wire::state_response(message_nonce, message_channel.clone(), payloads)
        };
        let unknown = ResponseError::UnknownNonce {
            nonce: message_nonce,
        };
        let expected = if not_a_response {
            Expect::Exactly(Err(ResponseError::NotAResponse))
        } else if message.channel != CHANNEL {
            Expect::Exactly(Err(ResponseError::WrongChannel))
        } else if let Some(start) = named {
            let sends: Vec<Sent> = self.outstanding[&start]
                .sends
                .iter()
                .filter(|sent| sent.nonce == message_nonce && sent.peer == from)
                .copied()
                .collect();
            if sends.is_empty() {
                Expect::Exactly(Err(ResponseError::UnexpectedPeer {
                    nonce: message_nonce,
                }))
            } else if sends.iter().all(|sent| sent.state != SentState::Open) {
                Expect::OkOrUnknown
            } else {
                Expect::Exactly(Ok(()))
            }
        } else {
            Expect::Exactly(Err(unknown.clone()))
        };
        let result = if cursor.bool() {
            let bytes = Bytes::from(message.encode_to_vec());
            self.handle_bytes(self.now, from, bytes)
        } else {
            self.handle(self.now, Event::Response { from, message })
        };
        match expected {
            Expect::Exactly(expected) => assert_eq!(
                result,
                expected.map_err(EventError::Response),
                "response for nonce {message_nonce} from {from}"
            ),
            Expect::OkOrUnknown => assert!(
                result.is_ok() || result == Err(EventError::Response(unknown)),
                "response for nonce {message_nonce} from {from}: {result:?}"
            ),
        }
        if let (Ok(()), Some(start)) = (&result, named) {
            if usable.is_empty() {
                // Nothing usable: that send is over, the range goes on.
                let request = self.outstanding.get_mut(&start).expect("named above");
                for sent in &mut request.sends {
                    if sent.nonce == message_nonce && sent.peer == from {
                        sent.state = SentState::Answered;
                    }
                }
            } else {
                // A response with a usable block ends its request: what did
                // not come is planned again. So does it a part split off
                // the range whose blocks came in it.
                self.outstanding.remove(&start);
                for &seq in &usable {
                    let split_off = self
                        .outstanding
                        .range(..=seq)
                        .next_back()
                        .filter(|(_, other)| other.range.contains(seq))
                        .map(|(&start, _)| start);
                    if let Some(start) = split_off {
                        self.outstanding.remove(&start);
                    }
                }
                self.offered.extend(usable);
                self.block_seen = true;
            }
        }
        self.drain();
    }

    /// Takes every action and checks it, then the machine's state.
    fn drain(&mut self) {
        // Probing may cause actions in turn; twice settles it.
        for _ in 0..3 {
            while let Some(action) = self.machine.poll_action() {
                match action {
                    Action::SendRequest { to, message } => self.on_send(to, &message),
                    Action::AddPayload { payload, from } => self.on_add(&payload, &from),
                    Action::GiveUp { range, reason } => self.on_give_up(range, reason),
                }
            }
            if self.machine.stats().in_flight == self.outstanding.len() {
                break;
            }
            self.probe();
        }
        self.check_state();
    }

    /// Finds the requests the machine dropped without an action: it may drop
    /// a request once every block of its range came another way (gossip, a
    /// hedge's twin). A response from a peer never asked tells, changing
    /// nothing but a counter: `UnexpectedPeer` if the nonce is outstanding,
    /// `UnknownNonce` if not.
    fn probe(&mut self) {
        let probes: Vec<(u64, u64)> = self
            .outstanding
            .iter()
            .map(|(start, request)| (*start, request.sends[0].nonce))
            .collect();
        for (start, nonce) in probes {
            let message = wire::state_response(nonce, channel(), Vec::new());
            let event = Event::Response {
                from: PROBE,
                message,
            };
            let seen = self.seen;
            match self.handle(seen, event) {
                Err(EventError::Response(ResponseError::UnexpectedPeer { .. })) => {}
                Err(EventError::Response(ResponseError::UnknownNonce { .. })) => {
                    let request = self.outstanding.remove(&start).expect("listed above");
                    let (start, end) = (request.range.start(), request.range.end());
                    let held =
                        (start..=end).all(|seq| seq < self.next || self.offered.contains(&seq));
                    assert!(
                        held,
                        "request {} dropped, but its blocks did not all come",
                        request.range
                    );
                }
                other => panic!("probe of nonce {nonce}: {other:?}"),
            }
        }
    }

    fn on_send(&mut self, to: u8, message: &GossipMessage) {
        assert_eq!(message.channel, CHANNEL, "requests name our channel");
        assert_eq!(message.tag, Tag::ChanOrOrg as i32, "tag CHAN_OR_ORG");
        let request: &RemoteStateRequest =
            wire::as_state_request(message).expect("SendRequest carries a state request");
        let range = SeqRange::new(request.start_seq_num, request.end_seq_num)
            .unwrap_or_else(|| panic!("empty range requested: {request:?}"));
        assert!(
            range.len() <= self.config.batch_size + 1,
            "{range} is longer than batch_size + 1"
        );
        let covers =
            |view: &[PeerState<u8>]| usable_height(view, to).is_some_and(|h| h > range.end());
        assert!(
            covers(&self.view) || covers(&self.previous_view),
            "{range} sent to peer {to}, which does not advertise it"
        );
        assert!(
            range.end() < self.committed.saturating_add(self.config.window_blocks),
            "{range} lies beyond the window from {}",
            self.committed
        );
        let nonce = message.nonce;
        if let Some(start) = self.with_nonce(nonce) {
            assert_eq!(
                start,
                range.start(),
                "nonce {nonce} of a request for {range} names another request"
            );
        }
        let sent = Sent {
            nonce,
            peer: to,
            asked: range,
            state: SentState::Open,
        };
        // A split: the upper part of a waiting range, before any block.
        let split_of = self
            .outstanding
            .range(..range.start())
            .next_back()
            .filter(|(_, request)| request.range.end() == range.end())
            .map(|(start, _)| *start);
        match self.outstanding.get_mut(&range.start()) {
            Some(request) if request.range == range => {
                // A retry or a hedge of the same range.
                request.sends.push(sent);
            }
            // A retry cut to what a good peer holds: the lower part of the
            // range, the rest no longer requested.
            Some(request) if range.end() < request.range.end() => {
                request.range = range;
                request.sends.push(sent);
            }
            None if split_of.is_some() => {
                assert!(!self.block_seen, "{range} split off after a block came");
                assert!(
                    range.start() > self.next,
                    "{range} split off at or below the delivery point {}",
                    self.next
                );
                let start = split_of.expect("checked");
                let request = self.outstanding.get_mut(&start).expect("found above");
                assert!(
                    request
                        .sends
                        .iter()
                        .any(|sent| sent.state == SentState::Open && sent.peer != to),
                    "{range} split off {} for its own peer, or a range not waiting",
                    request.range
                );
                request.range = SeqRange::new(start, range.start() - 1).expect("start < range");
                self.outstanding.insert(
                    range.start(),
                    Outstanding {
                        range,
                        sends: vec![sent],
                    },
                );
            }
            _ => {
                for request in self.outstanding.values() {
                    assert!(
                        !request.range.overlaps(&range),
                        "{range} (nonce {nonce}) overlaps outstanding {}",
                        request.range
                    );
                }
                let sends = vec![sent];
                self.outstanding
                    .insert(range.start(), Outstanding { range, sends });
            }
        }
        let ranges = self.asked.entry(to).or_default();
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }

    fn on_add(&mut self, payload: &Payload, from: &Origin<u8>) {
        let seq = payload.seq_num;
        assert_eq!(seq, self.next, "AddPayload out of order");
        self.next = self.next.checked_add(1).expect("block u64::MAX delivered");
        if let Origin::Peer(peer) = from {
            let asked = self
                .asked
                .get(peer)
                .is_some_and(|ranges| ranges.iter().any(|range| range.contains(seq)));
            assert!(
                asked,
                "block {seq} delivered from peer {peer}, never asked for it"
            );
            assert_eq!(
                wire::block_number(&payload.data),
                Ok(seq),
                "a peer's block is checked"
            );
        }
    }

    fn on_give_up(&mut self, range: SeqRange, reason: GiveUpReason) {
        let start = self
            .outstanding
            .get(&range.start())
            .is_some_and(|request| request.range == range)
            .then_some(range.start());
        match (start, reason) {
            (Some(start), _) => {
                let request = self.outstanding.remove(&start).expect("found above");
                if let GiveUpReason::RetriesExhausted { sends } = reason {
                    // Hedges are sends too, but do not count as retries.
                    assert!(sends as usize <= request.sends.len(), "sends of {range}");
                    assert!(sends > self.config.max_retries, "{range} given up early");
                }
            }
            (None, GiveUpReason::RetriesExhausted { .. }) => {
                panic!("{range} given up after retries, but it was never requested")
            }
            (None, _) => {
                // A range planned but never sent: it must have been free.
                for request in self.outstanding.values() {
                    assert!(
                        !request.range.overlaps(&range),
                        "{range} given up ({reason:?}) while {} is requested",
                        request.range
                    );
                }
            }
        }
    }

    fn check_state(&self) {
        let stats = self.machine.stats();
        let config = &self.config;
        assert_eq!(stats.height, self.next, "height is the next delivery");
        assert_eq!(self.machine.height(), self.next);
        assert_eq!(stats.committed, self.committed, "committed height");
        assert_eq!(
            stats.uncommitted_blocks,
            self.next - self.committed,
            "delivered and not committed"
        );
        assert_eq!(
            stats.in_flight,
            self.outstanding.len(),
            "requests in flight: {:?}",
            self.outstanding
        );
        assert!(stats.in_flight <= config.max_in_flight, "max_in_flight");
        for (peer, record) in self.machine.peer_stats_iter() {
            assert!(
                record.in_flight <= config.max_in_flight_per_peer,
                "peer {peer}: {} in flight",
                record.in_flight
            );
            assert!(
                stats.in_flight > 0 || record.in_flight == 0,
                "peer {peer}: {} in flight, but no request is outstanding",
                record.in_flight
            );
        }
        let held = stats.buffered_blocks as u64 + stats.uncommitted_blocks;
        assert!(
            held <= config.window_blocks + config.block_buffer,
            "{held} blocks held ({} buffered, {} uncommitted)",
            stats.buffered_blocks,
            stats.uncommitted_blocks
        );
        let held_bytes = stats.buffered_bytes as u64 + stats.uncommitted_bytes;
        assert!(
            held_bytes <= config.window_bytes.saturating_add(self.max_payload),
            "{held_bytes} bytes held ({} buffered, {} uncommitted)",
            stats.buffered_bytes,
            stats.uncommitted_bytes
        );
        // After a host stall the machine asks for a `Timeout` at once, once
        // the inputs queued meanwhile are in: its timer may lie in the past.
        let deferred = self.machine.deadlines_deferred();
        if let Some(deadline) = self.machine.poll_timeout().filter(|_| !deferred) {
            assert!(
                deadline > self.seen,
                "poll_timeout is {:?} before the latest now",
                self.seen.saturating_duration_since(deadline)
            );
        }
    }
}

// --- 3. the responder -------------------------------------------------------------

/// The responder configurations the first input byte chooses from.
fn responder_config(selector: u8) -> Config {
    match selector % 4 {
        0 => Config::fabric(),
        1 => Config::default(),
        // Every admission limit small enough to bind.
        2 => {
            let mut config = Config::default();
            config.max_response_bytes = 300;
            config.max_requests_per_peer = 2;
            config.peer_blocks_per_second = 20;
            config.peer_burst_blocks = 30;
            config.max_queued_requests = 3;
            config.max_concurrent_reads = 2;
            config.read_timeout = Duration::from_secs(1);
            // A crowd is three peers: of four, up to three can be held
            // back, and freed.
            config.favoured_peers = 1;
            config
        }
        _ => {
            let mut config = Config::default();
            config.batch_size = 3;
            config.max_response_bytes = 1;
            config.max_requests_per_peer = 1;
            config.peer_blocks_per_second = 1;
            config.peer_burst_blocks = 4;
            config.max_queued_requests = 1;
            config.max_concurrent_reads = 1;
            config.read_timeout = Duration::from_millis(500);
            config
        }
    }
}

/// An admitted request, as the model tracks it.
#[derive(Debug, Clone)]
struct Job {
    from: u8,
    nonce: u64,
    range: SeqRange,
    admitted: Instant,
}

struct ResponderModel {
    machine: StateResponder<u8>,
    config: Config,
    now: Instant,
    height: u64,
    /// Admitted, waiting for a read slot, in admission order.
    queue: VecDeque<Job>,
    /// Reads handed to the host: the job and when it started.
    reads: BTreeMap<Ticket, (Job, Instant)>,
    /// Every ticket issued.
    tickets: Vec<Ticket>,
    /// The responses the machine must send next, in order.
    expected: VecDeque<(u8, u64, Vec<Payload>)>,
    expired: u64,
    /// The `Dropped` actions the machine must emit next, in order.
    expected_drops: VecDeque<(u8, u64, RequestError)>,
    /// Peers whose latest answer went in the background.
    sent_background: BTreeSet<u8>,
    stale: u64,
    /// Per peer: busy-reply tokens (nano-replies) and when they were
    /// counted.
    busy: BTreeMap<u8, (u128, Instant)>,
    /// The busy reply the machine must send in the current drain.
    busy_due: Option<(u8, u64)>,
    busy_replies: u64,
    busy_suppressed: u64,
    /// The peer whose read started last.
    last_started: Option<u8>,
    /// Reads whose peer disconnected: answered to no one.
    orphaned: BTreeSet<Ticket>,
    disconnected_queued: u64,
    disconnected_reads: u64,
    /// Queued requests whose place a peer holding fewer places took.
    evicted: u64,
    /// Per peer: when its latest read started.
    read_starts: BTreeMap<u8, Instant>,
}

/// Interprets `data` as a program of requests, reads, height changes and
/// time on a `StateResponder<u8>`, checking every refusal and every
/// response against a model: the nonce and peer of the request, the range
/// clamped to our height, the host's first copy of each block in ascending
/// order, at most `batch_size + 1` of them and within `max_response_bytes`
/// unless there is only one; and the accounting of `ResponderStats`.
pub fn responder_requests(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let config = responder_config(cursor.u8());
    let height_byte = cursor.u8();
    let height = if height_byte < 0xE0 {
        u64::from(height_byte % 40)
    } else {
        u64::MAX - u64::from(height_byte - 0xE0)
    };
    let machine = StateResponder::new(config.clone(), channel(), height)
        .expect("the harness's configurations are valid");
    let mut model = ResponderModel {
        machine,
        config,
        now: epoch(),
        height,
        queue: VecDeque::new(),
        reads: BTreeMap::new(),
        tickets: Vec::new(),
        expected: VecDeque::new(),
        expired: 0,
        expected_drops: VecDeque::new(),
        sent_background: BTreeSet::new(),
        stale: 0,
        busy: BTreeMap::new(),
        busy_due: None,
        busy_replies: 0,
        busy_suppressed: 0,
        last_started: None,
        orphaned: BTreeSet::new(),
        disconnected_queued: 0,
        evicted: 0,
        disconnected_reads: 0,
        read_starts: BTreeMap::new(),
    };
    while !cursor.is_empty() {
        model.step(&mut cursor);
    }
}

/// What the responder must send for a read of `range` answered with
/// `payloads`, per its documentation: the payloads inside the range,
/// ascending, the host's first copy of each number, then the longest prefix
/// within `max_bytes`, but always the first one.
fn expected_selection(
    range: SeqRange,
    nonce: u64,
    payloads: &[Payload],
    max_bytes: usize,
) -> Vec<Payload> {
    let mut by_seq: BTreeMap<u64, &Payload> = BTreeMap::new();
    for payload in payloads {
        if range.contains(payload.seq_num) {
            by_seq.entry(payload.seq_num).or_insert(payload);
        }
    }
    // The oracle encodes each candidate; the machine sums field lengths.
    let mut selected = Vec::new();
    for payload in by_seq.into_values() {
        selected.push(payload.clone());
        let len = wire::state_response(nonce, CHANNEL.into(), selected.clone()).encoded_len();
        if selected.len() > 1 && len > max_bytes {
            selected.pop();
            break;
        }
    }
    selected
}

impl ResponderModel {
    fn deadline(&self, started: Instant) -> Option<Instant> {
        started.checked_add(self.config.read_timeout)
    }

    /// Moves the model's clock as the machine's `advance` does: reads due
    /// by `now` are abandoned (queued reads start when the actions are
    /// drained).
    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        let due: Vec<Ticket> = self
            .reads
            .iter()
            .filter(|(_, (_, started))| self.deadline(*started).is_some_and(|d| d <= self.now))
            .map(|(ticket, _)| *ticket)
            .collect();
        for ticket in due {
            self.orphaned.remove(&ticket);
            if let Some((job, _)) = self.reads.remove(&ticket) {
                self.expected_drops
                    .push_back((job.from, job.nonce, RequestError::ReadTimedOut));
            }
            self.expired += 1;
        }
        // Queued in admission order: the stale ones are in front.
        while let Some(job) = self.queue.front() {
            if self.deadline(job.admitted).is_none_or(|d| d > self.now) {
                break;
            }
            let job = self.queue.pop_front().expect("just seen");
            let waited = self.now.saturating_duration_since(job.admitted);
            self.expected_drops
                .push_back((job.from, job.nonce, RequestError::Stale { waited }));
            self.stale += 1;
        }
        self.now
    }

    fn step(&mut self, cursor: &mut Cursor<'_>) {
        match cursor.u8() % 10 {
            0..=2 => self.structured_request(cursor),
            3 => self.raw_request(cursor),
            4..=6 => self.serve(cursor),
            7 => {
                let kind = cursor.u8();
                if kind % 8 == 7 {
                    self.disconnect(cursor.below(4) as u8);
                    return;
                }
                let height = match kind % 4 {
                    0 => 0,
                    1 => u64::MAX - u64::from(cursor.u8() % 4),
                    _ => self.height.saturating_add(u64::from(cursor.u8() % 16)),
                };
                let now = self.advance(self.now);
                self.height = height;
                let result = self.machine.handle(now, ResponderEvent::Height(height));
                assert_eq!(result, Ok(()), "Height is never refused");
                assert_eq!(self.machine.height(), height);
                self.drain();
            }
            _ => {
                let delta = step(cursor);
                let at = if cursor.u8().is_multiple_of(4) {
                    self.now.checked_sub(delta).unwrap_or(self.now)
                } else {
                    self.now + delta
                };
                self.advance(at);
                let result = self.machine.handle(at, ResponderEvent::Timeout);
                assert_eq!(result, Ok(()), "Timeout is never refused");
                self.drain();
            }
        }
    }

    /// A request built field by field: mostly valid, sometimes not.
    fn structured_request(&mut self, cursor: &mut Cursor<'_>) {
        let from = cursor.below(4) as u8;
        let nonce = match cursor.u8() % 4 {
            0 => cursor.u64(),
            _ => u64::from(cursor.u8()),
        };
        let start = match cursor.u8() % 8 {
            0 => 0,
            1 => u64::MAX - u64::from(cursor.u8() % 16),
            2 => self.height.saturating_add(u64::from(cursor.u8() % 4)),
            _ => self
                .height
                .saturating_sub(u64::from(cursor.u8() % 24))
                .saturating_add(u64::from(cursor.u8() % 4)),
        };
        let end = match cursor.u8() % 8 {
            0 => start.saturating_sub(1 + u64::from(cursor.u8() % 3)),
            1 => start.saturating_add(self.config.batch_size + 1),
            2 => u64::MAX,
            _ => start.saturating_add(u64::from(cursor.u8()) % (self.config.batch_size + 1)),
        };
        let mut message = wire::state_request(nonce, channel(), start, end);
        match cursor.u8() % 16 {
            0 => message.channel = Bytes::from_static(b"otherchannel"),
            1 => message.content = None,
            2 => message.content = Some(Content::DataMsg(DataMessage::default())),
            3 => message = wire::state_response(nonce, channel(), vec![payload(start, 8, false)]),
            _ => {}
        }
        let now = self.advance(self.now);
        let was_repeater = self.machine.is_repeater(&from);
        let result = if cursor.bool() {
            let bytes = Bytes::from(message.encode_to_vec());
            self.machine.handle_request_bytes(now, from, bytes)
        } else {
            let event = ResponderEvent::Request {
                from,
                message: message.clone(),
            };
            self.machine.handle(now, event)
        };
        self.on_request_result(from, Ok(message), result, was_repeater);
    }

    /// Raw bytes on a peer's connection: garbage, or a request encoded and
    /// then damaged.
    fn raw_request(&mut self, cursor: &mut Cursor<'_>) {
        let from = cursor.below(4) as u8;
        let len = cursor.below(64);
        let bytes = Bytes::copy_from_slice(cursor.bytes(len));
        let decoded = wire::decode_gossip_message(bytes.clone(), self.config.max_message_size);
        let now = self.advance(self.now);
        let was_repeater = self.machine.is_repeater(&from);
        let result = self.machine.handle_request_bytes(now, from, bytes);
        self.on_request_result(from, decoded, result, was_repeater);
    }

    /// Checks a request's outcome against the model and records its effect.
    /// `was_repeater`: whether the machine took `from` for a repeater
    /// before the request (which peers repeat themselves is the machine's
    /// own count, tested in its unit tests; the model checks what follows
    /// from it).
    fn on_request_result(
        &mut self,
        from: u8,
        decoded: Result<GossipMessage, WireError>,
        result: Result<(), RequestError>,
        was_repeater: bool,
    ) {
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                assert_eq!(result, Err(RequestError::Malformed(error)));
                self.drain();
                return;
            }
        };
        let validation = match wire::as_state_request(&message) {
            None => Err(RequestError::NotARequest),
            Some(_) if message.channel != CHANNEL => Err(RequestError::WrongChannel),
            Some(request) => {
                let (start, end) = (request.start_seq_num, request.end_seq_num);
                if start > end {
                    Err(RequestError::InvalidRange { start, end })
                } else if end - start > self.config.batch_size {
                    Err(RequestError::RangeTooLong {
                        start,
                        end,
                        batch_size: self.config.batch_size,
                    })
                } else {
                    Ok((start, end))
                }
            }
        };
        let (start, end) = match validation {
            Err(error) => {
                assert_eq!(result, Err(error), "validation of {message:?}");
                self.drain();
                return;
            }
            Ok(range) => range,
        };
        if start >= self.height {
            // Nothing to read: an empty response at once, or a rate refusal.
            match result {
                Ok(()) => self.expected.push_back((from, message.nonce, Vec::new())),
                Err(error) => {
                    assert_eq!(error, RequestError::RateLimited, "start {start}");
                    self.expect_busy_reply(from, message.nonce);
                }
            }
            self.drain();
            return;
        }
        let range = SeqRange::new(start, end.min(self.height - 1)).expect("start < height");
        // An orphaned read no longer counts against its (reconnected) peer.
        let active = self.queue.iter().filter(|job| job.from == from).count()
            + self
                .reads
                .iter()
                .filter(|(ticket, (job, _))| job.from == from && !self.orphaned.contains(ticket))
                .count();
        // A repeater may hold an eighth of the others' share.
        let limit = if was_repeater {
            (self.config.max_requests_per_peer / 8).max(1)
        } else {
            self.config.max_requests_per_peer
        };
        let too_many = active >= limit;
        let queue_full = self.reads.len() >= self.config.max_concurrent_reads
            && self.queue.len() >= self.config.max_queued_requests;
        // `Config::fair_queue`: into a full queue, in the newest queued
        // place of the peer holding the most places, if two more than ours.
        let victim = if queue_full && self.config.fair_queue {
            self.fair_queue_victim(from, was_repeater)
        } else {
            None
        };
        match result {
            Ok(()) => {
                assert!(!too_many, "peer {from} admitted with {active} active");
                assert!(
                    !queue_full || victim.is_some(),
                    "admitted into a full queue"
                );
                if let Some(victim) = victim {
                    let newest = self
                        .queue
                        .iter()
                        .rposition(|job| job.from == victim)
                        .expect("the victim has a job queued");
                    let job = self.queue.remove(newest).expect("a queued job");
                    self.evicted += 1;
                    if !self.machine.is_repeater(&victim) {
                        self.expect_busy_reply(victim, job.nonce);
                    }
                }
                self.queue.push_back(Job {
                    from,
                    nonce: message.nonce,
                    range,
                    admitted: self.now,
                });
            }
            Err(RequestError::TooManyRequests) => {
                assert!(too_many, "TooManyRequests with {active} active")
            }
            Err(RequestError::RateLimited) => assert!(!too_many, "concurrency is checked first"),
            Err(RequestError::QueueFull) => {
                assert!(
                    queue_full && !too_many && victim.is_none(),
                    "QueueFull refused wrongly"
                )
            }
            Err(error) => panic!("request [{start}, {end}] refused with {error:?}"),
        }
        if result.is_err() && !was_repeater {
            self.expect_busy_reply(from, message.nonce);
        }
        self.drain();
    }

    /// The peer whose newest queued job a request of `from` takes the place
    /// of in a full queue, by the three rules of `Config::fair_queue`, of
    /// the peers with jobs queued: a foreground peer takes a background
    /// one's (the one holding the most places); otherwise, among peers as
    /// much in the background as `from`, the one holding the most places
    /// if two more than `from`; otherwise, if `from` holds none, the one
    /// whose latest read started last (within a minute), if after `from`'s
    /// latest. Of peers alike, the one whose newest job came last.
    fn fair_queue_victim(&self, from: u8, from_repeater: bool) -> Option<u8> {
        let reading = |peer: u8| {
            self.reads
                .iter()
                .filter(|(ticket, (job, _))| job.from == peer && !self.orphaned.contains(ticket))
                .count()
        };
        let latest_read = |peer: u8| {
            self.read_starts
                .get(&peer)
                .copied()
                .filter(|at| self.now.saturating_duration_since(*at) < Duration::from_secs(60))
        };
        // Per peer with jobs queued: places held, and its newest's position.
        let mut held: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
        for (position, job) in self.queue.iter().enumerate() {
            let entry = held.entry(job.from).or_insert((reading(job.from), 0));
            *entry = (entry.0 + 1, position);
        }
        let ours = held.get(&from).map_or(reading(from), |&(count, _)| count);
        let others = || held.iter().filter(|(&peer, _)| peer != from);
        if !from_repeater {
            let background = others()
                .filter(|(peer, _)| self.machine.is_repeater(peer))
                .max_by_key(|(_, &places)| places);
            if let Some((&victim, _)) = background {
                return Some(victim);
            }
        }
        let alike = || others().filter(|(peer, _)| self.machine.is_repeater(peer) == from_repeater);
        let (&victim, &(most, _)) = alike().max_by_key(|(_, &places)| places)?;
        if most >= ours + 2 {
            return Some(victim);
        }
        if ours > 0 {
            return None;
        }
        let (&victim, _) =
            alike().max_by_key(|(&peer, &(_, position))| (latest_read(peer), position))?;
        (latest_read(victim) > latest_read(from)).then_some(victim)
    }

    /// A load refusal: a busy reply is due if the peer's budget holds one.
    /// The model's bucket is the documented one: `busy_reply_burst`
    /// replies, refilled at `busy_replies_per_second`.
    fn expect_busy_reply(&mut self, from: u8, nonce: u64) {
        const NANO: u128 = 1_000_000_000;
        let capacity = u128::from(self.config.busy_reply_burst) * NANO;
        let rate = u128::from(self.config.busy_replies_per_second);
        let now = self.now;
        let tokens = self.busy.get(&from).map_or(capacity, |(tokens, at)| {
            let refill = now.saturating_duration_since(*at).as_nanos() * rate;
            tokens.saturating_add(refill).min(capacity)
        });
        if tokens >= NANO {
            self.busy.insert(from, (tokens - NANO, now));
            self.busy_due = Some((from, nonce));
            self.busy_replies += 1;
        } else {
            self.busy_suppressed += 1;
        }
    }

    /// `peer`'s connection closes: its queued jobs go, and its reads will
    /// be answered to no one.
    fn disconnect(&mut self, peer: u8) {
        let now = self.advance(self.now);
        let before = self.queue.len();
        self.queue.retain(|job| job.from != peer);
        self.disconnected_queued += (before - self.queue.len()) as u64;
        for (ticket, (job, _)) in &self.reads {
            if job.from == peer {
                self.orphaned.insert(*ticket);
            }
        }
        let result = self
            .machine
            .handle(now, ResponderEvent::PeerDisconnected { peer });
        assert_eq!(result, Ok(()), "PeerDisconnected is never refused");
        self.drain();
    }

    /// The host answers one read, honestly or not, or answers a ticket that
    /// is no longer outstanding.
    fn serve(&mut self, cursor: &mut Cursor<'_>) {
        let now = self.advance(self.now);
        let stale = cursor.u8().is_multiple_of(8);
        let ticket = if stale || self.reads.is_empty() {
            if self.tickets.is_empty() {
                return;
            }
            self.tickets[cursor.below(self.tickets.len())]
        } else {
            let index = cursor.below(self.reads.len());
            *self.reads.keys().nth(index).expect("index is in bounds")
        };
        let range = self
            .reads
            .get(&ticket)
            .map(|(job, _)| job.range)
            .unwrap_or(SeqRange::single(0));
        let (start, end) = (range.start(), range.end());
        let size = BLOCK_SIZES[cursor.below(BLOCK_SIZES.len())];
        let private = cursor.u8().is_multiple_of(4);
        let honest = |seqs: &mut dyn Iterator<Item = u64>| -> Vec<Payload> {
            seqs.map(|seq| payload(seq, size, private)).collect()
        };
        let payloads = match cursor.u8() % 8 {
            0..=2 => honest(&mut (start..=end)),
            // Varied sizes: the byte cap cuts somewhere.
            3 => (start..=end)
                .map(|seq| payload(seq, BLOCK_SIZES[cursor.below(4)], false))
                .collect(),
            // Holes.
            4 => {
                let mask = cursor.u16();
                honest(&mut (start..=end).filter(|seq| mask & (1 << (seq % 16)) != 0))
            }
            // Out of order, with second copies that must lose.
            5 => {
                let mut payloads = honest(&mut (start..=end).rev());
                payloads.extend((start..=end).map(|seq| payload(seq, 1, true)));
                payloads
            }
            // Outside the range.
            6 => honest(
                &mut [
                    start.saturating_sub(1),
                    end.saturating_add(1),
                    u64::from(cursor.u8()),
                ]
                .into_iter(),
            ),
            _ => Vec::new(),
        };
        let outstanding = self.reads.remove(&ticket);
        let event = ResponderEvent::BlocksRead {
            ticket,
            payloads: payloads.clone(),
        };
        let result = self.machine.handle(now, event);
        match outstanding {
            Some(_) if self.orphaned.remove(&ticket) => {
                assert_eq!(result, Ok(()), "BlocksRead for orphaned {ticket}");
                self.disconnected_reads += 1;
            }
            Some((job, _)) => {
                assert_eq!(result, Ok(()), "BlocksRead for outstanding {ticket}");
                let selected = expected_selection(
                    job.range,
                    job.nonce,
                    &payloads,
                    self.config.max_response_bytes,
                );
                self.expected.push_back((job.from, job.nonce, selected));
            }
            None => assert_eq!(result, Err(RequestError::UnknownTicket(ticket))),
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                ResponderAction::ReadBlocks {
                    ticket,
                    to,
                    range,
                    max_bytes,
                } => {
                    let job = self
                        .pop_next()
                        .unwrap_or_else(|| panic!("ReadBlocks {ticket} with nothing queued"));
                    assert_eq!(
                        (to, range),
                        (job.from, job.range),
                        "reads start round-robin across peers, each peer's oldest first"
                    );
                    assert_eq!(max_bytes, self.config.max_response_bytes);
                    assert_eq!(
                        ticket.get(),
                        self.tickets.len() as u64,
                        "tickets in sequence"
                    );
                    assert!(
                        !self.tickets.contains(&ticket),
                        "ticket {ticket} issued twice"
                    );
                    assert!(range.len() <= self.config.batch_size + 1);
                    self.tickets.push(ticket);
                    self.reads.insert(ticket, (job, self.now));
                }
                ResponderAction::SendResponse {
                    to,
                    message,
                    background,
                } => {
                    if background {
                        self.sent_background.insert(to);
                    } else {
                        self.sent_background.remove(&to);
                    }
                    if self.expected.is_empty() && self.busy_due == Some((to, message.nonce)) {
                        self.busy_due = None;
                        assert_eq!(
                            message,
                            wire::state_response(message.nonce, channel(), vec![]),
                            "a busy reply is an empty response"
                        );
                        continue;
                    }
                    let (from, nonce, payloads) = self
                        .expected
                        .pop_front()
                        .unwrap_or_else(|| panic!("unexpected response {message:?}"));
                    assert_eq!(to, from, "the response goes to the requester");
                    assert_eq!(
                        message.nonce, nonce,
                        "the response carries the request's nonce"
                    );
                    assert_eq!(message.channel, CHANNEL);
                    assert_eq!(message.tag, Tag::ChanOrOrg as i32);
                    let response =
                        wire::as_state_response(&message).expect("SendResponse carries a response");
                    let sent = &response.payloads;
                    assert!(
                        sent.windows(2).all(|w| w[0].seq_num < w[1].seq_num),
                        "payloads ascend"
                    );
                    assert!(sent.len() as u64 <= self.config.batch_size + 1);
                    let bytes = message.encoded_len();
                    assert!(
                        sent.len() <= 1 || bytes <= self.config.max_response_bytes,
                        "{bytes} bytes in {} payloads",
                        sent.len()
                    );
                    assert_eq!(sent, &payloads, "the response is the expected selection");
                }
                // Only for a peer whose latest answer went to the
                // background, and that is no longer in it.
                ResponderAction::Promote { to } => {
                    assert!(
                        self.sent_background.remove(&to),
                        "Promote for {to}, whose latest answer was not in the background"
                    );
                    assert!(!self.machine.is_background(&to), "{to} is still held back");
                }
                ResponderAction::Dropped { to, nonce, reason } => {
                    let expected = self
                        .expected_drops
                        .pop_front()
                        .unwrap_or_else(|| panic!("unexpected drop of {to}'s {nonce}: {reason}"));
                    assert_eq!((to, nonce, reason), expected, "the drop expected next");
                }
                // `ResponderAction` may be `#[non_exhaustive]`.
                #[allow(unreachable_patterns)]
                other => panic!("unknown action {other:?}"),
            }
        }
        assert!(
            self.expected.is_empty(),
            "responses missing: {:?}",
            self.expected
        );
        assert_eq!(self.busy_due, None, "busy reply missing");
        assert!(
            self.expected_drops.is_empty(),
            "drops missing: {:?}",
            self.expected_drops
        );
        self.check_state();
    }

    /// Whether a job of `peer` may start a read now: a peer holds three
    /// quarters of the slots at most, and the peers in the background a
    /// quarter together.
    fn read_allowed(&self, peer: u8) -> bool {
        let slots = self.config.max_concurrent_reads;
        let live = || {
            self.reads
                .iter()
                .filter(|(ticket, _)| !self.orphaned.contains(ticket))
                .map(|(_, (job, _))| job.from)
        };
        let own = live().filter(|&from| from == peer).count();
        let background = live().filter(|from| self.machine.is_repeater(from)).count();
        own < (slots - (slots / 4).max(1)).max(1)
            && (!self.machine.is_repeater(&peer) || background < (slots / 4).max(1))
    }

    /// The job whose read starts next: the oldest of the first peer after
    /// the one served last (in peer order, wrapping around) that may read,
    /// a peer in the background only if no other may.
    fn pop_next(&mut self) -> Option<Job> {
        let waiting: BTreeSet<u8> = self
            .queue
            .iter()
            .map(|job| job.from)
            .filter(|&peer| self.read_allowed(peer))
            .collect();
        // Peers are 0..4: `last + 1` does not wrap.
        let after = self.last_started.map_or(0, |last| last + 1);
        let rotation: Vec<u8> = waiting
            .range(after..)
            .chain(waiting.iter())
            .copied()
            .collect();
        let peer = rotation
            .iter()
            .copied()
            .find(|peer| !self.machine.is_repeater(peer))
            .or_else(|| rotation.first().copied())?;
        let index = self.queue.iter().position(|job| job.from == peer)?;
        self.last_started = Some(peer);
        self.read_starts.insert(peer, self.now);
        self.queue.remove(index)
    }

    fn check_state(&self) {
        let stats = self.machine.stats();
        let config = &self.config;
        assert_eq!(stats.reading, self.reads.len(), "reads outstanding");
        assert_eq!(stats.queued, self.queue.len(), "requests queued");
        assert!(stats.reading <= config.max_concurrent_reads);
        assert!(stats.queued <= config.max_queued_requests);
        assert!(
            stats.queued == 0
                || stats.reading == config.max_concurrent_reads
                || self.queue.iter().all(|job| !self.read_allowed(job.from)),
            "a request waits while a read slot is free for it"
        );
        assert_eq!(stats.expired_reads, self.expired, "reads abandoned");
        assert_eq!(stats.stale, self.stale, "stale requests dropped");
        assert_eq!(
            (stats.disconnected_queued, stats.disconnected_reads),
            (self.disconnected_queued, self.disconnected_reads),
            "requests dropped for a disconnection"
        );
        assert_eq!(stats.evicted, self.evicted, "queued requests evicted");
        assert_eq!(
            (stats.busy_replies, stats.busy_suppressed),
            (self.busy_replies, self.busy_suppressed),
            "busy replies sent and suppressed"
        );
        assert_eq!(
            stats.requests,
            stats.refused()
                + stats.responses
                + stats.expired_reads
                + stats.disconnected_queued
                + stats.disconnected_reads
                + stats.evicted
                + stats.queued as u64
                + stats.reading as u64,
            "every request is refused, answered, abandoned, evicted, queued or reading: {stats:?}"
        );
        let read = self
            .reads
            .values()
            .next()
            .and_then(|(_, started)| self.deadline(*started));
        let wait = self
            .queue
            .front()
            .and_then(|job| self.deadline(job.admitted));
        let deadline = match (read, wait) {
            (Some(read), Some(wait)) => Some(read.min(wait)),
            (read, wait) => read.or(wait),
        };
        assert_eq!(
            self.machine.poll_timeout(),
            deadline,
            "the first read's or queued request's deadline"
        );
        if let Some(deadline) = deadline {
            assert!(deadline > self.now, "a due read was not abandoned");
        }
    }
}

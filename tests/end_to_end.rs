//! One `AntiEntropy` and one or more `StateResponder`s, in memory, with
//! virtual time: every message is wrapped in an `Envelope` and encoded to
//! bytes as Fabric puts it on the wire, then decoded by the receiver
//! (`handle_request_bytes`, `handle_response_bytes`). Responders read from
//! a ledger of real blocks; the requester's host commits every delivered
//! block in order.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use antientropy::wire::{self, gossip::GossipMessage, gossip::Payload};
use antientropy::{
    Action, AntiEntropy, Config, Event, PeerState, ResponderAction, ResponderEvent, StateResponder,
    Stats,
};
use bytes::Bytes;
use common::*;
use prost::Message;

const REQUESTER: usize = 0;
/// One-way latency of every link.
const LATENCY: Duration = Duration::from_millis(50);
/// Blocks `0..CHAIN` exist; the requester starts at height 1.
const CHAIN: u64 = 200;

/// The chain every responder's ledger is a prefix of.
fn chain() -> Vec<Bytes> {
    (0..CHAIN).map(|seq| block(seq, 64)).collect()
}

/// A responder and the ledger its host reads from.
struct Node {
    responder: StateResponder<usize>,
    /// Blocks `0..height` are readable.
    height: u64,
    /// What its `StateInfo` says (may be stale: above `height`).
    advertised: u64,
    /// The ledger grows by `step` blocks every `every`, up to `CHAIN`.
    growth: Option<(Duration, u64)>,
    next_growth: Option<Instant>,
    /// Requests received: (nonce, start, end, ledger height then).
    received: Vec<(u64, u64, u64, u64)>,
    /// Drops every request unanswered.
    silent: bool,
    /// Serves only a prefix that fits its `max_response_bytes`.
    byte_capped: bool,
}

/// A message on the wire: (arrival, order, to, from, encoded envelope).
type Packet = Reverse<(Instant, u64, usize, usize, Vec<u8>)>;

struct Net {
    t0: Instant,
    now: Instant,
    chain: Vec<Bytes>,
    requester: AntiEntropy<usize>,
    nodes: BTreeMap<usize, Node>,
    wire: BinaryHeap<Packet>,
    sent: u64,
    /// Block numbers delivered, in order.
    delivered: Vec<u64>,
    /// When the last block was delivered.
    caught_up_at: Option<Instant>,
    /// Requests sent: (to, nonce, start, end).
    asked: Vec<(usize, u64, u64, u64)>,
    /// Responses received: (from, nonce, payload numbers).
    answers: Vec<(usize, u64, Vec<u64>)>,
    give_ups: usize,
    /// Every request started at the requester's height when it was sent.
    sequential_starts: bool,
}

/// One responder: its id, its ledger, what it advertises, and its config
/// changes.
struct Spec {
    id: usize,
    height: u64,
    advertised: u64,
    growth: Option<(Duration, u64)>,
    max_response_bytes: Option<usize>,
    silent: bool,
}

impl Spec {
    fn new(id: usize, height: u64) -> Self {
        Self {
            id,
            height,
            advertised: height,
            growth: None,
            max_response_bytes: None,
            silent: false,
        }
    }
}

impl Net {
    fn new(config: Config, specs: Vec<Spec>, seed: u64) -> Self {
        let t0 = epoch();
        let requester = AntiEntropy::new(config.clone(), channel(), 1, seed, t0).unwrap();
        let nodes = specs
            .into_iter()
            .map(|spec| {
                let mut node_config = config.clone();
                if let Some(max) = spec.max_response_bytes {
                    node_config.max_response_bytes = max;
                }
                let responder = StateResponder::new(node_config, channel(), spec.height).unwrap();
                let node = Node {
                    responder,
                    height: spec.height,
                    advertised: spec.advertised,
                    growth: spec.growth,
                    next_growth: spec.growth.map(|(every, _)| t0 + every),
                    received: Vec::new(),
                    silent: spec.silent,
                    byte_capped: spec.max_response_bytes.is_some(),
                };
                (spec.id, node)
            })
            .collect();
        Self {
            t0,
            now: t0,
            chain: chain(),
            requester,
            nodes,
            wire: BinaryHeap::new(),
            sent: 0,
            delivered: Vec::new(),
            caught_up_at: None,
            asked: Vec::new(),
            answers: Vec::new(),
            give_ups: 0,
            sequential_starts: true,
        }
    }

    fn send(&mut self, to: usize, from: usize, message: &GossipMessage) {
        let bytes = wire::wrap_envelope(message).encode_to_vec();
        self.sent += 1;
        self.wire
            .push(Reverse((self.now + LATENCY, self.sent, to, from, bytes)));
    }

    /// The membership view: every responder's advertised height.
    fn view(&self) -> Vec<PeerState<usize>> {
        self.nodes
            .iter()
            .map(|(id, node)| PeerState::new(*id, node.advertised))
            .collect()
    }

    /// Carries out the requester's actions; its host commits each delivered
    /// block at once.
    fn drain_requester(&mut self) {
        loop {
            let mut last = None;
            while let Some(action) = self.requester.poll_action() {
                match action {
                    Action::SendRequest { to, message } => {
                        let (nonce, start, end) = request_of(&message);
                        let advertised = self.nodes[&to].advertised;
                        assert!(
                            start <= end && end < advertised,
                            "asked {to} (advertising {advertised}) for [{start}, {end}]"
                        );
                        self.asked.push((to, nonce, start, end));
                        self.sequential_starts &= start == self.requester.height();
                        self.send(to, REQUESTER, &message);
                    }
                    Action::AddPayload { payload, .. } => {
                        let seq = payload.seq_num;
                        let expected = self.delivered.last().map_or(1, |last| last + 1);
                        assert_eq!(seq, expected, "delivered out of order");
                        assert_eq!(payload.data, self.chain[seq as usize], "block {seq}");
                        self.delivered.push(seq);
                        last = Some(seq);
                    }
                    Action::GiveUp { .. } => self.give_ups += 1,
                }
            }
            let Some(last) = last else {
                return;
            };
            if last + 1 == CHAIN {
                self.caught_up_at = Some(self.now);
            }
            self.requester
                .handle(self.now, Event::Committed { height: last + 1 })
                .unwrap();
        }
    }

    /// Carries out a responder's actions (its host reads at once) and
    /// sends its responses; returns them.
    fn drain_responder(&mut self, id: usize) -> Vec<GossipMessage> {
        let mut out = Vec::new();
        {
            let chain = &self.chain;
            let node = self.nodes.get_mut(&id).unwrap();
            while let Some(action) = node.responder.poll_action() {
                match action {
                    ResponderAction::ReadBlocks { ticket, range, .. } => {
                        let payloads = (range.start()..=range.end())
                            .filter(|&seq| seq < node.height)
                            .map(|seq| Payload {
                                seq_num: seq,
                                data: chain[seq as usize].clone(),
                                private_data: vec![],
                            })
                            .collect();
                        node.responder
                            .handle(self.now, ResponderEvent::BlocksRead { ticket, payloads })
                            .unwrap();
                    }
                    ResponderAction::SendResponse { to, message, .. } => {
                        assert_eq!(to, REQUESTER);
                        out.push(message);
                    }
                    ResponderAction::Dropped { .. } | ResponderAction::Promote { .. } => {}
                }
            }
        }
        for message in &out {
            self.send(REQUESTER, id, message);
        }
        out
    }

    /// Delivers one packet.
    fn receive(&mut self, to: usize, from: usize, bytes: Vec<u8>) {
        let envelope = wire::decode_envelope(Bytes::from(bytes), wire::DEFAULT_MAX_MESSAGE_SIZE)
            .expect("an envelope");
        if to == REQUESTER {
            let message = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE).unwrap();
            let response = wire::as_state_response(&message).expect("a response");
            let seqs = response.payloads.iter().map(|p| p.seq_num).collect();
            self.answers.push((from, message.nonce, seqs));
            // Late duplicates (a retry answered twice) are refused: fine.
            let _ = self
                .requester
                .handle_response_bytes(self.now, from, envelope.payload);
            self.drain_requester();
        } else {
            let message = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE).unwrap();
            let (nonce, start, end) = request_of(&message);
            let node = self.nodes.get_mut(&to).unwrap();
            let height = node.height;
            node.received.push((nonce, start, end, height));
            if node.silent {
                return;
            }
            node.responder
                .handle_request_bytes(self.now, from, envelope.payload)
                .unwrap();
            // Reads are served at once: the answer goes out now, clamped to
            // the last block we hold (Fabric clamps one block too far).
            let answers = self.drain_responder(to);
            assert_eq!(answers.len(), 1);
            assert_eq!(answers[0].nonce, nonce);
            let seqs: Vec<u64> = wire::as_state_response(&answers[0])
                .unwrap()
                .payloads
                .iter()
                .map(|p| p.seq_num)
                .collect();
            let clamped = end.min(height.saturating_sub(1));
            let whole = clamped.saturating_add(1).saturating_sub(start);
            let prefix = seqs.len() as u64;
            assert_eq!(seqs, (start..start + prefix).collect::<Vec<_>>());
            if self.nodes[&to].byte_capped {
                assert!(prefix <= whole);
            } else {
                assert_eq!(prefix, whole, "[{start}, {end}] at height {height}");
            }
        }
    }

    /// Runs until the requester holds and committed the whole chain, or
    /// `limit` of virtual time passes. Returns the time to catch up.
    fn run(&mut self, tick: bool, limit: Duration) -> Duration {
        let view = self.view();
        self.requester
            .handle(self.now, Event::Membership(view))
            .unwrap();
        self.drain_requester();
        if tick {
            self.requester.handle(self.now, Event::Tick).unwrap();
            self.drain_requester();
        }
        while self.caught_up_at.is_none() || !self.wire.is_empty() {
            let timers = [
                self.wire.peek().map(|Reverse(p)| p.0),
                self.requester.poll_timeout(),
            ];
            let node_timers = self
                .nodes
                .values()
                .flat_map(|node| [node.responder.poll_timeout(), node.next_growth]);
            let next = timers
                .into_iter()
                .chain(node_timers)
                .flatten()
                .min()
                .expect("something to wait for");
            assert!(
                next >= self.now,
                "a timer in the past: {:?}",
                self.now - next
            );
            assert!(
                next - self.t0 <= limit,
                "not caught up after {limit:?}: delivered up to {:?}, {:?}",
                self.delivered.last(),
                self.requester.stats()
            );
            self.now = next;
            while self.wire.peek().is_some_and(|Reverse(p)| p.0 <= self.now) {
                let Reverse((_, _, to, from, bytes)) = self.wire.pop().unwrap();
                self.receive(to, from, bytes);
            }
            if self.requester.poll_timeout().is_some_and(|t| t <= self.now) {
                self.requester.handle(self.now, Event::Timeout).unwrap();
                self.drain_requester();
            }
            let ids: Vec<usize> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.nodes.get_mut(&id).unwrap();
                if node.responder.poll_timeout().is_some_and(|t| t <= self.now) {
                    node.responder
                        .handle(self.now, ResponderEvent::Timeout)
                        .unwrap();
                }
                if node.next_growth.is_some_and(|t| t <= self.now) {
                    let (every, step) = node.growth.unwrap();
                    node.height = (node.height + step).min(CHAIN);
                    node.responder
                        .handle(self.now, ResponderEvent::Height(node.height))
                        .unwrap();
                    node.next_growth = (node.height < CHAIN).then_some(self.now + every);
                }
                self.drain_responder(id);
            }
        }
        self.caught_up_at.unwrap() - self.t0
    }

    fn stats(&self) -> Stats {
        self.requester.stats()
    }

    /// The whole chain above the genesis block, each block once, in order.
    fn assert_caught_up(&self) {
        assert_eq!(self.delivered, (1..CHAIN).collect::<Vec<_>>());
        assert_eq!(self.requester.height(), CHAIN);
        let stats = self.stats();
        assert_eq!((stats.height, stats.committed), (CHAIN, CHAIN));
        assert_eq!(stats.target, CHAIN);
        assert_eq!(stats.delivered, CHAIN - 1);
        assert_eq!(stats.uncommitted_blocks, 0);
        assert_eq!(stats.buffered_blocks, 0);
        assert_eq!(stats.give_ups, self.give_ups as u64);
        assert_eq!(stats.requests, self.asked.len() as u64);
    }

    /// Every request within the batch size.
    fn assert_requests_well_formed(&self, batch_size: u64) {
        for &(to, nonce, start, end) in &self.asked {
            assert!(
                end - start <= batch_size,
                "request {nonce} [{start}, {end}] to {to}"
            );
        }
    }
}

/// Requests of 11 blocks (`batch_size` 10, inclusive) for blocks 1..200.
fn full_batches() -> u64 {
    (CHAIN - 1).div_ceil(Config::fabric().batch_size + 1)
}

fn one_responder(config: Config) -> (Net, Duration) {
    let mut net = Net::new(config, vec![Spec::new(1, CHAIN)], 7);
    let took = net.run(true, Duration::from_secs(60));
    net.assert_caught_up();
    net.assert_requests_well_formed(10);
    (net, took)
}

#[test]
fn fabric_preset_catches_up_from_one_responder() {
    let (net, took) = one_responder(Config::fabric());
    let stats = net.stats();
    // Nothing fails: exactly ceil(199 / 11) requests, one at a time.
    assert_eq!(stats.requests, full_batches());
    assert_eq!(net.asked.len() as u64, full_batches());
    assert_eq!(
        (stats.retries, stats.timeouts, stats.give_ups, stats.hedges),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.responses, full_batches());
    // Contiguous batches [1, 11], [12, 22], …, [199, 199].
    let ranges: Vec<(u64, u64)> = net.asked.iter().map(|a| (a.2, a.3)).collect();
    let expected: Vec<(u64, u64)> = (0..full_batches())
        .map(|i| (1 + 11 * i, (11 + 11 * i).min(CHAIN - 1)))
        .collect();
    assert_eq!(ranges, expected);
    // One request in flight: a round trip per batch.
    assert!(took >= 2 * LATENCY * full_batches() as u32, "{took:?}");
    let node = net.nodes[&1].responder.stats();
    assert_eq!(node.responses, full_batches());
    assert_eq!((node.empty_responses, node.refused()), (0, 0));
}

#[test]
fn default_preset_catches_up_from_one_responder() {
    let (net, _) = one_responder(Config::default());
    let stats = net.stats();
    assert_eq!(stats.requests, full_batches());
    assert_eq!(
        (stats.retries, stats.timeouts, stats.give_ups, stats.hedges),
        (0, 0, 0, 0)
    );
    assert_eq!(net.nodes[&1].responder.stats().refused(), 0);
}

// Without a Tick, Fabric's first round starts on its 10 s timer.
#[test]
fn fabric_preset_starts_on_its_round_timer() {
    let mut net = Net::new(Config::fabric(), vec![Spec::new(1, CHAIN)], 7);
    let took = net.run(false, Duration::from_secs(60));
    net.assert_caught_up();
    let round_trips = 2 * LATENCY * full_batches() as u32;
    assert_eq!(took, Duration::from_secs(10) + round_trips);
    assert_eq!(net.stats().requests, full_batches());
}

// Pipelining: the per-peer window starts at 2 requests and grows by one per
// answer (2, 4, 8, 16 per round trip), so the same 19 requests take 4 round
// trips instead of 19.
#[test]
fn default_preset_catches_up_in_fewer_round_trips() {
    let (_, fabric) = one_responder(Config::fabric());
    let (_, default) = one_responder(Config::default());
    let round_trip = 2 * LATENCY;
    assert!(fabric >= round_trip * full_batches() as u32, "{fabric:?}");
    assert!(default <= round_trip * 4, "{default:?}");
    assert!(default < fabric, "default {default:?}, fabric {fabric:?}");
}

/// Two responders with the whole chain, one whose ledger stops at 150.
fn three_responders(config: Config, seed: u64) -> Net {
    let specs = vec![Spec::new(1, CHAIN), Spec::new(2, CHAIN), Spec::new(3, 150)];
    let mut net = Net::new(config, specs, seed);
    net.run(true, Duration::from_secs(60));
    net.assert_caught_up();
    net.assert_requests_well_formed(10);
    // The short peer is never asked beyond its last block, so never sends
    // an empty or short answer.
    let short = &net.nodes[&3];
    for &(nonce, start, end, _) in &short.received {
        assert!(
            end < 150,
            "request {nonce} [{start}, {end}] to the short peer"
        );
    }
    for (from, nonce, seqs) in &net.answers {
        let (_, _, start, end) = net.asked.iter().find(|a| a.1 == *nonce).unwrap();
        assert_eq!(
            seqs,
            &(*start..=*end).collect::<Vec<_>>(),
            "answer of {from} to {nonce}"
        );
    }
    assert_eq!(short.responder.stats().empty_responses, 0);
    net
}

#[test]
fn fabric_preset_never_asks_a_peer_beyond_its_height() {
    for seed in 0..20 {
        let net = three_responders(Config::fabric(), seed);
        let stats = net.stats();
        assert_eq!(stats.requests, full_batches(), "seed {seed}");
        assert_eq!((stats.retries, stats.give_ups), (0, 0), "seed {seed}");
    }
}

#[test]
fn default_preset_never_asks_a_peer_beyond_its_height() {
    for seed in 0..20 {
        let net = three_responders(Config::default(), seed);
        let stats = net.stats();
        assert_eq!(stats.requests, full_batches(), "seed {seed}");
        assert_eq!((stats.retries, stats.give_ups), (0, 0), "seed {seed}");
        // The load is spread: every peer served some of the 19 requests.
        for id in 1..=3 {
            assert!(
                !net.nodes[&id].received.is_empty(),
                "seed {seed}: peer {id} idle"
            );
        }
    }
}

/// A responder whose `StateInfo` says 200 while its ledger holds 60
/// blocks and grows by 10 every 2 s: it clamps requests to its last block
/// (`height - 1`), so the requester gets short answers, then empty ones,
/// and must advance through them to the end.
fn clamping_responder(config: Config) -> Net {
    let spec = Spec {
        growth: Some((Duration::from_secs(2), 10)),
        advertised: CHAIN,
        ..Spec::new(1, 60)
    };
    let mut net = Net::new(config, vec![spec], 3);
    net.run(true, Duration::from_secs(120));
    net.assert_caught_up();
    net.assert_requests_well_formed(10);
    let node = &net.nodes[&1];
    // Some requests were clamped to a non-empty prefix ending at the
    // ledger's last block, some got nothing.
    let clamped = node
        .received
        .iter()
        .filter(|&&(_, start, end, height)| start < height && height <= end)
        .count();
    assert!(clamped > 0, "no clamped answer");
    let stats = node.responder.stats();
    assert!(stats.empty_responses > 0);
    assert_eq!(stats.skipped_unreadable, 0, "the clamp is height - 1");
    net
}

#[test]
fn fabric_preset_advances_through_clamped_responses() {
    let net = clamping_responder(Config::fabric());
    let stats = net.stats();
    assert!(stats.give_ups > 0, "four empty answers end Fabric's round");
    assert!(stats.rounds > 1);
    // One request at a time: each starts at the requester's height then,
    // right after the last block of a clamped answer.
    assert!(net.sequential_starts);
}

#[test]
fn default_preset_advances_through_clamped_responses() {
    clamping_responder(Config::default());
}

/// A responder capping responses at about three blocks: the requester
/// advances by the prefixes it gets, each block once.
fn byte_capped_responder(config: Config) -> Net {
    let one_block = block(1, 64).len();
    let spec = Spec {
        // The cap bounds the encoded message: 64 bytes for its nonce,
        // channel and the payloads' framing.
        max_response_bytes: Some(3 * one_block + one_block / 2 + 64),
        ..Spec::new(1, CHAIN)
    };
    let mut net = Net::new(config, vec![spec], 5);
    net.run(true, Duration::from_secs(60));
    net.assert_caught_up();
    net.assert_requests_well_formed(10);
    let node = net.nodes[&1].responder.stats();
    assert!(node.truncated_by_bytes > 0);
    assert_eq!(node.blocks_served, CHAIN - 1, "each block served once");
    for (_, _, seqs) in &net.answers {
        assert!(seqs.len() <= 3);
    }
    net
}

#[test]
fn fabric_preset_advances_through_byte_capped_responses() {
    let net = byte_capped_responder(Config::fabric());
    let stats = net.stats();
    assert_eq!(stats.requests, (CHAIN - 1).div_ceil(3));
    assert_eq!((stats.retries, stats.give_ups), (0, 0));
}

#[test]
fn default_preset_advances_through_byte_capped_responses() {
    let net = byte_capped_responder(Config::default());
    assert_eq!(net.stats().give_ups, 0);
}

/// Two honest responders and a silent one: its requests time out (or are
/// hedged) and go to the others; still each block once, in order.
fn silent_responder(config: Config, seed: u64) -> Net {
    let silent = Spec {
        silent: true,
        ..Spec::new(3, CHAIN)
    };
    let specs = vec![Spec::new(1, CHAIN), Spec::new(2, CHAIN), silent];
    let mut net = Net::new(config, specs, seed);
    net.run(true, Duration::from_secs(120));
    net.assert_caught_up();
    net.assert_requests_well_formed(10);
    net
}

#[test]
fn fabric_preset_routes_around_a_silent_responder() {
    for seed in 0..10 {
        let net = silent_responder(Config::fabric(), seed);
        let stats = net.stats();
        let to_silent = net.nodes[&3].received.len() as u64;
        // Each send to the silent peer costs a 3 s timeout and one more
        // request: a retry, or (after 4 sends, Fabric's random choice may
        // pick it every time) a give-up and the range again next round.
        assert_eq!(stats.timeouts, to_silent, "seed {seed}");
        assert_eq!(stats.retries + stats.give_ups, to_silent, "seed {seed}");
        assert_eq!(stats.requests, full_batches() + to_silent, "seed {seed}");
    }
}

#[test]
fn default_preset_routes_around_a_silent_responder() {
    for seed in 0..10 {
        let net = silent_responder(Config::default(), seed);
        let stats = net.stats();
        assert!(!net.nodes[&3].received.is_empty(), "seed {seed}");
        assert_eq!(stats.give_ups, 0, "seed {seed}");
    }
}

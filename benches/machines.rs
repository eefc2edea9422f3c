//! Criterion benchmarks of the wire helpers and of both machines' own cost.
//!
//! `cargo bench --bench machines` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run). Every machine bench runs on virtual time and in-memory
//! peers: no IO, no encoding except where the wire itself is measured.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{
    wire, Action, AntiEntropy, Config, Event, PeerState, ResponderAction, ResponderEvent,
    StateResponder,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;

// Real blocks (`common::block`), the channel and the one clock read (`epoch`),
// shared with the integration tests.
#[path = "../tests/common/mod.rs"]
mod common;

const BLOCK_64K: usize = 64 * 1024;
/// Blocks of one full request (`batch_size` 10, inclusive).
const BATCH: u64 = 11;
const CATCH_UP_BLOCKS: u64 = 10_000;
const SMALL_BLOCK: usize = 256;

/// A payload carrying a real encoded block `seq` of `size` data bytes.
fn payload(seq: u64, size: usize) -> Payload {
    Payload {
        seq_num: seq,
        data: common::block(seq, size),
        private_data: vec![],
    }
}

fn wire_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");

    let payloads = (1..=BATCH).map(|seq| payload(seq, BLOCK_64K)).collect();
    let encoded: Bytes = wire::state_response(7, common::channel(), payloads)
        .encode_to_vec()
        .into();
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("decode_response_11x64KiB", |b| {
        b.iter(|| {
            wire::decode_gossip_message(black_box(encoded.clone()), wire::DEFAULT_MAX_MESSAGE_SIZE)
                .unwrap()
        })
    });

    let block = common::block(42, BLOCK_64K);
    group.throughput(Throughput::Elements(1));
    group.bench_function("block_number_64KiB", |b| {
        b.iter(|| wire::block_number(black_box(&block)).unwrap())
    });

    group.finish();
}

/// Catches a fresh requester (ledger height 1) up to `CATCH_UP_BLOCKS` from
/// `peers` in-memory peers that answer every request, in order, 1 ms after
/// the previous answer, with payloads cloned from `chain` (indexed by block
/// number). The host commits each batch of `AddPayload`s at once. Returns
/// the machine for the caller's checks.
fn catch_up(config: &Config, peers: u8, chain: &[Payload], epoch: Instant) -> AntiEntropy<u8> {
    let target = CATCH_UP_BLOCKS + 1;
    let mut now = epoch;
    let mut machine = AntiEntropy::new(config.clone(), common::channel(), 1, 7, now).unwrap();
    let view = (0..peers).map(|id| PeerState::new(id, target)).collect();
    machine.handle(now, Event::Membership(view)).unwrap();
    // Fabric's preset waits for its round timer: start the round now.
    machine.handle(now, Event::Tick).unwrap();

    // Requests sent and not yet answered: (peer, request).
    let mut pending: VecDeque<(u8, GossipMessage)> = VecDeque::new();
    while machine.committed() < target {
        let mut delivered = None;
        while let Some(action) = machine.poll_action() {
            match action {
                Action::SendRequest { to, message } => pending.push_back((to, message)),
                Action::AddPayload { payload, .. } => delivered = Some(payload.seq_num),
                Action::GiveUp { range, reason } => panic!("gave up {range:?}: {reason:?}"),
            }
        }
        if let Some(seq) = delivered {
            machine
                .handle(now, Event::Committed { height: seq + 1 })
                .unwrap();
        } else if let Some((from, request)) = pending.pop_front() {
            now += Duration::from_millis(1);
            let (nonce, start, end) = common::request_of(&request);
            let end = end.min(CATCH_UP_BLOCKS);
            let payloads = chain[start as usize..=end as usize].to_vec();
            let message = wire::state_response(nonce, common::channel(), payloads);
            // A hedged duplicate may arrive after its range was delivered:
            // ignored (and counted) by the machine, which is fine here.
            let _ = machine.handle(now, Event::Response { from, message });
        } else {
            // Nothing in flight: let the machine's own timer move it on.
            now = machine.poll_timeout().expect("a timer while behind");
            machine.handle(now, Event::Timeout).unwrap();
        }
    }
    machine
}

fn requester_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("requester");
    let epoch = common::epoch();
    // Built once; the peers hand out clones (reference counts, no copies).
    let chain: Vec<Payload> = (0..=CATCH_UP_BLOCKS)
        .map(|seq| payload(seq, SMALL_BLOCK))
        .collect();

    group.throughput(Throughput::Elements(CATCH_UP_BLOCKS));
    for (name, config, peers) in [
        ("fabric", Config::fabric(), 1),
        ("default", Config::default(), 4),
    ] {
        // One untimed run to check that the scenario is what it claims.
        let stats = catch_up(&config, peers, &chain, epoch).stats();
        assert_eq!(stats.delivered, CATCH_UP_BLOCKS, "{name}: {stats:?}");
        assert_eq!(
            (stats.timeouts, stats.give_ups),
            (0, 0),
            "{name}: {stats:?}"
        );

        group.bench_function(format!("catch_up_10k_blocks_{name}"), |b| {
            b.iter(|| catch_up(&config, peers, &chain, epoch))
        });
    }
    group.finish();

    // A channel's first `StateInfo` round: the view grows one peer per
    // event, to 128 (each event is a whole view, as a host sends it).
    let mut group = c.benchmark_group("membership");
    const MEMBERS: u16 = 128;
    group.throughput(Throughput::Elements(u64::from(MEMBERS)));
    group.bench_function("view_grows_to_128_peers", |b| {
        b.iter(|| {
            let mut machine =
                AntiEntropy::new(Config::default(), common::channel(), 1, 7, epoch).unwrap();
            let mut view = Vec::with_capacity(usize::from(MEMBERS));
            for peer in 0..MEMBERS {
                view.push(PeerState::new(peer, 1_000));
                machine
                    .handle(epoch, Event::Membership(view.clone()))
                    .unwrap();
                while machine.poll_action().is_some() {}
            }
            machine
        })
    });
    group.finish();
}

fn responder_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("responder");
    let mut now = common::epoch();
    let payloads: Vec<Payload> = (1..=BATCH).map(|seq| payload(seq, BLOCK_64K)).collect();
    let request = wire::state_request(7, common::channel(), 1, BATCH);
    let mut responder: StateResponder<u8> =
        StateResponder::new(Config::default(), common::channel(), BATCH + 1).unwrap();

    // 1 ms per request refills the peer's token bucket (100 blocks per ms
    // by default) faster than 11 blocks drain it.
    let mut serve = move || {
        now += Duration::from_millis(1);
        let event = ResponderEvent::Request {
            from: 0,
            message: request.clone(),
        };
        responder.handle(now, event).unwrap();
        let mut response = None;
        while let Some(action) = responder.poll_action() {
            match action {
                ResponderAction::ReadBlocks { ticket, .. } => {
                    let event = ResponderEvent::BlocksRead {
                        ticket,
                        payloads: payloads.clone(),
                    };
                    responder.handle(now, event).unwrap();
                }
                ResponderAction::SendResponse { message, .. } => response = Some(message),
                ResponderAction::Dropped { .. } | ResponderAction::Promote { .. } => {}
            }
        }
        response.expect("a response")
    };
    // One untimed run to check that the whole batch is served.
    let served = wire::as_state_response(&serve()).map(|r| r.payloads.len());
    assert_eq!(served, Some(BATCH as usize));

    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("serve_11_blocks", |b| b.iter(&mut serve));
    group.finish();
}

criterion_group!(benches, wire_benches, requester_benches, responder_benches);
criterion_main!(benches);

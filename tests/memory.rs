//! Issue #9's memory target: the bytes the requester holds ahead of the
//! ledger (buffered out of order, or delivered and not yet committed) stay
//! within `window_bytes` plus one block, and do not grow with how far
//! behind it is: the same peak for 10^4 and 10^6 blocks behind.
//!
//! Four peers answer out of order (the newest request first, so the blocks
//! at the commit point come last) and the host commits only every 64th
//! delivery, so the buffer is pushed as hard as the machine lets it.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{wire, Action, AntiEntropy, Config, Event, PeerState};
use bytes::Bytes;

const BLOCK: usize = 1024;

/// A 1 KiB block `seq` sharing its data buffer with every other block: the
/// test allocates per block only the header it encodes.
fn payload(seq: u64, data: &Bytes) -> Payload {
    use antientropy::wire::common::{Block, BlockData, BlockHeader};
    use prost::Message;
    let block = Block {
        header: Some(BlockHeader {
            number: seq,
            previous_hash: Bytes::new(),
            data_hash: Bytes::new(),
        }),
        data: Some(BlockData {
            data: vec![data.clone()],
        }),
        metadata: None,
    };
    Payload {
        seq_num: seq,
        data: block.encode_to_vec().into(),
        private_data: vec![],
    }
}

/// Catches up `behind` blocks; returns the peak bytes held and the config.
fn peak_held(behind: u64) -> (u64, Config) {
    let mut config = Config::default();
    // Small enough that the byte bound, not `window_blocks`, binds.
    config.window_bytes = 256 * 1024;
    let data = Bytes::from(vec![7u8; BLOCK]);
    let epoch = common::epoch();
    let mut now = epoch;
    let target = behind + 1;
    let mut machine = AntiEntropy::new(config.clone(), common::channel(), 1, 7, now).unwrap();
    let view = (0..4u8).map(|id| PeerState::new(id, target)).collect();
    machine.handle(now, Event::Membership(view)).unwrap();
    let mut pending: VecDeque<(u8, GossipMessage)> = VecDeque::new();
    let mut delivered = 1;
    let mut peak = 0u64;
    while machine.committed() < target {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::SendRequest { to, message } => pending.push_back((to, message)),
                Action::AddPayload { payload, .. } => delivered = payload.seq_num + 1,
                Action::GiveUp { range, reason } => panic!("gave up {range:?}: {reason:?}"),
            }
        }
        let stats = machine.stats();
        peak = peak.max(stats.buffered_bytes as u64 + stats.uncommitted_bytes);
        let lagging = delivered - machine.committed();
        if lagging >= 64 || (pending.is_empty() && lagging > 0) {
            machine
                .handle(now, Event::Committed { height: delivered })
                .unwrap();
        } else if let Some((from, request)) = pending.pop_back() {
            now += Duration::from_micros(100);
            let (nonce, start, end) = common::request_of(&request);
            let payloads = (start..=end.min(behind))
                .map(|seq| payload(seq, &data))
                .collect();
            let message = wire::state_response(nonce, common::channel(), payloads);
            let _ = machine.handle(now, Event::Response { from, message });
        } else {
            now = machine.poll_timeout().expect("a timer while behind");
            machine.handle(now, Event::Timeout).unwrap();
        }
    }
    (peak, config)
}

#[test]
fn peak_held_bytes_stay_within_the_window_however_far_behind() {
    let (small, config) = peak_held(10_000);
    let (large, _) = peak_held(1_000_000);
    let one_block = payload(0, &Bytes::from(vec![0u8; BLOCK])).data.len() as u64;
    let bound = config.window_bytes + one_block;
    assert!(small <= bound, "10^4 behind: peak {small} > {bound}");
    assert!(large <= bound, "10^6 behind: peak {large} > {bound}");
    // The window binds, not the distance: the two peaks differ by less
    // than one block.
    assert!(
        small.abs_diff(large) < one_block,
        "peaks {small} vs {large}"
    );
    println!("peak held: {small} bytes (10^4 behind), {large} (10^6), bound {bound}");
    // And the window is really used (the test pushes the buffer).
    assert!(small > config.window_bytes / 2, "peak {small}");
}

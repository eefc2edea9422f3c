//! Helpers shared by the integration tests: real blocks and a ledger that
//! answers state requests the way an honest Fabric responder does.
#![allow(dead_code)]

use std::time::Instant;

use antientropy::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};
use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{wire, Action, AntiEntropy};
use bytes::Bytes;
use prost::Message;

pub const CHANNEL: &str = "testchannelid";

pub fn channel() -> Bytes {
    Bytes::from_static(CHANNEL.as_bytes())
}

/// An encoded `common.Block` numbered `seq` carrying `size` bytes of data.
pub fn block(seq: u64, size: usize) -> Bytes {
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

pub fn payload(seq: u64) -> Payload {
    Payload {
        seq_num: seq,
        data: block(seq, 16),
        private_data: vec![],
    }
}

/// The request a `SendRequest` carries: (nonce, start, end).
pub fn request_of(message: &GossipMessage) -> (u64, u64, u64) {
    let request = wire::as_state_request(message).expect("a state request");
    (message.nonce, request.start_seq_num, request.end_seq_num)
}

/// An honest answer from a ledger of `height` blocks: `[start, min(end, height-1)]`.
pub fn answer(message: &GossipMessage, height: u64) -> GossipMessage {
    let (nonce, start, end) = request_of(message);
    let payloads = (start..=end.min(height.saturating_sub(1)))
        .map(payload)
        .collect();
    wire::state_response(nonce, channel(), payloads)
}

/// Drains every action.
pub fn drain<P: Clone + Ord + std::fmt::Debug>(machine: &mut AntiEntropy<P>) -> Vec<Action<P>> {
    std::iter::from_fn(|| machine.poll_action()).collect()
}

/// The `SendRequest`s among `actions`, as (to, nonce, start, end).
pub fn sends<P: Clone>(actions: &[Action<P>]) -> Vec<(P, u64, u64, u64)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::SendRequest { to, message } => {
                let (nonce, start, end) = request_of(message);
                Some((to.clone(), nonce, start, end))
            }
            _ => None,
        })
        .collect()
}

/// The block numbers delivered among `actions`.
pub fn delivered<P>(actions: &[Action<P>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::AddPayload { payload, .. } => Some(payload.seq_num),
            _ => None,
        })
        .collect()
}

/// A fixed epoch: tests move virtual time forward from it.
pub fn epoch() -> Instant {
    // The only clock read in the tests; everything after is virtual.
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

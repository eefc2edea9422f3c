//! Fabric's wire format: the generated protobuf types and the helpers the
//! machines and their hosts need around them.
//!
//! The types live at the paths of their proto packages, [`gossip`] and
//! [`common`] (and [`google::protobuf`] for the one well-known type
//! Fabric uses), with Fabric's message and field names. `bytes` fields are
//! [`bytes::Bytes`]: decoding from a `Bytes` buffer slices it instead of
//! copying, so a block travels from the socket to the host without a copy.
//!
//! The helpers, by concern:
//!
//! - gossip messages: [`decode_gossip_message`], [`wrap_envelope`] and
//!   [`unwrap_envelope`] (Fabric's `NoopSign`), [`state_request`],
//!   [`state_response`], [`advertised`], [`block_number`];
//! - a block's transactions: [`block_channel_id`], [`decode_transaction`],
//!   [`envelope_payload`], [`channel_header`], [`signature_header`];
//! - the hash chain: [`block_header_bytes`] and, with the `hash` feature,
//!   [`block_header_hash`], [`block_data_hash`], [`verify_chain_link`],
//!   [`new_block`].
//!
//! ```
//! use antientropy::wire;
//! use bytes::Bytes;
//!
//! // A requester's request for blocks 5..=15, as a peer receives it:
//! let request = wire::state_request(42, Bytes::from_static(b"mychannel"), 5, 15);
//! let envelope = wire::wrap_envelope(&request);
//! let bytes = Bytes::from(prost::Message::encode_to_vec(&envelope));
//!
//! let received = wire::decode_envelope(bytes, wire::DEFAULT_MAX_MESSAGE_SIZE)?;
//! let message = wire::unwrap_envelope(&received, wire::DEFAULT_MAX_MESSAGE_SIZE)?;
//! let range = wire::as_state_request(&message).expect("a state request");
//! assert_eq!((message.nonce, range.start_seq_num, range.end_seq_num), (42, 5, 15));
//! # Ok::<(), wire::WireError>(())
//! ```

mod chain;
mod transaction;

pub use chain::block_header_bytes;
#[cfg(feature = "hash")]
pub use chain::{
    block_data_hash, block_header_hash, new_block, verify_chain_link, verify_data_hash, ChainError,
};
pub use transaction::{
    block_channel_id, channel_header, decode_transaction, envelope_payload, signature_header,
};

use bytes::Bytes;
use prost::Message;

// The generated code is committed (`src/wire/gen/`, made by prost-build from
// `proto/`), so that users build without protox; `tests/generated_code.rs`
// fails if it differs from what the protos generate.

/// Fabric's `gossip` package (`gossip/message.proto`).
#[allow(missing_docs, clippy::all)]
pub mod gossip {
    include!("gen/gossip.rs");
}

/// Fabric's `common` package (`common/common.proto`): blocks, and the
/// envelopes, payloads and headers of the transactions inside them.
#[allow(missing_docs, clippy::all)]
pub mod common {
    include!("gen/common.rs");
}

/// Protobuf's well-known types that Fabric's schema uses.
pub mod google {
    /// The `google.protobuf` package: only `Timestamp`
    /// (`ChannelHeader.timestamp`), generated here rather than taken from
    /// prost-types, one dependency fewer.
    #[allow(missing_docs, clippy::all)]
    pub mod protobuf {
        include!("gen/google.protobuf.rs");
    }
}

use gossip::gossip_message::{Content, Tag};
use gossip::{Envelope, GossipMessage, RemoteStateRequest, RemoteStateResponse, StateInfo};

/// Fabric's default gRPC message limit (100 MiB), a sensible `max_size` for
/// [`decode_gossip_message`] when a peer's config says nothing else.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 100 * 1024 * 1024;

/// Why bytes from a peer could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message is larger than the caller's limit; it was not decoded.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit it exceeded.
        max: usize,
    },
    /// The bytes are not a valid protobuf encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A field the operation needs is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
}

/// Decodes a `GossipMessage`, refusing anything longer than `max_size` bytes
/// before looking at it.
///
/// Content this crate does not act on (alive, membership, pull, …) and
/// unknown fields decode fine: such a message is simply not a state message.
pub fn decode_gossip_message(bytes: Bytes, max_size: usize) -> Result<GossipMessage, WireError> {
    check_size(bytes.len(), max_size)?;
    Ok(GossipMessage::decode(bytes)?)
}

/// Decodes an `Envelope`, refusing anything longer than `max_size` bytes.
pub fn decode_envelope(bytes: Bytes, max_size: usize) -> Result<Envelope, WireError> {
    check_size(bytes.len(), max_size)?;
    Ok(Envelope::decode(bytes)?)
}

fn check_size(size: usize, max: usize) -> Result<(), WireError> {
    if size > max {
        return Err(WireError::TooLarge { size, max });
    }
    Ok(())
}

/// Wraps a message the way Fabric's `NoopSign` does for state transfer: the
/// payload is the encoded message and the signature is empty (authentication
/// rests on the TLS-bound connection).
pub fn wrap_envelope(message: &GossipMessage) -> Envelope {
    Envelope {
        payload: message.encode_to_vec().into(),
        signature: Bytes::new(),
        secret_envelope: None,
    }
}

/// Takes the `GossipMessage` out of an envelope. The signature is not
/// checked: state messages are `NoopSign`ed.
pub fn unwrap_envelope(envelope: &Envelope, max_size: usize) -> Result<GossipMessage, WireError> {
    decode_gossip_message(envelope.payload.clone(), max_size)
}

/// Only the header of a `common.Block`: decoding it skips the transactions
/// and metadata as opaque length-delimited fields.
#[derive(Clone, PartialEq, Message)]
struct BlockHeaderView {
    #[prost(message, optional, tag = "1")]
    header: Option<BlockNumberView>,
}

/// Only the number of a `common.BlockHeader`: its two hashes are skipped
/// rather than sliced out (two reference counts per block, a quarter of
/// the requester's cost of checking a block's number).
#[derive(Clone, PartialEq, Message)]
struct BlockNumberView {
    #[prost(uint64, tag = "1")]
    number: u64,
}

/// Reads the header number of a marshalled `common.Block` (a
/// `Payload.data`) without decoding its transactions.
pub fn block_number(block: &Bytes) -> Result<u64, WireError> {
    let view = BlockHeaderView::decode(block.clone())?;
    view.header
        .map(|header| header.number)
        .ok_or(WireError::MissingField("header"))
}

/// What a peer advertises about a channel in its `StateInfo`: the input of
/// [`crate::PeerState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    /// Number of blocks in the peer's ledger (its highest block + 1).
    pub ledger_height: u64,
    /// The peer has left the channel.
    pub left_channel: bool,
}

/// Reads a peer's advertised ledger height and left-channel flag. A
/// `StateInfo` without `properties` advertises nothing: Fabric never asks
/// such a peer for blocks.
pub fn advertised(state_info: &StateInfo) -> Result<Advertised, WireError> {
    let properties = state_info
        .properties
        .as_ref()
        .ok_or(WireError::MissingField("properties"))?;
    Ok(Advertised {
        ledger_height: properties.ledger_height,
        left_channel: properties.left_channel,
    })
}

/// Builds a state request as Fabric's `stateRequestMessage` does: tag
/// `CHAN_OR_ORG`, the channel, and the inclusive range `start..=end`.
pub fn state_request(nonce: u64, channel: Bytes, start: u64, end: u64) -> GossipMessage {
    GossipMessage {
        nonce,
        channel,
        tag: Tag::ChanOrOrg as i32,
        content: Some(Content::StateRequest(RemoteStateRequest {
            start_seq_num: start,
            end_seq_num: end,
        })),
    }
}

/// Builds a state response as Fabric's responder does: the request's nonce,
/// tag `CHAN_OR_ORG`, the channel and the payloads.
pub fn state_response(nonce: u64, channel: Bytes, payloads: Vec<gossip::Payload>) -> GossipMessage {
    GossipMessage {
        nonce,
        channel,
        tag: Tag::ChanOrOrg as i32,
        content: Some(Content::StateResponse(RemoteStateResponse { payloads })),
    }
}

/// The state request a message carries, if it is one.
pub fn as_state_request(message: &GossipMessage) -> Option<&RemoteStateRequest> {
    match &message.content {
        Some(Content::StateRequest(request)) => Some(request),
        _ => None,
    }
}

/// The state response a message carries, if it is one.
pub fn as_state_response(message: &GossipMessage) -> Option<&RemoteStateResponse> {
    match &message.content {
        Some(Content::StateResponse(response)) => Some(response),
        _ => None,
    }
}

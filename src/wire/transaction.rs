//! What a block's transactions carry: each entry of `BlockData.data` is a
//! marshalled `common.Envelope`, whose payload names the channel and the
//! transaction in its `ChannelHeader`. Fabric's block verification checks
//! that the first transaction names the channel
//! (`protoutil.GetChannelIDFromBlock`); these helpers do the decoding.

use bytes::Bytes;
use prost::Message;

use super::common::{Block, ChannelHeader, Envelope, Payload, SignatureHeader};
use super::WireError;

/// Decodes a transaction: an entry of a block's `BlockData.data`.
///
/// Nested fields are slices of `transaction`, not copies.
pub fn decode_transaction(transaction: &Bytes) -> Result<Envelope, WireError> {
    Ok(Envelope::decode(transaction.clone())?)
}

/// Decodes an envelope's `payload`. The signature is not checked.
pub fn envelope_payload(envelope: &Envelope) -> Result<Payload, WireError> {
    Ok(Payload::decode(envelope.payload.clone())?)
}

/// Decodes the `ChannelHeader` of a payload's header.
pub fn channel_header(payload: &Payload) -> Result<ChannelHeader, WireError> {
    let header = payload
        .header
        .as_ref()
        .ok_or(WireError::MissingField("header"))?;
    Ok(ChannelHeader::decode(header.channel_header.clone())?)
}

/// Decodes the `SignatureHeader` (creator, nonce) of a payload's header.
pub fn signature_header(payload: &Payload) -> Result<SignatureHeader, WireError> {
    let header = payload
        .header
        .as_ref()
        .ok_or(WireError::MissingField("header"))?;
    Ok(SignatureHeader::decode(header.signature_header.clone())?)
}

/// The channel a block belongs to, as Fabric's
/// `protoutil.GetChannelIDFromBlock` reads it: the `channel_id` of its first
/// transaction's channel header. A block without transactions names none
/// (`MissingField("data")`).
///
/// ```
/// use antientropy::wire::{self, common::{Block, BlockData, ChannelHeader, Envelope, Header, HeaderType, Payload}};
/// use prost::Message;
///
/// let channel_header = ChannelHeader {
///     r#type: HeaderType::EndorserTransaction as i32,
///     channel_id: "mychannel".into(),
///     tx_id: "tx-1".into(),
///     ..Default::default()
/// };
/// let payload = Payload {
///     header: Some(Header { channel_header: channel_header.encode_to_vec().into(), ..Default::default() }),
///     data: "the transaction".into(),
/// };
/// let envelope = Envelope { payload: payload.encode_to_vec().into(), signature: "sig".into() };
/// let block = Block {
///     data: Some(BlockData { data: vec![envelope.encode_to_vec().into()] }),
///     ..Default::default()
/// };
/// assert_eq!(wire::block_channel_id(&block)?, "mychannel");
///
/// let transaction = wire::decode_transaction(&block.data.as_ref().unwrap().data[0])?;
/// let payload = wire::envelope_payload(&transaction)?;
/// assert_eq!(wire::channel_header(&payload)?.tx_id, "tx-1");
/// # Ok::<(), antientropy::wire::WireError>(())
/// ```
pub fn block_channel_id(block: &Block) -> Result<String, WireError> {
    let first = block
        .data
        .as_ref()
        .and_then(|data| data.data.first())
        .ok_or(WireError::MissingField("data"))?;
    let payload = envelope_payload(&decode_transaction(first)?)?;
    Ok(channel_header(&payload)?.channel_id)
}

//! Fabric's block hashes: how a block header chains to the previous one and
//! commits to its transactions (`protoutil.BlockHeaderBytes`,
//! `BlockHeaderHash`, `ComputeBlockDataHash`).
//!
//! A header's hash is SHA-256 of the ASN.1 DER encoding of
//! `SEQUENCE { INTEGER number, OCTET STRING previous_hash, OCTET STRING
//! data_hash }`, not of its protobuf encoding: protobuf has no canonical
//! form, DER does. The few lines of DER are written here rather than taken
//! from an ASN.1 crate.

#[cfg(feature = "hash")]
use bytes::Bytes;

use super::common::BlockHeader;
#[cfg(feature = "hash")]
use super::common::{Block, BlockData, BlockMetadata};

const DER_INTEGER: u8 = 0x02;
const DER_OCTET_STRING: u8 = 0x04;
const DER_SEQUENCE: u8 = 0x30;

/// Bytes of a DER length: one below 128, else `0x80 | n` and `n` big-endian
/// bytes, as few as hold it (DER allows no other form).
fn der_length_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    }
}

fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// The content octets of `number` as a DER INTEGER, into `buf`: big-endian,
/// no leading zero byte except the one that keeps a set high bit from
/// reading as negative (Go's `asn1` marshals Fabric's `big.Int` so).
fn der_unsigned(number: u64, buf: &mut [u8; 9]) -> &[u8] {
    buf[1..].copy_from_slice(&number.to_be_bytes());
    // Zero is one 0x00 byte, so at most seven leading zeros go.
    let zeros = buf[1..8].iter().take_while(|&&b| b == 0).count();
    let start = 1 + zeros;
    if buf[start] & 0x80 != 0 {
        buf[start - 1] = 0;
        &buf[start - 1..]
    } else {
        &buf[start..]
    }
}

/// Fabric's `protoutil.BlockHeaderBytes`: the DER encoding of the header
/// that [`block_header_hash`] hashes and the next block's `previous_hash`
/// commits to.
///
/// ```
/// use antientropy::wire::{self, common::BlockHeader};
///
/// let header = BlockHeader { number: 128, ..Default::default() };
/// // SEQUENCE { INTEGER 128 (0x00 keeps it positive), OCTET STRING "", OCTET STRING "" }
/// assert_eq!(
///     wire::block_header_bytes(&header),
///     [0x30, 0x08, 0x02, 0x02, 0x00, 0x80, 0x04, 0x00, 0x04, 0x00]
/// );
/// ```
pub fn block_header_bytes(header: &BlockHeader) -> Vec<u8> {
    let mut buf = [0; 9];
    let number = der_unsigned(header.number, &mut buf);
    let tlv_len = |len: usize| 1 + der_length_len(len) + len;
    let content = tlv_len(number.len())
        + tlv_len(header.previous_hash.len())
        + tlv_len(header.data_hash.len());
    let mut out = Vec::with_capacity(tlv_len(content));
    out.push(DER_SEQUENCE);
    push_der_length(&mut out, content);
    for (tag, value) in [
        (DER_INTEGER, number),
        (DER_OCTET_STRING, &header.previous_hash[..]),
        (DER_OCTET_STRING, &header.data_hash[..]),
    ] {
        out.push(tag);
        push_der_length(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// Fabric's `protoutil.BlockHeaderHash`: SHA-256 of
/// [`block_header_bytes`], what the next block's `previous_hash` holds.
///
/// ```
/// use antientropy::wire::{self, common::BlockHeader};
///
/// let genesis = BlockHeader { number: 0, ..Default::default() };
/// let hash = wire::block_header_hash(&genesis);
/// // SHA-256 of 30 07 02 01 00 04 00 04 00, as Fabric's protoutil computes it.
/// assert_eq!(hash[..4], [0x1d, 0x1c, 0x28, 0x8c]);
/// ```
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
pub fn block_header_hash(header: &BlockHeader) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(block_header_bytes(header)).into()
}

/// Fabric's `protoutil.ComputeBlockDataHash`: SHA-256 of the block's
/// transactions (`BlockData.data`) concatenated, what `header.data_hash`
/// holds. Fabric's `BlockDataHash` also refuses a block without
/// transactions or with a malformed envelope; this checks neither.
///
/// ```
/// use antientropy::wire::{self, common::BlockData};
///
/// let data = BlockData { data: vec!["tx-0".into(), "tx-1".into()] };
/// let joined = BlockData { data: vec!["tx-0tx-1".into()] };
/// assert_eq!(wire::block_data_hash(&data), wire::block_data_hash(&joined));
/// ```
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
pub fn block_data_hash(data: &BlockData) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for transaction in &data.data {
        hasher.update(transaction);
    }
    hasher.finalize().into()
}

/// A block as Fabric's `protoutil.NewBlock` makes it (five empty metadata
/// entries, one per [`BlockMetadataIndex`](super::common::BlockMetadataIndex)),
/// with the transactions and their data hash set, as an orderer cuts it
/// before signing. `previous_hash` is the previous header's
/// [`block_header_hash`] (empty for the genesis block).
///
/// ```
/// use antientropy::wire;
///
/// let genesis = wire::new_block(0, Default::default(), vec!["config-tx".into()]);
/// let next = wire::new_block(1, wire::block_header_hash(genesis.header.as_ref().unwrap()).to_vec().into(), vec![]);
/// wire::verify_chain_link(genesis.header.as_ref().unwrap(), &next).unwrap();
/// ```
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
pub fn new_block(number: u64, previous_hash: Bytes, transactions: Vec<Bytes>) -> Block {
    let data = BlockData { data: transactions };
    Block {
        header: Some(BlockHeader {
            number,
            previous_hash,
            data_hash: Bytes::copy_from_slice(&block_data_hash(&data)),
        }),
        data: Some(data),
        metadata: Some(BlockMetadata {
            // Fabric sizes it by the enum: SIGNATURES … COMMIT_HASH.
            metadata: vec![Bytes::new(); 5],
        }),
    }
}

/// Why a block does not extend a chain.
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The block has no header.
    #[error("block has no header")]
    MissingHeader,
    /// The block's number is not the previous one's plus one.
    #[error("block {found} does not follow block {previous}")]
    NotNext {
        /// The previous block's number.
        previous: u64,
        /// The block's number.
        found: u64,
    },
    /// `header.previous_hash` is not the previous header's hash.
    #[error("previous_hash does not match the previous header's hash")]
    PreviousHash {
        /// The previous header's [`block_header_hash`].
        computed: [u8; 32],
        /// What the block's header says.
        in_header: Bytes,
    },
    /// `header.data_hash` is not the hash of the block's transactions.
    #[error("data_hash does not match the block's transactions")]
    DataHash {
        /// [`block_data_hash`] of the block's data.
        computed: [u8; 32],
        /// What the block's header says.
        in_header: Bytes,
    },
}

/// Checks that `block`'s header commits to its transactions:
/// `header.data_hash == block_data_hash(data)` (a block without `data`
/// hashes as one without transactions).
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
pub fn verify_data_hash(block: &Block) -> Result<(), ChainError> {
    let header = block.header.as_ref().ok_or(ChainError::MissingHeader)?;
    let computed = match &block.data {
        Some(data) => block_data_hash(data),
        None => block_data_hash(&BlockData::default()),
    };
    if header.data_hash[..] != computed {
        return Err(ChainError::DataHash {
            computed,
            in_header: header.data_hash.clone(),
        });
    }
    Ok(())
}

/// Checks that `block` extends the chain whose last header is `previous`,
/// as Fabric's block verification does before signatures: its number is
/// the next one, its `previous_hash` is `previous`'s [`block_header_hash`],
/// and its `data_hash` matches its transactions ([`verify_data_hash`]).
/// Orderer signatures (metadata) and the transactions' well-formedness are
/// not checked: they need the channel's MSPs and policies.
///
/// A host keeps the last committed header (three fields) and checks each
/// block the requester delivers before committing it:
///
/// ```
/// use antientropy::wire::{self, common::{Block, BlockHeader}, ChainError};
/// use prost::Message;
///
/// // What the host holds: the last committed header (block 4).
/// let mut last: BlockHeader = BlockHeader { number: 4, ..Default::default() };
/// // Block 5 arrives as a gossip `Payload`'s `data`.
/// let good = wire::new_block(5, wire::block_header_hash(&last).to_vec().into(), vec!["tx".into()]);
/// let data = good.encode_to_vec();
///
/// let block = Block::decode(&data[..])?;
/// wire::verify_chain_link(&last, &block)?; // then commit, and:
/// last = block.header.unwrap();
///
/// // A block 6 that does not chain to it is refused.
/// let forged = wire::new_block(6, vec![0; 32].into(), vec![]);
/// assert!(matches!(
///     wire::verify_chain_link(&last, &forged),
///     Err(ChainError::PreviousHash { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "hash")]
#[cfg_attr(docsrs, doc(cfg(feature = "hash")))]
pub fn verify_chain_link(previous: &BlockHeader, block: &Block) -> Result<(), ChainError> {
    let header = block.header.as_ref().ok_or(ChainError::MissingHeader)?;
    if previous.number.checked_add(1) != Some(header.number) {
        return Err(ChainError::NotNext {
            previous: previous.number,
            found: header.number,
        });
    }
    let computed = block_header_hash(previous);
    if header.previous_hash[..] != computed {
        return Err(ChainError::PreviousHash {
            computed,
            in_header: header.previous_hash.clone(),
        });
    }
    verify_data_hash(block)
}

//! The canonical chain: real encoded `common.Block`s, built once and shared.
//!
//! Every node's ledger is a height over one [`Chain`]: blocks `0..height` of
//! it. Blocks are held as [`Bytes`], so serving, sending and decoding a block
//! clones a reference count, never the data (except the one copy made when a
//! response is encoded for the wire).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};

/// The signature marker of a valid block: `metadata[SIGNATURES]` holds it.
/// A forged block carries another marker (and a wrong data hash).
pub const VALID_SIGNATURE: &[u8] = b"sim:valid-orderer-signature";
const FORGED_SIGNATURE: &[u8] = b"sim:forged-signature";

/// The data of every block is drawn from this seed: the chain's content does
/// not depend on the simulation's seed, so one chain serves many runs.
const CONTENT_SEED: u64 = 0x5eed_c4a1_b10c_da7a;

/// A chain of encoded blocks `0..height`, cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Chain {
    blocks: Arc<[Bytes]>,
    block_size: usize,
}

impl Chain {
    /// Builds blocks `0..height`, each carrying one transaction of
    /// `block_size` bytes. `10_000 × 64 KiB` takes a fraction of a second
    /// in a release build and ~650 MB, held once whatever the node count.
    pub fn new(height: u64, block_size: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(CONTENT_SEED);
        let mut blocks = Vec::with_capacity(usize::try_from(height).unwrap_or(0));
        let mut previous_hash = Bytes::new();
        let mut data = vec![0u8; block_size];
        for number in 0..height {
            rng.fill(&mut data);
            let hash = Bytes::copy_from_slice(&checksum(&data).to_le_bytes());
            let block = Block {
                header: Some(BlockHeader {
                    number,
                    previous_hash: previous_hash.clone(),
                    data_hash: hash.clone(),
                }),
                data: Some(BlockData {
                    data: vec![Bytes::copy_from_slice(&data)],
                }),
                metadata: Some(BlockMetadata {
                    metadata: vec![Bytes::from_static(VALID_SIGNATURE)],
                }),
            };
            blocks.push(Bytes::from(block.encode_to_vec()));
            previous_hash = hash;
        }
        Self {
            blocks: blocks.into(),
            block_size,
        }
    }

    /// Number of blocks (the height of an up-to-date ledger).
    pub fn height(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Bytes of transaction data per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The encoded block `seq`, if the chain has it.
    pub fn block(&self, seq: u64) -> Option<&Bytes> {
        self.blocks.get(usize::try_from(seq).ok()?)
    }

    /// Encoded bytes of blocks `from..to` (what a ledger at height `from`
    /// must receive to reach `to`).
    pub fn bytes_between(&self, from: u64, to: u64) -> u64 {
        (from..to.min(self.height()))
            .filter_map(|seq| self.block(seq))
            .map(|block| block.len() as u64)
            .sum()
    }

    /// The largest encoded block.
    pub fn max_block_bytes(&self) -> usize {
        self.blocks.iter().map(Bytes::len).max().unwrap_or(0)
    }
}

/// A cheap 64-bit checksum (four interleaved multiply-xor lanes over 8-byte
/// words): the simulated "data hash". Not cryptographic; it only has to
/// tell a forged block from the real one.
pub fn checksum(data: &[u8]) -> u64 {
    const K: [u64; 4] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
    ];
    let mut lanes = K;
    let mut chunks = data.chunks_exact(32);
    for chunk in &mut chunks {
        for (lane, (word, k)) in lanes.iter_mut().zip(chunk.chunks_exact(8).zip(K)) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            *lane = (*lane ^ word).wrapping_mul(k).rotate_left(29);
        }
    }
    let mut hash = (data.len() as u64).wrapping_mul(K[0]);
    for lane in lanes {
        hash = (hash ^ lane).wrapping_mul(K[1]).rotate_left(31);
    }
    for &byte in chunks.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(K[2]);
    }
    hash ^ (hash >> 32)
}

/// Why the host refused a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a `common.Block` with a header.
    #[error("not a block")]
    Malformed,
    /// The header's number is not the payload's.
    #[error("header number {header} but payload {seq}")]
    WrongNumber {
        /// The header's number.
        header: u64,
        /// The payload's number.
        seq: u64,
    },
    /// The data does not match the header's data hash.
    #[error("data hash mismatch")]
    DataHash,
    /// The metadata lacks the valid signature marker.
    #[error("bad signature")]
    Signature,
}

/// What the host does before committing block `seq`: decode it, check the
/// header number, the data hash and the signature marker.
pub fn verify(seq: u64, data: &Bytes) -> Result<(), VerifyError> {
    let block = Block::decode(data.clone()).map_err(|_| VerifyError::Malformed)?;
    let header = block.header.ok_or(VerifyError::Malformed)?;
    if header.number != seq {
        return Err(VerifyError::WrongNumber {
            header: header.number,
            seq,
        });
    }
    let body = block.data.unwrap_or_default();
    let hashed = match body.data.as_slice() {
        [one] => checksum(one),
        many => checksum(&many.concat()),
    };
    if header.data_hash.as_ref() != hashed.to_le_bytes() {
        return Err(VerifyError::DataHash);
    }
    let signed = block.metadata.is_some_and(|m| {
        m.metadata
            .first()
            .is_some_and(|s| s.as_ref() == VALID_SIGNATURE)
    });
    if !signed {
        return Err(VerifyError::Signature);
    }
    Ok(())
}

/// A block numbered `seq` that decodes (so the requester accepts it) but
/// fails [`verify`]: tampered data under the original hash, or a forged
/// signature, chosen by `rng`.
pub fn forged_block(seq: u64, size: usize, rng: &mut fastrand::Rng) -> Bytes {
    let mut data = vec![0u8; size.max(1)];
    rng.fill(&mut data);
    let honest_hash = checksum(&data);
    let tamper_data = rng.bool();
    let (hash, signature) = if tamper_data {
        data[0] ^= 0xff;
        (honest_hash, VALID_SIGNATURE)
    } else {
        (honest_hash, FORGED_SIGNATURE)
    };
    let block = Block {
        header: Some(BlockHeader {
            number: seq,
            previous_hash: Bytes::new(),
            data_hash: Bytes::copy_from_slice(&hash.to_le_bytes()),
        }),
        data: Some(BlockData {
            data: vec![Bytes::from(data)],
        }),
        metadata: Some(BlockMetadata {
            metadata: vec![Bytes::from_static(signature)],
        }),
    };
    Bytes::from(block.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_blocks_verify_and_are_numbered() {
        let chain = Chain::new(5, 100);
        assert_eq!(chain.height(), 5);
        for seq in 0..5 {
            let block = chain.block(seq).unwrap();
            assert_eq!(crate::wire::block_number(block), Ok(seq));
            assert_eq!(verify(seq, block), Ok(()));
        }
        assert_eq!(
            verify(3, chain.block(2).unwrap()),
            Err(VerifyError::WrongNumber { header: 2, seq: 3 })
        );
        assert!(chain.block(5).is_none());
        let one = chain.block(1).unwrap().len() as u64; // block 0 has no previous hash
        assert_eq!(chain.bytes_between(1, 5), 4 * one);
        assert_eq!(chain.bytes_between(1, 99), 4 * one, "clamped to the chain");
        // The same chain whatever the run.
        assert_eq!(Chain::new(5, 100).block(4), chain.block(4));
    }

    #[test]
    fn forged_blocks_decode_but_fail_verification() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..16 {
            let block = forged_block(7, 64, &mut rng);
            assert_eq!(crate::wire::block_number(&block), Ok(7));
            assert!(matches!(
                verify(7, &block),
                Err(VerifyError::DataHash | VerifyError::Signature)
            ));
        }
        assert_eq!(
            verify(0, &Bytes::from_static(b"\xff\xff")),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn checksum_sees_every_byte() {
        let mut data = vec![7u8; 100];
        let base = checksum(&data);
        for i in [0, 31, 32, 95, 96, 99] {
            data[i] ^= 1;
            assert_ne!(checksum(&data), base, "byte {i}");
            data[i] ^= 1;
        }
        assert_ne!(checksum(&data[..99]), base);
    }
}

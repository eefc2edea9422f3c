//! The shared chain (built by Fabric's protoutil in `aeconform -chain`) and
//! the private-data access rule both sides apply when serving it.

use antientropy::wire::gossip::{Payload, PvtDataPayload};
use bytes::Bytes;
use prost::Message;

use crate::net::RawBlock;

/// `rwset.TxPvtReadWriteSet` (Fabric's `ledger/rwset/rwset.proto`): what a
/// `PvtDataPayload.payload` holds. Only the driver needs it, to filter.
#[derive(Clone, PartialEq, Message)]
pub struct TxPvtReadWriteSet {
    #[prost(int32, tag = "1")]
    pub data_model: i32,
    #[prost(message, repeated, tag = "2")]
    pub ns_pvt_rwset: Vec<NsPvtReadWriteSet>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NsPvtReadWriteSet {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(message, repeated, tag = "2")]
    pub collection_pvt_rwset: Vec<CollectionPvtReadWriteSet>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CollectionPvtReadWriteSet {
    #[prost(string, tag = "1")]
    pub collection_name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub rwset: Bytes,
}

/// The harness's collection policy, the same as `readable` in
/// aeconform/chain.go: "open" for all, "secret-<id>" for peer <id> only.
fn readable(collection: &str, reader: &str) -> bool {
    collection == "open" || collection.strip_prefix("secret-") == Some(reader)
}

/// A transaction's private data, decoded: (index in block, write sets).
pub type TxPvt = (u64, TxPvtReadWriteSet);

pub fn decode_private_data(private_data: &[Bytes]) -> Result<Vec<TxPvt>, String> {
    private_data
        .iter()
        .map(|bytes| {
            let payload = PvtDataPayload::decode(bytes.clone()).map_err(|e| e.to_string())?;
            let set = TxPvtReadWriteSet::decode(payload.payload).map_err(|e| e.to_string())?;
            Ok((payload.tx_seq_in_block, set))
        })
        .collect()
}

/// What `reader` may see of a block's private data, as the coordinator
/// filters it: collections it may not read are dropped, then namespaces and
/// transactions left empty. Untouched transactions keep their bytes.
fn filter(private_data: &[Bytes], reader: &str) -> Vec<Bytes> {
    let decoded = decode_private_data(private_data).expect("the chain's private data decodes");
    let mut out = Vec::new();
    for (bytes, (seq_in_block, set)) in private_data.iter().zip(decoded) {
        let mut kept = set.clone();
        for ns in &mut kept.ns_pvt_rwset {
            ns.collection_pvt_rwset
                .retain(|c| readable(&c.collection_name, reader));
        }
        kept.ns_pvt_rwset
            .retain(|ns| !ns.collection_pvt_rwset.is_empty());
        if kept.ns_pvt_rwset.is_empty() {
            continue;
        }
        if kept == set {
            out.push(bytes.clone());
        } else {
            let payload = PvtDataPayload {
                tx_seq_in_block: seq_in_block,
                payload: kept.encode_to_vec().into(),
            };
            out.push(payload.encode_to_vec().into());
        }
    }
    out
}

pub struct Chain {
    blocks: Vec<RawBlock>,
}

impl Chain {
    pub fn new(blocks: Vec<RawBlock>) -> Self {
        Self { blocks }
    }

    pub fn len(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Blocks with any private data.
    pub fn with_private_data(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| !b.private_data.is_empty())
            .count()
    }

    /// Block `seq` with the private data `reader` may see: what an honest
    /// responder sends to `reader`.
    pub fn payload_for(&self, seq: u64, reader: &str) -> Payload {
        let block = &self.blocks[seq as usize];
        Payload {
            seq_num: seq,
            data: block.data.clone(),
            private_data: filter(&block.private_data, reader),
        }
    }

    /// Blocks whose private data `reader` sees some of.
    pub fn private_blocks(&self, range: std::ops::Range<u64>, reader: &str) -> u64 {
        range
            .filter(|&seq| !self.payload_for(seq, reader).private_data.is_empty())
            .count() as u64
    }

    /// Checks a payload delivered to `reader` against the chain: the exact
    /// block bytes and exactly the private data `reader` may see.
    pub fn check(&self, payload: &Payload, reader: &str) -> Result<(), String> {
        let seq = payload.seq_num;
        if seq >= self.len() {
            return Err(format!("block {seq} is beyond the chain"));
        }
        let want = self.payload_for(seq, reader);
        if payload.data != want.data {
            return Err(format!("block {seq}: data differs from the chain's"));
        }
        if decode_private_data(&payload.private_data)? != decode_private_data(&want.private_data)? {
            return Err(format!(
                "block {seq}: private data differs from what {reader} may see"
            ));
        }
        Ok(())
    }
}

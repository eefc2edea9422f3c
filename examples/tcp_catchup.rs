//! Catch-up between two processes over TCP with the shipped framing and
//! transport (not Fabric's gRPC comm layer): a server (`StateResponder`)
//! holding blocks 0..=N of a hash chain, and a client (`AntiEntropy`)
//! holding block 0 that verifies each block against the one before it
//! (SHA-256 of the encoded header, a stand-in for Fabric's DER hash).
//!
//! `cargo run --example tcp_catchup --features tokio-net -- serve|fetch 127.0.0.1:7051 1000`
use std::{error::Error, net::SocketAddr, time::Duration};

use antientropy::adapters::{tcp::TcpTransport, tokio::driver, tokio::Tokio};
use antientropy::adapters::{BlockStore, Ledger, RequesterHost, ResponderHost, Runtime, Verdict};
use antientropy::wire::{common::Block, common::BlockData, common::BlockHeader, gossip::Payload};
use antientropy::{
    AntiEntropy, Config, Event, Origin, PeerState, SeqRange, StateResponder, Ticket,
};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::watch};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;
const CHANNEL: &str = "mychannel";

fn hash(bytes: &[u8]) -> bytes::Bytes {
    Sha256::digest(bytes).to_vec().into()
}

/// Blocks 0..=n, encoded: each header names the hash of the one before.
pub fn chain(n: u64) -> Vec<Payload> {
    let mut previous_hash = bytes::Bytes::new();
    let block = |number| {
        let tx = bytes::Bytes::from(format!("transactions of block {number}"));
        let header = BlockHeader {
            number,
            previous_hash: previous_hash.clone(),
            data_hash: hash(&tx),
        };
        previous_hash = hash(&header.encode_to_vec());
        let block = Block {
            header: Some(header),
            data: Some(BlockData { data: vec![tx] }),
            metadata: None,
        };
        Payload {
            seq_num: number,
            data: block.encode_to_vec().into(),
            private_data: vec![],
        }
    };
    (0..=n).map(block).collect()
}

struct Store(Vec<Payload>);
impl BlockStore<SocketAddr> for Store {
    fn read_blocks(
        &mut self,
        _: Ticket,
        _: &SocketAddr,
        range: SeqRange,
        _: usize,
    ) -> Option<Vec<Payload>> {
        // The range is within our height; the responder applies the byte cap.
        let blocks = self.0.get(range.start() as usize..=range.end() as usize);
        Some(blocks.map(<[_]>::to_vec).unwrap_or_default())
    }
}

/// Serves the chain to whoever connects, until the process ends.
pub async fn serve(listener: TcpListener, n: u64) -> Res<()> {
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), n + 1)?;
    let transport = TcpTransport::default();
    let host = ResponderHost::new(transport.clone(), Store(chain(n)));
    let (handle, driver) = driver(responder, host, 1024);
    transport.listen(listener, |addr| addr, handle.downgrade());
    driver.await; // never ends: `handle` is alive
    Ok(())
}

/// The client's ledger: commits a block only if it extends the chain.
struct Verified {
    head: BlockHeader,
    height: watch::Sender<u64>,
}
impl Ledger<SocketAddr> for Verified {
    fn add_payload(&mut self, payload: Payload, _: Origin<SocketAddr>) -> Verdict {
        let Ok(Block {
            header: Some(header),
            data: Some(data),
            ..
        }) = Block::decode(payload.data)
        else {
            return Verdict::Rejected;
        };
        let extends = header.number == self.head.number + 1
            && header.previous_hash == hash(&self.head.encode_to_vec())
            && data.data.len() == 1
            && header.data_hash == hash(&data.data[0]);
        if !extends {
            return Verdict::Rejected;
        }
        self.height.send_replace(header.number + 1);
        self.head = header;
        Verdict::Committed
    }
}

/// Fetches blocks 1..=n from `server`; returns the requester once done.
pub async fn fetch(server: SocketAddr, n: u64) -> Res<AntiEntropy<SocketAddr>> {
    let head = Block::decode(chain(0).remove(0).data)?.header.unwrap();
    let (height, mut caught_up) = watch::channel(1);
    let requester = AntiEntropy::new(Config::default(), CHANNEL.into(), 1, 7, Tokio::now())?;
    let transport = TcpTransport::default();
    let host = RequesterHost::new(transport.clone(), Verified { head, height });
    let (handle, driver) = driver(requester, host, 1024);
    let driver = tokio::spawn(driver);
    transport.dial(server, server, handle.downgrade());
    // What gossip would tell: the server's height.
    handle
        .send(Event::Membership(vec![PeerState::new(server, n + 1)]))
        .await?;
    let done = caught_up.wait_for(|&height| height == n + 1);
    tokio::time::timeout(Duration::from_secs(60), done).await??;
    handle.shutdown().await?;
    let (requester, _host) = driver.await?;
    Ok(requester)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [role, addr, n] = &args[..] else {
        return Err("usage: tcp_catchup serve|fetch ADDRESS BLOCKS".into());
    };
    let (addr, n): (SocketAddr, u64) = (addr.parse()?, n.parse()?);
    match role.as_str() {
        "serve" => serve(TcpListener::bind(addr).await?, n).await,
        "fetch" => fetch(addr, n).await.map(|r| println!("{:?}", r.stats())),
        _ => Err(format!("unknown role {role}").into()),
    }
}

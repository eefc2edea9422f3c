//! A requester and a responder on real loopback TCP in one process, each
//! run by the tokio adapter over the shipped transport
//! ([`adapters::tcp`](antientropy::adapters::tcp), framing from
//! [`adapters::codec`](antientropy::adapters::codec)): the requester starts
//! with block 0 and catches up from the responder, then both shut down and
//! the run prints blocks/s.
//!
//! ```text
//! cargo run --release --example tokio_node --features tokio-net [-- BLOCKS [BLOCK_BYTES]]
//! ```
//!
//! Defaults: 10 000 blocks of 4 KiB. The run is bounded: it stops with an
//! error if the catch-up takes longer than 60 s.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use antientropy::adapters::tcp::TcpTransport;
use antientropy::adapters::tokio::{self as rt, Tokio};
use antientropy::adapters::{BlockStore, Ledger, RequesterHost, ResponderHost, Runtime, Verdict};
use antientropy::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};
use antientropy::wire::gossip::Payload;
use antientropy::{
    payload_size, wire, AntiEntropy, Config, Event, Origin, PeerState, SeqRange, StateResponder,
    Ticket,
};
use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Id = SocketAddr;
const CHANNEL: &str = "mychannel";
/// Inputs queued for a machine; a full inbox stops the socket reader.
const INBOX: usize = 1024;
const LIMIT: Duration = Duration::from_secs(60);

/// The responder's ledger: blocks `0..height` of `block_bytes` each, made up
/// front so that a read costs a reference count.
struct Store {
    blocks: Vec<Bytes>,
}

impl Store {
    fn new(height: u64, block_bytes: usize) -> Self {
        let blocks = (0..height)
            .map(|number| {
                Block {
                    header: Some(BlockHeader {
                        number,
                        previous_hash: Bytes::from_static(b"previous"),
                        data_hash: Bytes::from_static(b"data"),
                    }),
                    data: Some(BlockData {
                        data: vec![Bytes::from(vec![number as u8; block_bytes])],
                    }),
                    metadata: Some(BlockMetadata::default()),
                }
                .encode_to_vec()
                .into()
            })
            .collect();
        Self { blocks }
    }
}

impl BlockStore<Id> for Store {
    fn read_blocks(
        &mut self,
        _: Ticket,
        _: &Id,
        range: SeqRange,
        max_bytes: usize,
    ) -> Option<Vec<Payload>> {
        let mut payloads = Vec::new();
        let mut bytes = 0;
        for seq in range.start()..=range.end() {
            let Some(data) = usize::try_from(seq).ok().and_then(|i| self.blocks.get(i)) else {
                break;
            };
            let payload = Payload {
                seq_num: seq,
                data: data.clone(),
                private_data: Vec::new(),
            };
            bytes += payload_size(&payload);
            if !payloads.is_empty() && bytes > max_bytes {
                break;
            }
            payloads.push(payload);
        }
        Some(payloads)
    }
}

/// The requester's ledger: checks each block's number, commits it, and
/// publishes its height.
struct Chain {
    bytes: u64,
    height: watch::Sender<u64>,
}

impl Ledger<Id> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<Id>) -> Verdict {
        let height = *self.height.borrow();
        if payload.seq_num != height || wire::block_number(&payload.data) != Ok(height) {
            return Verdict::Rejected;
        }
        self.bytes += payload_size(&payload) as u64;
        self.height.send_replace(height + 1);
        Verdict::Committed
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let blocks: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let block_bytes: usize = args.next().map_or(Ok(4096), |a| a.parse())?;
    let height = blocks + 1; // block 0 is the genesis block both hold

    // The serving node. The defaults fit together: a default responder
    // never refuses a default requester, however fast the link.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    println!("responder on {address}: {blocks} blocks of {block_bytes} bytes");
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), height)?;
    let served_by = TcpTransport::default();
    let store = Store::new(height, block_bytes);
    let host = ResponderHost::new(served_by.clone(), store);
    let (responder, driver) = rt::driver(responder, host, INBOX);
    let responder_task = tokio::spawn(driver);
    served_by.listen(listener, |peer| peer, responder.downgrade());

    // The catching-up node.
    let (height_tx, mut caught_up) = watch::channel(1);
    let chain = Chain {
        bytes: 0,
        height: height_tx,
    };
    let start = Tokio::now();
    let requester = AntiEntropy::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let fetched_by = TcpTransport::default();
    let (requester, driver) = rt::driver(
        requester,
        RequesterHost::new(fetched_by.clone(), chain),
        INBOX,
    );
    let requester_task = tokio::spawn(driver);
    fetched_by.dial(address, address, requester.downgrade());
    // What the gossip layer would learn from the responder's StateInfo.
    requester
        .send(Event::Membership(vec![PeerState::new(address, height)]))
        .await?;

    let done = caught_up.wait_for(|&committed| committed == height);
    tokio::time::timeout(LIMIT, done)
        .await
        .map_err(|_| format!("no catch-up within {LIMIT:?}"))??;
    let elapsed = Tokio::now() - start;

    // Shut down: each driver hands its machine and host back.
    let driver_stats = requester.driver_stats().unwrap_or_default();
    requester.shutdown().await?;
    let (requester, host) = requester_task.await?;
    responder.shutdown().await?;
    let (served, _) = responder_task.await?;
    let (stats, served) = (requester.stats(), served.stats());
    let chain = host.ledger;

    let secs = elapsed.as_secs_f64();
    println!(
        "caught up {} blocks ({:.1} MB) in {:.3} s: {:.0} blocks/s, {:.1} MB/s",
        blocks,
        chain.bytes as f64 / 1e6,
        secs,
        blocks as f64 / secs,
        chain.bytes as f64 / 1e6 / secs,
    );
    println!(
        "requester: {} requests, {} responses, {} timeouts, {} retries, {} hedges; driver: {} wake-ups, {} yields, {} timer re-arms, {} dropped sends",
        stats.requests,
        stats.responses,
        stats.timeouts,
        stats.retries,
        stats.hedges,
        driver_stats.wakeups,
        driver_stats.yields,
        driver_stats.timer_resets,
        host.dropped_sends,
    );
    println!(
        "responder: {} requests, {} responses, {} blocks served, {} refused ({} rate-limited)",
        served.requests,
        served.responses,
        served.blocks_served,
        served.refused(),
        served.rate_limited,
    );
    if requester.committed() != height {
        return Err("the catch-up is incomplete".into());
    }
    Ok(())
}

//! A requester and a responder on real loopback TCP, each run by the tokio
//! adapter: the requester starts with block 0 and catches up from the
//! responder, then both shut down and the run prints blocks/s.
//!
//! Frames are a 4-byte big-endian length followed by an encoded
//! `gossip.Envelope` ([`wire::wrap_envelope`], as Fabric's `NoopSign`).
//!
//! ```text
//! cargo run --example tokio_node --features tokio [-- BLOCKS [BLOCK_BYTES]]
//! ```
//!
//! Defaults: 10 000 blocks of 4 KiB. The run is bounded: it stops with an
//! error if the catch-up takes longer than 60 s.

use std::error::Error;
use std::io;
use std::time::Duration;

use antientropy::adapters::tokio::Tokio;
use antientropy::adapters::{
    self, BlockStore, Ledger, RequesterHost, ResponderHost, Runtime, SendError, Transport, Verdict,
};
use antientropy::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};
use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{
    payload_size, wire, AntiEntropy, Config, Event, Origin, PeerState, ResponderEvent, SeqRange,
    StateResponder, Ticket,
};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

type Id = &'static str;
const REQUESTER: Id = "requester";
const RESPONDER: Id = "responder";
const CHANNEL: &str = "mychannel";
/// Inputs queued for a machine; a full inbox stops the socket reader.
const INBOX: usize = 1024;
/// Messages queued for a connection's writer; beyond that they are dropped.
const OUTBOX: usize = 1024;
const LIMIT: Duration = Duration::from_secs(60);

// --- framing ---------------------------------------------------------------------------

/// Reads frames until the peer closes, handing each message to `inbox`
/// (awaiting room: a full inbox pauses reading, and TCP slows the peer).
async fn read_frames<I>(
    read: OwnedReadHalf,
    from: Id,
    inbox: mpsc::Sender<I>,
    wrap: fn(Id, GossipMessage) -> I,
    closed: Option<I>,
) -> io::Result<()> {
    let result = read_until_closed(read, from, &inbox, wrap).await;
    // The connection is gone, cleanly or not: tell the machine at once, so
    // its requests to this peer move elsewhere instead of timing out.
    if let Some(event) = closed {
        let _ = inbox.send(event).await;
    }
    result
}

async fn read_until_closed<I>(
    read: OwnedReadHalf,
    from: Id,
    inbox: &mpsc::Sender<I>,
    wrap: fn(Id, GossipMessage) -> I,
) -> io::Result<()> {
    let max = wire::DEFAULT_MAX_MESSAGE_SIZE;
    let mut read = BufReader::with_capacity(256 * 1024, read);
    loop {
        let len = match read.read_u32().await {
            Ok(len) => len as usize,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        };
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        let mut frame = BytesMut::zeroed(len);
        read.read_exact(&mut frame).await?;
        let message = wire::decode_envelope(frame.freeze(), max)
            .and_then(|envelope| wire::unwrap_envelope(&envelope, max))
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        if inbox.send(wrap(from, message)).await.is_err() {
            return Ok(()); // the machine's driver is gone
        }
    }
}

/// A connection's writer task: frames what the transport queued, batching
/// what is already waiting into one write. Ends (closing the socket's
/// sending side) once every sender of the queue is dropped.
fn spawn_writer(
    mut write: OwnedWriteHalf,
) -> (mpsc::Sender<GossipMessage>, JoinHandle<io::Result<()>>) {
    let (outbox, mut queue) = mpsc::channel::<GossipMessage>(OUTBOX);
    let task = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(message) = queue.recv().await {
            frame(&mut buf, &message);
            while buf.len() < 1 << 20 {
                match queue.try_recv() {
                    Ok(message) => frame(&mut buf, &message),
                    Err(_) => break,
                }
            }
            write.write_all(&buf).await?;
            buf.clear();
        }
        write.shutdown().await
    });
    (outbox, task)
}

fn frame(buf: &mut BytesMut, message: &GossipMessage) {
    let envelope = wire::wrap_envelope(message);
    let len = u32::try_from(envelope.encoded_len()).expect("a frame below 4 GiB");
    buf.put_u32(len);
    envelope.encode(buf).expect("the buffer grows");
}

/// The transport of a node with one connection: a full writer queue drops
/// the message (the requester re-sends on its deadline).
struct Connection {
    peer: Id,
    outbox: mpsc::Sender<GossipMessage>,
}

impl Transport<Id> for Connection {
    fn send(&mut self, to: &Id, message: GossipMessage) -> Result<(), SendError> {
        if *to != self.peer {
            return Err(SendError::Closed);
        }
        self.outbox.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }
}

// --- the ledgers -------------------------------------------------------------------------

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
/// says when `target` is reached.
struct Chain {
    height: u64,
    bytes: u64,
    target: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Ledger<Id> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<Id>) -> Verdict {
        if payload.seq_num != self.height || wire::block_number(&payload.data) != Ok(self.height) {
            return Verdict::Rejected;
        }
        self.height += 1;
        self.bytes += payload_size(&payload) as u64;
        if self.height == self.target {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        Verdict::Committed
    }
}

// --- the nodes ---------------------------------------------------------------------------

/// The serving node: accepts one connection and answers it until it closes.
async fn responder_node(
    listener: TcpListener,
    height: u64,
    block_bytes: usize,
) -> Result<antientropy::ResponderStats, Box<dyn Error + Send + Sync>> {
    let store = Store::new(height, block_bytes);
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let (outbox, writer) = spawn_writer(write);

    // The defaults fit together: a default responder never refuses a
    // default requester, however fast the link.
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), height)?;
    let host = ResponderHost::new(
        Connection {
            peer: REQUESTER,
            outbox,
        },
        store,
    );
    let (inbox, mut driver) = adapters::tokio::driver(responder, host, INBOX);
    let reader = tokio::spawn(read_frames(
        read,
        REQUESTER,
        inbox,
        |from, message| ResponderEvent::Request { from, message },
        // Nothing queued or being read for it is sent once it is gone.
        Some(ResponderEvent::PeerDisconnected { peer: REQUESTER }),
    ));
    // Ends once the reader saw the requester close and dropped the inbox.
    (&mut driver).await;
    reader.await??;
    let (responder, host) = driver.into_parts();
    drop(host); // the last sender of the writer's queue: it closes the socket
    writer.await??;
    Ok(responder.stats())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let blocks: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let block_bytes: usize = args.next().map_or(Ok(4096), |a| a.parse())?;
    let height = blocks + 1; // block 0 is the genesis block both hold

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    println!("responder on {address}: {blocks} blocks of {block_bytes} bytes");
    let responder = tokio::spawn(responder_node(listener, height, block_bytes));

    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let (outbox, writer) = spawn_writer(write);
    let (done, mut caught_up) = oneshot::channel();
    let chain = Chain {
        height: 1,
        bytes: 0,
        target: height,
        done: Some(done),
    };
    let start = Tokio::now();
    let requester = AntiEntropy::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let host = RequesterHost::new(
        Connection {
            peer: RESPONDER,
            outbox,
        },
        chain,
    );
    let (inbox, mut driver) = adapters::tokio::driver(requester, host, INBOX);
    // What the gossip layer would learn from the responder's StateInfo.
    inbox
        .send(Event::Membership(vec![PeerState::new(RESPONDER, height)]))
        .await?;
    // The connection is up: a host sends this on every (re)connection.
    inbox.send(Event::PeerConnected { peer: RESPONDER }).await?;
    let reader = tokio::spawn(read_frames(
        read,
        RESPONDER,
        inbox,
        |from, message| Event::Response { from, message },
        Some(Event::PeerDisconnected { peer: RESPONDER }),
    ));

    tokio::select! {
        _ = &mut driver => return Err("the requester's inbox closed early".into()),
        _ = &mut caught_up => {}
        _ = tokio::time::sleep(LIMIT) => return Err(format!("no catch-up within {LIMIT:?}").into()),
    }
    let elapsed = Tokio::now() - start;

    // Shut down: dropping the requester's transport closes its socket side;
    // the responder sees it, ends, and closes the other side.
    let driver_stats = driver.stats().clone();
    let (requester, host) = driver.into_parts();
    let chain = host.ledger;
    drop(host.transport);
    writer.await??;
    let served = responder.await??;
    reader.await??;

    let stats = requester.stats();
    let secs = elapsed.as_secs_f64();
    println!(
        "caught up {} blocks ({:.1} MB) in {:.3} s: {:.0} blocks/s, {:.1} MB/s",
        chain.height - 1,
        chain.bytes as f64 / 1e6,
        secs,
        (chain.height - 1) as f64 / secs,
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
    if chain.height != height {
        return Err("the catch-up is incomplete".into());
    }
    Ok(())
}

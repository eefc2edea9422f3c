//! Catch up from, or serve, real Fabric peers over Fabric's gossip comm
//! layer (feature `fabric-grpc`): gRPC `GossipStream`, mutual TLS (or
//! `--plaintext` instead of the `--tls-*` files, for peers with
//! `peer.tls.enabled: false`), the signed handshake, signed Alive and
//! StateInfo.
//!
//! Blocks live in a directory, one marshalled `common.Block` per file named
//! `<number>.block`; `0.block` (the channel's genesis block) must be there.
//!
//! ```sh
//! # catch up from a Fabric peer until height 100, writing the blocks
//! cargo run --release --features fabric-grpc --example fabric_peer -- \
//!     --msp-id Org1MSP --cert msp/signcerts/cert.pem --key msp/keystore/key.pem \
//!     --ca msp/cacerts/ca.pem --tls-cert tls/server.crt --tls-key tls/server.key \
//!     --tls-ca tls/ca.crt --channel mychannel --blocks ./blocks \
//!     fetch --peer 127.0.0.1:7051 --server-name peer0.org1.example.com --until 100
//! # serve them: Fabric peers we dial (or that dial us) list us and ask us
//! cargo run --release --features fabric-grpc --example fabric_peer -- ...same... \
//!     serve --listen 127.0.0.1:7061 --peer 127.0.0.1:7051 --server-name peer0.org1.example.com
//! ```
//!
//! What it does not do: validate blocks beyond their hash chain (no
//! orderer signatures, no transactions), private data, endorsement or any
//! other peer service; it trusts every identity its CA issued as a reader
//! of the channel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use antientropy::adapters::tokio::driver;
use antientropy::adapters::{BlockStore, Ledger, RequesterHost, ResponderHost, Verdict};
use antientropy::fabric::{
    GrpcConfig, GrpcTransport, MspVerifier, P256Signer, PkiId, ServerName, TlsIdentity,
};
use antientropy::prost::Message;
use antientropy::wire::common::{Block, BlockHeader};
use antientropy::wire::{self, gossip::Payload};
use antientropy::{AntiEntropy, Config, Origin, SeqRange, StateResponder, Ticket};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

/// Identity, TLS, channel and blocks: what a Fabric peer's core.yaml names.
#[derive(Parser, Debug, Clone)]
#[command(about = "Catch up from, or serve, Fabric peers over gossip gRPC")]
pub struct Args {
    /// Our MSP ID.
    #[arg(long)]
    pub msp_id: String,
    /// Our MSP identity certificate (PEM, sent as is).
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PKCS#8 or SEC1 PEM, P-256).
    #[arg(long)]
    pub key: PathBuf,
    /// CA certificates of our MSP (PEM): the identities we accept.
    #[arg(long)]
    pub ca: PathBuf,
    /// Our TLS certificate (server, and client too).
    #[arg(long, required_unless_present = "plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, required_unless_present = "plaintext")]
    pub tls_key: Option<PathBuf>,
    /// TLS roots the peers' certificates chain to.
    #[arg(long, required_unless_present = "plaintext")]
    pub tls_ca: Option<PathBuf>,
    /// No TLS, for peers with `peer.tls.enabled: false` (Fabric's sample
    /// core.yaml): the handshake is still signed, nothing is encrypted.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    pub plaintext: bool,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The block directory (`<number>.block` files, `0.block` at least).
    #[arg(long)]
    pub blocks: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Fetch or serve.
#[derive(Subcommand, Debug, Clone)]
pub enum Mode {
    /// Catch up from the peers' advertised heights (learnt from their
    /// StateInfo), writing each verified block.
    Fetch {
        /// A Fabric peer to dial (repeatable).
        #[arg(long, required = true)]
        peer: Vec<SocketAddr>,
        /// The name its TLS certificate holds (default: the IP).
        #[arg(long)]
        server_name: Option<String>,
        /// Stop at this height (default: when the peers' height is reached).
        #[arg(long)]
        until: Option<u64>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Serve the directory's blocks; peers we dial, or that dial us, list
    /// us from our Alive and StateInfo and ask us.
    Serve {
        /// Where to accept Fabric peers.
        #[arg(long)]
        listen: SocketAddr,
        /// Fabric peers to dial (repeatable).
        #[arg(long)]
        peer: Vec<SocketAddr>,
        /// The name their TLS certificates hold (default: the IP).
        #[arg(long)]
        server_name: Option<String>,
        /// Stop after this many seconds (default: never).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often our Alive and StateInfo go out (Fabric: Alive every 5 s,
/// a member expires after 25 s without one).
const ANNOUNCE: Duration = Duration::from_secs(2);

/// The transport for `args`.
pub fn transport(args: &Args) -> Result<GrpcTransport, Error> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let key = String::from_utf8(read(&args.key)?)?;
    let signer = P256Signer::from_pem(&args.msp_id, &read(&args.cert)?, &key)?;
    let verifier = MspVerifier::new().with_msp(&args.msp_id, &read(&args.ca)?)?;
    let config = GrpcConfig::new(args.channel.clone().into_bytes());
    let (signer, verifier) = (Arc::new(signer), Arc::new(verifier));
    if args.plaintext {
        return Ok(GrpcTransport::plaintext(config, signer, verifier)?);
    }
    // Never plaintext by omission: `Args` is built by code too.
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) else {
        return Err("--tls-cert, --tls-key and --tls-ca, or --plaintext".into());
    };
    let tls = TlsIdentity::from_pem(&read(cert)?, &read(key)?, None, &read(ca)?)?;
    Ok(GrpcTransport::new(config, tls, signer, verifier)?)
}

/// The consecutive blocks of `dir` from 0.
pub fn read_blocks(dir: &Path) -> Result<Vec<Bytes>, Error> {
    let mut blocks = Vec::new();
    while let Ok(block) = std::fs::read(dir.join(format!("{}.block", blocks.len()))) {
        blocks.push(Bytes::from(block));
    }
    if blocks.is_empty() {
        return Err(format!("{}: no 0.block", dir.display()).into());
    }
    Ok(blocks)
}

fn server_name(name: &Option<String>, addr: SocketAddr) -> Result<ServerName<'static>, Error> {
    let name = name.clone().unwrap_or_else(|| addr.ip().to_string());
    Ok(ServerName::try_from(name)?)
}

/// Verifies each block against the last (hash chain) and writes it.
struct Chain {
    dir: PathBuf,
    last: BlockHeader,
    height: Arc<AtomicU64>,
    /// When the first and the last block were committed.
    commits: Arc<Mutex<Option<(Instant, Instant)>>>,
}

impl Ledger<PkiId> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<PkiId>) -> Verdict {
        let Ok(block) = Block::decode(payload.data.clone()) else {
            return Verdict::Rejected;
        };
        if wire::verify_chain_link(&self.last, &block).is_err() {
            return Verdict::Rejected;
        }
        let path = self.dir.join(format!("{}.block", payload.seq_num));
        if std::fs::write(path, &payload.data).is_err() {
            return Verdict::Rejected;
        }
        self.last = block.header.unwrap_or_default();
        #[allow(clippy::disallowed_methods)] // the host's clock
        let now = Instant::now();
        let mut commits = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
        commits.get_or_insert((now, now)).1 = now;
        self.height.store(payload.seq_num + 1, Ordering::SeqCst);
        Verdict::Committed
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    /// The height reached.
    pub height: u64,
    /// Seconds from the first dial (so: connection, handshake and learning
    /// the peers' heights included).
    pub seconds: f64,
    /// Seconds from the first block committed to the last.
    pub first_to_last: f64,
}

/// Catches up from `peers`.
pub async fn fetch(
    args: &Args,
    peers: &[SocketAddr],
    name: &Option<String>,
    until: Option<u64>,
    timeout: Duration,
) -> Result<Fetched, Error> {
    let transport = transport(args)?;
    let blocks = read_blocks(&args.blocks)?;
    let start = blocks.len() as u64;
    let height = Arc::new(AtomicU64::new(start));
    let last = Block::decode(blocks[blocks.len() - 1].clone())?;
    let chain = Chain {
        dir: args.blocks.clone(),
        last: last.header.ok_or("the last block has no header")?,
        height: height.clone(),
        commits: Arc::default(),
    };
    let commits = chain.commits.clone();
    #[allow(clippy::disallowed_methods)] // the host's clock
    let now = std::time::Instant::now();
    let requester = AntiEntropy::new(
        Config::default(),
        args.channel.clone().into(),
        start,
        7,
        now,
    )?;
    let (handle, future) = driver(
        requester,
        RequesterHost::new(transport.clone(), chain),
        1024,
    );
    tokio::spawn(future);
    transport.attach_requester(handle.downgrade());
    transport.publish_membership(String::new(), start, ANNOUNCE);
    for &peer in peers {
        transport.dial(peer, server_name(name, peer)?, None);
    }
    let done = async {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let reached = height.load(Ordering::SeqCst);
            transport.set_ledger_height(reached);
            let target = until.unwrap_or_else(|| {
                let advertised = transport
                    .membership()
                    .iter()
                    .filter_map(|p| p.ledger_height)
                    .max();
                advertised.unwrap_or(u64::MAX)
            });
            if reached >= target {
                return reached;
            }
        }
    };
    let reached = tokio::time::timeout(timeout, done)
        .await
        .map_err(|_| format!("timed out at height {}", height.load(Ordering::SeqCst)))?;
    let seconds = now.elapsed().as_secs_f64();
    handle.shutdown().await.ok();
    let span = *commits.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Fetched {
        height: reached,
        seconds,
        first_to_last: span.map_or(0.0, |(first, last)| (last - first).as_secs_f64()),
    })
}

/// Serves the directory's blocks: our peers' answers go back on the stream
/// each request came in on.
struct Store(Vec<Bytes>);

impl BlockStore<PkiId> for Store {
    fn read_blocks(
        &mut self,
        _: Ticket,
        _: &PkiId,
        range: SeqRange,
        _: usize,
    ) -> Option<Vec<Payload>> {
        Some(
            (range.start()..=range.end())
                .filter_map(|seq| {
                    Some(Payload {
                        seq_num: seq,
                        data: self.0.get(usize::try_from(seq).ok()?)?.clone(),
                        private_data: Vec::new(),
                    })
                })
                .collect(),
        )
    }
}

/// Serves until `seconds` have passed (or forever); returns the transport
/// for its counters.
pub async fn serve(
    args: &Args,
    listen: SocketAddr,
    peers: &[SocketAddr],
    name: &Option<String>,
    seconds: Option<u64>,
) -> Result<GrpcTransport, Error> {
    let transport = transport(args)?;
    let blocks = read_blocks(&args.blocks)?;
    let height = blocks.len() as u64;
    let responder = StateResponder::new(Config::default(), args.channel.clone().into(), height)?;
    let (handle, future) = driver(
        responder,
        ResponderHost::new(transport.clone(), Store(blocks)),
        1024,
    );
    tokio::spawn(future);
    transport.attach_responder(handle.downgrade());
    let listener = TcpListener::bind(listen).await?;
    transport.serve(listener);
    transport.publish_membership(listen.to_string(), height, ANNOUNCE);
    for &peer in peers {
        transport.dial(peer, server_name(name, peer)?, None);
    }
    match seconds {
        Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
        None => std::future::pending().await,
    }
    handle.shutdown().await.ok();
    Ok(transport)
}

#[tokio::main]
#[allow(dead_code)] // compiled into the conformance driver too, without `main`
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    match &args.mode {
        Mode::Fetch {
            peer,
            server_name,
            until,
            timeout,
        } => {
            let timeout = Duration::from_secs(*timeout);
            let fetched = fetch(&args, peer, server_name, *until, timeout).await?;
            println!(
                "height {} in {:.3} s ({:.3} s from the first block committed to the last)",
                fetched.height, fetched.seconds, fetched.first_to_last
            );
        }
        Mode::Serve {
            listen,
            peer,
            server_name,
            seconds,
        } => {
            let transport = serve(&args, *listen, peer, server_name, *seconds).await?;
            println!("{:?}", transport.stats());
        }
    }
    Ok(())
}

//! The same catch-up over the two transports, alternating, in one process:
//! the plain TCP codec (`adapters::tcp`) and Fabric's gRPC comm layer
//! (`fabric::GrpcTransport`: HTTP/2, TLS, the signed handshake; crypto
//! made here with rcgen). A default requester fetches BLOCKS blocks of
//! BLOCK_BYTES from a default responder over loopback; the run prints each
//! time and the gRPC / TCP ratio of the medians.
//!
//! ```text
//! cargo run --release --features fabric-grpc --example grpc_vs_tcp [-- BLOCKS [BLOCK_BYTES [ROUNDS [ONLY]]]]
//! ```
//!
//! Defaults: 20 000 blocks of 4 KiB, 3 rounds, the TCP codec, gRPC with
//! TLS and gRPC without TLS (Fabric's `peer.tls.enabled: false`:
//! `GrpcTransport::plaintext`) in turn; ONLY `tcp`, `grpc` or `plain` runs
//! one (e.g. under a profiler), `both` the first two.
//!
//! Three figures per run: `total`, from the requester's start (for gRPC
//! including TCP connect, TLS, Ping and the signed handshake) to the last
//! block committed; `transfer`, from the first block committed to the last
//! (the transport's steady state, without the connection set-up); and
//! `cpu`, the CPU time of the process's threads over the run (Linux only:
//! `/proc/self/task/*/schedstat`), less sensitive than wall time to a
//! machine shared with other work.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use antientropy::adapters::tcp::TcpTransport;
use antientropy::adapters::tokio::{self as rt, Tokio};
use antientropy::adapters::{BlockStore, Ledger, RequesterHost, ResponderHost, Runtime, Verdict};
use antientropy::fabric::{
    GrpcConfig, GrpcTransport, MspVerifier, P256Signer, PkiId, ServerName, TlsIdentity,
};
use antientropy::wire::common::{Block, BlockData, BlockHeader};
use antientropy::wire::gossip::Payload;
use antientropy::{
    payload_size, wire, AntiEntropy, Config, Event, Origin, PeerState, SeqRange, StateResponder,
    Ticket,
};
use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
const CHANNEL: &str = "mychannel";
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone)]
struct Store(Arc<Vec<Bytes>>);

impl<P> BlockStore<P> for Store {
    fn read_blocks(
        &mut self,
        _: Ticket,
        _: &P,
        range: SeqRange,
        max: usize,
    ) -> Option<Vec<Payload>> {
        let mut payloads = Vec::new();
        let mut bytes = 0;
        for seq in range.start()..=range.end() {
            let Some(data) = self.0.get(seq as usize) else {
                break;
            };
            let payload = Payload {
                seq_num: seq,
                data: data.clone(),
                private_data: Vec::new(),
            };
            bytes += payload_size(&payload);
            if !payloads.is_empty() && bytes > max {
                break;
            }
            payloads.push(payload);
        }
        Some(payloads)
    }
}

/// The chain: its height, when its first block was committed, and a signal
/// at `target`. Only the last block wakes the waiting task: a wake-up per
/// block (100 000 futex wake-ups of the main thread for 1 KiB blocks) cost
/// both transports more CPU than some of their own work.
struct Chain {
    height: u64,
    target: u64,
    first: Arc<OnceLock<Instant>>,
    done: watch::Sender<u64>,
}

impl Chain {
    /// A ledger at height 1 that catches up to `target`, the receiver that
    /// sees its height, and when its first block was committed.
    fn empty(target: u64) -> (Self, watch::Receiver<u64>, Arc<OnceLock<Instant>>) {
        let (done, caught_up) = watch::channel(1);
        let first = Arc::new(OnceLock::new());
        let chain = Chain {
            height: 1,
            target,
            first: first.clone(),
            done,
        };
        (chain, caught_up, first)
    }
}

impl<P> Ledger<P> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<P>) -> Verdict {
        let height = self.height;
        if payload.seq_num != height || wire::block_number(&payload.data) != Ok(height) {
            return Verdict::Rejected;
        }
        let _ = self.first.set(Tokio::now());
        self.height += 1;
        if self.height == self.target {
            self.done.send_replace(self.height);
        }
        Verdict::Committed
    }
}

/// One catch-up's figures, in seconds.
#[derive(Clone, Copy)]
struct Run {
    total: f64,
    transfer: f64,
    cpu: f64,
}

/// CPU time of this process's live threads, in nanoseconds (Linux).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Waits for `height` and measures the run started at `start` (`cpu` ns).
async fn finish(
    mut caught_up: watch::Receiver<u64>,
    first: &OnceLock<Instant>,
    height: u64,
    start: Instant,
    cpu: u64,
) -> Result<Run> {
    tokio::time::timeout(LIMIT, caught_up.wait_for(|&h| h == height)).await??;
    let end = Tokio::now();
    let first = first.get().copied().unwrap_or(start);
    Ok(Run {
        total: (end - start).as_secs_f64(),
        transfer: (end - first).as_secs_f64(),
        cpu: cpu_ns().saturating_sub(cpu) as f64 / 1e9,
    })
}

async fn tcp(store: &Store) -> Result<Run> {
    let height = store.0.len() as u64;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let served_by = TcpTransport::<SocketAddr>::default();
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), height)?;
    let (responder, driver) = rt::driver(
        responder,
        ResponderHost::new(served_by.clone(), store.clone()),
        1024,
    );
    tokio::spawn(driver);
    served_by.listen(listener, |peer| peer, responder.downgrade());
    let (chain, caught_up, first) = Chain::empty(height);
    let (start, cpu) = (Tokio::now(), cpu_ns());
    let requester = AntiEntropy::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let fetched_by = TcpTransport::default();
    let (requester, driver) = rt::driver(
        requester,
        RequesterHost::new(fetched_by.clone(), chain),
        1024,
    );
    tokio::spawn(driver);
    fetched_by.dial(address, address, requester.downgrade());
    requester
        .send(Event::Membership(vec![PeerState::new(address, height)]))
        .await?;
    let run = finish(caught_up, &first, height, start, cpu).await?;
    requester.shutdown().await?;
    responder.shutdown().await?;
    Ok(run)
}

/// One node's crypto, issued by `ca`.
fn node(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    ca_pem: &str,
) -> Result<(P256Signer, TlsIdentity, MspVerifier)> {
    let issue = |name: &str| -> Result<(String, String)> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
        let key = rcgen::KeyPair::generate()?;
        Ok((params.signed_by(&key, ca)?.pem(), key.serialize_pem()))
    };
    let (cert, key) = issue("msp")?;
    let (tls_cert, tls_key) = issue("tls")?;
    Ok((
        P256Signer::from_pem("Org1MSP", cert.as_bytes(), &key)?,
        TlsIdentity::from_pem(
            tls_cert.as_bytes(),
            tls_key.as_bytes(),
            None,
            ca_pem.as_bytes(),
        )?,
        MspVerifier::new().with_msp("Org1MSP", ca_pem.as_bytes())?,
    ))
}

async fn grpc(store: &Store, tls: bool) -> Result<Run> {
    let height = store.0.len() as u64;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
    let ca_pem = ca.pem();
    let transport = |(signer, identity, verifier): (P256Signer, TlsIdentity, MspVerifier)| {
        let (config, signer, verifier) = (
            GrpcConfig::new(CHANNEL),
            Arc::new(signer),
            Arc::new(verifier),
        );
        if tls {
            GrpcTransport::new(config, identity, signer, verifier)
        } else {
            GrpcTransport::plaintext(config, signer, verifier)
        }
    };
    let served_by = transport(node(&ca, &ca_pem)?)?;
    let fetched_by = transport(node(&ca, &ca_pem)?)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), height)?;
    let (responder, driver) = rt::driver(
        responder,
        ResponderHost::new(served_by.clone(), store.clone()),
        1024,
    );
    tokio::spawn(driver);
    served_by.attach_responder(responder.downgrade());
    served_by.serve(listener);
    let (chain, caught_up, first) = Chain::empty(height);
    let (start, cpu) = (Tokio::now(), cpu_ns());
    let requester = AntiEntropy::<PkiId>::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let (requester, driver) = rt::driver(
        requester,
        RequesterHost::new(fetched_by.clone(), chain),
        1024,
    );
    tokio::spawn(driver);
    fetched_by.attach_requester(requester.downgrade());
    fetched_by.dial(
        address,
        ServerName::try_from("127.0.0.1")?,
        Some(served_by.pki_id()),
    );
    requester
        .send(Event::Membership(vec![PeerState::new(
            served_by.pki_id(),
            height,
        )]))
        .await?;
    let run = finish(caught_up, &first, height, start, cpu).await?;
    requester.shutdown().await?;
    responder.shutdown().await?;
    Ok(run)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The medians of each figure.
fn medians(runs: &[Run]) -> Run {
    let of = |figure: fn(&Run) -> f64| median(runs.iter().map(figure).collect());
    Run {
        total: of(|run| run.total),
        transfer: of(|run| run.transfer),
        cpu: of(|run| run.cpu),
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "total {:.3} s, transfer {:.3} s, cpu {:.3} s",
            self.total, self.transfer, self.cpu
        )
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let blocks: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let block_bytes: usize = args.next().map_or(Ok(4096), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let only = args.next().unwrap_or_default();
    let (run_tcp, run_grpc, run_plain) = match only.as_str() {
        "" | "all" => (true, true, true),
        "both" => (true, true, false),
        "tcp" => (true, false, false),
        "grpc" => (false, true, false),
        "plain" => (false, false, true),
        other => return Err(format!("ONLY is tcp, grpc, plain, both or all, not {other}").into()),
    };
    let store = Store(Arc::new(
        (0..=blocks)
            .map(|number| {
                let block = Block {
                    header: Some(BlockHeader {
                        number,
                        ..Default::default()
                    }),
                    data: Some(BlockData {
                        data: vec![Bytes::from(vec![number as u8; block_bytes])],
                    }),
                    metadata: None,
                };
                Bytes::from(block.encode_to_vec())
            })
            .collect(),
    ));
    let (mut over_tcp, mut over_grpc, mut over_plain) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        if run_tcp {
            let t = tcp(&store).await?;
            println!("round {round}: tcp   {t}");
            over_tcp.push(t);
        }
        if run_grpc {
            let g = grpc(&store, true).await?;
            println!("round {round}: grpc  {g}");
            over_grpc.push(g);
        }
        if run_plain {
            let p = grpc(&store, false).await?;
            println!("round {round}: plain {p}");
            over_plain.push(p);
        }
    }
    println!("{blocks} blocks of {block_bytes} bytes, {rounds} rounds, medians:");
    let rate = |secs: f64| blocks as f64 / secs;
    let all = [
        ("tcp  ", &over_tcp),
        ("grpc ", &over_grpc),
        ("plain", &over_plain),
    ];
    for (name, runs) in all {
        if !runs.is_empty() {
            let m = medians(runs);
            println!("  {name} {m} ({:.0} blocks/s)", rate(m.total));
        }
    }
    if run_tcp {
        let t = medians(&over_tcp);
        for (name, runs) in [("grpc", &over_grpc), ("plain", &over_plain)] {
            if !runs.is_empty() {
                let g = medians(runs);
                println!(
                    "  {name}/tcp: total {:.2}, transfer {:.2}, cpu {:.2}",
                    g.total / t.total,
                    g.transfer / t.transfer,
                    g.cpu / t.cpu
                );
            }
        }
    }
    Ok(())
}

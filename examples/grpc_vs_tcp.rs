//! The same catch-up over the two transports, alternating, in one process:
//! the plain TCP codec (`adapters::tcp`) and Fabric's gRPC comm layer
//! (`fabric::GrpcTransport`: HTTP/2, TLS, the signed handshake; crypto
//! made here with rcgen). A default requester fetches BLOCKS blocks of
//! BLOCK_BYTES from a default responder over loopback; the run prints each
//! time and the gRPC / TCP ratio of the medians.
//!
//! ```text
//! cargo run --release --features fabric-grpc --example grpc_vs_tcp [-- BLOCKS [BLOCK_BYTES [ROUNDS]]]
//! ```
//!
//! Defaults: 20 000 blocks of 4 KiB, 3 rounds.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

struct Chain(watch::Sender<u64>);

impl<P> Ledger<P> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<P>) -> Verdict {
        let height = *self.0.borrow();
        if payload.seq_num != height || wire::block_number(&payload.data) != Ok(height) {
            return Verdict::Rejected;
        }
        self.0.send_replace(height + 1);
        Verdict::Committed
    }
}

async fn tcp(store: &Store) -> Result<f64> {
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
    let (tx, mut caught_up) = watch::channel(1);
    let start = Tokio::now();
    let requester = AntiEntropy::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let fetched_by = TcpTransport::default();
    let (requester, driver) = rt::driver(
        requester,
        RequesterHost::new(fetched_by.clone(), Chain(tx)),
        1024,
    );
    tokio::spawn(driver);
    fetched_by.dial(address, address, requester.downgrade());
    requester
        .send(Event::Membership(vec![PeerState::new(address, height)]))
        .await?;
    tokio::time::timeout(LIMIT, caught_up.wait_for(|&h| h == height)).await??;
    let secs = (Tokio::now() - start).as_secs_f64();
    requester.shutdown().await?;
    responder.shutdown().await?;
    Ok(secs)
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

async fn grpc(store: &Store) -> Result<f64> {
    let height = store.0.len() as u64;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
    let ca_pem = ca.pem();
    let transport = |(signer, tls, verifier): (P256Signer, TlsIdentity, MspVerifier)| {
        GrpcTransport::new(
            GrpcConfig::new(CHANNEL),
            tls,
            Arc::new(signer),
            Arc::new(verifier),
        )
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
    let (tx, mut caught_up) = watch::channel(1);
    let start = Tokio::now();
    let requester = AntiEntropy::<PkiId>::new(Config::default(), CHANNEL.into(), 1, 7, start)?;
    let (requester, driver) = rt::driver(
        requester,
        RequesterHost::new(fetched_by.clone(), Chain(tx)),
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
    tokio::time::timeout(LIMIT, caught_up.wait_for(|&h| h == height)).await??;
    let secs = (Tokio::now() - start).as_secs_f64();
    requester.shutdown().await?;
    responder.shutdown().await?;
    Ok(secs)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let blocks: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let block_bytes: usize = args.next().map_or(Ok(4096), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
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
    let (mut over_tcp, mut over_grpc) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let t = tcp(&store).await?;
        let g = grpc(&store).await?;
        println!("round {round}: tcp {t:.3} s, grpc {g:.3} s ({:.2}x)", g / t);
        over_tcp.push(t);
        over_grpc.push(g);
    }
    let (t, g) = (median(over_tcp), median(over_grpc));
    let rate = |secs: f64| blocks as f64 / secs;
    println!(
        "{blocks} blocks of {block_bytes} bytes, medians: tcp {t:.3} s ({:.0} blocks/s), grpc {g:.3} s ({:.0} blocks/s): grpc/tcp = {:.2}",
        rate(t),
        rate(g),
        g / t
    );
    Ok(())
}

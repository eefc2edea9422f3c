//! The gRPC transport (feature `fabric-grpc`) between two of ours over
//! loopback, with crypto made here (an own CA, P-256 keys): the handshake
//! and each refusal, both directions; catch-up with membership learnt from
//! signed StateInfo; the message size limit; reconnection. Fabric's own
//! comm layer is the other side in `interop/fabric` (run by `.ci/run`).
#![cfg(feature = "fabric-grpc")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antientropy::adapters::tokio::{driver, DriverHandle};
use antientropy::adapters::{BlockStore, Ledger, RequesterHost, ResponderHost, Verdict};
use antientropy::fabric::handshake::{cert_hash, conn_establish, verify_conn_establish};
use antientropy::fabric::{
    CryptoError, Direction, GrpcConfig, GrpcConfigError, GrpcTransport, HandshakeError,
    MspVerifier, P256Signer, PkiId, ServerName, Signer, TlsIdentity, Verifier,
};
use antientropy::wire::gossip::{Envelope, Payload};
use antientropy::wire::{self, common::Block, common::BlockHeader};
use antientropy::{AntiEntropy, Config, Origin, SeqRange, StateResponder, Ticket};
use bytes::Bytes;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tokio::net::TcpListener;

const MSP: &str = "Org1MSP";
const CHANNEL: &str = "testchannel";

/// A CA for MSP identities and TLS alike (Fabric keeps two; one is enough).
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate (for 127.0.0.1) and its PKCS#8 key, as PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One node's files: MSP identity and TLS certificate.
struct Crypto {
    cert: String,
    key: String,
    tls_cert: String,
    tls_key: String,
}

impl Crypto {
    fn new(ca: &Ca, name: &str) -> Self {
        let (cert, key) = ca.issue(name);
        let (tls_cert, tls_key) = ca.issue(&format!("tls-{name}"));
        Self {
            cert,
            key,
            tls_cert,
            tls_key,
        }
    }

    fn signer(&self) -> P256Signer {
        P256Signer::from_pem(MSP, self.cert.as_bytes(), &self.key).unwrap()
    }

    fn tls(&self, ca: &Ca) -> TlsIdentity {
        TlsIdentity::from_pem(
            self.tls_cert.as_bytes(),
            self.tls_key.as_bytes(),
            None,
            ca.pem().as_bytes(),
        )
        .unwrap()
    }
}

fn verifier(ca: &Ca) -> MspVerifier {
    MspVerifier::new()
        .with_msp(MSP, ca.pem().as_bytes())
        .unwrap()
}

fn config() -> GrpcConfig {
    let mut config = GrpcConfig::new(CHANNEL);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(400);
    config
}

fn transport(ca: &Ca, crypto: &Crypto, config: GrpcConfig) -> GrpcTransport {
    GrpcTransport::new(
        config,
        crypto.tls(ca),
        Arc::new(crypto.signer()),
        Arc::new(verifier(ca)),
    )
    .unwrap()
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").unwrap()
}

/// Bounds every wait, so that a broken transport fails instead of hanging.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Block `seq` with `size` bytes of data.
fn block(seq: u64, size: usize) -> Bytes {
    Block {
        header: Some(BlockHeader {
            number: seq,
            ..Default::default()
        }),
        data: Some(wire::common::BlockData {
            data: vec![Bytes::from(vec![seq as u8; size])],
        }),
        metadata: None,
    }
    .encode_to_vec()
    .into()
}

/// Serves blocks `1..len` of `size` bytes each.
struct Store {
    blocks: Vec<Bytes>,
}

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
                    let data = self.blocks.get(seq as usize)?.clone();
                    Some(Payload {
                        seq_num: seq,
                        data,
                        private_data: Vec::new(),
                    })
                })
                .collect(),
        )
    }
}

/// Commits blocks in order, checking their numbers.
struct Chain {
    height: Arc<AtomicU64>,
}

impl Ledger<PkiId> for Chain {
    fn add_payload(&mut self, payload: Payload, _: Origin<PkiId>) -> Verdict {
        let next = self.height.load(Ordering::SeqCst);
        if payload.seq_num != next || wire::block_number(&payload.data).ok() != Some(next) {
            return Verdict::Rejected;
        }
        self.height.store(next + 1, Ordering::SeqCst);
        Verdict::Committed
    }
}

/// A responder node serving `blocks` (height `blocks.len()`) on loopback.
async fn responder_node(
    transport: &GrpcTransport,
    blocks: Vec<Bytes>,
    machine: Config,
) -> (SocketAddr, DriverHandle<StateResponder<PkiId>>) {
    let height = blocks.len() as u64;
    let responder = StateResponder::new(machine, CHANNEL.into(), height).unwrap();
    let (handle, future) = driver(
        responder,
        ResponderHost::new(transport.clone(), Store { blocks }),
        1024,
    );
    tokio::spawn(future);
    transport.attach_responder(handle.downgrade());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    transport.serve(listener);
    (address, handle)
}

/// A requester node at height 1; its membership comes from the transport.
fn requester_node(
    transport: &GrpcTransport,
    machine: Config,
) -> (Arc<AtomicU64>, DriverHandle<AntiEntropy<PkiId>>) {
    let (height, handle, future) = requester_parts(transport, machine, 1024);
    tokio::spawn(future);
    (height, handle)
}

/// A requester at height 1 attached to `transport`, with an inbox of
/// `capacity`; its driver runs once the caller spawns the future.
fn requester_parts(
    transport: &GrpcTransport,
    machine: Config,
    capacity: usize,
) -> (
    Arc<AtomicU64>,
    DriverHandle<AntiEntropy<PkiId>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let height = Arc::new(AtomicU64::new(1));
    let requester = AntiEntropy::new(
        machine,
        CHANNEL.into(),
        1,
        7,
        tokio::time::Instant::now().into_std(),
    )
    .unwrap();
    let chain = Chain {
        height: height.clone(),
    };
    let (handle, future) = driver(
        requester,
        RequesterHost::new(transport.clone(), chain),
        capacity,
    );
    transport.attach_requester(handle.downgrade());
    (height, handle, async move {
        let _ = future.await;
    })
}

fn blocks(count: u64, size: usize) -> Vec<Bytes> {
    (0..count).map(|seq| block(seq, size)).collect()
}

/// `serving` serves `height` blocks of 2 KiB and publishes membership;
/// `fetching` dials it and catches up from height 1, learning the height
/// from `serving`'s StateInfo. Returns once it has all of them.
async fn catch_up(
    serving: &GrpcTransport,
    fetching: &GrpcTransport,
    height: u64,
) -> (
    DriverHandle<StateResponder<PkiId>>,
    DriverHandle<AntiEntropy<PkiId>>,
) {
    let (address, responder) =
        responder_node(serving, blocks(height, 2048), Config::default()).await;
    serving.publish_membership(address.to_string(), height, Duration::from_millis(200));
    fetching.publish_membership(String::new(), 1, Duration::from_millis(200));
    let (reached, requester) = requester_node(fetching, Config::default());
    fetching.dial(address, localhost(), Some(serving.pki_id()));
    until("catch-up", || reached.load(Ordering::SeqCst) == height).await;
    (responder, requester)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_catches_up_over_grpc_with_membership_from_signed_state_info() {
    const HEIGHT: u64 = 500;
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    let serving = transport(&ca, &a, config());
    let fetching = transport(&ca, &b, config());
    let (_responder, requester) = catch_up(&serving, &fetching, HEIGHT).await;
    // The height came from the server's signed StateInfo, in answer to our
    // pull request: nothing else told the requester.
    assert_eq!(fetching.membership()[0].ledger_height, Some(HEIGHT));
    assert_eq!(fetching.connected(), vec![serving.pki_id()]);
    assert_eq!(serving.connected(), vec![fetching.pki_id()]);
    let stats = requester.stats().unwrap();
    assert_eq!(stats.rejected, 0);
    assert!(fetching.stats().state_infos >= 1);
    assert_eq!(fetching.stats().handshake_refusals, 0);
    assert_eq!(serving.stats().unauthorized, 0);
}

fn plaintext(ca: &Ca, crypto: &Crypto) -> GrpcTransport {
    GrpcTransport::plaintext(config(), Arc::new(crypto.signer()), Arc::new(verifier(ca))).unwrap()
}

// Fabric's `peer.tls.enabled: false`: the same signed handshake, no
// certificate bound (an empty hash), nothing encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_catches_up_over_plaintext_grpc() {
    const HEIGHT: u64 = 300;
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    let serving = plaintext(&ca, &a);
    let fetching = plaintext(&ca, &b);
    let _nodes = catch_up(&serving, &fetching, HEIGHT).await;
    assert_eq!(fetching.stats().handshake_refusals, 0);
    assert_eq!(serving.stats().handshake_refusals, 0);
    assert_eq!(serving.connected(), vec![fetching.pki_id()]);
}

// Both sides must agree on TLS, as with Fabric: a TLS client and a
// plaintext server (or the reverse) never get a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_do_not_connect() {
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    for (serving, fetching) in [
        (plaintext(&ca, &a), transport(&ca, &b, config())),
        (transport(&ca, &a, config()), plaintext(&ca, &b)),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        serving.serve(listener);
        fetching.dial(address, localhost(), Some(serving.pki_id()));
        until("failed dials", || fetching.stats().dial_failures >= 2).await;
        assert!(fetching.connected().is_empty() && serving.connected().is_empty());
    }
}

#[test]
fn the_handshake_checks_in_fabrics_order() {
    let ca = Ca::new("ca");
    let other_ca = Ca::new("other");
    let node = Crypto::new(&ca, "node");
    let signer = node.signer();
    let verifier = verifier(&ca);
    let tls_der = b"the TLS leaf certificate";
    let hash = cert_hash(tls_der);

    let good = conn_establish(&signer, hash.clone(), false).unwrap();
    let info = verify_conn_establish(&good, Some(tls_der), &verifier).unwrap();
    assert_eq!(info.pki_id, signer.pki_id());
    assert_eq!(info.auth_payload, good.payload);
    assert!(!info.probe);
    // Fabric's wire bytes: tag EMPTY (field 3 = 1), then conn (field 14).
    assert_eq!(&good.payload[..3], &[0x18, 0x01, 0x72]);

    let refused = |envelope: &Envelope, cert: Option<&[u8]>| {
        verify_conn_establish(envelope, cert, &verifier).unwrap_err()
    };
    // Hash of another certificate than the one on the connection.
    assert_eq!(
        refused(&good, Some(b"another")),
        HandshakeError::TlsHashMismatch
    );
    // A signature over other bytes, and none at all.
    let mut forged = good.clone();
    forged.signature = signer.sign(b"something else").unwrap();
    assert!(matches!(
        refused(&forged, Some(tls_der)),
        HandshakeError::BadSignature(_)
    ));
    forged.signature = Bytes::new();
    assert!(matches!(
        refused(&forged, Some(tls_der)),
        HandshakeError::BadSignature(_)
    ));
    // Not a ConnEstablish; not a GossipMessage.
    let alive = wire::wrap_envelope(&wire::state_request(1, CHANNEL.into(), 1, 2));
    assert_eq!(refused(&alive, Some(tls_der)), HandshakeError::WrongType);
    let garbage = Envelope {
        payload: Bytes::from_static(b"\xff\xff\xff"),
        ..Default::default()
    };
    assert_eq!(refused(&garbage, Some(tls_der)), HandshakeError::Malformed);
    // Someone else's PKI-ID with our identity: refused before the signature.
    let liar = Liar {
        inner: node.signer(),
        pki_id: PkiId(Bytes::from_static(b"someone else")),
    };
    let lie = conn_establish(&liar, hash.clone(), false).unwrap();
    assert_eq!(refused(&lie, Some(tls_der)), HandshakeError::PkiIdMismatch);
    // An identity no CA of ours issued.
    let stranger = Crypto::new(&other_ca, "stranger").signer();
    let foreign = conn_establish(&stranger, hash, false).unwrap();
    assert!(matches!(
        refused(&foreign, Some(tls_der)),
        HandshakeError::InvalidIdentity(_)
    ));
}

#[test]
fn signatures_are_low_s_der_and_high_s_is_refused() {
    let ca = Ca::new("ca");
    let node = Crypto::new(&ca, "node");
    let signer = node.signer();
    let verifier = verifier(&ca);
    let identity = signer.identity();
    for i in 0..32u8 {
        let message = [i; 40];
        let der = signer.sign(&message).unwrap();
        verifier.verify(&identity, &der, &message).unwrap();
        // The same signature with S negated (n − s) verifies mathematically;
        // Fabric refuses it, and so do we.
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        let error = verifier
            .verify(&identity, high.to_der().as_bytes(), &message)
            .unwrap_err();
        assert_eq!(error, CryptoError::BadSignature("S is high".into()));
    }
    // r‖s instead of DER.
    let raw = p256::ecdsa::Signature::from_der(&signer.sign(b"m").unwrap())
        .unwrap()
        .to_bytes();
    assert!(verifier.verify(&identity, &raw, b"m").is_err());
}

#[test]
fn the_pki_id_is_the_hash_of_msp_id_and_pem() {
    let ca = Ca::new("ca");
    let node = Crypto::new(&ca, "node");
    let signer = node.signer();
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut hash, MSP.as_bytes());
    sha2::Digest::update(&mut hash, node.cert.as_bytes());
    assert_eq!(
        signer.pki_id().0.as_ref(),
        sha2::Digest::finalize(hash).as_slice()
    );
    assert_eq!(
        verifier(&ca).pki_id_of(&signer.identity()).unwrap(),
        signer.pki_id()
    );
    // Fabric's MSP refuses trailing bytes after the PEM block.
    let padded = format!("{}trailing", node.cert);
    assert!(P256Signer::from_pem(MSP, padded.as_bytes(), &node.key).is_err());
}

#[test]
fn keepalive_more_often_than_fabric_allows_is_refused() {
    let mut config = GrpcConfig::new(CHANNEL);
    config.keepalive_interval = Duration::from_secs(30);
    assert_eq!(
        config.validate(),
        Err(GrpcConfigError::KeepaliveTooFrequent(Duration::from_secs(
            30
        )))
    );
    assert_eq!(GrpcConfig::new(CHANNEL).validate(), Ok(()));
}

/// Claims another PKI-ID than its identity's.
struct Liar {
    inner: P256Signer,
    pki_id: PkiId,
}

impl Signer for Liar {
    fn identity(&self) -> Bytes {
        self.inner.identity()
    }
    fn pki_id(&self) -> PkiId {
        self.pki_id.clone()
    }
    fn sign(&self, message: &[u8]) -> Result<Bytes, CryptoError> {
        self.inner.sign(message)
    }
}

/// Signs with another key than its identity's.
struct Forger {
    inner: P256Signer,
    other: P256Signer,
}

impl Signer for Forger {
    fn identity(&self) -> Bytes {
        self.inner.identity()
    }
    fn pki_id(&self) -> PkiId {
        self.inner.pki_id()
    }
    fn sign(&self, message: &[u8]) -> Result<Bytes, CryptoError> {
        self.other.sign(message)
    }
}

/// Takes longer to sign than the remote waits.
struct Slow(P256Signer);

impl Signer for Slow {
    fn identity(&self) -> Bytes {
        self.0.identity()
    }
    fn pki_id(&self) -> PkiId {
        self.0.pki_id()
    }
    fn sign(&self, message: &[u8]) -> Result<Bytes, CryptoError> {
        std::thread::sleep(Duration::from_millis(2500));
        self.0.sign(message)
    }
}

/// A server and a dialler whose handshake the server must refuse with
/// `expected` (and the dialler sees refused); nothing reaches the server's
/// responder, and no stream is registered either side.
async fn refused_both_ways(
    client: GrpcTransport,
    server: GrpcTransport,
    expected_pki: Option<PkiId>,
    server_error: Option<fn(&HandshakeError) -> bool>,
    client_error: fn(&HandshakeError) -> bool,
) {
    let (address, responder) = responder_node(&server, blocks(3, 10), Config::default()).await;
    client.dial(address, localhost(), expected_pki);
    until("the dialler's refusal", || !client.refusals().is_empty()).await;
    if let Some(server_error) = server_error {
        until("the server's refusal", || !server.refusals().is_empty()).await;
        let refusal = &server.refusals()[0];
        assert_eq!(refusal.direction, Direction::Accepted);
        assert!(server_error(&refusal.error), "server: {:?}", refusal.error);
    }
    let refusal = &client.refusals()[0];
    assert_eq!(refusal.direction, Direction::Dialled);
    assert!(client_error(&refusal.error), "client: {:?}", refusal.error);
    assert!(client.connected().is_empty());
    // When only the dialler refuses (the server accepted its handshake), the
    // server learns of it when the dialler closes the stream: wait for it.
    until("the server drops the stream", || {
        server.connected().is_empty()
    })
    .await;
    assert_eq!(server.stats().state_in, 0);
    assert_eq!(responder.stats().unwrap().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_tls_certificate_is_refused() {
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    let server = transport(&ca, &a, config());
    let client = GrpcTransport::new(
        config(),
        b.tls(&ca).without_client_certificate(),
        Arc::new(b.signer()),
        Arc::new(verifier(&ca)),
    )
    .unwrap();
    refused_both_ways(
        client,
        server,
        None,
        Some(|e| *e == HandshakeError::NoClientCertificate),
        |e| matches!(e, HandshakeError::Closed(why) if why.contains("no TLS certificate")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tls_hash_is_refused_both_ways() {
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    // The client lies about its certificate: the server refuses it.
    let server = transport(&ca, &a, config());
    let client = GrpcTransport::new(
        config(),
        b.tls(&ca).with_wrong_cert_hash(),
        Arc::new(b.signer()),
        Arc::new(verifier(&ca)),
    )
    .unwrap();
    refused_both_ways(
        client,
        server,
        None,
        Some(|e| *e == HandshakeError::TlsHashMismatch),
        |e| matches!(e, HandshakeError::Closed(why) if why.contains("hash mismatch")),
    )
    .await;
    // The server lies: the client refuses it (and so does the server, then,
    // the client's stream ending before its handshake is read, or not).
    let server = GrpcTransport::new(
        config(),
        a.tls(&ca).with_wrong_cert_hash(),
        Arc::new(a.signer()),
        Arc::new(verifier(&ca)),
    )
    .unwrap();
    let client = transport(&ca, &b, config());
    refused_both_ways(client, server, None, None, |e| {
        *e == HandshakeError::TlsHashMismatch
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_both_ways() {
    let ca = Ca::new("ca");
    let (a, b, c) = (
        Crypto::new(&ca, "server"),
        Crypto::new(&ca, "client"),
        Crypto::new(&ca, "other"),
    );
    let forger = |node: &Crypto| -> Arc<dyn Signer> {
        Arc::new(Forger {
            inner: node.signer(),
            other: c.signer(),
        })
    };
    let server = transport(&ca, &a, config());
    let client =
        GrpcTransport::new(config(), b.tls(&ca), forger(&b), Arc::new(verifier(&ca))).unwrap();
    refused_both_ways(
        client,
        server,
        None,
        Some(|e| matches!(e, HandshakeError::BadSignature(_))),
        |e| matches!(e, HandshakeError::Closed(why) if why.contains("bad signature")),
    )
    .await;
    let server =
        GrpcTransport::new(config(), a.tls(&ca), forger(&a), Arc::new(verifier(&ca))).unwrap();
    let client = transport(&ca, &b, config());
    refused_both_ways(client, server, None, None, |e| {
        matches!(e, HandshakeError::BadSignature(_))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pki_id_and_a_timeout_are_refused() {
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    // Dialled for someone else.
    let server = transport(&ca, &a, config());
    let client = transport(&ca, &b, config());
    let someone = PkiId(Bytes::from_static(b"someone else"));
    refused_both_ways(client, server.clone(), Some(someone.clone()), None, |e| {
        matches!(e, HandshakeError::WrongPeer { expected, .. } if *expected == PkiId(Bytes::from_static(b"someone else")))
    })
    .await;
    // A PKI-ID that is not the identity's.
    let liar: Arc<dyn Signer> = Arc::new(Liar {
        inner: b.signer(),
        pki_id: someone,
    });
    let server = transport(&ca, &a, config());
    let client = GrpcTransport::new(config(), b.tls(&ca), liar, Arc::new(verifier(&ca))).unwrap();
    refused_both_ways(
        client,
        server,
        None,
        Some(|e| *e == HandshakeError::PkiIdMismatch),
        |e| matches!(e, HandshakeError::Closed(_)),
    )
    .await;
    // A server whose ConnEstablish comes after the dialler's 2 s.
    let server = GrpcTransport::new(
        config(),
        a.tls(&ca),
        Arc::new(Slow(a.signer())),
        Arc::new(verifier(&ca)),
    )
    .unwrap();
    let client = transport(&ca, &b, config());
    refused_both_ways(client, server, None, None, |e| {
        *e == HandshakeError::Timeout
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_ends_the_stream_cleanly_and_one_under_it_passes() {
    const LIMIT: usize = 1 << 20;
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    let mut small = config();
    small.max_message_size = LIMIT;
    // Block 1 fits (with its envelope) under the requester's limit; block 2 does not.
    let chain = vec![block(0, 10), block(1, LIMIT - 4096), block(2, LIMIT + 4096)];
    let serving = transport(&ca, &a, config());
    let fetching = transport(&ca, &b, small);
    let mut machine = Config::default();
    machine.max_response_bytes = 1;
    let (address, _responder) = responder_node(&serving, chain, machine.clone()).await;
    let (height, requester) = requester_node(&fetching, machine);
    fetching.dial(address, localhost(), None);
    until("a stream", || !fetching.connected().is_empty()).await;
    requester
        .send(antientropy::Event::Membership(vec![
            antientropy::PeerState::new(serving.pki_id(), 3),
        ]))
        .await
        .unwrap();
    until("block 1 committed", || height.load(Ordering::SeqCst) == 2).await;
    until("block 2 refused", || fetching.stats().oversized >= 1).await;
    // The stream ended, nothing was delivered past the limit, and the
    // transport redials.
    assert_eq!(height.load(Ordering::SeqCst), 2);
    until("redialled", || fetching.stats().connected >= 2).await;
    assert_eq!(requester.stats().unwrap().rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_peer_is_redialled_and_the_catch_up_completes() {
    const HEIGHT: u64 = 300;
    let ca = Ca::new("ca");
    let (a, b) = (Crypto::new(&ca, "server"), Crypto::new(&ca, "client"));
    let fetching = transport(&ca, &b, config());
    let (height, requester) = requester_node(&fetching, Config::default());
    // First server: only the first 100 blocks, then it goes away.
    let first = transport(&ca, &a, config());
    let (address, _r1) = responder_node(&first, blocks(100, 512), Config::default()).await;
    fetching.dial(address, localhost(), Some(first.pki_id()));
    until("connected", || fetching.connected() == vec![first.pki_id()]).await;
    requester
        .send(antientropy::Event::Membership(vec![
            antientropy::PeerState::new(first.pki_id(), 100),
        ]))
        .await
        .unwrap();
    until("first part", || height.load(Ordering::SeqCst) == 100).await;
    drop(first);
    drop(_r1);
    until("disconnected", || fetching.connected().is_empty()).await;
    // The same identity comes back on the same port with the whole chain.
    let second = transport(&ca, &a, config());
    let listener = within("rebind", async {
        loop {
            match TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let responder = StateResponder::new(Config::default(), CHANNEL.into(), HEIGHT).unwrap();
    let (r2, future) = driver(
        responder,
        ResponderHost::new(
            second.clone(),
            Store {
                blocks: blocks(HEIGHT, 512),
            },
        ),
        1024,
    );
    tokio::spawn(future);
    second.attach_responder(r2.downgrade());
    second.serve(listener);
    until("redialled", || {
        fetching.connected() == vec![second.pki_id()]
    })
    .await;
    requester
        .send(antientropy::Event::Membership(vec![
            antientropy::PeerState::new(second.pki_id(), HEIGHT),
        ]))
        .await
        .unwrap();
    until("catch-up", || height.load(Ordering::SeqCst) == HEIGHT).await;
    assert!(fetching.stats().connected >= 2);
    assert!(fetching.stats().disconnected >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_message_waits_for_every_foreground_one() {
    use antientropy::adapters::Transport;
    let ca = Ca::new("ca");
    let (s, c1, c2) = (
        Crypto::new(&ca, "server"),
        Crypto::new(&ca, "one"),
        Crypto::new(&ca, "two"),
    );
    let mut serving = transport(&ca, &s, config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serving.serve(listener);
    let (one, two) = (transport(&ca, &c1, config()), transport(&ca, &c2, config()));
    // One message in the stalled peer's inbox: the transport then stops
    // reading its stream, and what is sent to it stays queued here.
    let (_, _stalled, run_stalled) = requester_parts(&one, Config::default(), 1);
    let (_, _ready, run_ready) = requester_parts(&two, Config::default(), 1);
    tokio::spawn(run_ready);
    one.dial(address, localhost(), None);
    two.dial(address, localhost(), None);
    until("both streams", || serving.connected().len() == 2).await;
    // 128 MiB for the peer that does not read: more than its inbox, the
    // streams' decoders and HTTP/2's 16 MiB windows hold.
    let big = big_response();
    for _ in 0..16 {
        serving.send(&one.pki_id(), big.clone()).unwrap();
    }
    let received = || two.stats().state_in;
    let small = wire::state_response(2, CHANNEL.into(), Vec::new());
    serving.send_background(&two.pki_id(), small).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(received(), 0, "sent while the stalled peer's were pending");
    // A foreground message to the same peer does not wait behind it.
    let urgent = wire::state_response(3, CHANNEL.into(), Vec::new());
    serving.send(&two.pki_id(), urgent).unwrap();
    until("the urgent one", || received() == 1).await;
    // The stalled peer reads everything: the gate opens.
    tokio::spawn(run_stalled);
    until("the stalled peer's", || one.stats().state_in == 16).await;
    until("the background one", || received() == 2).await;
}

// A peer that stops reading holds the gate only until its stream has
// taken nothing for 2 s, and its stream is closed after the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_holds_neither_the_gate_nor_its_stream() {
    use antientropy::adapters::Transport;
    let ca = Ca::new("ca");
    let (s, c1, c2) = (
        Crypto::new(&ca, "server"),
        Crypto::new(&ca, "one"),
        Crypto::new(&ca, "two"),
    );
    let mut serving_config = config();
    serving_config.write_timeout = Duration::from_secs(6);
    let mut serving = transport(&ca, &s, serving_config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serving.serve(listener);
    let (one, two) = (transport(&ca, &c1, config()), transport(&ca, &c2, config()));
    // Its driver never runs: after one message the stream is not read.
    let (_, _wedged, _never_run) = requester_parts(&one, Config::default(), 1);
    let (_, _ready, run_ready) = requester_parts(&two, Config::default(), 1);
    tokio::spawn(run_ready);
    one.dial(address, localhost(), None);
    two.dial(address, localhost(), None);
    until("both streams", || serving.connected().len() == 2).await;
    let big = big_response();
    for _ in 0..16 {
        serving.send(&one.pki_id(), big.clone()).unwrap();
    }
    let small = wire::state_response(2, CHANNEL.into(), Vec::new());
    serving.send_background(&two.pki_id(), small).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        two.stats().state_in,
        0,
        "sent while the stream could progress"
    );
    until("the background one, the wedged stream stalled", || {
        two.stats().state_in == 1
    })
    .await;
    assert_eq!(
        serving.stats().write_timeouts,
        0,
        "the background one waited for the write timeout"
    );
    until("the wedged stream closed", || {
        serving.stats().write_timeouts == 1
    })
    .await;
    assert_eq!(serving.stats().disconnected, 1, "{:?}", serving.stats());
}

/// One 8 MiB block in a response: a few of them fill any socket buffer.
fn big_response() -> antientropy::wire::gossip::GossipMessage {
    wire::state_response(
        1,
        CHANNEL.into(),
        vec![Payload {
            seq_num: 1,
            data: Bytes::from(vec![7; 8 << 20]),
            private_data: Vec::new(),
        }],
    )
}

//! The gRPC cases (feature `fabric-grpc`): the crate's `GrpcTransport`
//! against Fabric's real gossip comm layer, i.e. full Fabric nodes
//! (`gossip.New` + the state provider, `aeconform grpc node`) and a raw
//! gRPC client misbehaving as Fabric's `TestHandshake` does
//! (`aeconform grpc attack`), with crypto made for the run
//! (`aeconform grpc crypto`: an own CA, P-256 keys).

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antientropy::adapters::tokio::driver;
use antientropy::adapters::ResponderHost;
use antientropy::fabric::{
    Direction, GrpcConfig, GrpcTransport, HandshakeError, MspVerifier, P256Signer, PkiId,
    ServerName, Signer, TlsIdentity,
};
use antientropy::{Config, StateResponder};
use bytes::Bytes;

use crate::fabric_peer::{self, Args, Mode};
use crate::net::{read_frame, Dec};
use crate::{now, CHANNEL};

const EV_READY: u8 = 0x81;
const EV_COMMITTED: u8 = 0x84;
const EV_VIOLATION: u8 = 0x85;
const EV_LISTENING: u8 = 0x8b;

/// What every case needs: the harness, the crypto, a scratch directory.
pub struct Setup {
    pub bin: PathBuf,
    pub logs: PathBuf,
    pub crypto: PathBuf,
    pub work: PathBuf,
    /// Blocks in the chain the nodes share.
    pub blocks: u64,
    /// Pad each block to about this many bytes (0: the chain as it is).
    pub block_size: usize,
}

pub struct GrpcCase {
    pub name: &'static str,
    pub run: fn(&Setup) -> Result<String, String>,
}

pub const CASES: &[GrpcCase] = &[
    GrpcCase {
        name: "grpc/our-requester-from-fabric",
        run: ours_from_fabric,
    },
    GrpcCase {
        name: "grpc/fabric-requester-from-ours",
        run: fabric_from_ours,
    },
    GrpcCase {
        name: "grpc/refusals",
        run: refusals,
    },
    GrpcCase {
        name: "grpc/size-limit",
        run: size_limit,
    },
    GrpcCase {
        name: "grpc/catch-up-speed",
        run: speed,
    },
    GrpcCase {
        name: "grpc/plaintext",
        run: plaintext,
    },
];

/// Makes the run's crypto: rust0, rust1 (ours), fabric0..2 (Fabric's).
pub fn setup(bin: &Path, logs: &Path, blocks: u64, block_size: usize) -> Result<Setup, String> {
    let work = std::env::temp_dir().join(format!("antientropy-grpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let crypto = work.join("crypto");
    std::fs::create_dir_all(&crypto).map_err(|e| e.to_string())?;
    let status = Command::new(bin)
        .args(["grpc", "crypto", "-dir"])
        .arg(&crypto)
        .args(["-nodes", "rust0,rust1,fabric0,fabric1,fabric2"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("aeconform grpc crypto: {status}"));
    }
    Ok(Setup {
        bin: bin.to_owned(),
        logs: logs.to_owned(),
        crypto,
        work,
        blocks,
        block_size,
    })
}

impl Setup {
    /// A block directory holding the chain's first `upto` blocks.
    fn blocks_dir(&self, name: &str, upto: u64) -> Result<PathBuf, String> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(&self.bin)
            .args(["grpc", "blocks", "-out"])
            .arg(&dir)
            .args(["-channel", CHANNEL, "-blocks", &self.blocks.to_string()])
            .args(["-upto", &upto.to_string()])
            .args(["-block-size", &self.block_size.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("aeconform grpc blocks: {status}"));
        }
        Ok(dir)
    }

    /// The example's arguments for our node `id`.
    fn args(&self, id: &str, blocks: PathBuf, mode: Mode) -> Args {
        let file = |name: &str| self.crypto.join(id).join(name);
        Args {
            msp_id: "Org1MSP".into(),
            cert: file("cert.pem"),
            key: file("key.pem"),
            ca: self.crypto.join("ca.pem"),
            tls_cert: Some(file("tls.crt")),
            tls_key: Some(file("tls.key")),
            tls_ca: Some(self.crypto.join("ca.pem")),
            plaintext: false,
            channel: CHANNEL.into(),
            blocks,
            mode,
        }
    }

    fn transport(
        &self,
        id: &str,
        tls: impl FnOnce(TlsIdentity) -> TlsIdentity,
    ) -> Result<GrpcTransport, String> {
        let args = self.args(
            id,
            self.work.clone(),
            Mode::Serve {
                listen: "127.0.0.1:0".parse().unwrap(),
                peer: vec![],
                server_name: None,
                seconds: None,
            },
        );
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let signer = P256Signer::from_pem(
            "Org1MSP",
            &read(&args.cert)?,
            &String::from_utf8_lossy(&read(&args.key)?),
        )
        .map_err(|e| e.to_string())?;
        self.transport_with(id, tls, Arc::new(signer))
    }

    fn transport_with(
        &self,
        id: &str,
        tls: impl FnOnce(TlsIdentity) -> TlsIdentity,
        signer: Arc<dyn Signer>,
    ) -> Result<GrpcTransport, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca = read(&self.crypto.join("ca.pem"))?;
        let dir = self.crypto.join(id);
        let identity = TlsIdentity::from_pem(
            &read(&dir.join("tls.crt"))?,
            &read(&dir.join("tls.key"))?,
            None,
            &ca,
        )
        .map_err(|e| e.to_string())?;
        let verifier = MspVerifier::new()
            .with_msp("Org1MSP", &ca)
            .map_err(|e| e.to_string())?;
        GrpcTransport::new(
            GrpcConfig::new(CHANNEL),
            tls(identity),
            signer,
            Arc::new(verifier),
        )
        .map_err(|e| e.to_string())
    }
}

/// What a Fabric node reports.
enum NodeEv {
    Committed(u64),
    Violation(String),
    Exited,
}

/// A full Fabric node: `aeconform grpc node`.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<NodeEv>,
    addr: SocketAddr,
    pki_id: PkiId,
    height: u64,
    /// When it committed its first block from someone, and its last.
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Node {
    fn spawn(
        setup: &Setup,
        case: &str,
        id: &str,
        height: u64,
        extra: &[&str],
    ) -> Result<Node, String> {
        let log = setup
            .logs
            .join(format!("{}.{id}.log", case.replace('/', "_")));
        let log = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = Command::new(&setup.bin)
            .args(["grpc", "node", "-dir"])
            .arg(&setup.crypto)
            .args(["-id", id, "-channel", CHANNEL])
            .args([
                "-blocks",
                &setup.blocks.to_string(),
                "-height",
                &height.to_string(),
            ])
            .args([
                "-block-size",
                &setup.block_size.to_string(),
                "-logspec",
                "info",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", setup.bin.display()))?;
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            let frame = match read_frame(&mut out) {
                Ok(Some(frame)) => frame,
                _ => {
                    let _ = tx.send(NodeEv::Exited);
                    return;
                }
            };
            let mut d = Dec(&frame.1);
            let ev = match frame.0 {
                EV_LISTENING => {
                    let addr = d.string().unwrap_or_default();
                    let pki = d.bytes().unwrap_or_default();
                    let _ = ready_tx.send((addr, pki));
                    continue;
                }
                EV_COMMITTED => NodeEv::Committed(d.u64().unwrap_or(u64::MAX)),
                EV_VIOLATION => NodeEv::Violation(d.string().unwrap_or_default()),
                EV_READY => continue,
                _ => continue,
            };
            if tx.send(ev).is_err() {
                return;
            }
        });
        let (addr, pki) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("{id} did not start"))?;
        Ok(Node {
            child,
            stdin,
            events: rx,
            addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
            pki_id: PkiId(pki),
            height,
            first: None,
            last: None,
        })
    }

    /// Waits until the node's ledger holds `height` blocks.
    fn wait_height(&mut self, height: u64, within: Duration) -> Result<(), String> {
        let deadline = now() + within;
        while self.height < height {
            let left = deadline.saturating_duration_since(now());
            match self.events.recv_timeout(left) {
                Ok(NodeEv::Committed(seq)) => {
                    let at = now();
                    self.first.get_or_insert(at);
                    self.last = Some(at);
                    self.height = seq + 1;
                }
                Ok(NodeEv::Violation(v)) => return Err(format!("Fabric's ledger: {v}")),
                Ok(NodeEv::Exited) => return Err("the Fabric node exited".into()),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the Fabric node is at height {} of {height}",
                        self.height
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => return Err("the Fabric node is gone".into()),
            }
        }
        Ok(())
    }

    fn first_to_last(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            // cmdStop: length 1, kind 0x06.
            let _ = stdin.write_all(&[0, 0, 0, 1, 0x06]);
        }
        let deadline = now() + Duration::from_secs(2);
        while now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").unwrap()
}

/// (1) Our requester catches up from a Fabric node (its comm layer, its
/// state provider), learning its height from its signed StateInfo.
fn ours_from_fabric(setup: &Setup) -> Result<String, String> {
    let fabric = Node::spawn(setup, "grpc_ours-from-fabric", "fabric0", setup.blocks, &[])?;
    let dir = setup.blocks_dir("ours-from-fabric", 1)?;
    let peers = [fabric.addr];
    let args = setup.args(
        "rust0",
        dir,
        Mode::Serve {
            listen: fabric.addr,
            peer: vec![],
            server_name: None,
            seconds: None,
        },
    );
    let fetched = runtime()
        .block_on(fabric_peer::fetch(
            &args,
            &peers,
            &None,
            None,
            Duration::from_secs(120),
        ))
        .map_err(|e| e.to_string())?;
    if fetched.height != setup.blocks {
        return Err(format!("reached {} of {}", fetched.height, setup.blocks));
    }
    Ok(format!(
        "blocks 1..{} from Fabric's state provider over gRPC+TLS, every block hash-chained: {:.2} s from the dial, {:.3} s first to last block",
        setup.blocks - 1,
        fetched.seconds,
        fetched.first_to_last
    ))
}

/// (2) A Fabric node catches up from our responder: we dial it, it lists
/// us (our Alive and StateInfo) and asks us.
fn fabric_from_ours(setup: &Setup) -> Result<String, String> {
    let mut fabric = Node::spawn(setup, "grpc_fabric-from-ours", "fabric1", 1, &["-state"])?;
    let dir = setup.blocks_dir("fabric-from-ours", setup.blocks)?;
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let args = setup.args(
        "rust0",
        dir,
        Mode::Serve {
            listen,
            peer: vec![],
            server_name: None,
            seconds: None,
        },
    );
    let seconds = serve_until_caught_up(setup, args, listen, &mut fabric)?;
    Ok(format!(
        "Fabric's state provider committed 1..{} from our responder: {seconds:.2} s from our dial, {:.3} s first to last block",
        setup.blocks - 1,
        fabric.first_to_last()
    ))
}

/// Serves `args`' blocks on `listen`, dialling `fabric`, until it holds the
/// whole chain; the seconds that took.
fn serve_until_caught_up(
    setup: &Setup,
    args: Args,
    listen: SocketAddr,
    fabric: &mut Node,
) -> Result<f64, String> {
    let peers = [fabric.addr];
    let rt = runtime();
    let server = rt.spawn(async move {
        fabric_peer::serve(&args, listen, &peers, &None, Some(600))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let started = now();
    let waited = fabric.wait_height(setup.blocks, Duration::from_secs(120));
    server.abort();
    waited?;
    Ok((now() - started).as_secs_f64())
}

/// Runs `aeconform grpc attack` and returns what it printed.
fn attack(setup: &Setup, kind: &str, target: SocketAddr, extra: &[&str]) -> Result<String, String> {
    let log = setup.logs.join(format!("grpc_attack.{kind}.log"));
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let output = Command::new(&setup.bin)
        .args(["grpc", "attack", "-dir"])
        .arg(&setup.crypto)
        .args([
            "-id", "fabric2", "-other", "fabric1", "-kind", kind, "-channel", CHANNEL,
        ])
        .args(["-target", &target.to_string()])
        .args(extra)
        .stderr(log)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!("attack {kind} failed: {text}"));
    }
    Ok(text.lines().map(str::trim).collect::<Vec<_>>().join(" | "))
}

/// One of ours serving on loopback, with a responder attached (which must
/// never hear of a refused stream).
fn our_server(
    setup: &Setup,
    rt: &tokio::runtime::Runtime,
) -> Result<
    (
        GrpcTransport,
        SocketAddr,
        antientropy::adapters::tokio::DriverHandle<StateResponder<PkiId>>,
    ),
    String,
> {
    let transport = setup.transport("rust1", |t| t)?;
    rt.block_on(async {
        let responder = StateResponder::new(Config::default(), CHANNEL.into(), 10).unwrap();
        let (handle, future) = driver(
            responder,
            ResponderHost::new(transport.clone(), NoBlocks),
            64,
        );
        tokio::spawn(future);
        transport.attach_responder(handle.downgrade());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        transport.serve(listener);
        Ok((transport, addr, handle))
    })
}

struct NoBlocks;

impl antientropy::adapters::BlockStore<PkiId> for NoBlocks {
    fn read_blocks(
        &mut self,
        _: antientropy::Ticket,
        _: &PkiId,
        _: antientropy::SeqRange,
        _: usize,
    ) -> Option<Vec<antientropy::wire::gossip::Payload>> {
        Some(Vec::new())
    }
}

/// Waits for a new refusal on `transport`.
fn refusal(
    rt: &tokio::runtime::Runtime,
    transport: &GrpcTransport,
    seen: usize,
) -> Result<antientropy::fabric::Refusal, String> {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(refusal) = transport.refusals().get(seen) {
                return Ok(refusal.clone());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("no refusal recorded".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// (3) Each handshake refusal, both ways: Fabric-made bad handshakes
/// against ours, ours against a Fabric node.
fn refusals(setup: &Setup) -> Result<String, String> {
    let rt = runtime();
    let mut shown = Vec::new();
    // Fabric's side misbehaves (the cases of comm_test.go's TestHandshake).
    let (server, addr, responder) = our_server(setup, &rt)?;
    type Check = fn(&HandshakeError) -> bool;
    let expected: [(&str, Check); 5] = [
        ("nocert", |e| *e == HandshakeError::NoClientCertificate),
        ("wronghash", |e| *e == HandshakeError::TlsHashMismatch),
        ("badsig", |e| matches!(e, HandshakeError::BadSignature(_))),
        ("pkimismatch", |e| *e == HandshakeError::PkiIdMismatch),
        ("silent", |e| *e == HandshakeError::Timeout),
    ];
    for (i, (kind, check)) in expected.iter().enumerate() {
        let printed = attack(setup, kind, addr, &[])?;
        let refusal = refusal(&rt, &server, i)?;
        if refusal.direction != Direction::Accepted || !check(&refusal.error) {
            return Err(format!("{kind}: we refused with {:?}", refusal.error));
        }
        if !printed.contains("stream ended") {
            return Err(format!("{kind}: Fabric's client saw: {printed}"));
        }
        shown.push(format!("{kind}: {}", refusal.error));
    }
    let stats = server.stats();
    let requests = responder.stats().map_or(0, |s| s.requests);
    if stats.connected != 0 || stats.state_in != 0 || requests != 0 {
        return Err(format!(
            "a refused stream reached us: {stats:?}, {requests} requests"
        ));
    }
    drop(server);

    // Ours misbehaves toward Fabric's comm layer.
    let fabric = Node::spawn(setup, "grpc_refusals", "fabric0", setup.blocks, &[])?;
    let read = |p: PathBuf| std::fs::read(p).map_err(|e| e.to_string());
    let other = P256Signer::from_pem(
        "Org1MSP",
        &read(setup.crypto.join("fabric1/cert.pem"))?,
        &String::from_utf8_lossy(&read(setup.crypto.join("fabric1/key.pem"))?),
    )
    .map_err(|e| e.to_string())?;
    let ours = P256Signer::from_pem(
        "Org1MSP",
        &read(setup.crypto.join("rust0/cert.pem"))?,
        &String::from_utf8_lossy(&read(setup.crypto.join("rust0/key.pem"))?),
    )
    .map_err(|e| e.to_string())?;
    let forger: Arc<dyn Signer> = Arc::new(Forger {
        identity: ours,
        key: other,
    });
    let variants: Vec<(&str, GrpcTransport, Option<PkiId>, &str)> = vec![
        (
            "no client certificate",
            setup.transport("rust0", TlsIdentity::without_client_certificate)?,
            None,
            "no TLS certificate",
        ),
        (
            "wrong TLS hash",
            setup.transport("rust0", TlsIdentity::with_wrong_cert_hash)?,
            None,
            "remote hash of TLS cert",
        ),
        (
            "bad signature",
            setup.transport_with("rust0", |t| t, forger)?,
            None,
            "signature",
        ),
        (
            "another PKI-ID expected",
            setup.transport("rust0", |t| t)?,
            Some(PkiId(Bytes::from_static(b"not fabric0"))),
            "",
        ),
    ];
    for (what, transport, expected, fabric_says) in variants {
        rt.block_on(async { transport.dial(fabric.addr, localhost(), expected.clone()) });
        let refusal = refusal(&rt, &transport, 0)?;
        let ok = match &refusal.error {
            HandshakeError::Closed(why) => !fabric_says.is_empty() && why.contains(fabric_says),
            HandshakeError::WrongPeer { got, .. } => expected.is_some() && *got == fabric.pki_id,
            _ => false,
        };
        if !ok {
            return Err(format!("{what}: {:?}", refusal.error));
        }
        if transport.stats().state_in != 0 {
            return Err(format!("{what}: state messages reached us"));
        }
        shown.push(format!("ours {what}: {}", refusal.error));
        drop(transport);
    }
    let log =
        std::fs::read_to_string(setup.logs.join("grpc_refusals.fabric0.log")).unwrap_or_default();
    let refused_by_fabric = log.matches("Authentication failed").count();
    if refused_by_fabric < 3 {
        return Err(format!(
            "Fabric logged {refused_by_fabric} authentication failures, want 3"
        ));
    }
    Ok(shown.join("; "))
}

/// Signs with another key than its identity's.
struct Forger {
    identity: P256Signer,
    key: P256Signer,
}

impl Signer for Forger {
    fn identity(&self) -> Bytes {
        self.identity.identity()
    }
    fn pki_id(&self) -> PkiId {
        self.identity.pki_id()
    }
    fn sign(&self, message: &[u8]) -> Result<Bytes, antientropy::fabric::CryptoError> {
        self.key.sign(message)
    }
}

/// (4) From Fabric's grpc-go client: a state response just under 100 MiB
/// reaches us on a stream that stays up; one just over it ends the stream,
/// counted, with nothing delivered.
fn size_limit(setup: &Setup) -> Result<String, String> {
    const MIB: usize = 1 << 20;
    let rt = runtime();
    let (server, addr, _responder) = our_server(setup, &rt)?;
    let under = attack(
        setup,
        "size",
        addr,
        &["-size", &(100 * MIB - 64 * 1024).to_string()],
    )?;
    let stats = server.stats();
    if stats.state_in != 1 || !under.contains("stream open") {
        return Err(format!("under the limit: {under}; {stats:?}"));
    }
    let over = attack(
        setup,
        "size",
        addr,
        &["-size", &(100 * MIB + 64 * 1024).to_string()],
    )?;
    let stats = server.stats();
    if stats.state_in != 1 || stats.oversized != 1 || !over.contains("stream ended") {
        return Err(format!("over the limit: {over}; {stats:?}"));
    }
    Ok(format!("under: {under}; over: {over}"))
}

/// The benchmark: catch-up over loopback gRPC, ours from Fabric's
/// responder against Fabric's requester from the same responder, same
/// chain, same run.
fn speed(setup: &Setup) -> Result<String, String> {
    let fabric = Node::spawn(setup, "grpc_speed", "fabric0", setup.blocks, &[])?;
    let dir = setup.blocks_dir("speed", 1)?;
    let args = setup.args(
        "rust0",
        dir,
        Mode::Serve {
            listen: fabric.addr,
            peer: vec![],
            server_name: None,
            seconds: None,
        },
    );
    let peers = [fabric.addr];
    let ours = runtime()
        .block_on(fabric_peer::fetch(
            &args,
            &peers,
            &None,
            None,
            Duration::from_secs(300),
        ))
        .map_err(|e| e.to_string())?;
    let boot = fabric.addr.to_string();
    let mut theirs = Node::spawn(
        setup,
        "grpc_speed",
        "fabric1",
        1,
        &["-state", "-bootstrap", &boot],
    )?;
    let started = now();
    theirs.wait_height(setup.blocks, Duration::from_secs(600))?;
    let fabric_total = (now() - started).as_secs_f64();
    let ratio = theirs.first_to_last() / ours.first_to_last.max(1e-9);
    Ok(format!(
        "{} blocks: ours {:.3} s first to last block ({:.2} s from the dial), Fabric's {:.3} s ({:.2} s from its start): Fabric/ours = {ratio:.1}",
        setup.blocks - 1,
        ours.first_to_last,
        ours.seconds,
        theirs.first_to_last(),
        fabric_total
    ))
}

/// Fabric with `peer.tls.enabled: false` (`-plaintext`), both ways: our
/// requester catches up from a Fabric node, then a Fabric node catches up
/// from our responder, with no TLS anywhere and the handshake binding no
/// certificate.
fn plaintext(setup: &Setup) -> Result<String, String> {
    let fabric = Node::spawn(
        setup,
        "grpc_plaintext",
        "fabric0",
        setup.blocks,
        &["-plaintext"],
    )?;
    let mut args = setup.args(
        "rust0",
        setup.blocks_dir("plaintext-fetch", 1)?,
        Mode::Serve {
            listen: fabric.addr,
            peer: vec![],
            server_name: None,
            seconds: None,
        },
    );
    (args.tls_cert, args.tls_key, args.tls_ca, args.plaintext) = (None, None, None, true);
    let fetched = runtime()
        .block_on(fabric_peer::fetch(
            &args,
            &[fabric.addr],
            &None,
            None,
            Duration::from_secs(120),
        ))
        .map_err(|e| e.to_string())?;
    if fetched.height != setup.blocks {
        return Err(format!(
            "ours reached {} of {}",
            fetched.height, setup.blocks
        ));
    }
    drop(fabric);
    let mut fabric = Node::spawn(
        setup,
        "grpc_plaintext",
        "fabric1",
        1,
        &["-state", "-plaintext"],
    )?;
    args.blocks = setup.blocks_dir("plaintext-serve", setup.blocks)?;
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    serve_until_caught_up(setup, args, listen, &mut fabric)?;
    Ok(format!(
        "without TLS, ours from Fabric: blocks 1..{} in {:.3} s first to last; Fabric from ours: {:.3} s first to last",
        setup.blocks - 1,
        fetched.first_to_last,
        fabric.first_to_last()
    ))
}

/// Runs the gRPC cases; returns the names of those that failed.
pub fn run(setup: &Setup, only: &[String]) -> (usize, Vec<&'static str>) {
    let mut ran = 0;
    let mut failed = Vec::new();
    for case in CASES {
        if !only.is_empty() && !only.iter().any(|o| case.name.contains(o)) {
            continue;
        }
        ran += 1;
        let started = now();
        let outcome = std::panic::catch_unwind(|| (case.run)(setup))
            .unwrap_or_else(|_| Err("panicked".into()));
        let secs = (now() - started).as_secs_f64();
        match outcome {
            Ok(detail) => println!("PASS {} ({secs:.2} s): {detail}", case.name),
            Err(reason) => {
                println!(
                    "FAIL {} ({secs:.2} s): {reason} (logs: {})",
                    case.name,
                    setup.logs.display()
                );
                failed.push(case.name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&setup.work);
    (ran, failed)
}

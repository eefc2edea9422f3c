//! The Fabric peers of a case: `aeconform` child processes, the frames on
//! their stdin and stdout, and the envelope checks every message from
//! Fabric goes through.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use antientropy::wire::{self, gossip::GossipMessage};
use bytes::Bytes;
use prost::Message;

use crate::now;

// Commands and events: the kinds of interop/fabric/aeconform/frames.go.
const CMD_MEMBERSHIP: u8 = 0x01;
const CMD_START: u8 = 0x02;
const CMD_DELIVER: u8 = 0x03;
const CMD_GOSSIP: u8 = 0x04;
const CMD_STACKS: u8 = 0x05;
const CMD_STOP: u8 = 0x06;
const EV_READY: u8 = 0x81;
const EV_SEND: u8 = 0x82;
const EV_RESPOND: u8 = 0x83;
const EV_COMMITTED: u8 = 0x84;
const EV_VIOLATION: u8 = 0x85;
const EV_FILTERED: u8 = 0x86;
const EV_STACKS: u8 = 0x87;
const EV_CHAIN_BLOCK: u8 = 0x88;
const EV_CHAIN_END: u8 = 0x89;
const EV_STOPPED: u8 = 0x8a;

/// Bounds what a corrupt length can make us allocate.
const MAX_FRAME: usize = 256 << 20;

/// A frame body under construction.
#[derive(Default)]
pub struct Enc(Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).expect("frame field under 4 GiB");
        self.u32(len);
        self.0.extend_from_slice(b);
        self
    }
}

/// A frame body being read; a short body is an error, not a panic.
pub struct Dec<'a>(pub &'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated frame".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    pub fn string(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
    }
}

fn write_frame(w: &mut impl Write, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + 1).expect("frame under 4 GiB");
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&[kind])?;
    w.write_all(body)?;
    w.flush()
}

/// `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(format!("bad frame length {len}"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|e| e.to_string())?;
    let kind = buf.remove(0);
    Ok(Some((kind, buf)))
}

/// What a Fabric peer reports.
#[derive(Debug, Clone)]
pub enum Ev {
    /// The provider runs; its ledger height.
    Ready(u64),
    /// Fabric's requester sent `envelope` to `to` (`GossipAdapter.Send`).
    Send {
        to: String,
        envelope: Bytes,
    },
    /// Fabric answered on the connection from `to` (`ReceivedMessage.Respond`).
    Respond {
        to: String,
        envelope: Bytes,
    },
    /// Fabric's ledger bridge committed `seq` after checking it.
    Committed(u64),
    /// A delivered message reached no subscriber (Fabric's filters refused
    /// it); recorded in [`Net::filtered`], never returned.
    Filtered {
        reason: String,
    },
    Stacks(String),
    Stopped,
    /// The process closed its stdout.
    Exited,
}

fn decode_event(kind: u8, body: &[u8]) -> Result<Result<Ev, String>, String> {
    let mut d = Dec(body);
    let ev = match kind {
        EV_READY => Ev::Ready(d.u64()?),
        EV_SEND => Ev::Send {
            to: d.string()?,
            envelope: d.bytes()?,
        },
        EV_RESPOND => Ev::Respond {
            to: d.string()?,
            envelope: d.bytes()?,
        },
        EV_COMMITTED => Ev::Committed(d.u64()?),
        // Fabric's ledger saw a block out of order or with wrong content.
        EV_VIOLATION => return Ok(Err(d.string()?)),
        EV_FILTERED => {
            let from = d.string()?;
            Ev::Filtered {
                reason: format!("from {from}: {}", d.string()?),
            }
        }
        EV_STACKS => Ev::Stacks(d.string()?),
        EV_STOPPED => Ev::Stopped,
        other => return Err(format!("unknown event 0x{other:02x}")),
    };
    Ok(Ok(ev))
}

/// One block of the shared chain as `aeconform -chain` prints it.
pub struct RawBlock {
    pub data: Bytes,
    pub private_data: Vec<Bytes>,
}

/// Runs `aeconform -chain` and reads the chain it prints.
pub fn fetch_chain(bin: &Path, channel: &str, length: u64) -> Result<Vec<RawBlock>, String> {
    let mut child = Command::new(bin)
        .args(["-chain", &length.to_string(), "-channel", channel])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut blocks = Vec::new();
    loop {
        let Some((kind, body)) = read_frame(&mut out)? else {
            return Err("chain ended early".into());
        };
        match kind {
            EV_CHAIN_BLOCK => {
                let mut d = Dec(&body);
                let seq = d.u64()?;
                if seq != blocks.len() as u64 {
                    return Err(format!("chain block {seq} out of order"));
                }
                let data = d.bytes()?;
                let n = d.u32()?;
                let private_data = (0..n).map(|_| d.bytes()).collect::<Result<_, _>>()?;
                blocks.push(RawBlock { data, private_data });
            }
            EV_CHAIN_END => break,
            other => return Err(format!("unexpected frame 0x{other:02x} in the chain")),
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("aeconform -chain exited with {status}"));
    }
    Ok(blocks)
}

/// Envelopes from Fabric that passed [`open`].
pub static OPENED: AtomicU64 = AtomicU64::new(0);

/// Opens an envelope from Fabric: it must be what `NoopSign` makes (no
/// signature, no secret envelope), and our encoding of the message inside
/// must give back exactly Fabric's bytes. Returns the message and its bytes.
pub fn open(envelope: &Bytes) -> Result<(GossipMessage, Bytes), String> {
    let env = wire::decode_envelope(envelope.clone(), wire::DEFAULT_MAX_MESSAGE_SIZE)
        .map_err(|e| format!("Fabric's envelope does not decode: {e}"))?;
    if !env.signature.is_empty() || env.secret_envelope.is_some() {
        return Err("Fabric's envelope is not NoopSign's (signature or secret present)".into());
    }
    let message = wire::unwrap_envelope(&env, wire::DEFAULT_MAX_MESSAGE_SIZE)
        .map_err(|e| format!("Fabric's GossipMessage does not decode: {e}"))?;
    if wire::wrap_envelope(&message).encode_to_vec() != envelope[..] {
        return Err("our encoding of Fabric's message differs from Fabric's bytes".into());
    }
    OPENED.fetch_add(1, Ordering::Relaxed);
    Ok((message, env.payload))
}

/// Our envelope around `message`, as we would put it on the wire.
pub fn seal(message: &GossipMessage) -> Bytes {
    wire::wrap_envelope(message).encode_to_vec().into()
}

/// How a peer is started: its identity and `aeconform` flags.
pub struct PeerSpec {
    pub id: &'static str,
    pub args: Vec<String>,
    /// The ledger height it starts with.
    pub height: Option<u64>,
}

impl PeerSpec {
    /// A peer of `id` on `channel` whose ledger holds `height` blocks of a
    /// chain of `blocks`; `extra` flags follow (e.g. `-state`, `-check 100ms`).
    pub fn new(id: &'static str, channel: &str, blocks: u64, height: u64, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "-id",
            id,
            "-channel",
            channel,
            "-blocks",
            &blocks.to_string(),
            "-height",
            &height.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            id,
            args,
            height: Some(height),
        }
    }
}

struct Peer {
    id: String,
    child: Child,
    stdin: BufWriter<ChildStdin>,
}

/// The Fabric peers of one case, and everything they report, in order of
/// arrival.
pub struct Net {
    bin: PathBuf,
    logs: PathBuf,
    case: String,
    peers: Vec<Peer>,
    tx: Sender<(String, Result<Ev, String>)>,
    rx: Receiver<(String, Result<Ev, String>)>,
    pending: VecDeque<(String, Ev)>,
    /// Messages delivered to Fabric that its filters (or, for bytes that
    /// are no envelope, the bridge's comm layer) dropped: (peer, reason).
    pub filtered: Vec<(String, String)>,
}

impl Net {
    pub fn new(bin: &Path, logs: &Path, case: &str) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            bin: bin.to_path_buf(),
            logs: logs.to_path_buf(),
            case: case.replace('/', "_"),
            peers: Vec::new(),
            tx,
            rx,
            pending: VecDeque::new(),
            filtered: Vec::new(),
        }
    }

    /// Where a peer's Fabric log goes.
    pub fn log_of(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{}.{id}.log", self.case))
    }

    /// Starts a peer: sets its membership, builds its provider, waits for it.
    pub fn spawn(&mut self, spec: PeerSpec, members: &[(&str, u64)]) -> Result<(), String> {
        let log = File::create(self.log_of(spec.id)).map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.bin)
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let tx = self.tx.clone();
        let id = spec.id.to_string();
        std::thread::spawn(move || loop {
            let event = match read_frame(&mut stdout) {
                Ok(Some((kind, body))) => match decode_event(kind, &body) {
                    Ok(event) => event,
                    Err(e) => Err(format!("bad event: {e}")),
                },
                Ok(None) | Err(_) => Ok(Ev::Exited),
            };
            let end = matches!(event, Ok(Ev::Exited));
            if tx.send((id.clone(), event)).is_err() || end {
                return;
            }
        });
        self.peers.push(Peer {
            id: spec.id.to_string(),
            child,
            stdin,
        });
        self.membership(spec.id, members)?;
        self.command(spec.id, CMD_START, &[])?;
        let deadline = now() + Duration::from_secs(10);
        match self.wait(deadline, |from, ev| {
            from == spec.id && matches!(ev, Ev::Ready(_))
        })? {
            Some(Ev::Ready(height)) if Some(height) == spec.height => Ok(()),
            Some(ev) => Err(format!("{} started with {ev:?}", spec.id)),
            None => Err(format!("{} did not start", spec.id)),
        }
    }

    fn command(&mut self, id: &str, kind: u8, body: &[u8]) -> Result<(), String> {
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| format!("no Fabric peer {id}"))?;
        write_frame(&mut peer.stdin, kind, body).map_err(|e| format!("writing to {id}: {e}"))
    }

    /// Sets what `PeersOfChannel` returns to `id`: (peer, advertised height).
    pub fn membership(&mut self, id: &str, members: &[(&str, u64)]) -> Result<(), String> {
        let mut e = Enc::default();
        e.u32(members.len() as u32);
        for (member, height) in members {
            e.bytes(member.as_bytes()).u8(1).u64(*height).u8(0);
        }
        self.command(id, CMD_MEMBERSHIP, &e.0)
    }

    /// Hands Fabric peer `to` the bytes of an envelope arriving on the
    /// connection from `from`.
    pub fn deliver_bytes(&mut self, to: &str, from: &str, envelope: &[u8]) -> Result<(), String> {
        let mut e = Enc::default();
        e.bytes(from.as_bytes()).bytes(envelope);
        self.command(to, CMD_DELIVER, &e.0)
    }

    /// [`deliver_bytes`](Self::deliver_bytes) of our envelope around `message`.
    pub fn deliver(&mut self, to: &str, from: &str, message: &GossipMessage) -> Result<(), String> {
        self.deliver_bytes(to, from, &seal(message))
    }

    /// Hands Fabric peer `to` a message from its gossip layer.
    pub fn gossip(&mut self, to: &str, message: &GossipMessage) -> Result<(), String> {
        let mut e = Enc::default();
        e.bytes(&seal(message));
        self.command(to, CMD_GOSSIP, &e.0)
    }

    /// Every goroutine's stack in peer `id`.
    pub fn stacks(&mut self, id: &str) -> Result<String, String> {
        self.command(id, CMD_STACKS, &[])?;
        let deadline = now() + Duration::from_secs(5);
        match self.wait(deadline, |from, ev| {
            from == id && matches!(ev, Ev::Stacks(_))
        })? {
            Some(Ev::Stacks(text)) => Ok(text),
            _ => Err(format!("{id} sent no stacks")),
        }
    }

    /// The next event, or `None` once `deadline` passes. A violation seen
    /// by Fabric's ledger, or a peer that died, is an error.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<(String, Ev)>, String> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(Some(event));
        }
        loop {
            let wait = deadline.saturating_duration_since(now());
            match self.rx.recv_timeout(wait) {
                Ok((from, Ok(Ev::Filtered { reason, .. }))) => self.filtered.push((from, reason)),
                other => return self.event(other),
            }
        }
    }

    fn event(
        &self,
        received: Result<(String, Result<Ev, String>), RecvTimeoutError>,
    ) -> Result<Option<(String, Ev)>, String> {
        match received {
            Ok((from, Ok(Ev::Exited))) => Err(format!(
                "Fabric peer {from} exited (log: {})",
                self.log_of(&from).display()
            )),
            Ok((from, Ok(event))) => Ok(Some((from, event))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Ok((from, Err(text))) => Err(format!("Fabric peer {from}: {text}")),
            Err(RecvTimeoutError::Disconnected) => Err("event channel closed".into()),
        }
    }

    /// Waits for the first event that `want` picks, keeping the others, in
    /// order, for [`next`](Self::next).
    pub fn wait(
        &mut self,
        deadline: Instant,
        want: impl Fn(&str, &Ev) -> bool,
    ) -> Result<Option<Ev>, String> {
        let mut kept = VecDeque::new();
        let mut found = None;
        // Events already pending are looked at first, then new ones.
        let mut earlier: VecDeque<_> = std::mem::take(&mut self.pending);
        loop {
            let next = match earlier.pop_front() {
                Some(event) => Some(event),
                None => self.next(deadline)?,
            };
            let Some((from, event)) = next else { break };
            if want(&from, &event) {
                found = Some(event);
                break;
            }
            kept.push_back((from, event));
        }
        kept.extend(earlier);
        kept.extend(std::mem::take(&mut self.pending));
        self.pending = kept;
        Ok(found)
    }

    /// Stops every peer (and kills one that does not exit).
    pub fn shutdown(&mut self) {
        for peer in &mut self.peers {
            let _ = write_frame(&mut peer.stdin, CMD_STOP, &[]);
        }
        let deadline = now() + Duration::from_secs(2);
        for peer in &mut self.peers {
            loop {
                match peer.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                    _ => {
                        // Stalled on purpose by some cases: do not wait for it.
                        let _ = peer.child.kill();
                        let _ = peer.child.wait();
                        break;
                    }
                }
            }
        }
        self.peers.clear();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.shutdown();
    }
}

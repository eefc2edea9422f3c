//! Prints Fabric gossip message files in a readable form.
//!
//! ```text
//! cargo run --example decode -- [--type gossip|envelope|block] FILE [FILE...]
//! ```
//!
//! Each file holds one protobuf message: a `gossip.GossipMessage`, a
//! `gossip.Envelope` carrying one, or a `common.Block`. Without `--type`
//! the kinds are tried in the order envelope, gossip, block, and the first
//! that decodes *and* looks sensible is printed: an envelope whose payload is
//! a gossip message with content, a gossip message with content, a block
//! with a header. State messages get a one-line summary before the message.
//!
//! Exits with 1 if any file could not be read or decoded.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use antientropy::wire::common::Block;
use antientropy::wire::gossip::gossip_message::{Content, Tag};
use antientropy::wire::gossip::{Envelope, GossipMessage};
use antientropy::wire::{self, DEFAULT_MAX_MESSAGE_SIZE};
use bytes::Bytes;
use prost::Message;

const USAGE: &str = "usage: decode [--type gossip|envelope|block] FILE [FILE...]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gossip,
    Envelope,
    Block,
}

impl Kind {
    fn parse(name: &str) -> Result<Kind, String> {
        match name {
            "gossip" => Ok(Kind::Gossip),
            "envelope" => Ok(Kind::Envelope),
            "block" => Ok(Kind::Block),
            other => Err(format!(
                "unknown type `{other}`: expected gossip, envelope or block"
            )),
        }
    }
}

/// The command line: an optional type hint and the files.
struct Args {
    kind: Option<Kind>,
    files: Vec<String>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut kind = None;
    let mut files = Vec::new();
    let mut args = args.into_iter();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            files.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "-h" | "--help" => return Ok(None),
            "--type" | "-t" => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                kind = Some(Kind::parse(&value)?);
            }
            _ => match arg.strip_prefix("--type=") {
                Some(value) => kind = Some(Kind::parse(value)?),
                None => return Err(format!("unknown option `{arg}`")),
            },
        }
    }
    if files.is_empty() {
        return Err("no FILE given".to_owned());
    }
    Ok(Some(Args { kind, files }))
}

/// What a file decoded to.
enum Decoded {
    Gossip(GossipMessage),
    Envelope(Envelope, GossipMessage),
    Block(Block),
}

fn decode_as(kind: Kind, bytes: &Bytes) -> Result<Decoded, String> {
    match kind {
        Kind::Gossip => wire::decode_gossip_message(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE)
            .map(Decoded::Gossip)
            .map_err(|error| format!("not a GossipMessage: {error}")),
        Kind::Envelope => {
            let envelope = wire::decode_envelope(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE)
                .map_err(|error| format!("not an Envelope: {error}"))?;
            let inner =
                wire::unwrap_envelope(&envelope, DEFAULT_MAX_MESSAGE_SIZE).map_err(|error| {
                    format!(
                        "an Envelope (payload {} bytes, signature {} bytes) whose payload is \
                         not a GossipMessage: {error}",
                        envelope.payload.len(),
                        envelope.signature.len()
                    )
                })?;
            Ok(Decoded::Envelope(envelope, inner))
        }
        Kind::Block => {
            if bytes.len() > DEFAULT_MAX_MESSAGE_SIZE {
                return Err(format!(
                    "not a Block: {} bytes exceeds the limit of {DEFAULT_MAX_MESSAGE_SIZE} bytes",
                    bytes.len()
                ));
            }
            Block::decode(bytes.clone())
                .map(Decoded::Block)
                .map_err(|error| format!("not a Block: {error}"))
        }
    }
}

/// Whether a guess is plausible: protobuf decodes many byte strings as
/// something, so a guess must also carry what such a message always has.
fn looks_sensible(decoded: &Decoded) -> bool {
    match decoded {
        Decoded::Gossip(message) => message.content.is_some(),
        Decoded::Envelope(envelope, inner) => {
            !envelope.payload.is_empty() && inner.content.is_some()
        }
        Decoded::Block(block) => block.header.is_some(),
    }
}

fn decode(kind: Option<Kind>, bytes: &Bytes) -> Result<Decoded, String> {
    if let Some(kind) = kind {
        return decode_as(kind, bytes);
    }
    for kind in [Kind::Envelope, Kind::Gossip, Kind::Block] {
        if let Ok(decoded) = decode_as(kind, bytes) {
            if looks_sensible(&decoded) {
                return Ok(decoded);
            }
        }
    }
    Err(format!(
        "{} bytes that are neither an Envelope of a GossipMessage, a GossipMessage with \
         content, nor a Block with a header (try --type)",
        bytes.len()
    ))
}

/// Bytes as text when they are printable ASCII, else as hex.
fn show(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        let mut hex = String::from("0x");
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

fn tag_name(tag: i32) -> String {
    match Tag::try_from(tag) {
        Ok(tag) => tag.as_str_name().to_owned(),
        Err(_) => format!("unknown({tag})"),
    }
}

/// A one-line summary of the messages this crate acts on.
fn summary(message: &GossipMessage) -> Option<String> {
    let head = format!(
        "nonce={} channel={} tag={}",
        message.nonce,
        show(&message.channel),
        tag_name(message.tag)
    );
    let line = match message.content.as_ref()? {
        Content::StateRequest(request) => format!(
            "state_request {head} range=[{}, {}]",
            request.start_seq_num, request.end_seq_num
        ),
        Content::StateResponse(response) => {
            let seq_nums: Vec<u64> = response.payloads.iter().map(|p| p.seq_num).collect();
            let data: usize = response.payloads.iter().map(|p| p.data.len()).sum();
            let private: usize = response.payloads.iter().map(|p| p.private_data.len()).sum();
            format!(
                "state_response {head} payloads={} seq_nums={seq_nums:?} data={data} bytes \
                 private_data={private}",
                response.payloads.len()
            )
        }
        Content::StateInfo(state_info) => {
            let mut line = format!("state_info {head} pki_id={}", show(&state_info.pki_id));
            match wire::advertised(state_info) {
                Ok(advertised) => {
                    let _ = write!(
                        line,
                        " ledger_height={} left_channel={}",
                        advertised.ledger_height, advertised.left_channel
                    );
                }
                Err(error) => {
                    let _ = write!(line, " ({error})");
                }
            }
            line
        }
        Content::DataMsg(data) => match &data.payload {
            Some(payload) => format!(
                "data_msg {head} seq_num={} data={} bytes private_data={}",
                payload.seq_num,
                payload.data.len(),
                payload.private_data.len()
            ),
            None => format!("data_msg {head} (no payload)"),
        },
        _ => return None,
    };
    Some(line)
}

fn print_gossip(out: &mut String, message: &GossipMessage) {
    if let Some(line) = summary(message) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{message:#?}");
}

fn render(decoded: &Decoded) -> String {
    let mut out = String::new();
    match decoded {
        Decoded::Gossip(message) => {
            let _ = writeln!(out, "GossipMessage");
            print_gossip(&mut out, message);
        }
        Decoded::Envelope(envelope, inner) => {
            let _ = writeln!(
                out,
                "Envelope (signature {} bytes)",
                envelope.signature.len()
            );
            if let Some(secret) = &envelope.secret_envelope {
                let _ = writeln!(out, "secret_envelope: {secret:#?}");
            }
            print_gossip(&mut out, inner);
        }
        Decoded::Block(block) => {
            let number = block
                .header
                .as_ref()
                .map_or_else(|| "(no header)".to_owned(), |h| h.number.to_string());
            let transactions = block.data.as_ref().map_or(0, |d| d.data.len());
            let _ = writeln!(out, "Block number={number} transactions={transactions}");
            let _ = writeln!(out, "{block:#?}");
        }
    }
    out
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("decode: {error}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let several = args.files.len() > 1;
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for file in &args.files {
        let text = match std::fs::read(file) {
            Err(error) => Err(format!("cannot read: {error}")),
            Ok(bytes) => decode(args.kind, &Bytes::from(bytes)).map(|d| render(&d)),
        };
        match text {
            Ok(text) => {
                let header = if several {
                    format!("== {file}\n")
                } else {
                    String::new()
                };
                if let Err(error) = write!(stdout, "{header}{text}").and_then(|()| stdout.flush()) {
                    // A closed pipe (`| head`) is not worth a message.
                    if error.kind() != std::io::ErrorKind::BrokenPipe {
                        eprintln!("decode: cannot write output: {error}");
                    }
                    return ExitCode::FAILURE;
                }
            }
            Err(error) => {
                let _ = stdout.flush();
                eprintln!("decode: {file}: {error}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

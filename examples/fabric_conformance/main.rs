//! Conformance of the crate's machines with Fabric's own state transfer.
//!
//! Runs `AntiEntropy` and `StateResponder` against unmodified Fabric
//! `GossipStateProviderImpl`s (`interop/fabric/aeconform`, built from a
//! Fabric source tree by `interop/fabric/run.sh`, which is the way to run
//! this), exchanging the envelope bytes Fabric sends and receives, and
//! prints PASS or FAIL per case. Divergence cases pass when Fabric accepts
//! what ours refuses, as the README's Fabric table says.
//!
//! ```sh
//! cargo run --example fabric_conformance -- --fabric-bin PATH/aeconform [--only NAME] [--logs DIR]
//! ```

mod cases;
mod chain;
mod drive;
#[cfg(feature = "fabric-grpc")]
#[path = "../fabric_peer.rs"]
mod fabric_peer;
#[cfg(feature = "fabric-grpc")]
mod grpc;
mod net;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Parser;

use cases::{Kind, CASES};
use chain::Chain;
use net::Net;

/// The channel of every case.
pub const CHANNEL: &str = "testchannelid";
/// Our peer's identity (and endpoint) as Fabric sees it.
pub const US: &str = "rust0";
/// Blocks in the shared chain: enough for the longest case.
const CHAIN_LENGTH: u64 = 200;

/// The driver is the host: it reads the clock and hands `now` to the machines.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

#[derive(Parser)]
#[command(about = "Runs the crate's machines against Fabric's gossip/state (see interop/fabric)")]
struct Args {
    /// The `aeconform` harness binary built by interop/fabric/run.sh.
    #[arg(long)]
    fabric_bin: PathBuf,
    /// Where Fabric's logs go, one file per case and peer (default: a temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Run only the cases whose name contains this (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Blocks in the chain of the gRPC cases (feature `fabric-grpc`).
    #[arg(long, default_value_t = 300)]
    grpc_blocks: u64,
    /// Pad each block of the gRPC cases to about this many bytes (0: the
    /// chain's own blocks, about 1 KiB).
    #[arg(long, default_value_t = 0)]
    grpc_block_size: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let logs = args
        .logs
        .unwrap_or_else(|| std::env::temp_dir().join("antientropy-fabric-logs"));
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("cannot create {}: {e}", logs.display());
        return ExitCode::FAILURE;
    }
    let chain = match net::fetch_chain(&args.fabric_bin, CHANNEL, CHAIN_LENGTH) {
        Ok(blocks) => Chain::new(blocks),
        Err(e) => {
            eprintln!(
                "cannot get the chain from {}: {e}",
                args.fabric_bin.display()
            );
            return ExitCode::FAILURE;
        }
    };
    println!(
        "chain: {} blocks built by Fabric's protoutil, {} with private data",
        chain.len(),
        chain.with_private_data()
    );

    let selected: Vec<_> = CASES
        .iter()
        .filter(|case| args.only.is_empty() || args.only.iter().any(|o| case.name.contains(o)))
        .collect();
    let mut failed = Vec::new();
    for case in &selected {
        let started = now();
        let mut net = Net::new(&args.fabric_bin, &logs, case.name);
        let outcome = catch_unwind(AssertUnwindSafe(|| (case.run)(&chain, &mut net)))
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {text}"))
            });
        net.shutdown();
        let secs = now().saturating_duration_since(started).as_secs_f64();
        let kind = match case.kind {
            Kind::Conformance => "",
            Kind::Divergence => " [expected divergence]",
        };
        match outcome {
            Ok(detail) => println!("PASS {}{kind} ({secs:.2} s): {detail}", case.name),
            Err(reason) => {
                println!(
                    "FAIL {}{kind} ({secs:.2} s): {reason} (Fabric logs: {}/{}.*.log)",
                    case.name,
                    logs.display(),
                    case.name.replace('/', "_")
                );
                failed.push(case.name);
            }
        }
    }
    println!(
        "{} envelopes from Fabric decoded, and re-encoded by us to the same bytes",
        net::OPENED.load(Ordering::Relaxed)
    );
    #[allow(unused_mut)]
    let mut ran = selected.len();
    // Fabric's real comm layer: gRPC, TLS, the handshake, membership.
    #[cfg(feature = "fabric-grpc")]
    match grpc::setup(
        &args.fabric_bin,
        &logs,
        args.grpc_blocks,
        args.grpc_block_size,
    ) {
        Ok(setup) => {
            let (grpc_ran, grpc_failed) = grpc::run(&setup, &args.only);
            ran += grpc_ran;
            failed.extend(grpc_failed);
        }
        Err(e) => {
            println!("FAIL grpc setup: {e}");
            ran += 1;
            failed.push("grpc setup");
        }
    }
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    println!(
        "conformance: {} passed, {} failed",
        ran - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

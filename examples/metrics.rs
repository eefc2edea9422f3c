//! The requester's counters in Prometheus' text format, after a catch-up of
//! `tcp_catchup`'s two roles over loopback in one process: what a
//! `/metrics` endpoint would serve (no HTTP server here).
//!
//! ```text
//! cargo run --example metrics --features tokio-net [-- BLOCKS]
//! ```
use std::error::Error;
use std::fmt::Write;
use std::net::SocketAddr;

use antientropy::AntiEntropy;

#[path = "tcp_catchup.rs"]
#[allow(dead_code)] // its `main`
mod tcp_catchup;

/// One line per counter; per-peer series carry a `peer` label.
pub fn prometheus(requester: &AntiEntropy<SocketAddr>) -> String {
    let s = requester.stats();
    let mut out = String::new();
    for (name, kind, value) in [
        ("height", "gauge", s.height),
        ("requests_sent_total", "counter", s.requests),
        ("responses_total", "counter", s.responses),
        ("timeouts_total", "counter", s.timeouts),
        ("retries_total", "counter", s.retries),
        ("hedges_total", "counter", s.hedges),
        ("give_ups_total", "counter", s.give_ups),
        ("rejected_blocks_total", "counter", s.rejected),
        ("malformed_total", "counter", s.ignored.malformed),
    ] {
        let _ = write!(
            out,
            "# TYPE antientropy_{name} {kind}\nantientropy_{name} {value}\n"
        );
    }
    for (peer, p) in requester.peer_stats_iter() {
        let srtt = p.srtt.unwrap_or_default().as_secs_f64();
        let _ = writeln!(
            out,
            "antientropy_peer_requests_sent_total{{peer=\"{peer}\"}} {}",
            p.requests
        );
        let _ = writeln!(
            out,
            "antientropy_peer_blocks_total{{peer=\"{peer}\"}} {}",
            p.blocks
        );
        let _ = writeln!(
            out,
            "antientropy_peer_timeouts_total{{peer=\"{peer}\"}} {}",
            p.timeouts
        );
        let _ = writeln!(
            out,
            "antientropy_peer_srtt_seconds{{peer=\"{peer}\"}} {srtt}"
        );
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let blocks = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(tcp_catchup::serve(listener, blocks));
    let requester = tcp_catchup::fetch(address, blocks).await?;
    server.abort();
    print!("{}", prometheus(&requester));
    Ok(())
}

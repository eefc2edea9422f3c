//! Catch-up in a simulated cluster: how long a lagging peer takes to fetch
//! the blocks it lacks, under Fabric's algorithm and under ours.
//!
//! ```text
//! cargo run --release --example catchup
//! cargo run --release --example catchup -- --laggers 3 --loss 0.01 --byzantine 1 --json
//! cargo run --release --example catchup -- --scenario huge --preset default --set window_bytes=268435456
//! cargo run --release --example catchup -- --help
//! ```
//!
//! Without flags: 4 up-to-date peers, one peer 10 000 blocks of 64 KiB
//! behind, 100 ms round trip, 100 Mbit/s uplinks and 1 Gbit/s downlinks,
//! run with `Config::fabric()` and `Config::default()` on the same seed.
//! Everything runs in virtual time in the deterministic simulator
//! (`antientropy::sim`): the same flags and seed print the same numbers.
//!
//! The table compares each run's catch-up time with a lower bound: one-way
//! latency + bytes / min(lagger downlink, summed uplinks of the peers that
//! serve valid blocks), or for several laggers the Kumar–Ross bound
//! `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` plus the latency (see
//! `antientropy::sim::Bound`). `--json` prints one JSON object per run
//! instead. The exit status is 1 if a run did not converge or broke an
//! invariant.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use antientropy::sim::{
    matrix, random_links, BurstLoss, Chain, Link, NodeId, Overclaim, Report, Scenario, Simulation,
};
use antientropy::Config;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Largest chain the example builds (it is held in memory once).
const MAX_CHAIN_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// `Config::fabric()`: Fabric's algorithm and defaults.
    Fabric,
    /// `Config::default()`: the pipelined multi-peer engine.
    Default,
    /// Both, on the same scenario and seed.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OverclaimMode {
    /// Never answers.
    Silent,
    /// Answers with no payload.
    Empty,
    /// Serves what it holds.
    Partial,
}

fn split_parts(s: &str, n: usize) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != n {
        return Err(format!("`{s}`: expected {n} `:`-separated parts"));
    }
    Ok(parts)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{v} s is outside 0..=86400"));
    }
    Ok(v)
}

fn parse_node(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("`{s}` is not a node index"))
}

fn parse_crash(s: &str) -> Result<(usize, f64, f64), String> {
    let p = split_parts(s, 3)?;
    Ok((parse_node(p[0])?, parse_secs(p[1])?, parse_secs(p[2])?))
}

fn parse_rollback(s: &str) -> Result<(usize, f64, f64, u64), String> {
    let p = split_parts(s, 4)?;
    let height = p[3]
        .parse()
        .map_err(|_| format!("`{}` is not a ledger height", p[3]))?;
    Ok((
        parse_node(p[0])?,
        parse_secs(p[1])?,
        parse_secs(p[2])?,
        height,
    ))
}

fn parse_bursts(s: &str) -> Result<BurstLoss, String> {
    let p = split_parts(s, 3)?;
    let (every, length) = (parse_secs(p[0])?, parse_secs(p[1])?);
    if every <= 0.0 || length <= 0.0 {
        return Err("bursts last a while, a while apart".into());
    }
    Ok(BurstLoss {
        every: Duration::from_secs_f64(every),
        length: Duration::from_secs_f64(length),
        loss: parse_probability(p[2])?,
    })
}

fn parse_slowdown(s: &str) -> Result<(usize, f64, f64, Option<f64>), String> {
    let (p, until) = match split_parts(s, 4) {
        Ok(p) => {
            let until = parse_secs(p[3])?;
            (p, Some(until))
        }
        Err(_) => (split_parts(s, 3)?, None),
    };
    let mbps = parse_bandwidth(p[2])?;
    Ok((parse_node(p[0])?, parse_secs(p[1])?, mbps, until))
}

fn parse_at(s: &str) -> Result<(usize, f64), String> {
    let p = split_parts(s, 2)?;
    Ok((parse_node(p[0])?, parse_secs(p[1])?))
}

fn parse_commit_ms(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if !(0.0..=10_000.0).contains(&v) {
        return Err(format!("{v} ms is outside 0..=10000"));
    }
    Ok(v)
}

fn parse_hang(s: &str) -> Result<(usize, f64, Option<f64>), String> {
    match split_parts(s, 2) {
        Ok(p) => Ok((parse_node(p[0])?, parse_secs(p[1])?, None)),
        Err(_) => {
            let p = split_parts(s, 3)?;
            Ok((
                parse_node(p[0])?,
                parse_secs(p[1])?,
                Some(parse_secs(p[2])?),
            ))
        }
    }
}

fn parse_partition(s: &str) -> Result<(Vec<usize>, f64, f64), String> {
    let p = split_parts(s, 3)?;
    let side = p[0]
        .split(',')
        .map(parse_node)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((side, parse_secs(p[1])?, parse_secs(p[2])?))
}

fn parse_links(s: &str) -> Result<Vec<(f64, f64, f64)>, String> {
    s.split(',')
        .map(|link| {
            let p: Vec<&str> = link.split('/').collect();
            if p.len() != 3 {
                return Err(format!("`{link}`: expected LAT_MS/UP_MBPS/DOWN_MBPS"));
            }
            Ok((
                parse_rtt(p[0])?,
                parse_bandwidth(p[1])?,
                parse_bandwidth(p[2])?,
            ))
        })
        .collect()
}

/// Simulates a Fabric channel where lagging peers catch up by state
/// transfer, and compares the catch-up time with a lower bound.
#[derive(Debug, Parser)]
#[command(name = "catchup", version)]
struct Cli {
    /// Up-to-date peers (faulty ones included).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    peers: u64,
    /// Peers that start with only the genesis block and catch up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    laggers: u64,
    /// Blocks the laggers lack.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    blocks: u64,
    /// Bytes of data per block.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    block_size: u64,
    /// Round-trip time between any two peers, milliseconds.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rtt)]
    rtt_ms: f64,
    /// Every peer's uplink, Mbit/s.
    #[arg(long, default_value_t = 100.0, value_parser = parse_bandwidth)]
    uplink_mbps: f64,
    /// Every peer's downlink, Mbit/s.
    #[arg(long, default_value_t = 1000.0, value_parser = parse_bandwidth)]
    downlink_mbps: f64,
    /// Probability that a message is lost (0 to below 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    /// Losses in bursts on every connection, `EVERY_S:LENGTH_S:LOSS`: a
    /// connection's bursts come EVERY_S seconds apart and last LENGTH_S on
    /// average, each message sent in one lost with probability LOSS
    /// (instead of `--loss`).
    #[arg(long, value_parser = parse_bursts)]
    burst_loss: Option<BurstLoss>,
    /// Probability that a message is delivered twice (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    dup: f64,
    /// Probability that a message is delayed so that later ones overtake it (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    reorder: f64,
    /// Up-to-date peers that never answer.
    #[arg(long, default_value_t = 0)]
    silent: u64,
    /// Up-to-date peers that take 500 ms more per read.
    #[arg(long, default_value_t = 0)]
    slow: u64,
    /// Peers that advertise the whole chain but hold only its first half.
    #[arg(long, default_value_t = 0)]
    lying: u64,
    /// Up-to-date peers that answer with forged blocks, wrong nonces,
    /// out-of-range payloads or garbage.
    #[arg(long, default_value_t = 0)]
    byzantine: u64,
    /// Up-to-date peers that answer like honest ones but silently drop
    /// every request for a range holding one of their chosen blocks (about
    /// one in 16).
    #[arg(long, default_value_t = 0)]
    droppers: u64,
    /// Up-to-date peers that advertise `--overclaim-by` blocks more than
    /// they hold.
    #[arg(long, default_value_t = 0)]
    overclaim: u64,
    /// How an overclaimer answers.
    #[arg(long, value_enum, default_value_t = OverclaimMode::Silent)]
    overclaim_mode: OverclaimMode,
    /// How far above the chain overclaimers advertise, in blocks.
    #[arg(long, default_value_t = 1000)]
    overclaim_by: u64,
    /// A block that is corrupt at `--corrupt-sources` of its sources
    /// (repeatable: each further block is bad from the next up-to-date peer
    /// on, so with one source each, different peers hold the bad copies).
    #[arg(long)]
    corrupt_block: Vec<u64>,
    /// How many sources of each `--corrupt-block` hold a bad copy (default:
    /// all).
    #[arg(long)]
    corrupt_sources: Option<usize>,
    /// A crash and restart, `NODE:AT_S:DOWN_S` (repeatable; nodes are the
    /// up-to-date peers, then the laggers, then the flooders).
    #[arg(long, value_parser = parse_crash)]
    crash: Vec<(usize, f64, f64)>,
    /// A crash after which the node's ledger is cut back,
    /// `NODE:AT_S:DOWN_S:HEIGHT` (repeatable; an honest peer or a lagger):
    /// `peer node rollback`, or a ledger restored from an older backup.
    #[arg(long, value_parser = parse_rollback)]
    rollback: Vec<(usize, f64, f64, u64)>,
    /// A peer that joins late, `NODE:AT_S` (repeatable).
    #[arg(long, value_parser = parse_at)]
    join: Vec<(usize, f64)>,
    /// A peer that leaves for good, `NODE:AT_S` (repeatable).
    #[arg(long, value_parser = parse_at)]
    leave: Vec<(usize, f64)>,
    /// An up-to-date peer that hangs while connected, `NODE:AT_S:FOR_S`, or
    /// `NODE:AT_S` for good (repeatable): it takes requests and answers
    /// none, and keeps advertising its height.
    #[arg(long, value_parser = parse_hang)]
    hang: Vec<(usize, f64, Option<f64>)>,
    /// How long a lagger's ledger takes to verify and commit one block,
    /// in milliseconds, its process busy meanwhile (0: instant).
    #[arg(long, default_value_t = 0.0, value_parser = parse_commit_ms)]
    commit_ms: f64,
    /// A node whose process is paused, `NODE:AT_S:FOR_S` (repeatable): it
    /// handles nothing meanwhile, stays connected, and on resuming handles
    /// what arrived, then its timers.
    #[arg(long, value_parser = parse_crash)]
    pause: Vec<(usize, f64, f64)>,
    /// A node whose uplink slows down, `NODE:AT_S:MBPS:FOR_S`, or
    /// `NODE:AT_S:MBPS` for good (repeatable): it carries MBPS from AT_S,
    /// then its own rate again.
    #[arg(long, value_parser = parse_slowdown)]
    slowdown: Vec<(usize, f64, f64, Option<f64>)>,
    /// A partition that heals, `N1,N2,...:FROM_S:UNTIL_S` (repeatable).
    #[arg(long, value_parser = parse_partition)]
    partition: Vec<(Vec<usize>, f64, f64)>,
    /// Per-node links, `LAT_MS/UP_MBPS/DOWN_MBPS` comma-separated, in node
    /// order (nodes past the list keep the uniform flags).
    #[arg(long, value_parser = parse_links)]
    links: Option<Vec<(f64, f64, f64)>>,
    /// Draw every node's link from this seed (latency share 1-150 ms,
    /// bandwidths 2 Mbit/s to 1 Gbit/s).
    #[arg(long, conflicts_with = "links")]
    random_links: Option<u64>,
    /// Flooders: send valid state requests to every responder as fast as
    /// their uplink allows. The run is repeated without them to compare.
    #[arg(long, default_value_t = 0)]
    flooders: u64,
    /// A flooder's uplink, Mbit/s.
    #[arg(long, default_value_t = 1.0, value_parser = parse_bandwidth)]
    flooder_mbps: f64,
    /// Which configuration to run.
    #[arg(long, value_enum, default_value_t = Preset::Both)]
    preset: Preset,
    /// Run a named scenario of the matrix instead of the cluster the flags
    /// describe (`all`: every one, one table); the cluster flags are then
    /// ignored, `--preset`, `--seed` and `--json` apply. Names: lan, wan,
    /// one-peer, tiny, huge, thin, hetero, hostile, many-laggers, crowd.
    #[arg(long, value_parser = parse_scenario_name)]
    scenario: Option<String>,
    /// Change a `Config` field of every preset run, `FIELD=VALUE`
    /// (repeatable): durations in ms (`response_timeout=3000`), sizes in
    /// bytes, booleans `true`/`false`, `hedge_after=off`. Fields:
    /// check_interval, batch_size, response_timeout, adaptive_timeout,
    /// min_response_timeout, max_response_timeout, max_retries,
    /// max_in_flight, max_in_flight_per_peer, adaptive_window, hedge_after,
    /// block_buffer, window_blocks, window_bytes, max_message_size,
    /// max_response_bytes, max_requests_per_peer, max_queued_requests,
    /// max_concurrent_reads, read_timeout, background_repeaters,
    /// fair_queue, favoured_peers.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = parse_knob)]
    knobs: Vec<(String, String)>,
    /// Seed of every random choice (faults, peers' choices).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object per run instead of the table.
    #[arg(long)]
    json: bool,
    /// Print a trace of this node's requester to stderr after each run:
    /// every request, answer, give-up and commit with its virtual time
    /// (nodes are numbered as for `--crash`; the first lagger is `--peers`).
    #[arg(long)]
    trace: Option<usize>,
}

fn parse_knob(s: &str) -> Result<(String, String), String> {
    let (field, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected FIELD=VALUE"))?;
    // Checked here so that a typo fails before any run.
    set_knob(&mut Config::default(), field, value)?;
    Ok((field.to_owned(), value.to_owned()))
}

/// Sets one `Config` field by name (see `--set`).
fn set_knob(config: &mut Config, field: &str, value: &str) -> Result<(), String> {
    let number = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("`{field}={value}`: not a number"))
    };
    let size = || number().map(|n| n as usize);
    let ms = || number().map(Duration::from_millis);
    let flag = || {
        value
            .parse::<bool>()
            .map_err(|_| format!("`{field}={value}`: not true or false"))
    };
    match field {
        "check_interval" => config.check_interval = ms()?,
        "batch_size" => config.batch_size = number()?,
        "response_timeout" => config.response_timeout = ms()?,
        "adaptive_timeout" => config.adaptive_timeout = flag()?,
        "min_response_timeout" => config.min_response_timeout = ms()?,
        "max_response_timeout" => config.max_response_timeout = ms()?,
        "max_retries" => {
            config.max_retries = u32::try_from(number()?).map_err(|e| e.to_string())?
        }
        "max_in_flight" => config.max_in_flight = size()?,
        "max_in_flight_per_peer" => config.max_in_flight_per_peer = size()?,
        "adaptive_window" => config.adaptive_window = flag()?,
        "hedge_after" if value == "off" => config.hedge_after = None,
        "hedge_after" => config.hedge_after = Some(ms()?),
        "block_buffer" => config.block_buffer = number()?,
        "window_blocks" => config.window_blocks = number()?,
        "window_bytes" => config.window_bytes = number()?,
        "max_message_size" => config.max_message_size = size()?,
        "max_response_bytes" => config.max_response_bytes = size()?,
        "max_requests_per_peer" => config.max_requests_per_peer = size()?,
        "max_queued_requests" => config.max_queued_requests = size()?,
        "max_concurrent_reads" => config.max_concurrent_reads = size()?,
        "read_timeout" => config.read_timeout = ms()?,
        "background_repeaters" => config.background_repeaters = flag()?,
        "fair_queue" => config.fair_queue = flag()?,
        "favoured_peers" => config.favoured_peers = size()?,
        _ => {
            return Err(format!(
                "`{field}` is not a field `--set` knows (see --help)"
            ))
        }
    }
    Ok(())
}

fn parse_scenario_name(s: &str) -> Result<String, String> {
    if s == "all" || matrix::named(s).is_some() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a scenario; one of: all, {}",
            matrix::NAMES.join(", ")
        ))
    }
}

fn parse_f64(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(value)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p = parse_f64(s)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not a probability between 0 and 1"));
    }
    Ok(p)
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let p = parse_probability(s)?;
    if p >= 1.0 {
        return Err("a loss of 1 delivers nothing; use a value below 1".into());
    }
    Ok(p)
}

fn parse_rtt(s: &str) -> Result<f64, String> {
    let ms = parse_f64(s)?;
    if !(0.0..=600_000.0).contains(&ms) {
        return Err(format!("{ms} ms is outside 0..=600000"));
    }
    Ok(ms)
}

fn parse_bandwidth(s: &str) -> Result<f64, String> {
    let mbps = parse_f64(s)?;
    if !(0.001..=1_000_000.0).contains(&mbps) {
        return Err(format!("{mbps} Mbit/s is outside 0.001..=1000000"));
    }
    Ok(mbps)
}

impl Cli {
    /// The scenario, or a clap-style error for combinations no single flag
    /// can check.
    fn scenario(&self) -> Result<Scenario, clap::Error> {
        let faulty = self.silent + self.slow + self.lying + self.byzantine;
        if faulty >= self.peers {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--silent, --slow, --lying and --byzantine name {faulty} of {} peers; \
                     at least one must stay honest (raise --peers)",
                    self.peers
                ),
            ));
        }
        let chain_bytes = self
            .blocks
            .saturating_add(1)
            .saturating_mul(self.block_size);
        if chain_bytes > MAX_CHAIN_BYTES {
            return Err(Cli::command().error(
                ErrorKind::ValueValidation,
                format!(
                    "--blocks × --block-size is {:.1} GiB; the simulator holds the chain in memory, at most {} GiB",
                    chain_bytes as f64 / f64::from(1 << 30),
                    MAX_CHAIN_BYTES >> 30
                ),
            ));
        }
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let bps = |mbps: f64| ((mbps * 1e6).round() as u64).max(1);
        let base = Scenario {
            peers: as_usize(self.peers),
            laggers: as_usize(self.laggers),
            blocks: self.blocks,
            block_size: as_usize(self.block_size),
            latency: Duration::from_secs_f64(self.rtt_ms / 2000.0),
            uplink_bps: bps(self.uplink_mbps),
            downlink_bps: bps(self.downlink_mbps),
            loss: self.loss,
            burst_loss: self.burst_loss,
            duplicate: self.dup,
            reorder: self.reorder,
            commit_time: Duration::from_secs_f64(self.commit_ms / 1000.0),
            ..Scenario::default()
        }
        .with_faults(
            as_usize(self.silent),
            as_usize(self.slow),
            as_usize(self.lying),
            as_usize(self.byzantine),
        );
        let mode = match self.overclaim_mode {
            OverclaimMode::Silent => Overclaim::Silent,
            OverclaimMode::Empty => Overclaim::Empty,
            OverclaimMode::Partial => Overclaim::Partial,
        };
        let secs = Duration::from_secs_f64;
        let mut s = base
            .with_overclaimers(as_usize(self.overclaim), mode, self.overclaim_by)
            .with_droppers(as_usize(self.droppers))
            .with_flooders(as_usize(self.flooders));
        for &seq in &self.corrupt_block {
            s = s.with_corrupt_block(seq, self.corrupt_sources.unwrap_or(usize::MAX));
        }
        for &(node, at, down) in &self.crash {
            s = s.with_crash(node, secs(at), secs(down));
        }
        for &(node, at, down, height) in &self.rollback {
            s = s.with_rollback(node, secs(at), secs(down), height);
        }
        for &(node, at) in &self.join {
            s = s.with_join(node, secs(at));
        }
        for &(node, at) in &self.leave {
            s = s.with_leave(node, secs(at));
        }
        for &(node, at, paused_for) in &self.pause {
            s = s.with_pause(node, secs(at), secs(paused_for));
        }
        for &(node, at, hung_for) in &self.hang {
            s = s.with_hang(node, secs(at), hung_for.map(secs));
        }
        for &(node, at, mbps, slow_for) in &self.slowdown {
            s = s.with_slowdown(node, secs(at), slow_for.map(secs), bps(mbps));
        }
        for (side, from, until) in &self.partition {
            s = s.with_partition(side.iter().copied(), secs(*from), secs(*until));
        }
        let nodes = s.peers + s.laggers;
        let mut links: Vec<Link> = match (&self.links, self.random_links) {
            (Some(list), _) => list
                .iter()
                .map(|&(lat, up, down)| Link {
                    latency: Duration::from_secs_f64(lat / 1000.0),
                    uplink_bps: bps(up),
                    downlink_bps: bps(down),
                })
                .collect(),
            (None, Some(seed)) => random_links(
                seed,
                nodes,
                1..=150,
                &[2_000_000, 20_000_000, 100_000_000, 1_000_000_000],
            ),
            (None, None) => Vec::new(),
        };
        if self.flooders > 0 {
            links.extend((links.len()..nodes).map(|i| s.link(i)));
            // Flooders are the last up-to-date peers, before the laggers.
            let first = s.peers - as_usize(self.flooders);
            for link in &mut links[first..s.peers] {
                link.uplink_bps = bps(self.flooder_mbps);
            }
        }
        Ok(s.with_links(links))
    }

    /// The same cluster with its flooders idle, for comparison: every
    /// fault but the flood stays, and so do node indices, links and the
    /// other nodes' random draws.
    fn unattacked(&self, scenario: &Scenario) -> Option<Scenario> {
        (self.flooders > 0).then(|| Scenario {
            idle_flooders: true,
            ..scenario.clone()
        })
    }

    /// The presets to run, each with the `--set` fields applied (its name
    /// then marked `*`).
    fn presets(&self) -> Vec<(&'static str, Config)> {
        let changed = !self.knobs.is_empty();
        let fabric = (if changed { "fabric*" } else { "fabric" }, Config::fabric());
        let default = (
            if changed { "default*" } else { "default" },
            Config::default(),
        );
        let mut presets = match self.preset {
            Preset::Fabric => vec![fabric],
            Preset::Default => vec![default],
            Preset::Both => vec![fabric, default],
        };
        for (_, config) in &mut presets {
            for (field, value) in &self.knobs {
                if let Err(error) = set_knob(config, field, value) {
                    Cli::command()
                        .error(ErrorKind::ValueValidation, error)
                        .exit();
                }
            }
            if let Err(error) = config.validate() {
                Cli::command()
                    .error(ErrorKind::ValueValidation, format!("--set: {error}"))
                    .exit();
            }
        }
        presets
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(name) = &cli.scenario {
        return run_matrix(&cli, name);
    }
    let scenario = match cli.scenario() {
        Ok(scenario) => scenario,
        Err(error) => error.exit(),
    };
    if let Err(error) = scenario.validate() {
        Cli::command()
            .error(ErrorKind::ValueValidation, error)
            .exit();
    }

    let building = ProgressBar::new_spinner().with_message(format!(
        "building {} blocks of {} …",
        scenario.target_height(),
        bytes(scenario.block_size as f64)
    ));
    building.enable_steady_tick(Duration::from_millis(100));
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    building.finish_and_clear();

    let mut reports = Vec::new();
    let unattacked = cli.unattacked(&scenario);
    for (preset, config) in cli.presets() {
        if let Some(calm) = &unattacked {
            let mut sim =
                match Simulation::with_chain(calm.clone(), config.clone(), cli.seed, chain.clone())
                {
                    Ok(sim) => sim,
                    Err(error) => Cli::command()
                        .error(ErrorKind::ValueValidation, error)
                        .exit(),
                };
            let report = run(preset, &mut sim, cli.trace);
            if cli.json {
                println!(
                    "{{\"preset\":\"{preset}\",\"attacked\":false,{}}}",
                    report.json_fields()
                );
            } else {
                println!(
                    "{preset}: unattacked catch-up {}, responders' peak queued {} / reading {}",
                    report
                        .catchup
                        .map_or(format!("({})", report.outcome.as_str()), |t| format!(
                            "{:.2} s",
                            t.as_secs_f64()
                        )),
                    report.responder_peak_queued,
                    report.responder_peak_reading
                );
            }
        }
        let sim = Simulation::with_chain(scenario.clone(), config, cli.seed, chain.clone());
        let mut sim = match sim {
            Ok(sim) => sim,
            Err(error) => Cli::command()
                .error(ErrorKind::ValueValidation, error)
                .exit(),
        };
        let report = run(preset, &mut sim, cli.trace);
        if cli.json {
            println!("{{\"preset\":\"{preset}\",{}}}", report.json_fields());
        }
        reports.push((preset, report));
    }
    if !cli.json {
        print_table(&cli, &scenario, &reports);
    }
    if reports.iter().all(|(_, report)| report.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs named scenarios of the matrix with the chosen presets; prints one
/// table (or JSON lines with `--json`).
fn run_matrix(cli: &Cli, name: &str) -> ExitCode {
    let named = if name == "all" {
        matrix::all()
    } else {
        matrix::named(name).into_iter().collect()
    };
    let mut rows = Vec::new();
    for n in &named {
        let chain = Chain::new(n.scenario.target_height(), n.scenario.block_size);
        for (preset, config) in cli.presets() {
            let sim = Simulation::with_chain(n.scenario.clone(), config, cli.seed, chain.clone());
            let mut sim = match sim {
                Ok(sim) => sim,
                Err(error) => Cli::command()
                    .error(ErrorKind::ValueValidation, error)
                    .exit(),
            };
            let report = run(&format!("{} {preset}", n.name), &mut sim, cli.trace);
            if cli.json {
                println!(
                    "{{\"scenario\":\"{}\",\"preset\":\"{preset}\",{}}}",
                    n.name,
                    report.json_fields()
                );
            }
            rows.push((n.name, preset, report));
        }
    }
    if !cli.json {
        println!(
            "{:<13} {:<8} {:>10} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>8} {:>12} {:>8}",
            "scenario",
            "preset",
            "catch-up",
            "bound",
            "ratio",
            "gossip×",
            "requests",
            "timeouts",
            "req/block",
            "bytes×",
            "peak buffer",
            "wall"
        );
        for (name, preset, r) in &rows {
            let catchup = match r.catchup {
                Some(t) => format!("{:.2} s", t.as_secs_f64()),
                None => format!("({})", r.outcome.as_str()),
            };
            println!(
                "{:<13} {:<8} {:>10} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9.3} {:>8.3} {:>12} {:>8}",
                name,
                preset,
                catchup,
                format!("{:.2} s", r.bound.value().as_secs_f64()),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
                r.gossip_ratio().map_or("-".into(), |x| format!("{x:.2}")),
                r.requests,
                r.timeouts,
                r.worst_requests_per_block(),
                r.worst_bytes_ratio(),
                bytes(r.peak_buffer_bytes as f64),
                r.wall
                    .map_or("-".into(), |w| format!("{:.2} s", w.as_secs_f64())),
            );
        }
        println!();
        for n in &named {
            println!("{:<13} {}", n.name, n.about);
        }
        println!(
            "seed {}; ratio = catch-up / bound; gossip× = catch-up / the bound that knows laggers hear of each other once per state-info interval and slow peers start late (`antientropy::sim::Bound`)",
            cli.seed
        );
    }
    if rows.iter().all(|(_, _, r)| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one simulation with a progress bar on stderr; fills in wall time.
fn run(preset: &str, sim: &mut Simulation, trace: Option<usize>) -> Report {
    if let Some(node) = trace {
        sim.trace(NodeId(node));
    }
    let total = sim.progress().blocks_total;
    let bar = ProgressBar::new(total).with_prefix(preset.to_string());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} blocks, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // The example, not the simulator, reads the wall clock.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let mut report = sim.run(|p| {
        bar.set_position(p.blocks_committed);
        bar.set_message(format!("virtual {:.1} s", p.virtual_time.as_secs_f64()));
    });
    report.wall = Some(started.elapsed());
    bar.finish_and_clear();
    if let Some(node) = trace {
        eprintln!("--- trace of n{node}, {preset}");
        for line in sim.take_trace() {
            eprintln!("{line}");
        }
    }
    report
}

fn print_table(cli: &Cli, scenario: &Scenario, reports: &[(&str, Report)]) {
    let faults: Vec<String> = [
        ("silent", cli.silent),
        ("slow", cli.slow),
        ("lying", cli.lying),
        ("byzantine", cli.byzantine),
        ("dropping", cli.droppers),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{n} {name}"))
    .collect();
    let faults = if faults.is_empty() {
        "all honest".to_string()
    } else {
        faults.join(", ")
    };
    let bound = reports.first().map(|(_, r)| r.bound);
    println!(
        "{} peers ({faults}), {} lagger{} {} blocks × {} behind ({} each), RTT {} ms, up {} Mbit/s, down {} Mbit/s, \
         loss {}, dup {}, reorder {}, seed {}",
        scenario.peers,
        scenario.laggers,
        if scenario.laggers == 1 { "" } else { "s" },
        scenario.blocks,
        bytes(scenario.block_size as f64),
        bytes(bound.map_or(0.0, |b| b.bytes as f64)),
        cli.rtt_ms,
        cli.uplink_mbps,
        cli.downlink_mbps,
        cli.loss,
        cli.dup,
        cli.reorder,
        cli.seed,
    );
    println!();
    println!(
        "{:<8} {:>10} {:>9} {:>7} {:>9} {:>9} {:>12} {:>8}",
        "preset", "catch-up", "bound", "ratio", "requests", "timeouts", "peak buffer", "wall"
    );
    for (preset, r) in reports {
        let catchup = match r.catchup {
            Some(t) => format!("{:.2} s", t.as_secs_f64()),
            None => format!("({})", r.outcome.as_str()),
        };
        println!(
            "{:<8} {:>10} {:>9} {:>7} {:>9} {:>9} {:>12} {:>8}",
            preset,
            catchup,
            format!("{:.2} s", r.bound.value().as_secs_f64()),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
            r.requests,
            r.timeouts,
            bytes(r.peak_buffer_bytes as f64),
            r.wall
                .map_or("-".into(), |w| format!("{:.2} s", w.as_secs_f64())),
        );
    }
    println!();
    if scenario.laggers == 1 {
        println!("bound: one-way latency + bytes / min(lagger downlink, summed uplinks of peers serving valid blocks)");
    } else {
        println!("bound: one-way latency + Kumar–Ross max(F/u_source, F/d_min, N·F/(u_source + Σ u_laggers))");
    }
    for (preset, r) in reports {
        println!(
            "{preset}: liveness targets {:?}, heights {:?}; requests/block worst {:.3}, bytes received/needed worst {:.3}, within bounds: {}; give-ups {:?}; responders' peak queued {} / reading {}",
            r.lagger_targets,
            r.lagger_heights,
            r.worst_requests_per_block(),
            r.worst_bytes_ratio(),
            r.within_bounds(),
            r.give_ups_by_reason,
            r.responder_peak_queued,
            r.responder_peak_reading,
        );
        for failure in r.failures() {
            println!("{preset}: FAILED {failure}");
        }
        if !r.converged() {
            println!(
                "{preset}: did not converge ({}): lagger heights {:?} of {}",
                r.outcome.as_str(),
                r.lagger_heights,
                scenario.target_height()
            );
        }
        if r.violations > 0 {
            println!("{preset}: {} invariant violations, first:", r.violations);
            for message in &r.violation_messages {
                println!("  {message}");
            }
        }
    }
}

/// A byte count for people: B, KiB, MiB, GiB.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

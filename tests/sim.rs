//! The machines in the deterministic simulator: fault sweeps over fixed
//! seeds with both presets, and determinism.
//!
//! The large sweep (10 000 seeds) is ignored by default; run it with
//! `cargo test --release --all-features --test sim -- --ignored`.
//! Any failure names its seed and preset: replay it with
//! `SIM_SEED=<seed> cargo test --all-features --test sim replay -- --nocapture`
//! (add `SIM_WILD=1` for a seed of the large sweep, `SIM_TRACE=<node>` for
//! a trace of that node's requester, `SIM_CLEAN=1` for its cluster without
//! loss, `SIM_STEADY=1` without timed faults either). `SIM_FINGERPRINT=<file>` writes a
//! hash of each of the large sweep's reports, by seed: two builds that
//! should agree (a speed-up) can be compared run by run; `SIM_FLOOD_OUT=<file>`
//! writes each flooded cluster's cost ratios by seed. `SIM_SEEDS=<n>`
//! and `SIM_SEED_FROM=<first>` sweep other seeds than `0..10 000`.
#![cfg(feature = "sim")]

use std::time::Duration;

use antientropy::sim::{
    random_links, Behaviour, BurstLoss, Chain, Hang, NodeId, Overclaim, Report, Scenario,
    Simulation,
};
use antientropy::Config;

fn presets() -> [(&'static str, Config); 2] {
    [("fabric", Config::fabric()), ("default", Config::default())]
}

/// A small cluster with every fault at once, varied by the seed: 5 or 6
/// up-to-date peers of which one honest, one silent, one slow, one lying and
/// one byzantine (a sixth is honest or byzantine), 1–3 laggers, lossy,
/// duplicating and reordering links.
fn faulty(seed: u64, blocks: u64) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut behaviours = vec![
        Behaviour::Honest,
        Behaviour::Silent,
        Behaviour::Slow,
        Behaviour::Lying,
        Behaviour::Byzantine,
    ];
    if rng.bool() {
        behaviours.push(if rng.bool() {
            Behaviour::Honest
        } else {
            Behaviour::Byzantine
        });
    }
    rng.shuffle(&mut behaviours);
    Scenario {
        peers: behaviours.len(),
        laggers: rng.usize(1..=3),
        blocks,
        block_size: [1024, 2048, 4096][rng.usize(0..3)],
        latency: Duration::from_millis(rng.u64(5..=60)),
        uplink_bps: 50_000_000,
        downlink_bps: 200_000_000,
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: Duration::from_millis(40),
        behaviours,
        send_buffer: 200,
        slow_delay: Duration::from_millis(rng.u64(100..=1500)),
        state_info_interval: Duration::from_secs(4),
        max_steps: 2_000_000,
        max_virtual_time: Duration::from_secs(6 * 3600),
        ..Scenario::default()
    }
}

/// [`faulty`] with a mix of issue #8's faults drawn by the seed.
fn faulty_mixed(seed: u64, blocks: u64) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x0008);
    // No flooder: a flood is thousands of events per virtual second, too
    // many for the CI sweep (the large sweep and a test of its own have
    // them).
    add_faults(&mut rng, faulty(seed, blocks), false)
}

/// Draws a mix of issue #8's faults onto `scenario`: overclaimers (silent,
/// empty or partial), corrupt blocks (one at every source or some, at
/// times with more at one or two sources each), crashes
/// with restarts (any node), joins and leaves (up-to-date peers), a
/// partition that heals, per-node links and a flooder. Each with its own
/// probability, so most seeds mix several.
fn add_faults(rng: &mut fastrand::Rng, mut scenario: Scenario, flooders: bool) -> Scenario {
    let ms = Duration::from_millis;
    if rng.f64() < 0.15 && flooders {
        // Sometimes several flooding identities: more than a short queue
        // has places, they kept every lagger out until places went round.
        // From a fork of the stream, as for more bad blocks below.
        let mut more = fastrand::Rng::with_seed(rng.get_seed() ^ 0x00f1_00d5);
        let count = if more.f64() < 0.3 {
            more.usize(2..=4)
        } else {
            1
        };
        scenario = scenario.with_flooders(count);
    }
    let peers = scenario.peers;
    let nodes = peers + scenario.laggers;
    if rng.f64() < 0.3 {
        let mode = [Overclaim::Silent, Overclaim::Empty, Overclaim::Partial][rng.usize(0..3)];
        scenario = scenario.with_overclaimers(rng.usize(1..=2), mode, rng.u64(1..=2000));
    }
    if rng.f64() < 0.25 {
        let sources = if rng.bool() {
            usize::MAX
        } else {
            rng.usize(1..=2)
        };
        let seq = rng.u64(1..=scenario.blocks);
        scenario = scenario.with_corrupt_block(seq, sources);
        // Sometimes more bad blocks, each at other peers (a property test
        // found a range spanning two peers' bad blocks sent to the wrong
        // one). From a fork of the stream, so that every other draw, and
        // every cluster without them, stays as it was.
        let mut more = fastrand::Rng::with_seed(rng.get_seed() ^ 0x0bad_b10c);
        if more.f64() < 0.4 {
            for _ in 0..more.usize(1..=3) {
                let seq = more.u64(1..=scenario.blocks);
                if scenario.corrupt.iter().all(|c| c.seq != seq) {
                    scenario = scenario.with_corrupt_block(seq, more.usize(1..=2));
                }
            }
        }
    }
    // Peers that hang while connected (no connection event tells; only
    // deadlines do), for a while or for good. From a fork of the stream, so
    // that every other draw stays as it was.
    let mut hung = fastrand::Rng::with_seed(rng.get_seed() ^ 0x4a46_4a46);
    if hung.f64() < 0.2 {
        for _ in 0..hung.usize(1..=2) {
            let from = ms(hung.u64(0..=20_000));
            let hung_for = hung.bool().then(|| ms(hung.u64(100..=20_000)));
            scenario = scenario.with_hang(hung.usize(0..peers), from, hung_for);
        }
    }
    // Processes that stop for a while (a suspended VM, a stopped
    // container), peers or laggers, connected all along. A fork too.
    let mut paused = fastrand::Rng::with_seed(rng.get_seed() ^ 0x5a05_e5e5);
    if paused.f64() < 0.2 {
        for _ in 0..paused.usize(1..=2) {
            let node = paused.usize(0..nodes);
            if node < peers && scenario.behaviour(node) == Behaviour::Flooder {
                continue;
            }
            let from = ms(paused.u64(0..=20_000));
            scenario = scenario.with_pause(node, from, ms(paused.u64(100..=5_000)));
        }
    }
    // Laggers whose ledger commits slowly, the process busy meanwhile (a
    // host committing synchronously): up to 2 ms a block. A fork too.
    let mut slow_commit = fastrand::Rng::with_seed(rng.get_seed() ^ 0xc0_3317);
    if slow_commit.f64() < 0.2 {
        scenario.commit_time = Duration::from_micros(slow_commit.u64(10..=2_000));
    }
    // Losses in bursts on every connection (a queue overflowing, a route
    // flapping): 20 ms to 1 s long, 10 to 100 times that apart (so up to
    // 9 % of the time in bursts). A fork too. Drawn up to 73 % of the time
    // in bursts of 85 % loss (two thirds of all messages lost), a cluster
    // with three flooders took its step cap: not a burst any more, but a
    // link that barely works.
    let mut bursty = fastrand::Rng::with_seed(rng.get_seed() ^ 0xb0_0575);
    if bursty.f64() < 0.2 {
        let length = bursty.u64(20..=1_000);
        scenario.burst_loss = Some(BurstLoss {
            every: ms(length * bursty.u64(10..=100)),
            length: ms(length),
            loss: 0.5 + bursty.f64() / 2.0,
        });
    }
    // Heavy random loss, 20 to 40 % of messages on every connection (a
    // radio link, a saturated path that drops rather than queues), in a
    // twentieth of the clusters without flooders (whose flood cost is
    // read against themselves unattacked: heavy loss would drown it in
    // chaos). At 35 % the default preset idled, taking each loss for a
    // dead or congested peer (`heavy_loss_degrades_gracefully`). A fork.
    let mut lossy = fastrand::Rng::with_seed(rng.get_seed() ^ 0x1055_1055);
    let flooded = scenario.behaviours.contains(&Behaviour::Flooder);
    if lossy.f64() < 0.05 && !flooded {
        scenario.loss = 0.2 + lossy.f64() * 0.2;
    }
    // Peers that drop the requests for chosen blocks, so that a retry to
    // them fails as the first send did, while answering the rest at once:
    // random loss on a working path to the requester, but for good. A fork.
    let mut dropping = fastrand::Rng::with_seed(rng.get_seed() ^ 0xd209_d209);
    if dropping.f64() < 0.15 {
        scenario = scenario.with_droppers(dropping.usize(1..=2));
    }
    let mut touched = std::collections::BTreeSet::new();
    let mut pick = |rng: &mut fastrand::Rng, range: std::ops::Range<usize>| {
        let node = rng.usize(range);
        touched.insert(node).then_some(node)
    };
    for _ in 0..rng.usize(0..=2) {
        if let Some(node) = pick(rng, 0..nodes) {
            scenario =
                scenario.with_crash(node, ms(rng.u64(0..=20_000)), ms(rng.u64(100..=10_000)));
        }
    }
    if rng.f64() < 0.15 && peers > 1 {
        if let Some(node) = pick(rng, 0..peers) {
            scenario = scenario.with_join(node, ms(rng.u64(1..=10_000)));
        }
    }
    if rng.f64() < 0.15 && peers > 1 {
        if let Some(node) = pick(rng, 0..peers) {
            scenario = scenario.with_leave(node, ms(rng.u64(0..=20_000)));
        }
    }
    if rng.f64() < 0.2 {
        let side: Vec<usize> = (0..nodes).filter(|_| rng.bool()).collect();
        let from = ms(rng.u64(0..=20_000));
        scenario = scenario.with_partition(side, from, from + ms(rng.u64(100..=20_000)));
    }
    let flooders: Vec<usize> = (0..peers)
        .filter(|&i| scenario.behaviour(i) == Behaviour::Flooder)
        .collect();
    if rng.bool() || !flooders.is_empty() {
        let mut links: Vec<_> = (0..nodes).map(|i| scenario.link(i)).collect();
        if rng.bool() {
            let bandwidths = [2_000_000, 20_000_000, 100_000_000, 1_000_000_000];
            links = random_links(rng.u64(..), nodes, 1..=150, &bandwidths);
        }
        for &f in &flooders {
            // A flooder's rate is its uplink; 0.2-0.6 Mbit/s of requests
            // (500-1500 a second, in 10 ms bursts) keeps the sweep's step
            // count sane. Several identities share that rate: what they
            // add is more peers to take places, not more requests.
            let share = flooders.len() as u64;
            links[f].uplink_bps = rng.u64(200_000..=600_000) / share;
        }
        if !flooders.is_empty() {
            scenario.max_steps = scenario.max_steps.max(4_000_000);
        }
        scenario = scenario.with_links(links);
    }
    // An honest node (a peer or a lagger) restarts with its ledger cut back
    // (`peer node rollback`, a restored backup): whoever heard its old
    // height believes it until its next `StateInfo`. In a tenth of
    // clusters, on a node without another outage. A fork.
    let mut rolling = fastrand::Rng::with_seed(rng.get_seed() ^ 0x0011_bac4);
    if rolling.f64() < 0.1 {
        let node = rolling.usize(..scenario.peers + scenario.laggers);
        let honest = matches!(
            scenario.behaviour(node),
            Behaviour::Honest | Behaviour::Slow
        );
        let at = ms(rolling.u64(1..=20_000));
        let down_for = ms(rolling.u64(100..=10_000));
        let height = rolling.u64(1..=scenario.target_height());
        if honest && !scenario.outages.iter().any(|o| o.node == node) {
            scenario = scenario.with_rollback(node, at, down_for, height);
        }
    }
    // Links that slow down 10 to 100 times from their own rate (to 50
    // kbit/s at least), one or two nodes', peers' or laggers', for 0.5 to
    // 20 s (three in four) or for good. A fork.
    let mut slowing = fastrand::Rng::with_seed(rng.get_seed() ^ 0x5_10d0);
    if slowing.f64() < 0.2 {
        for _ in 0..slowing.usize(1..=2) {
            let node = slowing.usize(..scenario.peers + scenario.laggers);
            if node < scenario.peers && scenario.behaviour(node) == Behaviour::Flooder {
                continue;
            }
            let from = ms(slowing.u64(0..=20_000));
            let slow_for = (slowing.f64() < 0.75).then(|| ms(slowing.u64(500..=20_000)));
            let rate = (scenario.link(node).uplink_bps / slowing.u64(10..=100)).max(50_000);
            scenario = scenario.with_slowdown(node, from, slow_for, rate);
        }
    }
    scenario
}

/// The same cluster, nudged: its machines seeded otherwise and every link
/// 50 µs slower. A change that costs nothing still moves a lossy run this
/// much (timeouts, back-offs and the seed's choices are chaotic), so what a
/// flood costs is read against this.
fn placebo(scenario: &Scenario) -> Scenario {
    let mut nudged = Scenario {
        machine_seed_salt: 0x5eed,
        latency: scenario.latency + Duration::from_micros(50),
        ..scenario.clone()
    };
    for link in &mut nudged.links {
        link.latency += Duration::from_micros(50);
    }
    nudged
}

/// The distribution of ratios `(ratio, seed)`: geometric mean, quantiles,
/// the share within 1.2 and the worst five.
struct Spread {
    geomean: f64,
    median: f64,
    p90: f64,
    max: f64,
    within: f64,
    worst: Vec<(f64, u64)>,
}

impl Spread {
    fn of(ratios: impl Iterator<Item = (f64, u64)>) -> Self {
        let mut ratios: Vec<(f64, u64)> = ratios.collect();
        ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = ratios.len().max(1);
        let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q) as usize].0;
        let log_sum: f64 = ratios.iter().map(|r| r.0.max(1e-9).ln()).sum();
        Self {
            geomean: (log_sum / n as f64).exp(),
            median: at(0.5),
            p90: at(0.9),
            max: at(1.0),
            within: ratios.iter().filter(|r| r.0 <= 1.2).count() as f64 / n as f64,
            worst: ratios.iter().rev().take(5).copied().collect(),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "geometric mean {:.3}, median {:.3}, p90 {:.3}, max {:.3}, {:.1} % within 1.2x; worst (ratio, seed): {:.2?}",
            self.geomean,
            self.median,
            self.p90,
            self.max,
            self.within * 100.0,
            self.worst
        )
    }
}

/// A wilder cluster for the large sweep: any mix of faults (at least one
/// honest up-to-date peer), 1–4 laggers, heavier and varied link faults,
/// bandwidths from 2 Mbit/s to 1 Gbit/s, and a config with small windows and
/// responses (partial answers, back-pressure) on odd seeds.
fn wild(seed: u64, flooders: bool) -> (Scenario, Option<Config>) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x00dd_ba11);
    let peers = rng.usize(1..=7);
    let mut behaviours = vec![Behaviour::Honest];
    let kinds = [
        Behaviour::Honest,
        Behaviour::Silent,
        Behaviour::Slow,
        Behaviour::Lying,
        Behaviour::Byzantine,
    ];
    while behaviours.len() < peers {
        behaviours.push(kinds[rng.usize(0..kinds.len())]);
    }
    rng.shuffle(&mut behaviours);
    let block_size = [256, 1024, 4096, 16 * 1024][rng.usize(0..4)];
    let scenario = Scenario {
        peers,
        laggers: rng.usize(1..=4),
        blocks: rng.u64(20..=160),
        block_size,
        latency: Duration::from_millis(rng.u64(1..=150)),
        uplink_bps: [2_000_000, 20_000_000, 100_000_000, 1_000_000_000][rng.usize(0..4)],
        downlink_bps: [10_000_000, 100_000_000, 1_000_000_000][rng.usize(0..3)],
        loss: rng.f64() * 0.2,
        duplicate: rng.f64() * 0.2,
        reorder: rng.f64() * 0.5,
        reorder_delay: Duration::from_millis(rng.u64(1..=300)),
        behaviours,
        send_buffer: rng.usize(1..=200),
        slow_delay: Duration::from_millis(rng.u64(50..=5000)),
        state_info_interval: Duration::from_millis(rng.u64(500..=10_000)),
        max_steps: 400_000,
        max_virtual_time: Duration::from_secs(12 * 3600),
        ..Scenario::default()
    };
    let scenario = add_faults(&mut rng, scenario, flooders);
    let config = (seed % 2 == 1).then(|| {
        let mut c = Config::default();
        c.window_blocks = rng.u64(11..=40);
        c.window_bytes = (block_size as u64 + 100) * rng.u64(1..=30);
        c.max_response_bytes = block_size * rng.usize(1..=11);
        c.max_in_flight = rng.usize(1..=8);
        c.max_in_flight_per_peer = rng.usize(1..=c.max_in_flight);
        c.block_buffer = rng.u64(1..=30);
        c.max_concurrent_reads = rng.usize(1..=4);
        c.max_queued_requests = rng.usize(1..=8);
        c.max_requests_per_peer = rng.usize(1..=4);
        c
    });
    (scenario, config)
}

fn run(scenario: Scenario, config: Config, seed: u64, chain: Option<&Chain>) -> Report {
    let mut sim = match chain {
        Some(chain) => Simulation::with_chain(scenario, config, seed, chain.clone()),
        None => Simulation::new(scenario, config, seed),
    }
    .expect("valid scenario");
    // `SIM_TRACE=<node>` prints that node's requester trace (for replays).
    let traced = std::env::var("SIM_TRACE").ok().and_then(|n| n.parse().ok());
    if let Some(node) = traced {
        sim.trace(NodeId(node));
    }
    let report = sim.run(|_| {});
    if traced.is_some() {
        for line in sim.take_trace() {
            println!("{line}");
        }
    }
    fingerprint(&report);
    report
}

/// Each report's hash as `(seed, hash)`, in the order the runs ended; kept
/// only with `SIM_FINGERPRINT=<file>`.
static FINGERPRINTS: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// With `SIM_FINGERPRINT=<file>`, remembers a hash of `report` (all of it:
/// outcome, times, counters, violations), so that a change meant to leave
/// results alone (a speed-up) can be checked against the build before it
/// run by run ([`write_fingerprints`]).
fn fingerprint(report: &Report) {
    use std::hash::{Hash, Hasher};
    if std::env::var_os("SIM_FINGERPRINT").is_none() {
        return;
    }
    // `DefaultHasher::new()` has fixed keys: the same report, the same hash.
    let mut hasher = std::hash::DefaultHasher::new();
    format!("{report:?}").hash(&mut hasher);
    let mut prints = FINGERPRINTS.lock().expect("fingerprints");
    prints.push((report.seed, hasher.finish()));
}

/// Writes the fingerprints to `SIM_FINGERPRINT`, one line per run, by seed
/// (a seed's runs are made in order on one thread, so a stable sort keeps
/// their order).
fn write_fingerprints() {
    let Some(path) = std::env::var_os("SIM_FINGERPRINT") else {
        return;
    };
    let mut prints = std::mem::take(&mut *FINGERPRINTS.lock().expect("fingerprints"));
    prints.sort_by_key(|&(seed, _)| seed);
    let lines: String = prints
        .iter()
        .map(|(seed, hash)| format!("{seed} {hash:016x}\n"))
        .collect();
    std::fs::write(path, lines).expect("write SIM_FINGERPRINT");
}

fn assert_passed(report: &Report, preset: &str, scenario: &Scenario) {
    assert!(
        report.passed(),
        "seed {} preset {preset} failed: {:?}: {:#?}\nscenario: {scenario:#?}\nreport: {report:#?}",
        report.seed,
        report.failures(),
        report.violation_messages,
    );
}

/// Every fault at once, both presets, a fixed set of seeds: every lagger
/// catches up and no invariant breaks.
#[test]
fn fault_sweep_converges_without_violations() {
    for seed in 1..=24 {
        let scenario = faulty_mixed(seed, 300);
        let chain = Chain::new(scenario.target_height(), scenario.block_size);
        for (preset, config) in presets() {
            let report = run(scenario.clone(), config, seed, Some(&chain));
            assert_passed(&report, preset, &scenario);
            assert_eq!(report.lagger_heights, report.lagger_targets);
        }
    }
}

/// A sample of the large sweep's wild clusters, with small windows and
/// responses on odd seeds (back-pressure and partial answers).
#[test]
fn wild_sample_converges_without_violations() {
    for seed in 1..=48 {
        let (scenario, tuned) = wild(seed, false);
        let chain = Chain::new(scenario.target_height(), scenario.block_size);
        let mut configs: Vec<(&str, Config)> = presets().into();
        configs.extend(tuned.map(|c| ("tuned", c)));
        for (preset, config) in configs {
            let report = run(scenario.clone(), config, seed, Some(&chain));
            assert_passed(&report, preset, &scenario);
        }
    }
}

/// Each fault alone, both presets.
#[test]
fn each_fault_alone_converges() {
    let base = Scenario {
        peers: 3,
        laggers: 1,
        blocks: 200,
        block_size: 2048,
        max_steps: 1_000_000,
        ..Scenario::default()
    };
    let cases = [
        (
            "loss",
            Scenario {
                loss: 0.2,
                ..base.clone()
            },
        ),
        (
            "duplicate",
            Scenario {
                duplicate: 0.3,
                ..base.clone()
            },
        ),
        (
            "reorder",
            Scenario {
                reorder: 0.5,
                ..base.clone()
            },
        ),
        ("silent", base.clone().with_faults(2, 0, 0, 0)),
        ("slow", base.clone().with_faults(0, 2, 0, 0)),
        ("lying", base.clone().with_faults(0, 0, 2, 0)),
        ("byzantine", base.clone().with_faults(0, 0, 0, 2)),
        (
            "laggers",
            Scenario {
                laggers: 4,
                ..base.clone()
            },
        ),
    ];
    for (name, scenario) in cases {
        for (preset, config) in presets() {
            let report = run(scenario.clone(), config, 42, None);
            assert_passed(&report, &format!("{preset} ({name})"), &scenario);
        }
    }
}

/// Byzantine peers get blocks rejected and requests ignored, and the
/// laggers still finish.
#[test]
fn byzantine_answers_are_rejected_or_ignored() {
    let scenario = Scenario {
        peers: 4,
        blocks: 300,
        block_size: 1024,
        ..Scenario::default()
    }
    .with_faults(0, 0, 0, 3);
    let report = run(scenario.clone(), Config::default(), 3, None);
    assert_passed(&report, "default", &scenario);
    assert!(report.rejected > 0, "{report:#?}");
    assert!(report.ignored > 0, "{report:#?}");
}

/// Same seed, same report (wall time aside); another seed, another run.
#[test]
fn same_seed_same_report() {
    let scenario = faulty(11, 200);
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    for (preset, config) in presets() {
        let a = run(scenario.clone(), config.clone(), 11, Some(&chain));
        let b = run(scenario.clone(), config.clone(), 11, Some(&chain));
        let c = run(scenario.clone(), config, 12, Some(&chain));
        assert_passed(&a, preset, &scenario);
        assert_eq!(a, b, "{preset}");
        assert_eq!(a.to_json(), b.to_json(), "{preset}");
        assert_ne!(a, c, "{preset}: another seed should change something");
    }
}

/// On a clean network the pipelined preset gets near the bound and far
/// ahead of Fabric's; the report's JSON parses.
#[test]
fn default_preset_beats_fabric_on_a_clean_network() {
    let scenario = Scenario {
        blocks: 500,
        block_size: 16 * 1024,
        ..Scenario::default()
    };
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    let fabric = run(scenario.clone(), Config::fabric(), 5, Some(&chain));
    let ours = run(scenario.clone(), Config::default(), 5, Some(&chain));
    assert_passed(&fabric, "fabric", &scenario);
    assert_passed(&ours, "default", &scenario);
    let (f, o) = (fabric.ratio().unwrap(), ours.ratio().unwrap());
    assert!(o >= 1.0 && f >= 1.0, "nothing beats the bound: {o} {f}");
    assert!(o < 3.0, "default preset ratio {o}");
    assert!(f > 2.0 * o, "fabric {f} vs default {o}");
    for report in [&fabric, &ours] {
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
        assert_eq!(json["converged"], true);
        assert_eq!(json["invariant_violations"], 0);
        assert!(json["catchup_s"].as_f64().unwrap() > 0.0);
    }
}

/// A step cap reports a livelock instead of hanging.
#[test]
fn step_cap_stops_the_run() {
    let scenario = Scenario {
        blocks: 300,
        block_size: 1024,
        max_steps: 10,
        ..Scenario::default()
    };
    let report = run(scenario, Config::fabric(), 1, None);
    assert_eq!(report.outcome, antientropy::sim::Outcome::StepCap);
    assert!(!report.converged());
    assert_eq!(report.steps, 10);
    assert_eq!(report.catchup, None);
}

/// A response that takes longer than `response_timeout` (2 s) to cross a
/// slow uplink (11 × 64 KiB at 1 Mbit/s: 5.8 s) must not stall the
/// pipelined preset. Regression: an earlier requester timed out every
/// request and gave each range up before its late response arrived (then
/// ignored as an unknown nonce), so it never measured a round trip and its
/// deadline never grew: congestion collapse, no progress in 24 virtual
/// hours, while Fabric's preset converged.
#[test]
fn slow_uplink_converges() {
    let scenario = Scenario {
        uplink_bps: 1_000_000,
        blocks: 100,
        max_virtual_time: Duration::from_secs(3600),
        ..Scenario::default()
    };
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    for (preset, config) in presets() {
        let report = run(scenario.clone(), config, 1, Some(&chain));
        assert_passed(&report, preset, &scenario);
    }
}

/// Seeds of the large sweep where an earlier requester collapsed: four
/// laggers pipelining into one honest peer with a 2 Mbit/s uplink (180 KB
/// per response), whose queue outgrew every deadline; every request timed
/// out, every late response was ignored, and the step cap stopped the run.
#[test]
fn contended_slow_peer_converges() {
    for seed in [108, 485, 1391] {
        let (scenario, _) = wild(seed, false);
        let chain = Chain::new(scenario.target_height(), scenario.block_size);
        for (preset, config) in presets() {
            let report = run(scenario.clone(), config, seed, Some(&chain));
            assert_passed(&report, preset, &scenario);
        }
    }
}

/// Replays one seed of the fault sweep from `SIM_SEED`:
/// `SIM_SEED=<n> [SIM_WILD=1] cargo test --all-features --test sim replay -- --ignored --nocapture`.
#[test]
#[ignore = "needs SIM_SEED"]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) else {
        return;
    };
    let (scenario, configs) = if std::env::var_os("SIM_WILD").is_some() {
        let flooders = std::env::var("SIM_FLOODERS").map_or(true, |v| v != "0");
        let (scenario, tuned) = wild(seed, flooders);
        let mut configs: Vec<(&str, Config)> = presets().into();
        configs.extend(tuned.map(|c| ("tuned", c)));
        (scenario, configs)
    } else {
        (faulty_mixed(seed, 300), presets().into())
    };
    // `SIM_CLEAN=1`: the same cluster without loss, duplicates and reordering.
    let scenario = if std::env::var_os("SIM_CLEAN").is_some() {
        lossless(scenario)
    } else {
        scenario
    };
    // `SIM_STEADY=1`: without loss and without timed faults either.
    let scenario = if std::env::var_os("SIM_STEADY").is_some() {
        steady(scenario)
    } else {
        scenario
    };
    println!("{scenario:?}");
    let mut reports = Vec::new();
    for (preset, config) in configs {
        let report = run(scenario.clone(), config.clone(), seed, None);
        if preset == "tuned" {
            println!("tuned config: {config:?}");
        }
        println!("{preset}: {}", report.to_json());
        if scenario.behaviours.contains(&Behaviour::Flooder) {
            let quiet = Scenario {
                idle_flooders: true,
                ..scenario.clone()
            };
            let placebo = placebo(&quiet);
            println!(
                "{preset} unattacked: {}",
                run(quiet, config.clone(), seed, None).to_json()
            );
            println!(
                "{preset} placebo: {}",
                run(placebo, config, seed, None).to_json()
            );
        }
        reports.push((preset, report));
    }
    for (preset, report) in reports {
        assert_passed(&report, preset, &scenario);
    }
}

/// One flooded cluster of the large sweep: its catch-up flooded over
/// unattacked, in each variant.
#[derive(Debug, Clone, Copy)]
struct FloodRow {
    seed: u64,
    flooders: usize,
    /// As drawn.
    flooded: f64,
    /// Unattacked, nudged, over unattacked: chance alone.
    placebo: f64,
    /// Without loss, duplicates and reordering.
    lossless: f64,
    /// Without them and without timed faults ([`steady`]).
    steady: f64,
    /// The placebo of the steady variant.
    steady_placebo: f64,
    /// The lossless variant's unattacked catch-up, seconds.
    lossless_quiet_secs: f64,
}

/// The large sweep: 10 000 seeds of [`wild`] clusters (every fault,
/// flooders included), each with both presets (and a small-window config on
/// odd seeds), on every core. Every run must be live, within its
/// amplification bounds and free of violations. For each seed with a
/// flooder it also runs the default preset on the same cluster with the
/// flooder idle, as drawn, without loss and steady ([`steady`]), the
/// flooded variants held to liveness like the rest, and prints how much
/// the flood slowed honest catch-up: cluster by cluster reported, in
/// geometric mean held to the README's bounds (see the README on floods). Replay a seed with
/// `SIM_SEED=<seed> SIM_WILD=1 cargo test --release --all-features --test sim replay -- --ignored --nocapture`.
#[test]
#[ignore = "slow: cargo test --release --all-features --test sim -- --ignored"]
fn large_fault_sweep() {
    let seeds = sim_seeds(10_000);
    // `SIM_FLOODERS=0` leaves flooders out.
    let flooders = std::env::var("SIM_FLOODERS").map_or(true, |v| v != "0");
    type Outcome = (
        Vec<(u64, &'static str)>,
        Vec<FloodRow>,
        u64,
        Vec<u64>,
        Vec<u64>,
        Vec<u64>,
    );
    // Seed by seed from a shared counter: a few flooded seeds take seconds
    // each, and a fixed split of the seeds left one core idle behind them.
    // Flooded seeds (nine tenths of the work) go first, so that the last
    // seeds handed out are quick ones and both cores finish together.
    let flooded = |seed| {
        wild(seed, flooders)
            .0
            .behaviours
            .contains(&Behaviour::Flooder)
    };
    let from = sim_seed_from();
    let (mut order, quick): (Vec<u64>, Vec<u64>) =
        (from..from + seeds).partition(|&seed| flooded(seed));
    order.extend(quick);
    let results: Vec<Outcome> = on_every_core_in(&order, |seed| {
        let mut failures = Vec::new();
        let mut slowdowns = Vec::new();
        let mut starved = Vec::new();
        let mut outpaced_runs = Vec::new();
        let mut withheld_runs = Vec::new();
        let mut runs = 0;
        let (scenario, tuned) = wild(seed, flooders);
        let chain = Chain::new(scenario.target_height(), scenario.block_size);
        let mut configs: Vec<(&str, Config)> = presets().into();
        configs.extend(tuned.map(|c| ("tuned", c)));
        for (preset, config) in configs {
            let report = run(scenario.clone(), config.clone(), seed, Some(&chain));
            runs += 1;
            let flooded = scenario.behaviours.contains(&Behaviour::Flooder);
            let safe = report.violations == 0 && report.within_bounds();
            // Stock Fabric stuck where a fault it handles faithfully is the
            // cause: counted, not failed, if the same cluster without that
            // fault passes.
            let fabric_stuck = preset == "fabric" && safe && !report.passed();
            let passes =
                |without: Scenario| run(without, config.clone(), seed, Some(&chain)).passed();
            // It has one FIFO queue for every peer: a flood fills it and
            // honest requests are dropped.
            let starved_by_flood = fabric_stuck
                && flooded
                && passes(Scenario {
                    idle_flooders: true,
                    ..scenario.clone()
                });
            // Its timeout is fixed (3 s) and its requests are 11 blocks: a
            // link slowed below one answer in 3 s never delivers one in
            // time, so it asks again, for ever.
            let outpaced = fabric_stuck
                && !starved_by_flood
                && scenario.slowdowns.iter().any(|slowdown| {
                    // One 11-block answer takes over 3 s on it.
                    let answer_bits = 11.0 * 8.0 * scenario.block_size as f64;
                    answer_bits > 3.0 * slowdown.uplink_bps as f64
                })
                && passes(Scenario {
                    slowdowns: Vec::new(),
                    ..scenario.clone()
                });
            // It asks for 11 blocks at a time, never fewer: when the only
            // sources of its next blocks each withhold one of the next 11
            // (and drop every request holding it), it asks for ever, though
            // every block is there at some source (the target counts
            // blocks, not ranges).
            let withheld = fabric_stuck
                && !starved_by_flood
                && !outpaced
                && scenario.behaviours.contains(&Behaviour::Dropping)
                && passes(Scenario {
                    behaviours: scenario
                        .behaviours
                        .iter()
                        .map(|&b| match b {
                            Behaviour::Dropping => Behaviour::Honest,
                            b => b,
                        })
                        .collect(),
                    ..scenario.clone()
                });
            if starved_by_flood {
                starved.push(seed);
            } else if outpaced {
                outpaced_runs.push(seed);
            } else if withheld {
                withheld_runs.push(seed);
            } else if !report.passed() {
                eprintln!(
                    "seed {seed} preset {preset}: {:?} {:?}",
                    report.failures(),
                    report.violation_messages
                );
                failures.push((seed, preset));
            }
            if flooded && preset == "default" {
                // Against the same cluster unattacked, and, as a placebo, that
                // against itself with its machines seeded otherwise: lossy runs
                // are chaotic, and the placebo's spread is what a flood's ratio
                // is to be read against.
                let quiet = Scenario {
                    idle_flooders: true,
                    ..scenario.clone()
                };
                let base = run(quiet.clone(), config.clone(), seed, Some(&chain));
                let other = run(placebo(&quiet), config.clone(), seed, Some(&chain));
                // Without loss, duplicates and reordering the runs are less
                // chaotic.
                let clean = |s: &Scenario| lossless(s.clone());
                let clean_flooded = run(clean(&scenario), config.clone(), seed, Some(&chain));
                let clean_quiet = run(clean(&quiet), config.clone(), seed, Some(&chain));
                // Lossless runs are still chaotic around timed faults (a
                // lagger that finishes just before its crash, or just
                // after): without them too, the placebo is all but exact
                // and a flood's cost is its own.
                let steady_flooded =
                    run(steady(scenario.clone()), config.clone(), seed, Some(&chain));
                let steady_quiet = steady(quiet.clone());
                let steady_nudged = run(placebo(&steady_quiet), config.clone(), seed, Some(&chain));
                let steady_quiet = run(steady_quiet, config, seed, Some(&chain));
                // A flood must not stall these variants either (their
                // rows would drop out of the figures below unseen).
                for (variant, flooded, quiet) in [
                    (
                        "default, flooded without loss",
                        &clean_flooded,
                        &clean_quiet,
                    ),
                    ("default, flooded steady", &steady_flooded, &steady_quiet),
                ] {
                    if !flooded.passed() && quiet.passed() {
                        eprintln!("seed {seed} {variant}: {:?}", flooded.failures());
                        failures.push((seed, variant));
                    }
                }
                let ratio = |a: &Report, b: &Report| {
                    Some(a.catchup?.as_secs_f64() / b.catchup?.as_secs_f64().max(1e-9))
                };
                if let (
                    Some(flooded),
                    Some(placebo),
                    Some(lossless),
                    Some(steady),
                    Some(steady_placebo),
                ) = (
                    ratio(&report, &base),
                    ratio(&other, &base),
                    ratio(&clean_flooded, &clean_quiet),
                    ratio(&steady_flooded, &steady_quiet),
                    ratio(&steady_nudged, &steady_quiet),
                ) {
                    slowdowns.push(FloodRow {
                        seed,
                        flooders: scenario
                            .behaviours
                            .iter()
                            .filter(|&&b| b == Behaviour::Flooder)
                            .count(),
                        flooded,
                        placebo,
                        lossless,
                        steady,
                        steady_placebo,
                        lossless_quiet_secs: clean_quiet.catchup.map_or(0.0, |t| t.as_secs_f64()),
                    });
                }
            }
        }
        Some((
            failures,
            slowdowns,
            runs,
            starved,
            outpaced_runs,
            withheld_runs,
        ))
    });
    let mut failures: Vec<_> = results.iter().flat_map(|r| r.0.clone()).collect();
    failures.sort_unstable();
    let slowdowns: Vec<FloodRow> = results.iter().flat_map(|r| r.1.clone()).collect();
    let runs: u64 = results.iter().map(|r| r.2).sum();
    let mut starved: Vec<u64> = results.iter().flat_map(|r| r.3.clone()).collect();
    starved.sort_unstable();
    let mut outpaced: Vec<u64> = results.iter().flat_map(|r| r.4.clone()).collect();
    outpaced.sort_unstable();
    let mut withheld: Vec<u64> = results.iter().flat_map(|r| r.5.clone()).collect();
    withheld.sort_unstable();
    // `SIM_FLOOD_OUT=<file>`: each flooded cluster's ratios, by seed, so
    // two builds' flood costs can be compared cluster by cluster.
    if let Some(path) = std::env::var_os("SIM_FLOOD_OUT") {
        let mut rows = slowdowns.clone();
        rows.sort_by_key(|row| row.seed);
        let lines: String = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {:.6} {:.6} {:.6} {:.3} {:.6} {:.6}\n",
                    r.seed,
                    r.flooders,
                    r.flooded,
                    r.placebo,
                    r.lossless,
                    r.lossless_quiet_secs,
                    r.steady,
                    r.steady_placebo
                )
            })
            .collect();
        std::fs::write(path, lines).expect("write SIM_FLOOD_OUT");
    }
    // Every finding is printed (and fingerprinted) before any assertion
    // stops the test.
    write_fingerprints();
    let mut findings: Vec<Option<String>> = Vec::new();
    println!("{runs} runs over {seeds} seeds, {} failing", failures.len());
    if !failures.is_empty() {
        println!("failing runs: {failures:?}");
    }
    // A flood's cost is small and near the placebo's, lossy, lossless or
    // steady. More flooding identities than a short queue has places each
    // take a turn as a lagger would: a stated bound of its own.
    for (name, flooders, bound) in [
        ("one flooder", 1..=1, 1.05),
        ("several flooders", 2..=usize::MAX, 1.2),
    ] {
        let rows: Vec<&FloodRow> = slowdowns
            .iter()
            .filter(|r| flooders.contains(&r.flooders))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let spread =
            |pick: fn(&FloodRow) -> f64| Spread::of(rows.iter().map(|r| (pick(r), r.seed)));
        let flood = spread(|r| r.flooded);
        let placebo = spread(|r| r.placebo);
        let clean = spread(|r| r.lossless);
        let steady = spread(|r| r.steady);
        let steady_placebo = spread(|r| r.steady_placebo);
        println!(
            "{name}: {} clusters; default preset's catch-up over the same cluster unattacked:\n  flooded: {flood}\n  placebo (unattacked, nudged): {placebo}\n  flooded, without loss, duplicates and reordering: {clean}\n  flooded, without them and without timed faults (steady): {steady}\n  steady placebo: {steady_placebo}",
            rows.len()
        );
        findings.push(
            (flood.geomean > bound || flood.geomean > placebo.geomean * bound)
                .then(|| format!("{name}: a flood costs honest catch-up more than chance: {flood} against {placebo}")),
        );
        findings.push(
            (clean.geomean > bound)
                .then(|| format!("{name}: a flood costs honest catch-up: {clean}")),
        );
        findings.push(
            (steady.geomean > bound || steady.geomean > steady_placebo.geomean * bound).then(
                || {
                    format!(
                        "{name}: a flood costs steady catch-up: {steady} against {steady_placebo}"
                    )
                },
            ),
        );
    }
    println!(
        "Fabric preset starved by a flood (not failed): {} runs, seeds {starved:?}",
        starved.len()
    );
    println!(
        "Fabric preset outpaced by a link slowed below one answer per timeout (not failed): {} runs, seeds {outpaced:?}",
        outpaced.len()
    );
    println!(
        "Fabric preset stuck on ranges every peer able to serve drops (not failed): {} runs, seeds {withheld:?}",
        withheld.len()
    );
    let findings: Vec<String> = findings.into_iter().flatten().collect();
    assert!(findings.is_empty(), "{findings:#?}");
    assert!(
        failures.is_empty(),
        "{} failing runs: {failures:?}",
        failures.len()
    );
}

/// `SIM_SEEDS`, or `default`.
fn sim_seeds(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The first seed of a sweep or probe: `SIM_SEED_FROM`, or 0. Seeds past
/// the usual ones find what the usual ones, fixed in turn, no longer can.
fn sim_seed_from() -> u64 {
    std::env::var("SIM_SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `scenario` without loss, duplicates and reordering: not chaotic, so a
/// difference between two runs is the change's own.
fn lossless(scenario: Scenario) -> Scenario {
    Scenario {
        loss: 0.0,
        burst_loss: None,
        duplicate: 0.0,
        reorder: 0.0,
        ..scenario
    }
}

/// `scenario` without loss, duplicates and reordering, and without the
/// faults that happen at a time (crashes, rollbacks, partitions, hangs,
/// pauses, slowdowns) or to one block (corrupt copies): a run that ends a
/// little later then crosses no cliff, so comparing two such runs measures
/// a difference between them, not where it fell.
fn steady(scenario: Scenario) -> Scenario {
    Scenario {
        outages: Vec::new(),
        rollbacks: Vec::new(),
        partitions: Vec::new(),
        hangs: Vec::new(),
        pauses: Vec::new(),
        slowdowns: Vec::new(),
        corrupt: Vec::new(),
        ..lossless(scenario)
    }
}

/// `per_seed` over `seeds` seeds from [`sim_seed_from`], spread over every
/// core; what it returns, in seed order. Each core takes the next seed
/// from a shared counter, so one slow seed does not hold back the seeds
/// after it.
fn on_every_core<T: Send>(seeds: u64, per_seed: impl Fn(u64) -> Option<T> + Sync) -> Vec<T> {
    let from = sim_seed_from();
    let order: Vec<u64> = (from..from + seeds).collect();
    on_every_core_in(&order, per_seed)
}

/// [`on_every_core`] over `order`'s seeds, handed out in that order; what
/// `per_seed` returns, in seed order all the same.
fn on_every_core_in<T: Send>(order: &[u64], per_seed: impl Fn(u64) -> Option<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (per_seed, next) = (&per_seed, &next);
    let mut results: Vec<(u64, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = order.get(i) else {
                            break done;
                        };
                        done.extend(per_seed(seed).map(|t| (seed, t)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    results.sort_by_key(|&(seed, _)| seed);
    results.into_iter().map(|(_, t)| t).collect()
}

/// The default preset's catch-up over `SIM_SEEDS` wild clusters without
/// flooders, against each cluster's bound: the tail is where a lossy link
/// to the only honest source, or a bad choice of peer, shows. A quick loop
/// for work on robustness (`SIM_CLEAN=1`: the same clusters lossless):
/// `SIM_SEEDS=2000 cargo test --release --all-features --test sim wild_tail_probe -- --ignored --nocapture`.
#[test]
#[ignore = "slow: a probe for work on the sweep's tail"]
fn wild_tail_probe() {
    let seeds = sim_seeds(2_000);
    // `SIM_CLEAN=1`: without loss, duplicates and reordering, where runs are
    // not chaotic and a change's effect is its own.
    let clean = std::env::var_os("SIM_CLEAN").is_some();
    let rows: Vec<(f64, f64, u64)> = on_every_core(seeds, |seed| {
        let (scenario, _) = wild(seed, false);
        let scenario = if clean { lossless(scenario) } else { scenario };
        let report = run(scenario, Config::default(), seed, None);
        let catchup = report.catchup?.as_secs_f64();
        Some((
            catchup / report.bound.value().as_secs_f64().max(1e-9),
            catchup,
            seed,
        ))
    });
    println!(
        "catch-up / bound: {}",
        Spread::of(rows.iter().map(|r| (r.0, r.2)))
    );
    // `SIM_PROBE_OUT=<file>`: each seed's catch-up, to compare two builds.
    if let Some(path) = std::env::var_os("SIM_PROBE_OUT") {
        let mut by_seed: Vec<_> = rows.iter().map(|r| (r.2, r.1)).collect();
        by_seed.sort_by_key(|r| r.0);
        let lines: String = by_seed
            .iter()
            .map(|(s, c)| format!("{s} {c:.6}\n"))
            .collect();
        std::fs::write(path, lines).expect("SIM_PROBE_OUT is writable");
    }
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let mut slowest: Vec<(f64, u64)> = rows.iter().map(|r| (r.1, r.2)).collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    slowest.truncate(8);
    println!(
        "{} runs, catch-up summed {total:.1} s; slowest (s, seed): {slowest:.2?}",
        rows.len()
    );
}

/// `SIM_SEEDS` wild seeds, worst first. A quick loop for work on floods:
/// `SIM_SEEDS=3000 cargo test --release --all-features --test sim flood_cost_probe -- --ignored --nocapture`.
#[test]
#[ignore = "slow: a probe for work on floods"]
fn flood_cost_probe() {
    let seeds = sim_seeds(2_000);
    // (flooded, placebo, one more lagger) / unattacked, seed, outages or
    // partitions, a block bad at every source (catch-up ends at its give-up).
    type Row = (f64, f64, f64, u64, bool, bool);
    let mut ratios: Vec<Row> = on_every_core(seeds, |seed| {
        let (scenario, _) = wild(seed, true);
        if !scenario.behaviours.contains(&Behaviour::Flooder) {
            return None;
        }
        let clean = lossless(scenario);
        let quiet = Scenario {
            idle_flooders: true,
            ..clean.clone()
        };
        let chain = Chain::new(clean.target_height(), clean.block_size);
        let flooded = run(clean, Config::default(), seed, Some(&chain));
        let base = run(quiet.clone(), Config::default(), seed, Some(&chain));
        let nudged = run(placebo(&quiet), Config::default(), seed, Some(&chain));
        // The flooder idle and one more lagger on its link:
        // what an honest newcomer's first pass costs.
        let flooder = (0..quiet.peers)
            .find(|&i| quiet.behaviour(i) == Behaviour::Flooder)
            .expect("flooded");
        let mut links: Vec<_> = (0..quiet.peers + quiet.laggers)
            .map(|i| quiet.link(i))
            .collect();
        links.push(quiet.link(flooder));
        let laggers = quiet.laggers;
        let crowded = Scenario {
            laggers: laggers + 1,
            ..quiet.clone()
        }
        .with_links(links);
        let crowded = run(crowded, Config::default(), seed, None);
        let first = |r: &Report| {
            r.lagger_catchup[..laggers]
                .iter()
                .copied()
                .collect::<Option<Vec<_>>>()
                .and_then(|v| v.into_iter().max())
        };
        let (Some(a), Some(b), Some(c), Some(d)) = (
            flooded.catchup,
            base.catchup,
            nudged.catchup,
            first(&crowded),
        ) else {
            return None;
        };
        let b = b.as_secs_f64().max(1e-9);
        let timed = !quiet.outages.is_empty() || !quiet.partitions.is_empty();
        let cut = base
            .lagger_targets
            .iter()
            .any(|&t| t < quiet.target_height());
        Some((
            a.as_secs_f64() / b,
            c.as_secs_f64() / b,
            d.as_secs_f64() / b,
            seed,
            timed,
            cut,
        ))
    });
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("flooded: {}", Spread::of(ratios.iter().map(|r| (r.0, r.3))));
    println!("placebo: {}", Spread::of(ratios.iter().map(|r| (r.1, r.3))));
    println!(
        "one more lagger: {}",
        Spread::of(ratios.iter().map(|r| (r.2, r.3)))
    );
    println!(
        "flooded / one more lagger: {}",
        Spread::of(ratios.iter().map(|r| (r.0 / r.2, r.3)))
    );
    // Clusters a nudge barely moves, where a flood's cost is its own.
    let steady: Vec<_> = ratios
        .iter()
        .filter(|r| (r.1 - 1.0).abs() <= 0.05)
        .collect();
    println!(
        "flooded, steady clusters ({}): {}",
        steady.len(),
        Spread::of(steady.iter().map(|r| (r.0, r.3)))
    );
    // Without crashes, churn or partitions: a delay moves catch-up by as
    // much, not past an outage's end.
    let untimed: Vec<_> = ratios.iter().filter(|r| !r.4).collect();
    println!(
        "flooded, no outage or partition ({}): {}",
        untimed.len(),
        Spread::of(untimed.iter().map(|r| (r.0, r.3)))
    );
    let uncut: Vec<_> = ratios.iter().filter(|r| !r.5).collect();
    println!(
        "flooded, every block good somewhere ({}): {}",
        uncut.len(),
        Spread::of(uncut.iter().map(|r| (r.0, r.3)))
    );
    for (flood, nudge, lagger, seed, timed, cut) in ratios.iter().take(25) {
        println!("seed {seed}: flooded {flood:.3}, placebo {nudge:.3}, one more lagger {lagger:.3}, outages {timed}, cut {cut}");
    }
}

// --- the faults of issue #8 -------------------------------------------------

fn small() -> Scenario {
    Scenario {
        peers: 2,
        laggers: 1,
        blocks: 200,
        block_size: 1024,
        max_virtual_time: Duration::from_secs(3600),
        ..Scenario::default()
    }
}

fn check_all(scenario: &Scenario, seed: u64) -> Vec<Report> {
    presets()
        .into_iter()
        .map(|(preset, config)| {
            let report = run(scenario.clone(), config, seed, None);
            assert_passed(&report, preset, scenario);
            report
        })
        .collect()
}

/// Issue #8.1 in the simulator: overclaimers silent, empty or partial next
/// to one honest peer; the lagger reaches the chain's height within the
/// request bound.
#[test]
fn overclaimers_do_not_stall() {
    for mode in [Overclaim::Silent, Overclaim::Empty, Overclaim::Partial] {
        let scenario = small().with_overclaimers(1, mode, 4000);
        assert_eq!(scenario.behaviours[1], Behaviour::Overclaiming(mode));
        for report in check_all(&scenario, 8) {
            assert_eq!(report.lagger_heights, [201], "{mode:?}");
        }
    }
}

/// Issue #8.2: block 100 bad at every source: the lagger stops at 100, gives
/// the block up as `BlockRejected`, and does not flood.
#[test]
fn a_block_bad_at_every_source_is_given_up_without_flooding() {
    let scenario = Scenario {
        peers: 3,
        ..small()
    }
    .with_corrupt_block(100, usize::MAX);
    for report in check_all(&scenario, 3) {
        assert_eq!(report.lagger_targets, [100]);
        assert_eq!(report.lagger_heights, [100]);
        assert!(
            report.give_ups_by_reason["block_rejected"] > 0,
            "{report:#?}"
        );
        assert!(report.rejected > 0);
    }
}

/// A block bad at one of three sources: everyone gets past it.
#[test]
fn a_block_bad_at_some_sources_is_fetched_elsewhere() {
    let scenario = Scenario {
        peers: 3,
        laggers: 2,
        ..small()
    }
    .with_corrupt_block(50, 2);
    for report in check_all(&scenario, 4) {
        assert_eq!(report.lagger_heights, [201, 201]);
    }
}

/// Two blocks, each bad at another one of two sources (the second block's
/// bad copy starts one source later): every lagger gets past both, each
/// block from the source whose copy is good, and the liveness target is
/// not cut; with the second source's copy of 30 bad too, 30 has no good
/// copy and the target stops there.
#[test]
fn blocks_bad_at_different_sources_are_each_fetched_from_the_other() {
    let two = Scenario {
        peers: 2,
        laggers: 2,
        ..small()
    };
    let scenario = two
        .clone()
        .with_corrupt_block(30, 1)
        .with_corrupt_block(60, 1);
    for report in check_all(&scenario, 4) {
        assert_eq!(report.lagger_targets, [201, 201]);
        assert_eq!(report.lagger_heights, [201, 201]);
        assert!(report.rejected > 0, "{report:#?}");
    }
    let cut = two.with_corrupt_block(30, 2).with_corrupt_block(60, 1);
    for report in check_all(&cut, 2) {
        assert_eq!(report.lagger_targets, [30, 30]);
        assert_eq!(report.lagger_heights, [30, 30]);
    }
}

/// A peer crashes mid-transfer and restarts with its ledger, or with its
/// ledger cut back; the lagger crashes, or loses most of what it fetched;
/// another peer joins late, one leaves; a partition cuts the lagger off and
/// heals.
#[test]
fn crashes_churn_and_partitions_heal() {
    let s = Duration::from_secs;
    // 50 kbit/s uplinks: both presets are mid-transfer at 12 s (Fabric's
    // first round starts at 10 s).
    let slow = Scenario {
        uplink_bps: 50_000,
        ..small()
    };
    let at = s(12);
    let cases = [
        ("crash", slow.clone().with_crash(0, at, s(5))),
        ("crash lagger", slow.clone().with_crash(2, at, s(3))),
        ("rollback", slow.clone().with_rollback(0, at, s(5), 50)),
        // At 20 s, when both presets hold blocks to lose.
        (
            "rollback lagger",
            slow.clone().with_rollback(2, s(20), s(3), 2),
        ),
        ("join", slow.clone().with_join(1, at)),
        ("leave", slow.clone().with_leave(1, at)),
        ("partition", slow.clone().with_partition([2], at, s(30))),
    ];
    for (name, scenario) in cases {
        for (report, (_, config)) in check_all(&scenario, 5).into_iter().zip(presets()) {
            assert_eq!(report.lagger_heights, [201], "{name}");
            if name == "rollback lagger" {
                // What it lost it fetched again: more than after a crash
                // that kept its ledger.
                let kept = run(slow.clone().with_crash(2, s(20), s(3)), config, 5, None);
                assert!(
                    report.bytes_received > kept.bytes_received,
                    "{} against {}",
                    report.to_json(),
                    kept.to_json()
                );
            }
            if name == "partition" {
                // Cut off from everyone mid-transfer: its sends are refused,
                // and it finishes only after the heal.
                assert!(report.unreachable_lost > 0, "{}", report.to_json());
                assert!(report.catchup.unwrap() >= s(30), "{}", report.to_json());
            }
        }
    }
}

/// Every node its own link; a flooder at the responders. Reports the
/// responders' peak load.
#[test]
fn heterogeneous_links_and_a_flooder() {
    let mut scenario = Scenario {
        peers: 3,
        laggers: 2,
        ..small()
    }
    .with_flooders(1);
    let n = scenario.peers + scenario.laggers;
    let mut links = random_links(9, n, 1..=40, &[5_000_000, 20_000_000, 100_000_000]);
    links[3].uplink_bps = 1_000_000; // the flooder
    scenario = scenario.with_links(links);
    for report in check_all(&scenario, 6) {
        assert!(report.responder_peak_queued + report.responder_peak_reading > 0);
    }
}

/// One source on a 10 Mbit/s uplink, one lagger, and a flooder asking
/// valid random ranges as fast as its 1 Mbit/s uplink allows. Served in
/// turn with the lagger, the flooder took half the source's uplink: the
/// catch-up took 2.00× its unattacked time (31.64 s against 15.90 s). Its
/// requests soon ask only for blocks it was served, so the responder puts
/// it in the background and its answers take only spare uplink.
#[test]
fn a_flood_of_repeats_takes_only_spare_uplink() {
    let scenario = Scenario {
        peers: 1,
        laggers: 1,
        blocks: 300,
        block_size: 64 * 1024,
        uplink_bps: 10_000_000,
        ..Scenario::default()
    }
    .with_flooders(1);
    let mut links: Vec<_> = (0..3).map(|i| scenario.link(i)).collect();
    links[2].uplink_bps = 1_000_000;
    let scenario = scenario.with_links(links);
    let calm = Scenario {
        idle_flooders: true,
        ..scenario.clone()
    };
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    let time = |scenario: &Scenario, config: Config| {
        let report = run(scenario.clone(), config, 1, Some(&chain));
        assert_passed(&report, "default", scenario);
        report.catchup.expect("caught up").as_secs_f64()
    };
    let unattacked = time(&calm, Config::default());
    let flooded = time(&scenario, Config::default());
    assert!(
        flooded <= unattacked * 1.02,
        "flooded {flooded:.2} s against {unattacked:.2} s unattacked"
    );
    // Without the background, the fair share halves the lagger's.
    let mut fair = Config::default();
    fair.background_repeaters = false;
    let shared = time(&scenario, fair);
    assert!(
        shared > unattacked * 1.8,
        "served in turn: {shared:.2} s against {unattacked:.2} s"
    );
}

/// `laggers` laggers, a flooder, a fast honest peer whose copy of block
/// `bad` is bad, and a slow honest peer (500 ms a read) that holds it: the
/// laggers need the slow peer, whose limits decide whether a flood can
/// keep them out.
fn flood_at_a_slow_source(laggers: usize, blocks: u64, block_size: usize, bad: u64) -> Scenario {
    Scenario {
        peers: 2,
        laggers,
        blocks,
        block_size,
        ..Scenario::default()
    }
    .with_faults(0, 1, 0, 0)
    .with_flooders(1)
    .with_corrupt_block(bad, 1)
}

/// The default preset with a responder of `queue` places and `reads` read
/// slots, and three requests per peer.
fn small_responder(queue: usize, reads: usize) -> Config {
    let mut config = Config::default();
    config.max_queued_requests = queue;
    config.max_concurrent_reads = reads;
    config.max_requests_per_peer = 3;
    config
}

/// Asserts that `scenario`'s flood costs honest catch-up at most `factor`
/// times its unattacked time (`flooded_and_calm`).
fn assert_flood_costs_at_most(scenario: &Scenario, config: &Config, factor: f64) {
    let (flooded, unattacked) = flooded_and_calm(scenario, config);
    assert!(
        flooded <= unattacked * factor,
        "flooded {flooded:.2} s against {unattacked:.2} s unattacked (at most {factor}x)"
    );
}

/// Catch-up time (seed 1) of `scenario` with `config`, and of the same
/// cluster with its flooders idle; each run must pass.
fn flooded_and_calm(scenario: &Scenario, config: &Config) -> (f64, f64) {
    let chain = Chain::new(scenario.target_height(), scenario.block_size);
    let time = |scenario: &Scenario| {
        let report = run(scenario.clone(), config.clone(), 1, Some(&chain));
        assert_passed(&report, "flooded or calm", scenario);
        report.catchup.expect("caught up").as_secs_f64()
    };
    let calm = Scenario {
        idle_flooders: true,
        ..scenario.clone()
    };
    (time(scenario), time(&calm))
}

/// Two laggers, a flooder, and responders with a queue of two and one read
/// at a time: block 30 is bad at the fast honest peer, so every lagger
/// needs one read of the slow peer. The flooder's requests filled the slow
/// peer's queue before any of them was served, so it never looked like a
/// repeater, and the laggers' requests met a full queue for as long as the
/// flood lasted: 18.12 s against 3.03 s unattacked. (Found by the large
/// sweep from seed 10 000: seed 19 269, a small-queue configuration,
/// stopped at its step cap after 1 356 virtual seconds.) A request of a
/// peer with two fewer queued now takes the flooder's newest place.
#[test]
fn a_flood_cannot_hold_a_short_queue() {
    let scenario = flood_at_a_slow_source(2, 60, 16 * 1024, 30);
    let mut short = small_responder(2, 1);
    let (flooded, unattacked) = flooded_and_calm(&scenario, &short);
    assert!(
        flooded <= unattacked * 1.2,
        "flooded {flooded:.2} s against {unattacked:.2} s unattacked"
    );
    short.fair_queue = false;
    let (held, _) = flooded_and_calm(&scenario, &short);
    assert!(
        held > unattacked * 3.0,
        "first come, first queued: {held:.2} s against {unattacked:.2} s"
    );
}

/// Three laggers, a flooder, and responders with two read slots and a
/// queue of one: block 20 is bad at the fast honest peer, so the laggers
/// need the slow peer. "A peer holds three quarters of the slots" left it
/// both of two (`2 - 2 / 4`): the flooder held every read and the laggers
/// met a full responder for as long as the flood lasted, 12.16 s against
/// 1.76 s unattacked (found by the large sweep from seed 40 000: seed
/// 49 425 stopped at its step cap after 1 500 virtual seconds). Now every
/// other peer keeps a slot: 3.06 s, the flooder taking the one it may have.
#[test]
fn a_flood_cannot_hold_every_read_slot() {
    // The flooder keeps the one slot it may have.
    let scenario = flood_at_a_slow_source(3, 40, 4096, 20);
    assert_flood_costs_at_most(&scenario, &small_responder(1, 2), 2.0);
}

/// One read slot and one queue place: the flooder read and queued at once,
/// and a lagger, holding nothing, was never two places behind a peer with
/// one queued (sweep seed 163 431: four laggers at height 5 of 161 after
/// 2 142 virtual seconds; here 20.16 s against 2.15 s unattacked). Reads
/// count as places held now: 3.11 s.
#[test]
fn a_flood_cannot_hold_the_only_read_and_place() {
    let scenario = flood_at_a_slow_source(2, 40, 4096, 20);
    assert_flood_costs_at_most(&scenario, &small_responder(1, 1), 2.0);
}

/// Three flooders, two laggers, and responders with a queue of two and one
/// read at a time, the slow peer's reads needed as in
/// `a_flood_cannot_hold_a_short_queue`. With more flooding identities than
/// places, each flooder held one and a lagger holding none was only one
/// place behind: the "two fewer" rule never fired, and the laggers stood
/// at height 30 of 61 until the step cap. A foreground peer now takes a
/// background peer's place, which alone made it 66.62 s once the flooders
/// were seen to repeat; and a peer holding no place takes that of the peer
/// whose latest read started last, if after its own: the places go round,
/// 4.12 s against 3.03 s unattacked.
#[test]
fn several_flooders_cannot_hold_a_short_queue() {
    let scenario = flood_at_a_slow_source(2, 60, 16 * 1024, 30).with_flooders(2);
    assert_flood_costs_at_most(&scenario, &small_responder(2, 1), 1.5);
}

/// Four laggers share 100 kbit/s uplinks: one 11 × 16 KiB answer takes
/// about 58 s, past the longest deadline (10 s). Every request timed out and
/// its answer came after it was given up: after 24 h the default preset
/// was at height 12 of 26 (34 731 timeouts). A timeout halves the requests
/// a peer is sent, so an answer fits the deadline again. Fabric's preset,
/// with its fixed 3 s timeout and 11 blocks, stays stuck: faithful.
#[test]
fn a_thin_shared_uplink_does_not_livelock() {
    let scenario = Scenario {
        peers: 3,
        laggers: 4,
        blocks: 25,
        block_size: 16 * 1024,
        latency: Duration::from_millis(122),
        uplink_bps: 100_000,
        max_virtual_time: Duration::from_secs(3600),
        ..Scenario::default()
    }
    .with_faults(0, 0, 0, 1);
    let report = run(scenario.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &scenario);
    let fabric = run(scenario, Config::fabric(), 1, None);
    assert!(!fabric.converged(), "{}", fabric.to_json());
}

/// Two flooded wild clusters where a range's hedges were spent and it then
/// waited for a send's full deadline beside free honest peers. Seed 3 128:
/// the last hedge was answered empty and [78, 88] waited from 1.57 to
/// 6.09 s for a silent peer's send (13.72 s before, 5.54 s since such a
/// range is retried once its sends are taken for lost). Seed 9 087: the
/// only honest peer's send, lost, waited out a deadline backed off to 7 s
/// (26.69 s before, 9.53 s since a measured peer's send counts as lost
/// there at its deadline before back-off).
#[test]
fn a_range_whose_hedges_are_spent_does_not_wait_out_a_long_deadline() {
    for (seed, before, bound) in [(3_128, 13.72, 9.0), (9_087, 26.69, 15.0)] {
        let (scenario, _) = wild(seed, true);
        assert!(scenario.behaviours.contains(&Behaviour::Flooder));
        let report = run(scenario.clone(), Config::default(), seed, None);
        assert_passed(&report, "default", &scenario);
        let took = report.catchup.expect("converged").as_secs_f64();
        assert!(
            took < bound,
            "seed {seed}: {took:.2} s (before the rule {before} s)"
        );
    }
}

/// The cluster of the hang, pause and slow-ledger tests: three peers at
/// 100 Mbit/s, 50 ms away, one lagger 2 000 blocks of 16 KiB behind.
fn three_peers_one_lagger() -> Scenario {
    Scenario {
        peers: 3,
        laggers: 1,
        blocks: 2_000,
        block_size: 16 * 1024,
        latency: Duration::from_millis(50),
        uplink_bps: 100_000_000,
        ..Scenario::default()
    }
}

/// An honest peer stops answering at 0.3 s and stays connected, advertising its height (a hung disk, a deadlocked state
/// provider): no connection event, only deadlines tell. Catch-up from the
/// other two takes at most 1.05× as long as from those two alone: 1.48 s
/// against 1.55 s (the hung one served the first 0.3 s; 1.11 s with all
/// three answering). While the tail still counted on the hung peer's
/// measured rate (before `Peer::quiet`), 1.82 s.
#[test]
fn a_peer_that_hangs_while_connected_costs_little() {
    let base = three_peers_one_lagger();
    let hung = Scenario {
        hangs: vec![Hang {
            node: 0,
            from: Duration::from_millis(300),
            until: None,
        }],
        ..base.clone()
    };
    let report = run(hung.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &hung);
    let took = report.catchup.expect("converged").as_secs_f64();
    let two = Scenario { peers: 2, ..base };
    let alone = run(two, Config::default(), 1, None)
        .catchup
        .expect("converged")
        .as_secs_f64();
    assert!(
        took <= 1.05 * alone,
        "{took:.3} s with a hung peer against {alone:.3} s from the other two alone"
    );
}

/// The lagger's process is paused for 2 s mid-run (a suspended VM, a
/// stopped container): its timers and the answers that reached it
/// meanwhile all fall due at once when it resumes. Judging deadlines on
/// the first answer handled re-sent every range whose answer was queued
/// right behind it and timed its three peers out 30 times (3.38 s); now
/// nothing times out, nothing is asked twice, and catch-up takes the
/// unpaused time plus the pause at most (3.08 s against 1.11 s + 2 s).
#[test]
fn a_paused_lagger_resumes_without_timing_its_peers_out() {
    let base = three_peers_one_lagger();
    let pause = Duration::from_secs(2);
    let paused = base
        .clone()
        .with_pause(3, Duration::from_millis(300), pause);
    let report = run(paused.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &paused);
    let steady = run(base, Config::default(), 1, None);
    let took = report.catchup.expect("converged");
    let unpaused = steady.catchup.expect("converged");
    assert_eq!(report.timeouts, 0, "no peer timed out for our own pause");
    assert_eq!(report.host_stalls, 1, "the pause was seen once");
    assert_eq!(report.requests, steady.requests, "nothing asked twice");
    assert!(
        took <= unpaused + pause,
        "{took:?} paused against {unpaused:?} + {pause:?}"
    );
}

/// A lagger whose ledger takes 2 ms to commit a block, its process busy
/// meanwhile (a host committing synchronously): catch-up is the commit's
/// 4 s and a little, not a storm of timeouts and refetches while answers
/// wait for the busy process (4.18 s, no timeout, 191 requests against 183
/// with instant commits, 353 KiB held at most).
#[test]
fn a_slow_ledger_sets_the_pace_without_timeouts() {
    let base = three_peers_one_lagger();
    let commit = Duration::from_millis(2);
    let slow = Scenario {
        commit_time: commit,
        ..base.clone()
    };
    let report = run(slow.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &slow);
    let instant = run(base, Config::default(), 1, None);
    let took = report.catchup.expect("converged").as_secs_f64();
    let committing = commit.as_secs_f64() * 2_000.0;
    assert!(
        took <= 1.06 * committing,
        "{took:.2} s against {committing:.2} s of commits"
    );
    assert_eq!(report.timeouts, 0);
    assert!(
        report.requests * 10 <= instant.requests * 11,
        "{} requests against {}",
        report.requests,
        instant.requests
    );
}

/// One of three peers' uplink slows 20× at 0.3 s, for good (a congested
/// route): its answers come slower than it was measured at, and catch-up
/// takes at most 1.05× as long as from the other two alone (1.57 s
/// against 1.55 s; 1.11 s with all three at full rate).
#[test]
fn a_peer_whose_link_slows_down_costs_little() {
    let base = three_peers_one_lagger();
    let slowed =
        base.clone()
            .with_slowdown(0, Duration::from_millis(300), None, base.uplink_bps / 20);
    let report = run(slowed.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &slowed);
    let two = Scenario { peers: 2, ..base };
    let alone = run(two, Config::default(), 1, None);
    let (took, two) = (report.catchup.unwrap(), alone.catchup.unwrap());
    assert!(
        took.as_secs_f64() <= 1.05 * two.as_secs_f64(),
        "{took:?} against {two:?} from the other two alone"
    );
}

/// The only source's uplink slows 40× at 1 s, for good: its answers come
/// long after their deadlines, in order. A timed-out range whose send is
/// still queued there (its last answer came later than a deadline, and
/// answered an older send) is not sent again: re-sent, each crossed the
/// slow link twice, 185 s and 1.66× the bytes needed; now 148.5 s (the
/// link itself allows about 94 s) and 1.38×.
#[test]
fn a_slowed_only_source_is_not_sent_its_queued_ranges_again() {
    let (full, slowed) = (2_000_000, 50_000);
    let scenario = Scenario {
        peers: 1,
        blocks: 200,
        block_size: 4096,
        uplink_bps: full,
        ..Scenario::default()
    }
    .with_slowdown(0, Duration::from_secs(1), None, slowed);
    let report = run(scenario.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &scenario);
    // The link's own time: a second at the full rate, the rest slowed.
    let bits = report.bound.bytes as f64 * 8.0;
    let link = 1.0 + (bits - full as f64) / slowed as f64;
    let took = report.catchup.unwrap().as_secs_f64();
    assert!(
        took <= 1.75 * link,
        "{took:.1} s against {link:.1} s for the link"
    );
    assert!(
        report.worst_bytes_ratio() <= 1.5,
        "{:.2}× the bytes needed",
        report.worst_bytes_ratio()
    );
}

/// Losses in bursts (every connection loses all it sends for 200 ms,
/// about every 2 s: a tenth of its messages) cost a spell of timeouts per
/// burst, not a collapse: over seeds 1–5, the geometric mean of the
/// catch-up time over the same cluster's without loss is at most 1.8
/// (1.64 measured: 1.59, 2.88, 1.23, 1.24, 1.70; 1.66 before sends lost at
/// random were told from silence). A burst is silence: nothing comes back
/// from the peer while it lasts. The same share of losses spread out used
/// to cost more than bursts (2.07 s against 1.64 s on seed 1, which this
/// test checked), and now costs less (1.59 s against 1.77 s): each is a
/// loss on a path that works, which backs nothing off.
#[test]
fn losses_in_bursts_cost_a_spell_of_timeouts_each() {
    let base = three_peers_one_lagger();
    let bursts = BurstLoss {
        every: Duration::from_secs(2),
        length: Duration::from_millis(200),
        loss: 1.0,
    };
    let bursty = Scenario {
        burst_loss: Some(bursts),
        ..base.clone()
    };
    let secs = |r: &Report| r.catchup.expect("converged").as_secs_f64();
    let mut ratios = Vec::new();
    for seed in 1..=5 {
        let in_bursts = run(bursty.clone(), Config::default(), seed, None);
        assert_passed(&in_bursts, "default", &bursty);
        assert!(in_bursts.messages_lost > 0, "no burst came");
        let clean = run(base.clone(), Config::default(), seed, None);
        let ratio = secs(&in_bursts) / secs(&clean);
        println!("seed {seed}: {ratio:.2}× the time without loss");
        ratios.push((ratio, seed));
    }
    let mean = Spread::of(ratios.into_iter()).geomean;
    assert!(mean <= 1.8, "bursts cost {mean:.2}× the time without loss");
}

/// Two of three peers hang, at 0.3 s and 0.5 s. The range at the commit
/// point was asked of a hung peer, then probed there once more (the tail
/// loss probe); two sends to one peer counted as two racing, so no hedge
/// went to the peer still answering, idle once the window was done, until
/// the hung peer's backed-off deadline: 11.31 s. Now at most as long as
/// from the third peer alone: 2.39 s against 2.87 s alone.
#[test]
fn a_probe_to_a_hung_peer_does_not_hold_the_commit_point() {
    let base = three_peers_one_lagger();
    let hung = base
        .clone()
        .with_hang(0, Duration::from_millis(300), None)
        .with_hang(1, Duration::from_millis(500), None);
    let report = run(hung.clone(), Config::default(), 1, None);
    assert_passed(&report, "default", &hung);
    let took = report.catchup.expect("converged").as_secs_f64();
    let one = Scenario { peers: 1, ..base };
    let alone = run(one, Config::default(), 1, None)
        .catchup
        .expect("converged")
        .as_secs_f64();
    assert!(
        took <= alone,
        "{took:.3} s with two hung peers against {alone:.3} s from the third alone"
    );
}

// --- heavy random loss --------------------------------------------------------

/// The clusters of [`heavy_loss_degrades_gracefully`]: one lagger of four
/// honest peers; two laggers with duplicates and reordering; one lagger of
/// six peers, one slow and one lying.
fn lossy_shapes() -> [Scenario; 3] {
    let base = Scenario {
        peers: 4,
        laggers: 1,
        blocks: 1500,
        block_size: 8 * 1024,
        latency: Duration::from_millis(50),
        max_virtual_time: Duration::from_secs(3600),
        ..Scenario::default()
    };
    [
        base.clone(),
        Scenario {
            laggers: 2,
            blocks: 1000,
            block_size: 16 * 1024,
            duplicate: 0.1,
            reorder: 0.3,
            ..base.clone()
        },
        Scenario {
            peers: 6,
            blocks: 600,
            block_size: 64 * 1024,
            ..base
        }
        .with_faults(0, 1, 1, 0),
    ]
}

/// Peers that drop every request for a range holding one of their chosen
/// blocks (`Behaviour::Dropping`, about one block in 16: half of all
/// 11-block ranges) look like random loss on a working path, but for good.
/// They serve the rest at once, and the default preset uses them: a range
/// lost twice at one is asked of another peer, a lost send's slot is given
/// back to its window, and a peer whose first sends were all lost is probed
/// again. Each run is live and within the amplification bounds, and the
/// catch-up beats the same cluster with those peers silent. Before: 3 of 4
/// peers dropping, 17.8 s against 20.6 s silent (0.87); 1 of 4, 7.02 s,
/// the same as silent (it was never asked again after its first sends).
#[test]
fn peers_that_drop_chosen_ranges_still_serve_the_rest() {
    let config = Config::default();
    let secs = |r: &Report| r.catchup.expect("converged").as_secs_f64();
    let base = Scenario {
        peers: 4,
        laggers: 1,
        blocks: 12_000,
        block_size: 2048,
        uplink_bps: 10_000_000,
        ..Scenario::default()
    };
    for (count, most) in [(3, 0.5), (1, 0.95)] {
        let silent = base.clone().with_faults(count, 0, 0, 0);
        let dropping = base.clone().with_droppers(count);
        assert_eq!(
            dropping
                .behaviours
                .iter()
                .filter(|&&b| b == Behaviour::Dropping)
                .count(),
            count
        );
        // One seed: without loss the runs hardly depend on it (seeds 1-3
        // give the same ratios to the third digit), and each is long.
        let seed = 1;
        let quiet = run(silent.clone(), config.clone(), seed, None);
        assert_passed(&quiet, "default", &silent);
        let report = run(dropping.clone(), config.clone(), seed, None);
        assert_passed(&report, "default", &dropping);
        // The droppers did drop: sends to them timed out.
        assert!(report.timeouts > 0, "{report:?}");
        let ratio = secs(&report) / secs(&quiet);
        println!("{count} dropping: {ratio:.3} of the time with them silent");
        assert!(ratio <= most, "{count} dropping: {ratio:.3} > {most}");
    }
}

/// Random loss of 10 to 40 % of messages slows the default preset's
/// catch-up by what losing them costs, not by treating each loss as a dead
/// or congested peer: per loss rate, the geometric mean over the clusters
/// of [`lossy_shapes`] and seeds 1–4 of the catch-up time over the same
/// cluster's without loss stays under a stated bound (and every run is
/// live, within the amplification bounds, without violations). Before the
/// timeouts told loss from silence (see `Silence` in the requester) the
/// means were 2.66, 10.7, 45.1 and 231; after, 1.76, 2.86, 6.51 and 25.5:
/// the bounds leave about a quarter over those. A lost send growing its
/// peer's window (for peers that drop chosen ranges) moved them to 1.85,
/// 3.09, 5.95 and 17.5.
#[test]
fn heavy_loss_degrades_gracefully() {
    let config = Config::default();
    let secs = |r: &Report| r.catchup.expect("converged").as_secs_f64();
    let shapes = lossy_shapes();
    let seeds = 1..=4u64;
    // Each cluster's time without loss, once for every loss rate.
    let clean: Vec<Vec<f64>> = shapes
        .iter()
        .map(|scenario| {
            seeds
                .clone()
                .map(|seed| secs(&run(lossless(scenario.clone()), config.clone(), seed, None)))
                .collect()
        })
        .collect();
    let mut means = Vec::new();
    for (loss, bound) in [(0.1, 2.2), (0.2, 3.6), (0.3, 8.2), (0.4, 32.0)] {
        let mut ratios = Vec::new();
        for (shape, scenario) in shapes.iter().enumerate() {
            for (seed, clean) in seeds.clone().zip(&clean[shape]) {
                let lossy = Scenario {
                    loss,
                    ..scenario.clone()
                };
                let report = run(lossy.clone(), config.clone(), seed, None);
                assert_passed(&report, "default", &lossy);
                let ratio = secs(&report) / clean;
                println!("loss {loss} shape {shape} seed {seed}: {ratio:.2}");
                ratios.push((ratio, seed));
            }
        }
        let mean = Spread::of(ratios.into_iter()).geomean;
        println!("loss {loss}: geometric mean {mean:.2} (bound {bound})");
        assert!(
            mean <= bound,
            "at {loss} loss, catch-up {mean:.2}× slower than without (bound {bound})"
        );
        means.push(mean);
    }
    // More loss costs more: a mean that fell would mean the clusters'
    // lossless times, not loss, decide the figures.
    assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
}

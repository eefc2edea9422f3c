//! The scenario matrix as a regression check: virtual time is
//! deterministic, so each scenario's ratio (catch-up / bound) for
//! `Config::default()` is a stable number, not a timing. The test fails if
//! one regresses past its stated ceiling (the worst of seeds 1–3 when the
//! ceiling was set, plus a margin of 4–8 %, `BENCHMARKS.md`), or if the
//! default preset is ever slower than Fabric's. Seed 1 only, scenarios in
//! parallel, to stay within CI's budget in a debug build; `catchup
//! --scenario all --seed N` shows the others.
//!
//! `hostile` (2 % loss) is chaotic: which messages are lost moves with
//! every change of timing, so one seed's ratio says little (keeping the
//! blocks after a rejected one took seeds 1–40 from a geometric mean of
//! 2.00 to 1.79 and seed 1 from 1.81 to 2.62). Its ceiling is on the
//! geometric mean over seeds 1–10 (1.43 when set), with a looser cap on
//! each seed.
//!
//! `huge` (320 MiB of chain) is left to `catchup --scenario huge`: building
//! its chain alone takes longer than the rest in a debug build.

#![cfg(feature = "sim")]

use antientropy::sim::{matrix, Simulation};
use antientropy::Config;

/// Ceilings on the default preset's ratio, per scenario. Where the issue's
/// target is lower, the gap is open work (see `BENCHMARKS.md`).
const CEILINGS: [(&str, f64); 9] = [
    ("lan", 1.05),
    ("wan", 1.10),
    ("one-peer", 1.05),
    ("tiny", 1.50),
    ("thin", 1.08),
    ("hetero", 1.13),
    ("hostile", 1.50),
    ("many-laggers", 1.94),
    ("crowd", 9.3),
];

/// Scenarios whose ceiling is on the geometric mean over seeds 1–10, and
/// the cap on any one seed's ratio (the worst of seeds 1–40 was 1.95).
const CHAOTIC: [(&str, f64); 1] = [("hostile", 2.1)];

#[test]
fn default_preset_stays_under_its_ceilings_and_beats_fabric() {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = CEILINGS
            .iter()
            .map(|&(name, ceiling)| {
                let chaotic = CHAOTIC.iter().find(|(chaotic, _)| *chaotic == name);
                let (seeds, cap): (Vec<u64>, f64) = match chaotic {
                    Some(&(_, cap)) => ((1..=10).collect(), cap),
                    None => (vec![1], ceiling),
                };
                scope.spawn(move || check(name, ceiling, cap, &seeds))
            })
            .collect();
        runs.into_iter()
            .flat_map(|run| run.join().expect("scenario run"))
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One scenario's failures: the geometric mean of its ratios over `seeds`
/// over `ceiling`, one seed's over `cap`, or slower than Fabric on any seed.
fn check(name: &str, ceiling: f64, cap: f64, seeds: &[u64]) -> Vec<String> {
    let named = matrix::named(name).expect("a named scenario");
    let run = |config: Config, seed: u64| {
        Simulation::new(named.scenario.clone(), config, seed)
            .expect("valid scenario")
            .run(|_| {})
    };
    let reports: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = seeds
            .iter()
            .map(|&seed| {
                scope.spawn(move || {
                    (
                        seed,
                        run(Config::default(), seed),
                        run(Config::fabric(), seed),
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("seed run"))
            .collect()
    });
    let mut failures = Vec::new();
    let mut log_ratios = 0.0;
    for (seed, ours, fabric) in reports {
        if !ours.passed() {
            failures.push(format!("{name} seed {seed}: {:?}", ours.failures()));
        }
        match ours.ratio() {
            Some(ratio) if ratio <= cap => log_ratios += ratio.ln(),
            ratio => failures.push(format!("{name} seed {seed}: ratio {ratio:?} over {cap}")),
        }
        match (ours.catchup, fabric.catchup) {
            (Some(a), Some(b)) if a <= b => {}
            (a, b) => failures.push(format!(
                "{name} seed {seed}: default {a:?} not faster than fabric {b:?}"
            )),
        }
    }
    let ratio = (log_ratios / seeds.len() as f64).exp();
    if ratio.is_nan() || ratio > ceiling {
        failures.push(format!(
            "{name}: ratio {ratio:.3} over {ceiling} (seeds {seeds:?})"
        ));
    }
    failures
}

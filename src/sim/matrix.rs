//! The scenario matrix: named shapes of cluster that the performance work
//! is measured on (`catchup --scenario NAME`, `BENCHMARKS.md`).
//!
//! Each is small enough that both presets run in seconds of wall time, and
//! large enough that the transfer, not the first round trip, dominates.

use std::time::Duration;

use super::faults::{random_links, Link};
use super::scenario::Scenario;

/// A named scenario of the matrix.
#[derive(Debug, Clone)]
pub struct Named {
    /// Its name, as `catchup --scenario` takes it.
    pub name: &'static str,
    /// What it models.
    pub about: &'static str,
    /// The cluster.
    pub scenario: Scenario,
}

/// Every name in the matrix, in table order.
pub const NAMES: [&str; 10] = [
    "lan",
    "wan",
    "one-peer",
    "tiny",
    "huge",
    "thin",
    "hetero",
    "hostile",
    "many-laggers",
    "crowd",
];

/// The scenario called `name`, if the matrix has one.
///
/// ```
/// use antientropy::sim::matrix;
///
/// let tiny = matrix::named("tiny").unwrap();
/// assert_eq!(tiny.scenario.block_size, 1024);
/// assert!(matrix::named("nowhere").is_none());
/// assert_eq!(matrix::all().len(), matrix::NAMES.len());
/// ```
pub fn named(name: &str) -> Option<Named> {
    let ms = Duration::from_millis;
    let mbit = |n: u64| n * 1_000_000;
    // The WAN shape the README's headline uses: 4 peers, 100 ms RTT,
    // 100 Mbit/s up, 1 Gbit/s down, 64 KiB blocks.
    let wan = Scenario {
        peers: 4,
        laggers: 1,
        blocks: 2_000,
        block_size: 64 * 1024,
        latency: ms(50),
        uplink_bps: mbit(100),
        downlink_bps: mbit(1000),
        ..Scenario::default()
    };
    let (about, scenario) = match name {
        "lan" => (
            "4 peers, 1 ms RTT, 1 Gbit/s links, 64 KiB blocks",
            Scenario {
                latency: Duration::from_micros(500),
                uplink_bps: mbit(1000),
                blocks: 5_000,
                ..wan
            },
        ),
        "wan" => ("4 peers, 100 ms RTT, 100 Mbit/s up, 64 KiB blocks", wan),
        "one-peer" => (
            "1 peer, 100 ms RTT, 100 Mbit/s up, 64 KiB blocks",
            Scenario { peers: 1, ..wan },
        ),
        "tiny" => (
            "4 peers, 100 ms RTT, 1 KiB blocks",
            Scenario {
                blocks: 20_000,
                block_size: 1024,
                ..wan
            },
        ),
        "huge" => (
            "4 peers, 100 ms RTT, 100 Mbit/s up, 8 MiB blocks",
            Scenario {
                blocks: 40,
                block_size: 8 << 20,
                ..wan
            },
        ),
        "thin" => (
            "4 peers, 100 ms RTT, 2 Mbit/s up, 64 KiB blocks",
            Scenario {
                blocks: 200,
                uplink_bps: mbit(2),
                ..wan
            },
        ),
        "hetero" => {
            // Each node its own link: 2 to 100 Mbit/s up, 1 to 75 ms of
            // latency share; the lagger gets a fast downlink.
            let mut links: Vec<Link> =
                random_links(7, 5, 1..=75, &[mbit(2), mbit(10), mbit(20), mbit(100)]);
            links[4].downlink_bps = mbit(1000);
            (
                "4 peers, per-node links 2-100 Mbit/s and 2-150 ms RTT",
                Scenario { blocks: 500, ..wan }.with_links(links),
            )
        }
        "hostile" => (
            "6 peers (1 silent, 1 byzantine, 1 lying), 2 % loss",
            Scenario {
                peers: 6,
                blocks: 1_000,
                loss: 0.02,
                ..wan
            }
            .with_faults(1, 0, 1, 1),
        ),
        "many-laggers" => (
            "8 peers (2 slow), 4 laggers, reordering and duplicates",
            Scenario {
                peers: 8,
                laggers: 4,
                blocks: 1_000,
                reorder: 0.05,
                duplicate: 0.01,
                ..wan
            }
            .with_faults(0, 2, 0, 0),
        ),
        "crowd" => (
            "1 source, 31 laggers, 100 Mbit/s up, 64 KiB blocks",
            Scenario {
                peers: 1,
                laggers: 31,
                blocks: 300,
                ..wan
            },
        ),
        _ => return None,
    };
    let name = NAMES.iter().copied().find(|&n| n == name)?;
    Some(Named {
        name,
        about,
        scenario,
    })
}

/// The whole matrix, in table order.
pub fn all() -> Vec<Named> {
    NAMES.iter().filter_map(|name| named(name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_scenario_is_valid() {
        for named in all() {
            named
                .scenario
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", named.name));
        }
    }
}

//! What a run measured, and the lower bound it is compared with.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The lower bound on catch-up time, with its inputs.
///
/// `F` bytes (the encoded blocks each lagger lacks) must reach each of `N`
/// laggers. The *source* is every up-to-date peer that answers with valid
/// blocks (honest, slow and lying peers: a liar still serves its first
/// half; silent and byzantine peers serve nothing valid), of total uplink
/// `u_s`; laggers can re-serve what they got, with uplinks summing to `Σu`;
/// `d_min` is the smallest lagger downlink. Then
///
/// ```text
/// bound = latency + max(F / u_s, F / d_min, N·F / (u_s + Σu))
/// ```
///
/// The `max` term is the Kumar–Ross bound for peer-to-peer distribution
/// (every byte leaves the source at least once; every lagger downloads `F`;
/// the `N·F` bytes delivered all leave some uplink). With one lagger it
/// reduces to `F / min(d, u_s)`, the single-lagger bound of the design. The
/// one-way latency is added in both cases: the first byte cannot arrive
/// sooner. It ignores the request round trip, the `StateInfo` that tells
/// a lagger whom to ask, and protocol overhead, so a ratio of 1 is out of
/// reach; compare ratios between presets on the same scenario and seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// One-way latency.
    pub latency: Duration,
    /// `F`: bytes each lagger must receive.
    pub bytes: u64,
    /// `N`: laggers.
    pub laggers: usize,
    /// `u_s`: summed uplinks of the up-to-date peers that serve valid
    /// blocks, bits per second.
    pub source_uplink_bps: u64,
    /// `Σu`: summed uplinks of the laggers, bits per second.
    pub lagger_uplink_bps: u64,
    /// `d_min`: the smallest lagger downlink, bits per second.
    pub min_downlink_bps: u64,
    /// `T`: how often a lagger's height reaches the others (`StateInfo`).
    pub state_info_interval: Duration,
    /// `u_d`: the part of `u_s` whose every read takes `D` longer (slow
    /// peers), bits per second.
    pub late_source_uplink_bps: u64,
    /// `D`: how much longer each read of a slow peer takes, so its first
    /// byte leaves no sooner.
    pub late_start: Duration,
}

impl Bound {
    /// The bound's value.
    pub fn value(&self) -> Duration {
        let bits = self.bytes as f64 * 8.0;
        let n = self.laggers as f64;
        let per = |bps: u64| {
            if bps == 0 {
                f64::INFINITY
            } else {
                bits / bps as f64
            }
        };
        let source = per(self.source_uplink_bps);
        let download = per(self.min_downlink_bps);
        let total_up = self
            .source_uplink_bps
            .saturating_add(self.lagger_uplink_bps);
        let aggregate = n * per(total_up);
        let seconds = source.max(download).max(aggregate);
        let transfer = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        self.latency.saturating_add(transfer)
    }

    /// A tighter bound that knows when each uplink can start: a lagger
    /// asks another only for blocks that one advertised in a `StateInfo`,
    /// and the first that advertises anything is published `T` after the
    /// start (at the start every lagger is at height 1), so the laggers'
    /// `Σu` counts only after `T` (and not at all for one lagger); a slow
    /// peer's first byte leaves `D` after the request came, so its `u_d`
    /// counts only after `D`. The `N·F` bytes need the first `t` with
    ///
    /// ```text
    /// (u_s − u_d)·t + u_d·(t − D)⁺ + Σu·(t − T)⁺ ≥ N·F
    /// ```
    ///
    /// (so `N·F / u_s` if the sources alone finish within `T` and `D` is
    /// zero, else `(N·F + Σu·T) / (u_s + Σu)` while `D` is zero); the other
    /// terms (`F / u_s`, `F / d_min`) and the latency are as in
    /// [`value`](Self::value). Equal to it for one lagger without slow
    /// peers. Still generous: a lagger serves only its committed prefix,
    /// and later `StateInfo`s are as stale as the first.
    pub fn gossip_value(&self) -> Duration {
        let late = self.late_source_uplink_bps.min(self.source_uplink_bps);
        if (self.laggers <= 1 && late == 0) || self.source_uplink_bps == 0 {
            return self.value();
        }
        let total_bits = self.bytes as f64 * 8.0 * self.laggers as f64;
        let relay = if self.laggers > 1 {
            self.lagger_uplink_bps
        } else {
            0
        };
        // Each uplink as (from when, bits per second), earliest first.
        let mut uplinks = [
            (0.0, (self.source_uplink_bps - late) as f64),
            (self.late_start.as_secs_f64(), late as f64),
            (self.state_info_interval.as_secs_f64(), relay as f64),
        ];
        uplinks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut at, mut carried, mut rate) = (0.0, 0.0, 0.0);
        for (from, bps) in uplinks {
            if rate > 0.0 && carried + rate * (from - at) >= total_bits {
                break;
            }
            carried += rate * (from - at);
            at = from;
            rate += bps;
        }
        let aggregate = at + (total_bits - carried) / rate;
        let transfer = Duration::try_from_secs_f64(aggregate).unwrap_or(Duration::MAX);
        self.value().max(self.latency.saturating_add(transfer))
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every lagger reached the target height.
    Converged,
    /// The step cap was reached first: a livelock (or a cap too small).
    StepCap,
    /// The virtual-time cap was reached first (progress, but too slow).
    TimeCap,
    /// A lagger below its liveness target made no progress for
    /// `Scenario::stall_after` with nothing left to change: stuck for good.
    Stalled,
}

impl Outcome {
    /// A short name, as printed in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Converged => "converged",
            Outcome::StepCap => "step_cap",
            Outcome::TimeCap => "time_cap",
            Outcome::Stalled => "stalled",
        }
    }
}

/// What one lagger's catch-up cost, against the bound the sweep checks.
///
/// With `n` blocks needed (its liveness target − 1), answers of at most
/// `k` blocks (`batch_size + 1`, or with the adaptive window
/// `clamp(max_response_bytes / (largest block + 1 KiB), 1, batch_size + 1)`,
/// as the requester plans), `P` other nodes and `T` virtual seconds of the
/// run:
///
/// ```text
/// requests ≤ (2 · max_retries + 5) · ⌈n / k⌉ + 4 · P · T + P · W · E
/// ```
///
/// Each range of at most `k` blocks is sent at most `max_retries + 1`
/// times before it is given up, twice as many if its sends are lost on
/// paths that work (they count half), plus up to 3 hedges; the time term covers
/// what repeats by the clock rather than by the blocks: every back-off that
/// re-asks a peer (bench, doubt of an overclaimer, bad-block back-off,
/// probation probes) is at least 250 ms, so each peer is re-asked at most 4
/// times a second. The last term is one window (`W`,
/// `max_in_flight_per_peer`) per peer of ranges it advertised but does not
/// hold, sent before its first empty answer doubts it, once per episode
/// `E` (1 + the scenario's outages and partitions: a reconnection forgives
/// the peer). A tight refetch loop (issue #8.2: 467 179 requests in 20 s)
/// or an overclaimer probed per round trip breaks it.
///
/// Answer bytes (everything delivered to the lagger but others' requests)
/// are bounded by `4 · requests · (answer cap + 512)`: the network may
/// duplicate a request once (a responder answers each copy, as Fabric's
/// does) and each answer once, so a send gets at most four answers, each of
/// at most
/// `min(k · largest block, max(max_response_bytes, largest block))` plus
/// envelope, or 512 bytes of garbage.
#[derive(Debug, Clone, PartialEq)]
pub struct Amplification {
    /// Requests the lagger sent (over all its incarnations).
    pub requests: u64,
    /// Blocks it committed.
    pub blocks: u64,
    /// Bytes of answers (and garbage) delivered to it.
    pub bytes_received: u64,
    /// Bytes of the blocks it needed (from 1 to its liveness target).
    pub bytes_needed: u64,
    /// The bound on `requests` (see the type's docs).
    pub request_bound: u64,
    /// The bound on `bytes_received`.
    pub byte_bound: u64,
}

impl Amplification {
    /// Requests per block delivered (`requests` if none was).
    pub fn requests_per_block(&self) -> f64 {
        self.requests as f64 / self.blocks.max(1) as f64
    }

    /// Bytes received per byte needed.
    pub fn bytes_ratio(&self) -> f64 {
        self.bytes_received as f64 / self.bytes_needed.max(1) as f64
    }

    /// Whether both bounds hold.
    pub fn within_bounds(&self) -> bool {
        self.requests <= self.request_bound && self.bytes_received <= self.byte_bound
    }
}

/// Where a run is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Virtual time since the start.
    pub virtual_time: Duration,
    /// Steps taken.
    pub steps: u64,
    /// Blocks committed by laggers so far, summed over them.
    pub blocks_committed: u64,
    /// Blocks the laggers must commit in all.
    pub blocks_total: u64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Invariant violations found.
    pub violations: u64,
    /// The first few, each with its node and virtual time.
    pub violation_messages: Vec<String>,
    /// Virtual time until the last lagger reached the target height.
    pub catchup: Option<Duration>,
    /// Each lagger's catch-up time.
    pub lagger_catchup: Vec<Option<Duration>>,
    /// Each lagger's final height.
    pub lagger_heights: Vec<u64>,
    /// Each lagger's liveness target at the end (see
    /// [`Simulation::liveness_targets`](super::Simulation::liveness_targets)).
    pub lagger_targets: Vec<u64>,
    /// Each lagger's cost, with its bound.
    pub amplification: Vec<Amplification>,
    /// Give-ups of all requesters by reason (`retries_exhausted`,
    /// `no_eligible_peer`, `block_rejected`, `other`).
    pub give_ups_by_reason: BTreeMap<String, u64>,
    /// Largest request queue of any non-flooding node's responder.
    pub responder_peak_queued: usize,
    /// Most reads in progress at any non-flooding node's responder.
    pub responder_peak_reading: usize,
    /// Messages lost because their ends could not reach each other
    /// (outages, partitions, connections broken under them).
    pub unreachable_lost: u64,
    /// The lower bound and its inputs.
    pub bound: Bound,
    /// Requests sent by all requesters (first sends, retries, hedges).
    pub requests: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Re-sends after a failure.
    pub retries: u64,
    /// Hedged duplicate requests.
    pub hedges: u64,
    /// Host stalls the requesters saw (an input long after a deadline: a
    /// paused or busy process), whose deadlines waited for the `Timeout`.
    pub host_stalls: u64,
    /// Ranges given up.
    pub give_ups: u64,
    /// Blocks the hosts refused (failed verification).
    pub rejected: u64,
    /// Responses and payloads the requesters ignored, in all.
    pub ignored: u64,
    /// Requests the responders refused.
    pub refused_requests: u64,
    /// Bytes of messages delivered to laggers (responses, duplicates and
    /// garbage included; `StateInfo` excluded).
    pub bytes_received: u64,
    /// Messages lost by the network.
    pub messages_lost: u64,
    /// Messages dropped because a connection's send buffer was full.
    pub send_buffer_drops: u64,
    /// Largest `buffered_bytes + uncommitted_bytes` of any requester.
    pub peak_buffer_bytes: u64,
    /// Steps taken (events handled).
    pub steps: u64,
    /// Virtual time when the run stopped.
    pub virtual_time: Duration,
    /// Wall-clock time of the run, if the caller measured it (the simulator
    /// reads no clock but the one epoch).
    pub wall: Option<Duration>,
}

impl Report {
    /// Whether every lagger reached the target height.
    pub fn converged(&self) -> bool {
        self.outcome == Outcome::Converged
    }

    /// Converged with no invariant violation, within the amplification
    /// bounds.
    pub fn passed(&self) -> bool {
        self.converged() && self.violations == 0 && self.within_bounds()
    }

    /// Whether every lagger stayed within its amplification bounds.
    pub fn within_bounds(&self) -> bool {
        self.amplification.iter().all(Amplification::within_bounds)
    }

    /// What failed, in words (empty if the run passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.converged() {
            out.push(format!(
                "{}: heights {:?}, targets {:?}",
                self.outcome.as_str(),
                self.lagger_heights,
                self.lagger_targets
            ));
        }
        if self.violations > 0 {
            out.push(format!("{} invariant violations", self.violations));
        }
        for (i, a) in self.amplification.iter().enumerate() {
            if a.requests > a.request_bound {
                out.push(format!(
                    "lagger {i}: {} requests for {} blocks, bound {}",
                    a.requests, a.blocks, a.request_bound
                ));
            }
            if a.bytes_received > a.byte_bound {
                out.push(format!(
                    "lagger {i}: {} bytes received, bound {}",
                    a.bytes_received, a.byte_bound
                ));
            }
        }
        out
    }

    /// The worst requests per block delivered over the laggers.
    pub fn worst_requests_per_block(&self) -> f64 {
        self.amplification
            .iter()
            .map(Amplification::requests_per_block)
            .fold(0.0, f64::max)
    }

    /// The worst bytes received per byte needed over the laggers.
    pub fn worst_bytes_ratio(&self) -> f64 {
        self.amplification
            .iter()
            .map(Amplification::bytes_ratio)
            .fold(0.0, f64::max)
    }

    /// `catchup / bound`, once converged.
    pub fn ratio(&self) -> Option<f64> {
        let bound = self.bound.value().as_secs_f64();
        self.catchup
            .filter(|_| bound > 0.0)
            .map(|c| c.as_secs_f64() / bound)
    }

    /// Catch-up time over [`Bound::gossip_value`].
    pub fn gossip_ratio(&self) -> Option<f64> {
        let bound = self.bound.gossip_value().as_secs_f64();
        self.catchup
            .filter(|_| bound > 0.0)
            .map(|c| c.as_secs_f64() / bound)
    }

    /// The report's fields as the inside of a JSON object (`"key":value`
    /// pairs separated by commas, no braces), so a caller can add its own:
    /// `format!("{{\"preset\":\"fabric\",{}}}", report.json_fields())`.
    pub fn json_fields(&self) -> String {
        let mut out = String::new();
        let mut field = |key: &str, value: String| {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "\"{key}\":{value}");
        };
        let secs =
            |d: Option<Duration>| d.map_or("null".into(), |d| format!("{:.6}", d.as_secs_f64()));
        field("seed", self.seed.to_string());
        field("converged", self.converged().to_string());
        field("outcome", json_string(self.outcome.as_str()));
        field("invariant_violations", self.violations.to_string());
        let messages: Vec<String> = self
            .violation_messages
            .iter()
            .map(|m| json_string(m))
            .collect();
        field("violation_messages", format!("[{}]", messages.join(",")));
        field("catchup_s", secs(self.catchup));
        field("bound_s", secs(Some(self.bound.value())));
        field("gossip_bound_s", secs(Some(self.bound.gossip_value())));
        field(
            "ratio",
            self.ratio().map_or("null".into(), |r| format!("{r:.4}")),
        );
        field("bytes_to_transfer", self.bound.bytes.to_string());
        field("laggers", self.bound.laggers.to_string());
        field("requests", self.requests.to_string());
        field("timeouts", self.timeouts.to_string());
        field("retries", self.retries.to_string());
        field("hedges", self.hedges.to_string());
        field("host_stalls", self.host_stalls.to_string());
        field("give_ups", self.give_ups.to_string());
        let reasons: Vec<String> = self
            .give_ups_by_reason
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect();
        field("give_ups_by_reason", format!("{{{}}}", reasons.join(",")));
        let list = |v: &[u64]| {
            let items: Vec<String> = v.iter().map(u64::to_string).collect();
            format!("[{}]", items.join(","))
        };
        field("lagger_heights", list(&self.lagger_heights));
        field("lagger_targets", list(&self.lagger_targets));
        let amp: Vec<String> = self
            .amplification
            .iter()
            .map(|a| {
                format!(
                    "{{\"requests\":{},\"blocks\":{},\"requests_per_block\":{:.4},\"request_bound\":{},\"bytes_received\":{},\"bytes_needed\":{},\"bytes_ratio\":{:.4},\"byte_bound\":{}}}",
                    a.requests,
                    a.blocks,
                    a.requests_per_block(),
                    a.request_bound,
                    a.bytes_received,
                    a.bytes_needed,
                    a.bytes_ratio(),
                    a.byte_bound
                )
            })
            .collect();
        field("amplification", format!("[{}]", amp.join(",")));
        field(
            "worst_requests_per_block",
            format!("{:.4}", self.worst_requests_per_block()),
        );
        field(
            "worst_bytes_ratio",
            format!("{:.4}", self.worst_bytes_ratio()),
        );
        field("within_bounds", self.within_bounds().to_string());
        field(
            "responder_peak_queued",
            self.responder_peak_queued.to_string(),
        );
        field(
            "responder_peak_reading",
            self.responder_peak_reading.to_string(),
        );
        field("unreachable_lost", self.unreachable_lost.to_string());
        field("rejected", self.rejected.to_string());
        field("ignored", self.ignored.to_string());
        field("refused_requests", self.refused_requests.to_string());
        field("bytes_received", self.bytes_received.to_string());
        field("messages_lost", self.messages_lost.to_string());
        field("send_buffer_drops", self.send_buffer_drops.to_string());
        field("peak_buffer_bytes", self.peak_buffer_bytes.to_string());
        field("steps", self.steps.to_string());
        field("virtual_time_s", secs(Some(self.virtual_time)));
        field(
            "wall_ms",
            self.wall
                .map_or("null".into(), |w| format!("{:.3}", w.as_secs_f64() * 1e3)),
        );
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        format!("{{{}}}", self.json_fields())
    }
}

/// A JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    #[test]
    fn one_lagger_bound_is_latency_plus_bytes_over_the_narrowest() {
        let mut b = Bound {
            latency: Duration::from_millis(50),
            bytes: 100_000_000, // 800 Mbit
            laggers: 1,
            source_uplink_bps: 4 * 100 * MBIT,
            lagger_uplink_bps: 100 * MBIT,
            min_downlink_bps: 1000 * MBIT,
            state_info_interval: Duration::from_secs(4),
            late_source_uplink_bps: 0,
            late_start: Duration::ZERO,
        };
        assert_eq!(b.gossip_value(), b.value(), "one lagger");
        // The four uplinks (400 Mbit/s) are narrower than the downlink.
        assert_eq!(b.value(), Duration::from_millis(50 + 2000));
        // A narrow downlink binds instead.
        b.min_downlink_bps = 200 * MBIT;
        assert_eq!(b.value(), Duration::from_millis(50 + 4000));
    }

    #[test]
    fn many_laggers_use_kumar_ross() {
        // F = 800 Mbit to N = 10 laggers; the source has 400 Mbit/s, the
        // laggers 100 Mbit/s each: N·F / (u_s + Σu) = 8000 / 1400 s.
        let b = Bound {
            latency: Duration::ZERO,
            bytes: 100_000_000,
            laggers: 10,
            source_uplink_bps: 400 * MBIT,
            lagger_uplink_bps: 10 * 100 * MBIT,
            min_downlink_bps: 1000 * MBIT,
            state_info_interval: Duration::from_secs(4),
            late_source_uplink_bps: 0,
            late_start: Duration::ZERO,
        };
        let expected = 8000.0 / 1400.0;
        assert!((b.value().as_secs_f64() - expected).abs() < 1e-6);
        // Laggers heard of only after 4 s: the source alone carries 1600
        // Mbit by then, then all 1400 Mbit/s: (8000 + 1000·4) / 1400 s.
        let gossip = (8000.0 + 4000.0) / 1400.0;
        assert!((b.gossip_value().as_secs_f64() - gossip).abs() < 1e-6);
        // If the source alone finishes within T, it is N·F / u_s.
        let quick = Bound {
            state_info_interval: Duration::from_secs(60),
            ..b
        };
        assert!((quick.gossip_value().as_secs_f64() - 20.0).abs() < 1e-6);
        // A quarter of the source starts 2 s late: 300·2 by then, then 400
        // Mbit/s: 2 + 7400 / 400 s.
        let late = Bound {
            late_source_uplink_bps: 100 * MBIT,
            late_start: Duration::from_secs(2),
            ..quick
        };
        assert!((late.gossip_value().as_secs_f64() - 20.5).abs() < 1e-6);
        // Past T too: 300·2, then 400·2 by 4 s, then 1400 Mbit/s.
        let both = Bound {
            state_info_interval: Duration::from_secs(4),
            ..late
        };
        let expected = 4.0 + (8000.0 - 600.0 - 800.0) / 1400.0;
        assert!((both.gossip_value().as_secs_f64() - expected).abs() < 1e-6);
        // One lagger with a late source: its own uplink never counts.
        let alone = Bound {
            bytes: 10_000_000, // 80 Mbit
            laggers: 1,
            ..late
        };
        // 300·2 = 600 ≥ 80: the early sources carry it all, in 80/300 s,
        // later than `value`'s F / u_s = 80/400 s.
        assert!((alone.gossip_value().as_secs_f64() - 80.0 / 300.0).abs() < 1e-6);
        assert!((alone.value().as_secs_f64() - 80.0 / 400.0).abs() < 1e-6);
        // A slow source binds: F / u_s.
        let b = Bound {
            source_uplink_bps: 10 * MBIT,
            ..b
        };
        assert!((b.value().as_secs_f64() - 80.0).abs() < 1e-6);
        // A slow downlink binds: F / d_min.
        let b = Bound {
            source_uplink_bps: 400 * MBIT,
            min_downlink_bps: 50 * MBIT,
            ..b
        };
        assert!((b.value().as_secs_f64() - 16.0).abs() < 1e-6);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}

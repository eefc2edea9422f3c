//! Configuration of both machines, with Fabric's preset and ours.

use std::time::Duration;

use prost::encoding::{encoded_len_varint, key_len};

/// What a NoopSign `Envelope` adds around a `GossipMessage` of `len` bytes:
/// the payload field's key and length. The signature is empty and the
/// secret envelope absent, so proto3 encodes neither.
fn envelope_framing(len: usize) -> usize {
    key_len(1) + encoded_len_varint(len as u64)
}

/// The largest `max_response_bytes` whose envelope fits `max_message_size`.
fn largest_response(max_message_size: usize) -> usize {
    // The framing of a shorter message is never longer, so this fits; it
    // may be short by the few bytes a shorter length varint saves.
    let mut len = max_message_size.saturating_sub(envelope_framing(max_message_size));
    while len < max_message_size && len + 1 + envelope_framing(len + 1) <= max_message_size {
        len += 1;
    }
    len
}

/// How the requester picks the peer for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerSelection {
    /// Uniformly at random among the eligible peers, remembering nothing:
    /// Fabric's `selectPeerToRequestFrom`.
    Random,
    /// The eligible peer with the fewest requests in flight, then the lowest
    /// smoothed RTT; peers that failed recently are benched with an
    /// exponential back-off, and a range that failed is retried elsewhere.
    Scored,
}

/// Settings of [`AntiEntropy`](crate::AntiEntropy) and
/// [`StateResponder`](crate::StateResponder).
///
/// Start from a preset and change fields:
///
/// ```
/// let mut config = antientropy::Config::default();
/// config.max_in_flight_per_peer = 4;
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    // --- rounds -----------------------------------------------------------
    /// Time between anti-entropy rounds (Fabric: `checkInterval`, 10 s).
    pub check_interval: Duration,
    /// Start a round as soon as a membership update shows a peer ahead of
    /// us, instead of waiting for the next interval (Fabric: no).
    pub round_on_membership: bool,

    // --- requests ---------------------------------------------------------
    /// A request asks for `[start, start + batch_size]` inclusive, so
    /// `batch_size + 1` blocks (Fabric: `batchSize`, 10). The responder
    /// rejects longer ranges. A stock Fabric responder rejects anything above
    /// its own value, 10 by default.
    pub batch_size: u64,
    /// Deadline of a request before any round trip has been measured, and
    /// the fixed deadline when `adaptive_timeout` is off (Fabric:
    /// `responseTimeout`, 3 s).
    pub response_timeout: Duration,
    /// Derive each peer's deadline from its measured round trips
    /// (SRTT + 4·RTTVAR, clamped to `min_response_timeout..=max_response_timeout`).
    pub adaptive_timeout: bool,
    /// Lower clamp of adaptive deadlines.
    pub min_response_timeout: Duration,
    /// Upper clamp of adaptive deadlines.
    pub max_response_timeout: Duration,
    /// Sends of one range beyond the first before the range is given up
    /// (Fabric: `maxRetries`, 3, so 4 sends); hedges do not count. With
    /// `adaptive_timeout`, a send lost on a path that works (its peer
    /// answered a later one) counts half: a range is given up after `max_retries + 1` sends its
    /// peers failed, or twice as many lost at random.
    pub max_retries: u32,
    /// Requests in flight at once over all peers (Fabric: 1).
    pub max_in_flight: usize,
    /// Requests in flight at once to one peer (Fabric: 1): the cap of the
    /// adaptive window, or the window itself when `adaptive_window` is off.
    pub max_in_flight_per_peer: usize,
    /// Size each peer's window of requests in flight from its round trips
    /// (TCP Vegas: grow while our requests do not queue at the peer, shrink
    /// when more than three do, halve on a timeout), starting at 2.
    pub adaptive_window: bool,
    /// How a peer is chosen for a request.
    pub peer_selection: PeerSelection,
    /// Hedging of the range that holds back the commit point: once its
    /// request has waited this long *and* longer than twice the asked peer's
    /// smoothed RTT, the same request goes to a second peer. `None`: never.
    pub hedge_after: Option<Duration>,

    // --- buffering and back-pressure ----------------------------------------
    /// Blocks from gossip or the orderer are buffered only if their number
    /// lies in `[height, height + block_buffer)` of the committed height
    /// (Fabric: `blockBufferSize`, 20, against the ledger height).
    pub block_buffer: u64,
    /// Blocks ahead of the host's committed height (requested, buffered, or
    /// delivered but not yet committed) beyond which no request is sent.
    /// Fabric's blocking `addPayload` waits while more than
    /// `2 · blockBufferSize` are buffered, which bounds it by 50.
    pub window_blocks: u64,
    /// The same bound in bytes of payloads held (buffered or delivered but
    /// not yet committed) plus the estimated size of those in flight.
    pub window_bytes: u64,
    /// Largest message accepted from a peer, in bytes (Fabric's gRPC
    /// default: 100 MiB).
    pub max_message_size: usize,

    // --- responder ------------------------------------------------------------
    /// Bytes of one encoded response message (the `GossipMessage` with its
    /// nonce, channel, tag and every payload's framing, computed exactly):
    /// the responder serves the longest prefix of the range that fits
    /// (always at least one block) and the requester asks again for the
    /// rest. The message wrapped in its NoopSign `Envelope` must fit
    /// `max_message_size`, so this is at most `max_message_size` less the
    /// envelope's key and length varint (5 bytes at 100 MiB). Fabric has no
    /// such cap; its preset uses the largest that the gRPC message limit,
    /// 100 MiB, lets through.
    pub max_response_bytes: usize,
    /// Requests of one peer being served at once (queued or being read).
    pub max_requests_per_peer: usize,
    /// Token bucket per peer: blocks per second it refills at. `u32::MAX`
    /// with a `u32::MAX` burst never binds.
    pub peer_blocks_per_second: u32,
    /// Token bucket per peer: its capacity in blocks. At least
    /// `batch_size + 1`, or a full request could never be admitted.
    pub peer_burst_blocks: u32,
    /// Requests waiting for a read slot over all peers (Fabric: 100,
    /// `channelSize`, then silent drops).
    pub max_queued_requests: usize,
    /// Reads handed to the host at once (Fabric serves one request at a time).
    pub max_concurrent_reads: usize,
    /// A read the host has not answered after this long is abandoned and its
    /// slot freed; a request still queued this long after its admission is
    /// dropped unread.
    pub read_timeout: Duration,
    /// Busy replies per peer: the empty response with the request's nonce
    /// that answers a load refusal (too many requests, rate, full queue) so
    /// that the requester asks elsewhere at once instead of timing out. A
    /// token bucket per peer refilled at this many replies per second; past
    /// it a refusal is silent. Must not be zero unless `busy_reply_burst`
    /// is.
    pub busy_replies_per_second: u32,
    /// The busy-reply bucket's capacity. Zero: load refusals are silent, as
    /// Fabric's (the Fabric preset).
    pub busy_reply_burst: u32,
    /// Put a peer whose recent requests mostly ask for blocks it was just
    /// served (a flood: a peer catching up asks for each block about once)
    /// in the background: its reads wait until no other peer has one
    /// waiting, and [`StateResponder::is_background`] tells the host to
    /// send its answers from spare capacity. Fabric serves every peer alike
    /// (off in its preset).
    ///
    /// [`StateResponder::is_background`]: crate::StateResponder::is_background
    pub background_repeaters: bool,
    /// When the queue is full, a request may take the newest queued place
    /// of another peer, whose request is refused then as a full queue
    /// refuses (a busy reply, within its budget; counted in
    /// [`ResponderStats::evicted`](crate::ResponderStats::evicted)): a
    /// foreground peer takes a background peer's place (see
    /// `background_repeaters`); a peer holding at least two places fewer
    /// (requests queued and being read) takes one of the peer holding the
    /// most; a peer holding none takes that of the peer whose latest read
    /// started last, if after its own latest, so that places go round when
    /// more peers want them than there are. A repeater
    /// (`StateResponder::is_repeater`) never takes another peer's place. A flooder whose requests fill the queue
    /// before any is served is never seen to repeat itself, so it would
    /// keep everyone else out of a short queue. Fabric's one FIFO drops
    /// what does not fit (off in its preset).
    pub fair_queue: bool,
    /// When more than twice this many peers are catching up from us at
    /// once, the first this many (in the order they began asking) are
    /// served in the foreground and the rest from spare capacity
    /// ([`StateResponder::is_background`]): a source shared equally by a
    /// crowd keeps every lagger at the same height, so none has blocks to
    /// pass on; served first, a few finish early and serve the others.
    /// Zero: everyone is served alike (the Fabric preset).
    ///
    /// [`StateResponder::is_background`]: crate::StateResponder::is_background
    pub favoured_peers: usize,
}

/// Bytes a payload costs in a response beyond its own (tags, lengths, the
/// private data's framing): a margin, not an exact count.
const PAYLOAD_FRAMING: u64 = 1024;

impl Config {
    /// How many blocks of about `block_bytes` one request asks for:
    /// `batch_size + 1`, as Fabric asks; with the adaptive window no more
    /// than one response of `max_response_bytes` holds (at least one). The
    /// requester plans with it and the simulator's amplification bound
    /// counts ranges with it.
    pub(crate) fn blocks_per_request(&self, block_bytes: u64) -> u64 {
        let most = self.batch_size.saturating_add(1);
        if !self.adaptive_window {
            return most;
        }
        let per_block = block_bytes.saturating_add(PAYLOAD_FRAMING);
        let fits = (self.max_response_bytes as u64) / per_block.max(1);
        fits.clamp(1, most)
    }

    /// Fabric's `gossip/state` defaults, exactly: a round every 10 s, 11-block
    /// requests (`batchSize` 10, inclusive), one in flight to a random
    /// eligible peer, a 3 s timeout, 4 sends then the round is abandoned,
    /// a 20-block gossip buffer, and a responder with Fabric's only limits
    /// (sequential service, 100 queued requests). Fabric's off-by-one and
    /// nonce-matching quirks are fixed in both presets (see the README).
    ///
    /// ```
    /// use std::time::Duration;
    /// use antientropy::Config;
    ///
    /// let fabric = Config::fabric();
    /// assert_eq!(fabric.check_interval, Duration::from_secs(10));
    /// assert_eq!((fabric.batch_size, fabric.max_in_flight), (10, 1));
    /// assert_eq!(fabric.response_timeout, Duration::from_secs(3));
    /// // The responder's answers fit gRPC's 100 MiB limit, envelope included.
    /// assert!(fabric.max_response_bytes < fabric.max_message_size);
    /// fabric.validate().unwrap();
    /// ```
    pub fn fabric() -> Self {
        Self {
            check_interval: Duration::from_secs(10),
            round_on_membership: false,
            batch_size: 10,
            response_timeout: Duration::from_secs(3),
            adaptive_timeout: false,
            min_response_timeout: Duration::from_secs(3),
            max_response_timeout: Duration::from_secs(3),
            max_retries: 3,
            max_in_flight: 1,
            max_in_flight_per_peer: 1,
            adaptive_window: false,
            peer_selection: PeerSelection::Random,
            hedge_after: None,
            block_buffer: 20,
            // Fabric's TestLargeBlockGap bound: 2 · blockBufferSize + batchSize.
            window_blocks: 50,
            window_bytes: u64::MAX,
            max_message_size: 100 * 1024 * 1024,
            // Fabric has no cap but gRPC's 100 MiB message limit, which
            // applies to the envelope: the largest response that still
            // decodes.
            max_response_bytes: largest_response(100 * 1024 * 1024),
            max_requests_per_peer: usize::MAX,
            peer_blocks_per_second: u32::MAX,
            peer_burst_blocks: u32::MAX,
            max_queued_requests: 100,
            max_concurrent_reads: 1,
            read_timeout: Duration::from_secs(60),
            // Fabric drops a request silently when its queue is full.
            busy_replies_per_second: 0,
            busy_reply_burst: 0,
            background_repeaters: false,
            fair_queue: false,
            favoured_peers: 0,
        }
    }

    /// Checks every field, returning the first degenerate one. Fabric accepts
    /// all of these silently (a zero `channelSize` drops every request, a
    /// zero `checkInterval` busy-loops, …).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError::*;
        let zero_durations = [
            ("check_interval", self.check_interval),
            ("response_timeout", self.response_timeout),
            ("min_response_timeout", self.min_response_timeout),
            ("read_timeout", self.read_timeout),
        ];
        for (field, value) in zero_durations {
            if value.is_zero() {
                return Err(Zero { field });
            }
        }
        let zero_counts = [
            ("batch_size", self.batch_size),
            ("block_buffer", self.block_buffer),
            ("window_blocks", self.window_blocks),
            ("window_bytes", self.window_bytes),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_in_flight_per_peer", self.max_in_flight_per_peer as u64),
            ("max_message_size", self.max_message_size as u64),
            ("max_response_bytes", self.max_response_bytes as u64),
            ("max_requests_per_peer", self.max_requests_per_peer as u64),
            (
                "peer_blocks_per_second",
                u64::from(self.peer_blocks_per_second),
            ),
            ("peer_burst_blocks", u64::from(self.peer_burst_blocks)),
            ("max_queued_requests", self.max_queued_requests as u64),
            ("max_concurrent_reads", self.max_concurrent_reads as u64),
        ];
        for (field, value) in zero_counts {
            if value == 0 {
                return Err(Zero { field });
            }
        }
        let blocks_per_request = self.batch_size.checked_add(1).ok_or(Overflow {
            field: "batch_size",
        })?;
        if self.window_blocks < blocks_per_request {
            return Err(Inconsistent {
                field: "window_blocks",
                reason: "must hold one full request (batch_size + 1 blocks)",
            });
        }
        if u64::from(self.peer_burst_blocks) < blocks_per_request {
            return Err(Inconsistent {
                field: "peer_burst_blocks",
                reason: "must admit one full request (batch_size + 1 blocks)",
            });
        }
        let envelope = self
            .max_response_bytes
            .saturating_add(envelope_framing(self.max_response_bytes));
        if envelope > self.max_message_size {
            return Err(Inconsistent {
                field: "max_response_bytes",
                reason: "must fit max_message_size once wrapped in its envelope",
            });
        }
        if self.min_response_timeout > self.max_response_timeout {
            return Err(Inconsistent {
                field: "min_response_timeout",
                reason: "must not exceed max_response_timeout",
            });
        }
        if self.max_in_flight_per_peer > self.max_in_flight {
            return Err(Inconsistent {
                field: "max_in_flight_per_peer",
                reason: "must not exceed max_in_flight",
            });
        }
        if self.busy_reply_burst > 0 && self.busy_replies_per_second == 0 {
            return Err(Zero {
                field: "busy_replies_per_second",
            });
        }
        if self.hedge_after.is_some_and(|d| d.is_zero()) {
            return Err(Zero {
                field: "hedge_after",
            });
        }
        Ok(())
    }
}

impl Default for Config {
    /// The pipelined engine. Each value and why:
    ///
    /// - `batch_size` 10: Fabric's, so every request passes a stock Fabric
    ///   responder's validator; speed comes from pipelining, not from size.
    /// - `adaptive_window` with `max_in_flight_per_peer` 128: each peer's
    ///   window starts at 2 requests and follows its bandwidth-delay product
    ///   (Vegas); 128 × 11 blocks covers a 100 Mbit/s × 100 ms product down
    ///   to 1 KiB blocks (at 32, 20 000 1 KiB blocks took 3.88× the bound,
    ///   at 128 3.05×). `max_in_flight` 512 lets four such peers stream.
    /// - `window_blocks` 16 384, `window_bytes` 64 MiB: the memory the
    ///   requester may hold ahead of the commit point, whichever binds first
    ///   (counting blocks alone OOM'd CometBFT forks with large blocks). The
    ///   bytes bind for blocks over 4 KiB; below, a 400 Mbit/s × 100 ms
    ///   product is 5 000 blocks of 1 KiB (at 4 096 the blocks bound held
    ///   1 KiB blocks at 80 % of such links).
    /// - `check_interval` 1 s and `round_on_membership`: catch-up starts when
    ///   a peer ahead is seen, and a range given up waits one second, not ten.
    /// - `response_timeout` 2 s before any sample, then adaptive per peer
    ///   within 200 ms..=10 s: fast failover from silent peers without
    ///   punishing slow links.
    /// - `max_retries` 5: with scored selection each retry goes to another
    ///   peer, so a range is given up only after six peers (or six tries
    ///   among fewer) failed it.
    /// - `hedge_after` 250 ms: the range holding back the commit point is
    ///   asked of another peer once it is late (up to three times), so one
    ///   slow, silent or lying peer cannot stall the window. A floor under
    ///   twice the asked peer's SRTT, so it matters where round trips are
    ///   short or unmeasured: a silent peer's first ranges (hostile, seed
    ///   1: 1.90× the bound at 500 ms, 1.42× at 250 ms). Lower values cost
    ///   more than they saved on the crowd of laggers (200 ms: 9.09× →
    ///   9.55×).
    /// - `block_buffer` 64: more room than Fabric's 20 for gossip blocks that
    ///   overtake the catch-up.
    /// - Responder: 16 MiB per encoded response, 1 024 queued requests,
    ///   16 concurrent reads started round-robin across peers, and 256
    ///   requests per peer at once: twice our requester's per-peer cap (128),
    ///   so an honest requester is never refused even with some timed-out
    ///   requests still held here. That cap is the real protection: a peer
    ///   never has more than 256 requests (2 816 blocks) of work with us, and
    ///   round-robin gives it only its share of the reads. The per-peer block
    ///   rate is off (`u32::MAX`): a rate in blocks ignores block size and
    ///   link speed, so any fixed value either starves a fast honest link
    ///   (100 000 blocks/s refused our requester on loopback: 1.6 s and 28
    ///   timeouts instead of 0.32 s for 100 000 1 KiB blocks) or does not
    ///   bind a flooder; set it to cap a peer's share of disk bandwidth.
    ///   Reads are abandoned, and queued requests dropped, after 10 s, our
    ///   requester's longest deadline: an answer later than that is wasted,
    ///   and the slot is worth more. A load refusal gets a busy reply (100/s
    ///   per peer, burst 128: one full window) so it costs the requester a
    ///   round trip, not a timeout, while a flooder cannot make us send
    ///   more than 100 small messages a second. `fair_queue`: a full queue
    ///   makes room for a peer holding two places fewer than the peer that
    ///   holds the most, and places go round among peers one apart (with a
    ///   queue of two, one flooder kept two laggers out, 18.1 s against
    ///   3.0 s unattacked, 3.1 s with it; three stalled them, 4.1 s now).
    ///
    /// ```
    /// use std::time::Duration;
    /// use antientropy::Config;
    ///
    /// let mut config = Config::default();
    /// // Requests stay Fabric's size, so stock Fabric responders serve them…
    /// assert_eq!(config.batch_size, Config::fabric().batch_size);
    /// // …but many are in flight, to several peers.
    /// assert_eq!((config.max_in_flight, config.max_in_flight_per_peer), (512, 128));
    /// // Change what your links need (README, "Configuration"), then check:
    /// config.window_bytes = 256 << 20; // large blocks
    /// config.validate().unwrap();
    /// config.max_in_flight_per_peer = 1024; // more than max_in_flight
    /// assert!(config.validate().is_err());
    /// ```
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(1),
            round_on_membership: true,
            batch_size: 10,
            response_timeout: Duration::from_secs(2),
            adaptive_timeout: true,
            min_response_timeout: Duration::from_millis(200),
            max_response_timeout: Duration::from_secs(10),
            max_retries: 5,
            max_in_flight: 512,
            max_in_flight_per_peer: 128,
            adaptive_window: true,
            peer_selection: PeerSelection::Scored,
            hedge_after: Some(Duration::from_millis(250)),
            block_buffer: 64,
            window_blocks: 16384,
            window_bytes: 64 * 1024 * 1024,
            max_message_size: 100 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_requests_per_peer: 256,
            peer_blocks_per_second: u32::MAX,
            peer_burst_blocks: u32::MAX,
            max_queued_requests: 1024,
            max_concurrent_reads: 16,
            read_timeout: Duration::from_secs(10),
            busy_replies_per_second: 100,
            busy_reply_burst: 128,
            background_repeaters: true,
            fair_queue: true,
            favoured_peers: 3,
        }
    }
}

/// A configuration value that would make a machine misbehave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The field is zero, which stalls or busy-loops the machine.
    #[error("`{field}` must not be zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// The field makes a block range overflow `u64`.
    #[error("`{field}` overflows a u64 block range")]
    Overflow {
        /// The field's name.
        field: &'static str,
    },
    /// The field contradicts another one.
    #[error("`{field}` {reason}")]
    Inconsistent {
        /// The field's name.
        field: &'static str,
        /// What it contradicts.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fabric_preset_holds_fabric_defaults() {
        let c = Config::fabric();
        assert_eq!(c.check_interval, Duration::from_secs(10));
        assert_eq!(c.response_timeout, Duration::from_secs(3));
        assert!(!c.adaptive_timeout);
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.block_buffer, 20);
        assert_eq!(c.max_in_flight, 1);
        assert_eq!(c.max_in_flight_per_peer, 1);
        assert_eq!(c.peer_selection, PeerSelection::Random);
        assert_eq!(c.max_queued_requests, 100);
        assert_eq!(c.hedge_after, None);
        assert!(!c.round_on_membership);
        c.validate().unwrap();
    }

    #[test]
    fn default_preset_is_valid_and_interoperable() {
        let c = Config::default();
        c.validate().unwrap();
        // A stock Fabric responder validates against its own batchSize (10).
        assert!(c.batch_size <= Config::fabric().batch_size);
        assert!(c.max_in_flight > 1);
        assert!(c.max_in_flight_per_peer <= c.max_requests_per_peer);
        assert!(c.busy_reply_burst as usize >= c.max_in_flight_per_peer);
        let c = Config {
            busy_replies_per_second: 0,
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                field: "busy_replies_per_second"
            })
        );
    }

    #[test]
    fn the_largest_response_fits_its_envelope_exactly() {
        for max in [1usize << 7, 1 << 14, 100 * 1024 * 1024, 1 << 28] {
            let mut c = Config {
                max_message_size: max,
                max_response_bytes: largest_response(max),
                ..Config::default()
            };
            c.validate().unwrap();
            c.max_response_bytes += 1;
            assert!(c.validate().is_err(), "{max}");
        }
        assert_eq!(Config::fabric().max_response_bytes, 100 * 1024 * 1024 - 5);
    }

    #[test]
    fn validate_names_each_zero_field() {
        type Set = fn(&mut Config);
        let cases: [(&str, Set); 16] = [
            ("check_interval", |c| c.check_interval = Duration::ZERO),
            ("response_timeout", |c| c.response_timeout = Duration::ZERO),
            ("min_response_timeout", |c| {
                c.min_response_timeout = Duration::ZERO
            }),
            ("read_timeout", |c| c.read_timeout = Duration::ZERO),
            ("batch_size", |c| c.batch_size = 0),
            ("block_buffer", |c| c.block_buffer = 0),
            ("window_blocks", |c| c.window_blocks = 0),
            ("window_bytes", |c| c.window_bytes = 0),
            ("max_in_flight", |c| c.max_in_flight = 0),
            ("max_in_flight_per_peer", |c| c.max_in_flight_per_peer = 0),
            ("max_message_size", |c| c.max_message_size = 0),
            ("max_response_bytes", |c| c.max_response_bytes = 0),
            ("max_requests_per_peer", |c| c.max_requests_per_peer = 0),
            ("peer_blocks_per_second", |c| c.peer_blocks_per_second = 0),
            ("max_queued_requests", |c| c.max_queued_requests = 0),
            ("max_concurrent_reads", |c| c.max_concurrent_reads = 0),
        ];
        for (field, set) in cases {
            for mut config in [Config::fabric(), Config::default()] {
                set(&mut config);
                assert_eq!(
                    config.validate(),
                    Err(ConfigError::Zero { field }),
                    "{field}"
                );
            }
        }
    }

    #[test]
    fn validate_rejects_overflow_and_contradictions() {
        let c = Config {
            batch_size: u64::MAX,
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Overflow {
                field: "batch_size"
            })
        );

        let mut c = Config::default();
        c.window_blocks = c.batch_size;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Inconsistent {
                field: "window_blocks",
                ..
            })
        ));

        let c = Config {
            peer_burst_blocks: 5,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Inconsistent {
                field: "peer_burst_blocks",
                ..
            })
        ));

        let mut c = Config::default();
        c.min_response_timeout = c.max_response_timeout + Duration::from_secs(1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Inconsistent {
                field: "min_response_timeout",
                ..
            })
        ));

        let mut c = Config::default();
        c.max_response_bytes = c.max_message_size;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Inconsistent {
                field: "max_response_bytes",
                ..
            })
        ));

        let mut c = Config::default();
        c.max_in_flight_per_peer = c.max_in_flight + 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Inconsistent {
                field: "max_in_flight_per_peer",
                ..
            })
        ));

        let c = Config {
            hedge_after: Some(Duration::ZERO),
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero {
                field: "hedge_after"
            })
        );
    }
}

//! The transport's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use super::GrpcTransport;

/// Counters of a [`GrpcTransport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcStats {
    /// Streams that passed the handshake (dialled or accepted).
    pub connected: u64,
    /// Of those, streams that ended.
    pub disconnected: u64,
    /// Dials that failed before a handshake (TCP, TLS, Ping, the stream).
    pub dial_failures: u64,
    /// Handshakes refused, either side ([`GrpcTransport::refusals`]).
    pub handshake_refusals: u64,
    /// Probe handshakes answered (Fabric's `Handshake()`), not registered.
    pub probes: u64,
    /// State messages handed to a driver.
    pub state_in: u64,
    /// Messages written to streams.
    pub messages_out: u64,
    /// Streams closed on a payload that is not a `GossipMessage`, as
    /// Fabric closes them.
    pub malformed: u64,
    /// Messages over `max_message_size`: outgoing ones dropped, incoming
    /// ones end their stream (gRPC refuses them).
    pub oversized: u64,
    /// State messages dropped: the remote's handshake does not satisfy the
    /// channel's policy
    /// ([`Verifier::verify_by_channel`](crate::fabric::Verifier::verify_by_channel)).
    pub unauthorized: u64,
    /// Messages nothing here acts on (gossip of blocks, leadership, a state
    /// message with no driver attached for it, …), dropped.
    pub ignored: u64,
    /// StateInfo messages taken into the membership.
    pub state_infos: u64,
    /// StateInfo messages refused (MAC, identity, signature, stale).
    pub state_infos_refused: u64,
    /// Inputs the machines refused ([`Transport::refused`](crate::adapters::Transport::refused)).
    pub refused: u64,
    /// Streams closed because HTTP/2 took nothing we queued for
    /// [`GrpcConfig::write_timeout`](super::GrpcConfig::write_timeout).
    pub write_timeouts: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) connected: AtomicU64,
    pub(super) disconnected: AtomicU64,
    pub(super) dial_failures: AtomicU64,
    pub(super) handshake_refusals: AtomicU64,
    pub(super) probes: AtomicU64,
    pub(super) state_in: AtomicU64,
    pub(super) messages_out: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) oversized: AtomicU64,
    pub(super) unauthorized: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) state_infos: AtomicU64,
    pub(super) state_infos_refused: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) write_timeouts: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl GrpcTransport {
    /// The transport's counters.
    pub fn stats(&self) -> GrpcStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GrpcStats {
            connected: get(&c.connected),
            disconnected: get(&c.disconnected),
            dial_failures: get(&c.dial_failures),
            handshake_refusals: get(&c.handshake_refusals),
            probes: get(&c.probes),
            state_in: get(&c.state_in),
            messages_out: get(&c.messages_out),
            malformed: get(&c.malformed),
            oversized: get(&c.oversized),
            unauthorized: get(&c.unauthorized),
            ignored: get(&c.ignored),
            state_infos: get(&c.state_infos),
            state_infos_refused: get(&c.state_infos_refused),
            refused: get(&c.refused),
            write_timeouts: get(&c.write_timeouts),
        }
    }
}

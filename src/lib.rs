//! Hyperledger Fabric's gossip state transfer ("anti-entropy" block
//! catch-up) as sans-IO state machines.
//!
//! A peer whose ledger is behind fetches the missing blocks from peers that
//! advertise a greater height. [`AntiEntropy`] is the requester,
//! [`StateResponder`] the serving side; both speak Fabric's wire format
//! ([`wire`]) byte for byte. [`Config::fabric`] reproduces Fabric's
//! algorithm; [`Config::default`] is a pipelined, multi-peer engine.
//!
//! # The contract
//!
//! The machines do no IO: no threads, sockets, clocks or OS randomness.
//!
//! - **Time is passed in.** Every input carries `now`; it must not go
//!   backwards (an earlier `now` is treated as the latest one seen).
//! - **Randomness is seeded.** [`AntiEntropy::new`] takes a `seed`; the same
//!   seed and the same inputs give the same actions, always.
//! - **Drain after every input.** After each `handle`, call `poll_action`
//!   until it returns `None`, then `poll_timeout` and arm one timer for the
//!   instant it returns; when it fires, `handle` a `Timeout`. Calling early
//!   or twice is harmless. A host that was stopped past a deadline (a
//!   suspended VM, a starved runtime) hands in the inputs that queued
//!   meanwhile first, then the `Timeout`: an input long after a deadline
//!   shows the stall, and the requester judges no deadline until that
//!   `Timeout` ([`AntiEntropy::deadlines_deferred`]), so queued answers
//!   count as answers, not as timeouts.
//! - **Connections are events.** A host whose transport knows when a
//!   connection to a peer breaks sends [`Event::PeerDisconnected`] at once
//!   (the peer's requests move to other peers instead of timing out) and
//!   [`Event::PeerConnected`] when one is up again (the peer is forgiven and
//!   asked at once). A host that never sends them loses nothing but speed:
//!   peers start connected, and a lost peer is found by its timeouts.
//! - **Bad input never panics.** What a peer sends is checked; a refused
//!   input is a typed error (and counted), a request that ends for good is
//!   an action ([`Action::GiveUp`]).
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use antientropy::{Action, AntiEntropy, Config, Event, PeerState};
//!
//! let now = Instant::now(); // the host's clock; the machine never reads one
//! let mut requester: AntiEntropy<&str> =
//!     AntiEntropy::new(Config::default(), "mychannel".into(), 1, 7, now).unwrap();
//! requester
//!     .handle(now, Event::Membership(vec![PeerState::new("peer0", 16)]))
//!     .unwrap();
//! let mut asked = Vec::new();
//! while let Some(action) = requester.poll_action() {
//!     if let Action::SendRequest { to, message } = action {
//!         let request = antientropy::wire::as_state_request(&message).unwrap();
//!         asked.push((to, request.start_seq_num, request.end_seq_num));
//!     }
//! }
//! // Blocks 1..=15 are missing: two requests of at most 11 blocks, in flight at once.
//! assert_eq!(asked, [("peer0", 1, 11), ("peer0", 12, 15)]);
//! assert!(requester.poll_timeout().unwrap() > now);
//! ```
//!
//! # Features
//!
//! None is on by default: the machines and [`wire`] need only `bytes`,
//! `prost`, `thiserror` and `fastrand`.
//!
//! - `hash`: Fabric's block hashes ([`wire::block_header_hash`],
//!   [`wire::verify_chain_link`], …), with RustCrypto's `sha2`.
//! - `tokio`, `smol`: [`adapters`] that run either machine on that runtime.
//! - `sim`: [`sim`], the deterministic network simulator.
//! - `fabric-grpc`: [`fabric`], Fabric's gossip comm layer (gRPC over
//!   mutual TLS, the signed handshake, membership) to talk to real Fabric
//!   peers.
//!
//! # Public dependencies
//!
//! Types of these crates appear in this crate's API, so they are re-exported
//! at its root (`antientropy::bytes`, `antientropy::prost`, …): use them
//! through the re-export and your versions always match ours. A new major
//! version of any of them is a breaking release of this crate (README,
//! "Semver policy").
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Runtime adapters (features `tokio`, `smol`): drive either machine on an
/// async runtime, with the clock, the timer and the channels it supplies.
// First: its macro is used by the modules below.
#[macro_use]
mod trace;

#[cfg(any(feature = "tokio", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "smol"))))]
pub mod adapters;
mod arith;
mod buffer;
mod config;
#[cfg(feature = "fabric-grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "fabric-grpc")))]
pub mod fabric;
mod range;
mod requester;
mod responder;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod wire;

// The public dependencies (see "Public dependencies" above).
/// `async-channel`: [`adapters::smol`] hands out its channels.
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub use async_channel;
/// `async-io`: [`adapters::smol`]'s timer is an `async_io::Timer`.
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub use async_io;
/// `bytes`: every `bytes` field of [`wire`]'s messages is a [`bytes::Bytes`].
pub use bytes;
/// `fastrand`: [`sim`] takes a `fastrand::Rng` where it forges blocks.
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub use fastrand;
/// `prost`: [`wire`]'s messages implement [`prost::Message`], and
/// [`wire::WireError`] carries a [`prost::DecodeError`].
pub use prost;
/// `tokio`: [`adapters::tokio`] hands out `tokio::sync::mpsc` channels.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokio;
/// `tonic`: [`fabric::gossip_client`] and [`fabric::gossip_server`] are
/// tonic services.
#[cfg(feature = "fabric-grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "fabric-grpc")))]
pub use tonic;

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The one clock read of the unit tests: an epoch that virtual time counts
/// from. Machine code never reads the clock.
#[cfg(test)]
pub(crate) fn test_epoch() -> std::time::Instant {
    #[allow(clippy::disallowed_methods)]
    std::time::Instant::now()
}

pub use buffer::{payload_size, PayloadBuffer, PushOutcome};
pub use config::{Config, ConfigError, PeerSelection};
pub use range::SeqRange;
pub use requester::{
    Action, AntiEntropy, Event, EventError, GiveUpReason, IgnoredCounts, Origin, PeerState,
    PeerStats, ResponseError, Stats,
};
pub use responder::{
    RequestError, ResponderAction, ResponderEvent, ResponderStats, StateResponder, Ticket,
};

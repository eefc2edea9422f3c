//! One driver loop, written once, that any async runtime can run; its
//! handle; and (features `tokio-net`, `smol-net`) a framing and a TCP
//! transport.
//!
//! The machines do no IO; something has to read the clock, arm a timer,
//! receive inputs and carry out actions. [`Driver`] does it, following
//! quinn's connection driver: it owns one [`Machine`] (an [`AntiEntropy`] or
//! a [`StateResponder`]), its [`Host`] (where the outputs go) and the
//! receiving end of a bounded inbox, and it is a [`Future`] that a runtime
//! spawns. [`DriverHandle`]s feed the inbox, read the machine's counters
//! and shut the driver down; the future's output is then the machine and
//! the host. A runtime supplies only what [`Runtime`] names: its clock, a
//! timer and a channel. The `tokio` and `smol` modules (features of the
//! same names) are two such parts; a third runtime needs nothing more.
//!
//! ```text
//!  DriverHandle ──▶ bounded inbox ──▶ Driver::poll ──▶ machine.handle(now, input) ──▶ drain poll_output ──▶ Host::on_output
//!  (events, raw bytes,                 ▲   │                                                                 │
//!   shutdown)          one timer ──────┘   └── poll_timeout → re-arm only if changed     Feedback (Committed, BlocksRead) ◀┘
//!  WeakDriverHandle ──▶ (the same inbox: a host's later answers, a transport's frames and connection events)
//! ```
//!
//! # Each wake-up
//!
//! 1. Inputs: what the host fed back first ([`Feedback`]), then the inbox,
//!    at most `budget` of them. After each one the machine's outputs are
//!    drained into the host until `poll_output` returns `None`.
//! 2. Timer: the clock is compared with [`poll_timeout`]
//!    *before* the timer is trusted (a runtime may report an elapsed sleep as
//!    pending, e.g. tokio's co-operative budget), so a due deadline is handled
//!    at once. Otherwise the single timer is re-armed only if the deadline
//!    changed, and polled so that it wakes the driver. Not while inputs are
//!    left over from step 1 and the machine wants them first (a requester
//!    back from a host stall, [`Machine::inputs_first`]; it bounds that wait
//!    itself).
//! 3. If the budget ran out, the driver wakes itself and yields, so one busy
//!    machine cannot starve the other tasks of its runtime.
//!
//! # Handles and the driver's end
//!
//! [`DriverHandle`] (clone it freely) sends events ([`send`]), the raw
//! bytes of an encoded `Envelope` from a peer ([`send_bytes`], decoded by
//! the machine within its `max_message_size`: malformed bytes reach its
//! `malformed` counter and [`Host::on_refused`] with the peer), reads the
//! machine's counters ([`DriverHandle::stats`], [`with_machine`]) under the
//! lock the driver holds for one wake-up, and asks for a [`shutdown`].
//!
//! The driver ends once a shutdown is handled (inputs queued before it are
//! handled, those after it dropped) or once every strong handle is dropped
//! and the inbox drained. Its future's output is `(machine, host)`.
//! [`WeakDriverHandle`] sends the same inputs without keeping the driver
//! alive: give one to a host that answers later, since the driver owns the
//! host and a strong handle there would keep it running forever.
//!
//! Every refusal of an input from a peer reaches [`Host::on_refused`] with
//! that peer; [`RequesterHost`] and [`ResponderHost`] forward it to
//! [`Transport::refused`], where a transport may count it or ban the peer.
//!
//! # Back-pressure
//!
//! Nothing inside the loop blocks or waits:
//!
//! - **Inbox.** Bounded, with the capacity given when the driver is made. A
//!   producer that awaits [`send`] waits for room, which is the back-pressure
//!   a socket reader should apply (it stops reading, and TCP's flow control
//!   slows the peer). A producer that uses [`try_send`] drops the input when
//!   the inbox is full: acceptable for peer messages, since a lost request
//!   or response costs the requester one deadline and a re-send; host
//!   inputs (`Membership`, `Committed`, `BlocksRead`) should be awaited.
//! - **Outputs.** [`Transport::send`] must not block: it queues the message
//!   (typically on a bounded per-peer writer queue) or refuses it with a
//!   [`SendError`]. A refused message is dropped and counted
//!   ([`RequesterHost::dropped_sends`], [`ResponderHost::dropped_sends`]);
//!   the requester treats it as a lost message and re-sends on its deadline.
//! - **Host work.** [`Ledger::add_payload`] and [`BlockStore::read_blocks`]
//!   must not block either: answer at once from memory, or return
//!   [`Verdict::Later`] / `None` and send the answer through a
//!   [`WeakDriverHandle`] when it is ready (below). The machines bound what
//!   is outstanding (the requester's window, the responder's read slots),
//!   so the host needs no other bound.
//! - **Work per wake-up.** At most `budget` inputs and `budget` timeouts
//!   ([`DEFAULT_BUDGET`], [`Driver::with_budget`]).
//!
//! # Example: an asynchronous host (tokio)
//!
//! A responder whose store reads on another task: `read_blocks` returns
//! `None`, and the task answers through a [`WeakDriverHandle`] made before
//! the driver ([`inbox`]). The driver still ends at `shutdown`, or when the
//! last strong handle is dropped.
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use antientropy::adapters::tokio::{self as rt, WeakDriverHandle};
//! use antientropy::adapters::{BlockStore, Driver, ResponderHost, SendError, Transport};
//! use antientropy::wire::{self, gossip::{GossipMessage, Payload}};
//! use antientropy::{Config, ResponderEvent, SeqRange, StateResponder, Ticket};
//!
//! /// Reads on a task of its own, as a store on disk would.
//! struct AsyncStore {
//!     driver: WeakDriverHandle<StateResponder<u32>>,
//! }
//!
//! impl BlockStore<u32> for AsyncStore {
//!     fn read_blocks(&mut self, ticket: Ticket, _: &u32, range: SeqRange, _: usize)
//!         -> Option<Vec<Payload>>
//!     {
//!         let driver = self.driver.clone();
//!         tokio::spawn(async move {
//!             let payloads = (range.start()..=range.end())
//!                 .map(|seq_num| Payload { seq_num, ..Default::default() })
//!                 .collect();
//!             // Fails only if the driver has ended meanwhile.
//!             let _ = driver.send(ResponderEvent::BlocksRead { ticket, payloads }).await;
//!         });
//!         None // answered later
//!     }
//! }
//!
//! /// Collects what would go on the wire.
//! struct Outbox(Vec<(u32, GossipMessage)>);
//! impl Transport<u32> for Outbox {
//!     fn send(&mut self, to: &u32, message: GossipMessage) -> Result<(), SendError> {
//!         self.0.push((*to, message));
//!         Ok(())
//!     }
//! }
//!
//! let responder = StateResponder::new(Config::default(), "ch".into(), 100).unwrap();
//! let (handle, inbox) = rt::inbox(64);
//! let store = AsyncStore { driver: handle.downgrade() };
//! let driver = tokio::spawn(Driver::new(responder, ResponderHost::new(Outbox(Vec::new()), store), inbox));
//!
//! let request = wire::state_request(7, "ch".into(), 10, 12);
//! handle.send(ResponderEvent::Request { from: 2, message: request }).await.unwrap();
//! // Garbage from peer 3: refused, counted, and `Host::on_refused` is told it came from 3.
//! handle.send_bytes(3, bytes::Bytes::from_static(b"\xff\xff")).await.unwrap();
//! while handle.stats().unwrap().responses == 0 {
//!     tokio::task::yield_now().await; // the read completes on its own task
//! }
//! assert_eq!(handle.stats().unwrap().malformed, 1);
//!
//! handle.shutdown().await.unwrap();
//! let (responder, host) = driver.await.unwrap();
//! assert_eq!(responder.stats().blocks_served, 3);
//! assert_eq!(host.transport.0[0].0, 2);
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # Framing and transport
//!
//! Features `tokio-net` and `smol-net` add `codec`: frames of a
//! big-endian `u32` length and an encoded Fabric `Envelope` (as
//! [`wire::wrap_envelope`] makes it), for `tokio_util::codec` and for
//! `asynchronous_codec` (futures-io, smol's ecosystem). `tokio-net` also
//! adds `tcp`, a TCP transport that dials with reconnection and
//! back-off, accepts, and feeds a driver frames and connection events.
//!
//! **This is not Fabric's comm layer.** Fabric peers talk gRPC
//! (`GossipStream` over HTTP/2, with a TLS-bound handshake); this framing
//! carries the same `Envelope` bytes over plain TCP, between peers that
//! both use it. To speak to real Fabric peers, use `antientropy::fabric`
//! (feature `fabric-grpc`).
//!
//! [`Driver`]: crate::adapters::Driver
//! [`Driver::with_budget`]: crate::adapters::Driver::with_budget
//! [`Machine`]: crate::adapters::Machine
//! [`poll_timeout`]: crate::adapters::Machine::poll_timeout
//! [`send`]: crate::adapters::DriverHandle::send
//! [`try_send`]: crate::adapters::DriverHandle::try_send
//! [`send_bytes`]: crate::adapters::DriverHandle::send_bytes
//! [`with_machine`]: crate::adapters::DriverHandle::with_machine
//! [`shutdown`]: crate::adapters::DriverHandle::shutdown
//! [`AntiEntropy`]: crate::AntiEntropy
//! [`StateResponder`]: crate::StateResponder
//! [`Future`]: std::future::Future
//! [`wire::wrap_envelope`]: crate::wire::wrap_envelope

#[cfg(any(feature = "tokio-net", feature = "smol-net"))]
pub mod codec;
mod driver;
mod handle;
mod host;
mod machine;
mod runtime;
#[cfg(feature = "tokio-net")]
pub(crate) mod send_gate;
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub mod smol;
#[cfg(feature = "tokio-net")]
pub mod tcp;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

pub use driver::{inbox, Driver, DriverStats, Inbox, DEFAULT_BUDGET};
pub use handle::{DriverHandle, WeakDriverHandle};
pub use host::{
    BlockStore, Feedback, Host, Ledger, RequesterHost, ResponderHost, SendError, Transport, Verdict,
};
pub use machine::{route, Inbound, Machine};
pub use runtime::Runtime;

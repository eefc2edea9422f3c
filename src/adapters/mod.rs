//! One driver loop, written once, that any async runtime can run.
//!
//! The machines do no IO; something has to read the clock, arm a timer,
//! receive inputs and carry out actions. [`Driver`] does it, following
//! quinn's connection driver: it owns one [`Machine`] (an [`AntiEntropy`] or
//! a [`StateResponder`]), its [`Host`] (where the outputs go) and the
//! receiving end of a bounded channel of inputs, and it is a [`Future`]
//! that a runtime spawns. A runtime supplies only what [`Runtime`] names: its
//! clock, a timer and the receiving side of its channel. The `tokio` and
//! `smol` modules (features of the same names) are two such parts of about
//! thirty lines each; a third runtime needs nothing more.
//!
//! ```text
//!  senders ──▶ bounded inbox ──▶ Driver::poll ──▶ machine.handle(now, input) ──▶ drain poll_action ──▶ Host::on_output
//!                                  ▲   │                                                               │
//!                  one timer ──────┘   └── poll_timeout → re-arm only if changed   Feedback (Committed, BlocksRead) ◀┘
//! ```
//!
//! # Each wake-up
//!
//! 1. Inputs: what the host fed back first ([`Feedback`]), then the inbox,
//!    at most `budget` of them. After each one the machine's outputs are
//!    drained into the host until `poll_action` returns `None`.
//! 2. Timer: the clock is compared with [`poll_timeout`]
//!    *before* the timer is trusted (a runtime may report an elapsed sleep as
//!    pending, e.g. tokio's co-operative budget), so a due deadline is handled
//!    at once. Otherwise the single timer is re-armed only if the deadline
//!    changed, and polled so that it wakes the driver.
//! 3. If the budget ran out, the driver wakes itself and yields, so one busy
//!    machine cannot starve the other tasks of its runtime.
//!
//! The driver ends (its future completes) once every sender of its inbox is
//! dropped and the inputs already queued are handled; [`Driver::into_parts`]
//! then gives the machine and the host back.
//!
//! # Back-pressure
//!
//! Nothing inside the loop blocks or waits:
//!
//! - **Inbox.** Bounded, with the capacity given when the driver is made. A
//!   producer that awaits `send` waits for room, which is the back-pressure
//!   a socket reader should apply (it stops reading, and TCP's flow control
//!   slows the peer). A producer that uses `try_send` drops the input when
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
//!   [`Verdict::Later`] / `None` and send the answer through the inbox when
//!   it is ready. The machines bound what is outstanding (the requester's
//!   window, the responder's read slots), so the host needs no other bound.
//! - **Work per wake-up.** At most `budget` inputs and `budget` timeouts
//!   ([`DEFAULT_BUDGET`], [`Driver::with_budget`]).
//!
//! # Example (tokio)
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn doc() {
//! use antientropy::adapters::{self, RequesterHost, Runtime};
//! # use antientropy::adapters::{Ledger, SendError, Transport, Verdict};
//! # use antientropy::{Origin, wire::gossip::{GossipMessage, Payload}};
//! use antientropy::{AntiEntropy, Config, Event, PeerState};
//! # struct Net; impl Transport<u32> for Net {
//! #     fn send(&mut self, _: &u32, _: GossipMessage) -> Result<(), SendError> { Ok(()) } }
//! # struct Chain; impl Ledger<u32> for Chain {
//! #     fn add_payload(&mut self, _: Payload, _: Origin<u32>) -> Verdict { Verdict::Committed } }
//!
//! let now = adapters::tokio::Tokio::now();
//! let requester = AntiEntropy::<u32>::new(Config::default(), "ch".into(), 1, 7, now).unwrap();
//! let host = RequesterHost::new(Net, Chain);
//! let (inputs, driver) = adapters::tokio::driver(requester, host, 1024);
//! tokio::spawn(driver);
//! // A reader task feeds `Event::Response`s; the host feeds membership:
//! inputs.send(Event::Membership(vec![PeerState::new(2, 500)])).await.unwrap();
//! // ...and the transport's view of each connection, as it changes (a
//! // reader task that sees its socket close sends `PeerDisconnected`):
//! inputs.send(Event::PeerConnected { peer: 2 }).await.unwrap();
//! # }
//! ```
//!
//! [`Driver`]: crate::adapters::Driver
//! [`Driver::into_parts`]: crate::adapters::Driver::into_parts
//! [`Driver::with_budget`]: crate::adapters::Driver::with_budget
//! [`Machine`]: crate::adapters::Machine
//! [`poll_timeout`]: crate::adapters::Machine::poll_timeout
//! [`Host`]: crate::adapters::Host
//! [`Runtime`]: crate::adapters::Runtime
//! [`Feedback`]: crate::adapters::Feedback
//! [`Transport::send`]: crate::adapters::Transport::send
//! [`SendError`]: crate::adapters::SendError
//! [`RequesterHost::dropped_sends`]: crate::adapters::RequesterHost::dropped_sends
//! [`ResponderHost::dropped_sends`]: crate::adapters::ResponderHost::dropped_sends
//! [`Ledger::add_payload`]: crate::adapters::Ledger::add_payload
//! [`BlockStore::read_blocks`]: crate::adapters::BlockStore::read_blocks
//! [`Verdict::Later`]: crate::adapters::Verdict::Later
//! [`DEFAULT_BUDGET`]: crate::adapters::DEFAULT_BUDGET
//! [`AntiEntropy`]: crate::AntiEntropy
//! [`StateResponder`]: crate::StateResponder
//! [`Future`]: std::future::Future

#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub mod smol;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::wire::gossip::{GossipMessage, Payload};
use crate::{
    wire, Action, AntiEntropy, Event, EventError, GiveUpReason, Origin, RequestError,
    ResponderAction, ResponderEvent, SeqRange, StateResponder, Ticket,
};

/// Inputs handled, and separately timeouts handled, per wake-up before the
/// driver yields.
pub const DEFAULT_BUDGET: usize = 64;

// --- the machines ---------------------------------------------------------------

/// A sans-IO machine a [`Driver`] can run: `handle(now, input)`, then drain
/// `poll_output`, then `poll_timeout`. [`AntiEntropy`] and
/// [`StateResponder`] implement it.
pub trait Machine {
    /// What goes in ([`Event`], [`ResponderEvent`]).
    type Input;
    /// What comes out ([`Action`], [`ResponderAction`]).
    type Output;
    /// Why an input was refused ([`EventError`], [`RequestError`]).
    type Error;

    /// Applies one input at `now`.
    fn handle(&mut self, now: Instant, input: Self::Input) -> Result<(), Self::Error>;
    /// The next output, if any.
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// When to feed [`timeout`](Self::timeout) next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The input that says a deadline may have passed.
    fn timeout() -> Self::Input;
}

impl<P: Clone + Ord + fmt::Debug> Machine for AntiEntropy<P> {
    type Input = Event<P>;
    type Output = Action<P>;
    type Error = EventError;

    fn handle(&mut self, now: Instant, input: Event<P>) -> Result<(), EventError> {
        AntiEntropy::handle(self, now, input)
    }
    fn poll_output(&mut self) -> Option<Action<P>> {
        self.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        AntiEntropy::poll_timeout(self)
    }
    fn timeout() -> Event<P> {
        Event::Timeout
    }
}

impl<P: Clone + Ord + fmt::Debug> Machine for StateResponder<P> {
    type Input = ResponderEvent<P>;
    type Output = ResponderAction<P>;
    type Error = RequestError;

    fn handle(&mut self, now: Instant, input: ResponderEvent<P>) -> Result<(), RequestError> {
        StateResponder::handle(self, now, input)
    }
    fn poll_output(&mut self) -> Option<ResponderAction<P>> {
        self.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        StateResponder::poll_timeout(self)
    }
    fn timeout() -> ResponderEvent<P> {
        ResponderEvent::Timeout
    }
}

// --- where outputs go -----------------------------------------------------------

/// Inputs a [`Host`] produces while carrying out an output (a block it has
/// just committed, blocks it has just read). The driver handles them after
/// the drain, before the inbox, within the same budget.
#[derive(Debug)]
pub struct Feedback<I> {
    queue: VecDeque<I>,
}

impl<I> Feedback<I> {
    /// Queues `input` for the machine.
    pub fn push(&mut self, input: I) {
        self.queue.push_back(input);
    }

    /// Inputs queued and not yet handled.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Carries out a machine's outputs. Called from inside the driver's loop:
/// it must not block (see the module's "Back-pressure").
///
/// [`RequesterHost`] and [`ResponderHost`] cover the usual case; implement
/// this directly for anything else.
pub trait Host<M: Machine> {
    /// Carries out one output; inputs it produces at once go in `feedback`.
    fn on_output(&mut self, output: M::Output, feedback: &mut Feedback<M::Input>);

    /// The machine refused an input (it counted it too). Default: nothing.
    fn on_refused(&mut self, error: M::Error) {
        let _ = error;
    }
}

/// Why [`Transport::send`] did not queue a message. The message is dropped;
/// the requester re-sends on its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer's queue is full.
    #[error("the peer's send queue is full")]
    Full,
    /// There is no connection to the peer (any more).
    #[error("no connection to the peer")]
    Closed,
}

/// Sends a machine's messages to peers: the network side of a host.
pub trait Transport<P> {
    /// Queues `message` for `to` (e.g. [`wire::wrap_envelope`], encode,
    /// write a frame). Must not block: refuse with [`SendError`] instead.
    fn send(&mut self, to: &P, message: GossipMessage) -> Result<(), SendError>;
}

/// The host's answer to a delivered block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Verified and committed: the driver feeds
    /// [`Event::Committed`] with the block's number + 1.
    Committed,
    /// Refused: the driver feeds [`Event::Rejected`] with its number.
    Rejected,
    /// Not decided yet: the host sends `Committed` or `Rejected` through the
    /// inbox itself when it is (e.g. after an asynchronous, batched commit).
    Later,
}

/// The ledger side of a requester's host.
pub trait Ledger<P> {
    /// The next block in order ([`Action::AddPayload`]). Must not block.
    fn add_payload(&mut self, payload: Payload, from: Origin<P>) -> Verdict;

    /// The requester stopped fetching `range` this round
    /// ([`Action::GiveUp`]). Default: nothing.
    fn give_up(&mut self, range: SeqRange, reason: GiveUpReason) {
        let _ = (range, reason);
    }
}

/// The ledger side of a responder's host.
pub trait BlockStore<P> {
    /// Reads `range` for `to` ([`ResponderAction::ReadBlocks`]): the blocks
    /// it can read, with only the private data `to` may see, within
    /// `max_bytes`. Must not block: return `None` and send
    /// [`ResponderEvent::BlocksRead`] with `ticket` through the inbox once
    /// the read is done.
    fn read_blocks(
        &mut self,
        ticket: Ticket,
        to: &P,
        range: SeqRange,
        max_bytes: usize,
    ) -> Option<Vec<Payload>>;
}

/// The host of an [`AntiEntropy`]: requests go to a [`Transport`], blocks
/// to a [`Ledger`].
///
/// # Example: a catch-up between two drivers (tokio)
///
/// A lagger at height 1 catches up to 100 from a server, each machine on
/// its own [`Driver`], the two linked by their inboxes (a real transport
/// wraps each message with [`wire::wrap_envelope`], encodes it and writes
/// a frame):
///
/// ```
/// # #[cfg(feature = "tokio")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use antientropy::adapters::{self, BlockStore, Ledger, RequesterHost, ResponderHost, Runtime};
/// use antientropy::adapters::{SendError, Transport, Verdict};
/// use antientropy::wire::common::{Block, BlockHeader};
/// use antientropy::wire::gossip::{GossipMessage, Payload};
/// use antientropy::{AntiEntropy, Config, Event, Origin, PeerState, ResponderEvent};
/// use antientropy::{SeqRange, StateResponder, Ticket};
/// use prost::Message;
/// use tokio::sync::{mpsc, watch};
///
/// type Peer = &'static str;
///
/// /// Puts each message in the other machine's inbox, as an input.
/// struct Pipe<T>(mpsc::Sender<T>, fn(GossipMessage) -> T);
/// impl<T> Transport<Peer> for Pipe<T> {
///     fn send(&mut self, _to: &Peer, message: GossipMessage) -> Result<(), SendError> {
///         self.0.try_send((self.1)(message)).map_err(|_| SendError::Full)
///     }
/// }
///
/// /// The server's ledger: blocks 0..=99.
/// struct Store;
/// impl BlockStore<Peer> for Store {
///     fn read_blocks(&mut self, _: Ticket, _to: &Peer, range: SeqRange, _max: usize)
///         -> Option<Vec<Payload>>
///     {
///         let block = |seq| {
///             let header = BlockHeader { number: seq, ..Default::default() };
///             let data = Block { header: Some(header), ..Default::default() }.encode_to_vec();
///             Payload { seq_num: seq, data: data.into(), private_data: vec![] }
///         };
///         Some((range.start()..=range.end()).map(block).collect())
///     }
/// }
///
/// /// The lagger's ledger: commits what comes (in order) and publishes its height.
/// struct Chain(watch::Sender<u64>);
/// impl Ledger<Peer> for Chain {
///     fn add_payload(&mut self, payload: Payload, _from: Origin<Peer>) -> Verdict {
///         self.0.send_replace(payload.seq_num + 1); // verify and commit here
///         Verdict::Committed
///     }
/// }
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
/// runtime.block_on(async {
///     let (to_server, server_inbox) = adapters::tokio::channel(256);
///     let (to_lagger, lagger_inbox) = adapters::tokio::channel(256);
///     let (committed, mut height) = watch::channel(1);
///
///     let server = StateResponder::new(Config::default(), "ch".into(), 100)?;
///     let answers = Pipe(to_lagger.clone(), |message| Event::Response { from: "server", message });
///     let host = ResponderHost::new(answers, Store);
///     tokio::spawn(adapters::tokio::Driver::new(server, host, server_inbox));
///
///     let now = adapters::tokio::Tokio::now();
///     let lagger = AntiEntropy::new(Config::default(), "ch".into(), 1, 7, now)?;
///     let requests = Pipe(to_server, |message| ResponderEvent::Request { from: "lagger", message });
///     let host = RequesterHost::new(requests, Chain(committed));
///     tokio::spawn(adapters::tokio::Driver::new(lagger, host, lagger_inbox));
///
///     // Gossip's view of the channel: the server is at 100.
///     to_lagger.send(Event::Membership(vec![PeerState::new("server", 100)])).await?;
///     height.wait_for(|&height| height == 100).await?;
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })
/// # }
/// # #[cfg(not(feature = "tokio"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct RequesterHost<T, L> {
    /// Where requests go.
    pub transport: T,
    /// Where blocks go.
    pub ledger: L,
    /// Requests the transport refused (dropped).
    pub dropped_sends: u64,
}

impl<T, L> RequesterHost<T, L> {
    /// A host sending through `transport` and committing to `ledger`.
    pub fn new(transport: T, ledger: L) -> Self {
        Self {
            transport,
            ledger,
            dropped_sends: 0,
        }
    }
}

impl<P, T, L> Host<AntiEntropy<P>> for RequesterHost<T, L>
where
    P: Clone + Ord + fmt::Debug,
    T: Transport<P>,
    L: Ledger<P>,
{
    fn on_output(&mut self, output: Action<P>, feedback: &mut Feedback<Event<P>>) {
        match output {
            Action::SendRequest { to, message } => {
                if self.transport.send(&to, message).is_err() {
                    self.dropped_sends += 1;
                }
            }
            Action::AddPayload { payload, from } => {
                let seq = payload.seq_num;
                match self.ledger.add_payload(payload, from) {
                    Verdict::Committed => feedback.push(Event::Committed {
                        height: seq.saturating_add(1),
                    }),
                    Verdict::Rejected => feedback.push(Event::Rejected { seq }),
                    Verdict::Later => {}
                }
            }
            Action::GiveUp { range, reason } => self.ledger.give_up(range, reason),
        }
    }
}

/// The host of a [`StateResponder`]: reads go to a [`BlockStore`],
/// responses to a [`Transport`].
#[derive(Debug)]
pub struct ResponderHost<T, S> {
    /// Where responses go.
    pub transport: T,
    /// Where blocks are read.
    pub store: S,
    /// Responses the transport refused (dropped).
    pub dropped_sends: u64,
}

impl<T, S> ResponderHost<T, S> {
    /// A host reading from `store` and answering through `transport`.
    pub fn new(transport: T, store: S) -> Self {
        Self {
            transport,
            store,
            dropped_sends: 0,
        }
    }
}

impl<P, T, S> Host<StateResponder<P>> for ResponderHost<T, S>
where
    P: Clone + Ord + fmt::Debug,
    T: Transport<P>,
    S: BlockStore<P>,
{
    fn on_output(
        &mut self,
        output: ResponderAction<P>,
        feedback: &mut Feedback<ResponderEvent<P>>,
    ) {
        match output {
            ResponderAction::ReadBlocks {
                ticket,
                to,
                range,
                max_bytes,
            } => {
                if let Some(payloads) = self.store.read_blocks(ticket, &to, range, max_bytes) {
                    feedback.push(ResponderEvent::BlocksRead { ticket, payloads });
                }
            }
            ResponderAction::SendResponse { to, message } => {
                if self.transport.send(&to, message).is_err() {
                    self.dropped_sends += 1;
                }
            }
            // Informational: nothing is sent, the machine counted it.
            ResponderAction::Dropped { .. } => {}
        }
    }
}

/// Which machine an inbound message is for, on a node that runs both.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<P> {
    /// A state request: for the [`StateResponder`].
    Request(ResponderEvent<P>),
    /// Anything else (a state response, or a message the requester will
    /// ignore and count): for the [`AntiEntropy`].
    Response(Event<P>),
}

/// Routes a message that arrived from `from` to the machine it is for.
pub fn route<P>(from: P, message: GossipMessage) -> Inbound<P> {
    if wire::as_state_request(&message).is_some() {
        Inbound::Request(ResponderEvent::Request { from, message })
    } else {
        Inbound::Response(Event::Response { from, message })
    }
}

// --- what a runtime supplies ----------------------------------------------------

/// What an async runtime supplies to a [`Driver`]: its clock, one
/// re-armable timer and the receiving end of its bounded channel. Nothing
/// else of the runtime is used; a driver is a plain [`Future`] to spawn.
pub trait Runtime {
    /// A timer that can be re-armed for a new deadline.
    type Timer;
    /// The receiving end of a bounded channel of `T`.
    type Receiver<T>;

    /// The runtime's clock. Under a virtual clock (tokio's paused time) this
    /// is the virtual time, so deadlines and timers agree.
    fn now() -> Instant;
    /// A timer that is not armed.
    fn timer() -> Self::Timer;
    /// Arms `timer` for `deadline`, replacing any earlier deadline.
    fn reset(timer: &mut Self::Timer, deadline: Instant);
    /// Ready once the armed deadline has passed; registers the waker.
    fn poll_timer(timer: &mut Self::Timer, cx: &mut Context<'_>) -> Poll<()>;
    /// The next value, `None` once every sender is dropped and the channel
    /// is empty; registers the waker when pending.
    fn poll_recv<T>(receiver: &mut Self::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>>;
}

/// Counters of a [`Driver`], to check that it does what the module says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Times the driver was polled.
    pub wakeups: u64,
    /// Inputs taken from the inbox.
    pub inputs: u64,
    /// Inputs the host fed back ([`Feedback`]).
    pub feedback: u64,
    /// Timeouts fed because the clock reached the machine's deadline.
    pub timeouts: u64,
    /// Inputs the machine refused.
    pub refused: u64,
    /// Outputs handed to the host.
    pub outputs: u64,
    /// Times the timer was re-armed (only when the deadline changed).
    pub timer_resets: u64,
    /// Wake-ups that spent their budget and yielded.
    pub yields: u64,
}

/// Runs one machine on runtime `R`: a [`Future`] that completes once every
/// sender of its inbox is dropped. See the module doc for what one wake-up
/// does.
///
/// Made by `tokio::driver` or `smol::driver` (in the modules of those
/// features), or by [`Driver::new`] for another runtime.
pub struct Driver<M: Machine, H, R: Runtime> {
    machine: M,
    host: H,
    inbox: R::Receiver<M::Input>,
    timer: R::Timer,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
    feedback: Feedback<M::Input>,
    budget: usize,
    closed: bool,
    stats: DriverStats,
}

impl<M, H, R> fmt::Debug for Driver<M, H, R>
where
    M: Machine + fmt::Debug,
    H: fmt::Debug,
    R: Runtime,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("machine", &self.machine)
            .field("host", &self.host)
            .field("armed", &self.armed)
            .field("feedback", &self.feedback.len())
            .field("budget", &self.budget)
            .field("closed", &self.closed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<M: Machine, H: Host<M>, R: Runtime> Driver<M, H, R> {
    /// A driver of `machine` whose outputs go to `host` and whose inputs
    /// come from `inbox`.
    pub fn new(machine: M, host: H, inbox: R::Receiver<M::Input>) -> Self {
        Self {
            machine,
            host,
            inbox,
            timer: R::timer(),
            armed: None,
            feedback: Feedback {
                queue: VecDeque::new(),
            },
            budget: DEFAULT_BUDGET,
            closed: false,
            stats: DriverStats::default(),
        }
    }

    /// Sets how many inputs, and how many timeouts, one wake-up handles
    /// (at least 1; [`DEFAULT_BUDGET`] otherwise).
    #[must_use]
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// The machine, e.g. for its stats.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, mutably (e.g. to add a peer's connection to its transport).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The driver's counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// The machine and the host, e.g. once the driver has ended.
    pub fn into_parts(self) -> (M, H) {
        (self.machine, self.host)
    }

    /// One input, then the drain the contract requires.
    fn step(&mut self, now: Instant, input: M::Input) {
        if let Err(error) = self.machine.handle(now, input) {
            self.stats.refused += 1;
            self.host.on_refused(error);
        }
        while let Some(output) = self.machine.poll_output() {
            self.stats.outputs += 1;
            self.host.on_output(output, &mut self.feedback);
            // Verdicts go back before the next output (allowed inside the
            // drain): after a rejection the machine withdraws the deliveries
            // it had queued behind the rejected block, so the host never sees
            // them.
            while let Some(input) = self.feedback.queue.pop_front() {
                self.stats.feedback += 1;
                if let Err(error) = self.machine.handle(now, input) {
                    self.stats.refused += 1;
                    self.host.on_refused(error);
                }
            }
        }
    }

    /// One wake-up: inputs, then the timer (see the module doc). Ready once
    /// the inbox is closed and drained.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.stats.wakeups += 1;

        // 1. Inputs, what the host fed back first.
        let mut spent = 0;
        while spent < self.budget {
            let input = if let Some(input) = self.feedback.queue.pop_front() {
                self.stats.feedback += 1;
                input
            } else if self.closed {
                break;
            } else {
                match R::poll_recv(&mut self.inbox, cx) {
                    Poll::Ready(Some(input)) => {
                        self.stats.inputs += 1;
                        input
                    }
                    Poll::Ready(None) => {
                        self.closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            };
            self.step(R::now(), input);
            spent += 1;
        }
        let mut again = spent == self.budget;

        // 2. The timer: the clock first, then the sleep.
        let mut timer_spent = 0;
        while let Some(deadline) = self.machine.poll_timeout() {
            if timer_spent == self.budget {
                again = true;
                break;
            }
            let now = R::now();
            if deadline <= now {
                self.stats.timeouts += 1;
                self.step(now, M::timeout());
                timer_spent += 1;
                continue;
            }
            if self.armed != Some(deadline) {
                R::reset(&mut self.timer, deadline);
                self.armed = Some(deadline);
                self.stats.timer_resets += 1;
            }
            match R::poll_timer(&mut self.timer, cx) {
                Poll::Pending => break,
                // Fired, yet the clock is short of the deadline: re-arm and
                // look again, within the budget.
                Poll::Ready(()) => {
                    self.armed = None;
                    timer_spent += 1;
                }
            }
        }

        if self.closed && self.feedback.is_empty() {
            return Poll::Ready(());
        }
        if again || !self.feedback.is_empty() {
            self.stats.yields += 1;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<M, H, R> Future for Driver<M, H, R>
where
    M: Machine,
    H: Host<M>,
    R: Runtime,
    Self: Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_drive(cx)
    }
}

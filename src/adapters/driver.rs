//! The driver loop, written once for every runtime.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use super::{DriverHandle, Feedback, Host, Machine, Runtime};

/// Inputs handled, and separately timeouts handled, per wake-up before the
/// driver yields.
pub const DEFAULT_BUDGET: usize = 64;

/// What goes through a driver's inbox.
pub(super) enum Input<M: Machine> {
    Event(M::Input),
    /// An encoded `Envelope` from a peer, decoded inside the machine.
    Bytes {
        from: M::Peer,
        bytes: Bytes,
    },
    /// Handle what came before, then end.
    Shutdown,
}

/// What a driver shares with its handles: the machine and the driver's
/// counters, under a lock the driver holds for one wake-up at a time
/// (quinn's pattern). `None` before the driver is made and after it ended.
pub(super) struct Shared<M> {
    core: Mutex<Option<Core<M>>>,
}

pub(super) struct Core<M> {
    pub(super) machine: M,
    pub(super) stats: DriverStats,
}

impl<M> Shared<M> {
    /// The lock; a panic in a host while it was held does not stop the
    /// handles from reading the counters.
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<Core<M>>> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiving end of a driver's inbox, made with its first
/// [`DriverHandle`] by [`inbox`] (or the runtime modules' `inbox`), and
/// given to [`Driver::new`].
///
/// Made apart from the driver so that a host can hold a
/// [`WeakDriverHandle`](super::WeakDriverHandle) of its own driver, or two
/// drivers each other's handles.
pub struct Inbox<M: Machine, R: Runtime> {
    receiver: R::Receiver<Input<M>>,
    shared: Arc<Shared<M>>,
}

impl<M: Machine, R: Runtime> fmt::Debug for Inbox<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

/// A driver's inbox of `capacity` inputs (at least 1) and its first
/// handle.
pub fn inbox<M: Machine, R: Runtime>(capacity: usize) -> (DriverHandle<M, R>, Inbox<M, R>) {
    let (sender, receiver) = R::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        core: Mutex::new(None),
    });
    let handle = DriverHandle::new(sender, Arc::clone(&shared));
    (handle, Inbox { receiver, shared })
}

/// Counters of a [`Driver`], to check that it does what the module says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverStats {
    /// Times the driver was polled.
    pub wakeups: u64,
    /// Inputs taken from the inbox (events and raw bytes).
    pub inputs: u64,
    /// Of `inputs`, raw bytes decoded by the machine.
    pub bytes_inputs: u64,
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

/// Runs one machine on runtime `R`: a [`Future`] whose output is the
/// machine and the host, once a [`DriverHandle::shutdown`] is handled or
/// every (strong) handle is dropped. See the module doc for what one
/// wake-up does.
///
/// Made by `tokio::driver` or `smol::driver` (in the modules of those
/// features), or by [`inbox`] and [`Driver::new`].
pub struct Driver<M: Machine, H, R: Runtime> {
    shared: Arc<Shared<M>>,
    /// `None` once the future has completed.
    host: Option<H>,
    inbox: R::Receiver<Input<M>>,
    timer: R::Timer,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
    feedback: Feedback<M::Input>,
    budget: usize,
    closed: bool,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl<M, H, R> fmt::Debug for Driver<M, H, R>
where
    M: Machine,
    H: fmt::Debug,
    R: Runtime,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("host", &self.host)
            .field("armed", &self.armed)
            .field("feedback", &self.feedback.len())
            .field("budget", &self.budget)
            .field("closed", &self.closed)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One input for the machine.
enum Step<M: Machine> {
    Event(M::Input),
    Bytes { from: M::Peer, bytes: Bytes },
}

const SPENT: &str = "the driver was used after its future completed";

impl<M: Machine, H: Host<M>, R: Runtime> Driver<M, H, R> {
    /// A driver of `machine` whose outputs go to `host` and whose inputs
    /// come from `inbox`.
    pub fn new(machine: M, host: H, inbox: Inbox<M, R>) -> Self {
        *inbox.shared.lock() = Some(Core {
            machine,
            stats: DriverStats::default(),
        });
        Self {
            shared: inbox.shared,
            host: Some(host),
            inbox: inbox.receiver,
            timer: R::timer(),
            armed: None,
            feedback: Feedback::new(),
            budget: DEFAULT_BUDGET,
            closed: false,
            #[cfg(feature = "tracing")]
            span: tracing::debug_span!("antientropy", machine = M::NAME),
        }
    }

    /// Sets how many inputs, and how many timeouts, one wake-up handles
    /// (at least 1; [`DEFAULT_BUDGET`] otherwise).
    #[must_use]
    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// Replaces the span every wake-up runs in (by default a `DEBUG` span
    /// `antientropy` with a field `machine`), e.g. to name the channel.
    #[cfg(feature = "tracing")]
    #[must_use]
    pub fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }
}

impl<M: Machine, H, R: Runtime> Driver<M, H, R> {
    /// Runs `f` on the machine, e.g. to read its stats.
    ///
    /// # Panics
    ///
    /// If the driver's future has completed (the machine was handed out).
    pub fn with_machine<T>(&self, f: impl FnOnce(&M) -> T) -> T {
        f(&self.shared.lock().as_ref().expect(SPENT).machine)
    }

    /// The driver's counters (zero once its future has completed).
    pub fn stats(&self) -> DriverStats {
        self.shared
            .lock()
            .as_ref()
            .map(|core| core.stats)
            .unwrap_or_default()
    }

    /// The host.
    ///
    /// # Panics
    ///
    /// If the driver's future has completed (the host was handed out).
    pub fn host(&self) -> &H {
        self.host.as_ref().expect(SPENT)
    }

    /// The host, mutably (e.g. to add a peer's connection to its transport).
    ///
    /// # Panics
    ///
    /// If the driver's future has completed (the host was handed out).
    pub fn host_mut(&mut self) -> &mut H {
        self.host.as_mut().expect(SPENT)
    }

    /// The machine and the host, e.g. once [`poll_drive`](Self::poll_drive)
    /// is ready. Handles see the driver as ended from now on.
    ///
    /// # Panics
    ///
    /// If the driver's future has completed (they were handed out).
    pub fn into_parts(mut self) -> (M, H) {
        self.take_parts()
    }

    fn take_parts(&mut self) -> (M, H) {
        let core = self.shared.lock().take().expect(SPENT);
        (core.machine, self.host.take().expect(SPENT))
    }
}

impl<M: Machine, H: Host<M>, R: Runtime> Driver<M, H, R> {
    /// One wake-up: inputs, then the timer (see the module doc). Ready once
    /// a shutdown was handled, or the inbox is closed and drained.
    ///
    /// # Panics
    ///
    /// If the driver's future has completed.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        #[cfg(feature = "tracing")]
        let _span = self.span.enter();
        let mut guard = self.shared.lock();
        let core = guard.as_mut().expect(SPENT);
        let host = self.host.as_mut().expect(SPENT);
        let feedback = &mut self.feedback;
        core.stats.wakeups += 1;

        // 1. Inputs, what the host fed back first.
        let mut spent = 0;
        while spent < self.budget {
            let input = if let Some(input) = feedback.pop() {
                core.stats.feedback += 1;
                Step::Event(input)
            } else if self.closed {
                break;
            } else {
                match R::poll_recv(&mut self.inbox, cx) {
                    Poll::Ready(Some(Input::Event(input))) => {
                        core.stats.inputs += 1;
                        Step::Event(input)
                    }
                    Poll::Ready(Some(Input::Bytes { from, bytes })) => {
                        core.stats.inputs += 1;
                        core.stats.bytes_inputs += 1;
                        Step::Bytes { from, bytes }
                    }
                    Poll::Ready(Some(Input::Shutdown)) => {
                        // What was sent after it is dropped with the inbox;
                        // senders fail from now on.
                        R::close(&mut self.inbox);
                        self.closed = true;
                        break;
                    }
                    Poll::Ready(None) => {
                        self.closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            };
            step(core, host, feedback, R::now(), input);
            spent += 1;
        }
        let mut again = spent == self.budget;

        // 2. The timer: the clock first, then the sleep. Not while inputs
        // are left that a machine back from a host stall wants in first (it
        // bounds that wait itself).
        let mut timer_spent = 0;
        while let Some(deadline) = core.machine.poll_timeout() {
            if again && core.machine.inputs_first() {
                break;
            }
            if timer_spent == self.budget {
                again = true;
                break;
            }
            let now = R::now();
            if deadline <= now {
                core.stats.timeouts += 1;
                step(core, host, feedback, now, Step::Event(M::timeout()));
                timer_spent += 1;
                continue;
            }
            if self.armed != Some(deadline) {
                R::reset(&mut self.timer, deadline);
                self.armed = Some(deadline);
                core.stats.timer_resets += 1;
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

        if self.closed && feedback.is_empty() {
            return Poll::Ready(());
        }
        if again || !feedback.is_empty() {
            core.stats.yields += 1;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// One input, then the drain the contract requires.
fn step<M: Machine, H: Host<M>>(
    core: &mut Core<M>,
    host: &mut H,
    feedback: &mut Feedback<M::Input>,
    now: Instant,
    input: Step<M>,
) {
    let (peer, result) = match input {
        Step::Event(input) => (M::sender(&input).cloned(), core.machine.handle(now, input)),
        Step::Bytes { from, bytes } => (
            Some(from.clone()),
            core.machine.handle_envelope_bytes(now, from, bytes),
        ),
    };
    if let Err(error) = result {
        refused(core, host, peer.as_ref(), error);
    }
    while let Some(output) = core.machine.poll_output() {
        core.stats.outputs += 1;
        host.on_output(output, feedback);
        // Verdicts go back before the next output (allowed inside the
        // drain): after a rejection the machine withdraws the deliveries it
        // had queued behind the rejected block, so the host never sees them.
        while let Some(input) = feedback.pop() {
            core.stats.feedback += 1;
            if let Err(error) = core.machine.handle(now, input) {
                refused(core, host, None, error);
            }
        }
    }
}

fn refused<M: Machine, H: Host<M>>(
    core: &mut Core<M>,
    host: &mut H,
    peer: Option<&M::Peer>,
    error: M::Error,
) {
    core.stats.refused += 1;
    emit!(DEBUG, ?peer, %error, "input refused");
    host.on_refused(peer, error);
}

impl<M, H, R> Future for Driver<M, H, R>
where
    M: Machine,
    H: Host<M>,
    R: Runtime,
    Self: Unpin,
{
    type Output = (M, H);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(M, H)> {
        let this = self.get_mut();
        ready!(this.poll_drive(cx));
        Poll::Ready(this.take_parts())
    }
}

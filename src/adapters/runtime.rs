//! What an async runtime supplies to a driver.

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use super::SendError;

/// What an async runtime supplies to a [`Driver`](super::Driver): its
/// clock, one re-armable timer and a bounded channel whose senders can be
/// weak. Nothing else of the runtime is used; a driver is a plain
/// [`Future`] to spawn. `adapters::tokio::Tokio` and `adapters::smol::Smol`
/// implement it.
pub trait Runtime {
    /// A timer that can be re-armed for a new deadline.
    type Timer;
    /// The sending end of a bounded channel of `T`; the channel closes when
    /// the last one is dropped.
    type Sender<T>: Clone;
    /// A sender that does not keep the channel open.
    type WeakSender<T>: Clone;
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

    /// A bounded channel of `capacity` values (at least 1).
    fn channel<T>(capacity: usize) -> (Self::Sender<T>, Self::Receiver<T>);
    /// Sends `value`, waiting for room; [`SendError::Closed`] once the
    /// receiver is closed or dropped.
    fn send<T>(sender: &Self::Sender<T>, value: T) -> impl Future<Output = Result<(), SendError>>;
    /// Sends `value` if there is room now.
    fn try_send<T>(sender: &Self::Sender<T>, value: T) -> Result<(), SendError>;
    /// A weak sender of the same channel.
    fn downgrade<T>(sender: &Self::Sender<T>) -> Self::WeakSender<T>;
    /// A sender again, unless every (strong) sender is gone.
    fn upgrade<T>(weak: &Self::WeakSender<T>) -> Option<Self::Sender<T>>;
    /// The next value, `None` once every sender is dropped (or the channel
    /// is closed) and the channel is empty; registers the waker when
    /// pending.
    fn poll_recv<T>(receiver: &mut Self::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>>;
    /// Closes the channel from the receiving side: sends fail from now on.
    fn close<T>(receiver: &mut Self::Receiver<T>);
}

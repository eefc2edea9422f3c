//! The smol part (feature `smol`): the system clock, one
//! [`async_io::Timer`] and a bounded [`async_channel`]. The driver runs on
//! any executor (`smol::spawn`, `async_io::block_on`, …).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Timer;
use futures_lite::Stream;

use super::{Host, Inbox, Machine, Runtime, SendError};

/// The smol-ecosystem [`Runtime`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// A [`Driver`](super::Driver) on smol.
pub type Driver<M, H> = super::Driver<M, H, Smol>;
/// A [`DriverHandle`](super::DriverHandle) on smol.
pub type DriverHandle<M> = super::DriverHandle<M, Smol>;
/// A [`WeakDriverHandle`](super::WeakDriverHandle) on smol.
pub type WeakDriverHandle<M> = super::WeakDriverHandle<M, Smol>;

impl Runtime for Smol {
    type Timer = Timer;
    type Sender<T> = async_channel::Sender<T>;
    type WeakSender<T> = async_channel::WeakSender<T>;
    /// Boxed: an `async_channel::Receiver` is `!Unpin`.
    type Receiver<T> = Pin<Box<async_channel::Receiver<T>>>;

    fn now() -> Instant {
        // The adapter's clock read: async-io's timers use this clock too.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    fn timer() -> Timer {
        Timer::never()
    }

    fn reset(timer: &mut Timer, deadline: Instant) {
        timer.set_at(deadline);
    }

    fn poll_timer(timer: &mut Timer, cx: &mut Context<'_>) -> Poll<()> {
        // A fired one-shot timer stays pending until it is set again.
        Pin::new(timer).poll_next(cx).map(|_| ())
    }

    fn channel<T>(capacity: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (sender, receiver) = async_channel::bounded(capacity.max(1));
        (sender, Box::pin(receiver))
    }

    async fn send<T>(sender: &async_channel::Sender<T>, value: T) -> Result<(), SendError> {
        sender.send(value).await.map_err(|_| SendError::Closed)
    }

    fn try_send<T>(sender: &async_channel::Sender<T>, value: T) -> Result<(), SendError> {
        sender.try_send(value).map_err(|error| match error {
            async_channel::TrySendError::Full(_) => SendError::Full,
            async_channel::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    fn downgrade<T>(sender: &async_channel::Sender<T>) -> async_channel::WeakSender<T> {
        sender.downgrade()
    }

    fn upgrade<T>(weak: &async_channel::WeakSender<T>) -> Option<async_channel::Sender<T>> {
        weak.upgrade()
    }

    fn poll_recv<T>(receiver: &mut Self::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        receiver.as_mut().poll_next(cx)
    }

    fn close<T>(receiver: &mut Self::Receiver<T>) {
        receiver.close();
    }
}

/// A driver's inbox on smol and its first handle: see
/// [`inbox`](super::inbox()).
pub fn inbox<M: Machine>(capacity: usize) -> (DriverHandle<M>, Inbox<M, Smol>) {
    super::inbox(capacity)
}

/// A driver of `machine` on smol, with an inbox of `capacity` inputs (at
/// least 1), and its handle. Spawn the driver; it ends at
/// [`shutdown`](super::DriverHandle::shutdown) or once every handle is
/// dropped, with the machine and the host as its output.
pub fn driver<M, H>(machine: M, host: H, capacity: usize) -> (DriverHandle<M>, Driver<M, H>)
where
    M: Machine,
    H: Host<M>,
{
    let (handle, inbox) = inbox(capacity);
    (handle, super::Driver::new(machine, host, inbox))
}

//! The tokio part (feature `tokio`): tokio's clock, one [`Sleep`] and a
//! bounded [`mpsc`] channel. Tests may run it under paused time
//! (`#[tokio::test(start_paused = true)]`): the driver reads tokio's clock,
//! so the machines see virtual time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use ::tokio::sync::mpsc;
use ::tokio::time::{self as ttime, Sleep};

use super::{Host, Inbox, Machine, Runtime, SendError};

/// The tokio [`Runtime`]: a driver made with it must be polled inside a
/// tokio runtime with the time driver enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A [`Driver`](super::Driver) on tokio.
pub type Driver<M, H> = super::Driver<M, H, Tokio>;
/// A [`DriverHandle`](super::DriverHandle) on tokio.
pub type DriverHandle<M> = super::DriverHandle<M, Tokio>;
/// A [`WeakDriverHandle`](super::WeakDriverHandle) on tokio.
pub type WeakDriverHandle<M> = super::WeakDriverHandle<M, Tokio>;

impl Runtime for Tokio {
    /// Made on the first deadline, since a `Sleep` needs a runtime.
    type Timer = Option<Pin<Box<Sleep>>>;
    type Sender<T> = mpsc::Sender<T>;
    type WeakSender<T> = mpsc::WeakSender<T>;
    type Receiver<T> = mpsc::Receiver<T>;

    fn now() -> Instant {
        // The adapter's clock read: tokio's clock, virtual when paused.
        #[allow(clippy::disallowed_methods)]
        ttime::Instant::now().into_std()
    }

    fn timer() -> Self::Timer {
        None
    }

    fn reset(timer: &mut Self::Timer, deadline: Instant) {
        let deadline = ttime::Instant::from_std(deadline);
        match timer {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => *timer = Some(Box::pin(ttime::sleep_until(deadline))),
        }
    }

    fn poll_timer(timer: &mut Self::Timer, cx: &mut Context<'_>) -> Poll<()> {
        match timer {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    fn channel<T>(capacity: usize) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
        mpsc::channel(capacity.max(1))
    }

    async fn send<T>(sender: &mpsc::Sender<T>, value: T) -> Result<(), SendError> {
        sender.send(value).await.map_err(|_| SendError::Closed)
    }

    fn try_send<T>(sender: &mpsc::Sender<T>, value: T) -> Result<(), SendError> {
        sender.try_send(value).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    fn downgrade<T>(sender: &mpsc::Sender<T>) -> mpsc::WeakSender<T> {
        sender.downgrade()
    }

    fn upgrade<T>(weak: &mpsc::WeakSender<T>) -> Option<mpsc::Sender<T>> {
        weak.upgrade()
    }

    fn poll_recv<T>(receiver: &mut mpsc::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        receiver.poll_recv(cx)
    }

    fn close<T>(receiver: &mut mpsc::Receiver<T>) {
        receiver.close();
    }
}

/// A driver's inbox on tokio and its first handle: see
/// [`inbox`](super::inbox()).
pub fn inbox<M: Machine>(capacity: usize) -> (DriverHandle<M>, Inbox<M, Tokio>) {
    super::inbox(capacity)
}

/// A driver of `machine` on tokio, with an inbox of `capacity` inputs (at
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

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

use super::{Host, Machine, Runtime};

/// The tokio [`Runtime`]: a driver made with it must be polled inside a
/// tokio runtime with the time driver enabled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

/// A [`Driver`](super::Driver) on tokio.
pub type Driver<M, H> = super::Driver<M, H, Tokio>;

impl Runtime for Tokio {
    /// Made on the first deadline, since a `Sleep` needs a runtime.
    type Timer = Option<Pin<Box<Sleep>>>;
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

    fn poll_recv<T>(receiver: &mut mpsc::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        receiver.poll_recv(cx)
    }
}

/// A driver of `machine` on tokio, with an inbox of `capacity` inputs (at
/// least 1), and the inbox's sender. Spawn the driver; it ends once every
/// clone of the sender is dropped.
pub fn driver<M, H>(machine: M, host: H, capacity: usize) -> (mpsc::Sender<M::Input>, Driver<M, H>)
where
    M: Machine,
    H: Host<M>,
{
    let (sender, receiver) = channel(capacity);
    (sender, super::Driver::new(machine, host, receiver))
}

/// A bounded channel of `capacity` values (at least 1) whose receiver a
/// [`Driver`](super::Driver::new) on tokio takes: to make the inboxes first
/// when two drivers send to each other.
pub fn channel<T>(capacity: usize) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    mpsc::channel(capacity.max(1))
}

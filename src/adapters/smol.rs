//! The smol part (feature `smol`): the system clock, one
//! [`async_io::Timer`] and a bounded [`async_channel`]. The driver runs on
//! any executor (`smol::spawn`, `async_io::block_on`, …).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Timer;
use futures_lite::Stream;

use super::{Host, Machine, Runtime};

/// The smol-ecosystem [`Runtime`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// A [`Driver`](super::Driver) on smol.
pub type Driver<M, H> = super::Driver<M, H, Smol>;

impl Runtime for Smol {
    type Timer = Timer;
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

    fn poll_recv<T>(receiver: &mut Self::Receiver<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        receiver.as_mut().poll_next(cx)
    }
}

/// A driver of `machine` on smol, with an inbox of `capacity` inputs (at
/// least 1), and the inbox's sender. Spawn the driver; it ends once every
/// clone of the sender is dropped.
pub fn driver<M, H>(
    machine: M,
    host: H,
    capacity: usize,
) -> (async_channel::Sender<M::Input>, Driver<M, H>)
where
    M: Machine,
    H: Host<M>,
{
    let (sender, receiver) = channel(capacity);
    (sender, super::Driver::new(machine, host, receiver))
}

/// A bounded channel of `capacity` values (at least 1) whose receiver a
/// [`Driver`](super::Driver::new) on smol takes: to make the inboxes first
/// when two drivers send to each other.
pub fn channel<T>(
    capacity: usize,
) -> (
    async_channel::Sender<T>,
    Pin<Box<async_channel::Receiver<T>>>,
) {
    let (sender, receiver) = async_channel::bounded(capacity.max(1));
    (sender, Box::pin(receiver))
}

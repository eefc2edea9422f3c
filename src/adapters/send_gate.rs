//! A low-priority send class across connections: a message sent in the
//! background waits until no foreground message is queued or being written
//! on any connection of the transport (strict priority, as the simulator's
//! uplinks give it), so a repeating or favoured-out peer's answers take
//! only the uplink that the others leave.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::SendError;

/// Counts the foreground messages not yet handed to the socket.
#[derive(Debug, Default)]
pub(crate) struct SendGate {
    foreground: AtomicUsize,
    idle: Notify,
}

impl SendGate {
    /// A foreground message is queued: the gate stays shut until its
    /// ticket is dropped (written, or discarded with its queue).
    pub(crate) fn foreground(self: &Arc<Self>) -> Ticket {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Ticket(Arc::clone(self))
    }

    /// Waits until no foreground message is pending.
    pub(crate) async fn idle(&self) {
        loop {
            // Registered before the check, so a ticket dropped in between
            // still wakes us.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.foreground.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A pending foreground message; dropping it may open the gate.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<SendGate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Why a send queue refused a message.
pub(crate) fn refusal<T>(error: mpsc::error::TrySendError<T>) -> SendError {
    match error {
        mpsc::error::TrySendError::Full(_) => SendError::Full,
        mpsc::error::TrySendError::Closed(_) => SendError::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_background_waits_for_every_foreground_ticket() {
        let gate = Arc::new(SendGate::default());
        gate.idle().await; // open when nothing is pending
        let (first, second) = (gate.foreground(), gate.foreground());
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.idle().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "one ticket still pending");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("opened when the last ticket dropped")
            .unwrap();
    }
}

//! Handles of a running driver: feed it, read it, stop it.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::driver::{Input, Shared};
use super::{DriverStats, Machine, Runtime, SendError};

/// A handle of a [`Driver`](super::Driver): feeds it inputs and raw bytes,
/// reads the machine's counters, and shuts it down. Clone it freely; the
/// driver ends once every clone is dropped (or at [`shutdown`](Self::shutdown)),
/// so long-lived helpers that must not keep it alive (a host completing
/// reads later, a transport's tasks) hold a [`WeakDriverHandle`] instead.
///
/// Reading takes the lock the driver holds during one wake-up: cheap, and
/// never across an `await`. So do not read through a handle of a driver
/// from inside that driver's own host callbacks (`on_output`,
/// `read_blocks`, …): the lock is held then, and the call would deadlock.
pub struct DriverHandle<M: Machine, R: Runtime> {
    sender: R::Sender<Input<M>>,
    shared: Arc<Shared<M>>,
}

impl<M: Machine, R: Runtime> Clone for DriverHandle<M, R> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Machine, R: Runtime> fmt::Debug for DriverHandle<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverHandle").finish_non_exhaustive()
    }
}

impl<M: Machine, R: Runtime> DriverHandle<M, R> {
    pub(super) fn new(sender: R::Sender<Input<M>>, shared: Arc<Shared<M>>) -> Self {
        Self { sender, shared }
    }

    /// Queues `input`, waiting for room in the inbox: the back-pressure a
    /// socket reader should apply. [`SendError::Closed`] once the driver
    /// has ended.
    pub async fn send(&self, input: M::Input) -> Result<(), SendError> {
        R::send(&self.sender, Input::Event(input)).await
    }

    /// Queues `input` if there is room now ([`SendError::Full`] otherwise:
    /// acceptable for peer messages, which the requester re-sends on its
    /// deadline; host inputs should be awaited with [`send`](Self::send)).
    pub fn try_send(&self, input: M::Input) -> Result<(), SendError> {
        R::try_send(&self.sender, Input::Event(input))
    }

    /// Queues the bytes of an encoded `Envelope` that arrived from `from`
    /// (one frame of [`codec`](super#framing-and-transport)), waiting for
    /// room. The machine decodes them within its `max_message_size`; bytes
    /// that do not decode are refused, counted as malformed
    /// ([`IgnoredCounts::malformed`](crate::IgnoredCounts::malformed),
    /// [`ResponderStats::malformed`](crate::ResponderStats::malformed)) and
    /// reported to [`Host::on_refused`](super::Host::on_refused) with `from`.
    pub async fn send_bytes(&self, from: M::Peer, bytes: Bytes) -> Result<(), SendError> {
        R::send(&self.sender, Input::Bytes { from, bytes }).await
    }

    /// [`send_bytes`](Self::send_bytes) if there is room now.
    pub fn try_send_bytes(&self, from: M::Peer, bytes: Bytes) -> Result<(), SendError> {
        R::try_send(&self.sender, Input::Bytes { from, bytes })
    }

    /// Asks the driver to end once it has handled what was queued before;
    /// inputs queued after are dropped. The driver's future then completes
    /// with the machine and the host. Waits for room in the inbox;
    /// [`SendError::Closed`] if the driver has ended already.
    pub async fn shutdown(&self) -> Result<(), SendError> {
        R::send(&self.sender, Input::Shutdown).await
    }

    /// The machine's counters as of its last input; `None` before the
    /// driver is made and after it has ended.
    pub fn stats(&self) -> Option<M::Stats> {
        self.with_machine(M::stats)
    }

    /// The driver's counters; `None` before the driver is made and after it
    /// has ended.
    pub fn driver_stats(&self) -> Option<DriverStats> {
        self.shared.lock().as_ref().map(|core| core.stats)
    }

    /// Runs `f` on the machine (e.g. `|m| m.peer_stats(&peer)`); `None`
    /// before the driver is made and after it has ended. Do not block in
    /// `f`: the driver waits for it.
    pub fn with_machine<T>(&self, f: impl FnOnce(&M) -> T) -> Option<T> {
        self.shared.lock().as_ref().map(|core| f(&core.machine))
    }

    /// A handle that does not keep the driver alive.
    pub fn downgrade(&self) -> WeakDriverHandle<M, R> {
        WeakDriverHandle {
            sender: R::downgrade(&self.sender),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A [`DriverHandle`] that does not keep the driver alive: what a host that
/// answers later holds (a [`Verdict::Later`](super::Verdict::Later) commit,
/// a [`BlockStore::read_blocks`](super::BlockStore::read_blocks) that
/// returned `None`), and what a transport's tasks hold. Holding a strong
/// handle there would keep the driver running forever, since the driver
/// owns the host.
pub struct WeakDriverHandle<M: Machine, R: Runtime> {
    sender: R::WeakSender<Input<M>>,
    shared: Arc<Shared<M>>,
}

impl<M: Machine, R: Runtime> Clone for WeakDriverHandle<M, R> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Machine, R: Runtime> fmt::Debug for WeakDriverHandle<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakDriverHandle").finish_non_exhaustive()
    }
}

impl<M: Machine, R: Runtime> WeakDriverHandle<M, R> {
    /// A strong handle, unless the driver has ended or every strong handle
    /// is gone (it is ending).
    pub fn upgrade(&self) -> Option<DriverHandle<M, R>> {
        R::upgrade(&self.sender).map(|sender| DriverHandle {
            sender,
            shared: Arc::clone(&self.shared),
        })
    }

    /// [`DriverHandle::send`] through a momentary strong handle.
    pub async fn send(&self, input: M::Input) -> Result<(), SendError> {
        let sender = R::upgrade(&self.sender).ok_or(SendError::Closed)?;
        R::send(&sender, Input::Event(input)).await
    }

    /// [`DriverHandle::try_send`].
    pub fn try_send(&self, input: M::Input) -> Result<(), SendError> {
        let sender = R::upgrade(&self.sender).ok_or(SendError::Closed)?;
        R::try_send(&sender, Input::Event(input))
    }

    /// [`DriverHandle::send_bytes`] through a momentary strong handle.
    pub async fn send_bytes(&self, from: M::Peer, bytes: Bytes) -> Result<(), SendError> {
        let sender = R::upgrade(&self.sender).ok_or(SendError::Closed)?;
        R::send(&sender, Input::Bytes { from, bytes }).await
    }

    /// [`DriverHandle::stats`].
    pub fn stats(&self) -> Option<M::Stats> {
        self.shared.lock().as_ref().map(|core| core.machine.stats())
    }
}

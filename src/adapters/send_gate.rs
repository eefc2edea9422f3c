//! A low-priority send class across connections: a message sent in the
//! background waits until no foreground message is queued or being written
//! on any connection of the transport (strict priority, as the simulator's
//! uplinks give it), so a repeating or favoured-out peer's answers take
//! only the uplink that the others leave.
//!
//! A connection whose foreground messages make no progress for
//! [`STALL_AFTER`] does not hold the gate: its peer is not reading (or its
//! path is dead), so it takes none of our uplink, and a single wedged peer
//! must not hold every other peer's background answers for good.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::SendError;

/// How long a connection may hold foreground messages without handing any
/// to its socket (or HTTP/2) before the gate stops waiting for it. Long
/// enough that a live link always progresses within it (the kernel takes
/// bytes as acknowledgements come, every round trip), short enough that a
/// wedged peer costs the others' background answers seconds, not forever.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(2);

/// Counts each connection's foreground messages not yet handed over.
#[derive(Debug)]
pub(crate) struct SendGate {
    lanes: Mutex<Lanes>,
    changed: Notify,
    stall_after: Duration,
}

#[derive(Debug, Default)]
struct Lanes {
    by_id: BTreeMap<u64, LaneState>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct LaneState {
    /// Foreground messages queued or being written.
    pending: usize,
    /// Since when `pending` has been above zero with nothing handed over.
    waiting_since: Option<Instant>,
    /// Its background messages need not wait for the gate
    /// (`Transport::promote`), until the next is queued.
    promoted: bool,
}

impl Default for SendGate {
    fn default() -> Self {
        Self::new(STALL_AFTER)
    }
}

impl SendGate {
    /// A gate that stops waiting for a connection stalled `stall_after`.
    pub(crate) fn new(stall_after: Duration) -> Self {
        Self {
            lanes: Mutex::default(),
            changed: Notify::new(),
            stall_after,
        }
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers one connection's foreground queue.
    pub(crate) fn lane(self: &Arc<Self>) -> Lane {
        let mut lanes = self.lanes();
        let id = lanes.next_id;
        lanes.next_id += 1;
        lanes.by_id.insert(id, LaneState::default());
        Lane {
            gate: Arc::clone(self),
            id,
        }
    }

    /// Waits until no connection has a foreground message pending, except
    /// connections stalled for `stall_after`.
    #[cfg(test)]
    pub(crate) async fn idle(&self) {
        self.open_for(None).await;
    }

    /// Waits until no connection has a foreground message pending, except
    /// connections stalled for `stall_after`, or until lane `id` (if any)
    /// is promoted.
    async fn open_for(&self, id: Option<u64>) {
        loop {
            // Registered before the check, so a change in between still
            // wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            // The earliest time a lane that holds the gate now would count
            // as stalled (the lock released before any wait).
            let holding = {
                let lanes = self.lanes();
                if id.is_some_and(|id| lanes.by_id.get(&id).is_some_and(|lane| lane.promoted)) {
                    return;
                }
                lanes
                    .by_id
                    .values()
                    .filter(|lane| lane.pending > 0)
                    .filter_map(|lane| lane.waiting_since.map(|since| since + self.stall_after))
                    .filter(|stalled_at| *stalled_at > now)
                    .min()
            };
            let Some(stalled_at) = holding else {
                return;
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(stalled_at) => {}
            }
        }
    }

    /// Lane `id` has one more foreground message pending (`queued`), or
    /// handed one over.
    fn update(&self, id: u64, queued: bool) {
        let now = Instant::now();
        let mut lanes = self.lanes();
        let Some(lane) = lanes.by_id.get_mut(&id) else {
            return;
        };
        if queued {
            lane.pending += 1;
            lane.waiting_since.get_or_insert(now);
            return;
        }
        lane.pending = lane.pending.saturating_sub(1);
        lane.waiting_since = (lane.pending > 0).then_some(now);
        let opened = lane.pending == 0;
        drop(lanes);
        if opened {
            self.changed.notify_waiters();
        }
    }
}

/// One connection's place in the gate; dropped with the connection.
#[derive(Debug)]
pub(crate) struct Lane {
    gate: Arc<SendGate>,
    id: u64,
}

impl Lane {
    /// A foreground message is queued: the gate stays shut until its
    /// ticket is dropped (handed over, or discarded with its queue) or the
    /// lane stalls.
    pub(crate) fn foreground(&self) -> Ticket {
        self.gate.update(self.id, true);
        Ticket {
            gate: Arc::clone(&self.gate),
            lane: self.id,
        }
    }

    /// Its background messages need not wait for the gate any more, until
    /// [`demote`](Self::demote).
    pub(crate) fn promote(&self) {
        if let Some(lane) = self.gate.lanes().by_id.get_mut(&self.id) {
            lane.promoted = true;
        }
        self.gate.changed.notify_waiters();
    }

    /// Its background messages wait for the gate again (a new one is
    /// queued); whether they did not.
    pub(crate) fn demote(&self) -> bool {
        self.gate
            .lanes()
            .by_id
            .get_mut(&self.id)
            .is_some_and(|lane| std::mem::take(&mut lane.promoted))
    }

    /// Queues a background message with `queue`: demoted first, so that
    /// the writer never takes it for promoted, and promoted again if the
    /// queue refused it (the answers queued before it are still due).
    pub(crate) fn queue_background(
        &self,
        queue: impl FnOnce() -> Result<(), SendError>,
    ) -> Result<(), SendError> {
        let was_promoted = self.demote();
        let queued = queue();
        if queued.is_err() && was_promoted {
            self.promote();
        }
        queued
    }

    /// Waits until no connection has a foreground message pending, except
    /// stalled ones, or this lane is promoted.
    pub(crate) async fn open(&self) {
        self.gate.open_for(Some(self.id)).await;
    }

    /// Some of what the connection holds was handed over (bytes written):
    /// it is not stalled, though the message is not all out yet.
    pub(crate) fn progressed(&self) {
        let now = Instant::now();
        if let Some(lane) = self.gate.lanes().by_id.get_mut(&self.id) {
            if lane.pending > 0 {
                lane.waiting_since = Some(now);
            }
        }
    }

    /// Since when the connection has held foreground messages without
    /// handing any over, if it holds any.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        let lanes = self.gate.lanes();
        let lane = lanes.by_id.get(&self.id)?;
        lane.waiting_since.filter(|_| lane.pending > 0)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.gate.lanes().by_id.remove(&self.id);
        self.gate.changed.notify_waiters();
    }
}

/// A pending foreground message; dropping it may open the gate.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<SendGate>,
    lane: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.update(self.lane, false);
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

    /// Whether `idle` returns within `wait` (paused time: instant).
    async fn opens_within(gate: &Arc<SendGate>, wait: Duration) -> bool {
        tokio::time::timeout(wait, gate.idle()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_waits_for_every_foreground_ticket() {
        let gate = Arc::new(SendGate::new(Duration::from_secs(60)));
        let (one, two) = (gate.lane(), gate.lane());
        assert!(opens_within(&gate, Duration::from_millis(1)).await);
        let (first, second) = (one.foreground(), two.foreground());
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

    #[tokio::test(start_paused = true)]
    async fn a_stalled_lane_stops_holding_the_gate() {
        let gate = Arc::new(SendGate::new(Duration::from_secs(2)));
        let (wedged, live) = (gate.lane(), gate.lane());
        let _stuck = wedged.foreground();
        assert!(
            !opens_within(&gate, Duration::from_millis(1900)).await,
            "held while the lane may still progress"
        );
        assert!(
            opens_within(&gate, Duration::from_millis(200)).await,
            "open once the lane made no progress for 2 s"
        );
        // A live lane still holds it, and progress keeps the wedged one
        // from counting as stalled until it stalls again.
        let busy = live.foreground();
        wedged.progressed();
        assert!(!opens_within(&gate, Duration::from_millis(1500)).await);
        drop(busy);
        assert!(!opens_within(&gate, Duration::from_millis(400)).await);
        assert!(opens_within(&gate, Duration::from_millis(200)).await);
        // A closed connection's lane goes with its pending count.
        let _again = live.foreground();
        drop(live);
        drop(wedged);
        assert!(opens_within(&gate, Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_promoted_lane_goes_ahead_until_its_next_background_message() {
        let gate = Arc::new(SendGate::new(Duration::from_secs(60)));
        let (busy, held) = (Arc::new(gate.lane()), Arc::new(gate.lane()));
        let _pending = busy.foreground();
        held.queue_background(|| Ok(())).unwrap();
        let waiter = tokio::spawn({
            let held = Arc::clone(&held);
            async move { held.open().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "the other lane's foreground first");
        held.promote();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("opened when promoted")
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), busy.open())
                .await
                .is_err(),
            "only the promoted lane"
        );
        assert!(
            held.queue_background(|| Err(SendError::Full)).is_err(),
            "refused"
        );
        tokio::time::timeout(Duration::from_millis(1), held.open())
            .await
            .expect("a refused message leaves the lane promoted");
        held.queue_background(|| Ok(())).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), held.open())
                .await
                .is_err(),
            "a new background message waits again"
        );
    }
}

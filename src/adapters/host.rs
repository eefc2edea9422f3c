//! Where a driver's outputs go: the host traits and the two usual hosts.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;

use super::Machine;
use crate::wire::gossip::{GossipMessage, Payload};
use crate::{
    Action, AntiEntropy, Event, GiveUpReason, Origin, ResponderAction, ResponderEvent, SeqRange,
    StateResponder, Ticket,
};

/// Inputs a [`Host`] produces while carrying out an output (a block it has
/// just committed, blocks it has just read). The driver handles them after
/// the drain, before the inbox, within the same budget.
#[derive(Debug)]
pub struct Feedback<I> {
    queue: VecDeque<I>,
}

impl<I> Feedback<I> {
    pub(super) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
        }
    }

    /// Queues `input` for the machine.
    pub fn push(&mut self, input: I) {
        self.queue.push_back(input);
    }

    pub(super) fn pop(&mut self) -> Option<I> {
        self.queue.pop_front()
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

    /// The machine refused an input (it counted it too). `peer` is the peer
    /// the input came from (a response, a request, raw bytes); `None` for
    /// the host's own inputs (e.g. a `Committed` out of range). Default:
    /// nothing.
    fn on_refused(&mut self, peer: Option<&M::Peer>, error: M::Error) {
        let _ = (peer, error);
    }
}

/// Why a message or an input was not queued. The message is dropped; the
/// requester re-sends on its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The queue is full.
    #[error("the queue is full")]
    Full,
    /// There is no connection to the peer (any more), or the driver has
    /// ended.
    #[error("closed")]
    Closed,
}

/// Sends a machine's messages to peers: the network side of a host.
pub trait Transport<P> {
    /// Queues `message` for `to` (e.g. [`wire::wrap_envelope`], encode,
    /// write a frame). Must not block: refuse with [`SendError`] instead.
    ///
    /// [`wire::wrap_envelope`]: crate::wire::wrap_envelope
    fn send(&mut self, to: &P, message: GossipMessage) -> Result<(), SendError>;

    /// Queues `message` for `to` to be sent from spare capacity only: after
    /// every message queued by [`send`](Self::send), on any connection
    /// (a low-priority send queue). [`ResponderHost`] uses it for a peer
    /// that repeats what it was served or waits behind a crowd's favoured
    /// peers (`ResponderAction::SendResponse::background`). Default:
    /// [`send`](Self::send), serving everyone alike.
    fn send_background(&mut self, to: &P, message: GossipMessage) -> Result<(), SendError> {
        self.send(to, message)
    }

    /// What was queued for `to` by [`send_background`](Self::send_background)
    /// and is not sent yet may go as if queued by [`send`](Self::send):
    /// `to` no longer waits behind a crowd's favoured peers
    /// (`ResponderAction::Promote`). The next
    /// [`send_background`](Self::send_background) to `to` puts its queue
    /// back in the background. Default: nothing (a transport without send
    /// classes sends everything alike).
    fn promote(&mut self, to: &P) {
        let _ = to;
    }

    /// The machine refused what `peer` sent ([`RequesterHost`] and
    /// [`ResponderHost`] forward every refusal that names a peer): the
    /// place to count a peer's bad input, or to close its connection and
    /// ban it. Default: nothing.
    fn refused(&mut self, peer: &P, error: &(dyn Error + 'static)) {
        let _ = (peer, error);
    }

    /// Whether this transport tells the machine when a connection comes up
    /// (`Event::PeerConnected`, as `tcp::TcpTransport` does). If it does,
    /// [`RequesterHost`] takes a request refused with
    /// [`SendError::Closed`] as the peer's disconnection: the machine moves
    /// its requests on at once instead of waiting for their deadlines, and
    /// asks it again when the connection is up. Default: `false` (a refused
    /// request is only lost, and re-sent on its deadline).
    fn reports_connections(&self) -> bool {
        false
    }
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
    /// Not decided yet: the host sends `Committed` or `Rejected` itself
    /// when it is (e.g. after an asynchronous, batched commit), through a
    /// [`WeakDriverHandle`](super::WeakDriverHandle).
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
    /// [`ResponderEvent::BlocksRead`] with `ticket` through a
    /// [`WeakDriverHandle`](super::WeakDriverHandle) once the read is done.
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
                if let Err(error) = self.transport.send(&to, message) {
                    self.dropped_sends += 1;
                    if error == SendError::Closed && self.transport.reports_connections() {
                        feedback.push(Event::PeerDisconnected { peer: to });
                    }
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

    fn on_refused(&mut self, peer: Option<&P>, error: crate::EventError) {
        if let Some(peer) = peer {
            self.transport.refused(peer, &error);
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
            ResponderAction::SendResponse {
                to,
                message,
                background,
            } => {
                let sent = if background {
                    self.transport.send_background(&to, message)
                } else {
                    self.transport.send(&to, message)
                };
                if sent.is_err() {
                    self.dropped_sends += 1;
                }
            }
            // Informational: nothing is sent, the machine counted it.
            ResponderAction::Dropped { .. } => {}
            ResponderAction::Promote { to } => self.transport.promote(&to),
        }
    }

    fn on_refused(&mut self, peer: Option<&P>, error: crate::RequestError) {
        if let Some(peer) = peer {
            self.transport.refused(peer, &error);
        }
    }
}

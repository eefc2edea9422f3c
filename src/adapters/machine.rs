//! The sans-IO machines as a driver sees them.

use std::error::Error;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;

use crate::{
    Action, AntiEntropy, Event, EventError, RequestError, ResponderAction, ResponderEvent,
    ResponderStats, StateResponder, Stats,
};

/// A sans-IO machine a [`Driver`](super::Driver) can run: `handle(now,
/// input)`, then drain `poll_output`, then `poll_timeout`. [`AntiEntropy`]
/// and [`StateResponder`] implement it.
pub trait Machine {
    /// How the machine names a peer. Cloned for each input from a peer
    /// (to name it if the input is refused), so it should be cheap to clone.
    type Peer: Clone + fmt::Debug;
    /// What goes in ([`Event`], [`ResponderEvent`]).
    type Input;
    /// What comes out ([`Action`], [`ResponderAction`]).
    type Output;
    /// Why an input was refused ([`EventError`], [`RequestError`]).
    type Error: Error + 'static;
    /// A snapshot of its counters ([`Stats`], [`ResponderStats`]).
    type Stats;

    /// A short name, for the driver's `tracing` span.
    const NAME: &'static str;

    /// Applies one input at `now`.
    fn handle(&mut self, now: Instant, input: Self::Input) -> Result<(), Self::Error>;
    /// Decodes an encoded `Envelope` that arrived from `from` (within the
    /// machine's `max_message_size`) and applies the message in it; bytes
    /// that do not decode are refused and counted as malformed.
    fn handle_envelope_bytes(
        &mut self,
        now: Instant,
        from: Self::Peer,
        bytes: Bytes,
    ) -> Result<(), Self::Error>;
    /// The next output, if any.
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// When to feed [`timeout`](Self::timeout) next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The input that says a deadline may have passed.
    fn timeout() -> Self::Input;
    /// The peer an input came from, if it came from one.
    fn sender(input: &Self::Input) -> Option<&Self::Peer>;
    /// The input that says a connection to `peer` came up, if the machine
    /// has one.
    fn connected(peer: Self::Peer) -> Option<Self::Input>;
    /// The input that says the connection to `peer` is gone, if the machine
    /// has one.
    fn disconnected(peer: Self::Peer) -> Option<Self::Input>;
    /// A snapshot of its counters.
    fn stats(&self) -> Self::Stats;
    /// Whether inputs already queued should go in before the next
    /// [`timeout`](Self::timeout), though it is due: the machine saw its
    /// host stall ([`AntiEntropy::deadlines_deferred`]).
    fn inputs_first(&self) -> bool {
        false
    }
}

impl<P: Clone + Ord + fmt::Debug> Machine for AntiEntropy<P> {
    type Peer = P;
    type Input = Event<P>;
    type Output = Action<P>;
    type Error = EventError;
    type Stats = Stats;

    const NAME: &'static str = "requester";

    fn handle(&mut self, now: Instant, input: Event<P>) -> Result<(), EventError> {
        AntiEntropy::handle(self, now, input)
    }
    fn handle_envelope_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), EventError> {
        AntiEntropy::handle_envelope_bytes(self, now, from, bytes)
    }
    fn poll_output(&mut self) -> Option<Action<P>> {
        self.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        AntiEntropy::poll_timeout(self)
    }
    fn timeout() -> Event<P> {
        Event::Timeout
    }
    fn sender(input: &Event<P>) -> Option<&P> {
        match input {
            Event::Response { from, .. } => Some(from),
            _ => None,
        }
    }
    fn connected(peer: P) -> Option<Event<P>> {
        Some(Event::PeerConnected { peer })
    }
    fn disconnected(peer: P) -> Option<Event<P>> {
        Some(Event::PeerDisconnected { peer })
    }
    fn stats(&self) -> Stats {
        AntiEntropy::stats(self)
    }
    fn inputs_first(&self) -> bool {
        self.deadlines_deferred()
    }
}

impl<P: Clone + Ord + fmt::Debug> Machine for StateResponder<P> {
    type Peer = P;
    type Input = ResponderEvent<P>;
    type Output = ResponderAction<P>;
    type Error = RequestError;
    type Stats = ResponderStats;

    const NAME: &'static str = "responder";

    fn handle(&mut self, now: Instant, input: ResponderEvent<P>) -> Result<(), RequestError> {
        StateResponder::handle(self, now, input)
    }
    fn handle_envelope_bytes(
        &mut self,
        now: Instant,
        from: P,
        bytes: Bytes,
    ) -> Result<(), RequestError> {
        StateResponder::handle_envelope_bytes(self, now, from, bytes)
    }
    fn poll_output(&mut self) -> Option<ResponderAction<P>> {
        self.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        StateResponder::poll_timeout(self)
    }
    fn timeout() -> ResponderEvent<P> {
        ResponderEvent::Timeout
    }
    fn sender(input: &ResponderEvent<P>) -> Option<&P> {
        match input {
            ResponderEvent::Request { from, .. } => Some(from),
            _ => None,
        }
    }
    /// None: a responder learns of a peer by its first request.
    fn connected(_: P) -> Option<ResponderEvent<P>> {
        None
    }
    fn disconnected(peer: P) -> Option<ResponderEvent<P>> {
        Some(ResponderEvent::PeerDisconnected { peer })
    }
    fn stats(&self) -> ResponderStats {
        StateResponder::stats(self)
    }
}

/// Which machine an inbound message is for, on a node that runs both.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<P> {
    /// A state request: for the [`StateResponder`].
    Request(ResponderEvent<P>),
    /// Anything else (a state response, or a message the requester will
    /// ignore and count): for the [`AntiEntropy`].
    Response(Event<P>),
}

/// Routes a message that arrived from `from` to the machine it is for.
pub fn route<P>(from: P, message: crate::wire::gossip::GossipMessage) -> Inbound<P> {
    if crate::wire::as_state_request(&message).is_some() {
        Inbound::Request(ResponderEvent::Request { from, message })
    } else {
        Inbound::Response(Event::Response { from, message })
    }
}

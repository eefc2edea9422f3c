//! One simulated peer: its machines, its ledger, its behaviour, and the
//! invariants checked on what its requester does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::chain::{self, forged_block};
use super::scenario::{Behaviour, Overclaim, DROPPED_ONE_IN};
use super::{Wire, World};
use crate::responder::Queued;
use crate::wire::gossip::{GossipMessage, Payload, Properties, StateInfo};
use crate::wire::{self, gossip::gossip_message::Content};
use crate::{
    Action, AntiEntropy, Config, ConfigError, Event, GiveUpReason, Origin, PeerState,
    ResponderAction, ResponderEvent, SeqRange, StateResponder, Ticket,
};

/// What an answer to a sink carries in place of its blocks (see
/// [`Node::read`]); a longer block is cloned.
static OPAQUE: [u8; 32 * 1024] = [0; 32 * 1024];

/// A simulated peer's id: its index in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Which of a node's machines a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Machine {
    Requester,
    Responder,
}

/// The last `StateInfo` heard from a peer.
#[derive(Debug, Clone, Copy)]
struct Heard {
    published: Instant,
    height: u64,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) behaviour: Behaviour,
    pub(crate) lagger: bool,
    /// The committed ledger height: blocks `0..height` of the chain.
    pub(crate) height: u64,
    pub(crate) requester: Option<AntiEntropy<NodeId>>,
    responder: Option<StateResponder<NodeId>>,
    view: BTreeMap<NodeId, Heard>,
    /// Heights in the last `Membership` fed to the requester.
    fed: BTreeMap<NodeId, u64>,
    /// Ranges asked of each peer, as `(start, end)`.
    asked: BTreeMap<NodeId, BTreeSet<(u64, u64)>>,
    longest_ask: u64,
    /// Ranges of requests a byzantine node is answering, by nonce.
    byzantine_ranges: BTreeMap<u64, SeqRange>,
    /// Spells (from, until) in which it takes requests and answers none.
    hangs: Vec<(Duration, Option<Duration>)>,
    pub(crate) requester_timer: Option<Instant>,
    /// `requester_timer` is the requester's `poll_timeout`: the requester
    /// took no input since. Most steps (a flood's) touch the responder only.
    timer_fresh: bool,
    /// The requester took no input since a check found it within bounds:
    /// checking it again would find the same.
    checked: bool,
    pub(crate) responder_timer: Option<Instant>,
    /// The earlier of the two timers (the requester's on a tie): what the
    /// simulator compares on every step.
    pub(crate) next_timer: Option<(Instant, Machine)>,
    pub(crate) caught_up_at: Option<Instant>,
    pub(crate) peak_held_bytes: u64,
    pub(crate) refused_requests: u64,
    pub(crate) rejected: u64,
    /// The blocks this node holds a bad copy of, and those copies (forged
    /// once, seeded by the block: the same bad copy on every read).
    pub(crate) bad_blocks: BTreeMap<u64, Bytes>,
    /// Blocks it committed and lost to rollbacks: a lagger fetches them
    /// again, which its amplification bounds allow for.
    pub(crate) refetch: u64,
    /// A payload vector kept for the next read (see [`Node::read`]).
    spare_payloads: Vec<Payload>,
    /// Give-ups of this node's requester, by reason.
    pub(crate) give_ups: BTreeMap<&'static str, u64>,
    /// Requests sent by earlier incarnations (a restart loses the stats).
    pub(crate) past_requests: u64,
    /// Bytes of messages other than state requests delivered to this node.
    pub(crate) bytes_received: u64,
    /// Its responder's peak queue and reads in progress.
    pub(crate) peak_queued: usize,
    pub(crate) peak_reading: usize,
}

/// A short name for a give-up reason (`GiveUpReason` is non-exhaustive).
pub(crate) fn reason_name(reason: &GiveUpReason) -> &'static str {
    // Exhaustive inside the crate; the fallback names a new reason until
    // it is mapped, as a user of the crate must.
    #[allow(unreachable_patterns)]
    match reason {
        GiveUpReason::RetriesExhausted { .. } => "retries_exhausted",
        GiveUpReason::NoEligiblePeer => "no_eligible_peer",
        GiveUpReason::BlockRejected { .. } => "block_rejected",
        _ => "other",
    }
}

impl Node {
    /// A node holding blocks `0..height`; faulty peers run only the
    /// machines their behaviour needs.
    #[allow(clippy::too_many_arguments)] // internal, called once
    pub(crate) fn new(
        id: NodeId,
        behaviour: Behaviour,
        lagger: bool,
        height: u64,
        config: &Config,
        channel: &Bytes,
        seed: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let (requester, responder) = Self::machines(behaviour, height, config, channel, seed, now)?;
        let mut node = Self {
            id,
            behaviour,
            lagger,
            height,
            requester,
            responder,
            view: BTreeMap::new(),
            fed: BTreeMap::new(),
            asked: BTreeMap::new(),
            refetch: 0,
            longest_ask: 0,
            byzantine_ranges: BTreeMap::new(),
            hangs: Vec::new(),
            requester_timer: None,
            timer_fresh: false,
            checked: false,
            responder_timer: None,
            next_timer: None,
            caught_up_at: None,
            peak_held_bytes: 0,
            refused_requests: 0,
            rejected: 0,
            bad_blocks: BTreeMap::new(),
            spare_payloads: Vec::new(),
            give_ups: BTreeMap::new(),
            past_requests: 0,
            bytes_received: 0,
            peak_queued: 0,
            peak_reading: 0,
        };
        node.refresh_timers();
        Ok(node)
    }

    /// The machines a node of `behaviour` runs.
    #[allow(clippy::type_complexity)] // internal
    fn machines(
        behaviour: Behaviour,
        height: u64,
        config: &Config,
        channel: &Bytes,
        seed: u64,
        now: Instant,
    ) -> Result<(Option<AntiEntropy<NodeId>>, Option<StateResponder<NodeId>>), ConfigError> {
        let requester =
            match behaviour {
                Behaviour::Honest | Behaviour::Slow | Behaviour::Dropping => Some(
                    AntiEntropy::new(config.clone(), channel.clone(), height, seed, now)?,
                ),
                _ => None,
            };
        let responder = match behaviour {
            Behaviour::Silent | Behaviour::Overclaiming(Overclaim::Silent) | Behaviour::Flooder => {
                None
            }
            _ => Some(StateResponder::new(
                config.clone(),
                channel.clone(),
                height,
            )?),
        };
        Ok((requester, responder))
    }

    /// Cuts the ledger back to `height` (kept if lower), before a restart:
    /// the blocks above are gone and, for a lagger, to be fetched again.
    pub(crate) fn roll_back(&mut self, height: u64) {
        let height = height.max(1);
        self.refetch += self.height.saturating_sub(height);
        self.height = self.height.min(height);
    }

    /// The node comes back as a new process over the same ledger: fresh
    /// machines, no view, nothing in flight.
    pub(crate) fn restart(&mut self, w: &World, channel: &Bytes, seed: u64) {
        self.past_requests += self.requester.as_ref().map_or(0, |r| r.stats().requests);
        if let Ok((requester, responder)) =
            Self::machines(self.behaviour, self.height, &w.config, channel, seed, w.now)
        {
            self.requester = requester;
            self.responder = responder;
            self.touch_requester();
        }
        self.view.clear();
        self.fed.clear();
        self.byzantine_ranges.clear();
        self.refresh_timers();
    }

    /// The connection to `peer` went down (`up == false`) or came back.
    /// Only a requester that knew the peer (heard its `StateInfo`) is told.
    pub(crate) fn on_connection(&mut self, w: &mut World, peer: NodeId, up: bool) {
        // The responder answers nothing more on a dead connection.
        if !up {
            if let Some(responder) = self.responder.as_mut() {
                let _ = responder.handle(w.now, ResponderEvent::PeerDisconnected { peer });
            }
        }
        if !self.view.contains_key(&peer) {
            return;
        }
        self.touch_requester();
        if let Some(requester) = self.requester.as_mut() {
            let event = if up {
                Event::PeerConnected { peer }
            } else {
                Event::PeerDisconnected { peer }
            };
            if let Err(error) = requester.handle(w.now, event) {
                w.violation(self.id, format!("connection event refused: {error}"));
            }
        }
        self.drain(w);
    }

    /// The height this node advertises in its `StateInfo`.
    pub(crate) fn advertised_height(&self, chain_height: u64, overclaim_by: u64) -> u64 {
        match self.behaviour {
            Behaviour::Lying => chain_height,
            Behaviour::Overclaiming(_) => chain_height.saturating_add(overclaim_by),
            _ => self.height,
        }
    }

    /// The height this node truly serves valid blocks below (0: none).
    pub(crate) fn serving_height(&self) -> u64 {
        match self.behaviour {
            Behaviour::Honest | Behaviour::Slow | Behaviour::Lying | Behaviour::Dropping => {
                self.height
            }
            Behaviour::Overclaiming(Overclaim::Partial) => self.height,
            _ => 0,
        }
    }

    /// Whether the node runs a responder.
    pub(crate) fn has_responder(&self) -> bool {
        self.responder.is_some()
    }

    /// Whether the node listens to `StateInfo` (it has a requester).
    pub(crate) fn wants_state_info(&self) -> bool {
        self.requester.is_some()
    }

    // --- inputs ---------------------------------------------------------------

    /// A message arrived over the network, as bytes.
    pub(crate) fn on_message(&mut self, w: &mut World, from: NodeId, bytes: Bytes) {
        match wire::decode_gossip_message(bytes.clone(), w.config.max_message_size) {
            Ok(message) => self.on_decoded(w, from, bytes.len(), message),
            Err(_) => {
                // Garbage: an answer, as far as the amplification bound goes.
                self.count_received(w, bytes.len(), true);
                self.touch_requester();
                if let Some(requester) = self.requester.as_mut() {
                    let _ = requester.handle_response_bytes(w.now, from, bytes);
                }
                self.drain(w);
            }
        }
    }

    /// Counts `len` bytes delivered; `answer`: not a state request.
    fn count_received(&mut self, w: &mut World, len: usize, answer: bool) {
        if self.lagger {
            w.bytes_received += len as u64;
        }
        if answer {
            // Answers (and garbage) only: what the requester's amplification
            // bound is about; requests from others are not its doing.
            self.bytes_received += len as u64;
        }
    }

    /// A message arrived over the network, decoded; `len` bytes encoded.
    pub(crate) fn on_decoded(
        &mut self,
        w: &mut World,
        from: NodeId,
        len: usize,
        message: GossipMessage,
    ) {
        let request = wire::as_state_request(&message).is_some();
        self.count_received(w, len, !request);
        if request {
            self.on_request(w, from, &message);
        } else {
            if w.tracing(self.id) {
                let nonce = message.nonce;
                let seqs: Vec<u64> = match &message.content {
                    Some(Content::StateResponse(r)) => {
                        r.payloads.iter().map(|p| p.seq_num).collect()
                    }
                    _ => Vec::new(),
                };
                w.trace(self.id, || {
                    format!(
                        "answer from {from} nonce {nonce:x}: {} blocks {:?}..{:?}",
                        seqs.len(),
                        seqs.first(),
                        seqs.last()
                    )
                });
            }
            self.touch_requester();
            if let Some(requester) = self.requester.as_mut() {
                let result = requester.handle(w.now, Event::Response { from, message });
                if let Err(error) = result {
                    w.trace(self.id, || format!("  refused: {error}"));
                }
            }
        }
        self.drain(w);
    }

    /// A flooder's burst of `count` valid requests for random ranges.
    pub(crate) fn on_flood(&mut self, w: &mut World, from: NodeId, count: u32, channel: &Bytes) {
        let chain_height = w.chain.height();
        // One message, rewritten for each request.
        let mut message = wire::state_request(0, channel.clone(), 0, 0);
        for _ in 0..count {
            let start = w.flood_rng.u64(1..chain_height.max(2));
            let end = start
                .saturating_add(w.config.batch_size)
                .min(chain_height.saturating_sub(1))
                .max(start);
            message.nonce = w.flood_rng.u64(..);
            if let Some(Content::StateRequest(request)) = &mut message.content {
                request.start_seq_num = start;
                request.end_seq_num = end;
            }
            self.on_request(w, from, &message);
        }
        self.drain(w);
    }

    /// A state request from `from`, to the responder.
    fn on_request(&mut self, w: &mut World, from: NodeId, message: &GossipMessage) {
        let now = w.now;
        if !self.hangs.is_empty() {
            let t = w.elapsed();
            if self
                .hangs
                .iter()
                .any(|&(start, end)| start <= t && end.is_none_or(|end| t < end))
            {
                return;
            }
        }
        if self.behaviour == Behaviour::Dropping && self.drops(message) {
            return;
        }
        // Answers to a sink are never corrupted (they are not encoded), so
        // a flooder's requests are not remembered: a flood's millions would
        // only grow the map.
        if self.behaviour == Behaviour::Byzantine && !w.is_sink(from) {
            if let Some(r) = wire::as_state_request(message) {
                if let Some(range) = SeqRange::new(r.start_seq_num, r.end_seq_num) {
                    self.byzantine_ranges.insert(message.nonce, range);
                }
            }
        }
        if let Some(responder) = self.responder.as_mut() {
            if responder.handle_request(now, from, message).is_err() {
                self.refused_requests += 1;
            }
            // Before the host serves the read: the load as admitted.
            let (queued, reading) = responder.load();
            self.peak_queued = self.peak_queued.max(queued);
            self.peak_reading = self.peak_reading.max(reading);
        }
    }

    /// Whether this node never serves block `seq`: a
    /// [`Behaviour::Dropping`] node's chosen blocks (the same whoever asks).
    pub(crate) fn withholds(&self, seq: u64) -> bool {
        self.behaviour == Behaviour::Dropping
            && super::derive(seq, 0xd209_0000 + self.id.0 as u64).is_multiple_of(DROPPED_ONE_IN)
    }

    /// Whether a [`Behaviour::Dropping`] node drops this request: its range
    /// holds a block the node withholds.
    fn drops(&self, message: &GossipMessage) -> bool {
        let Some(request) = wire::as_state_request(message) else {
            return false;
        };
        // A request is at most a few hundred blocks (the responder refuses
        // longer ones), but a peer's request is not trusted to be short.
        let last = request
            .end_seq_num
            .min(request.start_seq_num.saturating_add(1024));
        (request.start_seq_num..=last).any(|seq| self.withholds(seq))
    }

    /// A `StateInfo` from `from`, published at `published`, advertising
    /// `height`. The newest one wins; the requester gets the whole view.
    pub(crate) fn on_state_info(
        &mut self,
        w: &mut World,
        from: NodeId,
        height: u64,
        published: Instant,
    ) {
        if self
            .view
            .get(&from)
            .is_some_and(|heard| heard.published >= published)
        {
            return;
        }
        self.view.insert(from, Heard { published, height });
        self.touch_requester();
        let Some(requester) = self.requester.as_mut() else {
            return;
        };
        let members: Vec<PeerState<NodeId>> = self
            .view
            .iter()
            .map(|(&id, heard)| {
                let info = StateInfo {
                    properties: Some(Properties {
                        ledger_height: heard.height,
                        left_channel: false,
                        chaincodes: Vec::new(),
                    }),
                    ..StateInfo::default()
                };
                PeerState::from_state_info(id, &info)
            })
            .collect();
        self.fed = members
            .iter()
            .filter_map(|p| Some((p.id, p.ledger_height?)))
            .collect();
        let _ = requester.handle(w.now, Event::Membership(members));
        self.drain(w);
    }

    /// A slow read finished.
    pub(crate) fn on_read_done(&mut self, w: &mut World, ticket: Ticket, payloads: Vec<Payload>) {
        if let Some(responder) = self.responder.as_mut() {
            // The responder may have abandoned the read (read_timeout).
            let _ = responder.handle(w.now, ResponderEvent::BlocksRead { ticket, payloads });
        }
        self.drain(w);
    }

    /// One of the machines' deadlines came.
    pub(crate) fn on_timeout(&mut self, w: &mut World, machine: Machine) {
        let now = w.now;
        match machine {
            Machine::Requester => {
                self.touch_requester();
                if let Some(requester) = self.requester.as_mut() {
                    let tracing = w.tracing(self.id);
                    let before = tracing.then(|| requester.stats().timeouts);
                    let _ = requester.handle(now, Event::Timeout);
                    if let Some(before) = before {
                        let timeouts = requester.stats().timeouts - before;
                        if timeouts > 0 {
                            w.trace(self.id, || format!("{timeouts} sends timed out"));
                        }
                    }
                }
            }
            Machine::Responder => {
                if let Some(responder) = self.responder.as_mut() {
                    let _ = responder.handle(now, ResponderEvent::Timeout);
                }
            }
        }
        self.drain(w);
        let timer = match machine {
            Machine::Requester => self.requester_timer,
            Machine::Responder => self.responder_timer,
        };
        if timer.is_some_and(|t| t <= now) {
            w.violation(
                self.id,
                format!("{machine:?}: poll_timeout is still at or before now after a Timeout"),
            );
        }
    }

    // --- outputs --------------------------------------------------------------

    /// Drains both machines until neither has an action left.
    fn drain(&mut self, w: &mut World) {
        loop {
            if let Some(action) = self.requester.as_mut().and_then(|r| r.poll_action()) {
                self.touch_requester();
                self.on_requester_action(w, action);
                continue;
            }
            if let Some(queued) = self.responder.as_mut().and_then(|r| r.poll_queued()) {
                match queued {
                    Queued::Send {
                        to,
                        payloads,
                        background,
                        len,
                        ..
                    } if w.is_sink(to) => self.answer_sink(w, to, payloads, background, len),
                    // Carried out as queued: a `ResponderAction` is a
                    // 200-byte enum (a response's message) to build and move
                    // on a flood's every read.
                    Queued::Read { ticket, to, range } => {
                        let max_bytes = self.responder.as_ref().map_or(0, |r| r.max_read_bytes());
                        self.read_blocks(w, ticket, to, range, max_bytes);
                    }
                    // Informational: nothing is sent.
                    Queued::Dropped { .. } => {}
                    queued => {
                        if let Some(action) = self.responder.as_ref().map(|r| r.action(queued)) {
                            self.on_responder_action(w, action);
                        }
                    }
                }
                continue;
            }
            break;
        }
        self.refresh_timers();
    }

    fn refresh_timers(&mut self) {
        if !self.timer_fresh {
            self.requester_timer = self.requester.as_ref().and_then(|r| r.poll_timeout());
            self.timer_fresh = true;
        }
        self.responder_timer = self.responder.as_ref().and_then(|r| r.poll_timeout());
        let requester = self.requester_timer.map(|at| (at, Machine::Requester));
        let responder = self.responder_timer.map(|at| (at, Machine::Responder));
        self.next_timer = match (requester, responder) {
            (Some(r), Some(s)) => Some(if s.0 < r.0 { s } else { r }),
            (r, s) => r.or(s),
        };
    }

    /// The requester is about to take an input: its timer and its check
    /// are to be made again.
    fn touch_requester(&mut self) {
        self.timer_fresh = false;
        self.checked = false;
    }

    fn on_requester_action(&mut self, w: &mut World, action: Action<NodeId>) {
        match action {
            Action::SendRequest { to, message } => self.send_request(w, to, message),
            Action::AddPayload { payload, from } => self.commit(w, payload, from),
            Action::GiveUp { reason, range } => {
                w.trace(self.id, || format!("give up {range}: {reason:?}"));
                *self.give_ups.entry(reason_name(&reason)).or_default() += 1;
                w.progressed();
            }
        }
    }

    /// Sends a sink (a flooder) an answer of `len` bytes: only its size
    /// counts (see [`World::send_unencoded`]), so no message is made of it.
    fn answer_sink(
        &mut self,
        w: &mut World,
        to: NodeId,
        payloads: Vec<Payload>,
        background: bool,
        len: usize,
    ) {
        w.set_background(self.id, to, background);
        if w.can_send(self.id, to) {
            w.send_unencoded(self.id, to, len, Wire::Opaque);
        }
        // Its payloads serve the next read, sent or not (see `read`),
        // unless the spare holds more: an empty answer (a busy reply)
        // would leave the next read to allocate and make every payload.
        let spare = &self.spare_payloads;
        if (payloads.len(), payloads.capacity()) > (spare.len(), spare.capacity()) {
            self.spare_payloads = payloads;
        }
    }

    fn on_responder_action(&mut self, w: &mut World, action: ResponderAction<NodeId>) {
        match action {
            ResponderAction::ReadBlocks {
                ticket,
                to,
                range,
                max_bytes,
            } => self.read_blocks(w, ticket, to, range, max_bytes),
            ResponderAction::SendResponse {
                to,
                message,
                background,
            } => {
                // A flooder's answers, and a crowd's beyond its favoured
                // few, go from spare uplink only.
                w.set_background(self.id, to, background);
                if !w.can_send(self.id, to) {
                    // The send buffer is full: dropped, no need to encode.
                    return;
                }
                if self.behaviour == Behaviour::Byzantine {
                    let bytes = self.corrupt(w, to, message);
                    w.send(self.id, to, bytes);
                } else if self.behaviour == Behaviour::Overclaiming(Overclaim::Empty) {
                    let mut message = message;
                    if let Some(Content::StateResponse(response)) = &mut message.content {
                        response.payloads.clear();
                    }
                    w.send_message(self.id, to, message);
                } else {
                    w.send_message(self.id, to, message);
                }
            }
            // Informational: nothing is sent.
            ResponderAction::Dropped { .. } => {}
            // What is queued on the connection leaves as foreground now.
            ResponderAction::Promote { to } => w.set_background(self.id, to, false),
        }
    }

    /// The host's side of `ReadBlocks`: reads the blocks and hands them to
    /// the responder, at once or, on a slow node, later.
    fn read_blocks(
        &mut self,
        w: &mut World,
        ticket: Ticket,
        to: NodeId,
        range: SeqRange,
        max_bytes: usize,
    ) {
        let payloads = self.read(w, range, max_bytes, w.is_sink(to));
        if self.behaviour == Behaviour::Slow {
            w.read_later(self.id, ticket, payloads);
        } else if let Some(responder) = self.responder.as_mut() {
            if let Err(error) = responder.handle_blocks_read(w.now, ticket, payloads) {
                w.violation(
                    self.id,
                    format!("responder refused its own read {ticket:?}: {error}"),
                );
            }
        }
    }

    /// Checks a request against the requester's promises, records it, and
    /// sends it.
    fn send_request(&mut self, w: &mut World, to: NodeId, message: GossipMessage) {
        let Some(request) = wire::as_state_request(&message) else {
            w.violation(
                self.id,
                format!("SendRequest to {to} without a state request"),
            );
            return;
        };
        let (start, end) = (request.start_seq_num, request.end_seq_num);
        if to == self.id {
            w.violation(self.id, "SendRequest to itself".into());
        }
        match SeqRange::new(start, end) {
            None => w.violation(
                self.id,
                format!("SendRequest to {to} of reversed range {start}..={end}"),
            ),
            Some(range) => {
                if range.len() > w.config.batch_size.saturating_add(1) {
                    w.violation(
                        self.id,
                        format!("SendRequest to {to} of {range}: longer than batch_size + 1"),
                    );
                }
                if self.fed.get(&to).is_none_or(|&height| height <= end) {
                    w.violation(
                        self.id,
                        format!(
                            "SendRequest to {to} of {range}, which it does not advertise ({:?})",
                            self.fed.get(&to)
                        ),
                    );
                }
                if end >= self.height.saturating_add(w.config.window_blocks) {
                    w.violation(
                        self.id,
                        format!(
                            "SendRequest of {range} past the window (committed {})",
                            self.height
                        ),
                    );
                }
                if start < self.height {
                    w.violation(
                        self.id,
                        format!(
                            "SendRequest of {range} below the committed height {}",
                            self.height
                        ),
                    );
                }
                w.trace(self.id, || {
                    format!("ask {to} {range} nonce {:x}", message.nonce)
                });
                self.asked.entry(to).or_default().insert((start, end));
                w.overhear(self.id, message.nonce, to, range);
                self.longest_ask = self.longest_ask.max(range.len());
            }
        }
        w.send_message(self.id, to, message);
    }

    fn was_asked(&self, peer: &NodeId, seq: u64) -> bool {
        let Some(ranges) = self.asked.get(peer) else {
            return false;
        };
        let lowest = seq.saturating_sub(self.longest_ask);
        ranges
            .range((lowest, 0)..=(seq, u64::MAX))
            .any(|&(start, end)| start <= seq && seq <= end)
    }

    /// The host's side of `AddPayload`: checks the delivery invariants,
    /// verifies the block, commits it or rejects it.
    fn commit(&mut self, w: &mut World, payload: Payload, from: Origin<NodeId>) {
        let seq = payload.seq_num;
        if seq != self.height {
            w.violation(
                self.id,
                format!(
                    "AddPayload of block {seq} from {from:?}, but the ledger's next block is {}",
                    self.height
                ),
            );
            return;
        }
        match &from {
            Origin::Peer(peer) if !self.was_asked(peer, seq) => {
                w.violation(
                    self.id,
                    format!("AddPayload of block {seq} from {peer}, never asked for it"),
                );
            }
            Origin::Peer(_) => {}
            Origin::Gossip => {
                w.violation(
                    self.id,
                    format!("AddPayload of block {seq} from gossip, but none was sent"),
                );
            }
        }
        let now = w.now;
        self.touch_requester();
        let Some(requester) = self.requester.as_mut() else {
            return;
        };
        // The chain's blocks verify (`chain`'s tests check it): a copy equal
        // to the chain's needs no decoding and hashing.
        let genuine = w.chain.block(seq) == Some(&payload.data);
        let verdict = if genuine {
            Ok(())
        } else {
            chain::verify(seq, &payload.data)
        };
        match verdict {
            Ok(()) => {
                if !genuine {
                    w.violation(
                        self.id,
                        format!("block {seq} verified but is not the chain's"),
                    );
                }
                self.height += 1;
                w.trace(self.id, || format!("commit {seq}"));
                w.progressed();
                w.committed_one(self.id.0);
                if let Err(error) = requester.handle(
                    now,
                    Event::Committed {
                        height: self.height,
                    },
                ) {
                    w.violation(
                        self.id,
                        format!("Committed {{ height: {} }} refused: {error}", self.height),
                    );
                }
                if let Some(responder) = self.responder.as_mut() {
                    let _ = responder.handle(now, ResponderEvent::Height(self.height));
                }
            }
            Err(_) => {
                w.trace(self.id, || format!("reject {seq}"));
                self.rejected += 1;
                if let Err(error) = requester.handle(now, Event::Rejected { seq }) {
                    w.violation(
                        self.id,
                        format!("Rejected {{ seq: {seq} }} refused: {error}"),
                    );
                }
            }
        }
    }

    /// Reads the longest prefix of `range` below our height that fits in
    /// `max_bytes` (at least one block).
    ///
    /// For a read whose answer goes to a sink (`opaque`), the blocks are
    /// zeros of their length: only an answer's size is ever looked at
    /// (see [`World::send_unencoded`]), and static bytes are cloned and
    /// dropped without touching a reference count, on a flood's every
    /// answer.
    fn read(&mut self, w: &World, range: SeqRange, max_bytes: usize, opaque: bool) -> Vec<Payload> {
        let start = range.start();
        let end = range.end().min(self.height.saturating_sub(1));
        // How many blocks fit, then the payloads in one `extend`: pushed one
        // by one, each payload went through the stack (a stall on a
        // flood's every block).
        let mut fitting = 0;
        let mut total = 0usize;
        for seq in start..=end {
            let Some(len) = self.stored(w, seq).map(Bytes::len) else {
                break;
            };
            if fitting > 0 && total.saturating_add(len) > max_bytes {
                break;
            }
            total += len;
            fitting += 1;
        }
        let mut payloads = std::mem::take(&mut self.spare_payloads);
        // Every block below `start + fitting` was found above.
        let none = Bytes::new();
        let block = |seq| match self.bad_blocks.get(&seq) {
            Some(forged) => forged,
            None => w.chain.block(seq).unwrap_or(&none),
        };
        let data = |block: &Bytes| match OPAQUE.get(..block.len()) {
            Some(zeros) if opaque => Bytes::from_static(zeros),
            _ => block.clone(),
        };
        if opaque {
            // The last answer to a sink's payloads, rewritten: a payload
            // whose data has the block's length already is as good as new
            // (only lengths are looked at), and none is dropped and made
            // again (a flood's every block).
            payloads.truncate(fitting as usize);
            for (payload, seq) in payloads.iter_mut().zip(start..) {
                payload.seq_num = seq;
                let block = block(seq);
                if payload.data.len() != block.len() {
                    payload.data = data(block);
                }
            }
        } else {
            payloads.clear();
        }
        let made = payloads.len() as u64;
        payloads.extend((start + made..start + fitting).map(|seq| Payload {
            seq_num: seq,
            data: data(block(seq)),
            private_data: Vec::new(),
        }));
        payloads
    }

    /// Block `seq` as this node stores it, if it holds it: the chain's, or
    /// its bad copy.
    fn stored<'a>(&'a self, w: &'a World, seq: u64) -> Option<&'a Bytes> {
        if seq >= self.height {
            return None;
        }
        let block = w.chain.block(seq)?;
        Some(self.bad_blocks.get(&seq).unwrap_or(block))
    }

    /// From `from` until `until` (for good if `None`) it answers no request.
    pub(crate) fn hang(&mut self, from: Duration, until: Option<Duration>) {
        self.hangs.push((from, until));
    }

    /// Whether it stopped answering for good by `t`: it serves nothing any
    /// more, whatever it advertises.
    pub(crate) fn hung_for_good(&self, t: Duration) -> bool {
        self.hangs
            .iter()
            .any(|&(from, until)| until.is_none() && from <= t)
    }

    /// Makes this node's copy of block `seq` bad.
    pub(crate) fn corrupt_block(&mut self, seq: u64, block_size: usize) {
        let mut rng = fastrand::Rng::with_seed(seq);
        self.bad_blocks
            .insert(seq, forged_block(seq, block_size, &mut rng));
    }

    /// A byzantine answer to `to`, chosen by the seed: forged blocks, a
    /// wrong nonce, payloads outside the range, payloads whose number is not
    /// their block's, garbage, or the right blocks under a nonce `to` sent
    /// to another peer.
    fn corrupt(&mut self, w: &mut World, to: NodeId, mut message: GossipMessage) -> Bytes {
        let range = self.byzantine_ranges.remove(&message.nonce);
        let block_size = w.chain.block_size();
        let chain_height = w.chain.height();
        let mode = w.rng.u8(0..6);
        let payloads = match &mut message.content {
            Some(Content::StateResponse(response)) => &mut response.payloads,
            _ => return Bytes::from(message.encode_to_vec()),
        };
        match mode {
            5 => {
                // A nonce of the requester's, overheard on its way to another
                // peer, with the right blocks: only the peer asked may answer.
                let stolen = w.overheard(to).find(|(_, asked, _)| *asked != self.id);
                match stolen {
                    Some((nonce, _, range)) => {
                        message.nonce = nonce;
                        *payloads = (range.start()..=range.end())
                            .filter_map(|seq| {
                                Some(Payload {
                                    seq_num: seq,
                                    data: w.chain.block(seq)?.clone(),
                                    private_data: Vec::new(),
                                })
                            })
                            .collect();
                    }
                    None => message.nonce = message.nonce.wrapping_add(w.rng.u64(1..)),
                }
            }
            0 => {
                for payload in payloads.iter_mut() {
                    payload.data = forged_block(payload.seq_num, block_size, &mut w.rng);
                }
            }
            1 => message.nonce = message.nonce.wrapping_add(w.rng.u64(1..)),
            2 => {
                let count = payloads.len().max(1);
                let (start, end) = range.map_or((0, 0), |r| (r.start(), r.end()));
                let outside = (end.saturating_add(1)..chain_height).chain((0..start).rev());
                *payloads = outside
                    .take(count)
                    .filter_map(|seq| {
                        Some(Payload {
                            seq_num: seq,
                            data: w.chain.block(seq)?.clone(),
                            private_data: Vec::new(),
                        })
                    })
                    .collect();
            }
            3 => {
                for payload in payloads.iter_mut() {
                    let other = if payload.seq_num + 1 < chain_height {
                        payload.seq_num + 1
                    } else {
                        payload.seq_num.saturating_sub(1)
                    };
                    if let Some(block) = w.chain.block(other) {
                        payload.data = block.clone();
                    }
                }
            }
            _ => {
                let mut garbage = vec![0u8; w.rng.usize(1..=512)];
                w.rng.fill(&mut garbage);
                return Bytes::from(garbage);
            }
        }
        Bytes::from(message.encode_to_vec())
    }

    // --- invariants -----------------------------------------------------------

    /// Checks the requester's bounds after a step.
    pub(crate) fn check(&mut self, w: &mut World) {
        if let Some(responder) = self.responder.as_ref() {
            let (queued, reading) = responder.load();
            self.peak_queued = self.peak_queued.max(queued);
            self.peak_reading = self.peak_reading.max(reading);
        }
        if self.checked {
            return;
        }
        let Some(requester) = self.requester.as_ref() else {
            return;
        };
        let stats = requester.stats();
        let config = &w.config;
        let mut found = Vec::new();
        if stats.in_flight > config.max_in_flight {
            found.push(format!(
                "{} requests in flight, max_in_flight {}",
                stats.in_flight, config.max_in_flight
            ));
        }
        for (peer, record) in requester.peer_stats_iter() {
            if record.in_flight > config.max_in_flight_per_peer {
                found.push(format!(
                    "{} requests in flight to {peer}, max_in_flight_per_peer {}",
                    record.in_flight, config.max_in_flight_per_peer
                ));
            }
        }
        let held_blocks = stats.buffered_blocks as u64 + stats.uncommitted_blocks;
        let max_blocks = config.window_blocks.saturating_add(config.block_buffer);
        if held_blocks > max_blocks {
            found.push(format!(
                "{held_blocks} blocks held (buffered {} + uncommitted {}), more than window_blocks + block_buffer = {max_blocks}",
                stats.buffered_blocks, stats.uncommitted_blocks
            ));
        }
        let held_bytes = stats.buffered_bytes as u64 + stats.uncommitted_bytes;
        let max_bytes = config.window_bytes.saturating_add(w.max_block_bytes);
        if held_bytes > max_bytes {
            found.push(format!(
                "{held_bytes} bytes held, more than window_bytes + one block = {max_bytes}"
            ));
        }
        if stats.committed != self.height {
            found.push(format!(
                "stats.committed {} but the ledger is at {}",
                stats.committed, self.height
            ));
        }
        self.peak_held_bytes = self.peak_held_bytes.max(held_bytes);
        // Found again at each check until the requester moves on.
        self.checked = found.is_empty();
        for message in found {
            w.violation(self.id, message);
        }
    }
}

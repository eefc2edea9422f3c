//! The driver loops: our machines as hosts run them, with Fabric peers on
//! the other end of every message.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use antientropy::wire::gossip::GossipMessage;
use antientropy::{
    wire, Action, AntiEntropy, Event, EventError, GiveUpReason, RequestError, ResponderAction,
    ResponderEvent, ResponseError, SeqRange, StateResponder,
};
use bytes::Bytes;

use crate::chain::Chain;
use crate::net::{open, Ev, Net};
use crate::{now, US};

/// What a catch-up of ours looked like.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Most requests outstanding at once.
    pub max_in_flight: usize,
    /// Requests sent, by peer.
    pub requests: BTreeMap<String, u64>,
    /// Blocks delivered to the host, by the peer that sent them.
    pub blocks_from: BTreeMap<String, u64>,
    /// Blocks delivered with private data.
    pub private_blocks: u64,
    pub give_ups: Vec<(SeqRange, GiveUpReason)>,
    /// Responses the machine refused, in order, but the late ones.
    pub refused: Vec<EventError>,
    /// Answers to a send of ours that came after its request had ended
    /// (the other copy of a hedged range won): refused as an unknown
    /// nonce, by design.
    pub late: u64,
    /// Every nonce sent, with the peer it went to.
    sent: BTreeMap<u64, String>,
    pub elapsed: Duration,
}

/// Carries out the requester's actions until it runs dry: requests go to
/// the Fabric peers, payloads are checked against the chain and committed.
fn drain(
    net: &mut Net,
    ae: &mut AntiEntropy<String>,
    chain: &Chain,
    report: &mut CatchUp,
    hold: &mut Option<Vec<(String, GossipMessage)>>,
) -> Result<(), String> {
    while let Some(action) = ae.poll_action() {
        match action {
            Action::SendRequest { to, message } => {
                *report.requests.entry(to.clone()).or_default() += 1;
                report.sent.insert(message.nonce, to.clone());
                match hold {
                    Some(held) => held.push((to, message)),
                    None => net.deliver(&to, US, &message)?,
                }
            }
            Action::AddPayload { payload, from } => {
                chain.check(&payload, US)?;
                let seq = payload.seq_num;
                if !payload.private_data.is_empty() {
                    report.private_blocks += 1;
                }
                let from = match from {
                    antientropy::Origin::Peer(peer) => peer,
                    antientropy::Origin::Gossip => "gossip".into(),
                };
                *report.blocks_from.entry(from).or_default() += 1;
                ae.handle(now(), Event::Committed { height: seq + 1 })
                    .map_err(|e| format!("commit of {seq} refused: {e}"))?;
            }
            Action::GiveUp { range, reason } => report.give_ups.push((range, reason)),
        }
        report.max_in_flight = report.max_in_flight.max(ae.in_flight());
    }
    Ok(())
}

/// Feeds a response from Fabric peer `from` to the requester.
pub fn feed(
    ae: &mut AntiEntropy<String>,
    from: &str,
    envelope: &Bytes,
) -> Result<Result<(), EventError>, String> {
    let (_, payload) = open(envelope)?;
    Ok(ae.handle_response_bytes(now(), from.to_string(), payload))
}

/// Runs our requester against the Fabric peers of `net` until it has
/// committed `target` blocks (its height is `target`), within `limit`.
/// `held` requests (sent before, kept back by the case) go out first.
pub fn catch_up(
    net: &mut Net,
    ae: &mut AntiEntropy<String>,
    chain: &Chain,
    target: u64,
    limit: Duration,
    held: Vec<(String, GossipMessage)>,
) -> Result<CatchUp, String> {
    let started = now();
    let deadline = started + limit;
    let mut report = CatchUp::default();
    for (to, message) in held {
        net.deliver(&to, US, &message)?;
    }
    loop {
        drain(net, ae, chain, &mut report, &mut None)?;
        if ae.committed() >= target {
            report.elapsed = now().saturating_duration_since(started);
            return Ok(report);
        }
        if now() >= deadline {
            return Err(format!(
                "stuck at height {} of {target} after {limit:?}: {:?}",
                ae.committed(),
                ae.stats()
            ));
        }
        let wake = ae.poll_timeout().map_or(deadline, |t| t.min(deadline));
        match net.next(wake)? {
            Some((from, Ev::Respond { to, envelope })) if to == US => {
                match feed(ae, &from, &envelope)? {
                    Ok(()) => {}
                    Err(EventError::Response(ResponseError::UnknownNonce { nonce }))
                        if report.sent.get(&nonce) == Some(&from) =>
                    {
                        report.late += 1;
                    }
                    Err(refused) => report.refused.push(refused),
                }
            }
            Some(_) => {}
            None => {
                let _ = ae.handle(now(), Event::Timeout);
            }
        }
    }
}

/// Drains the requester into `held` without sending anything: the case
/// decides what reaches Fabric.
pub fn hold(
    net: &mut Net,
    ae: &mut AntiEntropy<String>,
    chain: &Chain,
) -> Result<Vec<(String, GossipMessage)>, String> {
    let mut held = Some(Vec::new());
    drain(net, ae, chain, &mut CatchUp::default(), &mut held)?;
    Ok(held.unwrap_or_default())
}

/// Our responder answering one request from Fabric peer `fabric` (sent to
/// `us`): validates, reads the chain with the private data `fabric` may
/// see, and delivers the response to Fabric from `us`. Returns the response,
/// or the refusal.
pub fn serve(
    net: &mut Net,
    responder: &mut StateResponder<String>,
    chain: &Chain,
    fabric: &str,
    us: &str,
    payload: Bytes,
) -> Result<Option<GossipMessage>, String> {
    let at = now();
    if let Err(refused) = responder.handle_request_bytes(at, fabric.to_string(), payload) {
        return Err(format!("our responder refused Fabric's request: {refused}"));
    }
    let Drained { responses, dropped } = drain_responder(responder, chain, at)?;
    if let Some(reason) = dropped {
        return Err(format!("our responder dropped Fabric's request: {reason}"));
    }
    let mut sent = None;
    for (to, message) in responses {
        net.deliver(&to, us, &message)?;
        sent = Some(message);
    }
    Ok(sent)
}

/// What a drained responder produced.
struct Drained {
    /// The responses to send: (requester, message).
    responses: Vec<(String, GossipMessage)>,
    /// Why a request was dropped unread, if one was.
    dropped: Option<RequestError>,
}

/// Drains `responder`, reading every block it asks for from `chain` at
/// once (with the private data its requester may see); returns the
/// responses to send and why a request was dropped unread, if one was.
fn drain_responder(
    responder: &mut StateResponder<String>,
    chain: &Chain,
    at: Instant,
) -> Result<Drained, String> {
    let mut responses = Vec::new();
    let mut dropped = None;
    while let Some(action) = responder.poll_action() {
        match action {
            ResponderAction::ReadBlocks {
                ticket, to, range, ..
            } => {
                let payloads = (range.start()..=range.end())
                    .map(|seq| chain.payload_for(seq, &to))
                    .collect();
                responder
                    .handle(at, ResponderEvent::BlocksRead { ticket, payloads })
                    .map_err(|e| e.to_string())?;
            }
            ResponderAction::SendResponse { to, message, .. } => responses.push((to, message)),
            ResponderAction::Dropped { reason, .. } => dropped = Some(reason),
            // One send class here: nothing waits in a background.
            ResponderAction::Promote { .. } => {}
        }
    }
    Ok(Drained { responses, dropped })
}

/// The inclusive range a state request asks for.
pub fn range_of(message: &GossipMessage) -> Option<(u64, u64)> {
    wire::as_state_request(message).map(|r| (r.start_seq_num, r.end_seq_num))
}

/// Block numbers a state response carries.
pub fn seqs_of(message: &GossipMessage) -> Vec<u64> {
    wire::as_state_response(message)
        .map(|r| r.payloads.iter().map(|p| p.seq_num).collect())
        .unwrap_or_default()
}

/// How a responder treated one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No response (Fabric: silence; ours: a typed refusal).
    Refused,
    /// The envelope of the response, as it goes on the wire.
    Responded(Bytes),
}

/// How our responder answers the message `bytes` from [`US`], the host
/// reading the chain at once.
pub fn our_answer(
    ours: &mut StateResponder<String>,
    chain: &Chain,
    at: Instant,
    bytes: Bytes,
) -> Result<Answer, String> {
    if ours
        .handle_request_bytes(at, US.to_string(), bytes)
        .is_err()
    {
        return Ok(Answer::Refused);
    }
    // Dropped unread (stale or abandoned): no answer, as a refusal.
    let response = drain_responder(ours, chain, at)?
        .responses
        .last()
        .map(|(_, message)| crate::net::seal(message));
    Ok(response.map_or(Answer::Refused, Answer::Responded))
}

/// Sends each request (message bytes inside our envelope, from [`US`]) to
/// Fabric peer `fabric` and to our responder, and collects both answers.
/// Fabric refuses in silence, so its refusals are what has not arrived
/// `grace` after the `expected` answers came (or 10 s, if they never do).
pub fn ask_both(
    net: &mut Net,
    fabric: &str,
    ours: &mut StateResponder<String>,
    chain: &Chain,
    requests: &[(u64, Bytes)],
    expected: usize,
    grace: Duration,
) -> Result<Vec<(Answer, Answer)>, String> {
    let at = now();
    let mut our_answers = Vec::new();
    for (nonce, bytes) in requests {
        let envelope = wire::gossip::Envelope {
            payload: bytes.clone(),
            signature: Bytes::new(),
            secret_envelope: None,
        };
        net.deliver_bytes(fabric, US, &prost::Message::encode_to_vec(&envelope))?;
        our_answers.push((*nonce, our_answer(ours, chain, at, bytes.clone())?));
    }

    // Fabric's answers by nonce; the nonces are distinct.
    let mut fabric_answers: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut deadline: Instant = now() + Duration::from_secs(10);
    let mut grace_started = false;
    loop {
        if !grace_started && fabric_answers.len() >= expected {
            deadline = now() + grace;
            grace_started = true;
        }
        match net.next(deadline)? {
            Some((from, Ev::Respond { to, envelope })) if from == fabric && to == US => {
                let (message, _) = open(&envelope)?;
                if fabric_answers.insert(message.nonce, envelope).is_some() {
                    return Err(format!("Fabric answered nonce {} twice", message.nonce));
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    Ok(our_answers
        .into_iter()
        .map(|(nonce, ours)| {
            let theirs = fabric_answers
                .remove(&nonce)
                .map_or(Answer::Refused, Answer::Responded);
            (theirs, ours)
        })
        .collect())
}

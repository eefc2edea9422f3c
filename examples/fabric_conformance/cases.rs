//! The cases. Each returns what it showed, or why it failed; a divergence
//! case passes when Fabric accepts what ours refuses, as documented in the
//! README's Fabric table.

use std::time::Duration;

use antientropy::wire::gossip::gossip_message::{Content, Tag};
use antientropy::wire::gossip::{self as pb, DataMessage, GossipMessage};
use antientropy::{
    wire, AntiEntropy, Config, Event, EventError, PeerState, ResponseError, StateResponder,
};
use bytes::Bytes;
use prost::Message;

use crate::chain::Chain;
use crate::drive::{ask_both, catch_up, feed, hold, our_answer, range_of, seqs_of, serve, Answer};
use crate::net::{open, Ev, Net, PeerSpec};
use crate::{now, CHANNEL, US};

const FAB: &str = "fabric0";
const FAB1: &str = "fabric1";
const FAB2: &str = "fabric2";

/// Whether a case checks conformance or documents a divergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Conformance,
    Divergence,
}

pub struct Case {
    pub name: &'static str,
    pub kind: Kind,
    pub run: fn(&Chain, &mut Net) -> Result<String, String>,
}

pub const CASES: &[Case] = &[
    Case {
        name: "fabric-requester/from-our-responder",
        kind: Kind::Conformance,
        run: fabric_catches_up_from_ours,
    },
    Case {
        name: "our-requester/fabric-preset",
        kind: Kind::Conformance,
        run: ours_fabric_preset,
    },
    Case {
        name: "our-requester/default-preset",
        kind: Kind::Conformance,
        run: ours_default_preset,
    },
    Case {
        name: "responders/same-answers",
        kind: Kind::Conformance,
        run: same_answers,
    },
    Case {
        name: "our-requester/refuses-unsolicited",
        kind: Kind::Conformance,
        run: refuses_unsolicited,
    },
    Case {
        name: "divergence/unasked-peer",
        kind: Kind::Divergence,
        run: unasked_peer,
    },
    Case {
        name: "divergence/out-of-range",
        kind: Kind::Divergence,
        run: out_of_range,
    },
    Case {
        name: "divergence/out-of-range-stall",
        kind: Kind::Divergence,
        run: out_of_range_stall,
    },
    Case {
        name: "divergence/stray-responses",
        kind: Kind::Divergence,
        run: stray_responses,
    },
    Case {
        name: "divergence/validator-overflow",
        kind: Kind::Divergence,
        run: validator_overflow,
    },
];

fn channel() -> Bytes {
    Bytes::from_static(CHANNEL.as_bytes())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn requester(config: Config, members: &[(&str, u64)]) -> Result<AntiEntropy<String>, String> {
    let mut ae = AntiEntropy::new(config, channel(), 1, 7, now()).map_err(err)?;
    let view = members
        .iter()
        .map(|(id, height)| PeerState::new(id.to_string(), *height))
        .collect();
    ae.handle(now(), Event::Membership(view)).map_err(err)?;
    Ok(ae)
}

/// A response carrying the chain's blocks `seqs` for `reader`.
fn response(
    chain: &Chain,
    nonce: u64,
    seqs: impl Iterator<Item = u64>,
    reader: &str,
) -> GossipMessage {
    let payloads = seqs.map(|seq| chain.payload_for(seq, reader)).collect();
    wire::state_response(nonce, channel(), payloads)
}

/// Waits for Fabric's requester (peer `fabric`) to send a request;
/// returns (to, nonce, start, end).
fn next_request(
    net: &mut Net,
    fabric: &str,
    within: Duration,
) -> Result<(String, u64, u64, u64), String> {
    let deadline = now() + within;
    match net.wait(deadline, |from, ev| {
        from == fabric && matches!(ev, Ev::Send { .. })
    })? {
        Some(Ev::Send { to, envelope }) => {
            let (message, _) = open(&envelope)?;
            let (start, end) =
                range_of(&message).ok_or("Fabric sent something else than a state request")?;
            Ok((to, message.nonce, start, end))
        }
        _ => Err(format!("{fabric} sent no request within {within:?}")),
    }
}

/// Waits until Fabric peer `fabric` has committed every block below
/// `height`, in order from `from`.
fn wait_commits(
    net: &mut Net,
    fabric: &str,
    from: u64,
    height: u64,
    within: Duration,
) -> Result<(), String> {
    let deadline = now() + within;
    let mut next = from;
    while next < height {
        match net.wait(deadline, |peer, ev| {
            peer == fabric && matches!(ev, Ev::Committed(_))
        })? {
            Some(Ev::Committed(seq)) if seq == next => next += 1,
            Some(Ev::Committed(seq)) => {
                return Err(format!("{fabric} committed {seq}, expected {next}"))
            }
            _ => {
                return Err(format!(
                    "{fabric} stuck at height {next}, expected {height}"
                ))
            }
        }
    }
    Ok(())
}

/// Fabric peer `peer`'s response envelope to `message`, sent by us.
fn answer(net: &mut Net, peer: &str, message: &GossipMessage) -> Result<Bytes, String> {
    net.deliver(peer, US, message)?;
    let deadline = now() + Duration::from_secs(5);
    match net.wait(deadline, |from, ev| {
        from == peer && matches!(ev, Ev::Respond { .. })
    })? {
        Some(Ev::Respond { envelope, .. }) => Ok(envelope),
        _ => Err(format!("{peer} did not answer")),
    }
}

fn ranges(list: &[(u64, u64)]) -> String {
    list.iter()
        .map(|(s, e)| format!("[{s},{e}]"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- conformance ---------------------------------------------------------------

/// Fabric's requester catches up from our StateResponder: every block it
/// commits passed Fabric's own `handleStateResponse` (VerifyBlock with the
/// header number, channel, metadata, data hash) and the ledger bridge's
/// check of order, bytes and private data (what fabric0 may read).
fn fabric_catches_up_from_ours(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 60;
    net.spawn(
        PeerSpec::new(
            FAB,
            CHANNEL,
            n,
            1,
            &["-state", "-check", "100ms", "-timeout", "2s"],
        ),
        &[(US, n)],
    )?;
    let mut ours = StateResponder::new(Config::default(), channel(), n).map_err(err)?;
    let deadline = now() + Duration::from_secs(20);
    let mut asked = Vec::new();
    let mut next = 1;
    while next < n {
        match net.next(deadline)? {
            Some((from, Ev::Send { to, envelope })) => {
                let (message, payload) = open(&envelope)?;
                asked.push(range_of(&message).ok_or("not a state request")?);
                if to != US {
                    return Err(format!("Fabric asked {to}, which is not a member"));
                }
                serve(net, &mut ours, chain, &from, &to, payload)?;
            }
            Some((_, Ev::Committed(seq))) if seq == next => next += 1,
            Some((_, Ev::Committed(seq))) => {
                return Err(format!("Fabric committed {seq}, expected {next}"))
            }
            Some(_) => {}
            None => return Err(format!("Fabric stuck at height {next} of {n}")),
        }
    }
    asked.dedup();
    // Fabric's batching: [prev, prev + batchSize] inclusive, 11 blocks. (A
    // later round may re-ask blocks whose commit it has not seen yet.)
    let expected: Vec<(u64, u64)> = (1..n)
        .step_by(11)
        .map(|s| (s, (s + 10).min(n - 1)))
        .collect();
    if asked.get(..expected.len()) != Some(&expected[..]) {
        return Err(format!(
            "Fabric asked {}, expected {}",
            ranges(&asked),
            ranges(&expected)
        ));
    }
    Ok(format!(
        "Fabric committed 1..={} ({} blocks with private data, checked by its ledger) from our \
         StateResponder; it asked {}",
        n - 1,
        chain.private_blocks(1..n, FAB),
        ranges(&asked)
    ))
}

/// Config::fabric(): one request at a time to Fabric's responder.
fn ours_fabric_preset(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 100;
    net.spawn(PeerSpec::new(FAB, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::fabric(), &[(FAB, n)])?;
    // The preset's first round comes after check_interval (10 s): start it now.
    ae.handle(now(), Event::Tick).map_err(err)?;
    let report = catch_up(net, &mut ae, chain, n, Duration::from_secs(30), Vec::new())?;
    if report.max_in_flight != 1 {
        return Err(format!(
            "{} requests in flight, the preset allows 1",
            report.max_in_flight
        ));
    }
    if !report.give_ups.is_empty() || !report.refused.is_empty() || report.late != 0 {
        return Err(format!(
            "give-ups {:?}, refused {:?}, {} late answers",
            report.give_ups, report.refused, report.late
        ));
    }
    Ok(format!(
        "committed 1..={} ({} with private data for {US}, each checked) in {:.2} s over {} \
         requests, one in flight",
        n - 1,
        report.private_blocks,
        report.elapsed.as_secs_f64(),
        report.requests.values().sum::<u64>()
    ))
}

/// Config::default(): pipelined over two Fabric responders.
fn ours_default_preset(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 200;
    net.spawn(PeerSpec::new(FAB, CHANNEL, n, n, &[]), &[])?;
    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::default(), &[(FAB, n), (FAB1, n)])?;
    let report = catch_up(net, &mut ae, chain, n, Duration::from_secs(30), Vec::new())?;
    if report.max_in_flight < 2 {
        return Err(format!(
            "only {} request in flight at most",
            report.max_in_flight
        ));
    }
    for peer in [FAB, FAB1] {
        if report.blocks_from.get(peer).copied().unwrap_or(0) == 0 {
            return Err(format!(
                "no block came from {peer}: {:?}",
                report.blocks_from
            ));
        }
    }
    if !report.refused.is_empty() {
        return Err(format!("refused Fabric's answers: {:?}", report.refused));
    }
    // A late answer is the losing copy of a hedged or retried range: at
    // most one per hedge or retry.
    let stats = ae.stats();
    if report.late > stats.hedges + stats.retries {
        return Err(format!(
            "{} late answers, for {} hedges and {} retries",
            report.late, stats.hedges, stats.retries
        ));
    }
    Ok(format!(
        "committed 1..={} in {:.2} s, up to {} requests in flight, blocks by peer {:?}, \
         {} late answers to hedged copies ignored",
        n - 1,
        report.elapsed.as_secs_f64(),
        report.max_in_flight,
        report.blocks_from,
        report.late
    ))
}

/// What a row of the responder table expects of both responders.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Serve(u64, u64),
    Empty,
    Refuse,
}

fn request_bytes(nonce: u64, start: u64, end: u64) -> Bytes {
    wire::state_request(nonce, channel(), start, end)
        .encode_to_vec()
        .into()
}

fn message_bytes(nonce: u64, tag: Tag, channel: &str, content: Option<Content>) -> Bytes {
    GossipMessage {
        nonce,
        channel: Bytes::copy_from_slice(channel.as_bytes()),
        tag: tag as i32,
        content,
    }
    .encode_to_vec()
    .into()
}

fn state_request_content(start: u64, end: u64) -> Option<Content> {
    wire::as_state_request(&wire::state_request(0, channel(), start, end))
        .cloned()
        .map(Content::StateRequest)
}

/// Does `answer` (a response envelope, or none) meet `expect` for `nonce`?
fn meets(answer: &Answer, expect: Expect, nonce: u64) -> Result<(), String> {
    match (answer, expect) {
        (Answer::Refused, Expect::Refuse) => Ok(()),
        (Answer::Refused, _) => Err("no response".into()),
        (Answer::Responded(_), Expect::Refuse) => Err("answered".into()),
        (Answer::Responded(envelope), _) => {
            let (message, _) = open(envelope)?;
            if message.nonce != nonce {
                return Err(format!("nonce {} instead of {nonce}", message.nonce));
            }
            if message.tag != Tag::ChanOrOrg as i32 || message.channel != channel() {
                return Err("tag or channel differ from Fabric's".into());
            }
            let want: Vec<u64> = match expect {
                Expect::Serve(start, end) => (start..=end).collect(),
                _ => Vec::new(),
            };
            let got = seqs_of(&message);
            if wire::as_state_response(&message).is_none() || got != want {
                return Err(format!("served {got:?}, expected {want:?}"));
            }
            Ok(())
        }
    }
}

/// Runs `rows` against Fabric's responder and ours (both presets): each
/// answer must meet the row's expectation for Fabric, `ours` for ours (the
/// same as Fabric's except in divergence rows), and two responses must be
/// the same bytes.
fn compare_responders(
    chain: &Chain,
    net: &mut Net,
    rows: &[(&str, u64, Bytes, Expect, Expect)],
) -> Result<(usize, usize), String> {
    let height = 30;
    net.spawn(PeerSpec::new(FAB, CHANNEL, height, height, &[]), &[])?;
    let mut fabric_preset =
        StateResponder::new(Config::fabric(), channel(), height).map_err(err)?;
    let mut default_preset =
        StateResponder::new(Config::default(), channel(), height).map_err(err)?;
    let requests: Vec<(u64, Bytes)> = rows
        .iter()
        .map(|(_, nonce, bytes, ..)| (*nonce, bytes.clone()))
        .collect();
    let fabric_answers = rows
        .iter()
        .filter(|row| !matches!(row.3, Expect::Refuse))
        .count();
    let answers = ask_both(
        net,
        FAB,
        &mut fabric_preset,
        chain,
        &requests,
        fabric_answers,
        Duration::from_millis(700),
    )?;
    let mut failures = Vec::new();
    let (mut answered, mut refused) = (0, 0);
    for ((label, nonce, bytes, fabric_expect, our_expect), (theirs, ours)) in
        rows.iter().zip(answers)
    {
        let ours_default = our_answer(&mut default_preset, chain, now(), bytes.clone())?;
        let mut problems = Vec::new();
        if let Err(e) = meets(&theirs, *fabric_expect, *nonce) {
            problems.push(format!("Fabric: {e}"));
        }
        if let Err(e) = meets(&ours, *our_expect, *nonce) {
            problems.push(format!("ours: {e}"));
        }
        if ours_default != ours {
            problems.push("Config::default() answers unlike Config::fabric()".into());
        }
        if let (Answer::Responded(a), Answer::Responded(b)) = (&theirs, &ours) {
            if a != b {
                problems.push("responses differ in bytes".into());
            }
        }
        match &theirs {
            Answer::Responded(_) => answered += 1,
            Answer::Refused => refused += 1,
        }
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join("; ")));
        }
    }
    if failures.is_empty() {
        Ok((answered, refused))
    } else {
        Err(failures.join(" | "))
    }
}

/// The same requests, valid and malformed, to Fabric's responder and ours:
/// the same ones refused, the others answered with the same bytes.
fn same_answers(chain: &Chain, net: &mut Net) -> Result<String, String> {
    use Expect::*;
    let max = u64::MAX;
    let data = Some(Content::DataMsg(DataMessage {
        payload: Some(chain.payload_for(3, US)),
    }));
    let not_a_request = Some(Content::StateResponse(Default::default()));
    #[rustfmt::skip]
    let rows: Vec<(&str, u64, Bytes, Expect)> = vec![
        ("full batch [1,11]", 101, request_bytes(101, 1, 11), Serve(1, 11)),
        ("one block [5,5]", 102, request_bytes(102, 5, 5), Serve(5, 5)),
        ("genesis [0,0]", 103, request_bytes(103, 0, 0), Serve(0, 0)),
        ("batch limit [10,20]", 104, request_bytes(104, 10, 20), Serve(10, 20)),
        ("last block [29,29]", 105, request_bytes(105, 29, 29), Serve(29, 29)),
        ("past our height [25,35]", 106, request_bytes(106, 25, 35), Serve(25, 29)),
        ("at our height [30,30]", 107, request_bytes(107, 30, 30), Empty),
        ("beyond [40,50]", 108, request_bytes(108, 40, 50), Empty),
        ("nonce 0", 0, request_bytes(0, 1, 2), Serve(1, 2)),
        ("tag UNDEFINED", 109, message_bytes(109, Tag::Undefined, CHANNEL, state_request_content(1, 3)), Serve(1, 3)),
        ("tag CHAN_AND_ORG", 110, message_bytes(110, Tag::ChanAndOrg, CHANNEL, state_request_content(2, 4)), Serve(2, 4)),
        ("[MAX-10, MAX] (no overflow yet)", 111, request_bytes(111, max - 10, max), Empty),
        ("one too many [10,21]", 121, request_bytes(121, 10, 21), Refuse),
        ("everything [0, MAX]", 122, request_bytes(122, 0, max), Refuse),
        ("start > end [20,10]", 123, request_bytes(123, 20, 10), Refuse),
        ("start > end [MAX,0]", 124, request_bytes(124, max, 0), Refuse),
        ("another channel", 125, message_bytes(125, Tag::ChanOrOrg, "otherchannel", state_request_content(1, 3)), Refuse),
        ("a state response", 126, message_bytes(126, Tag::ChanOrOrg, CHANNEL, not_a_request), Refuse),
        ("a DataMsg", 127, message_bytes(127, Tag::ChanAndOrg, CHANNEL, data), Refuse),
        ("an Empty", 128, message_bytes(128, Tag::ChanOrOrg, CHANNEL, Some(Content::Empty(pb::Empty {}))), Refuse),
        ("no content", 129, message_bytes(129, Tag::ChanOrOrg, CHANNEL, None), Refuse),
        ("not protobuf", 130, Bytes::from_static(b"\xff\xff\xff\xff"), Refuse),
    ];
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(label, nonce, bytes, expect)| (label, nonce, bytes, expect, expect))
        .collect();
    let (answered, refused) = compare_responders(chain, net, &rows)?;
    let filtered = net.filtered.len();
    Ok(format!(
        "{} requests: {answered} answered by both with byte-identical envelopes (private data \
         for {US} included), {refused} refused by both (Fabric: {filtered} by its message \
         filters, {} after them, silently); both presets of ours alike",
        rows.len(),
        refused - filtered
    ))
}

fn is_refusal(result: &Result<(), EventError>, want: fn(&ResponseError) -> bool) -> bool {
    matches!(result, Err(EventError::Response(e)) if want(e))
}

/// Fabric-made responses our requester never asked for: each refused, with
/// the right reason, and the catch-up completes afterwards from the honest
/// answers alone.
fn refuses_unsolicited(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 40;
    net.spawn(PeerSpec::new(FAB, CHANNEL, n, n, &[]), &[])?;
    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    // A Fabric peer of another channel (its own chain of that channel).
    net.spawn(PeerSpec::new(FAB2, "otherchannel", n, n, &[]), &[])?;
    let mut ae = requester(Config::default(), &[(FAB, n), (FAB1, n)])?;
    let mut held = hold(net, &mut ae, chain)?;
    let first = held
        .iter()
        .position(|(_, m)| range_of(m).is_some_and(|(s, _)| s == 1))
        .ok_or("no request for block 1")?;
    let (asked, request) = held[first].clone();
    let other = if asked == FAB { FAB1 } else { FAB };
    let (start, end) = range_of(&request).ok_or("not a request")?;
    let nonce = request.nonce;

    let mut checks = Vec::new();

    // (a) a nonce we never sent, from the peer we asked.
    let stray = answer(
        net,
        &asked,
        &wire::state_request(nonce ^ 0x5a5a, channel(), start, end),
    )?;
    let result = feed(&mut ae, &asked, &stray)?;
    if !is_refusal(&result, |e| matches!(e, ResponseError::UnknownNonce { .. })) {
        return Err(format!("a stray nonce: {result:?}"));
    }
    checks.push("stray nonce: UnknownNonce");

    // (b) our nonce, answered by a peer we did not ask it of.
    let elsewhere = answer(net, other, &request)?;
    let result = feed(&mut ae, other, &elsewhere)?;
    if !is_refusal(&result, |e| {
        matches!(e, ResponseError::UnexpectedPeer { .. })
    }) {
        return Err(format!("our nonce from {other}: {result:?}"));
    }
    checks.push("our nonce from a peer not asked: UnexpectedPeer");

    // (c) our nonce and range, from a peer of another channel.
    let mut foreign = request.clone();
    foreign.channel = Bytes::from_static(b"otherchannel");
    let foreign = answer(net, FAB2, &foreign)?;
    let result = feed(&mut ae, FAB2, &foreign)?;
    if !is_refusal(&result, |e| matches!(e, ResponseError::WrongChannel)) {
        return Err(format!("another channel: {result:?}"));
    }
    checks.push("another channel: WrongChannel");

    if ae.stats().delivered != 0 {
        return Err("a refused response delivered blocks".into());
    }

    // (d) our nonce, from the peer asked, but blocks we did not ask for.
    let shifted = answer(
        net,
        &asked,
        &wire::state_request(nonce, channel(), start + 20, end + 20),
    )?;
    let before = ae.stats().ignored.out_of_range_payloads;
    let result = feed(&mut ae, &asked, &shifted)?;
    let dropped = ae.stats().ignored.out_of_range_payloads - before;
    if result.is_err() || dropped != end - start + 1 || ae.stats().delivered != 0 {
        return Err(format!(
            "blocks outside the range: {result:?}, {dropped} dropped"
        ));
    }
    checks.push("our nonce, other blocks: all dropped as out of range");
    held.remove(first);
    // (The range is asked again once a peer is free to take it.)
    held.extend(hold(net, &mut ae, chain)?);

    // (e) the same honest response twice: the second is a duplicate.
    let (to, some) = held.first().cloned().ok_or("nothing held")?;
    let honest = answer(net, &to, &some)?;
    feed(&mut ae, &to, &honest)?.map_err(|e| format!("the honest answer was refused: {e}"))?;
    let again = feed(&mut ae, &to, &honest)?;
    if !is_refusal(&again, |e| matches!(e, ResponseError::UnknownNonce { .. })) {
        return Err(format!("a duplicate: {again:?}"));
    }
    checks.push("a duplicate: UnknownNonce");
    held.remove(0);

    let report = catch_up(net, &mut ae, chain, n, Duration::from_secs(20), held)?;
    Ok(format!(
        "{}; then caught up to {} from the honest answers ({} refused on the way)",
        checks.join(", "),
        n - 1,
        report.refused.len() as u64 + report.late
    ))
}

// ---- divergences ---------------------------------------------------------------

/// Fabric matches a response by nonce alone: blocks from a peer it never
/// asked (not even a member) are committed. Ours refuses them.
fn unasked_peer(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 30;
    net.spawn(
        PeerSpec::new(
            FAB,
            CHANNEL,
            n,
            1,
            &["-state", "-check", "100ms", "-timeout", "3s"],
        ),
        &[(US, n)],
    )?;
    let (to, nonce, start, end) = next_request(net, FAB, Duration::from_secs(5))?;
    if to != US || (start, end) != (1, 11) {
        return Err(format!("Fabric asked {to} for [{start},{end}]"));
    }
    net.deliver(FAB, "rust9", &response(chain, nonce, 1..=11, FAB))?;
    wait_commits(net, FAB, 1, 12, Duration::from_secs(2))
        .map_err(|e| format!("Fabric did not take the unasked peer's blocks: {e}"))?;

    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::default(), &[(FAB1, n)])?;
    let held = hold(net, &mut ae, chain)?;
    let (asked, request) = held.first().cloned().ok_or("we sent nothing")?;
    let envelope = answer(net, &asked, &request)?;
    let result = feed(&mut ae, "fabric9", &envelope)?;
    if !is_refusal(&result, |e| {
        matches!(e, ResponseError::UnexpectedPeer { .. })
    }) || ae.stats().delivered != 0
    {
        return Err(format!(
            "ours took a response from a peer never asked: {result:?}"
        ));
    }
    Ok(format!(
        "Fabric asked {US} for [1,11] (nonce {nonce}); rust9, never asked and not a member, answered: \
         Fabric committed 1..=11. Ours, asking {asked}, refused Fabric's answer from fabric9: UnexpectedPeer"
    ))
}

/// Fabric takes payloads outside the range it asked for, and its next
/// request starts after the highest (`prev = max + 1`), skipping the blocks
/// it asked for and never got. Ours drops them and asks again.
fn out_of_range(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 40;
    net.spawn(
        PeerSpec::new(
            FAB,
            CHANNEL,
            n,
            1,
            &["-state", "-check", "100ms", "-timeout", "3s"],
        ),
        &[(US, n)],
    )?;
    let (_, nonce, start, end) = next_request(net, FAB, Duration::from_secs(5))?;
    if (start, end) != (1, 11) {
        return Err(format!("Fabric asked [{start},{end}]"));
    }
    net.deliver(FAB, US, &response(chain, nonce, 12..=22, FAB))?;
    let (_, _, next_start, next_end) = next_request(net, FAB, Duration::from_secs(2))?;
    if next_start != 23 {
        return Err(format!(
            "Fabric's next request is [{next_start},{next_end}], not from 23"
        ));
    }
    if net
        .wait(now(), |from, ev| {
            from == FAB && matches!(ev, Ev::Committed(_))
        })?
        .is_some()
    {
        return Err("Fabric committed without block 1".into());
    }

    // Two responders: the one that sent wrong blocks is not believed to
    // hold block 1 for a while, so the range goes to the other at once.
    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    net.spawn(PeerSpec::new(FAB2, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::fabric(), &[(FAB1, n), (FAB2, n)])?;
    ae.handle(now(), Event::Tick).map_err(err)?;
    let held = hold(net, &mut ae, chain)?;
    let (asked, request) = held.first().cloned().ok_or("we sent nothing")?;
    // Fabric's own answer, under our nonce, for blocks 12..=22.
    let envelope = answer(
        net,
        &asked,
        &wire::state_request(request.nonce, channel(), 12, 22),
    )?;
    feed(&mut ae, &asked, &envelope)?.map_err(err)?;
    let stats = ae.stats();
    let again = hold(net, &mut ae, chain)?;
    let retry = again
        .iter()
        .find(|(_, m)| range_of(m).is_some_and(|(s, _)| s == 1))
        .map(|(to, _)| to.clone());
    if stats.ignored.out_of_range_payloads != 11 || stats.delivered != 0 || retry.is_none() {
        return Err(format!(
            "ours: {} dropped, {} delivered, retried: {retry:?}",
            stats.ignored.out_of_range_payloads, stats.delivered
        ));
    }
    let report = catch_up(net, &mut ae, chain, n, Duration::from_secs(20), again)?;
    Ok(format!(
        "asked [1,11], answered 12..=22: Fabric took them and asked [{next_start},{next_end}] next \
         (1..=11 skipped); ours dropped all 11, asked {} for block 1 at once, caught up to {} in \
         {:.2} s",
        retry.unwrap_or_default(),
        n - 1,
        report.elapsed.as_secs_f64()
    ))
}

/// A response with more than 2 × blockBufferSize out-of-range blocks fills
/// Fabric's buffer behind a hole: the requester blocks in `addPayload`'s
/// back-pressure loop for good, so no further request goes out and nothing
/// commits until gossip fills the hole. Ours drops them and catches up.
fn out_of_range_stall(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 100;
    net.spawn(
        PeerSpec::new(
            FAB,
            CHANNEL,
            n,
            1,
            &["-state", "-check", "100ms", "-timeout", "300ms"],
        ),
        &[(US, n)],
    )?;
    let (_, nonce, start, end) = next_request(net, FAB, Duration::from_secs(5))?;
    if (start, end) != (1, 11) {
        return Err(format!("Fabric asked [{start},{end}]"));
    }
    // 50 valid blocks, none of them asked for.
    let flood = 12..=61;
    net.deliver(FAB, US, &response(chain, nonce, flood.clone(), FAB))?;

    // Rounds every 100 ms and a 300 ms timeout: a live requester would
    // ask several times in 3 s. Anything it asks is answered honestly.
    let mut ours = StateResponder::new(Config::default(), channel(), n).map_err(err)?;
    let watch = now() + Duration::from_secs(3);
    let mut asked_after = 0;
    while let Some((from, ev)) = net.next(watch)? {
        match ev {
            Ev::Send { to, envelope } => {
                asked_after += 1;
                let (_, payload) = open(&envelope)?;
                serve(net, &mut ours, chain, &from, &to, payload)?;
            }
            Ev::Committed(seq) => return Err(format!("Fabric committed {seq}: not stalled")),
            _ => {}
        }
    }
    if asked_after > 0 {
        return Err(format!(
            "Fabric asked {asked_after} more times: not stalled"
        ));
    }
    let stacks = net.stacks(FAB)?;
    let stuck = stacks
        .split("\n\n")
        .find(|g| g.contains("addPayload") && g.contains("requestBlocksInRange"));
    let Some(goroutine) = stuck else {
        return Err("no goroutine waits in addPayload under requestBlocksInRange".into());
    };
    if !goroutine.contains("time.Sleep") {
        return Err("the requester goroutine is not in addPayload's back-pressure sleep".into());
    }
    // Its frames, innermost first, without arguments and file lines.
    let frames: Vec<&str> = goroutine
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with('\t') && !line.starts_with("created by"))
        .filter_map(|line| line.rfind('(').map(|at| &line[..at]))
        .filter_map(|function| function.rsplit('.').next())
        .collect();
    // Blocks 1..=11 by gossip fill the hole: then everything commits.
    for seq in 1..=11 {
        let data = GossipMessage {
            nonce: 0,
            channel: channel(),
            tag: Tag::ChanAndOrg as i32,
            content: Some(Content::DataMsg(DataMessage {
                payload: Some(chain.payload_for(seq, FAB)),
            })),
        };
        net.gossip(FAB, &data)?;
    }
    let deadline = now() + Duration::from_secs(15);
    let mut next = 1;
    while next < n {
        match net.next(deadline)? {
            Some((from, Ev::Send { to, envelope })) => {
                let (_, payload) = open(&envelope)?;
                serve(net, &mut ours, chain, &from, &to, payload)?;
            }
            Some((_, Ev::Committed(seq))) if seq == next => next += 1,
            Some((_, Ev::Committed(seq))) => {
                return Err(format!("Fabric committed {seq}, expected {next}"))
            }
            Some(_) => {}
            None => return Err(format!("after gossip, Fabric stuck at {next}")),
        }
    }

    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    net.spawn(PeerSpec::new(FAB2, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::fabric(), &[(FAB1, n), (FAB2, n)])?;
    ae.handle(now(), Event::Tick).map_err(err)?;
    let held = hold(net, &mut ae, chain)?;
    let (asked, request) = held.first().cloned().ok_or("we sent nothing")?;
    let bad = response(chain, request.nonce, flood.clone(), US);
    ae.handle(
        now(),
        Event::Response {
            from: asked,
            message: bad,
        },
    )
    .map_err(err)?;
    let dropped = ae.stats().ignored.out_of_range_payloads;
    let report = catch_up(net, &mut ae, chain, n, Duration::from_secs(20), Vec::new())?;
    if dropped != 50 {
        return Err(format!("ours dropped {dropped} of the 50"));
    }
    Ok(format!(
        "Fabric asked [1,11] and got blocks 12..=61: no request and no commit for 3 s, its \
         requester goroutine asleep in addPayload's back-pressure loop (buffer > 40 behind block \
         1): {}; gossiping 1..=11 unblocked it. Ours dropped the 50 and caught up to {} in {:.2} s",
        frames.join(" < "),
        n - 1,
        report.elapsed.as_secs_f64()
    ))
}

/// Fabric reuses one nonce per batch and re-sends at once when a response
/// with another nonce arrives; four such strays abandon the round. Ours
/// ignores them: no re-send, no retry spent.
fn stray_responses(chain: &Chain, net: &mut Net) -> Result<String, String> {
    let n = 30;
    net.spawn(
        PeerSpec::new(
            FAB,
            CHANNEL,
            n,
            1,
            &["-state", "-check", "1s", "-timeout", "5s"],
        ),
        &[(US, n)],
    )?;
    let mut sends = Vec::new();
    let first = next_request(net, FAB, Duration::from_secs(5))?;
    sends.push((now(), first.clone()));
    for i in 1..=4u64 {
        let (_, nonce, start, end) = sends.last().map(|s| s.1.clone()).ok_or("no send")?;
        net.deliver(
            FAB,
            US,
            &response(chain, nonce.wrapping_add(i), start..=end, FAB),
        )?;
        if i < 4 {
            let request = next_request(net, FAB, Duration::from_secs(1))
                .map_err(|e| format!("no re-send after stray {i}: {e}"))?;
            sends.push((now(), request));
        }
    }
    let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if sends.iter().any(|(_, s)| s.1 != first.1) || gaps.iter().any(|g| *g > Duration::from_secs(1))
    {
        return Err(format!("Fabric's sends: {sends:?}"));
    }
    // The round is abandoned: the next request comes with the next round
    // (check 1 s), under a new nonce, not after the 5 s timeout.
    let quiet = net.wait(now() + Duration::from_millis(600), |from, ev| {
        from == FAB && matches!(ev, Ev::Send { .. })
    })?;
    if quiet.is_some() {
        return Err("Fabric asked again within 600 ms: the round was not abandoned".into());
    }
    let (_, new_nonce, ..) = next_request(net, FAB, Duration::from_secs(3))?;
    if new_nonce == first.1 {
        return Err("the next round reused the nonce".into());
    }

    net.spawn(PeerSpec::new(FAB1, CHANNEL, n, n, &[]), &[])?;
    let mut ae = requester(Config::fabric(), &[(FAB1, n)])?;
    ae.handle(now(), Event::Tick).map_err(err)?;
    let held = hold(net, &mut ae, chain)?;
    let (asked, request) = held.first().cloned().ok_or("we sent nothing")?;
    let (start, end) = range_of(&request).ok_or("not a request")?;
    for i in 1..=4u64 {
        let stray = wire::state_request(request.nonce.wrapping_add(i), channel(), start, end);
        let envelope = answer(net, &asked, &stray)?;
        let result = feed(&mut ae, &asked, &envelope)?;
        if !is_refusal(&result, |e| matches!(e, ResponseError::UnknownNonce { .. })) {
            return Err(format!("stray {i}: {result:?}"));
        }
    }
    let resent = hold(net, &mut ae, chain)?;
    let stats = ae.stats();
    if !resent.is_empty() || stats.retries != 0 || stats.requests != 1 {
        return Err(format!(
            "ours re-sent {} times, {} retries",
            resent.len(),
            stats.retries
        ));
    }
    let report = catch_up(
        net,
        &mut ae,
        chain,
        12,
        Duration::from_secs(10),
        vec![(asked, request)],
    )?;
    Ok(format!(
        "4 stray responses: Fabric re-sent nonce {} at once each time (gaps {gaps:?}) and \
         abandoned the round, asking again a round later; ours ignored all 4 (UnknownNonce, no \
         re-send, no retry) and took the real answer ({} blocks)",
        first.1,
        report.blocks_from.values().sum::<u64>()
    ))
}

/// Fabric's validator computes `start + batchSize`, which wraps near
/// u64::MAX: it refuses valid 11-block ranges there. Ours answers them
/// (empty: we have no such blocks). Both agree up to `[MAX-10, MAX]`.
fn validator_overflow(chain: &Chain, net: &mut Net) -> Result<String, String> {
    use Expect::*;
    let max = u64::MAX;
    let rows: Vec<(&str, u64, Bytes, Expect, Expect)> = vec![
        (
            "[MAX-10, MAX]",
            201,
            request_bytes(201, max - 10, max),
            Empty,
            Empty,
        ),
        (
            "[MAX-9, MAX]",
            202,
            request_bytes(202, max - 9, max),
            Refuse,
            Empty,
        ),
        (
            "[MAX-5, MAX-2]",
            203,
            request_bytes(203, max - 5, max - 2),
            Refuse,
            Empty,
        ),
        (
            "[MAX, MAX]",
            204,
            request_bytes(204, max, max),
            Refuse,
            Empty,
        ),
    ];
    compare_responders(chain, net, &rows)?;
    Ok(
        "[MAX-10, MAX] answered (empty) by both; [MAX-9, MAX], [MAX-5, MAX-2], [MAX, MAX]: \
         Fabric silent (start + batchSize wraps), ours an empty response"
            .into(),
    )
}

//! The runtime adapters drive an `AntiEntropy` and a `StateResponder` that
//! talk over in-process channels (each message through the wire format),
//! until the requester has caught up 500 blocks: under tokio in virtual time,
//! under smol in real time. The scenarios are written once, generic over the
//! runtime; only the delivery of a message and the test's own timer differ.
//! Then the driver's handle: stats, shutdown, raw bytes, refusals naming the
//! peer, weak handles.
#![cfg(any(feature = "tokio", feature = "smol"))]

mod common;

use std::error::Error;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use antientropy::adapters::{
    inbox, BlockStore, Driver, DriverStats, Host, Ledger, Machine, RequesterHost, ResponderHost,
    Runtime, SendError, Transport, Verdict, WeakDriverHandle,
};
use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{
    payload_size, wire, AntiEntropy, Config, Event, GiveUpReason, Origin, PeerState, PeerStats,
    ResponderEvent, ResponderStats, SeqRange, StateResponder, Stats, Ticket,
};
use prost::Message;

type Id = &'static str;
const REQUESTER: Id = "requester";
const RESPONDER: Id = "responder";
/// The requester holds block 0; the responder 0..=500.
const HEIGHT: u64 = 501;
const INBOX: usize = 256;

// --- what differs between runtimes ------------------------------------------------

/// The runtime-specific part of the tests: how a message crosses the
/// in-process "network" into the other driver's inbox.
trait TestRuntime: Runtime + Sized {
    /// Sends without blocking; after `latency` where the runtime can (tokio).
    fn deliver<M>(
        to: &WeakDriverHandle<M, Self>,
        input: M::Input,
        latency: Duration,
    ) -> Result<(), SendError>
    where
        M: Machine + Send + 'static,
        M::Input: Send + 'static,
        M::Peer: Send + 'static;
}

#[cfg(feature = "tokio")]
impl TestRuntime for antientropy::adapters::tokio::Tokio {
    fn deliver<M>(
        to: &WeakDriverHandle<M, Self>,
        input: M::Input,
        latency: Duration,
    ) -> Result<(), SendError>
    where
        M: Machine + Send + 'static,
        M::Input: Send + 'static,
        M::Peer: Send + 'static,
    {
        if !latency.is_zero() {
            // A link with a delay: virtual under paused time.
            let to = to.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let _ = to.try_send(input);
            });
            return Ok(());
        }
        to.try_send(input)
    }
}

#[cfg(feature = "smol")]
impl TestRuntime for antientropy::adapters::smol::Smol {
    fn deliver<M>(
        to: &WeakDriverHandle<M, Self>,
        input: M::Input,
        _latency: Duration,
    ) -> Result<(), SendError>
    where
        M: Machine + Send + 'static,
        M::Input: Send + 'static,
        M::Peer: Send + 'static,
    {
        to.try_send(input)
    }
}

// --- the hosts ---------------------------------------------------------------------

/// A one-peer link: every message is wrapped in an `Envelope`, encoded,
/// decoded and unwrapped, then put in the other machine's inbox through a
/// weak handle (a link must not keep the other driver alive).
struct Link<R: TestRuntime, M: Machine> {
    from: Id,
    to: Id,
    driver: WeakDriverHandle<M, R>,
    wrap: fn(Id, GossipMessage) -> M::Input,
    latency: Duration,
}

impl<R, M> Transport<Id> for Link<R, M>
where
    R: TestRuntime,
    M: Machine + Send + 'static,
    M::Input: Send + 'static,
    M::Peer: Send + 'static,
{
    fn send(&mut self, to: &Id, message: GossipMessage) -> Result<(), SendError> {
        if *to != self.to {
            return Err(SendError::Closed);
        }
        let bytes = wire::wrap_envelope(&message).encode_to_vec();
        let envelope = wire::decode_envelope(bytes.into(), wire::DEFAULT_MAX_MESSAGE_SIZE)
            .expect("an envelope");
        let message = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE)
            .expect("a gossip message");
        R::deliver(&self.driver, (self.wrap)(self.from, message), self.latency)
    }
}

/// A transport to nowhere: a silent peer.
struct Void;

impl Transport<Id> for Void {
    fn send(&mut self, _: &Id, _: GossipMessage) -> Result<(), SendError> {
        Ok(())
    }
}

/// Records what it sends and every refusal the host forwards, by peer.
#[derive(Default)]
struct Recording {
    sent: Vec<(Id, GossipMessage)>,
    refused: Vec<(Id, String)>,
}

impl Transport<Id> for Recording {
    fn send(&mut self, to: &Id, message: GossipMessage) -> Result<(), SendError> {
        self.sent.push((*to, message));
        Ok(())
    }

    fn refused(&mut self, peer: &Id, error: &(dyn Error + 'static)) {
        self.refused.push((*peer, error.to_string()));
    }
}

/// The requester's ledger: commits a block if it is the next one, carries
/// that number and came from the responder; may fail one block's
/// verification once (`reject_once`).
#[derive(Debug, Default)]
struct Chain {
    height: u64,
    rejected: u64,
    give_ups: Vec<(SeqRange, GiveUpReason)>,
    reject_once: Option<u64>,
    /// Every block number handed over, in order.
    seen: Vec<u64>,
    /// A second peer whose blocks count as the responder's.
    second_source: Option<Id>,
}

impl Ledger<Id> for Chain {
    fn add_payload(&mut self, payload: Payload, from: Origin<Id>) -> Verdict {
        self.seen.push(payload.seq_num);
        if self.reject_once == Some(payload.seq_num) {
            self.reject_once = None;
            self.rejected += 1;
            return Verdict::Rejected;
        }
        let ok = payload.seq_num == self.height
            && wire::block_number(&payload.data) == Ok(payload.seq_num)
            && (from == Origin::Peer(RESPONDER)
                || self
                    .second_source
                    .is_some_and(|id| from == Origin::Peer(id)));
        if ok {
            self.height += 1;
            Verdict::Committed
        } else {
            self.rejected += 1;
            Verdict::Rejected
        }
    }

    fn give_up(&mut self, range: SeqRange, reason: GiveUpReason) {
        self.give_ups.push((range, reason));
    }
}

/// The responder's ledger: blocks `0..height`, read at once.
struct Store {
    height: u64,
}

impl BlockStore<Id> for Store {
    fn read_blocks(
        &mut self,
        _: Ticket,
        _: &Id,
        range: SeqRange,
        max_bytes: usize,
    ) -> Option<Vec<Payload>> {
        let mut payloads = Vec::new();
        let mut bytes = 0;
        for seq in range.start()..=range.end().min(self.height - 1) {
            let payload = common::payload(seq);
            bytes += payload_size(&payload);
            if !payloads.is_empty() && bytes > max_bytes {
                break;
            }
            payloads.push(payload);
        }
        Some(payloads)
    }
}

type ReqHost<R> = RequesterHost<Link<R, StateResponder<Id>>, Chain>;
type RespHost<R> = ResponderHost<Link<R, AntiEntropy<Id>>, Store>;
type ReqDriver<R> = Driver<AntiEntropy<Id>, ReqHost<R>, R>;
type RespDriver<R> = Driver<StateResponder<Id>, RespHost<R>, R>;

// --- the scenarios -----------------------------------------------------------------

/// Polls both drivers from one task until `done`, failing if `limit` (the
/// runtime's time) passes first; the guard uses the adapter's own timer.
async fn drive_until<R, M1, H1, M2, H2>(
    a: &mut Driver<M1, H1, R>,
    b: &mut Driver<M2, H2, R>,
    limit: Duration,
    done: impl Fn(&Driver<M1, H1, R>) -> bool,
) where
    R: Runtime,
    M1: Machine,
    H1: Host<M1>,
    M2: Machine,
    H2: Host<M2>,
{
    let mut guard = R::timer();
    R::reset(&mut guard, R::now() + limit);
    poll_fn(|cx| {
        assert!(a.poll_drive(cx).is_pending(), "inbox closed");
        assert!(b.poll_drive(cx).is_pending(), "inbox closed");
        if done(a) {
            return Poll::Ready(());
        }
        assert!(R::poll_timer(&mut guard, cx).is_pending(), "stalled");
        Poll::Pending
    })
    .await
}

#[derive(Debug, PartialEq)]
struct Outcome {
    elapsed: Duration,
    requester: Stats,
    responder_peer: PeerStats,
    responder: ResponderStats,
    requester_driver: DriverStats,
    responder_driver: DriverStats,
}

/// The catch-up: a requester at height 1 and a responder at 501.
async fn catch_up<R: TestRuntime>(seed: u64, latency: Duration) -> Outcome {
    catch_up_rejecting::<R>(seed, latency, None).await
}

/// [`catch_up`], with the ledger failing block `reject`'s verification once.
async fn catch_up_rejecting<R: TestRuntime>(
    seed: u64,
    latency: Duration,
    reject: Option<u64>,
) -> Outcome {
    let start = R::now();
    // The inboxes first: each host links to the other driver.
    let (req_handle, req_inbox) = inbox::<AntiEntropy<Id>, R>(INBOX);
    let (resp_handle, resp_inbox) = inbox::<StateResponder<Id>, R>(INBOX);

    let requester = AntiEntropy::new(Config::default(), common::channel(), 1, seed, start).unwrap();
    let to_responder = Link::<R, _> {
        from: REQUESTER,
        to: RESPONDER,
        driver: resp_handle.downgrade(),
        wrap: |from, message| ResponderEvent::Request { from, message },
        latency,
    };
    let chain = Chain {
        height: 1,
        reject_once: reject,
        ..Chain::default()
    };
    let mut req: ReqDriver<R> = Driver::new(
        requester,
        RequesterHost::new(to_responder, chain),
        req_inbox,
    );

    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let to_requester = Link::<R, _> {
        from: RESPONDER,
        to: REQUESTER,
        driver: req_handle.downgrade(),
        wrap: |from, message| Event::Response { from, message },
        latency,
    };
    let store = Store { height: HEIGHT };
    let mut resp: RespDriver<R> = Driver::new(
        responder,
        ResponderHost::new(to_requester, store),
        resp_inbox,
    );

    // The host's membership view: the one peer, ahead of us.
    req_handle
        .try_send(Event::Membership(vec![PeerState::new(RESPONDER, HEIGHT)]))
        .unwrap();

    drive_until(&mut req, &mut resp, Duration::from_secs(30), |req| {
        // Committed by the host and acknowledged to the machine.
        req.with_machine(|m| m.stats().committed) == HEIGHT
    })
    .await;

    let elapsed = R::now() - start;
    let ledger = &req.host().ledger;
    assert_eq!(ledger.height, HEIGHT);
    assert_eq!(ledger.rejected, u64::from(reject.is_some()));
    // Every block once, in order; after a rejection, the same block again
    // and nothing behind it in between (the driver feeds the verdict back
    // before the next delivery).
    let mut expected: Vec<u64> = (1..HEIGHT).collect();
    if let Some(seq) = reject {
        expected.insert(expected.iter().position(|&s| s == seq).unwrap(), seq);
    }
    assert_eq!(ledger.seen, expected);
    assert!(ledger.give_ups.is_empty(), "{:?}", ledger.give_ups);
    assert_eq!(req.host().dropped_sends, 0);
    assert_eq!(resp.host().dropped_sends, 0);

    // The handles read what the drivers hold.
    let requester = req_handle.stats().unwrap();
    assert_eq!(requester, req.with_machine(|m| m.stats()));
    // The rejected block was handed over twice.
    assert_eq!(
        requester.delivered,
        HEIGHT - 1 + u64::from(reject.is_some())
    );
    assert_eq!(requester.committed, HEIGHT);
    assert_eq!(requester.timeouts, 0);
    let responder = resp_handle.stats().unwrap();
    assert!(responder.blocks_served >= HEIGHT - 1);
    assert_eq!(responder.refused(), 0);
    // Every verdict (commits and the rejection) came back as feedback.
    assert_eq!(
        req.stats().feedback,
        HEIGHT - 1 + u64::from(reject.is_some())
    );
    assert_eq!(req_handle.driver_stats(), Some(req.stats()));
    assert_eq!(req.stats().refused, 0);
    assert_eq!(resp.stats().refused, 0);
    println!(
        "caught up {} blocks in {elapsed:?} (runtime time): {} requests, requester driver {:?}",
        HEIGHT - 1,
        requester.requests,
        req.stats()
    );
    Outcome {
        elapsed,
        requester,
        responder_peer: req.with_machine(|m| m.peer_stats(&RESPONDER)).unwrap(),
        responder,
        requester_driver: req.stats(),
        responder_driver: resp.stats(),
    }
}

/// A requester whose only peer never answers: only the timer can move it,
/// through retries to a give-up.
async fn silent_peer<R: TestRuntime>(
    config: Config,
    limit: Duration,
) -> (Duration, DriverStats, Vec<(SeqRange, GiveUpReason)>) {
    let start = R::now();
    let (handle, req_inbox) = inbox::<AntiEntropy<Id>, R>(INBOX);
    let requester = AntiEntropy::new(config, common::channel(), 1, 3, start).unwrap();
    let chain = Chain {
        height: 1,
        ..Chain::default()
    };
    let mut req: Driver<_, _, R> =
        Driver::new(requester, RequesterHost::new(Void, chain), req_inbox);
    handle
        .try_send(Event::Membership(vec![PeerState::new("silent", HEIGHT)]))
        .unwrap();

    let mut guard = R::timer();
    R::reset(&mut guard, start + limit);
    poll_fn(|cx| {
        assert!(req.poll_drive(cx).is_pending());
        if !req.host().ledger.give_ups.is_empty() {
            return Poll::Ready(());
        }
        assert!(R::poll_timer(&mut guard, cx).is_pending(), "no give-up");
        Poll::Pending
    })
    .await;

    let elapsed = R::now() - start;
    let stats = req.stats();
    assert!(req.with_machine(|m| m.stats().timeouts) > 0);
    assert!(stats.timeouts > 0, "{stats:?}");
    // The timer is re-armed only when the deadline changed, and the
    // deadline changes only when the machine handled something.
    let steps = stats.inputs + stats.feedback + stats.timeouts;
    assert!(stats.timer_resets <= steps + 1, "{stats:?}");
    drop(handle);
    let (_, host) = req.into_parts();
    (elapsed, stats, host.ledger.give_ups)
}

/// A responder fed more requests than its budget: the driver yields between
/// batches, answers all of them in order, and ends once its last handle is
/// dropped.
async fn budget_and_close<R: TestRuntime>() {
    const REQUESTS: u64 = 20;
    let (handle, resp_inbox) = inbox::<StateResponder<Id>, R>(INBOX);
    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let mut driver: Driver<_, _, R> = Driver::new(
        responder,
        ResponderHost::new(Recording::default(), Store { height: HEIGHT }),
        resp_inbox,
    )
    .with_budget(4);
    for nonce in 0..REQUESTS {
        let message = wire::state_request(nonce, common::channel(), nonce, nonce + 5);
        handle
            .try_send(ResponderEvent::Request {
                from: REQUESTER,
                message,
            })
            .unwrap();
    }
    drop(handle);
    poll_fn(|cx| driver.poll_drive(cx)).await;

    let stats = driver.stats();
    assert_eq!(stats.inputs, REQUESTS);
    // Each request's read came back as feedback, handled in the same step
    // (outside the budget, which counts inbox inputs).
    assert_eq!(stats.feedback, REQUESTS);
    assert!(stats.yields >= REQUESTS / 4 - 1, "{stats:?}");
    assert!(stats.wakeups > stats.yields, "{stats:?}");
    let (responder, host) = driver.into_parts();
    assert_eq!(responder.stats().responses, REQUESTS);
    assert_eq!(host.dropped_sends, 0);
    let nonces: Vec<u64> = host.transport.sent.iter().map(|(_, m)| m.nonce).collect();
    assert_eq!(nonces, (0..REQUESTS).collect::<Vec<_>>());
}

/// Bytes from peers through the handle: garbage reaches the machine's
/// `malformed` counter, and every refusal reaches the host with the peer
/// that sent it; a valid envelope is handled like the message in it.
async fn raw_bytes_and_refusals<R: TestRuntime>() {
    let garbage = bytes::Bytes::from_static(b"\x0a\xff\xff\xff\xff\x0f");
    let envelope = |message: GossipMessage| wire::wrap_envelope(&message).encode_to_vec().into();

    // The requester: garbage from mallory, a response nobody asked for
    // from eve.
    let (handle, req_inbox) = inbox::<AntiEntropy<Id>, R>(INBOX);
    let requester = AntiEntropy::new(Config::default(), common::channel(), 1, 1, R::now()).unwrap();
    let mut req: Driver<_, _, R> = Driver::new(
        requester,
        RequesterHost::new(Recording::default(), Chain::default()),
        req_inbox,
    );
    handle.try_send_bytes("mallory", garbage.clone()).unwrap();
    let stray = wire::state_response(99, common::channel(), vec![common::payload(1)]);
    handle.try_send_bytes("eve", envelope(stray)).unwrap();
    drop(handle);
    poll_fn(|cx| req.poll_drive(cx)).await;
    assert_eq!(req.stats().bytes_inputs, 2);
    assert_eq!(req.stats().refused, 2);
    let (requester, host) = req.into_parts();
    assert_eq!(requester.stats().ignored.malformed, 1);
    assert_eq!(requester.stats().ignored.unknown_nonce, 1);
    let refused: Vec<Id> = host
        .transport
        .refused
        .iter()
        .map(|(peer, _)| *peer)
        .collect();
    assert_eq!(refused, ["mallory", "eve"], "{:?}", host.transport.refused);
    assert!(host.transport.refused[1].1.contains("nonce 99"));

    // The responder: garbage from mallory, a request from alice.
    let (handle, resp_inbox) = inbox::<StateResponder<Id>, R>(INBOX);
    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let mut resp: Driver<_, _, R> = Driver::new(
        responder,
        ResponderHost::new(Recording::default(), Store { height: HEIGHT }),
        resp_inbox,
    );
    handle.try_send_bytes("mallory", garbage).unwrap();
    let request = wire::state_request(5, common::channel(), 1, 3);
    handle.try_send_bytes("alice", envelope(request)).unwrap();
    drop(handle);
    poll_fn(|cx| resp.poll_drive(cx)).await;
    let (responder, host) = resp.into_parts();
    assert_eq!(responder.stats().malformed, 1);
    assert_eq!(responder.stats().responses, 1);
    assert_eq!(host.transport.refused.len(), 1);
    assert_eq!(host.transport.refused[0].0, "mallory");
    assert!(host.transport.refused[0].1.starts_with("malformed"));
    assert_eq!(host.transport.sent.len(), 1);
    assert_eq!(host.transport.sent[0].0, "alice");
}

/// Reads nothing at once; `pending` holds the reads to answer later, which
/// it would answer through `driver`.
struct Later<R: Runtime> {
    driver: WeakDriverHandle<StateResponder<Id>, R>,
    pending: Arc<Mutex<Vec<(Ticket, SeqRange)>>>,
}

impl<R: Runtime> BlockStore<Id> for Later<R> {
    fn read_blocks(
        &mut self,
        ticket: Ticket,
        _: &Id,
        range: SeqRange,
        _: usize,
    ) -> Option<Vec<Payload>> {
        self.pending.lock().unwrap().push((ticket, range));
        None
    }
}

/// A host that answers later holds a weak handle of its own driver: the
/// driver still ends once the last strong handle is dropped, and a read
/// completed through the weak handle before that is answered.
async fn a_weak_handle_does_not_keep_the_driver_alive<R: TestRuntime>() {
    let (handle, resp_inbox) = inbox::<StateResponder<Id>, R>(INBOX);
    let pending = Arc::new(Mutex::new(Vec::new()));
    let store = Later::<R> {
        driver: handle.downgrade(),
        pending: Arc::clone(&pending),
    };
    let weak = store.driver.clone();
    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let mut driver: Driver<_, _, R> = Driver::new(
        responder,
        ResponderHost::new(Recording::default(), store),
        resp_inbox,
    );
    let request = wire::state_request(1, common::channel(), 1, 2);
    handle
        .try_send(ResponderEvent::Request {
            from: REQUESTER,
            message: request,
        })
        .unwrap();
    poll_fn(|cx| {
        assert!(driver.poll_drive(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    let (ticket, range) = pending.lock().unwrap().pop().expect("a read");
    // The read completes later, through the weak handle.
    let payloads = (range.start()..=range.end()).map(common::payload).collect();
    weak.try_send(ResponderEvent::BlocksRead { ticket, payloads })
        .unwrap();
    assert_eq!(weak.stats().unwrap().responses, 0, "not handled yet");
    drop(handle);
    // Only weak handles are left (the host's and ours): the driver ends.
    poll_fn(|cx| driver.poll_drive(cx)).await;
    assert!(weak.upgrade().is_none());
    assert_eq!(
        weak.try_send(ResponderEvent::Height(1)),
        Err(SendError::Closed)
    );
    let (responder, host) = driver.into_parts();
    assert_eq!(responder.stats().responses, 1);
    assert_eq!(host.transport.sent.len(), 1);
    assert!(weak.stats().is_none(), "the machine was handed out");
}

// --- tokio: virtual time -------------------------------------------------------------

#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;
    use antientropy::adapters::tokio::Tokio;

    #[tokio::test(start_paused = true)]
    async fn catches_up_500_blocks_in_virtual_time() {
        let latency = Duration::from_millis(25);
        let outcome = catch_up::<Tokio>(7, latency).await;
        // Several round trips of virtual time, and no timeout: the
        // adaptive deadlines follow the link's 50 ms round trip.
        assert!(outcome.elapsed >= 2 * latency, "{outcome:?}");
        assert!(outcome.elapsed < Duration::from_secs(2), "{outcome:?}");
        let srtt = outcome.responder_peer.srtt.unwrap();
        assert!(srtt >= 2 * latency, "{srtt:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn catches_up_500_blocks_without_latency() {
        catch_up::<Tokio>(1, Duration::ZERO).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_block_is_delivered_again_before_any_later_one() {
        let outcome = catch_up_rejecting::<Tokio>(3, Duration::from_millis(5), Some(123)).await;
        assert_eq!(outcome.requester.rejected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_run() {
        let latency = Duration::from_millis(10);
        let first = catch_up::<Tokio>(42, latency).await;
        let second = catch_up::<Tokio>(42, latency).await;
        assert_eq!(first, second);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_drives_retries_to_a_give_up() {
        // Fabric's timers: the first round after 10 s, then four sends of
        // 3 s each: 22 s of virtual time.
        let (elapsed, stats, give_ups) =
            silent_peer::<Tokio>(Config::fabric(), Duration::from_secs(120)).await;
        assert_eq!(elapsed, Duration::from_secs(22));
        assert_eq!(
            give_ups[0],
            (
                SeqRange::new(1, 11).unwrap(),
                GiveUpReason::RetriesExhausted { sends: 4 }
            )
        );
        // The round timer, then one deadline per send.
        assert_eq!(stats.timeouts, 5, "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn yields_at_the_budget_and_ends_when_the_handles_are_dropped() {
        budget_and_close::<Tokio>().await;
    }

    /// Two peers; the first flight is answered at once (they are
    /// measured), then the host stalls 3 s with the next requests out;
    /// their answers wait in the inbox behind a budget of one input per
    /// wake-up. The driver hands them all in before the due timer (the
    /// machine asks so after a stall), so no send times out; before, the
    /// `Timeout` after the first answer timed out the other peer's sends,
    /// whose answers were queued.
    #[tokio::test(start_paused = true)]
    async fn answers_queued_over_a_host_stall_go_in_before_the_timer() {
        let start = Tokio::now();
        let (handle, req_inbox) = inbox::<AntiEntropy<Id>, Tokio>(INBOX);
        let requester =
            AntiEntropy::new(Config::default(), common::channel(), 1, 3, start).unwrap();
        const SECOND: Id = "second";
        let chain = Chain {
            height: 1,
            second_source: Some(SECOND),
            ..Chain::default()
        };
        let mut driver: Driver<_, _, Tokio> = Driver::new(
            requester,
            RequesterHost::new(Recording::default(), chain),
            req_inbox,
        )
        .with_budget(1);
        let view = [RESPONDER, SECOND].map(|id| PeerState::new(id, HEIGHT));
        handle.try_send(Event::Membership(view.into())).unwrap();
        let mut answered = 0;
        let mut asked = Vec::new();
        for stall in [Duration::ZERO, Duration::from_secs(3)] {
            for _ in 0..64 {
                poll_fn(|cx| {
                    let _ = driver.poll_drive(cx);
                    Poll::Ready(())
                })
                .await;
            }
            let sent = &mut driver.host_mut().transport.sent;
            asked = sent
                .drain(..)
                .map(|(to, message)| (to, common::request_of(&message)))
                .collect();
            assert!(asked.iter().any(|a| a.0 == SECOND), "{asked:?}");
            tokio::time::advance(stall).await;
            for &(from, (nonce, first, last)) in &asked {
                let payloads = (first..=last).map(common::payload).collect();
                let message = wire::state_response(nonce, common::channel(), payloads);
                handle.try_send(Event::Response { from, message }).unwrap();
            }
            answered += asked.len();
        }
        for _ in 0..4 * asked.len() {
            poll_fn(|cx| {
                let _ = driver.poll_drive(cx);
                Poll::Ready(())
            })
            .await;
        }
        let stats = driver.with_machine(|m| m.stats());
        assert_eq!(stats.responses as usize, answered, "{stats:?}");
        assert_eq!((stats.timeouts, stats.host_stalls), (0, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn raw_bytes_are_counted_and_refusals_name_the_peer() {
        raw_bytes_and_refusals::<Tokio>().await;
    }

    #[tokio::test]
    async fn a_weak_handle_in_the_host_does_not_keep_the_driver_alive() {
        a_weak_handle_does_not_keep_the_driver_alive::<Tokio>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawned_driver_is_read_through_its_handle_and_shut_down() {
        let requester =
            AntiEntropy::<Id>::new(Config::default(), common::channel(), 1, 5, Tokio::now())
                .unwrap();
        let host = RequesterHost::new(Recording::default(), Chain::default());
        let (handle, driver) = antientropy::adapters::tokio::driver(requester, host, 8);
        let task = tokio::spawn(driver);
        handle
            .send(Event::Membership(vec![PeerState::new("peer", 100)]))
            .await
            .unwrap();
        // A handle kept elsewhere does not stop the shutdown.
        let other = handle.clone();
        while handle.stats().unwrap().requests == 0 {
            tokio::task::yield_now().await;
        }
        let in_flight = handle
            .with_machine(|m| m.peer_stats(&"peer").unwrap().in_flight)
            .unwrap();
        assert!(in_flight > 0);
        let sent = handle.stats().unwrap().requests;
        handle.shutdown().await.unwrap();
        let (requester, host) = task.await.unwrap();
        assert_eq!(requester.stats().requests, sent);
        assert_eq!(host.transport.sent.len() as u64, sent);
        // The driver has ended: its handles say so.
        assert!(other.stats().is_none());
        assert_eq!(other.send(Event::Tick).await, Err(SendError::Closed));
        assert_eq!(other.shutdown().await, Err(SendError::Closed));
    }

    #[tokio::test]
    async fn the_driver_spawns_and_ends_when_its_handles_are_dropped() {
        let (handle, driver) = antientropy::adapters::tokio::driver(
            StateResponder::<Id>::new(Config::default(), common::channel(), HEIGHT).unwrap(),
            ResponderHost::new(Void, Store { height: HEIGHT }),
            4,
        );
        let task = tokio::spawn(driver);
        handle
            .send(ResponderEvent::Height(HEIGHT + 1))
            .await
            .unwrap();
        drop(handle);
        let (responder, _) = task.await.unwrap();
        assert_eq!(responder.height(), HEIGHT + 1);
    }
}

// --- smol: real time -----------------------------------------------------------------

#[cfg(feature = "smol")]
mod on_smol {
    use super::*;
    use antientropy::adapters::smol::Smol;

    /// Short deadlines, so that a real-time run gives up within a second.
    fn quick_config() -> Config {
        let mut config = Config::default();
        config.response_timeout = Duration::from_millis(40);
        config.min_response_timeout = Duration::from_millis(20);
        config.max_response_timeout = Duration::from_millis(80);
        config.max_retries = 2;
        config.hedge_after = None;
        config
    }

    #[test]
    fn catches_up_500_blocks_in_real_time() {
        // Real time: what is checked is the catch-up (inside `catch_up`),
        // not how long it took.
        async_io::block_on(catch_up::<Smol>(7, Duration::ZERO));
    }

    #[test]
    fn the_timer_drives_retries_to_a_give_up() {
        let (elapsed, _, give_ups) =
            async_io::block_on(silent_peer::<Smol>(quick_config(), Duration::from_secs(5)));
        // The silent peer's sends time out until the retries run out.
        assert!(!give_ups.is_empty());
        assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
    }

    #[test]
    fn yields_at_the_budget_and_ends_when_the_handles_are_dropped() {
        async_io::block_on(budget_and_close::<Smol>());
    }

    #[test]
    fn raw_bytes_are_counted_and_refusals_name_the_peer() {
        async_io::block_on(raw_bytes_and_refusals::<Smol>());
    }

    #[test]
    fn a_weak_handle_in_the_host_does_not_keep_the_driver_alive() {
        async_io::block_on(a_weak_handle_does_not_keep_the_driver_alive::<Smol>());
    }

    #[test]
    fn the_driver_runs_on_a_plain_executor_and_shuts_down() {
        let (handle, driver) = antientropy::adapters::smol::driver(
            StateResponder::<Id>::new(Config::default(), common::channel(), HEIGHT).unwrap(),
            ResponderHost::new(Void, Store { height: HEIGHT }),
            4,
        );
        let (responder, _) = async_io::block_on(async {
            handle
                .send(ResponderEvent::Height(HEIGHT + 1))
                .await
                .unwrap();
            // The handle stays alive: only the shutdown ends the driver.
            handle.shutdown().await.unwrap();
            driver.await
        });
        assert_eq!(responder.height(), HEIGHT + 1);
        assert!(handle.stats().is_none());
    }
}

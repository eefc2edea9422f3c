//! The runtime adapters drive an `AntiEntropy` and a `StateResponder` that
//! talk over in-process channels (each message through the wire format),
//! until the requester has caught up 500 blocks: under tokio in virtual time,
//! under smol in real time. The scenarios are written once, generic over the
//! runtime; only the channel and the test's own timer differ.
#![cfg(any(feature = "tokio", feature = "smol"))]

mod common;

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use antientropy::adapters::{
    BlockStore, Driver, DriverStats, Host, Ledger, Machine, RequesterHost, ResponderHost, Runtime,
    SendError, Transport, Verdict,
};
use antientropy::wire::gossip::{GossipMessage, Payload};
use antientropy::{
    payload_size, wire, AntiEntropy, Config, Event, GiveUpReason, Origin, PeerState,
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

/// The runtime-specific part of the tests: the sending side of the
/// adapter's channel, and how a message crosses the in-process "network".
trait TestRuntime: Runtime + Sized {
    type Tx<T: Send + 'static>: Clone;

    fn channel<T: Send + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Receiver<T>);
    /// Sends without blocking; after `latency` where the runtime can (tokio).
    fn try_send<T: Send + 'static>(
        tx: &Self::Tx<T>,
        value: T,
        latency: Duration,
    ) -> Result<(), SendError>;
}

#[cfg(feature = "tokio")]
impl TestRuntime for antientropy::adapters::tokio::Tokio {
    type Tx<T: Send + 'static> = tokio::sync::mpsc::Sender<T>;

    fn channel<T: Send + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Receiver<T>) {
        antientropy::adapters::tokio::channel(capacity)
    }

    fn try_send<T: Send + 'static>(
        tx: &Self::Tx<T>,
        value: T,
        latency: Duration,
    ) -> Result<(), SendError> {
        use tokio::sync::mpsc::error::TrySendError;
        if !latency.is_zero() {
            // A link with a delay: virtual under paused time.
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                let _ = tx.try_send(value);
            });
            return Ok(());
        }
        tx.try_send(value).map_err(|error| match error {
            TrySendError::Full(_) => SendError::Full,
            TrySendError::Closed(_) => SendError::Closed,
        })
    }
}

#[cfg(feature = "smol")]
impl TestRuntime for antientropy::adapters::smol::Smol {
    type Tx<T: Send + 'static> = async_channel::Sender<T>;

    fn channel<T: Send + 'static>(capacity: usize) -> (Self::Tx<T>, Self::Receiver<T>) {
        antientropy::adapters::smol::channel(capacity)
    }

    fn try_send<T: Send + 'static>(
        tx: &Self::Tx<T>,
        value: T,
        _latency: Duration,
    ) -> Result<(), SendError> {
        tx.try_send(value).map_err(|error| match error {
            async_channel::TrySendError::Full(_) => SendError::Full,
            async_channel::TrySendError::Closed(_) => SendError::Closed,
        })
    }
}

// --- the hosts ---------------------------------------------------------------------

/// A one-peer link: every message is wrapped in an `Envelope`, encoded,
/// decoded and unwrapped, then put in the other machine's inbox.
struct Link<R: TestRuntime, T: Send + 'static> {
    from: Id,
    to: Id,
    tx: R::Tx<T>,
    wrap: fn(Id, GossipMessage) -> T,
    latency: Duration,
}

impl<R: TestRuntime, T: Send + 'static> Transport<Id> for Link<R, T> {
    fn send(&mut self, to: &Id, message: GossipMessage) -> Result<(), SendError> {
        if *to != self.to {
            return Err(SendError::Closed);
        }
        let bytes = wire::wrap_envelope(&message).encode_to_vec();
        let envelope = wire::decode_envelope(bytes.into(), wire::DEFAULT_MAX_MESSAGE_SIZE)
            .expect("an envelope");
        let message = wire::unwrap_envelope(&envelope, wire::DEFAULT_MAX_MESSAGE_SIZE)
            .expect("a gossip message");
        R::try_send(&self.tx, (self.wrap)(self.from, message), self.latency)
    }
}

/// A transport to nowhere: a silent peer.
struct Void;

impl Transport<Id> for Void {
    fn send(&mut self, _: &Id, _: GossipMessage) -> Result<(), SendError> {
        Ok(())
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
            && from == Origin::Peer(RESPONDER);
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

type ReqHost<R> = RequesterHost<Link<R, ResponderEvent<Id>>, Chain>;
type RespHost<R> = ResponderHost<Link<R, Event<Id>>, Store>;
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
    requester: Stats<Id>,
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
    let (req_tx, req_rx) = R::channel::<Event<Id>>(INBOX);
    let (resp_tx, resp_rx) = R::channel::<ResponderEvent<Id>>(INBOX);

    let requester = AntiEntropy::new(Config::default(), common::channel(), 1, seed, start).unwrap();
    let to_responder = Link::<R, _> {
        from: REQUESTER,
        to: RESPONDER,
        tx: resp_tx.clone(),
        wrap: |from, message| ResponderEvent::Request { from, message },
        latency,
    };
    let chain = Chain {
        height: 1,
        reject_once: reject,
        ..Chain::default()
    };
    let mut req: ReqDriver<R> =
        Driver::new(requester, RequesterHost::new(to_responder, chain), req_rx);

    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let to_requester = Link::<R, _> {
        from: RESPONDER,
        to: REQUESTER,
        tx: req_tx.clone(),
        wrap: |from, message| Event::Response { from, message },
        latency,
    };
    let store = Store { height: HEIGHT };
    let mut resp: RespDriver<R> =
        Driver::new(responder, ResponderHost::new(to_requester, store), resp_rx);

    // The host's membership view: the one peer, ahead of us.
    R::try_send(
        &req_tx,
        Event::Membership(vec![PeerState::new(RESPONDER, HEIGHT)]),
        Duration::ZERO,
    )
    .unwrap();

    drive_until(&mut req, &mut resp, Duration::from_secs(30), |req| {
        // Committed by the host and acknowledged to the machine.
        req.machine().stats().committed == HEIGHT
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

    let requester = req.machine().stats();
    // The rejected block was handed over twice.
    assert_eq!(
        requester.delivered,
        HEIGHT - 1 + u64::from(reject.is_some())
    );
    assert_eq!(requester.committed, HEIGHT);
    assert_eq!(requester.timeouts, 0);
    let responder = resp.machine().stats();
    assert!(responder.blocks_served >= HEIGHT - 1);
    assert_eq!(responder.refused(), 0);
    // Every verdict (commits and the rejection) came back as feedback.
    assert_eq!(
        req.stats().feedback,
        HEIGHT - 1 + u64::from(reject.is_some())
    );
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
        responder,
        requester_driver: req.stats().clone(),
        responder_driver: resp.stats().clone(),
    }
}

/// A requester whose only peer never answers: only the timer can move it,
/// through retries to a give-up.
async fn silent_peer<R: TestRuntime>(
    config: Config,
    limit: Duration,
) -> (Duration, DriverStats, Vec<(SeqRange, GiveUpReason)>) {
    let start = R::now();
    let (req_tx, req_rx) = R::channel::<Event<Id>>(INBOX);
    let requester = AntiEntropy::new(config, common::channel(), 1, 3, start).unwrap();
    let chain = Chain {
        height: 1,
        ..Chain::default()
    };
    let mut req: Driver<_, _, R> = Driver::new(requester, RequesterHost::new(Void, chain), req_rx);
    R::try_send(
        &req_tx,
        Event::Membership(vec![PeerState::new("silent", HEIGHT)]),
        Duration::ZERO,
    )
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
    let stats = req.stats().clone();
    assert!(req.machine().stats().timeouts > 0);
    assert!(stats.timeouts > 0, "{stats:?}");
    // The timer is re-armed only when the deadline changed, and the
    // deadline changes only when the machine handled something.
    let steps = stats.inputs + stats.feedback + stats.timeouts;
    assert!(stats.timer_resets <= steps + 1, "{stats:?}");
    drop(req_tx);
    let (_, host) = req.into_parts();
    (elapsed, stats, host.ledger.give_ups)
}

/// A responder fed more requests than its budget: the driver yields between
/// batches, answers all of them, and ends once the inbox is closed.
async fn budget_and_close<R: TestRuntime>() {
    const REQUESTS: u64 = 20;
    let (req_tx, req_rx) = R::channel::<Event<Id>>(INBOX);
    let (resp_tx, resp_rx) = R::channel::<ResponderEvent<Id>>(INBOX);
    let responder = StateResponder::new(Config::default(), common::channel(), HEIGHT).unwrap();
    let link = Link::<R, _> {
        from: RESPONDER,
        to: REQUESTER,
        tx: req_tx,
        wrap: |from, message| Event::Response { from, message },
        latency: Duration::ZERO,
    };
    let mut driver: Driver<_, _, R> = Driver::new(
        responder,
        ResponderHost::new(link, Store { height: HEIGHT }),
        resp_rx,
    )
    .with_budget(4);
    for nonce in 0..REQUESTS {
        let message = wire::state_request(nonce, common::channel(), nonce, nonce + 5);
        R::try_send(
            &resp_tx,
            ResponderEvent::Request {
                from: REQUESTER,
                message,
            },
            Duration::ZERO,
        )
        .unwrap();
    }
    drop(resp_tx);
    poll_fn(|cx| driver.poll_drive(cx)).await;

    let stats = driver.stats().clone();
    assert_eq!(stats.inputs, REQUESTS);
    // Each request's read came back as feedback, handled in the same step
    // (outside the budget, which counts inbox inputs).
    assert_eq!(stats.feedback, REQUESTS);
    assert!(stats.yields >= REQUESTS / 4 - 1, "{stats:?}");
    assert!(stats.wakeups > stats.yields, "{stats:?}");
    let (responder, host) = driver.into_parts();
    assert_eq!(responder.stats().responses, REQUESTS);
    assert_eq!(host.dropped_sends, 0);
    // The responses are in the requester's inbox, in order.
    drop(host);
    let mut inbox = req_rx;
    let mut nonces = Vec::new();
    poll_fn(|cx| loop {
        match R::poll_recv(&mut inbox, cx) {
            Poll::Ready(Some(Event::Response { message, .. })) => nonces.push(message.nonce),
            Poll::Ready(Some(other)) => panic!("{other:?}"),
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    assert_eq!(nonces, (0..REQUESTS).collect::<Vec<_>>());
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
        let srtt = outcome.requester.peers[RESPONDER].srtt.unwrap();
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
    async fn yields_at_the_budget_and_ends_when_the_inbox_closes() {
        budget_and_close::<Tokio>().await;
    }

    #[tokio::test]
    async fn the_driver_spawns_and_ends() {
        let (tx, driver) = antientropy::adapters::tokio::driver(
            StateResponder::<Id>::new(Config::default(), common::channel(), HEIGHT).unwrap(),
            ResponderHost::new(Void, Store { height: HEIGHT }),
            4,
        );
        let task = tokio::spawn(driver);
        tx.send(ResponderEvent::Height(HEIGHT + 1)).await.unwrap();
        drop(tx);
        task.await.unwrap();
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
    fn yields_at_the_budget_and_ends_when_the_inbox_closes() {
        async_io::block_on(budget_and_close::<Smol>());
    }

    #[test]
    fn the_driver_runs_on_a_plain_executor() {
        let (tx, driver) = antientropy::adapters::smol::driver(
            StateResponder::<Id>::new(Config::default(), common::channel(), HEIGHT).unwrap(),
            ResponderHost::new(Void, Store { height: HEIGHT }),
            4,
        );
        async_io::block_on(async {
            tx.send(ResponderEvent::Height(HEIGHT + 1)).await.unwrap();
            drop(tx);
            driver.await;
        });
    }
}

//! The TCP transport over loopback: the two-process example's roles
//! (`examples/tcp_catchup.rs`, compiled in here) catch up, a lost
//! connection is redialled with the connection events in order, bad
//! frames are counted or close the connection, and background messages
//! wait for the foreground ones.
#![cfg(feature = "tokio-net")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use antientropy::adapters::codec::{FrameCodec, MessageCodec};
use antientropy::adapters::tcp::{TcpConfig, TcpTransport};
use antientropy::adapters::tokio::driver;
use antientropy::adapters::{Feedback, Host, Machine, ResponderHost, Transport};
use antientropy::wire::{self, gossip::Payload};
use antientropy::{Config, SeqRange, StateResponder, Ticket};
use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Encoder, FramedRead};

#[path = "../examples/tcp_catchup.rs"]
#[allow(dead_code, unreachable_pub)] // its `main`
mod tcp_catchup;

/// Bounds every wait, so that a broken transport fails instead of hanging.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn the_two_process_example_catches_up_over_loopback() {
    const BLOCKS: u64 = 300;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(tcp_catchup::serve(listener, BLOCKS));
    let requester = within("catch-up", tcp_catchup::fetch(address, BLOCKS))
        .await
        .unwrap();
    server.abort();
    let stats = requester.stats();
    // Every block verified against its predecessor and committed.
    assert_eq!(requester.committed(), BLOCKS + 1);
    assert_eq!(stats.rejected, 0);
    assert_eq!(stats.ignored.malformed, 0);
    assert_eq!(requester.peer_stats(&address).unwrap().blocks, BLOCKS);
}

/// What a [`Recorder`] saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Up(u32),
    Down(u32),
    Frame(u32, Bytes),
    Timeout,
}

/// A machine that only records its inputs: the transport's view of a
/// connection, as a driver's machine gets it.
#[derive(Default)]
struct Recorder(Vec<Seen>);

impl Machine for Recorder {
    type Peer = u32;
    type Input = Seen;
    type Output = ();
    type Error = Infallible;
    type Stats = usize;
    const NAME: &'static str = "recorder";

    fn handle(&mut self, _: std::time::Instant, input: Seen) -> Result<(), Infallible> {
        self.0.push(input);
        Ok(())
    }
    fn handle_envelope_bytes(
        &mut self,
        _: std::time::Instant,
        from: u32,
        bytes: Bytes,
    ) -> Result<(), Infallible> {
        self.0.push(Seen::Frame(from, bytes));
        Ok(())
    }
    fn poll_output(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        None
    }
    fn timeout() -> Seen {
        Seen::Timeout
    }
    fn sender(_: &Seen) -> Option<&u32> {
        None
    }
    fn connected(peer: u32) -> Option<Seen> {
        Some(Seen::Up(peer))
    }
    fn disconnected(peer: u32) -> Option<Seen> {
        Some(Seen::Down(peer))
    }
    fn stats(&self) -> usize {
        self.0.len()
    }
}

struct Nothing;
impl Host<Recorder> for Nothing {
    fn on_output(&mut self, _: (), _: &mut Feedback<Seen>) {}
}

fn quick() -> TcpConfig {
    let mut config = TcpConfig::default();
    config.min_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    config
}

#[tokio::test]
async fn a_lost_connection_is_redialled_and_each_change_is_an_event() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (handle, driver) = driver(Recorder::default(), Nothing, 16);
    let driver = tokio::spawn(driver);
    let transport = TcpTransport::<u32>::new(quick());
    transport.dial(7, address, handle.downgrade());

    let seen = |n: usize| {
        let handle = handle.clone();
        async move {
            while handle.stats().unwrap() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            handle.with_machine(|m| m.0.clone()).unwrap()
        }
    };

    // First connection: up, a frame from the server, then the server closes.
    let (mut server, _) = within("first accept", listener.accept()).await.unwrap();
    let message = wire::state_request(1, common::channel(), 1, 2);
    let mut frame = BytesMut::new();
    FrameCodec::new()
        .encode(message.clone(), &mut frame)
        .unwrap();
    server.write_all(&frame).await.unwrap();
    let body = Bytes::copy_from_slice(&frame[4..]);
    assert_eq!(
        within("up and frame", seen(2)).await,
        [Seen::Up(7), Seen::Frame(7, body.clone())]
    );
    // While it is up, sends reach the server.
    transport.clone().send(&7, message.clone()).unwrap();
    let mut frames = FramedRead::new(&mut server, MessageCodec::new());
    assert_eq!(frames.next().await.unwrap().unwrap(), message);
    drop(frames);
    drop(server);
    assert_eq!(within("down", seen(3)).await[2], Seen::Down(7));

    // Redialled after the back-off: up again.
    let (server, _) = within("second accept", listener.accept()).await.unwrap();
    assert_eq!(within("up again", seen(4)).await[3], Seen::Up(7));
    assert_eq!(transport.connected(), [7]);
    let stats = transport.stats();
    assert_eq!((stats.connected, stats.disconnected), (2, 1), "{stats:?}");
    assert_eq!((stats.frames_in, stats.frames_out), (1, 1), "{stats:?}");

    // The driver's end stops the dialling; dropping the transport closes
    // the connection.
    handle.shutdown().await.unwrap();
    let (recorder, Nothing) = driver.await.unwrap();
    assert_eq!(recorder.0.len(), 4);
    drop(transport);
    let mut rest = FramedRead::new(server, FrameCodec::new());
    assert!(within("closed", rest.next()).await.is_none());
}

/// A client on a raw socket, speaking the framing to a listening responder.
async fn client(address: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(address))
        .await
        .unwrap()
}

struct Chain;
impl antientropy::adapters::BlockStore<u32> for Chain {
    fn read_blocks(&mut self, _: Ticket, _: &u32, r: SeqRange, _: usize) -> Option<Vec<Payload>> {
        Some((r.start()..=r.end()).map(common::payload).collect())
    }
}

#[tokio::test]
async fn a_listener_serves_counts_garbage_and_closes_on_an_oversized_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let responder = StateResponder::new(Config::default(), common::channel(), 100).unwrap();
    let mut config = quick();
    config.max_frame = 1024;
    let transport = TcpTransport::<u32>::new(config);
    let (handle, driver) = driver(responder, ResponderHost::new(transport.clone(), Chain), 16);
    let driver = tokio::spawn(driver);
    // Every connection is peer 9 here: one client at a time.
    transport.listen(listener, |_| 9, handle.downgrade());

    let mut socket = client(address).await;
    // Garbage in a well-formed frame: counted, the connection stays up.
    let mut out = BytesMut::new();
    out.put_u32(3);
    out.put_slice(&[0xff, 0xff, 0xff]);
    // Then a real request.
    let request = wire::state_request(5, common::channel(), 1, 2);
    FrameCodec::new().encode(request, &mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut frames = FramedRead::new(&mut socket, MessageCodec::new());
    let answer = within("answer", frames.next()).await.unwrap().unwrap();
    assert_eq!(answer.nonce, 5);
    assert_eq!(wire::as_state_response(&answer).unwrap().payloads.len(), 2);
    drop(frames);
    let stats = handle.stats().unwrap();
    assert_eq!((stats.malformed, stats.responses), (1, 1));
    assert_eq!(transport.stats().refused, 1, "the refusal named the peer");

    // A frame over the limit: the connection is closed.
    socket.write_all(&4096u32.to_be_bytes()).await.unwrap();
    let mut frames = FramedRead::new(socket, FrameCodec::new());
    assert!(within("closed", frames.next()).await.is_none());
    while transport.stats().read_errors == 0 || !transport.connected().is_empty() {
        within("closed", tokio::time::sleep(Duration::from_millis(5))).await;
    }
    handle.shutdown().await.unwrap();
    driver.await.unwrap();
}

// A background message (a repeating or favoured-out peer's answer) leaves
// only once no connection has a foreground message pending: here, while
// peer 1 does not read and its socket is full, peer 2's waits, and a
// foreground one to peer 2 passes it.
#[tokio::test]
async fn a_background_message_waits_for_every_foreground_one() {
    let (listener_1, listener_2) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (handle, driver) = driver(Recorder::default(), Nothing, 16);
    let driver = tokio::spawn(driver);
    let mut transport = TcpTransport::<u32>::new(quick());
    transport.dial(1, listener_1.local_addr().unwrap(), handle.downgrade());
    transport.dial(2, listener_2.local_addr().unwrap(), handle.downgrade());
    let (server_1, _) = within("accept 1", listener_1.accept()).await.unwrap();
    let (server_2, _) = within("accept 2", listener_2.accept()).await.unwrap();
    while transport.connected().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 64 MiB for peer 1, far more than loopback's socket buffers hold.
    let big = big_response();
    for _ in 0..8 {
        transport.send(&1, big.clone()).unwrap();
    }
    let small = wire::state_response(2, common::channel(), Vec::new());
    transport.send_background(&2, small.clone()).unwrap();
    let mut at_2 = FramedRead::new(server_2, MessageCodec::new());
    let early = tokio::time::timeout(Duration::from_millis(500), at_2.next()).await;
    assert!(
        early.is_err(),
        "sent while peer 1's were pending: {early:?}"
    );
    // A foreground message to peer 2 does not wait behind its background
    // one (whose wait it would otherwise prolong for good: it is pending
    // foreground itself).
    let urgent = wire::state_response(3, common::channel(), Vec::new());
    transport.send(&2, urgent.clone()).unwrap();
    assert_eq!(
        within("the urgent one", at_2.next())
            .await
            .unwrap()
            .unwrap(),
        urgent
    );
    // Peer 1 reads everything: the gate opens.
    let mut at_1 = FramedRead::new(server_1, MessageCodec::new());
    for _ in 0..8 {
        let message = within("a big one", at_1.next()).await.unwrap().unwrap();
        assert_eq!(message, big);
    }
    assert_eq!(
        within("the background one", at_2.next())
            .await
            .unwrap()
            .unwrap(),
        small
    );
    handle.shutdown().await.unwrap();
    driver.await.unwrap();
}

// A peer that stops reading holds the gate only until its connection has
// made no progress for 2 s, and loses its connection after the write
// timeout: the machine hears it is down and its queue is freed.
#[tokio::test]
async fn a_peer_that_stops_reading_holds_neither_the_gate_nor_its_connection() {
    let (listener_1, listener_2) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (handle, driver) = driver(Recorder::default(), Nothing, 16);
    let driver = tokio::spawn(driver);
    let mut config = quick();
    config.write_timeout = Duration::from_secs(6);
    let mut transport = TcpTransport::<u32>::new(config);
    transport.dial(1, listener_1.local_addr().unwrap(), handle.downgrade());
    transport.dial(2, listener_2.local_addr().unwrap(), handle.downgrade());
    let (_wedged, _) = within("accept 1", listener_1.accept()).await.unwrap();
    let (server_2, _) = within("accept 2", listener_2.accept()).await.unwrap();
    while transport.connected().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let big = big_response();
    for _ in 0..8 {
        transport.send(&1, big.clone()).unwrap();
    }
    let small = wire::state_response(2, common::channel(), Vec::new());
    transport.send_background(&2, small.clone()).unwrap();
    let mut at_2 = FramedRead::new(server_2, MessageCodec::new());
    let early = tokio::time::timeout(Duration::from_millis(500), at_2.next()).await;
    assert!(early.is_err(), "sent while peer 1 could still progress");
    assert_eq!(
        within("the background one, peer 1 stalled", at_2.next())
            .await
            .unwrap()
            .unwrap(),
        small
    );
    let seen = handle.with_machine(|m| m.0.clone()).unwrap();
    assert!(
        !seen.contains(&Seen::Down(1)),
        "the background one waited until the write timeout closed peer 1: {seen:?}"
    );
    // Peer 1 never reads: its connection is closed and the machine told.
    let down = async {
        loop {
            let seen = handle.with_machine(|m| m.0.clone()).unwrap();
            if seen.contains(&Seen::Down(1)) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let seen = within("peer 1 down", down).await;
    assert!(!seen.contains(&Seen::Down(2)), "{seen:?}");
    assert_eq!(transport.stats().write_timeouts, 1);
    handle.shutdown().await.unwrap();
    driver.await.unwrap();
}

/// One 8 MiB block in a response: a few of them fill any socket buffer.
fn big_response() -> antientropy::wire::gossip::GossipMessage {
    wire::state_response(
        1,
        common::channel(),
        vec![Payload {
            seq_num: 1,
            data: Bytes::from(vec![7; 8 << 20]),
            private_data: Vec::new(),
        }],
    )
}

//! The `tracing` feature: the machines' events reach a subscriber with the
//! peer, the range and the reason, and the driver runs in a span.
#![cfg(feature = "tracing")]

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use antientropy::{
    wire, Action, AntiEntropy, Config, Event, PeerState, ResponderEvent, StateResponder,
};
use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One event: its fields as text, plus `level` and the names of the spans
/// it happened in (`spans`).
type Record = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Record>>>);

struct Fields<'a>(&'a mut Record);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, cx: Context<'_, S>) {
        let mut record = Record::new();
        event.record(&mut Fields(&mut record));
        record.insert("level".into(), event.metadata().level().to_string());
        let spans = cx
            .event_scope(event)
            .map(|scope| scope.map(|span| span.name()).collect::<Vec<_>>().join("/"))
            .unwrap_or_default();
        record.insert("spans".into(), spans);
        self.0.lock().unwrap().push(record);
    }
}

impl Collect {
    /// The events whose message is `message`.
    fn named(&self, message: &str) -> Vec<Record> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|e| e.get("message").is_some_and(|m| m == message))
            .cloned()
            .collect()
    }
}

fn collecting<T>(f: impl FnOnce() -> T) -> (Collect, T) {
    let collect = Collect::default();
    let subscriber = tracing_subscriber::registry().with(collect.clone());
    let out = tracing::subscriber::with_default(subscriber, f);
    (collect, out)
}

#[test]
fn a_silent_peer_shows_requests_timeouts_benching_and_the_give_up() {
    let (events, give_ups) = collecting(|| {
        let t0 = common::epoch();
        let mut ae: AntiEntropy<&str> =
            AntiEntropy::new(Config::default(), common::channel(), 1, 3, t0).unwrap();
        ae.handle(t0, Event::Membership(vec![PeerState::new("silent", 30)]))
            .unwrap();
        let mut give_ups = 0;
        let mut now = t0;
        while give_ups == 0 && now < t0 + Duration::from_secs(600) {
            while let Some(action) = ae.poll_action() {
                give_ups += u32::from(matches!(action, Action::GiveUp { .. }));
            }
            now = ae.poll_timeout().unwrap().max(now);
            ae.handle(now, Event::Timeout).unwrap();
        }
        give_ups
    });
    assert!(give_ups > 0);
    let round = &events.named("round started")[0];
    assert_eq!(round["end"], "29");
    let sent = &events.named("request sent")[0];
    assert_eq!(sent["peer"], "\"silent\"");
    assert_eq!(sent["range"], "[1, 11]");
    assert!(sent.contains_key("nonce"), "{sent:?}");
    let timed_out = &events.named("request timed out")[0];
    assert_eq!(
        (timed_out["peer"].as_str(), timed_out["range"].as_str()),
        ("\"silent\"", "[1, 11]")
    );
    assert!(!events.named("peer benched").is_empty());
    let given_up = &events.named("range given up")[0];
    assert_eq!(given_up["level"], "INFO");
    assert!(
        given_up["reason"].starts_with("RetriesExhausted"),
        "{given_up:?}"
    );
}

#[test]
fn a_responder_refusal_names_the_peer() {
    let (events, ()) = collecting(|| {
        let now = common::epoch();
        let mut responder: StateResponder<&str> =
            StateResponder::new(Config::default(), common::channel(), 100).unwrap();
        let request = wire::state_request(9, "another channel".into(), 1, 5);
        let refused = responder.handle(
            now,
            ResponderEvent::Request {
                from: "mallory",
                message: request,
            },
        );
        assert!(refused.is_err());
    });
    let refusal = &events.named("request refused")[0];
    assert_eq!(refusal["peer"], "\"mallory\"");
    assert_eq!(refusal["nonce"], "9");
    assert!(refusal["error"].contains("another channel"), "{refusal:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn the_driver_names_the_peer_of_a_refused_input_inside_its_span() {
    use antientropy::adapters::{tokio::driver, ResponderHost, SendError, Transport};
    struct Void;
    impl Transport<&'static str> for Void {
        fn send(
            &mut self,
            _: &&'static str,
            _: wire::gossip::GossipMessage,
        ) -> Result<(), SendError> {
            Ok(())
        }
    }
    impl antientropy::adapters::BlockStore<&'static str> for Void {
        fn read_blocks(
            &mut self,
            _: antientropy::Ticket,
            _: &&'static str,
            _: antientropy::SeqRange,
            _: usize,
        ) -> Option<Vec<wire::gossip::Payload>> {
            Some(Vec::new())
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (events, ()) = collecting(|| {
        runtime.block_on(async {
            let responder = StateResponder::new(Config::default(), common::channel(), 10).unwrap();
            let (handle, driver) = driver(responder, ResponderHost::new(Void, Void), 4);
            let driver = tokio::spawn(driver);
            handle
                .send_bytes("mallory", bytes::Bytes::from_static(b"\xff"))
                .await
                .unwrap();
            handle.shutdown().await.unwrap();
            driver.await.unwrap();
        })
    });
    let refused = &events.named("input refused")[0];
    assert_eq!(refused["peer"], "Some(\"mallory\")");
    assert_eq!(refused["spans"], "antientropy");
    assert!(refused["error"].starts_with("malformed"), "{refused:?}");
}

//! The codec against Fabric's own encoding: every vector in `tests/vectors`
//! (written by `protoc --encode` from the upstream schema) decodes to exactly
//! the values of its `.txt` and encodes back to the same bytes; plus the
//! helpers of `antientropy::wire` around those messages.

use antientropy::wire::common::{Block, BlockData, BlockHeader, BlockMetadata};
use antientropy::wire::gossip::gossip_message::{Content, Tag};
use antientropy::wire::gossip::{
    AliveMessage, Chaincode, DataMessage, Empty, Envelope, GossipHello, GossipMessage, Member,
    MembershipRequest, Payload, PeerTime, Properties, RemoteStateRequest, RemoteStateResponse,
    StateInfo,
};
use antientropy::wire::{self, Advertised, WireError, DEFAULT_MAX_MESSAGE_SIZE};
use bytes::Bytes;
use prost::Message;

/// Reads `tests/vectors/NAME.bin`; a missing vector fails the test.
macro_rules! vector {
    ($name:literal) => {
        read_vector(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/",
            $name,
            ".bin"
        ))
    };
}

/// The `# type:` line of `tests/vectors/NAME.txt`.
macro_rules! vector_type {
    ($name:literal) => {
        type_line(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/",
            $name,
            ".txt"
        ))
    };
}

/// Every vector this file checks; a new vector needs a test here.
const VECTORS: [&str; 6] = [
    "block",
    "data_msg",
    "envelope",
    "state_info",
    "state_request",
    "state_response",
];

fn read_vector(path: &str) -> Bytes {
    match std::fs::read(path) {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => panic!("cannot read vector {path}: {error}"),
    }
}

fn type_line(path: &str) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read vector description {path}: {error}"));
    text.lines()
        .find_map(|line| line.strip_prefix("# type:"))
        .unwrap_or_else(|| panic!("{path} has no `# type:` line"))
        .trim()
        .to_owned()
}

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// Decodes `bytes` as `M`, checks it equals `expected`, and checks that
/// encoding it again gives `bytes` byte for byte.
#[track_caller]
fn check_vector<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &Bytes, expected: &M) {
    let decoded = M::decode(bytes.clone()).expect("vector decodes");
    assert_eq!(&decoded, expected, "decoded values differ from the .txt");
    assert_eq!(
        decoded.encoded_len(),
        bytes.len(),
        "encoded length differs from the vector"
    );
    assert_eq!(
        decoded.encode_to_vec(),
        bytes.as_ref(),
        "re-encoding is not byte-identical"
    );
    // The literal itself encodes to the vector too.
    assert_eq!(expected.encode_to_vec(), bytes.as_ref());
}

// --- The values written in the .txt files -----------------------------------

fn expected_block() -> Block {
    Block {
        header: Some(BlockHeader {
            number: 10,
            previous_hash: b(b"prev-hash-32-bytes-.............."),
            data_hash: b(b"data-hash-32-bytes-.............."),
        }),
        data: Some(BlockData {
            data: vec![b(b"tx-envelope-0"), b(b"tx-envelope-1")],
        }),
        metadata: Some(BlockMetadata {
            metadata: vec![
                b(b"signatures"),
                b(b""),
                b(b"txfilter"),
                b(b""),
                b(b"commit-hash"),
            ],
        }),
    }
}

fn expected_data_msg() -> GossipMessage {
    GossipMessage {
        nonce: 7,
        channel: b(b"mychannel"),
        tag: Tag::ChanAndOrg as i32,
        content: Some(Content::DataMsg(DataMessage {
            payload: Some(Payload {
                seq_num: 7,
                data: b(b"block-7-bytes"),
                private_data: vec![],
            }),
        })),
    }
}

/// `envelope.txt`'s payload, its octal escapes written in hex.
const ENVELOPE_PAYLOAD: &[u8] =
    b"\x08\xcb\x89\xec\x8f\xf7\x23\x12\x09mychannel\x18\x05\x92\x01\x04\x08\x0a\x10\x14";

fn expected_envelope() -> Envelope {
    Envelope {
        payload: b(ENVELOPE_PAYLOAD),
        signature: b(b"sig-bytes"),
        secret_envelope: None,
    }
}

fn expected_state_info() -> GossipMessage {
    GossipMessage {
        nonce: 0,
        channel: b(b"mychannel"),
        tag: Tag::ChanOrOrg as i32,
        content: Some(Content::StateInfo(StateInfo {
            timestamp: Some(PeerTime {
                inc_num: 1_700_000_000_000,
                seq_num: 42,
            }),
            pki_id: b(b"peer0.org1"),
            channel_mac: b(b"mac-bytes"),
            properties: Some(Properties {
                ledger_height: 1000,
                left_channel: false,
                chaincodes: vec![Chaincode {
                    name: "basic".to_owned(),
                    version: "1.0".to_owned(),
                    metadata: b(b"md"),
                }],
            }),
        })),
    }
}

fn expected_state_request() -> GossipMessage {
    GossipMessage {
        nonce: 1_234_567_890_123,
        channel: b(b"mychannel"),
        tag: Tag::ChanOrOrg as i32,
        content: Some(Content::StateRequest(RemoteStateRequest {
            start_seq_num: 10,
            end_seq_num: 20,
        })),
    }
}

fn expected_state_response() -> GossipMessage {
    GossipMessage {
        nonce: 1_234_567_890_123,
        channel: b(b"mychannel"),
        tag: Tag::ChanOrOrg as i32,
        content: Some(Content::StateResponse(RemoteStateResponse {
            payloads: vec![
                Payload {
                    seq_num: 10,
                    data: b(b"block-10-bytes"),
                    private_data: vec![b(b"pvt-a"), b(b"pvt-b")],
                },
                Payload {
                    seq_num: 11,
                    data: b(b"block-11-bytes"),
                    private_data: vec![],
                },
            ],
        })),
    }
}

// --- The vectors ---------------------------------------------------------------

#[test]
fn every_vector_has_a_test() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {dir}: {error}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, VECTORS);
}

#[test]
fn block_vector() {
    assert_eq!(vector_type!("block"), "common.Block");
    check_vector(&vector!("block"), &expected_block());
}

#[test]
fn data_msg_vector() {
    assert_eq!(vector_type!("data_msg"), "gossip.GossipMessage");
    let bytes = vector!("data_msg");
    check_vector(&bytes, &expected_data_msg());
    let message = wire::decode_gossip_message(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(message, expected_data_msg());
    assert!(wire::as_state_request(&message).is_none());
    assert!(wire::as_state_response(&message).is_none());
}

#[test]
fn envelope_vector() {
    assert_eq!(vector_type!("envelope"), "gossip.Envelope");
    let bytes = vector!("envelope");
    check_vector(&bytes, &expected_envelope());
    let envelope = wire::decode_envelope(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(envelope, expected_envelope());
}

#[test]
fn envelope_carries_the_state_request_vector() {
    let state_request = vector!("state_request");
    let envelope = wire::decode_envelope(vector!("envelope"), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(envelope.payload, state_request);
    assert_eq!(envelope.payload.as_ref(), ENVELOPE_PAYLOAD);
    let inner = wire::unwrap_envelope(&envelope, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(inner, expected_state_request());
    assert_eq!(
        inner,
        GossipMessage::decode(state_request.clone()).expect("state_request.bin decodes")
    );
    assert_eq!(inner.encode_to_vec(), state_request.as_ref());
}

#[test]
fn state_info_vector() {
    assert_eq!(vector_type!("state_info"), "gossip.GossipMessage");
    let bytes = vector!("state_info");
    check_vector(&bytes, &expected_state_info());
    let message = wire::decode_gossip_message(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert!(wire::as_state_request(&message).is_none());
    assert!(wire::as_state_response(&message).is_none());
}

#[test]
fn state_request_vector() {
    assert_eq!(vector_type!("state_request"), "gossip.GossipMessage");
    let bytes = vector!("state_request");
    check_vector(&bytes, &expected_state_request());
    let message = wire::decode_gossip_message(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(
        wire::as_state_request(&message),
        Some(&RemoteStateRequest {
            start_seq_num: 10,
            end_seq_num: 20
        })
    );
    assert!(wire::as_state_response(&message).is_none());
    // The builder produces what Fabric's stateRequestMessage puts on the wire.
    let built = wire::state_request(1_234_567_890_123, b(b"mychannel"), 10, 20);
    assert_eq!(built, expected_state_request());
    assert_eq!(built.encode_to_vec(), bytes.as_ref());
}

#[test]
fn state_response_vector() {
    assert_eq!(vector_type!("state_response"), "gossip.GossipMessage");
    let bytes = vector!("state_response");
    check_vector(&bytes, &expected_state_response());
    let message = wire::decode_gossip_message(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert!(wire::as_state_request(&message).is_none());
    let response = wire::as_state_response(&message).expect("a state response");
    assert_eq!(
        response
            .payloads
            .iter()
            .map(|p| p.seq_num)
            .collect::<Vec<_>>(),
        [10, 11]
    );
    // The builder produces what Fabric's responder puts on the wire.
    let Some(Content::StateResponse(RemoteStateResponse { payloads })) =
        expected_state_response().content
    else {
        unreachable!()
    };
    let built = wire::state_response(1_234_567_890_123, b(b"mychannel"), payloads);
    assert_eq!(built, expected_state_response());
    assert_eq!(built.encode_to_vec(), bytes.as_ref());
}

// --- The helpers ----------------------------------------------------------------

#[test]
fn decode_refuses_messages_over_the_limit() {
    let bytes = vector!("state_request");
    let size = bytes.len();
    assert_eq!(
        wire::decode_gossip_message(bytes.clone(), size - 1),
        Err(WireError::TooLarge {
            size,
            max: size - 1
        })
    );
    assert_eq!(
        wire::decode_gossip_message(bytes.clone(), 0),
        Err(WireError::TooLarge { size, max: 0 })
    );
    // The limit is inclusive.
    assert_eq!(
        wire::decode_gossip_message(bytes, size),
        Ok(expected_state_request())
    );

    let envelope = vector!("envelope");
    let size = envelope.len();
    assert_eq!(
        wire::decode_envelope(envelope.clone(), size - 1),
        Err(WireError::TooLarge {
            size,
            max: size - 1
        })
    );
    // unwrap_envelope applies the limit to the payload.
    let envelope = wire::decode_envelope(envelope, size).unwrap();
    let payload = envelope.payload.len();
    assert_eq!(
        wire::unwrap_envelope(&envelope, payload - 1),
        Err(WireError::TooLarge {
            size: payload,
            max: payload - 1
        })
    );
    assert_eq!(
        wire::unwrap_envelope(&envelope, payload),
        Ok(expected_state_request())
    );
}

#[test]
fn wrap_unwrap_round_trip_with_noop_signature() {
    for message in [
        expected_state_request(),
        expected_state_response(),
        expected_data_msg(),
        expected_state_info(),
    ] {
        let envelope = wire::wrap_envelope(&message);
        assert!(envelope.signature.is_empty(), "NoopSign: empty signature");
        assert_eq!(envelope.secret_envelope, None);
        assert_eq!(envelope.payload, message.encode_to_vec());
        let bytes = Bytes::from(envelope.encode_to_vec());
        let decoded = wire::decode_envelope(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(
            wire::unwrap_envelope(&decoded, DEFAULT_MAX_MESSAGE_SIZE),
            Ok(message)
        );
    }
    // On the wire: envelope.bin without its signature field.
    let wrapped = wire::wrap_envelope(&expected_state_request()).encode_to_vec();
    let mut expected = vec![0x0a, 27];
    expected.extend_from_slice(&vector!("state_request"));
    assert_eq!(wrapped, expected);
    assert_eq!(wrapped, vector!("envelope")[..29]);
}

#[test]
fn block_number_of_the_block_vector() {
    assert_eq!(wire::block_number(&vector!("block")), Ok(10));
}

#[test]
fn block_number_needs_a_header() {
    let headless = Block {
        header: None,
        ..expected_block()
    };
    let bytes = Bytes::from(headless.encode_to_vec());
    assert_eq!(
        wire::block_number(&bytes),
        Err(WireError::MissingField("header"))
    );
    assert_eq!(
        wire::block_number(&Bytes::new()),
        Err(WireError::MissingField("header"))
    );
    // A present but empty header is block 0, not a missing header.
    let genesis = Block {
        header: Some(BlockHeader::default()),
        data: None,
        metadata: None,
    };
    let bytes = Bytes::from(genesis.encode_to_vec());
    assert_eq!(bytes.as_ref(), [0x0a, 0x00]);
    assert_eq!(wire::block_number(&bytes), Ok(0));
    // Not a block at all.
    assert!(matches!(
        wire::block_number(&b(b"\x0a\x05ab")),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn advertised_of_the_state_info_vector() {
    let message = GossipMessage::decode(vector!("state_info")).unwrap();
    let Some(Content::StateInfo(state_info)) = &message.content else {
        panic!("state_info.bin is not a state info: {message:?}");
    };
    assert_eq!(
        wire::advertised(state_info),
        Ok(Advertised {
            ledger_height: 1000,
            left_channel: false
        })
    );
    let left = StateInfo {
        properties: Some(Properties {
            ledger_height: 5,
            left_channel: true,
            chaincodes: vec![],
        }),
        ..state_info.clone()
    };
    assert_eq!(
        wire::advertised(&left),
        Ok(Advertised {
            ledger_height: 5,
            left_channel: true
        })
    );
}

#[test]
fn advertised_needs_properties() {
    let message = GossipMessage::decode(vector!("state_info")).unwrap();
    let Some(Content::StateInfo(state_info)) = message.content else {
        panic!("state_info.bin is not a state info");
    };
    let bare = StateInfo {
        properties: None,
        ..state_info
    };
    assert_eq!(
        wire::advertised(&bare),
        Err(WireError::MissingField("properties"))
    );
    assert_eq!(
        wire::advertised(&StateInfo::default()),
        Err(WireError::MissingField("properties"))
    );
}

fn other_content() -> Vec<Content> {
    vec![
        Content::AliveMsg(AliveMessage {
            membership: Some(Member {
                endpoint: "peer0.org1:7051".to_owned(),
                metadata: Bytes::new(),
                pki_id: b(b"peer0.org1"),
            }),
            timestamp: Some(PeerTime {
                inc_num: 1,
                seq_num: 2,
            }),
            identity: b(b"identity"),
        }),
        Content::MemReq(MembershipRequest {
            self_information: Some(Envelope::default()),
            known: vec![b(b"peer1")],
        }),
        Content::Hello(GossipHello {
            nonce: 3,
            metadata: Bytes::new(),
            msg_type: 1,
        }),
        Content::Empty(Empty {}),
    ]
}

#[test]
fn other_gossip_content_is_not_a_state_message() {
    for content in other_content() {
        let message = GossipMessage {
            nonce: 9,
            channel: b(b"mychannel"),
            tag: Tag::Empty as i32,
            content: Some(content),
        };
        let bytes = Bytes::from(message.encode_to_vec());
        let decoded = wire::decode_gossip_message(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
        assert_eq!(decoded, message);
        assert!(wire::as_state_request(&decoded).is_none());
        assert!(wire::as_state_response(&decoded).is_none());
    }
    let empty = wire::decode_gossip_message(Bytes::new(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(empty, GossipMessage::default());
    assert!(wire::as_state_request(&empty).is_none());
    assert!(wire::as_state_response(&empty).is_none());
}

/// Fields no version of `GossipMessage` has, encoded by hand.
const UNKNOWN_FIELDS: &[u8] = &[
    0x20, 0x01, // field 4, varint 1 (a gap in GossipMessage's numbering)
    0x9a, 0x06, 0x03, b'a', b'b', b'c', // field 99, length-delimited "abc"
    0xa5, 0x06, 1, 2, 3, 4, // field 100, fixed32
    0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, // field 101, fixed64
];

#[test]
fn unknown_fields_are_skipped() {
    // A non-state message with unknown fields.
    let hello = GossipMessage {
        nonce: 3,
        channel: b(b"mychannel"),
        tag: Tag::OrgOnly as i32,
        content: Some(Content::Empty(Empty {})),
    };
    let mut bytes = hello.encode_to_vec();
    bytes.extend_from_slice(UNKNOWN_FIELDS);
    let decoded = wire::decode_gossip_message(bytes.into(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(decoded, hello);
    assert!(wire::as_state_request(&decoded).is_none());
    assert!(wire::as_state_response(&decoded).is_none());

    // Content of a future Fabric (oneof field 26) is no content at all.
    let mut bytes = vector!("state_request")[..20].to_vec(); // nonce, channel, tag
    bytes.extend_from_slice(&[0xd2, 0x01, 0x02, 0x08, 0x01]); // field 26, message {1: 1}
    let decoded = wire::decode_gossip_message(bytes.into(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(decoded.content, None);
    assert_eq!(decoded.nonce, 1_234_567_890_123);
    assert!(wire::as_state_request(&decoded).is_none());
    assert!(wire::as_state_response(&decoded).is_none());

    // An unknown tag value is kept as a number.
    let mut bytes = vector!("state_request").to_vec();
    bytes.extend_from_slice(&[0x18, 99]); // tag: 99, the last value wins
    let decoded = wire::decode_gossip_message(bytes.into(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(decoded.tag, 99);
    assert!(Tag::try_from(decoded.tag).is_err());
    assert!(wire::as_state_request(&decoded).is_some());

    // A state request with unknown fields is still the same state request;
    // prost drops the unknown fields, so it re-encodes to the vector.
    let state_request = vector!("state_request");
    let mut bytes = state_request.to_vec();
    bytes.extend_from_slice(UNKNOWN_FIELDS);
    let decoded = wire::decode_gossip_message(bytes.into(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(decoded, expected_state_request());
    assert_eq!(decoded.encode_to_vec(), state_request.as_ref());

    // Unknown fields inside the envelope and inside the block are skipped too.
    let mut bytes = vector!("envelope").to_vec();
    bytes.extend_from_slice(UNKNOWN_FIELDS);
    let envelope = wire::decode_envelope(bytes.into(), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(envelope, expected_envelope());
    let mut bytes = vector!("block").to_vec();
    bytes.extend_from_slice(UNKNOWN_FIELDS);
    assert_eq!(wire::block_number(&bytes.into()), Ok(10));
}

#[test]
fn truncated_vectors_are_malformed_not_a_panic() {
    for bytes in [
        vector!("block"),
        vector!("data_msg"),
        vector!("envelope"),
        vector!("state_info"),
        vector!("state_request"),
        vector!("state_response"),
    ] {
        for len in 0..bytes.len() {
            let prefix = bytes.slice(..len);
            let _ = wire::decode_gossip_message(prefix.clone(), DEFAULT_MAX_MESSAGE_SIZE);
            let _ = wire::decode_envelope(prefix.clone(), DEFAULT_MAX_MESSAGE_SIZE);
            let _ = wire::block_number(&prefix);
        }
    }
    // Cut inside the state request's content: malformed.
    let cut = vector!("state_request").slice(..26);
    assert!(matches!(
        wire::decode_gossip_message(cut, DEFAULT_MAX_MESSAGE_SIZE),
        Err(WireError::Malformed(_))
    ));
}

// --- Arbitrary input never panics -------------------------------------------------

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    fn vectors() -> [Bytes; 6] {
        [
            vector!("block"),
            vector!("data_msg"),
            vector!("envelope"),
            vector!("state_info"),
            vector!("state_request"),
            vector!("state_response"),
        ]
    }

    /// Feeds `bytes` to every decoding helper; any result is fine, a panic is
    /// not (proptest reports it).
    fn feed(bytes: &Bytes, max_size: usize) {
        let _ = wire::decode_gossip_message(bytes.clone(), max_size);
        if let Ok(message) = wire::decode_gossip_message(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE) {
            let _ = wire::as_state_request(&message);
            let _ = wire::as_state_response(&message);
            if let Some(Content::StateInfo(state_info)) = &message.content {
                let _ = wire::advertised(state_info);
            }
            if let Some(Content::StateResponse(response)) = &message.content {
                for payload in &response.payloads {
                    let _ = wire::block_number(&payload.data);
                }
            }
        }
        let _ = wire::decode_envelope(bytes.clone(), max_size);
        if let Ok(envelope) = wire::decode_envelope(bytes.clone(), DEFAULT_MAX_MESSAGE_SIZE) {
            let _ = wire::unwrap_envelope(&envelope, max_size);
        }
        let _ = wire::block_number(bytes);
    }

    proptest! {
        // On failure, keep the case next to this file
        // (`tests/wire_vectors.proptest-regressions`): the default looks for a
        // `lib.rs` above the test and finds none.
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), max_size in 0usize..1024) {
            feed(&Bytes::from(bytes), max_size);
        }

        #[test]
        fn vector_with_bytes_appended(
            which in 0usize..6,
            tail in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut bytes = vectors()[which].to_vec();
            bytes.extend_from_slice(&tail);
            feed(&Bytes::from(bytes), DEFAULT_MAX_MESSAGE_SIZE);
        }

        /// Whenever the whole block decodes, the header-only reader reads
        /// the same number (it skips the hashes, the data and the metadata).
        #[test]
        fn block_number_agrees_with_a_full_decode(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            number in any::<u64>(),
            previous in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let block = Block {
                header: Some(BlockHeader {
                    number,
                    previous_hash: Bytes::from(previous),
                    ..expected_block().header.unwrap()
                }),
                ..expected_block()
            };
            let mut bytes = block.encode_to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let bytes = Bytes::from(bytes);
            if let Ok(full) = Block::decode(bytes.clone()) {
                let expected = full.header.map(|h| h.number).ok_or(WireError::MissingField("header"));
                prop_assert_eq!(wire::block_number(&bytes), expected);
            }
        }

        #[test]
        fn vector_with_bytes_mutated(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = vectors()[which].to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            feed(&Bytes::from(bytes), DEFAULT_MAX_MESSAGE_SIZE);
        }
    }
}

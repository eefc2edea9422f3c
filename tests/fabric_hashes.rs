//! Fabric's block hashes and transaction headers against Fabric's own
//! encoding: DER written out by hand for the edge numbers, and
//! `tests/vectors/fabric_hashes.txt`, computed by Fabric's `protoutil`
//! (`interop/vectors/main.go`): header DER and hashes, data hashes, and a
//! four-block chain of real endorser-transaction envelopes.

use antientropy::wire::common::{
    Block, BlockData, BlockHeader, ChannelHeader, Envelope, HeaderType, Payload, SignatureHeader,
};
use antientropy::wire::google::protobuf::Timestamp;
use antientropy::wire::{self, ChainError, WireError};
use bytes::Bytes;
use prost::Message;

fn hex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    assert!(text.len().is_multiple_of(2), "odd-length hex {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

fn bytes(text: &str) -> Bytes {
    hex(text).into()
}

/// The vector file's lines of `kind`, split into fields.
fn vectors(kind: &str) -> Vec<Vec<String>> {
    let text = include_str!("vectors/fabric_hashes.txt");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|fields| fields[0] == kind)
        .collect()
}

/// Go's `pattern(n, seed)` in interop/vectors/main.go.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

fn header(number: u64) -> BlockHeader {
    BlockHeader {
        number,
        ..Default::default()
    }
}

// --- DER, by hand ------------------------------------------------------------

#[test]
fn header_der_of_edge_numbers_written_out() {
    // SEQUENCE { INTEGER n, OCTET STRING "", OCTET STRING "" }: an INTEGER is
    // big-endian in as few bytes as hold it, with a 0x00 first when the top
    // bit is set (else it would read as negative), as Go's asn1 marshals a
    // positive big.Int.
    #[rustfmt::skip]
    let cases: [(u64, &[u8]); 8] = [
        (0,        &[0x30, 0x07, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]),
        (1,        &[0x30, 0x07, 0x02, 0x01, 0x01, 0x04, 0x00, 0x04, 0x00]),
        (127,      &[0x30, 0x07, 0x02, 0x01, 0x7f, 0x04, 0x00, 0x04, 0x00]),
        (128,      &[0x30, 0x08, 0x02, 0x02, 0x00, 0x80, 0x04, 0x00, 0x04, 0x00]),
        (255,      &[0x30, 0x08, 0x02, 0x02, 0x00, 0xff, 0x04, 0x00, 0x04, 0x00]),
        (256,      &[0x30, 0x08, 0x02, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]),
        (1 << 63,  &[0x30, 0x0f, 0x02, 0x09, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                     0x04, 0x00, 0x04, 0x00]),
        (u64::MAX, &[0x30, 0x0f, 0x02, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                     0x04, 0x00, 0x04, 0x00]),
    ];
    for (number, expected) in cases {
        assert_eq!(
            wire::block_header_bytes(&header(number)),
            expected,
            "number {number}"
        );
    }
}

#[test]
fn header_der_with_hashes_uses_long_lengths_past_127() {
    // 32-byte hashes: short lengths throughout (content 3 + 34 + 34 = 71).
    let short = BlockHeader {
        number: 5,
        previous_hash: vec![0xaa; 32].into(),
        data_hash: vec![0xbb; 32].into(),
    };
    let mut expected = vec![0x30, 71, 0x02, 0x01, 0x05, 0x04, 32];
    expected.extend([0xaa; 32]);
    expected.extend([0x04, 32]);
    expected.extend([0xbb; 32]);
    assert_eq!(wire::block_header_bytes(&short), expected);

    // 128 and 300 bytes: lengths 0x81 0x80 and 0x82 0x01 0x2c; the sequence
    // holds 3 + 131 + 304 = 438 = 0x01b6 bytes.
    let long = BlockHeader {
        number: 5,
        previous_hash: vec![0xaa; 128].into(),
        data_hash: vec![0xbb; 300].into(),
    };
    let mut expected = vec![0x30, 0x82, 0x01, 0xb6, 0x02, 0x01, 0x05, 0x04, 0x81, 0x80];
    expected.extend([0xaa; 128]);
    expected.extend([0x04, 0x82, 0x01, 0x2c]);
    expected.extend([0xbb; 300]);
    assert_eq!(wire::block_header_bytes(&long), expected);
}

// --- Fabric's protoutil ---------------------------------------------------------

#[test]
fn header_bytes_and_hashes_match_fabric() {
    let lines = vectors("header");
    // 9 numbers × 2 hash pairs, and 3 headers with long hashes.
    assert_eq!(lines.len(), 21);
    for fields in lines {
        let header = BlockHeader {
            number: fields[1].parse().unwrap(),
            previous_hash: bytes(&fields[2]),
            data_hash: bytes(&fields[3]),
        };
        assert_eq!(
            wire::block_header_bytes(&header),
            hex(&fields[4]),
            "BlockHeaderBytes of block {}",
            header.number
        );
        assert_eq!(
            wire::block_header_hash(&header).to_vec(),
            hex(&fields[5]),
            "BlockHeaderHash of block {}",
            header.number
        );
    }
}

#[test]
fn the_edge_numbers_vectors_are_fabrics_own() {
    // The hand-written DER above is what Fabric produces too.
    let der: Vec<(u64, Vec<u8>)> = vectors("header")
        .into_iter()
        .filter(|fields| fields[2] == "-" && fields[3] == "-")
        .map(|fields| (fields[1].parse().unwrap(), hex(&fields[4])))
        .collect();
    assert_eq!(der.len(), 9);
    for (number, fabric) in der {
        assert_eq!(wire::block_header_bytes(&header(number)), fabric);
    }
}

#[test]
fn data_hashes_match_fabric() {
    let lines = vectors("data");
    assert_eq!(lines.len(), 4);
    for fields in lines {
        let data = match fields[2].as_str() {
            "none" => Vec::new(),
            list => list.split(',').map(bytes).collect(),
        };
        let data = BlockData { data };
        assert_eq!(
            wire::block_data_hash(&data).to_vec(),
            hex(&fields[1]),
            "{data:?}"
        );
    }
}

/// The four blocks of the vector chain, decoded, with Fabric's header hashes.
fn chain() -> Vec<(Bytes, Block, Vec<u8>)> {
    let lines = vectors("block");
    assert_eq!(lines.len(), 4);
    lines
        .into_iter()
        .enumerate()
        .map(|(seq, fields)| {
            assert_eq!(fields[1], seq.to_string());
            let encoded = bytes(&fields[2]);
            let block = Block::decode(encoded.clone()).expect("Fabric's block decodes");
            (encoded, block, hex(&fields[3]))
        })
        .collect()
}

#[test]
fn fabrics_chain_verifies_link_by_link() {
    let chain = chain();
    wire::verify_data_hash(&chain[0].1).unwrap();
    for (encoded, block, fabric_hash) in &chain {
        assert_eq!(
            Bytes::from(block.encode_to_vec()),
            *encoded,
            "re-encoding is byte-identical"
        );
        let header = block.header.as_ref().unwrap();
        assert_eq!(wire::block_header_hash(header).to_vec(), *fabric_hash);
        assert_eq!(wire::block_channel_id(block).unwrap(), "vectors-channel");
    }
    for pair in chain.windows(2) {
        let previous = pair[0].1.header.as_ref().unwrap();
        wire::verify_chain_link(previous, &pair[1].1).unwrap();
    }
}

#[test]
fn new_block_builds_fabrics_blocks() {
    let mut previous_hash = Bytes::new();
    for (encoded, fabric, fabric_hash) in chain() {
        let number = fabric.header.as_ref().unwrap().number;
        let transactions = fabric.data.clone().unwrap().data;
        let mut block = wire::new_block(number, previous_hash, transactions);
        // The orderer's signatures, which the vector chain stands in for.
        block.metadata.as_mut().unwrap().metadata[0] = Bytes::from_static(b"orderer-signatures");
        assert_eq!(
            Bytes::from(block.encode_to_vec()),
            encoded,
            "block {number}"
        );
        previous_hash = fabric_hash.into();
    }
}

#[test]
fn broken_links_are_refused() {
    let chain = chain();
    let genesis = chain[0].1.header.clone().unwrap();
    let block1 = chain[1].1.clone();

    let mut wrong_number = block1.clone();
    wrong_number.header.as_mut().unwrap().number = 2;
    assert_eq!(
        wire::verify_chain_link(&genesis, &wrong_number),
        Err(ChainError::NotNext {
            previous: 0,
            found: 2
        })
    );

    let mut wrong_previous = block1.clone();
    let mut hash = wrong_previous
        .header
        .as_ref()
        .unwrap()
        .previous_hash
        .to_vec();
    hash[0] ^= 1;
    wrong_previous.header.as_mut().unwrap().previous_hash = hash.clone().into();
    assert_eq!(
        wire::verify_chain_link(&genesis, &wrong_previous),
        Err(ChainError::PreviousHash {
            computed: wire::block_header_hash(&genesis),
            in_header: hash.into()
        })
    );

    // A transaction changed in flight: the header no longer commits to it.
    let mut tampered = block1.clone();
    let mut transaction = tampered.data.as_ref().unwrap().data[0].to_vec();
    *transaction.last_mut().unwrap() ^= 1;
    tampered.data.as_mut().unwrap().data[0] = transaction.into();
    let Err(ChainError::DataHash {
        computed,
        in_header,
    }) = wire::verify_chain_link(&genesis, &tampered)
    else {
        panic!("a tampered transaction must fail the data hash");
    };
    assert_eq!(in_header, block1.header.as_ref().unwrap().data_hash);
    assert_eq!(
        computed,
        wire::block_data_hash(tampered.data.as_ref().unwrap())
    );

    let headless = Block {
        header: None,
        ..block1.clone()
    };
    assert_eq!(
        wire::verify_chain_link(&genesis, &headless),
        Err(ChainError::MissingHeader)
    );

    // Nothing follows u64::MAX (and the check does not overflow).
    let last = header(u64::MAX);
    let after = wire::new_block(0, wire::block_header_hash(&last).to_vec().into(), vec![]);
    assert_eq!(
        wire::verify_chain_link(&last, &after),
        Err(ChainError::NotNext {
            previous: u64::MAX,
            found: 0
        })
    );
}

#[test]
fn a_block_without_data_hashes_as_one_without_transactions() {
    let mut block = wire::new_block(3, Bytes::new(), vec![]);
    block.data = None;
    wire::verify_data_hash(&block).unwrap();
}

#[test]
fn transaction_headers_decode_to_what_fabric_encoded() {
    let lines = vectors("tx");
    assert_eq!(lines.len(), 4);
    for fields in lines {
        let seq: u64 = fields[1].parse().unwrap();
        let tx: i32 = fields[2].parse().unwrap();
        let encoded = bytes(&fields[3]);
        let envelope = wire::decode_transaction(&encoded).unwrap();
        assert_eq!(
            Bytes::from(envelope.encode_to_vec()),
            encoded,
            "Envelope round trip"
        );
        assert_eq!(envelope.signature, format!("signature-{seq}-{tx}"));

        let payload: Payload = wire::envelope_payload(&envelope).unwrap();
        assert_eq!(payload.data, bytes(&fields[4]));
        assert_eq!(Bytes::from(payload.encode_to_vec()), envelope.payload);

        let channel_header = wire::channel_header(&payload).unwrap();
        let signature_header = wire::signature_header(&payload).unwrap();
        assert_eq!(
            Bytes::from(channel_header.encode_to_vec()),
            bytes(&fields[5])
        );
        assert_eq!(
            Bytes::from(signature_header.encode_to_vec()),
            bytes(&fields[6])
        );
        assert_eq!(
            signature_header,
            SignatureHeader {
                creator: format!("creator-of-{seq}-{tx}").into(),
                nonce: pattern(24, (seq * 3) as u8 + tx as u8).into(),
            }
        );
        // Fabric's ComputeTxID: hex(SHA-256(nonce ‖ creator)), which is the
        // data hash of a "block" holding those two.
        let tx_id: String = wire::block_data_hash(&BlockData {
            data: vec![
                signature_header.nonce.clone(),
                signature_header.creator.clone(),
            ],
        })
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
        assert_eq!(
            channel_header,
            ChannelHeader {
                r#type: HeaderType::EndorserTransaction as i32,
                version: 1,
                timestamp: Some(Timestamp {
                    seconds: 1_700_000_000 + seq as i64,
                    nanos: tx * 1000,
                }),
                channel_id: "vectors-channel".into(),
                tx_id,
                epoch: seq,
                extension: Bytes::from_static(b"extension"),
                tls_cert_hash: pattern(32, 0xa0).into(),
            }
        );
    }
}

#[test]
fn missing_or_malformed_headers_are_typed_errors() {
    let headless = Payload::default();
    assert_eq!(
        wire::channel_header(&headless),
        Err(WireError::MissingField("header"))
    );
    assert_eq!(
        wire::signature_header(&headless),
        Err(WireError::MissingField("header"))
    );
    assert_eq!(
        wire::block_channel_id(&Block::default()),
        Err(WireError::MissingField("data"))
    );
    // A transaction that is not an Envelope (a truncated length prefix).
    let truncated = Bytes::from_static(&[0x0a, 0x05, 0x01]);
    assert!(matches!(
        wire::decode_transaction(&truncated),
        Err(WireError::Malformed(_))
    ));
    let envelope = Envelope {
        payload: truncated,
        signature: Bytes::new(),
    };
    assert!(matches!(
        wire::envelope_payload(&envelope),
        Err(WireError::Malformed(_))
    ));
}

//! The framing of `adapters::codec`: round trips, Fabric's bytes, limits,
//! malformed frames and frames split across reads.
#![cfg(any(feature = "tokio-net", feature = "smol-net"))]

mod common;

use antientropy::adapters::codec::{FrameCodec, FrameError, MessageCodec, LENGTH_BYTES};
use antientropy::wire::{self, gossip::GossipMessage, WireError};
use bytes::{BufMut, BytesMut};
use prost::Message;

fn response() -> GossipMessage {
    let payloads = (1..=3).map(common::payload).collect();
    wire::state_response(42, common::channel(), payloads)
}

/// A frame holding `body` as it is, whatever it is.
fn raw_frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf
}

#[test]
fn a_frame_is_the_length_then_fabrics_noopsign_envelope() {
    for message in [
        response(),
        wire::state_request(7, common::channel(), 1, 11),
        GossipMessage::default(), // encodes to nothing: an empty envelope
    ] {
        let mut buf = BytesMut::new();
        FrameCodec::new()
            .encode_message(message.clone(), &mut buf)
            .unwrap();
        let envelope = wire::wrap_envelope(&message).encode_to_vec();
        assert_eq!(&buf[..LENGTH_BYTES], (envelope.len() as u32).to_be_bytes());
        assert_eq!(&buf[LENGTH_BYTES..], envelope, "{message:?}");
        let decoded = MessageCodec::new().decode_message(&mut buf).unwrap();
        assert_eq!(decoded, Some(message));
        assert!(buf.is_empty());
    }
}

#[test]
fn frames_split_anywhere_decode_once_whole() {
    let mut stream = BytesMut::new();
    let codec = FrameCodec::new();
    codec.encode_message(response(), &mut stream).unwrap();
    codec
        .encode_message(wire::state_request(1, common::channel(), 5, 6), &mut stream)
        .unwrap();
    let first_len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
    // Byte by byte: nothing until a frame is whole, then exactly it.
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        buf.put_u8(*byte);
        match codec.decode_frame(&mut buf).unwrap() {
            Some(frame) => frames.push((i, frame)),
            None => continue,
        }
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].0, LENGTH_BYTES + first_len - 1);
    assert_eq!(frames[1].0, stream.len() - 1);
    let message = wire::decode_envelope(frames[0].1.clone(), usize::MAX)
        .and_then(|e| wire::unwrap_envelope(&e, usize::MAX))
        .unwrap();
    assert_eq!(message, response());
}

#[test]
fn a_frame_over_the_limit_is_refused_before_it_is_buffered() {
    let codec = FrameCodec::with_max_frame(16);
    // Only the length arrived: refused at once.
    let mut buf = BytesMut::new();
    buf.put_u32(17);
    match codec.decode_frame(&mut buf) {
        Err(FrameError::TooLarge { size: 17, max: 16 }) => {}
        other => panic!("{other:?}"),
    }
    // A length of 4 GiB - 1 on a 64-bit target: refused, not allocated.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        FrameCodec::new().decode_frame(&mut buf),
        Err(FrameError::TooLarge { .. })
    ));
    // At the limit: fine.
    let mut buf = raw_frame(&[0; 16]);
    assert_eq!(codec.decode_frame(&mut buf).unwrap().unwrap().len(), 16);
    // Writing: refused, nothing written.
    let mut out = BytesMut::new();
    assert!(matches!(
        codec.encode_message(response(), &mut out),
        Err(FrameError::TooLarge { max: 16, .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn a_malformed_frame_is_a_typed_error_for_messages_and_bytes_for_frames() {
    let garbage = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let mut buf = raw_frame(&garbage);
    match MessageCodec::new().decode_message(&mut buf) {
        Err(FrameError::Malformed(WireError::Malformed(_))) => {}
        other => panic!("{other:?}"),
    }
    // The frame was consumed: the stream stays in step.
    assert!(buf.is_empty());
    // An envelope whose payload is not a GossipMessage.
    let envelope = wire::gossip::Envelope {
        payload: bytes::Bytes::from_static(&[0xff]),
        ..Default::default()
    };
    let mut buf = raw_frame(&envelope.encode_to_vec());
    assert!(matches!(
        MessageCodec::new().decode_message(&mut buf),
        Err(FrameError::Malformed(_))
    ));
    // FrameCodec does not look inside: the bytes go to the machine.
    let mut buf = raw_frame(&garbage);
    assert_eq!(
        FrameCodec::new().decode_frame(&mut buf).unwrap().unwrap(),
        &garbage[..]
    );
}

#[cfg(feature = "tokio-net")]
mod on_tokio {
    use super::*;
    use futures_lite::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{Encoder, FramedRead};

    #[tokio::test]
    async fn framed_read_over_a_trickling_stream() {
        let messages: Vec<GossipMessage> = (0..20)
            .map(|nonce| wire::state_request(nonce, common::channel(), nonce, nonce + 3))
            .chain([response()])
            .collect();
        let mut bytes = BytesMut::new();
        for message in &messages {
            MessageCodec::new()
                .encode(message.clone(), &mut bytes)
                .unwrap();
        }
        // A pipe of 3 bytes: every frame arrives in pieces.
        let (mut write, read) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move { write.write_all(&bytes).await });
        let got: Vec<GossipMessage> = FramedRead::new(read, MessageCodec::new())
            .map(Result::unwrap)
            .collect()
            .await;
        writer.await.unwrap().unwrap();
        assert_eq!(got, messages);
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_io_error() {
        let mut bytes = BytesMut::new();
        FrameCodec::new().encode(response(), &mut bytes).unwrap();
        let cut = &bytes[..bytes.len() - 1];
        let mut frames = FramedRead::new(cut, FrameCodec::new());
        assert!(matches!(frames.next().await, Some(Err(FrameError::Io(_)))));
        assert!(frames.next().await.is_none());
    }
}

#[cfg(feature = "smol-net")]
mod on_futures_io {
    use super::*;
    use asynchronous_codec::{Encoder, FramedRead};
    use futures_lite::StreamExt;

    #[test]
    fn framed_read_over_futures_io() {
        let mut bytes = BytesMut::new();
        let mut codec = FrameCodec::new();
        codec.encode(response(), &mut bytes).unwrap();
        codec.encode(response(), &mut bytes).unwrap();
        let got: Vec<GossipMessage> = futures_lite::future::block_on(
            FramedRead::new(futures_lite::io::Cursor::new(bytes), MessageCodec::new())
                .map(Result::unwrap)
                .collect(),
        );
        assert_eq!(got, [response(), response()]);
    }
}

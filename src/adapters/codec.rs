//! The framing (features `tokio-net`, `smol-net`): each frame is a
//! big-endian `u32` length, then that many bytes of an encoded Fabric
//! `Envelope` whose payload is the `GossipMessage` ([`wire::wrap_envelope`],
//! as Fabric's `NoopSign` makes it).
//!
//! ```text
//! +----------------+------------------------------------------+
//! | length: u32 BE | Envelope { payload: GossipMessage bytes } |
//! +----------------+------------------------------------------+
//! ```
//!
//! **Not Fabric's comm layer**: Fabric peers exchange the same `Envelope`s
//! over gRPC (`GossipStream`, HTTP/2, TLS); this framing is for peers that
//! both use it (the gRPC transport is `antientropy::fabric`, feature
//! `fabric-grpc`).
//!
//! [`FrameCodec`] yields each frame's bytes, which a
//! [`DriverHandle::send_bytes`](super::DriverHandle::send_bytes) hands to
//! the machine (so malformed messages are counted there and the connection
//! stays up); [`MessageCodec`] yields decoded messages instead. Both encode
//! a `GossipMessage` without copying its payloads twice. They implement
//! `tokio_util::codec::{Decoder, Encoder}` (feature `tokio-net`) and
//! `asynchronous_codec::{Decoder, Encoder}` (feature `smol-net`, for
//! futures-io streams).
//!
//! # Limits and errors
//!
//! A length above the maximum frame size ([`wire::DEFAULT_MAX_MESSAGE_SIZE`],
//! Fabric's 100 MiB gRPC limit, unless configured) is
//! [`FrameError::TooLarge`] before anything of the frame is buffered; the
//! stream cannot be resynchronised after it, so the reader should close the
//! connection (`FramedRead` ends the stream after any error). A frame is
//! buffered only as its bytes arrive, so a connection holds at most one
//! frame and the read buffer. Bytes left over at the end of the stream (a
//! cut frame) are [`FrameError::Io`].
//!
//! ```
//! # #[cfg(feature = "tokio-net")] {
//! use antientropy::adapters::codec::{FrameCodec, MessageCodec};
//! use antientropy::wire;
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let message = wire::state_request(7, "ch".into(), 1, 11);
//! let mut buf = BytesMut::new();
//! FrameCodec::new().encode(message.clone(), &mut buf).unwrap();
//! // The length, then exactly what Fabric's NoopSign envelope encodes to.
//! let envelope = prost::Message::encode_to_vec(&wire::wrap_envelope(&message));
//! assert_eq!(&buf[..4], (envelope.len() as u32).to_be_bytes());
//! assert_eq!(&buf[4..], envelope);
//! assert_eq!(MessageCodec::new().decode(&mut buf).unwrap(), Some(message));
//! # }
//! ```
//!
//! [`wire::wrap_envelope`]: crate::wire::wrap_envelope
//! [`wire::DEFAULT_MAX_MESSAGE_SIZE`]: crate::wire::DEFAULT_MAX_MESSAGE_SIZE

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::wire::gossip::GossipMessage;
use crate::wire::{self, WireError};

/// Bytes of a frame's length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's length exceeds the maximum frame size (reading: the
    /// stream cannot go on; writing: the message was not written).
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        size: usize,
        /// The maximum frame size.
        max: usize,
    },
    /// The frame is not an `Envelope` holding a `GossipMessage`
    /// ([`MessageCodec`] only).
    #[error("malformed frame: {0}")]
    Malformed(#[from] WireError),
    /// The stream failed, or ended inside a frame.
    #[error("frame stream: {0}")]
    Io(#[from] io::Error),
}

/// Frames of encoded `Envelope`s: decodes to each frame's [`Bytes`]
/// (sliced from the read buffer, no copy), encodes a [`GossipMessage`] in
/// its `NoopSign` envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_frame: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with Fabric's limit, [`wire::DEFAULT_MAX_MESSAGE_SIZE`].
    pub const fn new() -> Self {
        Self::with_max_frame(wire::DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A codec refusing frames longer than `max_frame` bytes (the length
    /// prefix not counted). Match the machines' `max_message_size`.
    pub const fn with_max_frame(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The maximum frame size.
    pub const fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes one whole frame off the front of `src`, if there is one.
    pub fn decode_frame(&self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = src.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let size = usize::try_from(length).unwrap_or(usize::MAX);
        if size > self.max_frame {
            return Err(FrameError::TooLarge {
                size,
                max: self.max_frame,
            });
        }
        if src.len() - LENGTH_BYTES < size {
            // Not reserved up front: four bytes from a peer must not make
            // us allocate the whole frame before it sends it.
            return Ok(None);
        }
        src.advance(LENGTH_BYTES);
        Ok(Some(src.split_to(size).freeze()))
    }

    /// Appends `message`'s frame to `dst`: the same bytes as
    /// `wire::wrap_envelope(&message)` encoded, behind the length.
    pub fn encode_message(
        &self,
        message: GossipMessage,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        // The envelope's one field, the message, encoded in place: a bytes
        // field and an embedded message are the same on the wire, and
        // `wrap_envelope` would encode the message into a buffer first.
        let envelope = EnvelopeView {
            payload: (message.encoded_len() > 0).then_some(message),
        };
        let size = envelope.encoded_len();
        let length = u32::try_from(size)
            .ok()
            .filter(|_| size <= self.max_frame)
            .ok_or(FrameError::TooLarge {
                size,
                max: self.max_frame,
            })?;
        dst.reserve(LENGTH_BYTES + size);
        dst.put_u32(length);
        envelope
            .encode(dst)
            .map_err(|error| FrameError::Io(io::Error::other(error)))
    }
}

/// A NoopSign `Envelope` as it is encoded: field 1 holds the message
/// (signature and secret envelope are empty, hence absent).
#[derive(Clone, PartialEq, Message)]
struct EnvelopeView {
    #[prost(message, optional, tag = "1")]
    payload: Option<GossipMessage>,
}

/// [`FrameCodec`] that also decodes each frame: an `Envelope` and the
/// `GossipMessage` in it, each within the maximum frame size. A frame that
/// does not decode is [`FrameError::Malformed`], which ends a `FramedRead`
/// stream: to count malformed messages and keep the connection, use
/// [`FrameCodec`] and [`DriverHandle::send_bytes`](super::DriverHandle::send_bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCodec {
    frames: FrameCodec,
}

impl MessageCodec {
    /// A codec with Fabric's limit, [`wire::DEFAULT_MAX_MESSAGE_SIZE`].
    pub const fn new() -> Self {
        Self::with_max_frame(wire::DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A codec refusing frames longer than `max_frame` bytes.
    pub const fn with_max_frame(max_frame: usize) -> Self {
        Self {
            frames: FrameCodec::with_max_frame(max_frame),
        }
    }

    /// Takes one whole frame off the front of `src` and decodes it.
    pub fn decode_message(&self, src: &mut BytesMut) -> Result<Option<GossipMessage>, FrameError> {
        let Some(frame) = self.frames.decode_frame(src)? else {
            return Ok(None);
        };
        let max = self.frames.max_frame;
        let envelope = wire::decode_envelope(frame, max)?;
        Ok(Some(wire::unwrap_envelope(&envelope, max)?))
    }
}

#[cfg(feature = "tokio-net")]
mod on_tokio {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::{Decoder, Encoder};

    use super::{FrameCodec, FrameError, MessageCodec};
    use crate::wire::gossip::GossipMessage;

    impl Decoder for FrameCodec {
        type Item = Bytes;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
            self.decode_frame(src)
        }
    }

    impl Encoder<GossipMessage> for FrameCodec {
        type Error = FrameError;

        fn encode(&mut self, message: GossipMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
            self.encode_message(message, dst)
        }
    }

    impl Decoder for MessageCodec {
        type Item = GossipMessage;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<GossipMessage>, FrameError> {
            self.decode_message(src)
        }
    }

    impl Encoder<GossipMessage> for MessageCodec {
        type Error = FrameError;

        fn encode(&mut self, message: GossipMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
            self.frames.encode_message(message, dst)
        }
    }
}

#[cfg(feature = "smol-net")]
mod on_futures_io {
    use asynchronous_codec::{Decoder, Encoder};
    use bytes::{Bytes, BytesMut};

    use super::{FrameCodec, FrameError, MessageCodec};
    use crate::wire::gossip::GossipMessage;

    impl Decoder for FrameCodec {
        type Item = Bytes;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
            self.decode_frame(src)
        }
    }

    impl Encoder for FrameCodec {
        type Item<'a> = GossipMessage;
        type Error = FrameError;

        fn encode(&mut self, message: GossipMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
            self.encode_message(message, dst)
        }
    }

    impl Decoder for MessageCodec {
        type Item = GossipMessage;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<GossipMessage>, FrameError> {
            self.decode_message(src)
        }
    }

    impl Encoder for MessageCodec {
        type Item<'a> = GossipMessage;
        type Error = FrameError;

        fn encode(&mut self, message: GossipMessage, dst: &mut BytesMut) -> Result<(), FrameError> {
            self.frames.encode_message(message, dst)
        }
    }
}

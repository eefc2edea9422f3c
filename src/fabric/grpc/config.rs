//! Settings and limits: Fabric's defaults, what Fabric refuses, and the
//! HTTP/2 windows and frame size both sides of a stream use.

use std::time::Duration;

use bytes::Bytes;

use crate::wire;

/// Fabric's minimum interval between a client's keepalive pings
/// (`peer.keepalive.minInterval`): a client pinging more often is sent
/// GOAWAY `too_many_pings`.
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of a [`GrpcTransport`](super::GrpcTransport). Defaults are Fabric's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// The channel: state messages are checked against its policy
    /// ([`Verifier::verify_by_channel`](crate::fabric::Verifier::verify_by_channel))
    /// and membership speaks for it.
    pub channel: Bytes,
    /// Largest gRPC message sent or received, each way. Fabric's 100 MiB
    /// ([`wire::DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// Messages queued for one stream, per send class (foreground and
    /// background each have a queue this long); past it
    /// [`Transport::send`](crate::adapters::Transport::send) refuses with
    /// [`SendError::Full`](crate::adapters::SendError::Full). Default 1024.
    pub queue: usize,
    /// How long the remote's `ConnEstablish` (and a `Ping`) may take:
    /// Fabric's `connTimeout`, 2 s.
    pub conn_timeout: Duration,
    /// TCP connect and TLS when dialling: Fabric's `dialTimeout`, 3 s.
    pub dial_timeout: Duration,
    /// TLS when accepting: Fabric's `peer.connectiontimeout`, 5 s.
    pub accept_timeout: Duration,
    /// First wait before dialling again after a failure. Default 100 ms.
    pub min_backoff: Duration,
    /// Longest wait; each failure in a row doubles it up to this. 10 s.
    pub max_backoff: Duration,
    /// HTTP/2 keepalive pings when we dial: Fabric's 60 s, and never less
    /// ([`MIN_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// A ping unanswered this long closes the connection: Fabric's 20 s.
    pub keepalive_timeout: Duration,
    /// A stream whose queued messages HTTP/2 takes none of for this long
    /// (its peer stopped reading: flow control is shut) is closed, and the
    /// machines hear it is down. Fabric has no such limit (a blocked
    /// stream holds its send buffer until the connection dies); pings do
    /// not catch it, since the peer's HTTP/2 still answers them. Default
    /// 30 s. After 2 s without progress the stream already stops holding
    /// back background answers to other peers.
    pub write_timeout: Duration,
}

impl GrpcConfig {
    /// Fabric's settings for `channel`.
    pub fn new(channel: impl Into<Bytes>) -> Self {
        Self {
            channel: channel.into(),
            max_message_size: wire::DEFAULT_MAX_MESSAGE_SIZE,
            queue: 1024,
            conn_timeout: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(3),
            accept_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(30),
        }
    }

    /// Names the first setting Fabric would refuse or that cannot work.
    pub fn validate(&self) -> Result<(), GrpcConfigError> {
        if self.keepalive_interval < MIN_KEEPALIVE_INTERVAL {
            return Err(GrpcConfigError::KeepaliveTooFrequent(
                self.keepalive_interval,
            ));
        }
        if self.max_message_size == 0 || self.queue == 0 {
            return Err(GrpcConfigError::Zero);
        }
        if self.min_backoff > self.max_backoff {
            return Err(GrpcConfigError::Backoff);
        }
        Ok(())
    }
}

/// A [`GrpcConfig`] that cannot work with Fabric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcConfigError {
    /// Fabric sends GOAWAY `too_many_pings` to a client pinging more often
    /// than every 60 s.
    #[error("keepalive every {0:?} is more often than Fabric's 60 s minimum")]
    KeepaliveTooFrequent(Duration),
    /// `max_message_size` or `queue` is zero.
    #[error("max_message_size and queue must be positive")]
    Zero,
    /// `min_backoff` exceeds `max_backoff`.
    #[error("min_backoff exceeds max_backoff")]
    Backoff,
}

/// HTTP/2 flow-control windows: a stream carries up to 100 MiB messages of
/// blocks, and hyper's 64 KiB default would make every response wait on
/// window updates.
pub(super) const WINDOW: u32 = 16 << 20;

/// The largest HTTP/2 frame we accept: 1 MiB rather than 16 KiB, so that a
/// response of blocks crosses in a few frames.
pub(super) const MAX_FRAME: u32 = 1 << 20;

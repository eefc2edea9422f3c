//! The dialling side: TLS, `Ping`, `GossipStream` and the handshake as
//! Fabric dials, and the loop that redials after a back-off.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use futures_lite::{Stream, StreamExt};
use rustls::pki_types::ServerName;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::GrpcMethod;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::codec::{EnvelopeCodec, Frame};
use super::config::{MAX_FRAME, WINDOW};
use super::stats::bump;
use super::stream::{outgoing, queues, remote_handshake, run, Out};
use super::{lock, Direction, GrpcTransport, Inner};
use crate::adapters::tokio::Tokio;
use crate::adapters::Runtime;
use crate::fabric::crypto::PkiId;
use crate::fabric::handshake::{conn_establish, HandshakeError};
use crate::fabric::tls::Conn;
use crate::wire::gossip::{Empty, Envelope};

impl GrpcTransport {
    /// Keeps a stream to the peer at `addr` up: dials (TLS naming
    /// `server_name`, the host or IP its certificate names; unused
    /// [`plaintext`](Self::plaintext)), pings, opens
    /// `GossipStream` and runs the handshake, as Fabric does; after a
    /// failure or a lost stream, dials again after a back-off
    /// (`min_backoff` doubling to `max_backoff`, less a random quarter).
    /// With `expected`, refuses another PKI-ID ([`HandshakeError::WrongPeer`])
    /// and does not dial while a stream to that peer is up (one stream per
    /// peer, whoever dialled). Stops when the last clone of the transport
    /// is dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn dial(
        &self,
        addr: SocketAddr,
        server_name: ServerName<'static>,
        expected: Option<PkiId>,
    ) {
        let weak = Arc::downgrade(&self.inner);
        let config = self.inner.config.clone();
        let mut gone = self.inner.gone.subscribe();
        self.inner.spawn(async move {
            let mut backoff = config.min_backoff;
            // Jitter only.
            let mut rng = fastrand::Rng::new();
            loop {
                if let Some(peer) = &expected {
                    // Someone else's stream to the peer serves: wait for it to go.
                    loop {
                        let Some(inner) = weak.upgrade() else { return };
                        if !lock(&inner.links).contains_key(peer) {
                            break;
                        }
                        drop(inner);
                        if gone.changed().await.is_err() {
                            return;
                        }
                    }
                }
                let started = Tokio::now();
                match dial_once(&weak, addr, server_name.clone(), expected.as_ref()).await {
                    Some(true) => {
                        // A stream that lasted starts the back-off over.
                        if Tokio::now().saturating_duration_since(started) > backoff {
                            backoff = config.min_backoff;
                        }
                    }
                    Some(false) => {}
                    None => return,
                }
                let jitter = backoff.mul_f64(rng.f64() / 4.0);
                tokio::time::sleep(backoff.saturating_sub(jitter)).await;
                backoff = backoff.saturating_mul(2).min(config.max_backoff);
            }
        });
    }
}

/// One dial: TLS, Ping, GossipStream, handshake, then the stream until it
/// ends. `Some(true)` if a stream ran, `Some(false)` if the dial or the
/// handshake failed, `None` once the transport is gone.
async fn dial_once(
    weak: &Weak<Inner>,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    expected: Option<&PkiId>,
) -> Option<bool> {
    let inner = weak.upgrade()?;
    let config = inner.config.clone();
    let failed = |inner: &Inner, _why: &dyn fmt::Display| {
        bump(&inner.counters.dial_failures);
        emit!(DEBUG, %addr, %_why, "dial failed");
        Some(false)
    };
    let conn = match &inner.tls {
        Some(tls) => tls.connect(addr, server_name, config.dial_timeout).await,
        None => Conn::connect_plain(addr, config.dial_timeout).await,
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(error) => return failed(&inner, &error),
    };
    let remote_cert = conn.info.peer_cert.clone();
    // The connection is made: the channel hands it to HTTP/2 once, and
    // never dials by itself (a lost stream is the dial loop's to redo).
    let slot = Arc::new(Mutex::new(Some(conn)));
    let connector = tower::service_fn(move |_| {
        let conn = lock(&slot).take();
        async move {
            conn.map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("connection used"))
        }
    });
    let endpoint = Endpoint::from_static("http://gossip.invalid")
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME);
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(channel) => channel,
        Err(error) => return failed(&inner, &error),
    };
    let mut client = Grpc::new(channel)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    match tokio::time::timeout(config.conn_timeout, ping(&mut client)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => return failed(&inner, &status),
        Err(_) => return failed(&inner, &"ping timed out"),
    }
    let hash = inner.own_cert_hash(Direction::Dialled);
    let ours = match conn_establish(inner.signer.as_ref(), hash, false) {
        Ok(ours) => ours,
        Err(error) => {
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    };
    let (queues, outbound) = queues(config.queue, &inner.gate);
    let _ = queues.push(Out::Envelope(ours));
    // A client stream cannot end with a status: `Refuse` is the server's.
    let stream = outgoing(outbound, weak.clone(), config.max_message_size).filter_map(Result::ok);
    // Fabric's server sends its ConnEstablish at once, so the response
    // headers come without waiting for ours to be checked.
    let opened =
        tokio::time::timeout(config.conn_timeout, gossip_stream(&mut client, stream)).await;
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            inner.refuse(
                addr,
                Direction::Dialled,
                HandshakeError::Closed(status.message().to_owned()),
            );
            return Some(false);
        }
        Err(_) => {
            inner.refuse(addr, Direction::Dialled, HandshakeError::Timeout);
            return Some(false);
        }
    };
    let info = match remote_handshake(&inner, &mut inbound, remote_cert.as_deref()).await {
        Ok(info) => info,
        Err(error) => {
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    };
    if let Some(expected) = expected {
        if *expected != info.pki_id {
            let error = HandshakeError::WrongPeer {
                expected: expected.clone(),
                got: info.pki_id,
            };
            inner.refuse(addr, Direction::Dialled, error);
            return Some(false);
        }
    }
    drop(inner);
    run(
        weak.clone(),
        info,
        queues,
        inbound,
        Direction::Dialled,
        addr,
    )
    .await;
    Some(true)
}

// `gossip.Gossip`'s two calls as tonic-prost-build generates them
// (`gen::gossip_client`: same paths and extensions), written out so that
// `GossipStream` runs with our codec.

async fn ready(client: &mut Grpc<Channel>) -> Result<(), Status> {
    client
        .ready()
        .await
        .map_err(|error| Status::unknown(format!("Service was not ready: {error}")))
}

/// `Ping`, as Fabric's dialler sends before opening the stream.
async fn ping(client: &mut Grpc<Channel>) -> Result<(), Status> {
    ready(client).await?;
    let mut request = Request::new(Empty {});
    request
        .extensions_mut()
        .insert(GrpcMethod::new("gossip.Gossip", "Ping"));
    let path = PathAndQuery::from_static("/gossip.Gossip/Ping");
    let codec = ProstCodec::<Empty, Empty>::default();
    client.unary(request, path, codec).await.map(drop)
}

/// Opens `GossipStream`, sending `outgoing`.
async fn gossip_stream(
    client: &mut Grpc<Channel>,
    outgoing: impl Stream<Item = Frame> + Send + 'static,
) -> Result<Response<Streaming<Envelope>>, Status> {
    ready(client).await?;
    let mut request = Request::new(outgoing);
    request
        .extensions_mut()
        .insert(GrpcMethod::new("gossip.Gossip", "GossipStream"));
    let path = PathAndQuery::from_static("/gossip.Gossip/GossipStream");
    client.streaming(request, path, EnvelopeCodec).await
}

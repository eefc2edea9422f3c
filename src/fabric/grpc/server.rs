//! The accepting side: TLS on each connection, HTTP/2, and the
//! `gossip.Gossip` service whose `GossipStream` runs the handshake server
//! side.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture};
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::{Grpc, NamedService};
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use super::codec::{EnvelopeCodec, Frame};
use super::config::{MAX_FRAME, WINDOW};
use super::stats::bump;
use super::stream::{outgoing, queues, remote_handshake, run, Out};
use super::{Direction, GrpcTransport, Inner};
use crate::adapters::tcp::accept;
use crate::fabric::handshake::{conn_establish, HandshakeError};
use crate::fabric::tls::{Conn, PeerInfo};
use crate::wire::gossip::{Empty, Envelope};

impl GrpcTransport {
    /// Serves `gossip.Gossip` on `listener` (TLS unless
    /// [`plaintext`](Self::plaintext), then HTTP/2): Fabric peers dial us
    /// here. Stops when the last clone of the transport is
    /// dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn serve(&self, listener: TcpListener) {
        let (accepted, incoming) = mpsc::channel::<Result<Conn, std::io::Error>>(64);
        let weak = Arc::downgrade(&self.inner);
        let pause = self.inner.config.min_backoff;
        self.inner.spawn(async move {
            loop {
                let (stream, remote) = accept(&listener, pause).await;
                let Some(inner) = weak.upgrade() else { return };
                let (tls, timeout, accepted) = (
                    inner.tls.clone(),
                    inner.config.accept_timeout,
                    accepted.clone(),
                );
                // TLS on its own task: a slow client holds up no one.
                inner.spawn(async move {
                    let conn = match tls {
                        Some(tls) => tls.accept(stream, remote, timeout).await,
                        None => Ok(Conn::plain(stream, remote)),
                    };
                    if let Ok(conn) = conn {
                        let _ = accepted.send(Ok(conn)).await;
                    }
                });
            }
        });
        let config = &self.inner.config;
        let service = Service {
            inner: Arc::downgrade(&self.inner),
            max_message_size: config.max_message_size,
        };
        let server = Server::builder()
            // Fabric's server side: pings every 2 h, 20 s to answer.
            .http2_keepalive_interval(Some(Duration::from_secs(7200)))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(WINDOW))
            .max_frame_size(Some(MAX_FRAME))
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(incoming));
        self.inner.spawn(async move {
            if let Err(_error) = server.await {
                emit!(WARN, %_error, "gRPC server ended");
            }
        });
    }
}

/// `gossip.Gossip` as tonic-prost-build generates it (`gen::gossip_server`,
/// same paths, limits and fallback), written out so that `GossipStream`
/// runs with our codec ([`EnvelopeCodec`]).
#[derive(Clone)]
struct Service {
    inner: Weak<Inner>,
    max_message_size: usize,
}

impl NamedService for Service {
    const NAME: &'static str = "gossip.Gossip";
}

impl tower::Service<http::Request<Body>> for Service {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max = Some(self.max_message_size);
        match request.uri().path() {
            "/gossip.Gossip/GossipStream" => {
                let weak = self.inner.clone();
                let method = tower::service_fn(move |request| gossip_stream(weak.clone(), request));
                Box::pin(async move {
                    let mut grpc = Grpc::new(EnvelopeCodec).apply_max_message_size_config(max, max);
                    Ok(grpc.streaming(method, request).await)
                })
            }
            "/gossip.Gossip/Ping" => {
                let method = tower::service_fn(|_: Request<Empty>| async {
                    Ok::<_, Status>(Response::new(Empty {}))
                });
                Box::pin(async move {
                    let codec = ProstCodec::<Empty, Empty>::default();
                    let mut grpc = Grpc::new(codec).apply_max_message_size_config(max, max);
                    Ok(grpc.unary(method, request).await)
                })
            }
            _ => Box::pin(async {
                let mut response = http::Response::new(Body::default());
                let headers = response.headers_mut();
                headers.insert(Status::GRPC_STATUS, (Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
                Ok(response)
            }),
        }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// `GossipStream`, server side: our `ConnEstablish` at once, the remote's
/// checked on a task of its own, then the stream runs.
async fn gossip_stream(
    weak: Weak<Inner>,
    request: Request<Streaming<Envelope>>,
) -> Result<Response<OutStream>, Status> {
    let inner = weak
        .upgrade()
        .ok_or_else(|| Status::unavailable("shutting down"))?;
    let Some(peer) = request.extensions().get::<PeerInfo>().cloned() else {
        return Err(Status::internal("no connection info"));
    };
    // With TLS, Fabric refuses before sending anything of its own.
    let remote_cert = peer.peer_cert;
    if inner.tls.is_some() && remote_cert.is_none() {
        inner.refuse(
            peer.remote,
            Direction::Accepted,
            HandshakeError::NoClientCertificate,
        );
        return Err(Status::unauthenticated("no TLS certificate"));
    }
    let hash = inner.own_cert_hash(Direction::Accepted);
    let ours = conn_establish(inner.signer.as_ref(), hash, false)
        .map_err(|error| Status::internal(error.to_string()))?;
    let (queues, outbound) = queues(inner.config.queue, &inner.gate);
    let _ = queues.push(Out::Envelope(ours));
    let mut inbound = request.into_inner();
    let remote = peer.remote;
    let task = weak.clone();
    inner.spawn(async move {
        let weak = task;
        let Some(inner) = weak.upgrade() else { return };
        let info = match remote_handshake(&inner, &mut inbound, remote_cert.as_deref()).await {
            Ok(info) => info,
            Err(error) => {
                // The stream ends with the reason, as Fabric's handler
                // returning the error does.
                let _ = queues.push(Out::Refuse(Status::unauthenticated(error.to_string())));
                inner.refuse(remote, Direction::Accepted, error);
                return;
            }
        };
        if info.probe {
            // Answered (our ConnEstablish) and ended with OK; not registered.
            bump(&inner.counters.probes);
            return;
        }
        drop(inner);
        run(weak, info, queues, inbound, Direction::Accepted, remote).await;
    });
    let stream = outgoing(outbound, weak, inner.config.max_message_size);
    Ok(Response::new(Box::pin(stream)))
}

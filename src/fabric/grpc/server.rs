//! The accepting side: TLS on each connection, HTTP/2, and the
//! `gossip.Gossip` service whose `GossipStream` runs the handshake server
//! side.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_lite::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use super::config::{MAX_FRAME, WINDOW};
use super::stats::bump;
use super::stream::{outgoing, remote_handshake, run, Out};
use super::{Direction, GrpcTransport, Inner};
use crate::adapters::tcp::accept;
use crate::fabric::gen::gossip_server::{Gossip, GossipServer};
use crate::fabric::handshake::{conn_establish, HandshakeError};
use crate::fabric::tls::{PeerInfo, TlsConn};
use crate::wire::gossip::{Empty, Envelope};

impl GrpcTransport {
    /// Serves `gossip.Gossip` on `listener` (TLS, then HTTP/2): Fabric
    /// peers dial us here. Stops when the last clone of the transport is
    /// dropped.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn serve(&self, listener: TcpListener) {
        let (accepted, incoming) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
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
                    if let Ok(conn) = tls.accept(stream, remote, timeout).await {
                        let _ = accepted.send(Ok(conn)).await;
                    }
                });
            }
        });
        let config = &self.inner.config;
        let service = GossipServer::new(Service {
            inner: Arc::downgrade(&self.inner),
        })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
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

/// The server side of `gossip.Gossip`.
struct Service {
    inner: Weak<Inner>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Gossip for Service {
    type GossipStreamStream = OutStream;

    async fn gossip_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<OutStream>, Status> {
        let inner = self
            .inner
            .upgrade()
            .ok_or_else(|| Status::unavailable("shutting down"))?;
        let Some(peer) = request.extensions().get::<PeerInfo>().cloned() else {
            return Err(Status::internal("no connection info"));
        };
        // Fabric refuses before sending anything of its own.
        let Some(remote_cert) = peer.peer_cert else {
            inner.refuse(
                peer.remote,
                Direction::Accepted,
                HandshakeError::NoClientCertificate,
            );
            return Err(Status::unauthenticated("no TLS certificate"));
        };
        let ours = conn_establish(inner.signer.as_ref(), inner.tls.server_cert_hash(), false)
            .map_err(|error| Status::internal(error.to_string()))?;
        let (queue, outbound) = mpsc::channel(inner.config.queue);
        let _ = queue.try_send(Out::Envelope(ours));
        let mut inbound = request.into_inner();
        let weak = self.inner.clone();
        let remote = peer.remote;
        inner.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let info = match remote_handshake(&inner, &mut inbound, Some(&remote_cert)).await {
                Ok(info) => info,
                Err(error) => {
                    // The stream ends with the reason, as Fabric's handler
                    // returning the error does.
                    let _ = queue.try_send(Out::Refuse(Status::unauthenticated(error.to_string())));
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
            run(weak, info, queue, inbound, Direction::Accepted, remote).await;
        });
        let stream = outgoing(outbound, self.inner.clone(), inner.config.max_message_size);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
}

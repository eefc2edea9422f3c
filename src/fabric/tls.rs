//! Mutual TLS as Fabric's gossip layer uses it (rustls, ring): ALPN `h2`
//! both ways (Fabric's grpc-go client refuses a server that negotiates
//! none), the server *requesting* a client certificate and accepting any
//! (Go's `RequestClientCert`: the handshake binds it, and refuses a remote
//! that sent none), the client checking the server against the given roots.
//! Both sides keep the remote's leaf certificate, whose hash the handshake
//! checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CipherSuite, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::handshake::cert_hash;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file holds no certificate or key of the expected kind.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the settings (e.g. a key that is not the certificate's).
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Our TLS certificates and whom we trust, as PEM (the files of a Fabric
/// peer's `peer.tls.*`).
#[derive(Clone)]
pub struct TlsIdentity {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    server_cert_hash: Bytes,
    client_cert_hash: Bytes,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn key(what: &'static str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit, so that no process-wide default provider is needed.
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM before AES-256-GCM, as Go's crypto/tls (Fabric's side)
    // orders them: four fewer AES rounds per block, and sealing and opening
    // every byte of every block is a large part of a catch-up's CPU time.
    // The same suites are offered; only the preference changes.
    let aes_128 = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    provider
        .cipher_suites
        .sort_by_key(|suite| (suite.tls13().is_none(), !aes_128.contains(&suite.suite())));
    Arc::new(provider)
}

const H2: &[u8] = b"h2";

impl TlsIdentity {
    /// Our server certificate chain and key, our client certificate chain
    /// and key (`None`: the server's, as Fabric does when
    /// `peer.tls.clientCert` is unset), and the roots a server we dial must
    /// chain to (Fabric: `peer.tls.rootcert` and the channel's TLS CAs).
    pub fn from_pem(
        server_cert: &[u8],
        server_key: &[u8],
        client: Option<(&[u8], &[u8])>,
        roots: &[u8],
    ) -> Result<Self, TlsError> {
        let server_chain = certs("server certificate", server_cert)?;
        let (client_chain, client_key) = match client {
            Some((cert, k)) => (certs("client certificate", cert)?, key("client key", k)?),
            None => (server_chain.clone(), key("server key", server_key)?),
        };
        let mut store = rustls::RootCertStore::empty();
        for root in certs("root certificates", roots)? {
            store.add(root)?;
        }
        let server_cert_hash = cert_hash(&server_chain[0]);
        let client_cert_hash = cert_hash(&client_chain[0]);
        let provider = provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(AnyClientCert(provider.clone())))
            .with_single_cert(server_chain, key("server key", server_key)?)?;
        server.alpn_protocols = vec![H2.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_client_auth_cert(client_chain, client_key)?;
        client.alpn_protocols = vec![H2.to_vec()];
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            server_cert_hash,
            client_cert_hash,
        })
    }

    /// For conformance tests (Fabric's `TestHandshake` cases): dial without
    /// a client certificate. Fabric refuses such a connection.
    pub fn without_client_certificate(mut self) -> Self {
        let mut client = (*self.client).clone();
        client.client_auth_cert_resolver = Arc::new(NoClientCert);
        self.client = Arc::new(client);
        self
    }

    /// For conformance tests: claim certificate hashes that are not ours.
    /// The remote refuses the handshake with a hash mismatch.
    pub fn with_wrong_cert_hash(mut self) -> Self {
        self.server_cert_hash = cert_hash(b"not our server certificate");
        self.client_cert_hash = cert_hash(b"not our client certificate");
        self
    }

    /// The hash our `ConnEstablish` carries when we accept.
    pub(crate) fn server_cert_hash(&self) -> Bytes {
        self.server_cert_hash.clone()
    }

    /// The hash our `ConnEstablish` carries when we dial.
    pub(crate) fn client_cert_hash(&self) -> Bytes {
        self.client_cert_hash.clone()
    }

    /// Accepts TLS on `stream` within `timeout` (Fabric's
    /// `peer.connectiontimeout`, 5 s, bounds the same).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let _ = stream.set_nodelay(true);
        let tls = tokio::time::timeout(
            timeout,
            TlsAcceptor::from(self.server.clone()).accept(stream),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS accept timed out"))??;
        let peer_cert = leaf(tls.get_ref().1.peer_certificates());
        Ok(Conn {
            stream: ConnStream::Server(Box::new(tls)),
            info: PeerInfo { remote, peer_cert },
        })
    }

    /// Dials `addr` and runs TLS with `server_name` (the host or IP the
    /// server's certificate must name), within `timeout`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        server_name: ServerName<'static>,
        timeout: Duration,
    ) -> io::Result<Conn> {
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            TlsConnector::from(self.client.clone())
                .connect(server_name, stream)
                .await
        };
        let tls = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "dial timed out"))??;
        let peer_cert = leaf(tls.get_ref().1.peer_certificates());
        Ok(Conn {
            stream: ConnStream::Client(Box::new(tls)),
            info: PeerInfo {
                remote: addr,
                peer_cert,
            },
        })
    }
}

fn leaf(certs: Option<&[CertificateDer<'_>]>) -> Option<Bytes> {
    certs
        .and_then(|certs| certs.first())
        .map(|cert| Bytes::copy_from_slice(cert))
}

/// What a connection knows of its remote: its address and the leaf
/// certificate it presented (DER), if any. The server finds it in each
/// request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub(crate) remote: SocketAddr,
    pub(crate) peer_cert: Option<Bytes>,
}

enum ConnStream {
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Without TLS (Fabric's `peer.tls.enabled: false`).
    Plain(TcpStream),
}

/// A connection, TLS or plaintext, and what it knows of its remote.
pub(crate) struct Conn {
    stream: ConnStream,
    pub(crate) info: PeerInfo,
}

impl Conn {
    /// `stream` without TLS: its remote presented no certificate.
    pub(crate) fn plain(stream: TcpStream, remote: SocketAddr) -> Self {
        let _ = stream.set_nodelay(true);
        Self {
            stream: ConnStream::Plain(stream),
            info: PeerInfo {
                remote,
                peer_cert: None,
            },
        }
    }

    /// Dials `addr` without TLS, within `timeout`.
    pub(crate) async fn connect_plain(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "dial timed out"))??;
        Ok(Self::plain(stream, addr))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ConnStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ConnStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ConnStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            ConnStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ConnStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ConnStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            ConnStream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ConnStream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ConnStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            ConnStream::Server(s) => s.is_write_vectored(),
            ConnStream::Client(s) => s.is_write_vectored(),
            ConnStream::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ConnStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ConnStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ConnStream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            ConnStream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ConnStream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ConnStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Requests a client certificate and accepts any, as Go's
/// `tls.RequestClientCert` does: TLS still checks that the client holds
/// the certificate's key (its handshake signature), and Fabric's handshake
/// then binds the certificate to a verified MSP identity by its hash.
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A missing certificate is refused by the handshake, with Fabric's
        // "no TLS certificate", not by TLS.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents no client certificate ([`TlsIdentity::without_client_certificate`]).
#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

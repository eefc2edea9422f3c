//! Fabric's gossip comm layer (feature `fabric-grpc`): talk to real Fabric
//! peers.
//!
//! Fabric peers exchange state transfer messages on `gossip.Gossip`'s
//! `GossipStream`: one long-lived bidirectional gRPC stream per pair of
//! peers, over mutual TLS, opened by a signed handshake that binds the TLS
//! certificate to the peer's MSP identity. [`GrpcTransport`] is that layer
//! for the machines:
//!
//! - **gRPC** ([`GrpcTransport::serve`], [`GrpcTransport::dial`]): the
//!   `GossipStream` and `Ping` methods (tonic; the service code is
//!   generated from `proto/` and committed), Fabric's limits (100 MiB
//!   messages each way; HTTP/2 keepalive no more often than Fabric's 60 s
//!   minimum, [`GrpcConfigError::KeepaliveTooFrequent`]), dialling as
//!   Fabric does (connect and TLS within 3 s, `Ping` within 2 s, the
//!   stream, the handshake), reconnection with a jittered back-off.
//! - **TLS** ([`TlsIdentity`], rustls with ring): ALPN `h2` both ways; the
//!   server requests a client certificate and accepts any, as Fabric's Go
//!   server does (`RequestClientCert`), since the handshake binds it. Or
//!   none ([`GrpcTransport::plaintext`]), for peers with
//!   `peer.tls.enabled: false`: the handshake is still signed and checked,
//!   its certificate hash is empty, as Fabric's. Bound to no connection, a
//!   `ConnEstablish` can then be replayed by anyone who saw one, as with
//!   Fabric without TLS: plaintext authenticates nobody on an open network.
//! - **Handshake** ([`handshake`]): each side sends its `ConnEstablish`
//!   (PKI-ID, identity, the SHA-256 of its own TLS leaf certificate) signed
//!   by the host's [`Signer`] at once, and checks the remote's with the
//!   host's [`Verifier`] in Fabric's order; each refusal is a
//!   [`HandshakeError`] ([`GrpcTransport::refusals`]), and nothing of a
//!   refused stream reaches the machines.
//! - **Routing**: state requests go to the attached responder's driver,
//!   responses to the requester's, each named by the remote's PKI-ID; a
//!   reply goes back on the stream the request came in on (one stream per
//!   PKI-ID, whoever dialled: an accepted stream replaces an older one, as
//!   Fabric's does). State messages from a remote whose handshake fails
//!   [`Verifier::verify_by_channel`] are dropped, as Fabric's state
//!   transfer drops them. Streams coming up and going are the machines'
//!   connection events (`Event::PeerConnected`/`PeerDisconnected`,
//!   `ResponderEvent::PeerDisconnected`).
//! - **Membership** ([`GrpcTransport::publish_membership`], optional):
//!   periodic signed Alive and StateInfo so that Fabric peers list us on
//!   the channel and ask us for blocks; their StateInfo (pushed, or in
//!   answer to our pull request) becomes the requester's
//!   `Event::Membership`.
//!
//! [`P256Signer`] and [`MspVerifier`] do what Fabric's MSP does with
//! ECDSA P-256 X.509 identities (PKI-ID = SHA-256 of MSP ID and PEM,
//! low-S DER signatures over SHA-256, CA check); a host with an HSM or
//! channel policies implements the traits itself.
//!
//! What it does not do: the rest of gossip (block push and pull, leader
//! election, forwarding others' membership, private data dissemination),
//! TLS without client certificates, identity
//! expiry and revocation, and Fabric's same-org "identity switch" on a
//! redial.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use antientropy::adapters::tokio as rt;
//! use antientropy::fabric::{GrpcConfig, GrpcTransport, MspVerifier, P256Signer, TlsIdentity};
//! # let (cert, key, tls_cert, tls_key, ca) = (b"".as_slice(), "", b"".as_slice(), b"".as_slice(), b"".as_slice());
//!
//! let signer = Arc::new(P256Signer::from_pem("Org1MSP", cert, key)?);
//! let verifier = Arc::new(MspVerifier::new().with_msp("Org1MSP", ca)?);
//! let tls = TlsIdentity::from_pem(tls_cert, tls_key, None, ca)?;
//! let transport = GrpcTransport::new(GrpcConfig::new("mychannel"), tls, signer, verifier)?;
//! // Then: drivers whose hosts send through `transport.clone()`,
//! // `transport.attach_requester(handle.downgrade())`, and
//! // `transport.dial(addr, server_name, None)` or `transport.serve(listener)`.
//! # Ok(()) }
//! ```

mod crypto;
// The service code tonic-prost-build makes of `proto/` (committed; see
// tests/generated_code.rs).
#[allow(missing_docs, clippy::all, unreachable_pub)]
mod gen {
    include!("gen/gossip.rs");
}
mod grpc;
pub mod handshake;
mod membership;
mod tls;

pub use crypto::{
    pki_id_of, verify_p256, CryptoError, MspVerifier, P256Signer, PkiId, SerializedIdentity,
    Signer, Verifier,
};
pub use gen::{gossip_client, gossip_server};
pub use grpc::{
    Direction, GrpcConfig, GrpcConfigError, GrpcStats, GrpcTransport, Refusal,
    MIN_KEEPALIVE_INTERVAL,
};
pub use handshake::{ConnInfo, HandshakeError};
pub use membership::{channel_mac, StateInfoError};
/// rustls' name of the server a dial expects (a host name or an IP).
pub use rustls::pki_types::ServerName;
pub use tls::{TlsError, TlsIdentity};

//! Fabric's connection handshake (`authenticateRemotePeer`,
//! `gossip/comm/comm_impl.go`): each side sends a signed `ConnEstablish`
//! at once, then checks the remote's, in Fabric's order. Pure functions;
//! the transport sends, waits (at most `conn_timeout`) and calls them.

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use super::crypto::{CryptoError, PkiId, Signer, Verifier};
use crate::wire::gossip::gossip_message::{Content, Tag};
use crate::wire::gossip::{ConnEstablish, Envelope, GossipMessage};

/// What the handshake established about the remote: Fabric's
/// `ConnectionInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Its PKI-ID.
    pub pki_id: PkiId,
    /// Its serialized identity.
    pub identity: Bytes,
    /// The bytes it signed (its `ConnEstablish` payload, as received): what
    /// Fabric's state transfer checks the channel's Readers policy over,
    /// for every request on the connection.
    pub auth_payload: Bytes,
    /// Its signature over [`auth_payload`](Self::auth_payload).
    pub auth_signature: Bytes,
    /// It asked only to probe (`Handshake()`): answer, then close.
    pub probe: bool,
}

/// Why a remote's handshake was refused. Each is what Fabric refuses, with
/// Fabric's reason in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The remote presented no TLS certificate.
    #[error("no TLS certificate")]
    NoClientCertificate,
    /// No message arrived within `conn_timeout`.
    #[error("timed out waiting for the remote's ConnEstablish")]
    Timeout,
    /// The stream ended or failed before the remote's message (its gRPC
    /// status, e.g. the remote refusing our handshake).
    #[error("stream closed during the handshake: {0}")]
    Closed(String),
    /// The first message is not a `GossipMessage` in an `Envelope`.
    #[error("malformed handshake message")]
    Malformed,
    /// The first message is not a `ConnEstablish`.
    #[error("wrong type")]
    WrongType,
    /// The `ConnEstablish` names no PKI-ID.
    #[error("no PKI-ID")]
    NoPkiId,
    /// The identity is invalid (`ValidateIdentity`).
    #[error("invalid identity: {0}")]
    InvalidIdentity(CryptoError),
    /// The PKI-ID is not the identity's.
    #[error("identity doesn't match the computed pkiID")]
    PkiIdMismatch,
    /// The TLS certificate hash is not the hash of the certificate the
    /// remote presented on this connection.
    #[error("TLS certificate hash mismatch")]
    TlsHashMismatch,
    /// The signature over the `ConnEstablish` does not verify.
    #[error("bad signature: {0}")]
    BadSignature(CryptoError),
    /// We dialled a peer expecting another PKI-ID.
    #[error("authentication failure: expected {expected}, got {got}")]
    WrongPeer {
        /// The PKI-ID we dialled for.
        expected: PkiId,
        /// The PKI-ID that answered.
        got: PkiId,
    },
    /// Our own signer failed.
    #[error("signing our ConnEstablish: {0}")]
    Signing(CryptoError),
}

/// SHA-256 of a certificate's DER: what `ConnEstablish.tls_cert_hash`
/// holds (`gossip/comm/crypto.go`).
pub fn cert_hash(der: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(der))
}

/// Our `ConnEstablish`, signed: tag `EMPTY`, nonce 0, no channel; the
/// signature is over the exact payload bytes. `tls_cert_hash` is the hash
/// of our certificate on this connection (client certificate when we
/// dial, server certificate when we accept).
pub fn conn_establish(
    signer: &dyn Signer,
    tls_cert_hash: Bytes,
    probe: bool,
) -> Result<Envelope, HandshakeError> {
    let message = GossipMessage {
        nonce: 0,
        channel: Bytes::new(),
        tag: Tag::Empty as i32,
        content: Some(Content::Conn(ConnEstablish {
            pki_id: signer.pki_id().0,
            identity: signer.identity(),
            tls_cert_hash,
            probe,
        })),
    };
    let payload = Bytes::from(message.encode_to_vec());
    let signature = signer.sign(&payload).map_err(HandshakeError::Signing)?;
    Ok(Envelope {
        payload,
        signature,
        secret_envelope: None,
    })
}

/// Checks the remote's first envelope as Fabric does, in its order: a
/// `ConnEstablish` with a PKI-ID; the identity valid and its PKI-ID the one
/// claimed; the TLS hash that of the certificate the remote presented on
/// this connection (`remote_cert`, the leaf's DER; `None` when TLS is off);
/// the signature over the bytes as received.
pub fn verify_conn_establish(
    envelope: &Envelope,
    remote_cert: Option<&[u8]>,
    verifier: &dyn Verifier,
) -> Result<ConnInfo, HandshakeError> {
    let message =
        GossipMessage::decode(envelope.payload.clone()).map_err(|_| HandshakeError::Malformed)?;
    let Some(Content::Conn(conn)) = message.content else {
        return Err(HandshakeError::WrongType);
    };
    if conn.pki_id.is_empty() {
        return Err(HandshakeError::NoPkiId);
    }
    // The identity mapper's Put: valid, and the PKI-ID its own.
    if conn.identity.is_empty() {
        return Err(HandshakeError::InvalidIdentity(
            CryptoError::InvalidIdentity("empty".into()),
        ));
    }
    verifier
        .validate_identity(&conn.identity)
        .map_err(HandshakeError::InvalidIdentity)?;
    let computed = verifier
        .pki_id_of(&conn.identity)
        .map_err(HandshakeError::InvalidIdentity)?;
    let pki_id = PkiId(conn.pki_id);
    if computed != pki_id {
        return Err(HandshakeError::PkiIdMismatch);
    }
    if let Some(der) = remote_cert {
        if cert_hash(der) != conn.tls_cert_hash {
            return Err(HandshakeError::TlsHashMismatch);
        }
    }
    if envelope.signature.is_empty() {
        return Err(HandshakeError::BadSignature(CryptoError::BadSignature(
            "empty".into(),
        )));
    }
    verifier
        .verify(&conn.identity, &envelope.signature, &envelope.payload)
        .map_err(HandshakeError::BadSignature)?;
    Ok(ConnInfo {
        pki_id,
        identity: conn.identity,
        auth_payload: envelope.payload.clone(),
        auth_signature: envelope.signature.clone(),
        probe: conn.probe,
    })
}

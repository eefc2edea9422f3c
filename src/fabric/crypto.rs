//! Who we are and whom we believe: the host's MSP as two traits, and an
//! ECDSA P-256 implementation of each that does what Fabric's MSP does with
//! an X.509 identity (PKI-ID, low-S DER signatures over SHA-256, a CA check).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;
use prost::Message;
use sha2::{Digest, Sha256};
use x509_cert::der::Encode;
use x509_cert::Certificate;

/// A peer's PKI-ID: what Fabric's comm layer names a peer by. With Fabric's
/// MSP it is `SHA-256(mspid ‖ PEM of the certificate)` ([`pki_id_of`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PkiId(pub Bytes);

impl fmt::Debug for PkiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex, short: PKI-IDs are 32-byte hashes and show up in every log.
        for byte in self.0.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        if self.0.len() > 8 {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Display for PkiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl From<&[u8]> for PkiId {
    fn from(bytes: &[u8]) -> Self {
        Self(Bytes::copy_from_slice(bytes))
    }
}

/// Fabric's `msp.SerializedIdentity`: the identity bytes every Fabric
/// message carries (`ConnEstablish.identity`, `AliveMessage.identity`).
#[derive(Clone, PartialEq, Message)]
pub struct SerializedIdentity {
    /// The MSP the certificate belongs to.
    #[prost(string, tag = "1")]
    pub mspid: String,
    /// The X.509 certificate as PEM, exactly as sent: the PKI-ID hashes
    /// these bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub id_bytes: Bytes,
}

/// Why an identity or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The identity is not one the verifier accepts (not a
    /// `SerializedIdentity`, unknown MSP, not one PEM certificate, not
    /// issued by the MSP's CA, …).
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
    /// The signature does not verify (not DER, high S, wrong key or bytes).
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The identity is valid but the channel's policy refuses it.
    #[error("refused by the channel's policy: {0}")]
    Policy(String),
    /// Signing failed (an HSM unreachable, a key refused).
    #[error("signing failed: {0}")]
    Signing(String),
    /// A key or certificate file could not be read.
    #[error("bad key material: {0}")]
    KeyMaterial(String),
}

/// Our side of the MSP: the identity we present and the key that signs for
/// it (a file key, an HSM, the host's MSP). Fabric's `MessageCryptoService`
/// `Sign`, and the identity mapper's view of ourselves.
pub trait Signer: Send + Sync + 'static {
    /// Our serialized identity (`SerializedIdentity` bytes).
    fn identity(&self) -> Bytes;
    /// Our PKI-ID, as the remote's [`Verifier::pki_id_of`] computes it.
    fn pki_id(&self) -> PkiId;
    /// Signs `message` (the exact bytes sent) as the remote's verifier
    /// expects: for Fabric's MSP, a DER ECDSA signature over SHA-256 with
    /// low S.
    fn sign(&self, message: &[u8]) -> Result<Bytes, CryptoError>;
}

/// The remote's side of the MSP: Fabric's `MessageCryptoService` methods
/// the comm layer and state transfer use. Called for each handshake and
/// each signed membership message, never per state message.
pub trait Verifier: Send + Sync + 'static {
    /// The PKI-ID of a serialized identity (`GetPKIidOfCert`).
    fn pki_id_of(&self, identity: &[u8]) -> Result<PkiId, CryptoError>;
    /// Whether the identity is valid (`ValidateIdentity`: known MSP, issued
    /// by its CA, not expired).
    fn validate_identity(&self, identity: &[u8]) -> Result<(), CryptoError>;
    /// Whether `signature` is the identity's over `message` (`Verify`).
    fn verify(&self, identity: &[u8], signature: &[u8], message: &[u8]) -> Result<(), CryptoError>;
    /// Whether the identity may read `channel`, shown by its signature over
    /// `message` (`VerifyByChannel`: the channel's Readers policy). Fabric
    /// checks it for every state message, over the handshake's signed
    /// bytes. Default: [`verify`](Self::verify) alone, i.e. every valid
    /// identity reads every channel; a host with channel policies
    /// overrides it.
    fn verify_by_channel(
        &self,
        channel: &[u8],
        identity: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Result<(), CryptoError> {
        let _ = channel;
        self.verify(identity, signature, message)
    }
}

/// Fabric's PKI-ID of an MSP identity: `SHA-256(mspid ‖ id_bytes)`, over
/// the PEM bytes as sent (`internal/peer/gossip/mcs.go`), not the DER.
pub fn pki_id_of(identity: &SerializedIdentity) -> PkiId {
    let mut hash = Sha256::new();
    hash.update(identity.mspid.as_bytes());
    hash.update(&identity.id_bytes);
    PkiId(Bytes::copy_from_slice(&hash.finalize()))
}

/// A [`Signer`] with an ECDSA P-256 key in memory (a Fabric keystore file):
/// low-S DER signatures over SHA-256, as Fabric's BCCSP makes them.
pub struct P256Signer {
    key: SigningKey,
    identity: Bytes,
    pki_id: PkiId,
}

impl fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P256Signer")
            .field("pki_id", &self.pki_id)
            .finish_non_exhaustive()
    }
}

impl P256Signer {
    /// The signer of `mspid`'s identity `cert_pem` (the certificate's PEM,
    /// sent as is) with `key_pem`, a PKCS#8 `PRIVATE KEY` (as Fabric's
    /// keystore and `cryptogen` write it) or a SEC1 `EC PRIVATE KEY`.
    pub fn from_pem(mspid: &str, cert_pem: &[u8], key_pem: &str) -> Result<Self, CryptoError> {
        let key = SigningKey::from_pkcs8_pem(key_pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(key_pem).map(SigningKey::from))
            .map_err(|e| CryptoError::KeyMaterial(format!("P-256 private key: {e}")))?;
        let identity = SerializedIdentity {
            mspid: mspid.to_owned(),
            id_bytes: Bytes::copy_from_slice(cert_pem),
        };
        let certificate = certificate_of(&identity.id_bytes)?;
        let public = verifying_key(&certificate)?;
        if public != *key.verifying_key() {
            return Err(CryptoError::KeyMaterial(
                "the key is not the certificate's".into(),
            ));
        }
        let pki_id = pki_id_of(&identity);
        Ok(Self {
            key,
            identity: identity.encode_to_vec().into(),
            pki_id,
        })
    }
}

impl Signer for P256Signer {
    fn identity(&self) -> Bytes {
        self.identity.clone()
    }

    fn pki_id(&self) -> PkiId {
        self.pki_id.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Bytes, CryptoError> {
        // SHA-256 inside (p256's default digest); Fabric's verifier refuses
        // a high S, which RFC 6979 signatures have half of the time.
        let signature: Signature = self.key.sign(message);
        Ok(Bytes::copy_from_slice(
            signature.normalize_s().to_der().as_bytes(),
        ))
    }
}

/// A [`Verifier`] of X.509 identities with ECDSA P-256 keys, as Fabric's
/// MSP checks them: the identity names a known MSP, holds exactly one PEM
/// certificate (nothing after it but a newline), issued (ECDSA with
/// SHA-256) by one of that MSP's CA certificates; signatures are DER, low
/// S, over SHA-256. It does not check validity dates, revocation or NodeOUs,
/// and [`verify_by_channel`](Verifier::verify_by_channel) admits every
/// valid identity: a host with channel policies wraps it.
#[derive(Debug, Clone, Default)]
pub struct MspVerifier {
    /// MSP ID → its CAs' public keys.
    msps: BTreeMap<String, Vec<VerifyingKey>>,
}

impl MspVerifier {
    /// A verifier that knows no MSP yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts identities of `mspid` issued by a CA in `ca_pem` (one or more
    /// PEM certificates with P-256 keys).
    pub fn with_msp(mut self, mspid: &str, ca_pem: &[u8]) -> Result<Self, CryptoError> {
        let cas = Certificate::load_pem_chain(ca_pem)
            .map_err(|e| CryptoError::KeyMaterial(format!("CA certificates: {e}")))?;
        if cas.is_empty() {
            return Err(CryptoError::KeyMaterial("no CA certificate".into()));
        }
        let keys = cas
            .iter()
            .map(verifying_key)
            .collect::<Result<Vec<_>, _>>()?;
        self.msps.entry(mspid.to_owned()).or_default().extend(keys);
        Ok(self)
    }

    fn decode(identity: &[u8]) -> Result<SerializedIdentity, CryptoError> {
        SerializedIdentity::decode(identity)
            .map_err(|e| CryptoError::InvalidIdentity(format!("not a SerializedIdentity: {e}")))
    }
}

impl Verifier for MspVerifier {
    fn pki_id_of(&self, identity: &[u8]) -> Result<PkiId, CryptoError> {
        Ok(pki_id_of(&Self::decode(identity)?))
    }

    fn validate_identity(&self, identity: &[u8]) -> Result<(), CryptoError> {
        let identity = Self::decode(identity)?;
        let cas = self.msps.get(&identity.mspid).ok_or_else(|| {
            CryptoError::InvalidIdentity(format!("unknown MSP {:?}", identity.mspid))
        })?;
        let certificate = certificate_of(&identity.id_bytes)?;
        let tbs = certificate
            .tbs_certificate()
            .to_der()
            .map_err(|e| CryptoError::InvalidIdentity(format!("certificate: {e}")))?;
        if certificate.signature_algorithm().oid != ECDSA_WITH_SHA256 {
            return Err(CryptoError::InvalidIdentity(
                "certificate not signed with ECDSA and SHA-256".into(),
            ));
        }
        let signature = certificate
            .signature()
            .as_bytes()
            .and_then(|der| Signature::from_der(der).ok())
            .ok_or_else(|| CryptoError::InvalidIdentity("certificate signature not DER".into()))?;
        // A CA's signature need not be low S (Go's x509 does not normalise).
        if cas.iter().any(|ca| ca.verify(&tbs, &signature).is_ok()) {
            Ok(())
        } else {
            Err(CryptoError::InvalidIdentity(format!(
                "not issued by a CA of {}",
                identity.mspid
            )))
        }
    }

    fn verify(&self, identity: &[u8], signature: &[u8], message: &[u8]) -> Result<(), CryptoError> {
        let identity = Self::decode(identity)?;
        let key = verifying_key(&certificate_of(&identity.id_bytes)?)?;
        verify_p256(&key, signature, message)
    }
}

/// `ecdsa-with-SHA256` (RFC 5758).
const ECDSA_WITH_SHA256: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Verifies a DER ECDSA signature over SHA-256 of `message`, refusing a high
/// S as Fabric's BCCSP does (`bccsp/sw/ecdsa.go`).
pub fn verify_p256(
    key: &VerifyingKey,
    signature: &[u8],
    message: &[u8],
) -> Result<(), CryptoError> {
    if signature.is_empty() {
        return Err(CryptoError::BadSignature("empty".into()));
    }
    let signature = Signature::from_der(signature)
        .map_err(|_| CryptoError::BadSignature("not a DER ECDSA signature".into()))?;
    if signature.normalize_s() != signature {
        return Err(CryptoError::BadSignature("S is high".into()));
    }
    key.verify(message, &signature)
        .map_err(|_| CryptoError::BadSignature("does not verify".into()))
}

/// The one certificate of a PEM identity, refusing what Fabric's MSP
/// refuses: other PEM types, several blocks, bytes after the block.
fn certificate_of(pem: &[u8]) -> Result<Certificate, CryptoError> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| CryptoError::InvalidIdentity("certificate PEM is not text".into()))?;
    const END: &str = "-----END CERTIFICATE-----";
    let end = text
        .find(END)
        .ok_or_else(|| CryptoError::InvalidIdentity("no PEM certificate".into()))?
        + END.len();
    let rest = &text[end..];
    if !(rest.is_empty() || rest == "\n" || rest == "\r\n") {
        return Err(CryptoError::InvalidIdentity(
            "identity has trailing bytes".into(),
        ));
    }
    let certificate = Certificate::load_pem_chain(pem)
        .map_err(|e| CryptoError::InvalidIdentity(format!("certificate: {e}")))?;
    match <[Certificate; 1]>::try_from(certificate) {
        Ok([certificate]) => Ok(certificate),
        Err(_) => Err(CryptoError::InvalidIdentity(
            "not exactly one certificate".into(),
        )),
    }
}

/// The certificate's P-256 public key.
fn verifying_key(certificate: &Certificate) -> Result<VerifyingKey, CryptoError> {
    let spki = certificate.tbs_certificate().subject_public_key_info();
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CryptoError::InvalidIdentity("public key bits".into()))?;
    VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| CryptoError::InvalidIdentity("not a P-256 public key".into()))
}

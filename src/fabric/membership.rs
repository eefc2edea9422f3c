//! The least of Fabric's membership that state transfer needs
//! (`gossip/discovery`, `gossip/gossip/channel`): our signed Alive and
//! StateInfo so that a Fabric peer lists us on the channel and asks us for
//! blocks; a pull request and Fabric's snapshots and pushes turned into
//! the peers' heights, for the requester's `Event::Membership`.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use super::crypto::{CryptoError, PkiId, Signer, Verifier};
use crate::wire::gossip::gossip_message::{Content, Tag};
use crate::wire::gossip::{
    AliveMessage, Envelope, GossipMessage, Member, MembershipResponse, PeerTime, Properties,
    StateInfo, StateInfoPullRequest, StateInfoSnapshot,
};
use crate::{wire, PeerState};

/// Fabric's channel MAC: `SHA-256(pki_id ‖ channel)` (`channel.GenerateMAC`).
pub fn channel_mac(pki_id: &PkiId, channel: &[u8]) -> Bytes {
    let mut hash = Sha256::new();
    hash.update(&pki_id.0);
    hash.update(channel);
    Bytes::copy_from_slice(&hash.finalize())
}

/// Why a StateInfo from a peer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateInfoError {
    /// Not a `GossipMessage` holding a `StateInfo` with a timestamp.
    #[error("malformed StateInfo")]
    Malformed,
    /// The MAC is not for this channel and the peer's PKI-ID.
    #[error("StateInfo for another channel")]
    OtherChannel,
    /// No connection told us the identity of its PKI-ID.
    #[error("StateInfo of a peer whose identity is unknown")]
    UnknownIdentity,
    /// Its signature does not verify, or the channel's policy refuses it.
    #[error("StateInfo refused: {0}")]
    Refused(CryptoError),
    /// Not newer than the one held.
    #[error("StateInfo not newer than the one held")]
    Stale,
}

/// Our membership messages and what we know of the channel's peers.
#[derive(Debug)]
pub(crate) struct Membership {
    channel: Bytes,
    endpoint: String,
    /// Fabric orders by `(inc_num, seq_num)`: the start time and a counter.
    inc_num: u64,
    seq_num: u64,
    height: u64,
    last_state_info: Option<Envelope>,
    /// PKI-ID → (its StateInfo's timestamp, height, left the channel).
    peers: BTreeMap<PkiId, ((u64, u64), u64, bool)>,
}

fn signed(signer: &dyn Signer, message: &GossipMessage) -> Result<Envelope, CryptoError> {
    let payload = Bytes::from(message.encode_to_vec());
    let signature = signer.sign(&payload)?;
    Ok(Envelope {
        payload,
        signature,
        secret_envelope: None,
    })
}

impl Membership {
    /// `inc_num`: the process's start time in nanoseconds, as Fabric's; it
    /// must exceed the previous run's so that Fabric takes our messages as
    /// newer after a restart.
    pub(crate) fn new(channel: Bytes, endpoint: String, inc_num: u64, height: u64) -> Self {
        Self {
            channel,
            endpoint,
            inc_num,
            seq_num: 0,
            height,
            last_state_info: None,
            peers: BTreeMap::new(),
        }
    }

    pub(crate) fn set_height(&mut self, height: u64) {
        self.height = height;
    }

    fn timestamp(&mut self) -> PeerTime {
        self.seq_num += 1;
        PeerTime {
            inc_num: self.inc_num,
            seq_num: self.seq_num,
        }
    }

    /// A fresh signed Alive (tag `EMPTY`; membership, timestamp and identity
    /// always set: Fabric dereferences them unchecked).
    pub(crate) fn alive(&mut self, signer: &dyn Signer) -> Result<Envelope, CryptoError> {
        let message = GossipMessage {
            nonce: 0,
            channel: Bytes::new(),
            tag: Tag::Empty as i32,
            content: Some(Content::AliveMsg(AliveMessage {
                membership: Some(Member {
                    endpoint: self.endpoint.clone(),
                    metadata: Bytes::new(),
                    pki_id: signer.pki_id().0,
                }),
                timestamp: Some(self.timestamp()),
                identity: signer.identity(),
            })),
        };
        signed(signer, &message)
    }

    /// A fresh signed StateInfo for our height (tag `CHAN_OR_ORG`, no
    /// channel: Fabric finds it by the MAC).
    pub(crate) fn state_info(&mut self, signer: &dyn Signer) -> Result<Envelope, CryptoError> {
        let pki_id = signer.pki_id();
        let message = GossipMessage {
            nonce: 0,
            channel: Bytes::new(),
            tag: Tag::ChanOrOrg as i32,
            content: Some(Content::StateInfo(StateInfo {
                timestamp: Some(self.timestamp()),
                channel_mac: channel_mac(&pki_id, &self.channel),
                pki_id: pki_id.0,
                properties: Some(Properties {
                    ledger_height: self.height,
                    left_channel: false,
                    chaincodes: Vec::new(),
                }),
            })),
        };
        let envelope = signed(signer, &message)?;
        self.last_state_info = Some(envelope.clone());
        Ok(envelope)
    }

    /// Asks a peer for its StateInfo snapshot (NoopSign; the MAC is ours).
    pub(crate) fn pull_request(&self, us: &PkiId) -> GossipMessage {
        GossipMessage {
            nonce: 0,
            channel: Bytes::new(),
            tag: Tag::ChanOrOrg as i32,
            content: Some(Content::StateInfoPullReq(StateInfoPullRequest {
                channel_mac: channel_mac(us, &self.channel),
            })),
        }
    }

    /// The answer to a peer's pull request: our last StateInfo, channel
    /// named (Fabric's `createStateInfoSnapshot`). `None` if the request is
    /// for another channel (its MAC is the requester's PKI-ID's).
    pub(crate) fn snapshot(
        &self,
        from: &PkiId,
        request: &StateInfoPullRequest,
    ) -> Option<GossipMessage> {
        if request.channel_mac != channel_mac(from, &self.channel) {
            return None;
        }
        Some(GossipMessage {
            nonce: 0,
            channel: self.channel.clone(),
            tag: Tag::ChanOrOrg as i32,
            content: Some(Content::StateSnapshot(StateInfoSnapshot {
                elements: self.last_state_info.iter().cloned().collect(),
            })),
        })
    }

    /// The answer to a MembershipRequest: our Alive, the request's nonce.
    pub(crate) fn membership_response(nonce: u64, alive: Envelope) -> GossipMessage {
        GossipMessage {
            nonce,
            channel: Bytes::new(),
            tag: Tag::Empty as i32,
            content: Some(Content::MemRes(MembershipResponse {
                alive: vec![alive],
                dead: Vec::new(),
            })),
        }
    }

    /// Takes a peer's signed StateInfo (pushed, or an element of a
    /// snapshot), checked as Fabric's channel does: the MAC, the signer's
    /// identity (`identity_of` its PKI-ID), the channel's policy over its
    /// signature, a newer timestamp. `Ok(true)` if a height changed.
    pub(crate) fn on_state_info(
        &mut self,
        envelope: &Envelope,
        us: &PkiId,
        identity_of: impl Fn(&PkiId) -> Option<Bytes>,
        verifier: &dyn Verifier,
    ) -> Result<bool, StateInfoError> {
        let message = wire::decode_gossip_message(envelope.payload.clone(), usize::MAX)
            .map_err(|_| StateInfoError::Malformed)?;
        let Some(Content::StateInfo(info)) = message.content else {
            return Err(StateInfoError::Malformed);
        };
        let pki_id = PkiId(info.pki_id.clone());
        if pki_id == *us {
            return Ok(false);
        }
        let timestamp = info
            .timestamp
            .map(|t| (t.inc_num, t.seq_num))
            .ok_or(StateInfoError::Malformed)?;
        if info.channel_mac != channel_mac(&pki_id, &self.channel) {
            return Err(StateInfoError::OtherChannel);
        }
        let identity = identity_of(&pki_id).ok_or(StateInfoError::UnknownIdentity)?;
        if self
            .peers
            .get(&pki_id)
            .is_some_and(|held| held.0 >= timestamp)
        {
            return Err(StateInfoError::Stale);
        }
        verifier
            .verify_by_channel(
                &self.channel,
                &identity,
                &envelope.signature,
                &envelope.payload,
            )
            .map_err(StateInfoError::Refused)?;
        let advertised = wire::advertised(&info).map_err(|_| StateInfoError::Malformed)?;
        let entry = (timestamp, advertised.ledger_height, advertised.left_channel);
        let changed = self
            .peers
            .insert(pki_id, entry)
            .is_none_or(|old| (old.1, old.2) != (entry.1, entry.2));
        Ok(changed)
    }

    /// Forgets a peer (its connection is gone for good).
    pub(crate) fn forget(&mut self, peer: &PkiId) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// The peers' heights, for `Event::Membership` (those that left the
    /// channel are left out, as Fabric's `PeersOfChannel` does).
    pub(crate) fn peers(&self) -> Vec<PeerState<PkiId>> {
        self.peers
            .iter()
            .filter(|(_, (_, _, left))| !left)
            .map(|(peer, (_, height, _))| PeerState::new(peer.clone(), *height))
            .collect()
    }
}

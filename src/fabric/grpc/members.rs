//! Membership on the streams: our Alive, StateInfo and pull requests out,
//! Fabric's StateInfo and membership requests in.

use super::stats::bump;
use super::stream::Out;
use super::{lock, Inner};
use crate::fabric::crypto::PkiId;
use crate::fabric::membership::Membership;
use crate::wire::gossip::gossip_message::Content;
use crate::wire::gossip::{Envelope, GossipMessage};
use crate::PeerState;

/// Queues our Alive, StateInfo and a pull request on the stream to `peer`
/// (dropped if its queue is full: the next round sends newer ones).
pub(super) fn announce(inner: &Inner, peer: &PkiId) {
    let signer = inner.signer.as_ref();
    let messages = {
        let mut membership = lock(&inner.membership);
        let Some(membership) = membership.as_mut() else {
            return;
        };
        match (membership.alive(signer), membership.state_info(signer)) {
            (Ok(alive), Ok(state_info)) => [
                Out::Envelope(alive),
                Out::Envelope(state_info),
                Out::Message(membership.pull_request(&signer.pki_id())),
            ],
            (Err(_error), _) | (_, Err(_error)) => {
                emit!(WARN, %_error, "cannot sign membership messages");
                return;
            }
        }
    };
    if let Some(link) = lock(&inner.links).get(peer) {
        for message in messages {
            let _ = link.queues.push(message);
        }
    }
}

/// A message that is not state transfer: membership is answered or taken
/// when published; the rest is ignored. Returns the new membership if a
/// height changed.
pub(super) fn on_membership(
    inner: &Inner,
    from: &PkiId,
    envelope: &Envelope,
    message: GossipMessage,
) -> Option<Vec<PeerState<PkiId>>> {
    let mut guard = lock(&inner.membership);
    let Some(membership) = guard.as_mut() else {
        bump(&inner.counters.ignored);
        return None;
    };
    let us = inner.signer.pki_id();
    let reply = |message: Out| {
        if let Some(link) = lock(&inner.links).get(from) {
            let _ = link.queues.push(message);
        }
    };
    let mut changed = false;
    let mut take = |membership: &mut Membership, envelope: &Envelope| match membership
        .on_state_info(
            envelope,
            &us,
            |peer| inner.identity_of(peer),
            inner.verifier.as_ref(),
        ) {
        Ok(update) => {
            bump(&inner.counters.state_infos);
            changed |= update;
        }
        Err(_error) => {
            bump(&inner.counters.state_infos_refused);
            emit!(DEBUG, ?from, %_error, "StateInfo refused");
        }
    };
    match &message.content {
        Some(Content::StateInfoPullReq(request)) => match membership.snapshot(from, request) {
            Some(snapshot) => reply(Out::Message(snapshot)),
            None => bump(&inner.counters.ignored),
        },
        Some(Content::MemReq(_)) => match membership.alive(inner.signer.as_ref()) {
            Ok(alive) => reply(Out::Message(Membership::membership_response(
                message.nonce,
                alive,
            ))),
            Err(_) => bump(&inner.counters.ignored),
        },
        Some(Content::StateInfo(_)) => take(membership, envelope),
        Some(Content::StateSnapshot(snapshot)) => {
            for element in &snapshot.elements {
                take(membership, element);
            }
        }
        _ => bump(&inner.counters.ignored),
    }
    changed.then(|| membership.peers())
}

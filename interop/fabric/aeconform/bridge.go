/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

package main

// Bridges between Fabric's unmodified GossipStateProviderImpl and the pipe:
// what gossip/state needs of the gossip layer (GossipAdapter), of the crypto
// service (MCSAdapter) and of the ledger (ledgerResources). Each does what
// the real implementation does at the bytes state transfer sees, and
// nothing more: no gRPC, no TLS, no signatures.

import (
	"bytes"
	"fmt"
	"sync"

	cb "github.com/hyperledger/fabric-protos-go-apiv2/common"
	pg "github.com/hyperledger/fabric-protos-go-apiv2/gossip"
	"github.com/hyperledger/fabric-protos-go-apiv2/transientstore"
	vsccErrors "github.com/hyperledger/fabric/common/errors"
	"github.com/hyperledger/fabric/gossip/api"
	"github.com/hyperledger/fabric/gossip/comm"
	gcommon "github.com/hyperledger/fabric/gossip/common"
	"github.com/hyperledger/fabric/gossip/discovery"
	"github.com/hyperledger/fabric/gossip/protoext"
	"github.com/hyperledger/fabric/gossip/util"
	"github.com/hyperledger/fabric/protoutil"
	"github.com/pkg/errors"
	"google.golang.org/protobuf/proto"
)

// ---- GossipAdapter -----------------------------------------------------------

type subscription struct {
	accept      gcommon.MessageAcceptor
	passThrough bool
	gossip      chan *pg.GossipMessage
	direct      chan protoext.ReceivedMessage
}

type gossipBridge struct {
	out *frameWriter

	mu      sync.Mutex
	members []discovery.NetworkMember
	subs    []*subscription
}

// Send does what gossip's Node.Send does before the comm layer takes over:
// NoopSign the message (an Envelope whose payload is the marshalled
// GossipMessage, with no signature) and send it to each peer.
func (g *gossipBridge) Send(msg *pg.GossipMessage, peers ...*comm.RemotePeer) {
	signed, err := protoext.NoopSign(msg)
	if err != nil {
		g.out.emit(evViolation, func(e *encoder) { e.str("NoopSign failed: " + err.Error()) })
		return
	}
	envelope := mustMarshal(signed.Envelope)
	for _, peer := range peers {
		g.out.emit(evSend, func(e *encoder) {
			e.str(peer.Endpoint)
			e.bytes(envelope)
		})
	}
}

// Accept hands out the channels the state provider reads. As in gossip's
// Node.Accept, pass-through subscribers get ReceivedMessages straight from
// the comm layer; the others get GossipMessages.
func (g *gossipBridge) Accept(acceptor gcommon.MessageAcceptor, passThrough bool) (<-chan *pg.GossipMessage, <-chan protoext.ReceivedMessage) {
	s := &subscription{accept: acceptor, passThrough: passThrough}
	g.mu.Lock()
	g.subs = append(g.subs, s)
	g.mu.Unlock()
	if passThrough {
		// The comm layer's buffer is 10; more keeps the pipe reader from
		// waiting on Fabric's dispatcher.
		s.direct = make(chan protoext.ReceivedMessage, 100)
		return nil, s.direct
	}
	s.gossip = make(chan *pg.GossipMessage, 100)
	return s.gossip, nil
}

// UpdateLedgerHeight is what would go into this peer's StateInfo; the driver
// learns heights from Committed instead.
func (g *gossipBridge) UpdateLedgerHeight(uint64, gcommon.ChannelID) {}

func (g *gossipBridge) PeersOfChannel(gcommon.ChannelID) []discovery.NetworkMember {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]discovery.NetworkMember(nil), g.members...)
}

func (g *gossipBridge) setMembers(members []discovery.NetworkMember) {
	g.mu.Lock()
	g.members = members
	g.mu.Unlock()
}

// deliver is the comm layer receiving an envelope on the connection from
// `from`: unmarshal it as Fabric's connection does (a bad envelope aborts a
// real connection; here it is reported and dropped), then demultiplex it to
// every pass-through subscriber whose predicate takes it.
func (g *gossipBridge) deliver(from string, envelope []byte) {
	env := &pg.Envelope{}
	if err := proto.Unmarshal(envelope, env); err != nil {
		g.filtered(from, "envelope does not unmarshal: "+err.Error())
		return
	}
	signed, err := protoext.EnvelopeToGossipMessage(env)
	if err != nil {
		g.filtered(from, err.Error())
		return
	}
	msg := &receivedMessage{
		signed: signed,
		info: &protoext.ConnectionInfo{
			ID:       gcommon.PKIidType(from),
			Identity: api.PeerIdentityType(from),
			Endpoint: from,
			// What the handshake would have signed; the bridge's
			// VerifyByChannel only looks at the identity.
			Auth: &protoext.AuthInfo{SignedData: []byte("handshake of " + from), Signature: []byte("signature of " + from)},
		},
		out: g.out,
	}
	g.mu.Lock()
	subs := append([]*subscription(nil), g.subs...)
	g.mu.Unlock()
	taken := false
	for _, s := range subs {
		if s.passThrough && s.accept(msg) {
			s.direct <- msg
			taken = true
		}
	}
	if !taken {
		g.filtered(from, "no subscriber accepted it")
	}
}

// gossip is a block from the gossip layer (a DataMsg already verified, as
// gossip's channel layer does before handing it over).
func (g *gossipBridge) gossip(envelope []byte) {
	env := &pg.Envelope{}
	if err := proto.Unmarshal(envelope, env); err != nil {
		g.filtered("gossip", err.Error())
		return
	}
	signed, err := protoext.EnvelopeToGossipMessage(env)
	if err != nil {
		g.filtered("gossip", err.Error())
		return
	}
	g.mu.Lock()
	subs := append([]*subscription(nil), g.subs...)
	g.mu.Unlock()
	taken := false
	for _, s := range subs {
		if !s.passThrough && s.accept(signed.GossipMessage) {
			s.gossip <- signed.GossipMessage
			taken = true
		}
	}
	if !taken {
		g.filtered("gossip", "no subscriber accepted it")
	}
}

func (g *gossipBridge) filtered(from, reason string) {
	g.out.emit(evFiltered, func(e *encoder) {
		e.str(from)
		e.str(reason)
	})
}

// ---- ReceivedMessage -----------------------------------------------------------

// receivedMessage is comm.ReceivedMessageImpl without the gRPC connection:
// Respond NoopSigns the reply and sends it back to the sender.
type receivedMessage struct {
	signed *protoext.SignedGossipMessage
	info   *protoext.ConnectionInfo
	out    *frameWriter
}

func (m *receivedMessage) Respond(msg *pg.GossipMessage) {
	signed, err := protoext.NoopSign(msg)
	if err != nil {
		m.out.emit(evViolation, func(e *encoder) { e.str("NoopSign failed: " + err.Error()) })
		return
	}
	envelope := mustMarshal(signed.Envelope)
	m.out.emit(evRespond, func(e *encoder) {
		e.str(m.info.Endpoint)
		e.bytes(envelope)
	})
}

func (m *receivedMessage) GetGossipMessage() *protoext.SignedGossipMessage { return m.signed }

func (m *receivedMessage) GetSourceEnvelope() *pg.Envelope { return m.signed.Envelope }

func (m *receivedMessage) GetConnectionInfo() *protoext.ConnectionInfo { return m.info }

// Ack is comm.ReceivedMessageImpl.Ack (only the private-data push path
// uses it).
func (m *receivedMessage) Ack(err error) {
	ack := &pg.GossipMessage{
		Nonce:   m.signed.Nonce,
		Content: &pg.GossipMessage_Ack{Ack: &pg.Acknowledgement{}},
	}
	if err != nil {
		ack.GetAck().Error = err.Error()
	}
	m.Respond(ack)
}

// ---- MCSAdapter -----------------------------------------------------------------

// mcs checks a block as Fabric's MSPMessageCryptoService.VerifyBlock does,
// in the same order (internal/peer/gossip/mcs.go), except the orderer
// signatures: header present, its number the claimed one, the channel in
// the first transaction ours, metadata present, the data hash right.
type mcs struct{}

func (mcs) VerifyBlock(channelID gcommon.ChannelID, seqNum uint64, block *cb.Block) error {
	if block == nil {
		return errors.New("invalid block: nil")
	}
	if block.Header == nil {
		return errors.Errorf("invalid block: header is nil [%d]", seqNum)
	}
	if block.Header.Number != seqNum {
		return errors.Errorf("claimed seqNum is [%d] but actual seqNum inside block is [%d]", seqNum, block.Header.Number)
	}
	channel, err := protoutil.GetChannelIDFromBlock(block)
	if err != nil {
		return errors.WithMessage(err, "failed getting channel id from block")
	}
	if channel != string(channelID) {
		return errors.Errorf("invalid block's channel id: expected [%s], got [%s]", channelID, channel)
	}
	if block.Metadata == nil || len(block.Metadata.Metadata) == 0 {
		return errors.Errorf("block with id [%d] on channel [%s] does not have metadata", block.Header.Number, channelID)
	}
	if !bytes.Equal(protoutil.ComputeBlockDataHash(block.Data), block.Header.DataHash) {
		return errors.Errorf("header.DataHash is different from Hash(block.Data) for block with id [%d] on channel [%s]", block.Header.Number, channelID)
	}
	return nil
}

// VerifyByChannel stands for the channel Readers policy over the
// handshake: every named peer is a reader; an empty identity is not.
func (mcs) VerifyByChannel(_ gcommon.ChannelID, identity api.PeerIdentityType, _, _ []byte) error {
	if len(identity) == 0 {
		return errors.New("no identity")
	}
	return nil
}

// ---- ledgerResources -----------------------------------------------------------

// chainLedger holds the first `height` blocks of the shared chain. It
// commits only the next block, and only if it is exactly the chain's block
// with exactly the private data this peer may read; anything else is a
// Violation (and a VSCC failure, which makes Fabric stop committing rather
// than panic).
type chainLedger struct {
	out      *frameWriter
	identity string
	// ignorePvt: commit blocks without checking their private data (the
	// gRPC cases serve none).
	ignorePvt bool
	// onCommit, if set, learns each new height.
	onCommit func(height uint64)

	mu     sync.Mutex
	chain  []chainBlock
	height uint64
}

func (l *chainLedger) violate(format string, args ...any) error {
	text := fmt.Sprintf(format, args...)
	l.out.emit(evViolation, func(e *encoder) { e.str(text) })
	return &vsccErrors.VSCCExecutionFailureError{Err: errors.New(text)}
}

func (l *chainLedger) StoreBlock(block *cb.Block, pvt util.PvtDataCollections) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if block == nil || block.Header == nil {
		return l.violate("StoreBlock: block without header at height %d", l.height)
	}
	seq := block.Header.Number
	if seq != l.height {
		return l.violate("StoreBlock: block %d out of order, ledger height %d", seq, l.height)
	}
	if seq >= uint64(len(l.chain)) {
		return l.violate("StoreBlock: block %d is beyond the chain", seq)
	}
	want := l.chain[seq]
	if !proto.Equal(block, want.block) {
		return l.violate("StoreBlock: block %d differs from the chain's", seq)
	}
	if l.ignorePvt {
		l.height++
		l.out.emit(evCommitted, func(e *encoder) { e.u64(seq) })
		if l.onCommit != nil {
			l.onCommit(l.height)
		}
		return nil
	}
	got, err := pvt.Marshal()
	if err != nil {
		return l.violate("StoreBlock: block %d: private data: %v", seq, err)
	}
	filtered := filterPvt(want.pvt, l.identity)
	expected, err := filtered.Marshal()
	if err != nil {
		return l.violate("StoreBlock: block %d: expected private data: %v", seq, err)
	}
	if len(got) != len(expected) {
		return l.violate("StoreBlock: block %d: %d private write sets, want %d", seq, len(got), len(expected))
	}
	for i := range got {
		if !bytes.Equal(got[i], expected[i]) {
			return l.violate("StoreBlock: block %d: private write set %d differs", seq, i)
		}
	}
	l.height++
	l.out.emit(evCommitted, func(e *encoder) { e.u64(seq) })
	return nil
}

func (l *chainLedger) StorePvtData(string, *transientstore.TxPvtReadWriteSetWithConfigInfo, uint64) error {
	return nil
}

// GetPvtDataAndBlockByNum returns a committed block with the private data
// the requester (the connection's identity) may read, as the coordinator's
// collection access filters do.
func (l *chainLedger) GetPvtDataAndBlockByNum(seq uint64, peerAuthInfo protoutil.SignedData) (*cb.Block, util.PvtDataCollections, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq >= l.height {
		return nil, nil, errors.Errorf("block %d not in the ledger (height %d)", seq, l.height)
	}
	b := l.chain[seq]
	return b.block, filterPvt(b.pvt, string(peerAuthInfo.Identity)), nil
}

func (l *chainLedger) LedgerHeight() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.height, nil
}

func (l *chainLedger) Close() {}

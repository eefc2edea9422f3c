/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

package main

// The chain every harness process and the Rust driver share: real
// common.Blocks built with Fabric's protoutil, each block's data hash and
// previous hash set as an orderer sets them, transactions that are real
// Envelopes naming the channel (so VerifyBlock can check it as Fabric's MCS
// does), and private data in some blocks. It is a pure function of
// (channel, length): every process builds the same one.

import (
	"fmt"

	cb "github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/ledger/rwset"
	"github.com/hyperledger/fabric/core/ledger"
	"github.com/hyperledger/fabric/gossip/util"
	"github.com/hyperledger/fabric/protoutil"
	"google.golang.org/protobuf/proto"
)

type chainBlock struct {
	block *cb.Block
	// Every transaction's private write sets, unfiltered.
	pvt util.PvtDataCollections
}

// Collections named "open" are readable by every peer; "secret-<id>" only
// by the peer whose identity is <id>. The Rust driver applies the same rule
// when it serves blocks, standing in for the collection access policies
// Fabric's coordinator evaluates.
func readable(collection, identity string) bool {
	return collection == "open" || collection == "secret-"+identity
}

// filterPvt keeps what `identity` may read, dropping namespaces and
// transactions left empty.
func filterPvt(all util.PvtDataCollections, identity string) util.PvtDataCollections {
	var out util.PvtDataCollections
	for _, tx := range all {
		var nss []*rwset.NsPvtReadWriteSet
		for _, ns := range tx.WriteSet.NsPvtRwset {
			var colls []*rwset.CollectionPvtReadWriteSet
			for _, c := range ns.CollectionPvtRwset {
				if readable(c.CollectionName, identity) {
					colls = append(colls, c)
				}
			}
			if len(colls) > 0 {
				nss = append(nss, &rwset.NsPvtReadWriteSet{Namespace: ns.Namespace, CollectionPvtRwset: colls})
			}
		}
		if len(nss) > 0 {
			out = append(out, &ledger.TxPvtData{
				SeqInBlock: tx.SeqInBlock,
				WriteSet:   &rwset.TxPvtReadWriteSet{DataModel: tx.WriteSet.DataModel, NsPvtRwset: nss},
			})
		}
	}
	return out
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func transaction(channel string, seq uint64, tx int) []byte {
	txID := fmt.Sprintf("tx-%d-%d", seq, tx)
	header := &cb.Header{
		ChannelHeader: mustMarshal(&cb.ChannelHeader{
			Type:      int32(cb.HeaderType_ENDORSER_TRANSACTION),
			ChannelId: channel,
			TxId:      txID,
		}),
		SignatureHeader: mustMarshal(&cb.SignatureHeader{Creator: []byte("client"), Nonce: []byte(txID)}),
	}
	// Sizes vary so that blocks differ in length, as real ones do.
	data := make([]byte, 64+int(seq*37+uint64(tx)*11)%700)
	for i := range data {
		data[i] = byte(int(seq) + i*tx)
	}
	return mustMarshal(&cb.Envelope{
		Payload:   mustMarshal(&cb.Payload{Header: header, Data: data}),
		Signature: []byte("endorser-signature"),
	})
}

func collection(name string, seq uint64, tx int) *rwset.CollectionPvtReadWriteSet {
	return &rwset.CollectionPvtReadWriteSet{
		CollectionName: name,
		Rwset:          []byte(fmt.Sprintf("kv-writes %s block %d tx %d", name, seq, tx)),
	}
}

// privateData gives every fourth block private write sets: transaction 0
// touches a collection everyone reads and one secret per peer; transaction 1
// (when the block has one) only rust0's secret, so it vanishes entirely for
// any other peer.
func privateData(seq uint64, txs int) util.PvtDataCollections {
	if seq%4 != 1 {
		return nil
	}
	pvt := util.PvtDataCollections{{
		SeqInBlock: 0,
		WriteSet: &rwset.TxPvtReadWriteSet{NsPvtRwset: []*rwset.NsPvtReadWriteSet{
			{Namespace: "mycc", CollectionPvtRwset: []*rwset.CollectionPvtReadWriteSet{
				collection("open", seq, 0),
				collection("secret-fabric0", seq, 0),
				collection("secret-rust0", seq, 0),
			}},
			{Namespace: "othercc", CollectionPvtRwset: []*rwset.CollectionPvtReadWriteSet{
				collection("open", seq, 0),
			}},
		}},
	}}
	if txs > 1 {
		pvt = append(pvt, &ledger.TxPvtData{
			SeqInBlock: 1,
			WriteSet: &rwset.TxPvtReadWriteSet{NsPvtRwset: []*rwset.NsPvtReadWriteSet{
				{Namespace: "mycc", CollectionPvtRwset: []*rwset.CollectionPvtReadWriteSet{
					collection("secret-rust0", seq, 1),
				}},
			}},
		})
	}
	return pvt
}

func makeChain(channel string, length uint64) []chainBlock {
	chain := make([]chainBlock, 0, length)
	var previousHash []byte
	for seq := uint64(0); seq < length; seq++ {
		block := protoutil.NewBlock(seq, previousHash)
		txs := 1 + int(seq%3)
		for tx := 0; tx < txs; tx++ {
			block.Data.Data = append(block.Data.Data, transaction(channel, seq, tx))
		}
		block.Header.DataHash = protoutil.ComputeBlockDataHash(block.Data)
		block.Metadata.Metadata[cb.BlockMetadataIndex_SIGNATURES] = mustMarshal(&cb.Metadata{
			Value: []byte(fmt.Sprintf("orderer signatures of block %d", seq)),
		})
		previousHash = protoutil.BlockHeaderHash(block.Header)
		chain = append(chain, chainBlock{block: block, pvt: privateData(seq, txs)})
	}
	return chain
}

// emitChain sends the chain to the driver, private data as Fabric puts it
// on the wire (PvtDataCollections.Marshal).
func emitChain(out *frameWriter, chain []chainBlock) error {
	for seq, b := range chain {
		pvt, err := b.pvt.Marshal()
		if err != nil {
			return err
		}
		blockBytes := mustMarshal(b.block)
		out.emit(evChainBlock, func(e *encoder) {
			e.u64(uint64(seq))
			e.bytes(blockBytes)
			e.u32(uint32(len(pvt)))
			for _, p := range pvt {
				e.bytes(p)
			}
		})
	}
	out.emit(evChainEnd, nil)
	return nil
}

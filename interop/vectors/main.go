/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

// Command aevectors prints the test vectors of tests/vectors/fabric_hashes.txt:
// block header DER encodings and hashes, block data hashes, and a small chain
// of real blocks with transaction envelopes, all computed by Fabric's own
// protoutil. See interop/vectors/run.sh for how it is built and run; the Rust
// tests only read its output, committed.
package main

import (
	"encoding/hex"
	"fmt"
	"math"
	"strings"

	cb "github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric/protoutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func h(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// transaction is an endorser transaction envelope as a client makes one,
// with fixed values instead of a clock, a random nonce and a signature.
func transaction(channel string, seq uint64, tx int) ([]byte, *cb.ChannelHeader, *cb.SignatureHeader, []byte) {
	nonce := pattern(24, byte(seq*3+uint64(tx)))
	sh := protoutil.MakeSignatureHeader([]byte(fmt.Sprintf("creator-of-%d-%d", seq, tx)), nonce)
	ch := &cb.ChannelHeader{
		Type:        int32(cb.HeaderType_ENDORSER_TRANSACTION),
		Version:     1,
		Timestamp:   &timestamppb.Timestamp{Seconds: 1700000000 + int64(seq), Nanos: int32(tx) * 1000},
		ChannelId:   channel,
		Epoch:       seq,
		Extension:   []byte("extension"),
		TlsCertHash: pattern(32, 0xa0),
	}
	protoutil.SetTxID(ch, sh)
	data := pattern(40+int(seq)*13+tx*5, byte(seq+uint64(tx)))
	payload := &cb.Payload{Header: protoutil.MakePayloadHeader(ch, sh), Data: data}
	env := &cb.Envelope{Payload: mustMarshal(payload), Signature: []byte(fmt.Sprintf("signature-%d-%d", seq, tx))}
	return mustMarshal(env), ch, sh, data
}

func main() {
	fmt.Println("# Made by interop/vectors/main.go with Fabric's protoutil (bash interop/vectors/run.sh).")
	fmt.Println("# header NUMBER PREVIOUS_HASH DATA_HASH BlockHeaderBytes BlockHeaderHash ('-': empty)")
	numbers := []uint64{0, 1, 127, 128, 255, 256, 1 << 32, 1 << 63, math.MaxUint64}
	for _, n := range numbers {
		for _, hashes := range [][2][]byte{
			{nil, nil},
			{pattern(32, 1), pattern(32, 2)},
		} {
			header := &cb.BlockHeader{Number: n, PreviousHash: hashes[0], DataHash: hashes[1]}
			fmt.Println("header", n, h(header.PreviousHash), h(header.DataHash),
				h(protoutil.BlockHeaderBytes(header)), h(protoutil.BlockHeaderHash(header)))
		}
	}
	// Lengths around DER's short/long form boundary (127, 128) and past 255.
	for _, sizes := range [][2]int{{127, 128}, {200, 255}, {256, 1000}} {
		header := &cb.BlockHeader{Number: 42, PreviousHash: pattern(sizes[0], 3), DataHash: pattern(sizes[1], 4)}
		fmt.Println("header", 42, h(header.PreviousHash), h(header.DataHash),
			h(protoutil.BlockHeaderBytes(header)), h(protoutil.BlockHeaderHash(header)))
	}

	fmt.Println("# data ComputeBlockDataHash ENTRIES (comma-separated, '-': empty entry; no entries: none)")
	for _, data := range [][][]byte{
		{},
		{[]byte("tx-envelope-0")},
		{[]byte("tx-envelope-0"), []byte("tx-envelope-1")},
		{{}, []byte("a"), {}, []byte("bc")},
	} {
		entries := make([]string, len(data))
		for i, d := range data {
			entries[i] = h(d)
		}
		list := strings.Join(entries, ",")
		if len(data) == 0 {
			list = "none"
		}
		fmt.Println("data", h(protoutil.ComputeBlockDataHash(&cb.BlockData{Data: data})), list)
	}

	fmt.Println("# tx BLOCK INDEX Envelope Payload.data ChannelHeader SignatureHeader (the first transaction of each block)")
	fmt.Println("# block NUMBER Block BlockHeaderHash (a chain: each previous_hash is the previous header's hash)")
	const channel = "vectors-channel"
	genesis := protoutil.NewBlock(0, nil)
	var previous *cb.Block
	for seq := uint64(0); seq < 4; seq++ {
		var block *cb.Block
		if previous == nil {
			block = genesis
		} else {
			block = protoutil.NewBlock(seq, protoutil.BlockHeaderHash(previous.Header))
		}
		for tx := 0; tx <= int(seq); tx++ {
			env, ch, sh, data := transaction(channel, seq, tx)
			block.Data.Data = append(block.Data.Data, env)
			if tx == 0 {
				fmt.Println("tx", seq, tx, h(env), h(data), h(mustMarshal(ch)), h(mustMarshal(sh)))
			}
		}
		block.Header.DataHash = protoutil.ComputeBlockDataHash(block.Data)
		block.Metadata.Metadata[cb.BlockMetadataIndex_SIGNATURES] = []byte("orderer-signatures")
		fmt.Println("block", seq, h(mustMarshal(block)), h(protoutil.BlockHeaderHash(block.Header)))
		previous = block
	}
}

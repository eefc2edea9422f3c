/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

// Command aeconform runs one unmodified Fabric GossipStateProviderImpl (the
// gossip/state package, built from a Fabric source tree) behind bridges of
// its GossipAdapter, MCSAdapter and ledger, and speaks the pipe protocol of
// frames.go with the Rust driver of the antientropy conformance harness.
//
//	aeconform -chain N -channel CH      print the shared chain and exit
//	aeconform -id fabric0 -height H ... run a peer until Stop or EOF
//	aeconform grpc ...                  Fabric's real gossip comm layer (grpc.go)
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/hyperledger/fabric-lib-go/common/flogging"
	"github.com/hyperledger/fabric-lib-go/common/metrics/disabled"
	pg "github.com/hyperledger/fabric-protos-go-apiv2/gossip"
	gcommon "github.com/hyperledger/fabric/gossip/common"
	"github.com/hyperledger/fabric/gossip/discovery"
	"github.com/hyperledger/fabric/gossip/metrics"
	"github.com/hyperledger/fabric/gossip/state"
	"github.com/hyperledger/fabric/gossip/util"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "grpc" {
		grpcMain(os.Args[2:])
		return
	}
	var (
		channel   = flag.String("channel", "testchannelid", "channel name")
		chainOnly = flag.Uint64("chain", 0, "print a chain of this many blocks and exit")
		id        = flag.String("id", "fabric0", "this peer's identity and endpoint")
		blocks    = flag.Uint64("blocks", 0, "length of the shared chain")
		height    = flag.Uint64("height", 1, "blocks already in the ledger")
		logSpec   = flag.String("logspec", "info", "Fabric log spec (logs go to stderr)")

		// StateConfig, so that rounds and timeouts take milliseconds.
		enabled   = flag.Bool("state", false, "peer.gossip.state.enabled: run the requester")
		check     = flag.Duration("check", state.DefStateCheckInterval, "checkInterval")
		timeout   = flag.Duration("timeout", state.DefStateResponseTimeout, "responseTimeout")
		batch     = flag.Uint64("batch", state.DefStateBatchSize, "batchSize")
		retries   = flag.Int("retries", state.DefStateMaxRetries, "maxRetries")
		buffer    = flag.Int("buffer", state.DefStateBlockBufferSize, "blockBufferSize")
		chanSize  = flag.Int("chansize", state.DefStateChannelSize, "channelSize")
		blockMode = flag.Bool("blocking", true, "blocking mode of AddPayload (!nonBlockingCommitMode)")
	)
	flag.Parse()
	// Fabric's format without its colour codes: the logs go to files.
	flogging.Init(flogging.Config{
		Format:  "%{time:2006-01-02 15:04:05.000} %{level:.4s} [%{module}] %{shortfunc} -> %{message}",
		LogSpec: *logSpec,
		Writer:  os.Stderr,
	})
	out := newFrameWriter(os.Stdout)

	if *chainOnly > 0 {
		if err := emitChain(out, makeChain(*channel, *chainOnly)); err != nil {
			fmt.Fprintln(os.Stderr, "aeconform:", err)
			os.Exit(1)
		}
		return
	}
	if *height > *blocks {
		fmt.Fprintln(os.Stderr, "aeconform: -height exceeds -blocks")
		os.Exit(2)
	}

	bridge := &gossipBridge{out: out}
	ledger := &chainLedger{out: out, identity: *id, chain: makeChain(*channel, *blocks), height: *height}
	config := &state.StateConfig{
		StateCheckInterval:   *check,
		StateResponseTimeout: *timeout,
		StateBatchSize:       *batch,
		StateMaxRetries:      *retries,
		StateBlockBufferSize: *buffer,
		StateChannelSize:     *chanSize,
		StateEnabled:         *enabled,
	}
	var provider state.GossipStateProvider
	// Exiting is enough to end the peer. provider.Stop() is not called: it
	// closes channels that Fabric's dispatch goroutines may still send on
	// (a known shutdown race), and a panic there would say nothing about
	// state transfer.
	stop := func() { out.emit(evStopped, nil) }

	for {
		kind, d, err := readFrame(os.Stdin)
		if err == io.EOF {
			stop()
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "aeconform: reading a command:", err)
			stop()
			os.Exit(1)
		}
		switch kind {
		case cmdMembership:
			n := d.u32()
			members := make([]discovery.NetworkMember, 0, n)
			for i := uint32(0); i < n && d.err == nil; i++ {
				member := discovery.NetworkMember{}
				name := d.str()
				member.Endpoint = name
				member.PKIid = gcommon.PKIidType(name)
				hasProperties := d.u8() == 1
				ledgerHeight := d.u64()
				left := d.u8() == 1
				if hasProperties {
					member.Properties = &pg.Properties{LedgerHeight: ledgerHeight, LeftChannel: left}
				}
				members = append(members, member)
			}
			bridge.setMembers(members)
		case cmdStart:
			if provider == nil {
				logger := util.GetLogger(util.StateLogger, *id)
				stateMetrics := metrics.NewGossipMetrics(&disabled.Provider{}).StateMetrics
				mediator := &state.ServicesMediator{GossipAdapter: bridge, MCSAdapter: mcs{}}
				provider = state.NewGossipStateProvider(logger, *channel, mediator, ledger, stateMetrics, *blockMode, config)
				h, _ := ledger.LedgerHeight()
				out.emit(evReady, func(e *encoder) { e.u64(h) })
			}
		case cmdDeliver:
			from := d.str()
			envelope := d.bytes()
			if d.err == nil {
				bridge.deliver(from, envelope)
			}
		case cmdGossip:
			envelope := d.bytes()
			if d.err == nil {
				bridge.gossip(envelope)
			}
		case cmdStacks:
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			out.emit(evStacks, func(e *encoder) { e.bytes(buf[:n]) })
		case cmdStop:
			stop()
			return
		default:
			fmt.Fprintf(os.Stderr, "aeconform: unknown command 0x%02x\n", kind)
		}
		if d.err != nil {
			fmt.Fprintln(os.Stderr, "aeconform: malformed command:", d.err)
			os.Exit(1)
		}
	}
}

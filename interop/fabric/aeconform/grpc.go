/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

package main

// Fabric's real gossip comm layer for the gRPC conformance cases: a full
// gossip node (gossip.New: comm, discovery, channels) with the state
// provider, over TLS, with an ECDSA MSP-like crypto service; the test
// crypto (an own CA, P-256 keys); and a raw client that misbehaves in the
// handshake as Fabric's own TestHandshake does, to check our refusals.
//
//	aeconform grpc crypto -dir D -nodes a,b      write a CA and each node's keys
//	aeconform grpc node -dir D -id a ...        run a full node until Stop or EOF
//	aeconform grpc attack -dir D -id a -kind K -target ADDR
//	aeconform grpc blocks -out D -blocks N -upto K   write blocks 0..K-1 as files

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperledger/fabric-lib-go/bccsp/utils"
	"github.com/hyperledger/fabric-lib-go/common/flogging"
	"github.com/hyperledger/fabric-lib-go/common/metrics/disabled"
	cb "github.com/hyperledger/fabric-protos-go-apiv2/common"
	pg "github.com/hyperledger/fabric-protos-go-apiv2/gossip"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"github.com/hyperledger/fabric/gossip/api"
	"github.com/hyperledger/fabric/gossip/comm"
	gcommon "github.com/hyperledger/fabric/gossip/common"
	"github.com/hyperledger/fabric/gossip/discovery"
	"github.com/hyperledger/fabric/gossip/gossip"
	"github.com/hyperledger/fabric/gossip/gossip/algo"
	"github.com/hyperledger/fabric/gossip/gossip/channel"
	"github.com/hyperledger/fabric/gossip/metrics"
	"github.com/hyperledger/fabric/gossip/state"
	"github.com/hyperledger/fabric/gossip/util"
	fcomm "github.com/hyperledger/fabric/internal/pkg/comm"
	"github.com/hyperledger/fabric/protoutil"
	"github.com/pkg/errors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

const mspID = "Org1MSP"

// evListening: the node's address and PKI-ID, once it serves.
const evListening = 0x8b

// Fabric's peer limit (peer.maxRecvMsgSize / maxSendMsgSize).
const maxMsg = 100 * 1024 * 1024

func grpcMain(args []string) {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "aeconform grpc: crypto | node | attack")
		os.Exit(2)
	}
	var err error
	switch args[0] {
	case "crypto":
		err = cryptoMain(args[1:])
	case "node":
		err = nodeMain(args[1:])
	case "attack":
		err = attackMain(args[1:])
	case "blocks":
		err = blocksMain(args[1:])
	default:
		err = fmt.Errorf("unknown grpc command %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "aeconform grpc:", err)
		os.Exit(1)
	}
}

// ---- test crypto ---------------------------------------------------------------

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, serial int64, isCA bool) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name, Organization: []string{mspID}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	if isCA {
		template.IsCA = true
		template.BasicConstraintsValid = true
		template.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		template.IPAddresses = nil
		ca, caKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	return der, key, err
}

// cryptoMain writes ca.pem and, per node, cert.pem + key.pem (MSP
// identity) and tls.crt + tls.key (TLS, for 127.0.0.1, server and client).
func cryptoMain(args []string) error {
	fs := flag.NewFlagSet("crypto", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory")
	nodes := fs.String("nodes", "", "comma-separated node names")
	fs.Parse(args)
	caDER, caKey, err := issue(nil, nil, "ca", 1, true)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(*dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	serial := int64(2)
	for _, node := range strings.Split(*nodes, ",") {
		if err := os.MkdirAll(filepath.Join(*dir, node), 0o700); err != nil {
			return err
		}
		for _, kind := range []string{"msp", "tls"} {
			der, key, err := issue(ca, caKey, kind+"-"+node, serial, false)
			serial++
			if err != nil {
				return err
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			certFile, keyFile := "cert.pem", "key.pem"
			if kind == "tls" {
				certFile, keyFile = "tls.crt", "tls.key"
			}
			if err := writePEM(filepath.Join(*dir, node, certFile), "CERTIFICATE", der); err != nil {
				return err
			}
			if err := writePEM(filepath.Join(*dir, node, keyFile), "PRIVATE KEY", keyDER); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- the crypto service: what Fabric's MSP-backed MCS does with X.509 -----------

type ecdsaMCS struct {
	roots    *x509.CertPool
	key      *ecdsa.PrivateKey
	identity []byte
}

func loadNode(dir, id string) (*ecdsaMCS, []byte, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	certPEM, err := os.ReadFile(filepath.Join(dir, id, "cert.pem"))
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, id, "key.pem"))
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, errors.New("no key PEM")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, err
	}
	identity := mustMarshal(&msp.SerializedIdentity{Mspid: mspID, IdBytes: certPEM})
	return &ecdsaMCS{roots: roots, key: parsed.(*ecdsa.PrivateKey), identity: identity}, caPEM, nil
}

func (m *ecdsaMCS) cert(identity api.PeerIdentityType) (*x509.Certificate, error) {
	sid := &msp.SerializedIdentity{}
	if err := proto.Unmarshal(identity, sid); err != nil {
		return nil, errors.Wrap(err, "not a SerializedIdentity")
	}
	if sid.Mspid != mspID {
		return nil, errors.Errorf("unknown MSP %q", sid.Mspid)
	}
	block, rest := pem.Decode(sid.IdBytes)
	if block == nil || len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("identity is not exactly one PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// GetPKIidOfCert is the real MCS's: SHA-256 of the MSP ID and the PEM.
func (m *ecdsaMCS) GetPKIidOfCert(identity api.PeerIdentityType) gcommon.PKIidType {
	sid := &msp.SerializedIdentity{}
	if err := proto.Unmarshal(identity, sid); err != nil {
		return nil
	}
	h := sha256.New()
	h.Write([]byte(sid.Mspid))
	h.Write(sid.IdBytes)
	return h.Sum(nil)
}

func (m *ecdsaMCS) VerifyBlock(channelID gcommon.ChannelID, seqNum uint64, block *cb.Block) error {
	return mcs{}.VerifyBlock(channelID, seqNum, block)
}

func (m *ecdsaMCS) VerifyBlockAttestation(channelID string, block *cb.Block) error {
	if block == nil || block.Header == nil {
		return errors.New("no header")
	}
	return nil
}

// Sign: ECDSA over SHA-256, DER, low S, as Fabric's BCCSP signs.
func (m *ecdsaMCS) Sign(msg []byte) ([]byte, error) {
	digest := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, m.key, digest[:])
	if err != nil {
		return nil, err
	}
	return utils.SignatureToLowS(&m.key.PublicKey, sig)
}

// Verify as Fabric's BCCSP: DER, low S (high S is refused), SHA-256.
func (m *ecdsaMCS) Verify(identity api.PeerIdentityType, signature, message []byte) error {
	cert, err := m.cert(identity)
	if err != nil {
		return err
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return errors.New("not an ECDSA key")
	}
	_, s, err := utils.UnmarshalECDSASignature(signature)
	if err != nil {
		return err
	}
	if low, err := utils.IsLowS(pub, s); err != nil || !low {
		return errors.New("invalid S. Must be smaller than half the order")
	}
	digest := sha256.Sum256(message)
	if !ecdsa.VerifyASN1(pub, digest[:], signature) {
		return errors.New("signature verification failed")
	}
	return nil
}

// VerifyByChannel: every valid member of the one org reads the channel.
func (m *ecdsaMCS) VerifyByChannel(_ gcommon.ChannelID, identity api.PeerIdentityType, signature, message []byte) error {
	if err := m.ValidateIdentity(identity); err != nil {
		return err
	}
	return m.Verify(identity, signature, message)
}

func (m *ecdsaMCS) ValidateIdentity(identity api.PeerIdentityType) error {
	cert, err := m.cert(identity)
	if err != nil {
		return err
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: m.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func (m *ecdsaMCS) Expiration(identity api.PeerIdentityType) (time.Time, error) {
	cert, err := m.cert(identity)
	if err != nil {
		return time.Time{}, err
	}
	return cert.NotAfter, nil
}

type orgAdvisor struct{}

func (orgAdvisor) OrgByPeerIdentity(identity api.PeerIdentityType) api.OrgIdentityType {
	sid := &msp.SerializedIdentity{}
	if err := proto.Unmarshal(identity, sid); err != nil {
		return nil
	}
	return api.OrgIdentityType(sid.Mspid)
}

type joinChannel struct{}

func (joinChannel) SequenceNumber() uint64 { return 1 }
func (joinChannel) Members() []api.OrgIdentityType {
	return []api.OrgIdentityType{api.OrgIdentityType(mspID)}
}
func (joinChannel) AnchorPeersOf(api.OrgIdentityType) []api.AnchorPeer { return nil }

// noAnchors: discovery dereferences the tracker when an Alive expires.
type noAnchors struct{}

func (noAnchors) IsAnchorPeer(string) bool { return false }

// ---- TLS ---------------------------------------------------------------------------

func tlsPair(dir, id string) (tls.Certificate, error) {
	return tls.LoadX509KeyPair(filepath.Join(dir, id, "tls.crt"), filepath.Join(dir, id, "tls.key"))
}

// ---- a full node ------------------------------------------------------------------

// nodeMain runs gossip.New with the state provider on 127.0.0.1, the chain
// up to -height in its ledger, as Fabric's state tests build a peer
// (state_test.go newPeerNodeWithGossipWithValidatorWithMetrics), with
// TLS and the crypto of -dir.
func nodeMain(args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	dir := fs.String("dir", "", "crypto directory")
	id := fs.String("id", "", "node name (its crypto subdirectory)")
	channelName := fs.String("channel", "testchannelid", "channel")
	blocks := fs.Uint64("blocks", 0, "length of the shared chain")
	height := fs.Uint64("height", 1, "blocks already in the ledger")
	enabled := fs.Bool("state", false, "peer.gossip.state.enabled: run the requester")
	bootstrap := fs.String("bootstrap", "", "a peer to bootstrap from")
	blockSize := fs.Int("block-size", 0, "pad each block's transaction to this many bytes")
	logSpec := fs.String("logspec", "warning", "Fabric log spec")
	plaintext := fs.Bool("plaintext", false, "peer.tls.enabled: false (no TLS; the handshake binds no certificate)")
	fs.Parse(args)
	flogging.Init(flogging.Config{
		Format:  "%{time:2006-01-02 15:04:05.000} %{level:.4s} [%{module}] %{shortfunc} -> %{message}",
		LogSpec: *logSpec,
		Writer:  os.Stderr,
	})
	out := newFrameWriter(os.Stdout)
	cs, caPEM, err := loadNode(*dir, *id)
	if err != nil {
		return err
	}
	pair, err := tlsPair(*dir, *id)
	if err != nil {
		return err
	}
	certPEM, _ := os.ReadFile(filepath.Join(*dir, *id, "tls.crt"))
	keyPEM, _ := os.ReadFile(filepath.Join(*dir, *id, "tls.key"))
	secOpts := fcomm.SecureOptions{UseTLS: true, Certificate: certPEM, Key: keyPEM}
	if *plaintext {
		secOpts = fcomm.SecureOptions{}
	}
	srv, err := fcomm.NewGRPCServer("127.0.0.1:0", fcomm.ServerConfig{
		ConnectionTimeout: 5 * time.Second,
		SecOpts:           secOpts,
	})
	if err != nil {
		return err
	}
	endpoint := srv.Address()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots})
	// As the peer does: with TLS off, gossip is given no certificates
	// (useTLS := tlsCerts != nil) and dials insecure.
	certs := &gcommon.TLSCertificates{}
	certs.TLSServerCert.Store(&pair)
	certs.TLSClientCert.Store(&pair)
	if *plaintext {
		creds = insecure.NewCredentials()
		certs = nil
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
	}
	var boot []string
	if *bootstrap != "" {
		boot = []string{*bootstrap}
	}
	conf := &gossip.Config{
		BindPort:                     0,
		BootstrapPeers:               boot,
		ID:                           *id,
		MaxBlockCountToStore:         0,
		MaxPropagationBurstLatency:   10 * time.Millisecond,
		MaxPropagationBurstSize:      10,
		PropagateIterations:          1,
		PropagatePeerNum:             3,
		PullInterval:                 4 * time.Second,
		PullPeerNum:                  5,
		InternalEndpoint:             endpoint,
		ExternalEndpoint:             endpoint,
		PublishCertPeriod:            10 * time.Second,
		RequestStateInfoInterval:     4 * time.Second,
		PublishStateInfoInterval:     4 * time.Second,
		TimeForMembershipTracker:     5 * time.Second,
		TLSCerts:                     certs,
		DigestWaitTime:               algo.DefDigestWaitTime,
		RequestWaitTime:              algo.DefRequestWaitTime,
		ResponseWaitTime:             algo.DefResponseWaitTime,
		DialTimeout:                  comm.DefDialTimeout,
		ConnTimeout:                  comm.DefConnTimeout,
		RecvBuffSize:                 comm.DefRecvBuffSize,
		SendBuffSize:                 200,
		MsgExpirationTimeout:         channel.DefMsgExpirationTimeout,
		AliveTimeInterval:            discovery.DefAliveTimeInterval,
		AliveExpirationTimeout:       discovery.DefAliveExpirationTimeout,
		AliveExpirationCheckInterval: discovery.DefAliveExpirationCheckInterval,
		ReconnectInterval:            discovery.DefReconnectInterval,
		MaxConnectionAttempts:        discovery.DefMaxConnectionAttempts,
		MsgExpirationFactor:          discovery.DefMsgExpirationFactor,
	}
	gossipMetrics := metrics.NewGossipMetrics(&disabled.Provider{})
	g := gossip.New(conf, srv.Server(), orgAdvisor{}, cs, cs.identity, func() []grpc.DialOption { return dialOpts }, gossipMetrics, noAnchors{})
	g.JoinChan(joinChannel{}, gcommon.ChannelID(*channelName))
	go srv.Start()

	chain := makeChain(*channelName, *blocks)
	if *blockSize > 0 {
		chain = padChain(*channelName, *blocks, *blockSize)
	}
	ledger := &chainLedger{out: out, identity: *id, chain: chain, height: *height, ignorePvt: true,
		// The ledger tells gossip its height as it commits, as the real
		// peer's committer does (so its StateInfo follows).
		onCommit: func(h uint64) { g.UpdateLedgerHeight(h, gcommon.ChannelID(*channelName)) },
	}
	g.UpdateLedgerHeight(*height, gcommon.ChannelID(*channelName))
	config := &state.StateConfig{
		StateCheckInterval:   state.DefStateCheckInterval,
		StateResponseTimeout: state.DefStateResponseTimeout,
		StateBatchSize:       state.DefStateBatchSize,
		StateMaxRetries:      state.DefStateMaxRetries,
		StateBlockBufferSize: state.DefStateBlockBufferSize,
		StateChannelSize:     state.DefStateChannelSize,
		StateEnabled:         *enabled,
	}
	logger := util.GetLogger(util.StateLogger, *id)
	mediator := &state.ServicesMediator{GossipAdapter: g, MCSAdapter: cs}
	state.NewGossipStateProvider(logger, *channelName, mediator, ledger, gossipMetrics.StateMetrics, true, config)
	pki := cs.GetPKIidOfCert(cs.identity)
	out.emit(evListening, func(e *encoder) {
		e.str(endpoint)
		e.bytes(pki)
	})
	out.emit(evReady, func(e *encoder) { e.u64(*height) })

	for {
		kind, _, err := readFrame(os.Stdin)
		if err == io.EOF || (err == nil && kind == cmdStop) {
			out.emit(evStopped, nil)
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// padChain is makeChain with one transaction of `size` bytes per block,
// for the benchmarks.
func padChain(channel string, length uint64, size int) []chainBlock {
	chain := make([]chainBlock, 0, length)
	var previousHash []byte
	for seq := uint64(0); seq < length; seq++ {
		block := protoutil.NewBlock(seq, previousHash)
		tx := transaction(channel, seq, 0)
		env := &cb.Envelope{}
		_ = proto.Unmarshal(tx, env)
		env.Signature = make([]byte, size)
		block.Data.Data = append(block.Data.Data, mustMarshal(env))
		block.Header.DataHash = protoutil.ComputeBlockDataHash(block.Data)
		block.Metadata.Metadata[cb.BlockMetadataIndex_SIGNATURES] = mustMarshal(&cb.Metadata{Value: []byte("orderer signatures")})
		previousHash = protoutil.BlockHeaderHash(block.Header)
		chain = append(chain, chainBlock{block: block})
	}
	return chain
}

// blocksMain writes the first -upto blocks of the chain (as the nodes
// build it) as <number>.block files, for examples/fabric_peer.rs.
func blocksMain(args []string) error {
	fs := flag.NewFlagSet("blocks", flag.ExitOnError)
	dir := fs.String("out", "", "output directory")
	channelName := fs.String("channel", "testchannelid", "channel")
	blocks := fs.Uint64("blocks", 0, "length of the chain")
	upto := fs.Uint64("upto", 1, "how many blocks to write")
	blockSize := fs.Int("block-size", 0, "as the nodes' -block-size")
	fs.Parse(args)
	chain := makeChain(*channelName, *blocks)
	if *blockSize > 0 {
		chain = padChain(*channelName, *blocks, *blockSize)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	for seq := uint64(0); seq < *upto && seq < uint64(len(chain)); seq++ {
		path := filepath.Join(*dir, fmt.Sprintf("%d.block", seq))
		if err := os.WriteFile(path, mustMarshal(chain[seq].block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ---- a client that misbehaves in the handshake ----------------------------------

// attackMain dials -target as a raw gRPC client and runs one of
// TestHandshake's bad handshakes, or a valid one followed by a state
// response of -size bytes; it prints what the server did.
func attackMain(args []string) error {
	fs := flag.NewFlagSet("attack", flag.ExitOnError)
	dir := fs.String("dir", "", "crypto directory")
	id := fs.String("id", "", "our node name")
	other := fs.String("other", "", "another node, whose key signs for kind=badsig")
	kind := fs.String("kind", "", "nocert | wronghash | badsig | pkimismatch | silent | size")
	target := fs.String("target", "", "address")
	size := fs.Int("size", 0, "kind=size: bytes of the block in the state response")
	channelName := fs.String("channel", "testchannelid", "channel")
	fs.Parse(args)
	cs, caPEM, err := loadNode(*dir, *id)
	if err != nil {
		return err
	}
	pair, err := tlsPair(*dir, *id)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tlsConf := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots}
	if *kind == "nocert" {
		tlsConf.Certificates = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(*target,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*maxMsg), grpc.MaxCallSendMsgSize(2*maxMsg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pg.NewGossipClient(conn)
	if _, err := client.Ping(ctx, &pg.Empty{}); err != nil {
		fmt.Println("ping failed:", err)
		return nil
	}
	stream, err := client.GossipStream(ctx)
	if err != nil {
		fmt.Println("stream failed:", err)
		return nil
	}
	hash := sha256.Sum256(pair.Certificate[0])
	certHash := hash[:]
	pki := []byte(cs.GetPKIidOfCert(cs.identity))
	switch *kind {
	case "wronghash":
		certHash = make([]byte, 32)
	case "pkimismatch":
		pki = []byte("someone else")
	}
	msg := &pg.GossipMessage{
		Tag: pg.GossipMessage_EMPTY,
		Content: &pg.GossipMessage_Conn{Conn: &pg.ConnEstablish{
			PkiId: pki, Identity: cs.identity, TlsCertHash: certHash,
		}},
	}
	payload := mustMarshal(msg)
	signer := cs
	if *kind == "badsig" {
		signer, _, err = loadNode(*dir, *other)
		if err != nil {
			return err
		}
	}
	sig, err := signer.Sign(payload)
	if err != nil {
		return err
	}
	if *kind != "silent" {
		if err := stream.Send(&pg.Envelope{Payload: payload, Signature: sig}); err != nil {
			fmt.Println("send failed:", err)
		}
	}
	if *kind == "size" {
		block := protoutil.NewBlock(1, nil)
		block.Data.Data = [][]byte{make([]byte, *size)}
		response := &pg.GossipMessage{
			Nonce: 1, Channel: []byte(*channelName), Tag: pg.GossipMessage_CHAN_OR_ORG,
			Content: &pg.GossipMessage_StateResponse{StateResponse: &pg.RemoteStateResponse{
				Payloads: []*pg.Payload{{SeqNum: 1, Data: mustMarshal(block)}},
			}},
		}
		envelope := &pg.Envelope{Payload: mustMarshal(response)}
		fmt.Println("sending", proto.Size(envelope), "bytes")
		if err := stream.Send(envelope); err != nil {
			fmt.Println("send failed:", err)
		}
	}
	// The server's ConnEstablish (or its refusal), then how the stream ends.
	if _, err := stream.Recv(); err != nil {
		fmt.Println("stream ended:", err)
		return nil
	}
	fmt.Println("received ConnEstablish")
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		fmt.Println("stream ended:", err)
	case <-time.After(3 * time.Second):
		fmt.Println("stream open")
	}
	return nil
}

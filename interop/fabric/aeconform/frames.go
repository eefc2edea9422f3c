/*
Copyright the antientropy authors. SPDX-License-Identifier: Apache-2.0
*/

package main

// The pipe protocol between this program and the Rust driver: frames on
// stdin (commands) and stdout (events). A frame is a big-endian u32 length,
// then that many bytes: one kind byte and the body. Bodies are sequences of
// u8, u32 and u64 (big-endian) and byte strings (a u32 length, then the
// bytes). Envelopes travel as the exact bytes Fabric marshals or receives.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Commands, driver to harness.
const (
	cmdMembership = 0x01 // u32 n, n × (id, u8 hasProperties, u64 height, u8 leftChannel)
	cmdStart      = 0x02 // (nothing): build the GossipStateProviderImpl
	cmdDeliver    = 0x03 // from, envelope: a message on the connection from `from`
	cmdGossip     = 0x04 // envelope: a message from the gossip layer (DataMsg)
	cmdStacks     = 0x05 // (nothing): dump every goroutine's stack
	cmdStop       = 0x06 // (nothing): Stop() the provider and exit
)

// Events, harness to driver.
const (
	evReady      = 0x81 // u64 ledger height, once the provider runs
	evSend       = 0x82 // to, envelope: GossipAdapter.Send, once per peer
	evRespond    = 0x83 // to, envelope: ReceivedMessage.Respond on the connection from `to`
	evCommitted  = 0x84 // u64 seq: StoreBlock accepted the block (order and content checked)
	evViolation  = 0x85 // text: the ledger or the bridge saw something wrong
	evFiltered   = 0x86 // from, reason: a delivered message that reached no subscriber
	evStacks     = 0x87 // text
	evChainBlock = 0x88 // u64 seq, block bytes, u32 n, n × private data payload bytes
	evChainEnd   = 0x89 // (nothing)
	evStopped    = 0x8a // (nothing)
)

// maxFrame bounds what a malformed length can make us allocate.
const maxFrame = 256 << 20

type encoder struct{ buf []byte }

func (e *encoder) u8(v byte)    { e.buf = append(e.buf, v) }
func (e *encoder) u32(v uint32) { e.buf = binary.BigEndian.AppendUint32(e.buf, v) }
func (e *encoder) u64(v uint64) { e.buf = binary.BigEndian.AppendUint64(e.buf, v) }
func (e *encoder) bytes(b []byte) {
	e.u32(uint32(len(b)))
	e.buf = append(e.buf, b...)
}
func (e *encoder) str(s string) { e.bytes([]byte(s)) }

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.buf) < n {
		d.err = errors.New("truncated frame")
		return nil
	}
	out := d.buf[:n]
	d.buf = d.buf[n:]
	return out
}

func (d *decoder) u8() byte {
	b := d.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *decoder) u32() uint32 {
	b := d.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *decoder) u64() uint64 {
	b := d.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (d *decoder) bytes() []byte {
	n := d.u32()
	b := d.take(int(n))
	// A copy: the frame buffer is not kept.
	return append([]byte(nil), b...)
}

func (d *decoder) str() string { return string(d.bytes()) }

// frameWriter serialises frames from many goroutines (Fabric's requester,
// responder and committer all emit events).
type frameWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{w: bufio.NewWriter(w)}
}

func (f *frameWriter) emit(kind byte, body func(e *encoder)) {
	e := &encoder{buf: []byte{kind}}
	if body != nil {
		body(e)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var length [4]byte
	binary.BigEndian.PutUint32(length[:], uint32(len(e.buf)))
	// A write error means the driver is gone: nothing left to report to.
	_, _ = f.w.Write(length[:])
	_, _ = f.w.Write(e.buf)
	_ = f.w.Flush()
}

func readFrame(r io.Reader) (byte, *decoder, error) {
	var length [4]byte
	if _, err := io.ReadFull(r, length[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(length[:])
	if n == 0 || n > maxFrame {
		return 0, nil, fmt.Errorf("bad frame length %d", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, err
	}
	return buf[0], &decoder{buf: buf[1:]}, nil
}

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// directPair returns a loopback TCP connection pair whose first end is a
// directConn.
func directPair(t *testing.T) (*directConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	dc, ok := newDirectConn(dialed).(*directConn)
	if !ok {
		t.Fatal("a TCP connection was not wrapped")
	}
	t.Cleanup(func() { dc.Close(); peer.Close() })
	return dc, peer.(*net.TCPConn)
}

func TestDirectConnCarriesBytesBothWays(t *testing.T) {
	for _, size := range []int{1, 5, 8 << 10, 4 << 20} { // 4 MiB fills the socket: writes must wait
		dc, peer := directPair(t)
		data := bytes.Repeat([]byte("pgtenant"), size/8+1)[:size]

		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(io.LimitReader(peer, int64(size)))
			got <- b
		}()
		if n, err := dc.Write(data); err != nil || n != size {
			t.Fatalf("size %d: Write = %d, %v", size, n, err)
		}
		if b := <-got; !bytes.Equal(b, data) {
			t.Fatalf("size %d: peer read %d bytes, not what was written", size, len(b))
		}

		go func() { _, _ = peer.Write(data) }()
		back := make([]byte, size)
		if _, err := io.ReadFull(dc, back); err != nil || !bytes.Equal(back, data) {
			t.Fatalf("size %d: read back: %v", size, err)
		}
	}
}

func TestDirectConnErrorsAreNetConns(t *testing.T) {
	tests := []struct {
		name  string
		setup func(dc *directConn, peer *net.TCPConn)
		check func(err error) bool
		text  string // in the error message
	}{
		{
			name:  "peer closed: EOF",
			setup: func(_ *directConn, peer *net.TCPConn) { peer.Close() },
			check: func(err error) bool { return err == io.EOF },
			text:  "EOF",
		},
		{
			name:  "deadline passed",
			setup: func(dc *directConn, _ *net.TCPConn) { _ = dc.SetReadDeadline(time.Now().Add(-time.Second)) },
			check: func(err error) bool {
				var ne net.Error
				return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
			},
			text: "read tcp",
		},
		{
			name:  "deadline while waiting",
			setup: func(dc *directConn, _ *net.TCPConn) { _ = dc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) },
			check: func(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) },
			text:  "i/o timeout",
		},
		{
			name:  "closed here",
			setup: func(dc *directConn, _ *net.TCPConn) { dc.Close() },
			check: func(err error) bool { return errors.Is(err, net.ErrClosed) },
			text:  "use of closed network connection",
		},
		{
			name: "peer reset",
			setup: func(_ *directConn, peer *net.TCPConn) {
				_ = peer.SetLinger(0)
				peer.Close()
				time.Sleep(20 * time.Millisecond)
			},
			check: func(err error) bool { return errors.Is(err, syscall.ECONNRESET) },
			text:  "read tcp 127.0.0.1:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dc, peer := directPair(t)
			tt.setup(dc, peer)
			n, err := dc.Read(make([]byte, 16))
			if n != 0 || !tt.check(err) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("Read = %d, %v (%T); want the error net.Conn gives, mentioning %q", n, err, err, tt.text)
			}
		})
	}
}

func TestDirectConnWriteAfterPeerReset(t *testing.T) {
	dc, peer := directPair(t)
	_ = peer.SetLinger(0)
	peer.Close()
	time.Sleep(20 * time.Millisecond)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = dc.Write([]byte("x"))
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Write to a reset connection: %v, want ECONNRESET or EPIPE", err)
	}
}

func TestDirectConnAllocatesNothing(t *testing.T) {
	dc, peer := directPair(t)
	msg := []byte("Q\x00\x00\x00\x0dSELECT 1\x00")
	buf := make([]byte, 64)
	go func() { _, _ = io.Copy(peer, peer) }() // echo
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := dc.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(dc, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read, want 0", allocs)
	}
}

func TestNewDirectConnLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if newDirectConn(a) != a {
		t.Fatal("a net.Pipe end, which has no file descriptor, was wrapped")
	}
}

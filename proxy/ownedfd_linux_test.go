package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ownedPair returns an owned directConn and its plain peer over loopback.
func ownedPair(t *testing.T) (*directConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	dc := newDirectConn(conn).(*directConn)
	goFD := connFD(dc)
	if err := dc.own(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.(*net.TCPConn).SyscallConn(); err == nil {
		var ctlErr error
		raw, _ := conn.(*net.TCPConn).SyscallConn()
		ctlErr = raw.Control(func(uintptr) {})
		if ctlErr == nil {
			t.Fatal("Go's socket still open after own")
		}
	}
	if fd := connFD(dc); fd == goFD || fd < 0 {
		t.Fatalf("owned descriptor %d, Go's was %d", fd, goFD)
	}
	return dc, peer
}

func TestOwnedConnRelays(t *testing.T) {
	dc, peer := ownedPair(t)
	defer dc.Close()
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := dc.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	big := make([]byte, 4<<20) // more than the socket buffers: the write waits
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	if n, err := dc.Write(big); err != nil || n != len(big) {
		t.Fatalf("wrote %d of %d: %v", n, len(big), err)
	}
	if dc.LocalAddr() == nil || dc.RemoteAddr() == nil {
		t.Fatal("addresses lost")
	}
}

func TestOwnedConnDeadlines(t *testing.T) {
	dc, peer := ownedPair(t)
	defer dc.Close()
	_ = dc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := dc.Read(make([]byte, 8))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("deadline hit after %v", d)
	}
	// A deadline moved during a wait is seen (interrupting a read).
	_ = dc.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := dc.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = dc.SetReadDeadline(time.Unix(1, 0))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("interrupted read: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a past deadline did not end the read")
	}
	// Cleared, reads work again.
	_ = dc.SetReadDeadline(time.Time{})
	_, _ = peer.Write([]byte("x"))
	if _, err := dc.Read(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
}

// Close wakes a blocked read with net.ErrClosed, and the descriptor is
// closed once, by the last call that used it.
func TestOwnedConnCloseUnderARead(t *testing.T) {
	var closes atomic.Int32
	defer func(f func(int) error) { closeFD = f }(closeFD)
	closeFD = func(fd int) error { closes.Add(1); return unix.Close(fd) }

	dc, _ := ownedPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := dc.Read(make([]byte, 8))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := dc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read under Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the read")
	}
	if err := dc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := dc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	if n := closes.Load(); n != 1 {
		t.Fatalf("descriptor closed %d times", n)
	}
}

// Close racing with calls in flight never closes the descriptor under one
// of them: every close sees no reference left.
func TestOwnedConnCloseRaces(t *testing.T) {
	var bad, closes atomic.Int32
	var current *ownedFD
	defer func(f func(int) error) { closeFD = f }(closeFD)
	closeFD = func(fd int) error {
		closes.Add(1)
		if current.state.Load() != ownedClosing {
			bad.Add(1)
		}
		return unix.Close(fd)
	}
	for i := 0; i < 200; i++ {
		dc, peer := ownedPair(t)
		current = dc.owned
		go func() { _, _ = io.Copy(io.Discard, peer) }()
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					if _, err := dc.Write([]byte("0123456789")); err != nil {
						return
					}
					_ = dc.SetWriteDeadline(time.Now().Add(time.Second))
				}
			}()
		}
		time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
		_ = dc.Close()
		wg.Wait()
		peer.Close()
	}
	if bad.Load() != 0 || closes.Load() != 200 {
		t.Fatalf("%d closes with a call in flight, %d closes for 200 sockets", bad.Load(), closes.Load())
	}
}

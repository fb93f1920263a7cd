//go:build linux

package main

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bufSize is every relay's read buffer: larger than any pgbench message, so
// one read takes whatever the peer sent.
const bufSize = 16 << 10

// serveGoroutines is the goroutine-per-connection model: per client, one
// upstream connection and two goroutines, each copying one direction with a
// read-then-write loop. wrap turns a socket into what the loops read and
// write: the net.Conn itself (goroutine-net) or a rawConn (goroutine-raw).
//
// The loop is written out rather than io.Copy: between two TCP sockets
// io.Copy splices through a pipe (two splice calls per chunk), which is not
// what a proxy that looks at the bytes can do.
func serveGoroutines(ln net.Listener, upstream string, wrap func(net.Conn) net.Conn) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				return
			}
			client, server := wrap(c), wrap(u)
			go copyLoop(server, client)
			copyLoop(client, server)
		}()
	}
}

// copyLoop copies src to dst until either fails, then closes both, which
// ends the other direction's loop too.
func copyLoop(dst, src net.Conn) {
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	src.Close()
	dst.Close()
}

// rawConn reads and writes a socket with plain non-blocking system calls
// (syscall.RawSyscall: no entersyscall/exitsyscall, so no wake-up of the
// runtime's sysmon) and waits on Go's network poller only on EAGAIN, as
// proxy/directconn_linux.go does. The relay has one reader and one writer
// goroutine per connection, so the read and write states need no locks.
type rawConn struct {
	net.Conn
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(uintptr) bool // bound once: no closure allocation per Read

	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool
}

func newRawConn(c net.Conn) net.Conn {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{Conn: c, rc: rc}
	r.readFn, r.writeFn = r.readOnce, r.writeAll
	return r
}

func (c *rawConn) Read(b []byte) (int, error) {
	c.rbuf, c.rn, c.rerr = b, 0, 0
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case c.rerr != 0:
		return 0, c.rerr
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

// readOnce makes one read; false asks the poller to wait for readability.
func (c *rawConn) readOnce(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

func (c *rawConn) Write(b []byte) (int, error) {
	c.wbuf, c.wn, c.werr = b, 0, 0
	err := c.rc.Write(c.writeFn)
	c.wbuf = nil
	switch {
	case err != nil:
		return c.wn, err
	case c.werr != 0:
		return c.wn, c.werr
	}
	return c.wn, nil
}

// writeAll writes until all is written (true), the socket is full (false:
// wait for writability) or an error (true, with werr).
func (c *rawConn) writeAll(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			c.wn += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

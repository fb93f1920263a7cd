package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directConn is a socket whose reads and writes are plain system calls,
// waiting on Go's network poller only when the socket is not ready.
//
// Why not net.TCPConn's own Read and Write: they go through the runtime's
// blocking-syscall entry, which wakes the runtime's monitor thread (sysmon)
// whenever every P was idle before the call — the normal state of a proxy
// that waits on the network. That is one extra thread wake-up per message,
// and on a small VM a wake-up costs more than relaying the message: a bare
// Go byte-copying proxy made about 4.5 context switches per pgbench
// transaction and 6k tps with one client; the same copy with raw calls made 2
// and 9.3k, PgBouncer's figures. Reads and writes on a non-blocking socket
// never block, so they need none of what the blocking entry provides.
//
// Deadlines, Close and the errors they cause are net.Conn's own: the waits
// are the poller's (syscall.RawConn).
type directConn struct {
	net.Conn
	raw   syscall.RawConn
	owned *ownedFD // set when the socket is out of Go's poller (own)

	readMu     sync.Mutex
	readBuf    []byte
	readN      int
	readErr    syscall.Errno
	readFn     func(uintptr) bool // c.readOnce, bound once: no allocation per Read
	readNoWait bool               // readNow: EAGAIN is the answer, not a wait
	// loopReads: an event loop reads this socket (eventloop_linux.go): a
	// read that must wait tells it first (loopWouldBlock).
	loopReads bool

	writeMu  sync.Mutex
	writeBuf []byte
	writeN   int
	writeErr syscall.Errno
	writeFn  func(uintptr) bool
}

// newDirectConn wraps conn when it is a socket the poller manages, and
// returns it unchanged otherwise.
func newDirectConn(conn net.Conn) net.Conn {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	c := &directConn{Conn: conn, raw: raw}
	c.readFn, c.writeFn = c.readOnce, c.writeSome
	return c
}

func (c *directConn) Read(b []byte) (int, error) { return c.read(b, false) }

// readNow reads what the socket holds without waiting: errWouldBlock if
// nothing.
func (c *directConn) readNow(b []byte) (int, error) { return c.read(b, true) }

// errWouldBlock: nothing to read now (readNow).
var errWouldBlock = errors.New("would block")

func (c *directConn) read(b []byte, noWait bool) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.readMu.Lock()
	c.readBuf, c.readN, c.readErr, c.readNoWait = b, 0, 0, noWait
	err := c.raw.Read(c.readFn)
	n, errno := c.readN, c.readErr
	c.readBuf = nil
	c.readMu.Unlock()
	switch {
	case err != nil:
		return 0, renameOp(err, "read")
	case errno == unix.EAGAIN:
		return 0, errWouldBlock
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0 && c.owned != nil && c.owned.closing():
		// Closed under the read (its shutdown ended it): what Go's own
		// socket says then.
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readOnce makes one read; false asks the poller to wait for readability.
func (c *directConn) readOnce(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.readBuf[0])), uintptr(len(c.readBuf)))
		switch e {
		case 0:
			c.readN = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			if c.readNoWait {
				c.readErr = e
				return true
			}
			if c.loopReads {
				loopWouldBlock()
			}
			return false
		default:
			c.readErr = e
			return true
		}
	}
}

func (c *directConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.writeMu.Lock()
	c.writeBuf, c.writeN, c.writeErr = b, 0, 0
	err := c.raw.Write(c.writeFn)
	n, errno := c.writeN, c.writeErr
	c.writeBuf = nil
	c.writeMu.Unlock()
	switch {
	case err != nil:
		return n, renameOp(err, "write")
	case errno != 0:
		return n, c.opError("write", errno)
	}
	return n, nil
}

// writeSome writes until everything is written, the socket is full (false:
// wait for writability) or an error.
func (c *directConn) writeSome(fd uintptr) bool {
	for c.writeN < len(c.writeBuf) {
		rest := c.writeBuf[c.writeN:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			c.writeN += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			loopWouldBlock() // rare: a full socket
			return false
		default:
			c.writeErr = e
			return true
		}
	}
	return true
}

// opError is the error net.Conn returns for a failed system call, so that
// logs and errors.Is see the same thing they would without directConn.
func (c *directConn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// renameOp turns RawConn's "raw-read"/"raw-write" into the plain operation
// names net.Conn uses (deadline and close errors).
func renameOp(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

// peerClosed reports whether the peer of a client connection has hung up
// (or shut down its side), even with data of its own still unread: a
// request side waiting on the upstream checks it now and then.
func peerClosed(conn net.Conn) bool {
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = tc.NetConn()
	}
	var raw syscall.RawConn
	switch c := conn.(type) {
	case *directConn:
		raw = c.raw
	case syscall.Conn:
		var err error
		if raw, err = c.SyscallConn(); err != nil {
			return false
		}
	default:
		return false
	}
	closed := false
	_ = raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			closed = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return closed
}

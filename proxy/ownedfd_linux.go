package proxy

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ownedFD is a socket outside Go's network poller: a syscall.RawConn over
// a descriptor of pgtenant's own, for the sockets an event loop drives.
//
// Why: a socket in Go's poller wakes the runtime's own epoll_wait for each
// of its events whenever any goroutine waits on the poller or a timer (the
// listener's Accept always does), though no goroutine waits for that
// socket: under an event loop every event then costs two wake-ups
// (bench/iofloor, epoll-rawreg against epoll-raw).
//
// Lifetime: every system call on fd holds a reference (state's low bits);
// Close marks the descriptor closing, shuts the socket down (waking any
// wait) and the last reference closes it. A number is thus never closed
// while a call could still use it, and never reused under one: that is
// what keeps one client's bytes off another's socket.
type ownedFD struct {
	fd    int
	state atomic.Uint64 // ownedClosing | references in flight

	readDeadline  atomic.Int64 // Unix nanoseconds; 0: none
	writeDeadline atomic.Int64
	// readTimer, when set (wakeAtReadDeadline), fires at the read
	// deadline: an event loop that reads the socket has no read blocked
	// to see it, and is woken instead.
	readTimer *time.Timer
}

// wakeAtReadDeadline has f called whenever a read deadline set from now
// on passes. Called before the socket is shared.
func (o *ownedFD) wakeAtReadDeadline(f func()) {
	o.readTimer = time.AfterFunc(time.Hour, f)
	o.readTimer.Stop()
}

const ownedClosing = 1 << 63

// ownedWaitSlice bounds one poll(2) wait, so that a deadline moved during
// a wait is seen within it.
const ownedWaitSlice = 250 * time.Millisecond

// ownSocket takes the descriptor of a Go socket out of the poller: it
// duplicates it, then closes Go's (which leaves the socket open under the
// duplicate).
func ownSocket(conn net.Conn, raw interface {
	Control(func(uintptr)) error
}) (*ownedFD, error) {
	fd, dupErr := -1, error(nil)
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, os.NewSyscallError("fcntl", dupErr)
	}
	_ = conn.Close()
	return &ownedFD{fd: fd}, nil
}

func (o *ownedFD) closing() bool { return o.state.Load()&ownedClosing != 0 }

// closeFD closes a descriptor whose last reference is gone (a variable for
// the tests).
var closeFD = unix.Close

func (o *ownedFD) acquire() bool {
	for {
		s := o.state.Load()
		if s&ownedClosing != 0 {
			return false
		}
		if o.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

func (o *ownedFD) release() {
	if o.state.Add(^uint64(0)) == ownedClosing {
		_ = closeFD(o.fd)
	}
}

// Close closes the socket once no call uses it; a call waiting for it
// wakes (shutdown) and fails with net.ErrClosed.
func (o *ownedFD) Close() error {
	for {
		s := o.state.Load()
		if s&ownedClosing != 0 {
			return net.ErrClosed
		}
		// Closing, and a reference of its own for the shutdown.
		if o.state.CompareAndSwap(s, (s|ownedClosing)+1) {
			if s != 0 {
				_ = unix.Shutdown(o.fd, unix.SHUT_RDWR)
			}
			o.release()
			return nil
		}
	}
}

func (o *ownedFD) Control(f func(fd uintptr)) error {
	if !o.acquire() {
		return &net.OpError{Op: "raw-control", Err: net.ErrClosed}
	}
	defer o.release()
	f(uintptr(o.fd))
	return nil
}

func (o *ownedFD) Read(f func(fd uintptr) bool) error {
	return o.do(f, unix.POLLIN|unix.POLLRDHUP, &o.readDeadline, "raw-read")
}

func (o *ownedFD) Write(f func(fd uintptr) bool) error {
	return o.do(f, unix.POLLOUT, &o.writeDeadline, "raw-write")
}

// do calls f until it reports done, waiting for the socket in poll(2)
// between calls: only a goroutine that is not the event loop waits here.
func (o *ownedFD) do(f func(fd uintptr) bool, events int16, deadline *atomic.Int64, op string) error {
	if !o.acquire() {
		return &net.OpError{Op: op, Err: net.ErrClosed}
	}
	defer o.release()
	for {
		if d := deadline.Load(); d != 0 && time.Now().UnixNano() >= d {
			return &net.OpError{Op: op, Err: os.ErrDeadlineExceeded}
		}
		if f(uintptr(o.fd)) {
			return nil
		}
		if err := o.wait(events, deadline); err != nil {
			return &net.OpError{Op: op, Err: err}
		}
	}
}

func (o *ownedFD) wait(events int16, deadline *atomic.Int64) error {
	for {
		if o.closing() {
			return net.ErrClosed
		}
		slice := ownedWaitSlice
		if d := deadline.Load(); d != 0 {
			left := time.Duration(d - time.Now().UnixNano())
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			slice = min(slice, left)
		}
		fds := [1]unix.PollFd{{Fd: int32(o.fd), Events: events}}
		n, err := unix.Poll(fds[:], int(max(slice/time.Millisecond, 1)))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("poll", err)
		}
		if n > 0 {
			return nil // ready, or hung up: the next call says which
		}
	}
}

func (o *ownedFD) setDeadline(read, write bool, t time.Time) error {
	if o.closing() {
		return net.ErrClosed
	}
	var d int64
	if !t.IsZero() {
		d = max(t.UnixNano(), 1)
	}
	if read {
		o.readDeadline.Store(d)
		if o.readTimer != nil {
			if d == 0 {
				o.readTimer.Stop()
			} else {
				o.readTimer.Reset(time.Until(t))
			}
		}
	}
	if write {
		o.writeDeadline.Store(d)
	}
	return nil
}

// own takes c's socket out of Go's poller; c's reads, writes, deadlines
// and Close then go to the owned descriptor. Called before anyone else
// uses c.
func (c *directConn) own() error {
	o, err := ownSocket(c.Conn, c.raw)
	if err != nil {
		return err
	}
	c.owned, c.raw = o, o
	return nil
}

func (c *directConn) Close() error {
	if c.owned != nil {
		if err := c.owned.Close(); err != nil {
			return &net.OpError{Op: "close", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
		}
		return nil
	}
	return c.Conn.Close()
}

func (c *directConn) SetDeadline(t time.Time) error {
	if c.owned != nil {
		return c.owned.setDeadline(true, true, t)
	}
	return c.Conn.SetDeadline(t)
}

func (c *directConn) SetReadDeadline(t time.Time) error {
	if c.owned != nil {
		return c.owned.setDeadline(true, false, t)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *directConn) SetWriteDeadline(t time.Time) error {
	if c.owned != nil {
		return c.owned.setDeadline(false, true, t)
	}
	return c.Conn.SetWriteDeadline(t)
}

//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// How the event loop waits for the next events.
const (
	// waitBlock: the loop owns a locked OS thread and blocks in
	// epoll_wait(-1) through unix.EpollWait, i.e. the runtime's blocking
	// syscall entry (entersyscall/exitsyscall; sysmon may retake the P).
	waitBlock = "block"
	// waitRaw: the same, but epoll_pwait(-1) as a raw system call the
	// runtime does not see: the thread keeps its P while it sleeps.
	waitRaw = "raw"
	// waitPoller: the epoll fd is itself registered with Go's network
	// poller; the loop goroutine (not locked to a thread: waking a locked
	// goroutine means waking its own thread) parks until the poller reports
	// the epoll fd readable, then collects with epoll_wait(0).
	waitPoller = "poller"
	// waitRawRegistered: waitRaw, with every socket also registered with
	// Go's network poller (os.NewFile of a non-blocking socket registers
	// it, as net.Conn's sockets are): what an event loop over sockets
	// made by Go's net package meets. The runtime's own epoll_wait, in a
	// thread with nothing to run, then wakes on every event of every socket
	// too, though no goroutine waits for any.
	waitRawRegistered = "rawreg"
)

// side is one socket of a relayed pair.
type side struct {
	fd   int
	peer *side
	// out holds bytes for fd that a write could not take (EAGAIN) or that
	// arrived while the upstream connect was in flight.
	out        []byte
	connecting bool // non-blocking connect in flight: wait for EPOLLOUT
	reading    bool // EPOLLIN is registered
	writing    bool // EPOLLOUT is registered
	dead       bool
}

// loop is the single-threaded relay: every socket is non-blocking and in one
// level-triggered epoll set.
//
// Level-triggered, because then one read per readiness is enough: a
// pgbench message arrives whole and fits the buffer, the read takes it, and
// if anything were left epoll_wait would report the socket again.
// Edge-triggered needs a read until EAGAIN after every wake-up, one extra
// system call per message in a request-response protocol, to save
// re-reporting that this workload never needs. Sockets stay registered for
// EPOLLIN the whole time, so epoll_ctl is only called for backpressure
// (EPOLLOUT on a full socket, EPOLLIN off on its source until it drains)
// and at connect and close. PgBouncer (libevent) works the same way.
type loop struct {
	ep       int
	lfd      int
	upstream unix.SockaddrInet4
	sides    []*side // by fd
	buf      []byte
	events   []unix.EpollEvent
	toClose  []int // fds of pairs closed in this batch, closed after it
	// files holds the sockets registered with Go's poller
	// (waitRawRegistered), by fd: closed through them.
	files map[int]*os.File
}

// listenRaw opens a non-blocking listening socket on 127.0.0.1:0 and returns
// it with its port.
func listenRaw() (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return 0, 0, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return 0, 0, err
	}
	if err := unix.Listen(fd, 1024); err != nil {
		return 0, 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, 0, err
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}

// serveEpoll runs the event loop on lfd until a fatal error.
func serveEpoll(lfd int, upstream, wait string) error {
	ap, err := netip.ParseAddrPort(upstream)
	if err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("upstream %q: want an IPv4 address:port", upstream)
	}
	l := &loop{lfd: lfd, upstream: unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())},
		buf: make([]byte, bufSize), events: make([]unix.EpollEvent, 128)}
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return err
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return err
	}
	if wait == waitRawRegistered {
		wait, l.files = waitRaw, map[int]*os.File{}
		// Any server has a goroutine waiting on the poller (an Accept, an
		// HTTP endpoint) or a timer: only then does the runtime wait in its
		// own epoll_wait when it has nothing to run.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go func() { _, _ = ln.Accept() }()
	}
	switch wait {
	case waitBlock, waitRaw:
		runtime.LockOSThread()
		for {
			var n int
			if wait == waitBlock {
				n, err = unix.EpollWait(l.ep, l.events, -1)
			} else {
				r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.ep), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), ^uintptr(0), 0, 0)
				n, err = int(r), nil
				if e != 0 {
					err = e
				}
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			l.handle(n)
		}
	case waitPoller:
		if err := unix.SetNonblock(l.ep, true); err != nil {
			return err
		}
		// A non-blocking fd given to os.NewFile is registered with the
		// runtime's poller; RawConn.Read calls fn, and parks until the
		// poller reports the fd readable each time fn returns false.
		rc, err := os.NewFile(uintptr(l.ep), "epoll").SyscallConn()
		if err != nil {
			return err
		}
		var werr error
		fn := func(uintptr) bool {
			n, err := unix.EpollWait(l.ep, l.events, 0)
			switch {
			case err == unix.EINTR:
				return true
			case err != nil:
				werr = err
				return true
			case n == 0:
				return false
			}
			l.handle(n)
			return true
		}
		for werr == nil {
			if err := rc.Read(fn); err != nil {
				return err
			}
		}
		return werr
	}
	return fmt.Errorf("unknown wait %q", wait)
}

// handle processes n events from l.events.
func (l *loop) handle(n int) {
	for _, ev := range l.events[:n] {
		fd := int(ev.Fd)
		if fd == l.lfd {
			l.accept()
			continue
		}
		s := l.sides[fd]
		if s == nil || s.dead {
			continue
		}
		if ev.Events&unix.EPOLLOUT != 0 {
			l.writable(s)
		}
		switch {
		case s.dead:
		case s.reading && ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0:
			l.readable(s) // a hang-up or error shows as EOF or an error
		case ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0:
			// Reported even when not asked for: level-triggered, it would
			// be reported again and again.
			l.closePair(s)
		}
	}
	for _, fd := range l.toClose {
		l.sides[fd] = nil
		if f := l.files[fd]; f != nil {
			delete(l.files, fd)
			f.Close() // also removes it from both epoll sets
			continue
		}
		unix.Close(fd) // also removes it from the epoll set
	}
	l.toClose = l.toClose[:0]
}

// accept takes every pending client and starts its upstream connect.
func (l *loop) accept() {
	for {
		cfd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or a failure left for the next readiness
		}
		sfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(cfd)
			continue
		}
		// Go's net package sets TCP_NODELAY on every TCP socket, and so
		// does PgBouncer: the same here.
		_ = unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		_ = unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &side{fd: cfd, reading: true}
		s := &side{fd: sfd, reading: true, writing: true, peer: c}
		c.peer = s
		err = unix.Connect(sfd, &l.upstream)
		switch err {
		case nil:
			s.writing = false
		case unix.EINPROGRESS:
			s.connecting = true
		default:
			unix.Close(cfd)
			unix.Close(sfd)
			continue
		}
		if l.files != nil {
			l.files[cfd] = os.NewFile(uintptr(cfd), "client")
			l.files[sfd] = os.NewFile(uintptr(sfd), "upstream")
		}
		l.track(c)
		l.track(s)
		if unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, cfd, c.event()) != nil || unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, sfd, s.event()) != nil {
			l.closePair(c)
		}
	}
}

func (l *loop) track(s *side) {
	for s.fd >= len(l.sides) {
		l.sides = append(l.sides, nil)
	}
	l.sides[s.fd] = s
}

func (s *side) event() *unix.EpollEvent {
	var ev uint32
	if s.reading {
		ev |= unix.EPOLLIN
	}
	if s.writing {
		ev |= unix.EPOLLOUT
	}
	return &unix.EpollEvent{Events: ev, Fd: int32(s.fd)}
}

// setInterest registers s's reading and writing flags if they changed.
func (l *loop) setInterest(s *side, reading, writing bool) {
	if s.reading == reading && s.writing == writing {
		return
	}
	s.reading, s.writing = reading, writing
	if unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, s.fd, s.event()) != nil {
		l.closePair(s)
	}
}

// readable reads once from s and forwards what it got to its peer.
func (l *loop) readable(s *side) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(s.fd), uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)))
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
		return
	case e != 0 || n == 0:
		l.closePair(s)
		return
	}
	l.forward(s, l.buf[:n])
}

// forward writes b to src's peer directly; what the socket does not take is
// kept in the peer's out, and src stops being read until it drains.
func (l *loop) forward(src *side, b []byte) {
	dst := src.peer
	if dst.connecting || len(dst.out) > 0 {
		dst.out = append(dst.out, b...)
		l.setInterest(src, false, src.writing)
		return
	}
	for len(b) > 0 {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(dst.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			b = b[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			dst.out = append(dst.out, b...)
			l.setInterest(dst, dst.reading, true)
			if !src.dead {
				l.setInterest(src, false, src.writing)
			}
			return
		default:
			l.closePair(src)
			return
		}
	}
}

// writable finishes a connect, or flushes s.out; once it is empty, s's peer
// is read again.
func (l *loop) writable(s *side) {
	if s.connecting {
		if soErr, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			l.closePair(s)
			return
		}
		s.connecting = false
	}
	for len(s.out) > 0 {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(s.fd), uintptr(unsafe.Pointer(&s.out[0])), uintptr(len(s.out)))
		switch e {
		case 0:
			s.out = s.out[:copy(s.out, s.out[n:])]
		case unix.EINTR:
		case unix.EAGAIN:
			return
		default:
			l.closePair(s)
			return
		}
	}
	l.setInterest(s, s.reading, false)
	if !s.dead {
		l.setInterest(s.peer, true, s.peer.writing)
	}
}

// closePair ends both sides of s's pair; the fds are closed after the
// current batch of events, so that no later event in it meets a reused fd.
// Bytes still queued for either side are dropped: the relays are measured
// with pgbench, whose clients end with Terminate and then close.
func (l *loop) closePair(s *side) {
	for _, x := range []*side{s, s.peer} {
		if !x.dead {
			x.dead = true
			l.toClose = append(l.toClose, x.fd)
		}
	}
}

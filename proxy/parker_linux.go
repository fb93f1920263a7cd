package proxy

import (
	"errors"
	"net"
	goruntime "runtime"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parker holds transaction-mode clients that have been idle for a while
// without a goroutine each. Their sockets wait in an epoll set of the
// parker's own; one goroutine waits on it, and a client that sends
// something (or goes away) gets a goroutine again.
//
// Why: an idle client otherwise costs a goroutine blocked in a read, and a
// goroutine that has relayed queries keeps a stack of 4 KiB or more — the
// largest part of what an idle client costs. Only clients idle for longer
// than parkAfter are parked, so a busy client never pays for the hand-over.
type parker struct {
	epfd   int
	wakefd int // eventfd: tells the loop to stop
	sweep  func(idleSince time.Time)
	resume func(*relay) // gives a client its goroutine back

	// After freeAfter parks, when parking has stopped, free (at most every
	// freeEvery): freeAfterParks, freeEvery and freeMemory, which collects
	// garbage and gives every free page back to the system.
	freeAfter uint64
	freeEvery time.Duration
	free      func()

	mu     sync.Mutex
	parked map[int32]*relay
	closed bool   // no more parking
	parks  uint64 // clients parked so far
	done   chan struct{}

	closeOnce sync.Once
}

// parkAfter is how long a client waits in a read before it is parked.
const parkAfter = time.Second

// After freeAfterParks clients were parked, the parker returns free memory
// to the system once parking has stopped, at most every freeEvery.
const (
	freeAfterParks = 1000
	freeEvery      = 10 * time.Second
)

// newParker starts a parker whose loop calls sweep every parkAfter/2 to
// find clients to park. It returns nil if the system refuses (the clients
// then simply keep their goroutines).
func newParker(sweep func(idleSince time.Time), resume func(*relay)) *parker {
	return newParkerFreeing(sweep, resume, freeAfterParks, freeEvery, freeMemory)
}

// freeMemory collects garbage twice, then gives free pages back: a first
// collection only moves what the sync.Pools hold (the buffers and
// relayWork a burst of clients left there) to their victim caches, the
// second frees it.
func freeMemory() {
	goruntime.GC()
	debug.FreeOSMemory()
}

func newParkerFreeing(sweep func(idleSince time.Time), resume func(*relay), after uint64, every time.Duration, free func()) *parker {
	epfd, fds, ok := newEpollWithEventfds(1)
	if !ok {
		return nil
	}
	wakefd := fds[0]
	p := &parker{epfd: epfd, wakefd: wakefd, sweep: sweep, resume: resume, parked: map[int32]*relay{}, done: make(chan struct{}),
		freeAfter: after, freeEvery: every, free: free}
	go p.loop()
	return p
}

// newEpollWithEventfds makes an epoll set with n eventfds in it (a loop's
// wake-ups); ok is false, and nothing is left open, if the system refuses.
func newEpollWithEventfds(n int) (epfd int, fds []int, ok bool) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, nil, false
	}
	for range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err == nil {
			fds = append(fds, fd)
			err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
		}
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			unix.Close(epfd)
			return -1, nil, false
		}
	}
	return epfd, fds, true
}

// park hands over a client whose request side has just left (errParked).
// It reports false if the client cannot be parked; the caller then goes on
// serving it.
func (p *parker) park(r *relay) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || r.noPark.Load() {
		// Closed, or the session is ending: unpark, which comes before its
		// connection is closed, has already been and gone.
		return false
	}
	// Level-triggered and one-shot: bytes that came before this call wake
	// it at once, and one wake-up is all it gets.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: r.parkFD}
	if unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(r.parkFD), &ev) != nil {
		return false
	}
	p.parked[r.parkFD] = r
	p.parks++
	return true
}

// unpark takes a parked client back, before anyone closes its connection
// (the descriptor must not be reused while it is in the set), and resumes
// it on a goroutine of its own. Either way the client is never parked again:
// a request side on its way to park finds that out under the same lock.
func (p *parker) unpark(r *relay) {
	p.mu.Lock()
	r.noPark.Store(true)
	parked := p.parked[r.parkFD] == r
	if parked {
		p.takeLocked(r.parkFD)
	}
	p.mu.Unlock()
	if parked {
		go p.resume(r)
	}
}

// takeLocked removes the client parked on fd, if any, from the set and
// returns it. Caller holds p.mu.
func (p *parker) takeLocked(fd int32) *relay {
	r := p.parked[fd]
	if r != nil {
		delete(p.parked, fd)
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	}
	return r
}

func (p *parker) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	lastSweep := time.Now()
	var lastFree time.Time
	var parksBefore, parksAtFree uint64
	for {
		n, err := unix.EpollWait(p.epfd, events, int(parkAfter/2/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			p.resumeAll() // no more parking: nothing would wake them
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == p.wakefd {
				return
			}
			p.mu.Lock()
			r := p.takeLocked(ev.Fd)
			p.mu.Unlock()
			if r != nil {
				go p.resume(r)
			}
		}
		if now := time.Now(); now.Sub(lastSweep) >= parkAfter/2 {
			lastSweep = now
			p.sweep(now.Add(-parkAfter))
			p.mu.Lock()
			parks := p.parks
			p.mu.Unlock()
			// Many clients went idle and nobody since: the stacks of their
			// goroutines and what their logins used are free memory now.
			// Give it back to the system rather than keep it for a heap that
			// idle clients do not need (at most every freeEvery).
			if parks == parksBefore && parks-parksAtFree >= p.freeAfter && now.Sub(lastFree) >= p.freeEvery {
				parksAtFree, lastFree = parks, now
				go p.free()
			}
			parksBefore = parks
		}
	}
}

// close stops the loop and resumes every parked client; closing their
// connections then ends them. It is idempotent.
func (p *parker) close() {
	p.closeOnce.Do(func() {
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(p.wakefd, one)
		<-p.done
		p.resumeAll()
		unix.Close(p.epfd)
		unix.Close(p.wakefd)
	})
}

// resumeAll ends parking: every parked client gets a goroutine again and
// park refuses from now on.
func (p *parker) resumeAll() {
	p.mu.Lock()
	p.closed = true
	parked := make([]*relay, 0, len(p.parked))
	for fd := range p.parked {
		parked = append(parked, p.takeLocked(fd))
	}
	p.mu.Unlock()
	for _, r := range parked {
		go p.resume(r)
	}
}

// connFD returns the descriptor of a plain (not TLS) client connection, or
// -1: only those can wait in the parker's set, which sees the socket, not
// what a TLS layer may have buffered.
func connFD(conn net.Conn) int32 {
	dc, ok := conn.(*directConn)
	if !ok {
		return -1
	}
	fd := int32(-1)
	_ = dc.raw.Control(func(f uintptr) { fd = int32(f) })
	return fd
}

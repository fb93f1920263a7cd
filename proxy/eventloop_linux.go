package proxy

import (
	"bufio"
	"errors"
	"net"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// eventLoop drives transaction-mode clients and pooled connections from
// one epoll set instead of a goroutine each: when a client's socket is
// readable, the loop itself runs the request core on what arrived
// (clientToUpstream); when a pooled connection's is, the reply core
// (txPool.serveSome); it goes back to epoll_wait when there is nothing
// more to read.
//
// Why: with a goroutine per client, every message costs a read that fails
// (Go's poller clears readiness before it reads), a park and a wake-up of
// the goroutine, and often of a second thread; bench/iofloor measured that
// model at 1.1-1.35x PgBouncer's CPU per transaction and one event loop at
// 0.84-1.06x. The loop reads only on readiness.
//
// The core may block (replies owed, a pooled connection, a full socket);
// the loop must not. Before the core blocks, the loop hands itself over:
// a new goroutine becomes the loop (yield) and the one that was the loop
// finishes that client's work as its own goroutine, then gives the client
// back (park) when the client is idle again. The core calls the relay's
// waiter before each of its waits (waits.go); a read or write of a
// directConn that must wait calls loopWouldBlock. Sockets are registered
// level-triggered for good (no epoll_ctl per message): events left over at
// a hand-over are simply reported again to the new loop.
//
// The sockets are pgtenant's own (ownedfd_linux.go), out of Go's poller:
// a socket Go's poller holds wakes the runtime's own epoll_wait for each of
// its events, so a loop over Go's sockets gained nothing (issue 17).
// Waits for a pooled connection, the most common wait when clients
// outnumber connections, take no hand-over: the client waits in the
// pool's queue, out of the loop's events, and the grant readies it
// (queueForConnection, wake, the ready queue). A read deadline on a socket
// the loop reads (upstream_timeout) readies its item at the deadline.
//
// A client whose session ends is unparked: out of the set, on a goroutine.
// A pinned client waits for its next message on a goroutine (its idle
// timeout is a read deadline), and comes back once unpinned.
//
// Sharing: mu guards the fields it names; everything else of an item
// belongs to whoever runs its step (the loop, or the goroutine it was
// handed to), one at a time: loopState says which.
type eventLoop struct {
	epfd   int
	wakefd int          // eventfd: tells the loop to stop
	kickfd int          // eventfd: tells the loop its ready queue has items
	gen    atomic.Int64 // which goroutine is the loop: each hand-over adds one
	// handOvers counts the hand-overs (yield): a busy pool should cost
	// none (Server.EventLoopHandOvers).
	handOvers atomic.Int64
	// added counts the items registered so far (freeAfterBursts).
	added   atomic.Uint64
	freeing chan struct{} // closed to stop freeAfterBursts

	// mu guards items, ready, closed and each item's loopState,
	// loopDisarmed and loopWoken.
	mu     sync.Mutex
	items  map[int32]loopItem // registered in epfd, by socket
	ready  []loopItem         // woken items the loop serves before it next waits
	closed bool
	done   chan struct{} // closed by the loop goroutine that saw the stop
	// sleeping: the loop has found ready empty and waits (or is about to):
	// wake kicks it. Set under mu.
	sleeping atomic.Bool

	closeOnce sync.Once
}

// A registered client's state (relay.loopState, under eventLoop.mu).
const (
	loopOff     = iota // not in the set
	loopParked         // waiting for the client, in the set: the loop runs it when readable
	loopRunning        // served by the loop or by a goroutine of its own, or in the ready queue
	loopWaiting        // in the set, disarmed, waiting for a pooled connection: wake readies it
)

// loopThreads maps the OS thread of each running loop goroutine to its
// loop (loopWouldBlock). A loop goroutine is locked to its thread, so the
// thread says which goroutine is calling.
var loopThreads struct {
	sync.Mutex
	n  atomic.Int32
	by map[int]*eventLoop
}

// newEventLoop starts a loop; nil if the system refuses (clients then keep
// goroutines).
func newEventLoop() *eventLoop {
	epfd, fds, ok := newEpollWithEventfds(2)
	if !ok {
		return nil
	}
	wakefd, kickfd := fds[0], fds[1]
	l := &eventLoop{epfd: epfd, wakefd: wakefd, kickfd: kickfd, items: map[int32]loopItem{}, done: make(chan struct{}), freeing: make(chan struct{})}
	l.gen.Store(1) // a relay's loopGen of 0 means not on the loop
	go l.run()
	go l.freeAfterBursts(freeAfterParks, freeEvery, freeMemory)
	return l
}

// freeAfterBursts gives free memory back to the system once a burst of
// clients has come and gone idle, as the parker does (freeMemory): after
// at least after new items, when none came for a while, at most every
// every. Why: what a burst of logins allocated is garbage once its clients
// wait here, and the heap would keep it.
func (l *eventLoop) freeAfterBursts(after uint64, every time.Duration, free func()) {
	tick := time.NewTicker(parkAfter / 2)
	defer tick.Stop()
	var lastFree time.Time
	var before, atFree uint64
	for {
		select {
		case <-l.freeing:
			return
		case <-tick.C:
		}
		added := l.added.Load()
		if added == before && added-atFree >= after && time.Since(lastFree) >= every {
			atFree, lastFree = added, time.Now()
			free()
		}
		before = added
	}
}

// loopItem is what a loop drives: a client's request side (relay) or a
// pooled connection's reader (serverConn).
type loopItem interface {
	slot() *loopSlot
	// loopStep serves the item on the loop until it would wait for its
	// socket (errParked) or ends.
	loopStep() error
	// loopGoOn goes on, on the calling goroutine, after loopStep returned
	// err to a goroutine that is not the loop (handed over) or for an end.
	loopGoOn(err error)
	// loopRest is called when a step has left the item waiting on the loop:
	// it gives back what it needs only while working.
	loopRest()
}

// park and unpark are a client's (clientParker).
func (l *eventLoop) park(r *relay) bool { return l.parkItem(r) }
func (l *eventLoop) unpark(r *relay)    { l.unparkItem(r) }

// parkItem gives the loop an item whose driver has left its goroutine
// (errParked) with nothing to do. It reports false if the loop cannot take
// it; the caller then goes on serving it.
func (l *eventLoop) parkItem(it loopItem) bool {
	s := it.slot()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || s.noPark.Load() {
		return false
	}
	if l.items[s.parkFD] != it {
		// Level-triggered: bytes that came before this call wake the loop
		// at once. A stale entry for a reused socket number is replaced.
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: s.parkFD}
		err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(s.parkFD), &ev)
		if errors.Is(err, unix.EEXIST) {
			err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(s.parkFD), &ev)
		}
		if err != nil {
			return false
		}
		l.items[s.parkFD] = it
		l.added.Add(1)
	} else if s.loopDisarmed {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: s.parkFD}
		if unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(s.parkFD), &ev) != nil {
			l.forgetLocked(it)
			return false
		}
	}
	s.loopDisarmed = false
	l.restLocked(it)
	return true
}

// restLocked sets a registered item, its step over, to wait: for its
// socket, or for a pooled connection (its loopWaitGrant), or at once in
// the ready queue if that grant came during the step. Caller holds mu.
func (l *eventLoop) restLocked(it loopItem) {
	s := it.slot()
	waitGrant := s.loopWaitGrant
	s.loopWaitGrant = false
	if !waitGrant && s.loopDisarmed {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: s.parkFD}
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(s.parkFD), &ev)
		s.loopDisarmed = false
	}
	switch {
	case s.loopWoken: // woken during the step (a grant, a deadline): once more
		s.loopWoken = false
		s.loopState = loopRunning
		l.ready = append(l.ready, it)
	case waitGrant:
		s.loopState = loopWaiting
	default:
		s.loopState = loopParked
	}
}

// wake readies an item waiting for a pooled connection, or one whose read
// deadline has passed (it reads, and sees it); one still in its step is
// readied when the step ends (restLocked).
func (l *eventLoop) wake(it loopItem) {
	s := it.slot()
	l.mu.Lock()
	if l.items[s.parkFD] != it {
		l.mu.Unlock()
		return
	}
	switch s.loopState {
	case loopWaiting, loopParked:
		s.loopState = loopRunning
		l.ready = append(l.ready, it)
	case loopRunning:
		s.loopWoken = true
	}
	if l.sleeping.Load() && !l.closed {
		// Under mu: close closes kickfd only after it has marked the loop
		// closed, so the number is still the loop's here.
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(l.kickfd, one)
	}
	l.mu.Unlock()
}

// runReady serves the items woken since the last wait; false if the loop
// was handed over meanwhile.
func (l *eventLoop) runReady(gen int64) bool {
	for {
		l.mu.Lock()
		if len(l.ready) == 0 {
			l.sleeping.Store(true)
			l.mu.Unlock()
			return true
		}
		it := l.ready[0]
		l.ready[0] = nil
		l.ready = l.ready[1:]
		if len(l.ready) == 0 {
			l.ready = l.ready[:0:0]
		}
		l.mu.Unlock()
		if !l.serve(it, gen) {
			return false
		}
	}
}

// unparkItem takes an item out of the set for good, before anyone closes
// its socket (the descriptor must not be reused while it is in the set),
// and has it go on on a goroutine if it was waiting there. One being
// served finds noPark set and ends on its own.
func (l *eventLoop) unparkItem(it loopItem) {
	s := it.slot()
	l.mu.Lock()
	s.noPark.Store(true)
	mine := l.items[s.parkFD] == it
	parked := mine && (s.loopState == loopParked || s.loopState == loopWaiting)
	if mine {
		l.forgetLocked(it)
	}
	l.mu.Unlock()
	if parked {
		go it.loopGoOn(errParked)
	}
}

func (l *eventLoop) forgetLocked(it loopItem) {
	s := it.slot()
	delete(l.items, s.parkFD)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(s.parkFD), nil)
	s.loopState = loopOff
}

// run is the loop: one goroutine at a time, locked to its thread.
func (l *eventLoop) run() {
	goruntime.LockOSThread()
	gen := l.gen.Load()
	tid := unix.Gettid()
	loopThreads.Lock()
	if loopThreads.by == nil {
		loopThreads.by = map[int]*eventLoop{}
	}
	loopThreads.by[tid] = l
	loopThreads.n.Add(1)
	loopThreads.Unlock()
	events := make([]unix.EpollEvent, 64)
	raw := goruntime.GOMAXPROCS(0) > 1
	for {
		if !l.runReady(gen) {
			return
		}
		n, err := l.wait(events, raw)
		l.sleeping.Store(false)
		if err == unix.EINTR {
			// A signal: the runtime may want this goroutine stopped (the
			// garbage collector's stop-the-world); give it the chance.
			goruntime.Gosched()
			continue
		}
		if err != nil {
			l.leaveThread(tid)
			goruntime.UnlockOSThread()
			l.resumeAll() // nothing would wake them
			close(l.done)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == l.kickfd {
				var b [8]byte
				_, _ = unix.Read(l.kickfd, b[:])
				continue
			}
			if int(ev.Fd) == l.wakefd {
				l.leaveThread(tid)
				goruntime.UnlockOSThread()
				close(l.done)
				return
			}
			it := l.take(ev.Fd)
			if it == nil {
				continue
			}
			if !l.serve(it, gen) {
				// Handed over: this goroutine served r to its end and the
				// loop is another's now.
				return
			}
		}
	}
}

// wait waits for events. First with a raw system call, which the runtime
// does not see: the loop keeps its P while it waits, so that nothing has
// to hand it off and take it back around every wait (through the
// runtime's system-call entry that cost more than the event loop saved).
// A signal (the runtime's preemption request among them) ends that wait
// with EINTR. After rawWaitFor with nothing, or always when the process
// has one P (the loop would hold the only one, and goroutines it readied
// would wait for it), it waits through the runtime's entry, which gives
// the P to other goroutines while the loop sleeps.
func (l *eventLoop) wait(events []unix.EpollEvent, raw bool) (int, error) {
	if raw {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(rawWaitFor/time.Millisecond), 0, 0)
		if e != 0 || n > 0 {
			return int(n), errnoErr(e)
		}
	}
	return unix.EpollWait(l.epfd, events, -1)
}

// rawWaitFor bounds the raw wait: a loop with nothing to do for this long
// gives its P back.
const rawWaitFor = time.Millisecond

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// take claims the parked item on fd for a step; nil if there is none or
// it is being served already (its socket is disarmed until it comes back:
// level-triggered, it would be reported again and again).
func (l *eventLoop) take(fd int32) loopItem {
	l.mu.Lock()
	defer l.mu.Unlock()
	it := l.items[fd]
	if it == nil {
		return nil
	}
	s := it.slot()
	if s.loopState != loopParked {
		if !s.loopDisarmed {
			s.loopDisarmed = true
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(fd), &unix.EpollEvent{Fd: fd})
		}
		return nil
	}
	s.loopState = loopRunning
	return it
}

// serve runs it on the loop until it has nothing more to read. It reports
// whether this goroutine is still the loop; if not, it has served it as
// its own goroutine until it went back to the loop or ended.
func (l *eventLoop) serve(it loopItem, gen int64) bool {
	s := it.slot()
	s.loopGen, s.loopReady = gen, true
	err := it.loopStep()
	s.loopGen, s.loopReady = 0, false
	if l.gen.Load() != gen {
		it.loopGoOn(err) // errParked: back to the loop
		return false
	}
	if err == errParked {
		it.loopRest()
		l.mu.Lock()
		parked := !s.noPark.Load() && l.items[s.parkFD] == it
		if parked {
			l.restLocked(it)
		}
		l.mu.Unlock()
		if parked {
			return true
		}
	}
	// Ending (or not to be parked): off the loop first, then on a goroutine.
	l.unparkItem(it)
	go it.loopGoOn(err)
	return true
}

// yield hands the loop to a new goroutine. Called on the loop goroutine
// only, before it blocks: it goes on as an ordinary goroutine.
func (l *eventLoop) yield() {
	l.handOvers.Add(1)
	l.leaveThread(unix.Gettid())
	l.gen.Add(1)
	goruntime.UnlockOSThread()
	go l.run()
}

func (l *eventLoop) leaveThread(tid int) {
	loopThreads.Lock()
	if loopThreads.by[tid] == l {
		delete(loopThreads.by, tid)
		loopThreads.n.Add(-1)
	}
	loopThreads.Unlock()
}

// loopWouldBlock is called by a directConn read or write that is about to
// wait on the poller: on a loop's goroutine, the loop is handed over first.
func loopWouldBlock() {
	if loopThreads.n.Load() == 0 {
		return
	}
	tid := unix.Gettid()
	loopThreads.Lock()
	l := loopThreads.by[tid]
	loopThreads.Unlock()
	if l != nil {
		l.yield()
	}
}

// onLoop reports whether the item of s runs on l's goroutine now (not
// handed over). Called by the item's driver.
func (s *loopSlot) onLoop(l *eventLoop) bool {
	return s.loopGen != 0 && l != nil && l.gen.Load() == s.loopGen
}

// close stops the loop and resumes every parked client on a goroutine;
// closing their connections then ends them. Idempotent.
func (l *eventLoop) close() {
	l.closeOnce.Do(func() {
		close(l.freeing)
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(l.wakefd, one)
		<-l.done
		l.resumeAll()
		unix.Close(l.epfd)
		unix.Close(l.wakefd)
		unix.Close(l.kickfd)
	})
}

// resumeAll ends the loop's parking: every item gets a goroutine when
// parked, and park refuses from now on.
func (l *eventLoop) resumeAll() {
	l.mu.Lock()
	l.closed = true
	var parked []loopItem
	for _, it := range l.items {
		s := it.slot()
		s.noPark.Store(true)
		if s.loopState == loopParked || s.loopState == loopWaiting {
			parked = append(parked, it)
		}
		l.forgetLocked(it)
	}
	// Woken but not served: nobody else will.
	parked = append(parked, l.ready...)
	l.ready = nil
	l.mu.Unlock()
	for _, it := range parked {
		go it.loopGoOn(errParked)
	}
}

// eventLoopSupported: an event loop can drive clients here (config
// event_loop).
const eventLoopSupported = true

// useLoop makes l drive r's request side whenever it waits for the client.
func (r *relay) useLoop(l *eventLoop) {
	r.parker = l
	r.waits = loopWaiter{r}
	if dc, ok := r.client.(*directConn); ok {
		if dc.own() == nil {
			r.parkFD = connFD(dc)
		}
		dc.loopReads = true
	}
}

func (r *relay) slot() *loopSlot { return &r.loopSlot }

// granted readies r on its loop: its wait for a connection is over.
func (r *relay) granted() { r.evLoop().wake(r) }

// loopRest gives the relayWork back when the client holds nothing between
// steps, as a parked client does (relaywork.go): no message under way, no
// group, no connection held or waited for. A busy client keeps it (its
// steps end with its transaction's connection held).
func (r *relay) loopRest() {
	if r.relayWork == nil || r.cr != nil || r.inGroup || r.poolWait != nil {
		return
	}
	r.leaseMu.Lock()
	free := r.sc == nil
	r.leaseMu.Unlock()
	if free {
		r.putWork()
	}
}

// evLoop is the event loop that drives r, if any: its parker.
func (r *relay) evLoop() *eventLoop {
	l, _ := r.parker.(*eventLoop)
	return l
}

// queueForConnection: on the loop, with the client's next message come and
// no connection held, a client that would have to wait for one waits in
// the pool's queue without a goroutine (txPool.waitLater); the loop serves
// it again once one is granted. Reports whether it queued.
//
// Why: a wait inside the step would hand the loop over (a goroutine and a
// thread switch per transaction whenever clients outnumber connections).
func (r *relay) queueForConnection() bool {
	r.leaseMu.Lock()
	held := r.sc != nil
	r.leaseMu.Unlock()
	if held || r.pool == nil || r.hold.Load() != nil {
		// A paused tenant's next unit waits for the resume first, holding
		// no place in the pool's queue (waitPaused).
		return false
	}
	w := r.pool.waitLater(r.tenant, r.pctx.key, r)
	if w == nil {
		return false
	}
	if typ, ok := peekType(r.client); !ok || !needsConnection(typ) {
		r.pool.endWait(w)
		return false
	}
	r.poolWait, r.poolWaitFresh = w, true
	r.poolTimer = time.AfterFunc(r.pool.cfg.WaitTimeout.Duration, r.granted)
	return r.awaitReady()
}

// awaitReady: the client's queued wait is granted or still waiting. A grant
// that needs the upstream first (a dial, the reset for this client's
// context) is made ready off the loop (readyAhead) while the client waits on
// it; so is a wait not granted yet. Reports whether the client waits (back
// to the loop, woken by the grant or the readiness); false: on to the
// message, acquire takes the grant at once (or reports the wait's end).
func (r *relay) awaitReady() bool {
	w := r.poolWait
	if r.pool.readyAhead(w, r.pctx) {
		r.loopWaitGrant = true
		return true
	}
	if !w.pool.waitOver(w) {
		r.loopWaitGrant = true // not granted yet
		return true
	}
	r.poolWaitFresh = false
	return false
}

// peekType returns the first byte waiting on a client socket, leaving it
// there.
func peekType(conn net.Conn) (byte, bool) {
	dc, ok := conn.(*directConn)
	if !ok {
		return 0, false
	}
	var b [1]byte
	var n uintptr
	var e unix.Errno
	_ = dc.raw.Control(func(fd uintptr) {
		n, _, e = unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	})
	return b[0], e == 0 && n == 1
}

func (r *relay) loopStep() error {
	if r.relayWork == nil {
		r.takeWork()
	}
	r.loopIn.r = r
	if r.cr == nil {
		r.cr = readerPool.Get().(*bufio.Reader)
		r.cr.Reset(&r.loopIn)
	}
	return r.sess.catchPanic("client", r.clientToUpstream)
}

// loopGoOn: errParked gives the client back to the loop (or resumes it here
// when the loop will not take it), anything else ends the session.
func (r *relay) loopGoOn(err error) { r.sess.endPooled(err) }

// onLoop reports whether r's request side runs on its loop's goroutine now.
func (r *relay) onLoop() bool { return r.loopSlot.onLoop(r.evLoop()) }

// loopReader is the client reader's source on an event loop: between
// messages it takes only what the socket holds (errWouldBlock: back to the
// loop); elsewhere it reads as a goroutine does, the loop handed over first
// if it must wait.
type loopReader struct{ r *relay }

func (in *loopReader) Read(b []byte) (int, error) {
	r := in.r
	if r.loopBoundary && r.onLoop() {
		if dc, ok := r.client.(*directConn); ok {
			return dc.readNow(b)
		}
	}
	return r.client.Read(b)
}

// useLoop makes l read sc whenever its reader would wait for the upstream.
// A connection that is not a plain socket keeps its goroutine.
func (sc *serverConn) useLoop(p *txPool, l *eventLoop) {
	dc, ok := sc.conn.(*directConn)
	if l != nil && ok && sc.r.Buffered() == 0 && dc.own() == nil {
		// upstream_timeout is a read deadline: the loop must hear of it.
		dc.owned.wakeAtReadDeadline(func() { l.wake(sc) })
	}
	fd := connFD(sc.conn)
	if l == nil || !ok || fd < 0 || sc.r.Buffered() != 0 {
		return
	}
	sc.loop, sc.pool, sc.parkFD = l, p, fd
	sc.loopIn.sc = sc
	dc.loopReads = true
	sc.r.Reset(&sc.loopIn)
	sc.conn = &loopClosingConn{Conn: sc.conn, sc: sc}
}

func (sc *serverConn) slot() *loopSlot { return &sc.loopSlot }

func (sc *serverConn) loopStep() error { return sc.pool.serveSome(sc) }

func (sc *serverConn) loopGoOn(err error) { sc.pool.serveFrom(sc, err) }

func (sc *serverConn) loopRest() {}

// serverLoopReader is a pooled connection reader's source on an event loop
// (as loopReader for a client).
type serverLoopReader struct{ sc *serverConn }

func (in *serverLoopReader) Read(b []byte) (int, error) {
	sc := in.sc
	dc := sc.conn.(*loopClosingConn).Conn.(*directConn)
	if sc.loopBoundary && sc.onLoop(sc.loop) {
		return dc.readNow(b)
	}
	return dc.Read(b)
}

// loopClosingConn takes a pooled connection out of its loop before it is
// closed: a closed socket leaves the epoll set without an event, and its
// reader would never learn that it has ended.
type loopClosingConn struct {
	net.Conn
	sc *serverConn
}

func (c *loopClosingConn) Close() error {
	c.sc.loop.unparkItem(c.sc)
	return c.Conn.Close()
}

// loopWaiter is the waiter of a relay an event loop drives: on the loop,
// a wait hands the loop over first.
type loopWaiter struct{ r *relay }

func (w loopWaiter) blocking(what waitKind) {
	if what != blockOnPool && w.r.poolWait != nil {
		// A connection granted to the message being relayed goes back
		// before any other wait (room for a pin, a paused tenant, a rate
		// token): held meanwhile, it could be the one that wait waits for.
		// The message waits for a connection as usual afterwards.
		w.r.endPoolWait()
	}
	if w.r.onLoop() {
		w.r.evLoop().yield()
	}
}

func (loopWaiter) resumed(waitKind) {}

func (w loopWaiter) clientGone() bool { return peerClosed(w.r.client) }

func (w loopWaiter) clientReadDeadline(t time.Time) { _ = w.r.client.SetReadDeadline(t) }

func (loopWaiter) upstreamReadDeadline(up net.Conn, t time.Time) { _ = up.SetReadDeadline(t) }

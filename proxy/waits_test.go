package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
)

// recordingWaiter is a driver's waiter that notes each call, and answers
// clientGone with gone.
type recordingWaiter struct {
	mu     sync.Mutex
	events []string
	gone   bool
}

var waitNames = map[waitKind]string{blockOnReplies: "replies", blockOnReplyEnd: "reply end", blockOnPool: "pool", blockOnResume: "resume", blockOnToken: "token", blockOnPin: "pin"}

func (w *recordingWaiter) note(s string) {
	w.mu.Lock()
	w.events = append(w.events, s)
	w.mu.Unlock()
}

func (w *recordingWaiter) blocking(k waitKind) { w.note("blocking " + waitNames[k]) }
func (w *recordingWaiter) resumed(k waitKind)  { w.note("resumed " + waitNames[k]) }
func (w *recordingWaiter) clientGone() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone
}

func (w *recordingWaiter) clientReadDeadline(time.Time)             {}
func (w *recordingWaiter) upstreamReadDeadline(net.Conn, time.Time) {}

func (w *recordingWaiter) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.events)
}

// TestCoreWaitsTellTheDriver: each of the request core's waits blocks only
// between the driver's blocking and resumed (an event-loop driver hands
// its loop over there), and one that need not block tells it nothing.
func TestCoreWaitsTellTheDriver(t *testing.T) {
	pending := func(r *relay) { r.seq = r.ledger.begin(); r.ledger.send(sentMsg{unit: r.seq, typ: 'Q'}) }
	endUnit := func(r *relay) { r.ledger.reply('Z', ""); r.ledger.unitDone(); r.wake() }
	tests := []struct {
		desc  string
		setup func(r *relay, w *recordingWaiter) (release func())
		wait  func(r *relay, w *recordingWaiter) error
		want  []string
	}{
		{desc: "replies owed: until the unit ends",
			setup: func(r *relay, _ *recordingWaiter) func() { pending(r); return func() { endUnit(r) } },
			wait:  func(r *relay, _ *recordingWaiter) error { return r.await(untilDrained) },
			want:  []string{"blocking replies", "resumed replies"}},
		{desc: "replies owed: the client hangs up meanwhile",
			setup: func(r *relay, w *recordingWaiter) func() {
				pending(r)
				return func() { w.mu.Lock(); w.gone = true; w.mu.Unlock() }
			},
			wait: func(r *relay, _ *recordingWaiter) error { return r.await(untilDrained) },
			want: []string{"blocking replies", "resumed replies"}},
		{desc: "nothing owed: no wait",
			setup: func(*relay, *recordingWaiter) func() { return nil },
			wait:  func(r *relay, _ *recordingWaiter) error { return r.await(untilDrained) },
			want:  nil},
		{desc: "the reply side's end after a Terminate",
			setup: func(r *relay, _ *recordingWaiter) func() { return func() { close(r.done) } },
			wait:  func(r *relay, _ *recordingWaiter) error { r.awaitReplyEnd(); return nil },
			want:  []string{"blocking reply end", "resumed reply end"}},
		{desc: "a rate token due later",
			setup: func(r *relay, _ *recordingWaiter) func() {
				r.rate = &rateLimit{bucket: &tokenBucket{}, rate: 50, burst: 1, maxWait: time.Second}
				_ = r.waitForToken() // the burst's token: no wait
				return nil
			},
			wait: func(r *relay, _ *recordingWaiter) error { return r.waitForToken() },
			want: []string{"blocking token", "resumed token"}},
		{desc: "a paused tenant's resume",
			setup: func(r *relay, _ *recordingWaiter) func() {
				r.uw = bufio.NewWriter(io.Discard)
				p := &tenantPause{resumed: make(chan struct{})}
				r.hold.Store(p)
				return func() { r.hold.Store(nil); close(p.resumed) }
			},
			wait: func(r *relay, _ *recordingWaiter) error { return r.waitPaused() },
			want: []string{"blocking resume", "resumed resume"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := newRelay(nil, nil, nil, nil, ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})), nil, zeroTime)
			r.pauseTimeout = time.Minute
			w := &recordingWaiter{}
			r.waits = w
			release := tt.setup(r, w)
			errc := make(chan error, 1)
			go func() { errc <- tt.wait(r, w) }()
			if release != nil {
				eventually(t, func() bool { return len(w.seen()) > 0 }) // blocked
				release()
			}
			select {
			case <-errc:
			case <-time.After(5 * time.Second):
				t.Fatal("still waiting")
			}
			if got := w.seen(); !slices.Equal(got, tt.want) {
				t.Errorf("the driver heard %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPoolWaitsTellTheDriver: the pool tells the waiter of a wait for a
// connection to come free and of one on the upstream (a dial), and of
// nothing when an idle connection is ready.
func TestPoolWaitsTellTheDriver(t *testing.T) {
	refused := errors.New("refused")
	up, _ := net.Pipe()
	ready := &serverConn{conn: up, dirtyKey: "k", settled: "k", used: time.Now()}
	tests := []struct {
		desc string
		size int
		idle []*serverConn
		want []string
	}{
		{desc: "an idle connection ready: no wait", size: 1, idle: []*serverConn{ready}, want: nil},
		{desc: "none free: waits for one (and times out)", size: 0, want: []string{"blocking pool", "resumed pool"}},
		{desc: "one to open: waits on the upstream", size: 1, want: []string{"blocking pool", "resumed pool"}},
	}
	t.Run("room under the pinned cap: waits for a pin to end", func(t *testing.T) {
		cfg := config.Pool{Size: 1, MaxPinned: 1, TenantMaxPinned: 1}
		cfg.WaitTimeout.Duration = time.Minute
		p := newTxPool("test", cfg, func(context.Context) (*serverConn, error) { return nil, refused }, func() Observer { return nopObserver{} })
		defer p.close()
		if err := p.waitPin(nil, noWaiter{}, "t1"); err != nil {
			t.Fatal(err)
		}
		w := &recordingWaiter{}
		errc := make(chan error, 1)
		go func() {
			if err := p.waitPin(nil, w, "t1"); err != nil {
				errc <- err
				return
			}
			errc <- nil
		}()
		eventually(t, func() bool { return len(w.seen()) > 0 })
		p.unpin("t1")
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if got, want := w.seen(), []string{"blocking pin", "resumed pin"}; !slices.Equal(got, want) {
			t.Errorf("the driver heard %q, want %q", got, want)
		}
	})
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := config.Pool{Size: tt.size, TenantMaxConnections: 1}
			cfg.WaitTimeout.Duration = 20 * time.Millisecond
			cfg.HealthCheckAfter.Duration = time.Hour
			p := newTxPool("test", cfg, func(context.Context) (*serverConn, error) { return nil, refused }, func() Observer { return nopObserver{} })
			defer p.close()
			p.idle, p.open = tt.idle, len(tt.idle)
			w := &recordingWaiter{}
			_, _ = p.acquire(nil, w, "t1", &poolContext{key: "k"}, nil)
			if got := w.seen(); !slices.Equal(got, tt.want) {
				t.Errorf("the driver heard %q, want %q", got, tt.want)
			}
		})
	}
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
	}
}

// loopDriver shows the waiter is enough for an event-loop driver: it runs
// each client's work on its loop goroutine, and a core that must block
// hands the loop to a new goroutine first, so that other clients' work
// goes on; the goroutine that waited finishes its client's work and ends.
type loopDriver struct {
	work     chan func(*loopGoroutine)
	handoffs atomic.Int32
	wg       sync.WaitGroup
}

// loopGoroutine is one goroutine's turn as the loop.
type loopGoroutine struct{ handedOff bool }

func (d *loopDriver) loop() {
	defer d.wg.Done()
	me := &loopGoroutine{}
	for f := range d.work {
		f(me)
		if me.handedOff {
			return // another goroutine is the loop now
		}
	}
}

// testLoopWaiter is a relay's waiter under the loop driver: cur is the loop
// goroutine running the relay's work.
type testLoopWaiter struct {
	d   *loopDriver
	cur *loopGoroutine
}

func (w *testLoopWaiter) blocking(waitKind) {
	if !w.cur.handedOff {
		w.cur.handedOff = true
		w.d.handoffs.Add(1)
		w.d.wg.Add(1)
		go w.d.loop()
	}
}
func (w *testLoopWaiter) resumed(waitKind)                         {}
func (w *testLoopWaiter) clientGone() bool                         { return false }
func (w *testLoopWaiter) clientReadDeadline(time.Time)             {}
func (w *testLoopWaiter) upstreamReadDeadline(net.Conn, time.Time) {}

func TestLoopDriverHandsOffBeforeAWait(t *testing.T) {
	d := &loopDriver{work: make(chan func(*loopGoroutine))}
	d.wg.Add(1)
	go d.loop()
	newClient := func() (*relay, *testLoopWaiter) {
		r := newRelay(nil, nil, nil, nil, ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})), nil, zeroTime)
		w := &testLoopWaiter{d: d}
		r.waits = w
		return r, w
	}
	a, wa := newClient()
	b, wb := newClient()
	a.seq = a.ledger.begin()
	a.ledger.send(sentMsg{unit: a.seq, typ: 'Q'}) // a owes a reply: its await blocks
	aDone, bDone := make(chan error, 1), make(chan error, 1)
	post := func(f func(*loopGoroutine)) {
		select {
		case d.work <- f:
		case <-time.After(5 * time.Second):
			t.Fatal("no loop goroutine takes work: the loop was not handed over")
		}
	}
	post(func(g *loopGoroutine) { wa.cur = g; aDone <- a.await(untilDrained) })
	post(func(g *loopGoroutine) { wb.cur = g; bDone <- b.await(untilDrained) }) // nothing owed
	select {
	case <-bDone:
	case <-time.After(5 * time.Second):
		t.Fatal("b's work did not run while a waited: the loop was not handed over")
	}
	select {
	case <-aDone:
		t.Fatal("a's wait ended with its reply still owed")
	default:
	}
	a.ledger.reply('Z', "")
	a.ledger.unitDone()
	a.wake()
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	close(d.work)
	d.wg.Wait() // the goroutine that waited has ended, and so has the loop
	if n := d.handoffs.Load(); n != 1 {
		t.Errorf("%d hand-overs, want 1 (a's wait)", n)
	}
}

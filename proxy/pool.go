package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/lexsafe"
)

// serverConn is one upstream connection of the transaction pool. It belongs
// to at most one client at a time, from the start of a transaction until the
// upstream reports idle again.
type serverConn struct {
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	pid     uint32
	secret  []byte
	params  map[string]string // ParameterStatus values at connect
	created time.Time
	used    time.Time // last release

	// dirtyKey names the context settings a committed transaction may have
	// left on the connection (the last holder's; changedKey while a holder's
	// own SETs are not yet read back). A client with other settings gets
	// the connection only after serverResetQuery has committed: otherwise a
	// ROLLBACK of its own assertion would bring the previous holder's
	// tenant back.
	dirtyKey string

	// settled is the context key whose settings pgtenant itself committed on
	// the connection, in a round trip of its own, with nothing since that
	// could have changed them or dropped its prepared context statements
	// ("" otherwise). A holder with that key then asserts only its context
	// settings (the tenant's), through those statements, per transaction:
	// its startup parameters are already the connection's, and a ROLLBACK
	// falls back to them.
	settled string
	// ctxCount bounds the context statements (pgtenant_ctx0...) that may
	// exist on the connection.
	ctxCount int

	// mu guards the prepared-statement bookkeeping, which the reply side
	// corrects when the upstream skips or fails a Parse or Close.
	mu       sync.Mutex
	prepared map[string]stmtCopy // server statement name → its copy here
	tick     uint64
	unnamed  *relay // whose unnamed statement the connection holds, if anyone's
	unnamedN uint64 // and which of that client's unnamed statements

	// cancelMu is held while a cancel request for this connection is in
	// flight, so the connection cannot go to another client before the
	// upstream has acted on it.
	cancelMu sync.Mutex

	// The connection's reader (txPool.serve) hands what it reads to the
	// client holding the connection, or to one of pgtenant's own round trips.
	holder atomic.Pointer[relay]
	coll   atomic.Pointer[collector]
	dead   atomic.Bool // closed or failed: never hand it out again
	// readerGone is set when serve has returned.
	readerGone atomic.Bool

	// An event loop reads the connection whenever its reader would wait
	// (eventloop_linux.go), when loop is set.
	loop     *eventLoop
	pool     *txPool
	loopSlot // under loop
	loopIn   serverLoopReader
}

func (sc *serverConn) cancelTarget() cancelTarget {
	addr := sc.conn.RemoteAddr()
	return cancelTarget{network: addr.Network(), address: addr.String(), pid: sc.pid, secret: sc.secret}
}

// txPool shares upstream connections between the clients in transaction
// mode. Waiting clients are served round-robin across tenants, and no tenant
// holds more than its cap, so one tenant's burst cannot starve the others.
type txPool struct {
	name    string // its upstream's (metrics)
	cfg     config.Pool
	connect func(context.Context) (*serverConn, error)
	obs     func() Observer
	log     *slog.Logger

	mu       sync.Mutex
	idle     []*serverConn // most recently released last
	open     int           // connections open or being opened
	active   map[string]int
	waiters  map[string][]*poolWaiter
	ring     []string // tenants with waiters, in service order
	nwaiting int
	closed   bool
	// retired: a reload replaced the pool (retire.go). It keeps serving
	// the sessions still on it, closing each connection they release,
	// until they have moved or ended; then it closes.
	retired      bool
	statuses     map[string]map[string]string // parameter statuses by startup parameters
	pinned       int                          // connections pinned to a client (pinned.go)
	tenantPinned map[string]int               // and per tenant
	pinFreed     chan struct{}                // closed when a pin ends
	ctx          context.Context              // done when the pool closes: waits and dials end
	stop         context.CancelFunc
	done         chan struct{}
	readers      sync.WaitGroup    // one per open connection
	loop         func() *eventLoop // the event loop that reads connections, if any

	ctxMu    sync.Mutex
	contexts map[string]*poolContext // by key, while a session uses it

	hubOnce sync.Once
	hub     *notifyHub // listens for the pool's clients (notifyhub.go)
	hubMade atomic.Pointer[notifyHub]

	// entering counts logins placed on the pool and not yet sessions
	// (retire.go): a retired pool stays open for them.
	entering atomic.Int64
}

// notifyHub returns the pool's hub, made on first use.
func (p *txPool) notifyHub() *notifyHub {
	p.hubOnce.Do(func() {
		p.hub = newNotifyHub(p.ctx, p.connect)
		p.hubMade.Store(p.hub)
	})
	return p.hub
}

// poolContext is what the sessions with one set of settings (startup
// parameters and tenant context) have in common: the same pre-encoded
// assertions, kept once rather than per idle client.
type poolContext struct {
	key        string    // the SET statements (serverConn.dirtyKey, settled)
	commit     string    // what a connection commits for it (sessionStatements)
	assertion  assertion // every setting
	settled    assertion // the context settings, through ctxPrepare's statements
	ctxPrepare []byte
	ctxCount   int // statements ctxPrepare prepares
	refs       int // sessions using it
	// settings are its settings, the first own the client's (a session
	// moving to another pool takes those along: pause.go).
	settings []setting
	own      int
}

// takeContext returns the shared context of settings, whose first
// startupN are the client's own (startup parameters and carried SETs) and
// the rest the tenant context. Each session drops it when it ends.
func (p *txPool) takeContext(settings []setting, startupN int) *poolContext {
	key := setStatements(settings)
	p.ctxMu.Lock()
	defer p.ctxMu.Unlock()
	if pc := p.contexts[key]; pc != nil {
		pc.refs++
		return pc
	}
	pc := &poolContext{key: key, commit: sessionStatements(settings), assertion: newAssertion(settings), refs: 1, settings: settings, own: startupN}
	pc.settled, pc.ctxPrepare = newPreparedAssertion(settings[startupN:])
	pc.ctxCount = len(settings) - startupN
	p.contexts[key] = pc
	return pc
}

// dropContext ends a session's use of the context of key.
func (p *txPool) dropContext(key string) {
	p.ctxMu.Lock()
	defer p.ctxMu.Unlock()
	if pc := p.contexts[key]; pc != nil {
		if pc.refs--; pc.refs <= 0 {
			delete(p.contexts, key)
		}
	}
}

// grantWaker hears that a wait queued by waitLater is over (an interface,
// not a func: a method value would be made, an allocation, on every call).
type grantWaker interface{ granted() }

type poolWaiter struct {
	tenant string
	got    chan poolGrant // buffered: the granter never blocks
	// woken, when set, hears (under p.mu) once a grant is in got: an event
	// loop's client waits for it without a goroutine (waitLater).
	woken grantWaker
	since time.Time // when the wait began (waitLater)
	pool  *txPool   // the pool it waits in (waitLater)
	// readyAhead's, under the pool's mu: the connection granted is being
	// made ready (readying), or is (readied, with readySC or readyErr for
	// acquire); abandoned: the client no longer wants it.
	readying, readied, abandoned bool
	readySC                      *serverConn
	readyErr                     error
	readyDone                    chan struct{} // closed when readying ends
}

// waitOver reports whether w's wait is over: granted (ready, or made
// ready), past pool.wait_timeout, or the pool closed.
func (p *txPool) waitOver(w *poolWaiter) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return w.readied || len(w.got) > 0 || p.closed || time.Since(w.since) >= p.cfg.WaitTimeout.Duration
}

// readyAhead makes the connection granted to w ready (a dial, or the round
// trip that resets it for another tenant's context), on a goroutine of its
// own, then wakes w's client: an event loop's client waits for that on
// the loop instead of handing the loop over. It reports false if the grant
// is ready as it is (acquire takes it at once) or not there.
func (p *txPool) readyAhead(w *poolWaiter, pc *poolContext) bool {
	p.mu.Lock()
	if w.readying || w.readied {
		p.mu.Unlock()
		return w.readying // still at it: wait on
	}
	var g poolGrant
	select {
	case g = <-w.got:
	default:
		p.mu.Unlock()
		return false // not granted (a timeout): acquire says so
	}
	if !g.open && !p.needsRoundTrip(g.sc, pc.key) {
		w.got <- g
		p.mu.Unlock()
		return false
	}
	w.readying, w.readyDone = true, make(chan struct{})
	p.mu.Unlock()
	go func() {
		sc, err := p.makeReady(g.sc, g.open, w.tenant, pc)
		p.mu.Lock()
		w.readying = false
		close(w.readyDone)
		abandoned := w.abandoned
		if !abandoned {
			w.readied, w.readySC, w.readyErr = true, sc, err
		}
		p.mu.Unlock()
		if abandoned {
			if sc != nil {
				p.release(sc, w.tenant, true)
			}
			return
		}
		w.woken.granted()
	}()
	return true
}

// poolGrant hands a waiter an idle connection, or the right to open one.
type poolGrant struct {
	sc   *serverConn
	open bool
}

func newTxPool(name string, cfg config.Pool, connect func(context.Context) (*serverConn, error), obs func() Observer) *txPool {
	p := &txPool{
		name:    name,
		cfg:     cfg,
		connect: connect,
		obs:     obs,
		active:  map[string]int{},
		waiters: map[string][]*poolWaiter{},
		done:    make(chan struct{}),

		contexts: map[string]*poolContext{},
		pinFreed: make(chan struct{}),
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	go p.maintain()
	return p
}

var errPoolClosed = fatalf(codeAdminShutdown, "terminating connection due to administrator command")

// acquire returns a connection for a client of tenant whose context
// settings are key: clean for it (see serverConn.dirtyKey), checked if it
// sat idle long, and with no cancel request in flight. wt hears of every
// wait: for a connection to come free, and for the upstream (a dial, or
// the round trip that readies a connection).
//
// pre, if not nil, is the wait waitLater queued for this client: granted
// by now, or still to be waited for.
func (p *txPool) acquire(cancel <-chan struct{}, wt waiter, tenant string, pc *poolContext, pre *poolWaiter) (*serverConn, error) {
	if pre != nil && pre.pool != p {
		pre.pool.endWait(pre) // queued before a resume moved the tenant
		pre = nil
	}
	if pre != nil {
		if sc, err, ok := p.takeReadied(cancel, wt, pre); ok {
			if err != nil || p.readyNow(sc, pc.key) {
				return sc, err // made ready ahead (readyAhead)
			}
			// Made ready for the context the client had when it queued;
			// its settings' readback has changed that since.
			wt.blocking(blockOnPool)
			defer wt.resumed(blockOnPool)
			return p.makeReady(sc, false, tenant, pc)
		}
	}
	sc, open, err := p.reserve(cancel, wt, tenant, pc.key, pre)
	if err != nil {
		return nil, err
	}
	if !open && p.readyNow(sc, pc.key) {
		return sc, nil // the common case: nothing to wait for
	}
	wt.blocking(blockOnPool)
	defer wt.resumed(blockOnPool)
	return p.makeReady(sc, open, tenant, pc)
}

// takeReadied takes what readyAhead made of pre's grant, waiting for it
// if it is at it; ok is false if it did not take the grant.
func (p *txPool) takeReadied(cancel <-chan struct{}, wt waiter, pre *poolWaiter) (sc *serverConn, err error, ok bool) {
	p.mu.Lock()
	readying, done := pre.readying, pre.readyDone
	p.mu.Unlock()
	if readying {
		wt.blocking(blockOnPool)
		select {
		case <-done:
		case <-cancel:
			wt.resumed(blockOnPool)
			p.endWait(pre)
			return nil, io.ErrUnexpectedEOF, true
		}
		wt.resumed(blockOnPool)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !pre.readied {
		return nil, nil, false
	}
	sc, err = pre.readySC, pre.readyErr
	pre.readied, pre.readySC = false, nil
	return sc, err, true
}

// makeReady opens the connection of a granted slot (open) or readies sc
// (prepare), replacing a broken one in the same slot.
func (p *txPool) makeReady(sc *serverConn, open bool, tenant string, pc *poolContext) (*serverConn, error) {
	var err error
	for {
		if open {
			if sc, err = p.dial(p.ctx); err != nil {
				p.mu.Lock()
				p.giveBackLocked(tenant, poolGrant{open: true})
				p.mu.Unlock()
				return nil, err
			}
		}
		if err = p.prepare(sc, pc); err == nil {
			return sc, nil
		}
		// A broken connection: replace it, keeping the slot.
		sc.dead.Store(true)
		sc.conn.Close()
		open = true
	}
}

// reserve takes an idle connection or the right to open one, waiting in
// the tenant's queue when neither is possible now.
func (p *txPool) reserve(cancel <-chan struct{}, wt waiter, tenant, key string, pre *poolWaiter) (*serverConn, bool, error) {
	if pre != nil {
		return p.awaitGrant(cancel, wt, pre)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, errPoolClosed
	}
	if len(p.waiters[tenant]) == 0 && p.active[tenant] < p.cfg.TenantCap(tenant) {
		if sc := p.takeIdle(key); sc != nil {
			p.active[tenant]++
			p.mu.Unlock()
			return sc, false, nil
		}
		if p.open < p.cfg.Size {
			p.open++
			p.active[tenant]++
			p.mu.Unlock()
			return nil, true, nil
		}
	}
	if n := p.nwaiting; p.cfg.MaxWaiting > 0 && n >= p.cfg.MaxWaiting {
		p.mu.Unlock()
		return nil, false, fatalf(codeTooManyConnections, "sorry, too many clients already: %d clients are waiting for one of pgtenant's %d pooled connections (pool.max_waiting)", n, p.cfg.Size)
	}
	w := &poolWaiter{tenant: tenant, got: make(chan poolGrant, 1)}
	if len(p.waiters[tenant]) == 0 {
		p.ring = append(p.ring, tenant)
	}
	p.waiters[tenant] = append(p.waiters[tenant], w)
	p.nwaiting++
	p.mu.Unlock()
	p.obs().PoolWait(p.name, tenant)
	w.since = time.Now()
	return p.awaitGrant(cancel, wt, w)
}

// awaitGrant waits for w's grant until pool.wait_timeout after it was
// queued.
func (p *txPool) awaitGrant(cancel <-chan struct{}, wt waiter, w *poolWaiter) (*serverConn, bool, error) {
	select {
	case g := <-w.got:
		return g.sc, g.open, nil
	default:
	}
	if left := p.cfg.WaitTimeout.Duration - time.Since(w.since); left > 0 {
		wt.blocking(blockOnPool)
		timer := time.NewTimer(left)
		select {
		case g := <-w.got:
			timer.Stop()
			wt.resumed(blockOnPool)
			return g.sc, g.open, nil
		case <-timer.C:
		case <-cancel:
		case <-p.ctx.Done():
		}
		timer.Stop()
		wt.resumed(blockOnPool)
	}
	return p.giveUpWait(w)
}

// giveUpWait ends a wait that timed out or was cancelled: a grant that
// came meanwhile is taken after all.
func (p *txPool) giveUpWait(w *poolWaiter) (*serverConn, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case g := <-w.got:
		// Granted while we gave up: take it after all.
		return g.sc, g.open, nil
	default:
	}
	p.removeWaiter(w)
	if p.closed {
		return nil, false, errPoolClosed
	}
	return nil, false, fatalf(codeQueryCanceled, "canceling statement: no pooled upstream connection became free within pool.wait_timeout (%s)", p.cfg.WaitTimeout.Duration)
}

// takeIdle pops the most recently used idle connection, preferring one
// that needs no reset for key. Caller holds p.mu.
func (p *txPool) takeIdle(key string) *serverConn {
	if len(p.idle) == 0 {
		return nil
	}
	i := p.idleFor(key)
	sc := p.idle[i]
	p.idle = slices.Delete(p.idle, i, i+1)
	return sc
}

// idleFor is the index of the idle connection takeIdle takes for key.
// Caller holds p.mu; there is one.
func (p *txPool) idleFor(key string) int {
	i := len(p.idle) - 1
	for j := i; j >= 0; j-- {
		if k := p.idle[j].dirtyKey; k == key || k == "" {
			return j
		}
	}
	return i
}

// waitLater queues an event loop's client for a connection when the
// tenant would have to wait for one now, and returns the wait; woken is
// called once it is granted (or never: the client's own wait in acquire
// then ends it at pool.wait_timeout). A connection free now that must be
// made ready first (opened, or reset for key) is granted at once, for
// readyAhead. nil: nothing to wait for, acquire takes one at once (or
// refuses): the common case, which allocates nothing.
func (p *txPool) waitLater(tenant, key string, woken grantWaker) *poolWaiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	free := len(p.waiters[tenant]) == 0 && p.active[tenant] < p.cfg.TenantCap(tenant)
	if p.cfg.MaxWaiting > 0 && p.nwaiting >= p.cfg.MaxWaiting && !(free && (len(p.idle) > 0 || p.open < p.cfg.Size)) {
		return nil // acquire refuses it (pool.max_waiting)
	}
	if free && len(p.idle) > 0 && !p.needsRoundTrip(p.idle[p.idleFor(key)], key) {
		return nil
	}
	w := &poolWaiter{tenant: tenant, got: make(chan poolGrant, 1), woken: woken, since: time.Now(), pool: p}
	if free {
		// One is free now, to be made ready first: granted at once.
		if sc := p.takeIdle(key); sc != nil {
			p.active[tenant]++
			w.got <- poolGrant{sc: sc}
			return w
		}
		if p.open < p.cfg.Size {
			p.open++
			p.active[tenant]++
			w.got <- poolGrant{open: true}
			return w
		}
	}
	if len(p.waiters[tenant]) == 0 {
		p.ring = append(p.ring, tenant)
	}
	p.waiters[tenant] = append(p.waiters[tenant], w)
	p.nwaiting++
	p.obs().PoolWait(p.name, tenant)
	return w
}

// endWait ends a wait queued by waitLater that the client no longer needs
// (what it sent needed no connection, or it is leaving): a grant goes back,
// now or when readyAhead is through with it.
func (p *txPool) endWait(w *poolWaiter) {
	p.mu.Lock()
	if w.readying {
		w.abandoned = true
		p.mu.Unlock()
		return
	}
	if w.readied {
		sc := w.readySC
		w.readied, w.readySC = false, nil
		p.mu.Unlock()
		if sc != nil {
			p.release(sc, w.tenant, true)
		}
		return
	}
	defer p.mu.Unlock()
	select {
	case g := <-w.got:
		p.giveBackLocked(w.tenant, g)
	default:
		p.removeWaiter(w)
	}
}

// giveBackLocked returns a grant tenant did not use: its idle connection,
// or its right to open one, goes to the next in line. Caller holds p.mu.
func (p *txPool) giveBackLocked(tenant string, g poolGrant) {
	if p.active[tenant]--; p.active[tenant] <= 0 {
		delete(p.active, tenant)
	}
	if g.sc != nil {
		p.idle = append(p.idle, g.sc)
	} else {
		p.open--
	}
	p.dispatch()
}

func (p *txPool) removeWaiter(w *poolWaiter) {
	q := p.waiters[w.tenant]
	if i := slices.Index(q, w); i >= 0 {
		p.waiters[w.tenant] = slices.Delete(q, i, i+1)
		p.nwaiting--
	}
	if len(p.waiters[w.tenant]) == 0 {
		delete(p.waiters, w.tenant)
		if i := slices.Index(p.ring, w.tenant); i >= 0 {
			p.ring = slices.Delete(p.ring, i, i+1)
		}
	}
}

// dispatch grants idle connections (or the right to open one) to waiters,
// one tenant at a time in ring order, skipping tenants at their cap.
// Caller holds p.mu.
func (p *txPool) dispatch() {
	for served := true; served && len(p.ring) > 0; {
		served = false
		for n := len(p.ring); n > 0 && len(p.ring) > 0; n-- {
			tenant := p.ring[0]
			if p.active[tenant] >= p.cfg.TenantCap(tenant) {
				p.ring = append(p.ring[1:], tenant)
				continue
			}
			var g poolGrant
			switch {
			case len(p.idle) > 0:
				g.sc = p.idle[len(p.idle)-1]
				p.idle = p.idle[:len(p.idle)-1]
			case p.open < p.cfg.Size:
				g.open = true
				p.open++
			default:
				return
			}
			w := p.waiters[tenant][0]
			p.removeWaiter(w)
			if len(p.waiters[tenant]) > 0 {
				// Served: to the back of the ring.
				p.ring = append(slices.DeleteFunc(p.ring, func(t string) bool { return t == tenant }), tenant)
			}
			p.active[tenant]++
			w.got <- g
			if w.woken != nil {
				w.woken.granted()
			}
			served = true
		}
	}
}

// readyNow reports whether sc is ready for a client whose settings are
// key without a wait: no cancel request in flight, alive, and no round
// trip due (prepare would return at once).
func (p *txPool) readyNow(sc *serverConn, key string) bool {
	if !sc.cancelMu.TryLock() {
		return false
	}
	dead := sc.dead.Load()
	sc.cancelMu.Unlock()
	return !dead && !p.needsRoundTrip(sc, key)
}

// needsRoundTrip reports whether prepare makes a round trip on sc for a
// client whose settings are key (it then waits on the upstream).
func (p *txPool) needsRoundTrip(sc *serverConn, key string) bool {
	return sc.dirtyKey != "" && sc.dirtyKey != key || sc.settled != key || time.Since(sc.used) >= p.cfg.HealthCheckAfter.Duration
}

// prepare makes a connection ready for a client: no cancel in flight, alive
// if it sat idle long, and reset if another context may be committed on it.
func (p *txPool) prepare(sc *serverConn, pc *poolContext) error {
	key := pc.key
	// Taking cancelMu waits for a cancel request still in flight.
	sc.cancelMu.Lock()
	dead := sc.dead.Load()
	sc.cancelMu.Unlock()
	if dead {
		return errors.New("connection lost while idle")
	}
	if !p.needsRoundTrip(sc, key) {
		return nil
	}
	needReset := sc.dirtyKey != "" && sc.dirtyKey != key
	needSettle := sc.settled != key
	if !needReset && !needSettle {
		_, err := p.roundTrip(sc, emptyQuery, p.cfg.WaitTimeout.Duration)
		return err
	}
	// One round trip resets the last holder's settings if they differ,
	// commits this key's (its session-level statements: a transaction-scoped
	// context is emptied) and prepares the context statements.
	sql := pc.commit
	if needReset {
		sql = serverResetQuery + "; " + pc.commit
	}
	// Every context statement a previous holder had is closed first: one it
	// had and this holder has not must not stay behind.
	msgs := encodeQuery(sql)
	for i := range sc.ctxCount {
		msgs = appendClose(msgs, 'S', contextStmtPrefix+strconv.Itoa(i))
	}
	msgs = append(append(msgs, pc.ctxPrepare...), syncMessage...)
	sc.ctxCount = max(sc.ctxCount, pc.ctxCount) // until the round trip tells
	_, err := p.roundTripN(sc, msgs, 2, p.cfg.WaitTimeout.Duration)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		sc.dirtyKey, sc.settled, sc.ctxCount = key, key, pc.ctxCount
		return nil
	case !errors.As(err, &pgErr):
		return err
	}
	// The settings do not apply: the statement rolled back whole. The
	// client's inline assertion will fail the same way and tell it why; the
	// connection still needs the reset.
	sc.settled = ""
	if needReset {
		if _, err := p.roundTrip(sc, encodeQuery(serverResetQuery), p.cfg.WaitTimeout.Duration); err != nil {
			return err
		}
		sc.dirtyKey = ""
	}
	return nil
}

var syncMessage = []byte{'S', 0, 0, 0, 4}

// encodeQuery is sql as a Query message.
func encodeQuery(sql string) []byte {
	msg, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		panic(err) // cannot fail for a string
	}
	return msg
}

// emptyQuery is the health check: a Query with an empty string.
var emptyQuery = []byte{'Q', 0, 0, 0, 5, 0}

// roundTrip sends query (a Query, or messages ending with Sync) on a
// connection nobody else is using and waits for the replies up to
// ReadyForQuery, collecting the ParameterStatus values; an error fails it.
func (p *txPool) roundTrip(sc *serverConn, query []byte, timeout time.Duration) (map[string]string, error) {
	return p.roundTripN(sc, query, 1, timeout)
}

// roundTripN is roundTrip for messages that end in n ReadyForQuery; it
// fails if any part does.
func (p *txPool) roundTripN(sc *serverConn, query []byte, n int, timeout time.Duration) (map[string]string, error) {
	c := &collector{sc: sc, statuses: map[string]string{}, want: n, done: make(chan error, 1)}
	sc.coll.Store(c)
	defer sc.coll.Store(nil)
	// A simple query drops the unnamed statement, whoever's it was.
	sc.mu.Lock()
	sc.unnamed = nil
	sc.mu.Unlock()
	_ = sc.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := sc.w.Write(query)
	if err == nil {
		err = sc.w.Flush()
	}
	_ = sc.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-c.done:
		return c.statuses, err
	case <-timer.C:
		sc.dead.Store(true)
		sc.conn.Close()
		return nil, fmt.Errorf("no reply from the upstream within %s", timeout)
	}
}

// collector reads the replies to one of pgtenant's own round trips.
type collector struct {
	sc       *serverConn
	statuses map[string]string
	failed   error
	want     int  // ReadyForQuery messages that end it
	over     bool // its last ReadyForQuery came: anything more is not its own
	done     chan error
}

func (c *collector) reply(typ byte, size int) error {
	msg, err := readMessage(c.sc.r, size)
	if err != nil {
		return err
	}
	switch typ {
	case 'E':
		c.failed = decodeError(msg)
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(msg[5:]) == nil {
			c.statuses[ps.Name] = ps.Value
		}
	case 'Z':
		if c.over {
			return errors.New("an extra ReadyForQuery for one round trip")
		}
		if c.failed == nil && msg[5] != 'I' {
			c.failed = fmt.Errorf("upstream not idle after a round trip of pgtenant's (status %q)", msg[5])
		}
		if c.want--; c.want == 0 {
			c.over = true
			c.done <- c.failed
		}
	default:
		if c.over {
			return fmt.Errorf("reply %q after the end of a round trip of pgtenant's", typ)
		}
	}
	return nil
}

// serve is a pooled connection's reader, for as long as the connection
// lives. It is already waiting for the upstream's reply when a client's
// messages go out, and hands what it reads to the client holding the
// connection: one wake-up per reply, and no goroutine of its own for an
// idle client. Under an event loop it leaves its goroutine whenever it
// would wait for the upstream, and the loop reads on (serverLoop).
func (p *txPool) serve(sc *serverConn) {
	p.serveFrom(sc, p.serveSome(sc))
}

// serveFrom goes on serving sc on this goroutine after serveSome returned
// err: back to the loop when it is errParked, else the reader's end.
func (p *txPool) serveFrom(sc *serverConn, err error) {
	for err == errParked {
		if sc.loop.parkItem(sc) {
			return
		}
		sc.noPark.Store(true)
		err = p.serveSome(sc)
	}
	p.gone(sc)
	p.readers.Done()
}

// serveSome reads replies until the connection ends (errReaderEnded) or,
// under an event loop, until it would wait for the upstream (errParked).
func (p *txPool) serveSome(sc *serverConn) (err error) {
	defer func() {
		if v := recover(); v != nil {
			// A bug while handing replies to a client: that client's session
			// ends with the connection, whose state is unknown.
			r := sc.holder.Load()
			tenant := ""
			if r != nil {
				tenant = r.tenant
			}
			logPanic(p.logger(), "upstream", v, "tenant", tenant, "upstream_pid", sc.pid)
			p.obs().Panic("upstream")
			sc.dead.Store(true)
			sc.conn.Close()
			if r != nil {
				r.failResponse(errPanic)
			}
			err = errReaderEnded
		}
	}()
	for {
		if r := sc.holder.Load(); r != nil && sc.r.Buffered() < 5 {
			if err := r.flushClient(); err != nil {
				p.fail(sc, r, err)
				return errReaderEnded
			}
		}
		if sc.r.Buffered() == 0 && sc.loop != nil && !sc.noPark.Load() {
			// On the loop, the loop found the socket readable: read it. A
			// goroutine the loop was handed to goes back to it.
			ready := sc.loopReady && sc.onLoop(sc.loop)
			sc.loopReady = false
			if !ready {
				return errParked
			}
		}
		sc.loopBoundary = true
		typ, size, err := readHeader(sc.r)
		if err == errWouldBlock {
			return errParked
		}
		if err != nil {
			sc.dead.Store(true)
			sc.conn.Close()
			if r := sc.holder.Load(); r != nil {
				r.failResponse(r.upstreamReadError(err))
			}
			if c := sc.coll.Load(); c != nil {
				select {
				case c.done <- err:
				default:
				}
			}
			return errReaderEnded
		}
		if r := sc.holder.Load(); r != nil {
			if err := r.flushIfShort(sc.r, typ, size); err != nil {
				p.fail(sc, r, err)
				return errReaderEnded
			}
			// A message that fits the reader is peeked whole (on a loop: or
			// the loop waits for the rest); a larger one is read as it comes.
			sc.loopBoundary = size <= sc.r.Size() || !r.replyWhole(typ)
			msg, err := r.nextReply(sc.r, typ, size)
			sc.loopBoundary = false
			if err == errWouldBlock {
				return errParked
			}
			if err != nil {
				err = r.upstreamReadError(err)
			} else {
				err = r.replyFrom(sc.r, msg, size)
			}
			if err != nil {
				if errors.Is(err, errDraining) {
					// The session ends at an idle point (the lease is over); the
					// connection is fine.
					r.failResponse(err)
					continue
				}
				p.fail(sc, r, err)
				return errReaderEnded
			}
			continue
		}
		sc.loopBoundary = false
		if c := sc.coll.Load(); c != nil {
			if err := c.reply(typ, size); err != nil {
				p.distrust(sc, err)
				return errReaderEnded
			}
			continue
		}
		// Nobody asked: the FATAL a backend sends before it exits, or worse.
		// The connection is not to be trusted any more.
		p.distrust(sc, errors.New("a reply nobody asked for"))
		return errReaderEnded
	}
}

// errReaderEnded: a pooled connection's reader has stopped for good.
var errReaderEnded = errors.New("reader ended")

func (p *txPool) logger() *slog.Logger {
	if p.log == nil {
		return slog.Default()
	}
	return p.log
}

// distrust closes a connection whose replies do not match what was sent.
// A client may have become its holder since the reader looked (a round trip
// of pgtenant's that took a stray reply for its own ends early): that
// client's session ends too rather than wait for replies that will not come.
func (p *txPool) distrust(sc *serverConn, err error) {
	sc.dead.Store(true)
	sc.conn.Close()
	if r := sc.holder.Load(); r != nil {
		r.failResponse(fatalf(codeProtocolViolation, "pgtenant: the upstream connection went out of step (%v)", err))
	}
}

// fail ends the holder's session with err and the connection with it: its
// state is unknown.
func (p *txPool) fail(sc *serverConn, r *relay, err error) {
	sc.dead.Store(true)
	sc.conn.Close()
	r.failResponse(err)
}

// gone forgets a connection whose reader has stopped, if it is idle; a
// held one is closed when its holder releases it.
func (p *txPool) gone(sc *serverConn) {
	// Nobody reads the connection now: a client that holds it, or takes it
	// hereafter (attachLocked checks readerGone after it stores itself),
	// is ended rather than left waiting for replies.
	sc.dead.Store(true)
	sc.readerGone.Store(true)
	if r := sc.holder.Load(); r != nil {
		r.failResponse(errUpstreamLost)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.idle, sc); i >= 0 {
		p.idle = slices.Delete(p.idle, i, i+1)
		p.open--
		p.dispatch()
	}
}

// dial connects a new pooled connection and starts its reader.
func (p *txPool) dial(ctx context.Context) (*serverConn, error) {
	start := time.Now()
	sc, err := p.connect(ctx)
	p.obs().UpstreamConnect(p.name, time.Since(start), err)
	if err != nil {
		return nil, err
	}
	p.readers.Add(1)
	if p.loop != nil {
		sc.useLoop(p, p.loop())
	}
	go p.serve(sc)
	return sc, nil
}

// statusCacheLimit bounds the distinct startup-parameter sets remembered.
const statusCacheLimit = 1024

func (p *txPool) cachedStatuses(paramsKey string) (map[string]string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.statuses[paramsKey]
	return m, ok
}

func (p *txPool) cacheStatuses(paramsKey string, m map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.statuses == nil || len(p.statuses) >= statusCacheLimit {
		p.statuses = map[string]map[string]string{}
	}
	p.statuses[paramsKey] = m
}

// learnStatuses runs a client's assertion once on a pooled connection: it
// checks that the settings apply and returns the parameter statuses a
// client with those settings is to be told.
func (p *txPool) learnStatuses(tenant string, pc *poolContext, assertion []byte, timeout time.Duration) (map[string]string, error) {
	sc, err := p.acquire(nil, noWaiter{}, tenant, pc, nil)
	if err != nil {
		return nil, err
	}
	sc.dirtyKey = pc.key
	// The server reports a setting only when its value changes, and acquire
	// may have committed these settings already: take them back first, so
	// that the assertion reports every one of them.
	_, err = p.roundTrip(sc, encodeQuery(serverResetQuery), timeout)
	var statuses map[string]string
	if err == nil {
		statuses, err = p.roundTrip(sc, assertion, timeout)
	}
	p.release(sc, tenant, err == nil)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, assertionFailed(pgErr)
		}
		return nil, fatalf(codeConnectionFailure, "pgtenant could not assert the tenant context on the upstream: %v", err)
	}
	merged := make(map[string]string, len(sc.params)+len(statuses))
	for k, v := range sc.params {
		merged[k] = v
	}
	for k, v := range statuses {
		merged[k] = v
	}
	return merged, nil
}

// release returns a connection after a transaction. reusable is false when
// the client left it in an unknown state (mid-transaction, mid-COPY): then
// it is closed, and the upstream rolls back whatever was in progress.
func (p *txPool) release(sc *serverConn, tenant string, reusable bool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active[tenant]--
	if p.active[tenant] <= 0 {
		delete(p.active, tenant)
	}
	if !reusable || sc.dead.Load() || p.closed || p.retired || now.Sub(sc.created) > p.cfg.MaxLifetime.Duration {
		sc.dead.Store(true)
		sc.conn.Close()
		p.open--
	} else {
		sc.used = now
		p.idle = append(p.idle, sc)
	}
	p.dispatch()
}

// maintain closes connections idle too long or too old, and keeps MinIdle
// connections open.
func (p *txPool) maintain() {
	defer close(p.done)
	interval := min(p.cfg.IdleTimeout.Duration/2, time.Second)
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		p.mu.Lock()
		var stale []*serverConn
		p.idle = slices.DeleteFunc(p.idle, func(sc *serverConn) bool {
			tooOld := now.Sub(sc.created) > p.cfg.MaxLifetime.Duration
			unused := now.Sub(sc.used) > p.cfg.IdleTimeout.Duration && p.open-len(stale) > p.cfg.MinIdle
			if tooOld || unused {
				stale = append(stale, sc)
				return true
			}
			return false
		})
		p.open -= len(stale)
		missing := p.cfg.MinIdle - p.open
		if p.retired {
			missing = 0 // its connections are to go
		}
		if missing > 0 {
			p.open += missing
		}
		p.dispatch()
		p.mu.Unlock()
		for _, sc := range stale {
			sc.dead.Store(true)
			sc.conn.Close()
		}
		for ; missing > 0; missing-- {
			sc, err := p.dial(p.ctx)
			p.mu.Lock()
			if err != nil || p.closed || p.retired {
				p.open--
				if sc != nil {
					sc.dead.Store(true)
					sc.conn.Close()
				}
			} else {
				sc.used = time.Now()
				p.idle = append(p.idle, sc)
			}
			p.dispatch()
			p.mu.Unlock()
		}
	}
}

// stats reports the pool's connections: open (idle or held) and idle.
func (p *txPool) stats() (open, idle, waiting int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open, len(p.idle), p.nwaiting
}

// retire makes a pool that a reload replaced close its idle connections
// now, and each one its sessions release from now on (retire.go).
func (p *txPool) retire() {
	p.mu.Lock()
	if p.retired || p.closed {
		p.mu.Unlock()
		return
	}
	p.retired = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.dispatch() // waiters may open connections in place of the idle ones
	p.mu.Unlock()
	for _, sc := range idle {
		sc.dead.Store(true)
		sc.conn.Close()
	}
}

// unused reports whether nothing uses a retired pool any more: no
// connection open, no client waiting for one or logging in on it, nobody
// listening on its hub.
func (p *txPool) unused() bool {
	p.mu.Lock()
	busy := p.open > 0 || p.nwaiting > 0
	p.mu.Unlock()
	if busy || p.entering.Load() > 0 {
		return false
	}
	h := p.hubMade.Load()
	return h == nil || h.listeners() == 0
}

// close closes the idle connections and stops the pool; connections still
// held are closed as their clients release them.
func (p *txPool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.stop()
	for _, q := range p.waiters {
		for _, w := range q {
			if w.woken != nil {
				w.woken.granted() // its acquire sees the pool closed
			}
		}
	}
	p.mu.Unlock()
	for _, sc := range idle {
		sc.dead.Store(true)
		sc.conn.Close()
	}
	p.hubOnce.Do(func() {}) // no hub is made from here on
	if p.hub != nil {
		p.hub.close()
	}
	<-p.done
	p.readers.Wait()
}

// dialPooled opens a connection to up for its pool: no client parameters
// and no tenant; those come with each transaction.
func (rt *runtime) dialPooled(ctx context.Context, up *pgconn.Config) (*serverConn, error) {
	hc, err := rt.dialUpstream(ctx, up, nil, nil)
	if err != nil {
		return nil, err
	}
	sc := &serverConn{
		conn:     hc.Conn,
		r:        bufio.NewReaderSize(hc.Conn, relayBufSize),
		w:        bufio.NewWriterSize(hc.Conn, relayBufSize),
		pid:      hc.PID,
		secret:   hc.SecretKey,
		params:   hc.ParameterStatuses,
		created:  time.Now(),
		used:     time.Now(),
		prepared: map[string]stmtCopy{},
	}
	if err := checkUpstreamLexing(hc.ParameterStatuses); err != nil {
		hc.Conn.Close()
		return nil, err
	}
	return sc, nil
}

// checkUpstreamLexing refuses an upstream that would read SQL differently
// from the guard.
func checkUpstreamLexing(statuses map[string]string) *pgconn.PgError {
	for name, value := range statuses {
		if !lexsafe.Safe(name, value) {
			return fatalf(codeInsufficientPrivilege, "pgtenant cannot guard statements on this upstream: %s is %s", name, value)
		}
	}
	return nil
}

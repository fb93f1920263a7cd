package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction mode: the relay leases an upstream connection from the pool
// when a unit starts with none held, and gives it back at the first
// ReadyForQuery that leaves the upstream idle ('I') with nothing else
// outstanding.
//
// The request side (this client's goroutine) acquires. The reply side
// is not a goroutine of the client's: it is the pooled connection's reader
// (txPool.serve), which hands its replies to the relay while the relay is
// attached, from the first unit of a lease until that idle point. The
// connection goes back to the pool when both are done with it: the relay
// detached and the request side not in the middle of writing to it.
// Anything the relay cannot place (a reply with nothing outstanding, a
// message in the middle of a transaction with no connection held) ends the
// session and the connection: a desynchronised connection must never reach
// another client.

// pooledState is the relay's transaction-mode state.
type pooledState struct {
	// pool is the placement's pool, which a resume may change (pause.go);
	// the relay's binding (leaseBinding) says the session is in
	// transaction mode, for good.
	pool *txPool
	// pctx is this client's settings, shared with the sessions that have the
	// same: pctx.key names them (serverConn.dirtyKey, settled).
	pctx *poolContext
	// The client's channels and notifications (listening.go, notifyhub.go);
	// clientEncoding is its client_encoding as last reported (a string).
	listen         listenState
	notes          *noteBox
	clientEncoding atomic.Value

	// The client's own settings (carried.go): startup are its startup
	// parameters, context the tenant context asserted after them.
	startup, context []setting
	carryRules       *carryRules
	// carry is nil until the client first does something its settings
	// are read back for (carrying): most clients never do. The request
	// side makes it; the reply side touches it only while a readback it
	// sent is outstanding.
	carry *carryState
	// pin is why the held connection is pinned to this client ("": it is
	// not; pinned.go), under leaseMu; pinned mirrors it for readers
	// without the lock.
	pin    string
	pinned atomic.Bool
	// holdLease keeps the lease past an idle ReadyForQuery while the
	// client's settings are to be read back on its connection (carried.go),
	// under leaseMu.
	holdLease bool

	// Guarded by leaseMu (with pending, when the reply side detaches).
	sc       *serverConn // held connection, nil between transactions
	attached bool        // sc's reader hands its replies to this relay
	writing  bool        // the request side writes to sc
	broken   bool        // sc must not be reused
	stopping bool        // the request side has ended

	failOnce sync.Once
	respErr  error // why the reply side ended, once done is closed
	// stmts is nil until the client's first lease (prepared): a client
	// that has run nothing keeps none.
	stmts *statements

	// A client idle longer than parkAfter leaves its goroutine and waits in
	// the parker (parker_linux.go); parker is nil for clients that cannot.
	// An event loop drives the request side instead (eventloop_linux.go)
	// when parker is one (evLoop).
	parker    clientParker
	loopSlot  // parkFD, noPark, parkState and, under an event loop, its bookkeeping
	parkMu    sync.Mutex
	parkSince int64 // when it started waiting, UnixNano
}

// loopSlot is what an event loop keeps of a client or pooled connection
// it drives (eventloop_linux.go), and the parker of a client.
type loopSlot struct {
	parkFD int32
	noPark atomic.Bool // set for good once it ends or parking failed

	loopGen      int64 // the loop's generation serving it now; 0: none
	loopReady    bool  // a step begins: the socket is readable
	loopBoundary bool  // reading between two messages: may go back to the loop
	loopState    uint8 // loopOff, loopParked, loopRunning, loopWaiting; under the loop's mu
	loopDisarmed bool  // out of the loop's events while served elsewhere; under the loop's mu
	// loopWaitGrant: the step that ends queued a wait for a pooled
	// connection (set by the step, read under the loop's mu); loopWoken:
	// its grant came during the step (under the loop's mu).
	loopWaitGrant bool
	loopWoken     bool

	parkState uint8 // the parker's: parkNone, parkWaiting (in parkReader), parkTaken; under the relay's parkMu
}

// clientParker holds idle clients without a goroutine: the parker, or an
// event loop.
type clientParker interface {
	park(r *relay) bool
	unpark(r *relay)
}

const (
	parkNone    = iota
	parkWaiting // blocked in parkReader's read, holding nothing
	parkTaken   // the parker ended that read with a deadline, to park it
)

// errParked means the request side has left its goroutine: the client
// waits in the parker, and resume goes on.
var errParked = errors.New("parked")

// Buffers of idle clients go back to these pools (and the ledger's queue
// to queuePool).
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, relayBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, relayBufSize) }}
	parkPool   = sync.Pool{New: func() any { return new([parkSize]byte) }}
)

// parkSize is what a waiting client's first read takes: a statement or
// two; the read buffer takes the rest.
const parkSize = 256

// prefixReader reads what parkReader already read, then the connection.
// The buffer that held it goes back to parkPool once read.
type prefixReader struct {
	buf  *[parkSize]byte
	rest []byte
	conn net.Conn
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.rest) > 0 {
		n := copy(b, p.rest)
		p.rest = p.rest[n:]
		if len(p.rest) == 0 {
			p.release()
		}
		return n, nil
	}
	return p.conn.Read(b)
}

func (p *prefixReader) release() {
	if p.buf != nil {
		parkPool.Put(p.buf)
		p.buf, p.rest = nil, nil
	}
}

// parkReader waits for the client's next bytes with its read buffer given
// back, and takes one again when they come. Called with nothing buffered.
// mayLeave says the request side holds no state of its own here (not in an
// extended-protocol group or a COPY), so the parker may take the client:
// then it returns errParked.
func (r *relay) parkReader(mayLeave bool) error {
	if r.cr != nil {
		readerPool.Put(r.cr)
		r.cr = nil
	}
	leave := mayLeave && r.evLoop() == nil && r.parker != nil && !r.noPark.Load()
	if leave {
		r.parkMu.Lock()
		r.parkState, r.parkSince = parkWaiting, time.Now().UnixNano()
		r.parkMu.Unlock()
	}
	r.prefix.release()
	buf := parkPool.Get().(*[parkSize]byte)
	n, err := r.client.Read(buf[:])
	if leave {
		r.parkMu.Lock()
		taken := r.parkState == parkTaken
		r.parkState = parkNone
		if taken {
			_ = r.client.SetReadDeadline(time.Time{})
		}
		r.parkMu.Unlock()
		if taken && n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			parkPool.Put(buf)
			return errParked
		}
	}
	r.cr = readerPool.Get().(*bufio.Reader)
	r.prefix = prefixReader{buf: buf, rest: buf[:n], conn: r.client}
	if n == 0 {
		r.prefix.release()
	}
	r.cr.Reset(&r.prefix)
	if n > 0 {
		return nil // an error comes again on the next read
	}
	return err
}

// takeIfIdle ends the read of a client that has waited in parkReader since
// before idleSince with no connection held, so that the parker can take it.
func (r *relay) takeIfIdle(idleSince int64) {
	r.parkMu.Lock()
	defer r.parkMu.Unlock()
	if r.parker == nil || r.noPark.Load() || r.parkState != parkWaiting || r.parkSince > idleSince {
		return
	}
	r.leaseMu.Lock()
	free := r.sc == nil && !r.stopping
	r.leaseMu.Unlock()
	if free {
		r.parkState = parkTaken
		_ = r.client.SetReadDeadline(time.Unix(1, 0))
	}
}

// clientWriter returns the client writer, taking one if the client has
// none (between leases).
func (r *relay) clientWriter() *bufio.Writer {
	if r.cw == nil {
		r.cw = writerPool.Get().(*bufio.Writer)
		r.cw.Reset(r.clientOut)
	}
	return r.cw
}

// serverResetQuery takes a pooled connection back to its own state before
// a client with other settings (another tenant, for one) holds it: every
// session-level setting the last holder had (its startup parameters, its
// carried SETs, the tenant context) goes; RESET ALL leaves the role alone
// (GUC_NO_RESET_ALL in PostgreSQL), hence RESET ROLE. lastval() and
// currval() would show the next holder this client's sequence values. And
// what pins a connection goes too: the guard pins on the statements that
// make it, but a function stored in the database can make it behind a
// statement the guard cannot see through (a temporary table holding rows
// of the last holder's tenant, its advisory locks, its LISTEN).
const serverResetQuery = "RESET ALL; RESET ROLE; DISCARD SEQUENCES; DISCARD TEMP; CLOSE ALL; UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all()"

// changedKey marks a connection whose holder changed its own settings in a
// way not yet read back (carried.go): whoever holds it next, whatever its
// key, gets it reset first.
const changedKey = "\x00changed"

// leaseFor makes sure the request side may write a message of type typ
// upstream. It returns false when the message has nowhere to go and is
// dropped (a Flush or stray copy data between transactions).
func (r *relay) leaseFor(typ byte, startsUnit bool) (bool, error) {
	if r.writing {
		return true, nil
	}
	r.leaseMu.Lock()
	if r.sc != nil {
		r.takeWriterLocked()
		r.leaseMu.Unlock()
		return true, nil
	}
	r.leaseMu.Unlock()
	switch {
	case typ == 'H' || typ == 'd' || typ == 'c' || typ == 'f':
		return false, nil
	case !startsUnit:
		return false, fatalf(codeProtocolViolation, "pgtenant: message %q in the middle of a transaction that has no upstream connection", typ)
	}
	if r.draining.Load() {
		return false, errDraining
	}
	r.prepared() // before the reply side can need them
	sc, err := r.pool.acquire(r.done, r.waits, r.tenant, r.pctx, r.takePoolWait())
	if err != nil {
		return false, err
	}
	sc.dirtyKey = r.pctx.key
	r.leaseMu.Lock()
	if r.draining.Load() {
		r.leaseMu.Unlock()
		r.pool.release(sc, r.tenant, true)
		return false, errDraining
	}
	r.sc, r.broken = sc, false
	r.takeWriterLocked()
	r.leaseMu.Unlock()
	r.txStatus.Store('I')
	return true, nil
}

// takePoolWait hands acquire the wait queued for this client, if any.
func (r *relay) takePoolWait() *poolWaiter {
	w := r.poolWait
	if w != nil {
		r.poolWait, r.poolWaitFresh = nil, false
		r.poolTimer.Stop()
	}
	return w
}

// endPoolWait ends a queued wait nothing needed after all: the message it
// waited for needed no connection, or the session ends.
func (r *relay) endPoolWait() {
	if w := r.takePoolWait(); w != nil {
		w.pool.endWait(w)
	}
}

// needsConnection: a message of this type that starts a unit leases a
// connection (leaseFor), or may.
func needsConnection(typ byte) bool {
	switch typ {
	case 'X', 'H', 'd', 'c', 'f':
		return false
	}
	return true
}

// takeWriterLocked starts a write section on the held connection: the
// request side gets its writer, the only way it writes upstream in
// transaction mode, and endWrite takes it away again before the lease
// can end. Caller holds leaseMu, with a connection held.
func (r *relay) takeWriterLocked() {
	r.writing = true
	r.uw, r.wconn = r.sc.w, r.sc.conn
}

// attachLocked makes the held connection's reader hand its replies to this
// relay. Caller holds leaseMu and has just counted a pending unit.
func (r *relay) attachLocked() {
	if !r.attached {
		r.attached = true
		r.clientWriter()
		r.ur, r.rconn, r.rsc = r.sc.r, r.sc.conn, r.sc
		r.sc.holder.Store(r)
		if r.sc.readerGone.Load() {
			// Its reader has returned (txPool.gone): no reply will come.
			r.failResponse(errUpstreamLost)
		}
	}
}

// endWrite ends the request side's write section after a flush; the
// connection goes back to the pool if the reply side is done with it.
func (r *relay) endWrite() {
	// Outside a write section the request side has no upstream writer: the
	// connection may be another client's by the next message.
	r.uw, r.wconn = nil, nil
	r.leaseMu.Lock()
	r.writing = false
	if r.sc != nil && !r.attached {
		r.releaseLocked()
	}
	if r.notes != nil {
		r.notes.poke() // a kept lease may now be between transactions
	}
	r.leaseMu.Unlock()
}

// detachLocked is the reply side's end of a lease, at a ReadyForQuery
// that leaves nothing outstanding and the upstream idle. Caller holds leaseMu.
func (r *relay) detachLocked() {
	r.attached = false
	if r.notes != nil {
		r.notes.poke() // between transactions: notifications may go
	}
	r.rsc.holder.Store(nil)
	if r.cw.Buffered() == 0 {
		// Flushed at the ReadyForQuery that ended the lease.
		writerPool.Put(r.cw)
		r.cw = nil
	}
	if r.upstreamTimeout > 0 {
		_ = r.rconn.SetReadDeadline(time.Time{})
	}
	if !r.writing {
		r.releaseLocked()
	}
	if r.stopping {
		// The session is ending and waits for the reply side.
		r.failResponse(nil)
	}
}

func (r *relay) releaseLocked() {
	sc := r.sc
	r.sc = nil
	r.stmts.reset()
	// Both sides are done with the lease: whatever the ledger still holds
	// (nothing, unless the session is ending) was this connection's.
	r.ledger.reset()
	r.pool.release(sc, r.tenant, !r.broken)
}

// endLease gives back or discards the connection held when the session
// ends. Both relay sides have returned.
func (r *relay) endLease() {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.sc == nil {
		return
	}
	if r.attached || r.writing || r.pin != "" || r.ledger.pending.Load() != 0 || byte(r.txStatus.Load()) != 'I' {
		// Mid-transaction, mid-COPY, with replies owed, or inside a write
		// section (part of a message may have gone out, or be waiting in
		// the connection's write buffer): the state of the connection is
		// unknown. Closing it makes the upstream roll back.
		r.broken = true
	}
	r.attached, r.writing = false, false
	r.releaseLocked()
}

// stopPooled is the request side's end: a connection whose replies are
// still being read is closed (what it still runs cancelled when the client
// abandoned it, rather than said Terminate), and stopPooled reports
// whether the caller must wait for its reader to let go of the relay (done).
func (r *relay) stopPooled(abandoned bool) bool {
	r.leaseMu.Lock()
	r.stopping = true
	if !r.attached {
		r.leaseMu.Unlock()
		return false
	}
	r.broken = true
	target, abandoned := r.sc.cancelTarget(), abandoned && !r.ledger.quiet()
	r.sc.conn.Close()
	r.leaseMu.Unlock()
	if abandoned {
		cancelAbandoned(target)
	}
	return true
}

// abandonedCancelTimeout bounds the cancel sent for a statement whose
// client has gone.
const abandonedCancelTimeout = time.Second

// cancelAbandoned cancels what an upstream backend runs for a client that
// has gone: closing the connection alone would let a long statement run on
// (PostgreSQL notices a closed client only when it next writes), holding
// its locks and a backend that the pool no longer counts.
func cancelAbandoned(t cancelTarget) {
	_ = t.send(context.Background(), abandonedCancelTimeout)
}

// failResponse ends the reply side with err (nil: a clean end): the
// client is told why, unless the request side ended first, and its
// connection is closed so that the request side stops too.
func (r *relay) failResponse(err error) {
	r.failOnce.Do(func() {
		if r.parker != nil {
			// A parked client gets its goroutine back to see the close.
			r.parker.unpark(r)
		}
		r.respErr = err
		if !r.closing.Swap(true) {
			r.clientWriter()
			r.reportEnd(err)
			_ = r.cw.Flush()
			r.client.Close()
		}
		close(r.done)
	})
}

// reply, flushClient and lost make the relay the reply handler of a pooled
// connection while it holds one (see txPool.serve).
func (r *relay) flushClient() error { return r.cw.Flush() }

// endPooledIdle ends an idle transaction-mode session (drain, terminate):
// with no connection held, nobody else writes to the client.
func (r *relay) endPooledIdle() bool {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.sc != nil {
		return false
	}
	r.failResponse(errDraining)
	return true
}

// cancelPooled forwards a cancel request to the connection the client
// holds, if any. The connection is not handed to anyone else until the
// upstream has acted on the request.
func (r *relay) cancelPooled(timeout time.Duration) (uint32, bool, error) {
	r.leaseMu.Lock()
	sc := r.sc
	if sc == nil {
		r.leaseMu.Unlock()
		return 0, false, nil
	}
	sc.cancelMu.Lock()
	r.leaseMu.Unlock()
	defer sc.cancelMu.Unlock()
	t := sc.cancelTarget()
	return t.pid, true, t.send(context.Background(), timeout)
}

// relayStatementMessage sends a Parse, Bind, Describe or Close in
// transaction mode, under upstream names and with whatever the connection
// lacks prepared first (see statements.go). msg is the whole message when
// the caller has it (Parse always, through the guard).
func (r *relay) relayStatementMessage(typ byte, size int, msg []byte) error {
	sc := r.sc
	st := r.prepared()
	seq := r.seq
	// Decisions rest on what the connection and the client have prepared;
	// an earlier Sync group whose Parse or Close is still unanswered may be
	// undone (an error), so wait for it. Drivers do not pipeline that way.
	if err := r.waitStatements(seq); err != nil {
		return err
	}
	switch typ {
	case 'P':
		name, rest, ok := splitName(msg[5:])
		if !ok {
			return fatalf(codeProtocolViolation, "invalid Parse message")
		}
		if len(name) == 0 {
			st.mu.Lock()
			st.gen++
			undo := replyEntry{seq: seq, kind: effectClientUnnamed, prev: st.unnamed, prevChanges: st.unnamedChanges, prevDeallocates: st.unnamedDeallocates, prevPins: st.unnamedPins, prevDealloc: st.unnamedDealloc, prevGen: st.gen - 1}
			if !bytes.Equal(st.unnamed, msg) {
				// A slice of its own: undo entries keep the one before.
				// The same text again (a driver's every transaction) keeps
				// the one it has, with no allocation.
				st.unnamed = append(st.unnamed[:0:0], msg...)
			}
			st.unnamedChanges, st.unnamedDeallocates, st.unnamedPins = r.changes, r.deallocs, r.pins
			st.unnamedRuns = r.stmtExecutes
			st.unnamedChans = r.channelChange()
			st.unnamedMakes = r.stmtMakes
			st.unnamedDealloc = r.deallocTo
			st.mu.Unlock()
			sc.mu.Lock()
			undo.prevOwner, undo.prevOwnerN = sc.unnamed, sc.unnamedN
			sc.unnamed, sc.unnamedN = r, st.gen
			sc.mu.Unlock()
			st.record(undo)
			return r.sendClient(msg, false)
		}
		st.mu.Lock()
		existing := st.byName[string(name)]
		st.mu.Unlock()
		if existing != nil {
			// PostgreSQL refuses to redefine a named statement (42P05),
			// after the errors of the text itself (25P02 in a failed
			// block, but for a text that ends the block): let it, under a
			// name the connection has. Any statement under the name will
			// do, so where the connection lacks one a stand-in takes it,
			// not the client's statement: that one would fail to parse in a
			// failed block, where ROLLBACK parses.
			if err := r.occupyName(existing.server, seq); err != nil {
				return err
			}
			st.scratch = appendParse(st.scratch[:0], existing.server, rest)
			st.record(replyEntry{seq: seq})
			return r.writeRewrittenAs(existing.client)
		}
		if err := st.overLimit(len(msg), r.maxPrepared); err != nil {
			return err
		}
		server := serverStmtName(r.pctx.key, rest)
		// Parsed again even where the connection has it already (from this
		// client's earlier lease, or another's): PostgreSQL parses every
		// Parse afresh, and DDL since may have changed what the text means
		// (the old statement would answer with the old types, or fail with
		// 0A000 "cached plan must not change result type" for ever after).
		epoch, had := sc.parsing(server)
		cs := &clientStmt{client: string(name), server: server, parse: appendParse(nil, server, rest), changes: r.changes, deallocates: r.deallocs, pins: r.pins, runs: r.stmtExecutes,
			chans: r.channelChange(), makes: r.stmtMakes, dealloc: r.deallocTo, parsed: epoch}
		st.mu.Lock()
		st.put(string(name), cs)
		st.mu.Unlock()
		if err := r.evict(server, seq); err != nil {
			return err
		}
		// Closed first in case it is there after all. If the Parse then
		// fails, the statement is gone; if both are skipped, nothing changed.
		st.scratch = appendClose(st.scratch[:0], 'S', server)
		st.record(replyEntry{seq: seq, action: replyHide, kind: effectServerRemove, server: server, had: had})
		st.scratch = append(st.scratch, cs.parse...)
		st.record(replyEntry{seq: seq, kind: effectClientAddServer, server: server, client: string(name)})
		return r.writeRewritten()
	case 'B':
		return r.relayBind(size)
	case 'D', 'C':
		if msg == nil {
			var err error
			if msg, err = r.wholeMessage(size); err != nil {
				return err
			}
		}
		if len(msg) < 7 {
			return fatalf(codeProtocolViolation, "invalid %q message", typ)
		}
		kind := msg[5]
		name, _, ok := splitName(msg[6:])
		if !ok {
			return fatalf(codeProtocolViolation, "invalid %q message", typ)
		}
		if kind != 'S' {
			if typ == 'C' {
				st.record(replyEntry{seq: seq}) // its CloseComplete, in order
			}
			return r.sendClient(msg, false)
		}
		if len(name) == 0 {
			if typ == 'D' {
				if err := r.ensureUnnamed(seq); err != nil {
					return err
				}
				st.mu.Lock()
				runs := st.unnamedRuns
				st.mu.Unlock()
				if err := r.ensureRuns(runs, seq); err != nil {
					return err
				}
			} else {
				st.mu.Lock()
				prev, gen := st.unnamed, st.gen
				st.unnamed = nil
				st.mu.Unlock()
				sc.mu.Lock()
				owner, ownerN := sc.unnamed, sc.unnamedN
				sc.unnamed = nil
				sc.mu.Unlock()
				st.record(replyEntry{seq: seq, kind: effectClientUnnamedClose, prev: prev, prevGen: gen, prevOwner: owner, prevOwnerN: ownerN})
			}
			return r.sendClient(msg, false)
		}
		st.mu.Lock()
		cs := st.byName[string(name)]
		if cs != nil && typ == 'C' {
			st.remove(string(name))
		}
		st.mu.Unlock()
		switch {
		case cs == nil && strings.HasPrefix(string(name), serverStmtPrefix):
			// Not the client's: never let it reach pgtenant's own statements.
			if typ == 'C' {
				st.scratch = appendClose(st.scratch[:0], 'P', noPortal)
				st.record(replyEntry{seq: seq})
			} else {
				st.scratch = appendDescribe(st.scratch[:0], 'S', unknownServerStmt)
			}
			return r.writeRewritten()
		case cs == nil:
			if typ == 'C' {
				st.record(replyEntry{seq: seq})
			}
			return r.sendClient(msg, false)
		case typ == 'C':
			// The upstream statement stays, cached for the next Parse of it.
			st.scratch = appendClose(st.scratch[:0], 'P', noPortal)
			st.record(replyEntry{seq: seq, kind: effectClientRemove, client: string(name), stmt: cs})
			return r.writeRewritten()
		default:
			if err := r.ensurePrepared(cs, seq); err != nil {
				return err
			}
			if err := r.ensureRuns(cs.runs, seq); err != nil {
				return err
			}
			st.scratch = appendDescribe(st.scratch[:0], 'S', cs.server)
			return r.writeRewritten()
		}
	}
	return nil
}

// waitStatements waits until no Parse or Close of a unit before seq is
// unanswered.
func (r *relay) waitStatements(seq uint64) error {
	r.waitSeq = seq
	return r.await(untilStatements)
}

// relayBind sends a Bind under the upstream statement name. Only the head
// of the message is rewritten; parameters are streamed.
func (r *relay) relayBind(size int) error {
	head := r.in
	portal, rest, ok := splitName(head[5:])
	var stmt []byte
	if ok {
		stmt, _, ok = splitName(rest)
	}
	if !ok {
		return fatalf(codeProtocolViolation, "invalid Bind message: names too long")
	}
	headLen := 5 + len(portal) + 1 + len(stmt) + 1
	st := r.prepared()
	seq := r.seq
	server := string(stmt)
	if len(stmt) == 0 {
		st.mu.Lock()
		changes := st.unnamedChanges && st.unnamed != nil
		deallocates := st.unnamedDeallocates && st.unnamed != nil
		pins, runs, chans, makes, dealloc := st.unnamedPins, st.unnamedRuns, st.unnamedChans, st.unnamedMakes, st.unnamedDealloc
		if st.unnamed == nil {
			pins, runs, chans, makes, dealloc = "", nil, nil, nil, nil
		}
		st.mu.Unlock()
		if makes != nil {
			r.makeAtBind(makes)
		}
		if chans != nil {
			if err := r.beforeListening(chans, mirrorInline); err != nil {
				return err
			}
		}
		if err := r.pinForBind(pins); err != nil {
			return err
		}
		if changes {
			r.noteSettingsChange()
		}
		if err := r.ensureUnnamed(seq); err != nil {
			return err
		}
		if err := r.ensureRuns(runs, seq); err != nil {
			return err
		}
		if err := r.deallocateAtBind(dealloc, seq); err != nil {
			return err
		}
		if deallocates {
			r.deallocateAll() // on the connection it runs on
		}
		return r.forwardUp('B', size, false)
	}
	st.mu.Lock()
	cs := st.byName[string(stmt)]
	st.mu.Unlock()
	client := ""
	switch {
	case cs != nil:
		client = cs.client
		if err := r.pinForBind(cs.pins); err != nil {
			return err
		}
		if cs.chans != nil {
			if err := r.beforeListening(cs.chans, mirrorInline); err != nil {
				return err
			}
		}
		if cs.makes != nil {
			r.makeAtBind(cs.makes)
		}
		if cs.changes {
			r.noteSettingsChange()
		}
		if err := r.ensurePrepared(cs, seq); err != nil {
			return err
		}
		if err := r.ensureRuns(cs.runs, seq); err != nil {
			return err
		}
		if err := r.deallocateAtBind(cs.dealloc, seq); err != nil {
			return err
		}
		if cs.deallocates {
			r.deallocateAll() // on the connection it runs on
		}
		server = cs.server
	case strings.HasPrefix(server, serverStmtPrefix):
		server = unknownServerStmt
	default:
		return r.forwardUp('B', size, false)
	}
	out := st.scratch[:0]
	out = append(out, 'B', 0, 0, 0, 0)
	out = append(append(out, portal...), 0)
	out = append(append(out, server...), 0)
	binary.BigEndian.PutUint32(out[1:], uint32(size-headLen+len(out)-1))
	st.scratch = out
	r.ledger.send(sentMsg{unit: r.seq, typ: 'B', name: client}) // head and parameters are one message
	if _, err := r.uw.Write(out); err != nil {
		return err
	}
	return r.passUp(headLen, size)
}

// ensurePrepared prepares a client statement on the held connection if it
// lacks it, with hidden replies.
func (r *relay) ensurePrepared(cs *clientStmt, seq uint64) error {
	if cs.parse == nil {
		// A PREPARE not read back yet: on the held connection, or never made.
		return nil
	}
	if r.sc.touchParsedSince(cs.server, cs.parsed) {
		return nil
	}
	r.sc.parsing(cs.server)
	st := r.prepared()
	buf := appendClose(nil, 'S', cs.server)
	st.record(replyEntry{seq: seq, action: replyHide, kind: effectServerRemove, server: cs.server})
	buf = append(buf, cs.parse...)
	st.record(replyEntry{seq: seq, action: replyHide, kind: effectServerAdd, server: cs.server})
	if err := r.sendMsgs(buf, fromClient); err != nil {
		return err
	}
	return r.evict(cs.server, seq)
}

// occupyName prepares a stand-in under a server statement name that
// nothing holds on the held connection, with hidden replies. The
// connection keeps it as a stand-in (stmtCopy.standIn): whoever needs the
// statement prepares it there, closing the stand-in first.
func (r *relay) occupyName(server string, seq uint64) error {
	if r.sc.standIn(server) {
		return nil
	}
	st := r.prepared()
	buf := appendClose(nil, 'S', server)
	st.record(replyEntry{seq: seq, action: replyHide, kind: effectServerRemove, server: server})
	buf = mustEncode(buf, &pgproto3.Parse{Name: server, Query: "ROLLBACK"})
	st.record(replyEntry{seq: seq, action: replyHide, kind: effectServerAdd, server: server})
	if err := r.sendMsgs(buf, fromClient); err != nil {
		return err
	}
	return r.evict(server, seq)
}

// ensureUnnamed prepares the client's unnamed statement on the held
// connection if the connection's unnamed statement is not the client's.
func (r *relay) ensureUnnamed(seq uint64) error {
	if r.ledger.queries.Load() > 0 {
		// A Query not yet answered may drop the client's unnamed statement
		// (queryRan): know first, or it would be prepared here again.
		if err := r.await(untilNoQuery); err != nil {
			return err
		}
	}
	sc, st := r.sc, r.prepared()
	st.mu.Lock()
	unnamed, gen := st.unnamed, st.gen
	st.mu.Unlock()
	sc.mu.Lock()
	// With none, the client's last one was dropped (a Query, perhaps on
	// another connection): a connection still marked with it holds it.
	mine := unnamed != nil && sc.unnamed == r && sc.unnamedN == gen
	if !mine {
		sc.unnamed, sc.unnamedN = nil, 0
		if unnamed != nil {
			sc.unnamed, sc.unnamedN = r, gen
		}
	}
	sc.mu.Unlock()
	switch {
	case mine:
		return nil
	case unnamed == nil:
		// The client has none; whatever the connection has is not its own.
		st.record(replyEntry{seq: seq, action: replyHide})
		return r.sendMsgs(appendClose(nil, 'S', ""), fromClient)
	}
	st.record(replyEntry{seq: seq, action: replyHide, kind: effectUnnamed})
	return r.sendMsgs(unnamed, fromClient)
}

// evict closes the connection's least recently used statements beyond
// max_prepared_statements, never keep (about to be used).
func (r *relay) evict(keep string, seq uint64) error {
	sc := r.sc
	limit := r.pool.cfg.MaxPreparedStatements
	for {
		sc.mu.Lock()
		if len(sc.prepared) <= limit {
			sc.mu.Unlock()
			return nil
		}
		oldest, oldestTick := "", ^uint64(0)
		for name, c := range sc.prepared {
			if name != keep && c.used < oldestTick {
				oldest, oldestTick = name, c.used
			}
		}
		// A stand-in the server then skips closing is forgotten, not
		// brought back as the statement (closed before any Parse of it).
		had := !sc.prepared[oldest].standIn
		delete(sc.prepared, oldest)
		sc.mu.Unlock()
		r.prepared().record(replyEntry{seq: seq, action: replyHide, kind: effectServerRemove, server: oldest, had: had})
		if err := r.sendMsgs(appendClose(nil, 'S', oldest), fromClient); err != nil {
			return err
		}
	}
}

// writeRewritten sends the scratch buffer in place of the client's message.
func (r *relay) writeRewritten() error {
	return r.writeRewrittenAs("")
}

// writeRewrittenAs is writeRewritten for a message whose errors name the
// client's statement client (see relayError).
func (r *relay) writeRewrittenAs(client string) error {
	r.ledger.sendMsgs(r.prepared().scratch, r.seq, fromClient)
	if client != "" {
		r.ledger.nameLast(client)
	}
	_, err := r.uw.Write(r.prepared().scratch)
	return err
}

// deallocateAll follows a DEALLOCATE ALL or DISCARD ALL the client sent:
// its statements are gone, and so is everything prepared on the connection.
func (r *relay) deallocateAll() {
	// The client's names go when the unit ends without an error: a
	// DEALLOCATE ALL in a failed block or behind a failed statement does
	// not run. What the connection has is forgotten now (forgetting too
	// much is safe: statements are closed before they are prepared again).
	st := r.prepared()
	st.mu.Lock()
	st.deallocSeq = r.seq
	st.mu.Unlock()
	r.sc.mu.Lock()
	clear(r.sc.prepared)
	r.sc.unnamed = nil
	r.sc.mu.Unlock()
}

// queryRan follows a Query the server ran on sc (its ReadyForQuery): it
// dropped the unnamed statement sc held, the client's or anyone's.
// Replies come in order, so the client's Parse and Close messages still
// unanswered went after the Query: the first of them of the unnamed
// statement, if any, made what the client and sc have now, and would bring
// back, if the server skipped it, nothing (not what it replaced: the Query
// dropped that).
func (r *relay) queryRan(sc *serverConn) {
	st := r.prepared()
	st.mu.Lock()
	after := false
	for i := st.head; i < len(st.replies) && !after; i++ {
		if e := &st.replies[i]; e.kind == effectClientUnnamed || e.kind == effectClientUnnamedClose {
			e.prev, e.prevOwner, e.prevOwnerN = nil, nil, 0
			after = true
		}
	}
	if !after {
		st.unnamed = nil
	}
	st.mu.Unlock()
	if !after {
		sc.mu.Lock()
		sc.unnamed, sc.unnamedN = nil, 0
		sc.mu.Unlock()
	}
}

// deallocateOne relays a client's DEALLOCATE name (msg, a lone statement
// in a Query or Parse) under the statement's upstream name; a Parse's is
// deallocateParse's. Where the held
// connection lacks it, a stand-in (SELECT, which parses under any
// search_path) is prepared under that name first, in a round trip of
// pgtenant's own: the server then answers as it would the client's own
// session (the command tag, or the error of a failed transaction block).
// Inside a group, whose Sync that round trip would preempt, the stand-in
// goes ahead of the DEALLOCATE without a Sync. It returns the message to
// relay instead.
//
// The client's name goes now: a DEALLOCATE the server then refuses (in a
// failed block) leaves the statement gone for the client too, where
// PostgreSQL would keep it.
func (r *relay) deallocateOne(msg []byte) ([]byte, error) {
	if msg[0] == 'P' {
		return r.deallocateParse(msg)
	}
	st, name := r.prepared(), r.dealloc
	st.mu.Lock()
	cs := st.byName[name]
	if cs != nil {
		st.remove(name)
	}
	st.mu.Unlock()
	server, ok := deallocServer(name, cs)
	if !ok {
		return msg, nil // not prepared: the server says so in the client's words
	}
	own := !r.inGroup && !r.ledger.skipsNext()
	if cs != nil && (own || r.inGroup) && !r.sc.touch(server) {
		if own {
			if err := r.beginUnit(); err != nil {
				return nil, err
			}
		}
		// Its replies are hidden; what the connection has prepared under
		// the name is settled below, whatever they say.
		buf := appendClose(nil, 'S', server)
		st.record(replyEntry{seq: r.seq, action: replyHide})
		buf = mustEncode(buf, &pgproto3.Parse{Name: server, Query: "SELECT"})
		st.record(replyEntry{seq: r.seq, action: replyHide})
		o := fromPrepareInline
		if own {
			buf, o = append(buf, syncMessage...), fromPrepare
		}
		if err := r.sendMsgs(buf, o); err != nil {
			return nil, err
		}
	}
	r.sc.mu.Lock()
	delete(r.sc.prepared, server)
	r.sc.mu.Unlock()
	return encodeQuery(`DEALLOCATE "` + server + `"`), nil
}

// unknownServerStmt stands in for a name in pgtenant's own prefix that the
// client has not prepared: never one of pgtenant's own statements, so the
// server says it does not exist.
const unknownServerStmt = serverStmtPrefix + "unknown"

// deallocServer is the upstream name a DEALLOCATE of the client's name
// (its statement cs, nil if it has none) goes to; false: none, the client's
// name is sent as it is.
func deallocServer(name string, cs *clientStmt) (string, bool) {
	switch {
	case cs != nil:
		return cs.server, true
	case strings.HasPrefix(name, serverStmtPrefix):
		return unknownServerStmt, true
	}
	return "", false
}

// deallocTarget is what a Parse of DEALLOCATE name deallocates: the client's
// statement name, and the upstream name its text was given.
type deallocTarget struct {
	client, server string
}

// deallocateParse relays a Parse of DEALLOCATE name (msg) under the
// statement's upstream name. A Parse runs nothing: each Bind of it
// deallocates, on the connection it then holds (deallocateAtBind).
func (r *relay) deallocateParse(msg []byte) ([]byte, error) {
	st, name := r.prepared(), r.dealloc
	st.mu.Lock()
	cs := st.byName[name]
	st.mu.Unlock()
	server, ok := deallocServer(name, cs)
	if !ok {
		return msg, nil // not prepared: the server says so in the client's words
	}
	r.deallocTo = &deallocTarget{client: name, server: server}
	stmtName, _, _ := splitName(msg[5:])
	return mustEncode(nil, &pgproto3.Parse{Name: string(stmtName), Query: `DEALLOCATE "` + server + `"`}), nil
}

// deallocateAtBind readies the held connection for a Bind of a statement
// whose text deallocates t (nil: none): if the client still has that
// statement, it is prepared there (the server answers as the client's own
// session would) and the client's name goes now; otherwise the connection
// must not have it either, so that the server says it does not exist. The
// connection forgets it in both cases: whoever else prepared the same
// statement there prepares it again.
func (r *relay) deallocateAtBind(t *deallocTarget, seq uint64) error {
	if t == nil {
		return nil
	}
	st := r.prepared()
	st.mu.Lock()
	cs := st.byName[t.client]
	mine := cs != nil && cs.server == t.server
	if mine {
		st.remove(t.client)
	}
	st.mu.Unlock()
	var buf []byte
	switch {
	case mine && !r.sc.touch(t.server):
		// A stand-in, as in deallocateOne.
		buf = appendClose(nil, 'S', t.server)
		st.record(replyEntry{seq: seq, action: replyHide})
		buf = mustEncode(buf, &pgproto3.Parse{Name: t.server, Query: "SELECT"})
		st.record(replyEntry{seq: seq, action: replyHide})
	case !mine && t.server != unknownServerStmt:
		buf = appendClose(nil, 'S', t.server)
		st.record(replyEntry{seq: seq, action: replyHide})
	}
	if buf != nil {
		if err := r.sendMsgs(buf, fromPrepareInline); err != nil {
			return err
		}
	}
	r.sc.mu.Lock()
	delete(r.sc.prepared, t.server)
	r.sc.mu.Unlock()
	return nil
}

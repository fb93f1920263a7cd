package proxy

import (
	"bytes"
	"context"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/auth"
)

// leaseBinding is transaction mode: a connection of the pool is leased
// when a unit starts with none held and given back at the idle
// ReadyForQuery that ends the transaction (pooled.go). The client's
// prepared statements, settings and channels are carried from one
// connection to the next under names of pgtenant's (statements.go,
// carried.go, listening.go).
type leaseBinding struct{ r *relay }

// awaitClient: an idle client holds no read buffer, and may leave its
// goroutine for the parker (errParked).
func (b leaseBinding) awaitClient() error {
	r := b.r
	if r.cr.Buffered() != 0 {
		return nil
	}
	if r.poolWait != nil {
		if !r.poolWaitFresh {
			r.endPoolWait() // what came needed no connection
		} else if !r.onLoop() || !r.awaitReady() {
			// Woken with its connection granted and ready (or its wait
			// over): on to the message that waited.
			r.poolWaitFresh = false
			return nil
		} else {
			// The grant is being made ready: back to the loop.
			readerPool.Put(r.cr)
			r.cr = nil
			r.prefix.release()
			return errParked
		}
	}
	if r.evLoop() != nil && !r.noPark.Load() && !r.pinned.Load() {
		// Driven by an event loop (a pinned client's idle timeout is a read
		// deadline: it waits on its goroutine).
		// On the loop, and the loop found the socket readable: read it. A
		// goroutine the loop was handed to goes back to it rather than
		// wait for the client (it would hold a thread).
		ready := r.loopReady && r.onLoop()
		r.loopReady = false
		if ready {
			if !r.queueForConnection() {
				return nil
			}
			// Back to the loop until a connection is granted.
		}
		readerPool.Put(r.cr)
		r.cr = nil
		r.prefix.release()
		return errParked
	}
	if err := r.parkReader(!r.inGroup); err != nil {
		if err == errParked {
			return err
		}
		return r.idleError(err)
	}
	return nil
}

// take leases a connection for a unit's first message, or takes the held
// one's writer again. A Terminate never reaches a pooled connection: it is
// not the client's to end.
func (b leaseBinding) take(typ byte, size int, startsUnit bool) (bool, error) {
	r := b.r
	if typ == 'X' {
		if r.inGroup {
			return false, r.terminateInGroup(size)
		}
		// What the client sent before is answered, as PostgreSQL answers it
		// before it reads the Terminate (unless the client has gone).
		if r.ledger.pending.Load() > 0 {
			_ = r.await(untilAnswered)
		}
		return false, errClientTerminated
	}
	held, err := r.leaseFor(typ, startsUnit)
	if err != nil {
		return false, err
	}
	if held && r.changes {
		// The connection's committed settings may not stay this client's.
		r.noteSettingsChange()
	}
	if held && r.carryTouched() {
		r.holdForReadback()
	}
	return held, nil
}

// terminateInGroup ends a transaction-mode session whose client sent
// Terminate in an extended-protocol group with no Sync yet. Of that group
// PostgreSQL sends what it has flushed before it reads the Terminate: an
// error or notice at once (with everything before it), other replies only
// after a Flush; the rest is lost as the backend exits. Only the upstream
// knows which that is, so the Terminate goes to it: the connection, in the
// middle of a group, was not going back to the pool anyway. The reply side
// relays what comes until the upstream closes, unless the client hangs up
// first.
func (r *relay) terminateInGroup(size int) error {
	r.leaseMu.Lock()
	sc := r.sc
	if sc != nil && !r.writing {
		r.takeWriterLocked()
	}
	r.leaseMu.Unlock()
	if sc == nil {
		return errClientTerminated
	}
	// The upstream closes behind it: that is no news to tell the client.
	r.closing.Store(true)
	if err := r.passUp(0, size); err != nil {
		return err
	}
	if err := r.uw.Flush(); err != nil {
		return err
	}
	r.awaitReplyEnd()
	return errClientTerminated
}

// begin: the held connection's reader now hands its replies to this relay.
func (b leaseBinding) begin() {
	r := b.r
	r.leaseMu.Lock()
	r.seq = r.ledger.begin()
	r.attachLocked()
	r.leaseMu.Unlock()
}

// flush ends the write section, which may give the connection back.
func (b leaseBinding) flush() error {
	r := b.r
	if !r.writing {
		return nil
	}
	defer r.endWrite()
	if err := r.uw.Flush(); err != nil {
		return err
	}
	r.armUpstreamTimeout(r.wconn)
	return nil
}

// settledAssertion: a connection whose committed settings are this
// client's needs only the tenant context asserted.
func (b leaseBinding) settledAssertion() []byte {
	r := b.r
	if r.sc.settled == r.pctx.key {
		return r.pctx.settled.inline
	}
	return nil
}

// rewrite renames the client's statements to the upstream names of the
// held connection and scopes its channels.
func (b leaseBinding) rewrite(msg []byte) ([]byte, error) {
	r := b.r
	var err error
	if r.dealloc != "" {
		if msg, err = r.deallocateOne(msg); err != nil {
			return nil, err
		}
	}
	if len(r.channels) > 0 || r.prepare != nil || len(r.executes) > 0 {
		return r.rewriteStatement(msg, true)
	}
	return msg, nil
}

// deallocatedAll: a Parse of DEALLOCATE ALL runs nothing: its Bind does
// (relayBind), perhaps on another connection.
func (b leaseBinding) deallocatedAll() { b.r.deallocateAll() }

func (b leaseBinding) statement(typ byte, size int, msg, substitute []byte) (bool, error) {
	r := b.r
	switch {
	case substitute == nil && (typ == 'P' || typ == 'B' || typ == 'D' || typ == 'C'):
		return true, r.relayStatementMessage(typ, size, msg)
	case typ == 'P' && len(msg) > 5 && msg[5] == 0:
		// A refused Parse of the unnamed statement: PostgreSQL drops the
		// unnamed statement before parsing, so the client's is gone when
		// its substitute fails, as after any failing Parse (and kept if the
		// server skips it). Tracked as that Parse.
		return true, r.relayStatementMessage(typ, len(substitute), substitute)
	case typ == 'P':
		r.prepared().record(replyEntry{seq: r.seq}) // the refusal's failing Parse
	}
	return false, nil
}

// hidesStatus: a setting the assertion re-applied, the client knows
// already. Behind RESET ALL it does not: the server has just told it the
// pooled connection's own values.
func (b leaseBinding) hidesStatus() bool {
	o := b.r.ledger.answering()
	return o.own() && o != fromReassert
}

// notification: left on a pooled connection; the hub is how notifications
// reach a transaction-mode client (listening.go).
func (b leaseBinding) notification([]byte) error { return nil }

func (b leaseBinding) statementReply(msg []byte, res replyResult) (bool, error) {
	r := b.r
	if msg[0] == 'E' {
		r.stmts.dropUnit(res.unit, r.rsc, res.msgType == 'P' || res.msgType == 'C')
		return false, nil
	}
	switch r.stmts.reply() {
	case replyHide:
		return true, nil
	}
	return false, nil
}

func (b leaseBinding) renamedError(msg []byte) bool {
	return bytes.Contains(msg, serverStmtPrefixBytes)
}

func (b leaseBinding) clientError(msg []byte, client string) pgproto3.BackendMessage {
	if !bytes.Contains(msg, serverStmtPrefixBytes) {
		return nil
	}
	var er pgproto3.ErrorResponse
	if er.Decode(msg[5:]) != nil {
		return nil
	}
	st := b.r.prepared()
	er.Message, er.Detail = st.clientNames(er.Message, client), st.clientNames(er.Detail, client)
	return &er
}

func (b leaseBinding) ownFailed(res replyResult, aborted bool) {
	r := b.r
	r.stmts.dropUnit(res.unit, r.rsc, false)
	if !aborted {
		// A connection that refused the context is not handed out again.
		r.rsc.dead.Store(true)
	}
}

// endUnit: the client gets everything before the lease can end, the
// ReadyForQuery included: the next lease's reader may write to it.
func (b leaseBinding) endUnit(z []byte, res replyResult) (int32, bool, error) {
	r := b.r
	status := z[5]
	r.stmts.dropUnit(res.unit, r.rsc, false)
	r.stmts.unitEnded(res.unit, res.failed)
	if res.msgType == 'Q' {
		r.queryRan(r.rsc)
		r.ledger.queryAnswered()
	}
	if !res.origin.own() {
		if _, err := r.cw.Write(z); err != nil {
			return 0, false, err
		}
		if err := r.cw.Flush(); err != nil {
			return 0, false, err
		}
	}
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if res.origin == fromReadback {
		r.readbackAnswered(status)
	}
	left := r.unitDone(status)
	if left == 0 && status == 'I' && r.pin == "" && !r.holdLease {
		// From here on another connection's reader may serve this relay:
		// nothing after this touches the reply side's state.
		r.detachLocked()
	} else if left == 0 && status == 'I' && r.notes != nil {
		r.notes.poke() // kept (pinned): between transactions all the same
	}
	return left, false, nil
}

func (b leaseBinding) skipped(buf []uint64, sc *serverConn) {
	for _, u := range buf {
		b.r.stmts.dropUnit(u, sc, false)
		b.r.stmts.unitEnded(u, true)
	}
}

// run: the request side runs here, the reply side in the reader of
// whichever pooled connection the session holds.
func (b leaseBinding) run(ss *session) {
	ss.endPooled(ss.catchPanic("client", b.r.clientToUpstream))
}

func (b leaseBinding) drain(*session) { b.r.endPooledIdle() }

func (b leaseBinding) terminate(*session) {
	r := b.r
	if r.endPooledIdle() {
		return
	}
	r.leaseMu.Lock()
	if r.attached {
		r.broken = true
		r.sc.conn.Close()
	}
	r.leaseMu.Unlock()
}

func (b leaseBinding) close(*session) {
	r := b.r
	r.stopListening()
	r.endLease()
	r.pool.dropContext(r.pctx.key)
	r.leaseMu.Lock()
	if c := r.carry; c != nil && c.next != nil {
		next := c.next
		c.next = nil
		r.pool.dropContext(next.key)
	}
	r.unpinLocked()
	r.leaseMu.Unlock()
}

func (b leaseBinding) cut() {
	r := b.r
	if !r.leaseMu.TryLock() {
		// The panic left the lock held: the lease cannot be read safely;
		// closing the client still ends the session.
		r.client.Close()
		return
	}
	defer r.leaseMu.Unlock()
	if r.sc != nil {
		r.broken = true
		r.sc.dead.Store(true)
		r.sc.conn.Close()
	}
}

func (b leaseBinding) viaHub() bool { return true }

// samePlace: the same pool, schema and role.
func (b leaseBinding) samePlace(pl, o placement) bool {
	return sameSchemaRole(pl, o) && b.keeps(pl.up, o.up)
}

// keeps: the same pool.
func (b leaseBinding) keeps(old, cur *upstream) bool { return cur.pool == old.pool }

// strand: nothing now; its next transaction moves it.
func (b leaseBinding) strand(*session, *pgconn.PgError) {}

// leftRetired: between transactions it moves at its next one, unless its
// pinned connection or its notifications are on the old pool: then it ends.
func (b leaseBinding) leftRetired(ss *session, e *pgconn.PgError) bool {
	r := b.r
	if !r.quietForPause() {
		return false
	}
	if r.pinned.Load() || r.listened.Load() {
		ss.endStranded(e)
	}
	return true
}

// endStranded: a held connection is closed (the reply side reads the close
// and reports endReason); between transactions the session ends with e.
func (b leaseBinding) endStranded(_ *session, e *pgconn.PgError) {
	r := b.r
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.attached {
		r.broken = true
		r.sc.conn.Close()
		return
	}
	r.failResponse(e)
}

// resumedElsewhere: nothing now; its next transaction moves it (moveTo).
func (b leaseBinding) resumedElsewhere(*session) {}

// moveTo takes the session's next transactions to pl's pool.
func (b leaseBinding) moveTo(_ *session, rt *runtime, ident auth.Identity, pl placement) error {
	if pl.up.pool == nil {
		return errCannotMove // its user is in session mode now
	}
	if err := rt.checkLoginRole(context.Background(), pl); err != nil {
		return err
	}
	return b.r.movePooled(rt, ident, pl)
}

// endTransaction: only while a lease is attached; the connection never
// goes back to the pool.
func (b leaseBinding) endTransaction(cancelTarget) {
	r := b.r
	r.leaseMu.Lock()
	if !r.attached {
		r.leaseMu.Unlock()
		return // between transactions after all
	}
	r.broken = true
	target := r.sc.cancelTarget()
	r.sc.conn.Close()
	r.leaseMu.Unlock()
	cancelAbandoned(target)
}

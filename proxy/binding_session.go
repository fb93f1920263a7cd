package proxy

import (
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/auth"
)

// sessionBinding is session mode: one upstream connection for the whole
// session, opened with it and closed with it. The request side writes it
// through r.uw and the reply side (upstreamToClient, a goroutine of the
// session) reads it through r.ur; statement names, settings and
// notifications are the client's own there, so most of what a lease
// binding does has nothing to do here.
type sessionBinding struct{ r *relay }

func (b sessionBinding) awaitClient() error { return nil }

// take: the connection is the session's. A Terminate goes to it
// (stepTerminate): PostgreSQL answers what came before and closes.
func (b sessionBinding) take(byte, int, bool) (bool, error) { return true, nil }

func (b sessionBinding) begin() { b.r.seq = b.r.ledger.begin() }

func (b sessionBinding) flush() error {
	r := b.r
	if err := r.uw.Flush(); err != nil {
		return err
	}
	r.armUpstreamTimeout(r.wconn)
	return nil
}

func (b sessionBinding) settledAssertion() []byte { return nil }

// rewrite scopes channel names only: the client's statements keep their
// names on its own connection.
func (b sessionBinding) rewrite(msg []byte) ([]byte, error) {
	if len(b.r.channels) == 0 {
		return msg, nil
	}
	return b.r.rewriteStatement(msg, false)
}

func (b sessionBinding) deallocatedAll() {}

func (b sessionBinding) statement(byte, int, []byte, []byte) (bool, error) { return false, nil }

// hidesStatus: pgtenant's own statements re-apply nothing the client set
// on its own connection.
func (b sessionBinding) hidesStatus() bool { return false }

// notification relays what the connection's LISTENs receive, under the
// client's channel names.
func (b sessionBinding) notification(msg []byte) error {
	r := b.r
	if r.notifyScope != "" {
		return r.relayNotification(msg)
	}
	_, err := r.cw.Write(msg)
	return err
}

func (b sessionBinding) statementReply([]byte, replyResult) (bool, error) { return false, nil }

func (b sessionBinding) renamedError([]byte) bool { return false }

func (b sessionBinding) clientError([]byte, string) pgproto3.BackendMessage { return nil }

func (b sessionBinding) ownFailed(replyResult, bool) {}

// endUnit: the ReadyForQuery is written last, after the request side is
// woken (a client reading it finds the relay ready for what it sends next).
func (b sessionBinding) endUnit(z []byte, res replyResult) (int32, bool, error) {
	r := b.r
	if res.msgType == 'Q' {
		r.ledger.queryAnswered()
	}
	return r.unitDone(z[5]), !res.origin.own(), nil
}

func (b sessionBinding) skipped([]uint64, *serverConn) {}

// run: a goroutine of the session is the reply side. Whichever side ends
// first reports to the client, once.
func (b sessionBinding) run(ss *session) {
	r := b.r
	respErr := make(chan error, 1)
	go func() {
		err := ss.catchPanic("upstream", r.upstreamToClient)
		if !r.closing.Swap(true) {
			r.reportEnd(err)
			_ = r.cw.Flush()
			// Unblock the request side, which is reading from the client.
			ss.client.Close()
		}
		ss.upstream.Close()
		respErr <- err
	}()

	reqErr := ss.catchPanic("client", r.clientToUpstream)
	first := !r.closing.Swap(true)
	if errors.Is(reqErr, errClientTerminated) {
		// The Terminate went upstream: PostgreSQL answers what came before
		// it, then closes, and the reply side relays all that.
		err := <-respErr
		ss.upstream.Close()
		ss.finish(reqErr, err, first)
		ss.ended()
		return
	}
	if !r.ledger.quiet() {
		// Gone without a Terminate: what it still runs is nobody's.
		if t, ok := ss.s.cancels.targetOf(ss.key); ok {
			cancelAbandoned(t)
		}
	}
	ss.upstream.Close()
	if first {
		// The reply side may be blocked writing to a client that no longer
		// reads; what it still has to say does not matter now.
		_ = ss.client.SetWriteDeadline(time.Now().Add(time.Second))
	}
	ss.finish(reqErr, <-respErr, first)
	ss.ended()
}

// drain: closing the connection of an idle session ends it; a busy one
// ends at its next idle ReadyForQuery (readyForQuery).
func (b sessionBinding) drain(ss *session) {
	r := b.r
	if r.ledger.pending.Load() == 0 && byte(r.txStatus.Load()) == 'I' {
		ss.upstream.Close()
	}
}

func (b sessionBinding) terminate(ss *session) { ss.upstream.Close() }

func (b sessionBinding) close(ss *session) {
	ss.upstream.Close()
	ss.s.untrack(ss.upstream)
}

func (b sessionBinding) cut() {
	if b.r.rconn != nil {
		b.r.rconn.Close()
	}
}

func (b sessionBinding) viaHub() bool { return false }

// samePlace: the same upstream URL, schema and role.
func (b sessionBinding) samePlace(pl, o placement) bool {
	return sameSchemaRole(pl, o) && b.keeps(pl.up, o.up)
}

// keeps: the same URL (a pool's settings are no session-mode business).
func (b sessionBinding) keeps(old, cur *upstream) bool { return cur.url == old.url }

// strand: its connection is on the old placement; it ends at its next
// idle point (now if idle) with e.
func (b sessionBinding) strand(ss *session, e *pgconn.PgError) {
	r := b.r
	r.endReason.Store(e)
	r.draining.Store(true)
	if r.quietForPause() {
		ss.upstream.Close()
	}
}

// leftRetired: it ends at its next idle point (strand).
func (b sessionBinding) leftRetired(*session, *pgconn.PgError) bool { return false }

// endStranded: its upstream connection closes.
func (b sessionBinding) endStranded(ss *session, _ *pgconn.PgError) { ss.upstream.Close() }

// resumedElsewhere: the session's connection is on the old placement; it
// ends, now if it is idle.
func (b sessionBinding) resumedElsewhere(ss *session) { ss.endMoved() }

func (b sessionBinding) moveTo(*session, *runtime, auth.Identity, placement) error {
	return errCannotMove // its upstream connection is on the old placement
}

func (b sessionBinding) endTransaction(session cancelTarget) {
	b.r.rconn.Close()
	cancelAbandoned(session)
}

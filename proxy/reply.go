package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/lexsafe"
)

// The reply side: each message from the upstream is placed against the
// ledger (what was sent, in order), then hidden (the answer to pgtenant's
// own messages), rewritten (a guard refusal, a Parse served from a
// connection's cache) or relayed as bytes.
//
// It is split in two. The core (reply and what it calls) takes one message
// as bytes, decides, and writes what the client gets to the client writer;
// it never reads a socket. A driver reads the upstream and hands the core
// its messages: upstreamToClient in session mode, the pooled connection's
// reader in transaction mode (pool.go). A message comes whole, except a
// DataRow, CopyData or FunctionCallResponse larger than the read buffer
// that the core relays or drops on its header (replyWhole): the driver then
// moves the rest as the core said (resp.rest), streaming it.

// upstreamToClient is the reply side's driver in session mode.
func (r *relay) upstreamToClient() (err error) {
	defer close(r.done)
	for {
		if r.ur.Buffered() < 5 {
			if err := r.cw.Flush(); err != nil {
				return err
			}
		}
		typ, size, err := readHeader(r.ur)
		if err != nil {
			return r.upstreamReadError(err)
		}
		if err := r.flushIfShort(r.ur, typ, size); err != nil {
			return err
		}
		msg, err := r.nextReply(r.ur, typ, size)
		if err != nil {
			return r.upstreamReadError(err)
		}
		if err := r.replyFrom(r.ur, msg, size); err != nil {
			return err
		}
	}
}

// flushIfShort sends the client what it has so far when the message of
// type typ and size bytes whose header is at the head of rd is not all
// there yet: the wait for its rest may be long.
func (r *relay) flushIfShort(rd *bufio.Reader, typ byte, size int) error {
	if rd.Buffered() < size && (size <= rd.Size() || r.replyWhole(typ)) {
		return r.cw.Flush()
	}
	return nil
}

// nextReply reads the upstream message of type typ and size bytes whose
// header is at the head of rd for the core: whole, or its buffered head
// when the core needs no more (replyWhole). A message larger than rd's
// buffer that the core needs whole is copied out.
func (r *relay) nextReply(rd *bufio.Reader, typ byte, size int) ([]byte, error) {
	if size <= rd.Size() {
		return rd.Peek(size)
	}
	if !r.replyWhole(typ) {
		return rd.Peek(rd.Buffered())
	}
	msg := make([]byte, size) // rare: a huge error, notice or row description
	_, err := io.ReadFull(rd, msg)
	return msg, err
}

// replyFrom hands msg (read by nextReply from rd) to the core, then takes
// it out of rd and moves the part the core did not see as it said.
func (r *relay) replyFrom(rd *bufio.Reader, msg []byte, size int) error {
	r.armUpstreamTimeout(r.rconn)
	err := r.reply(msg, size)
	if len(msg) == size {
		// Whole: nothing of it is left to move. The core may have ended
		// the lease (a ReadyForQuery): the relay is then no longer this
		// reader's to touch.
		if size <= rd.Size() {
			_, _ = rd.Discard(size) // peeked: it is buffered
		}
		return err
	}
	// A head: a row, copy data or a function's result, which ends no unit,
	// so the relay is still this reader's.
	_, _ = rd.Discard(len(msg))
	rest, pass := r.resp.rest, r.resp.restPass
	r.resp.rest = 0
	switch {
	case err != nil || rest == 0:
		return err
	case pass:
		return forward(r.cw, rd, rest)
	}
	_, err = rd.Discard(rest)
	return err
}

// replyWhole reports whether the core needs a message of type typ whole
// even when it is larger than the read buffer: all but the rows, copy data
// and function results it relays (or, answering pgtenant's own, drops)
// unread, except the rows of a settings readback (carried.go).
func (r *relay) replyWhole(typ byte) bool {
	switch typ {
	case 'd', 'V':
		return false
	case 'D':
		return r.ledger.answering() == fromReadback
	}
	return true
}

// upstreamReadError names why reading from the upstream failed.
func (r *relay) upstreamReadError(err error) error {
	if e := r.endReason.Load(); e != nil {
		return e // pgtenant closed it (max_transaction_duration)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		// A reset too: a backend that exits with input unread resets.
		return errUpstreamLost
	}
	var ne net.Error
	if r.upstreamTimeout > 0 && errors.As(err, &ne) && ne.Timeout() {
		return fatalf(codeConnectionFailure, "pgtenant: no reply from the upstream server within upstream_timeout (%s)", r.upstreamTimeout)
	}
	return err
}

// respState is the reply side's own.
type respState struct {
	standaloneErr *pgconn.PgError // failure of the standalone assertion being answered
	silent        []uint64        // scratch for ledger.takeSilent
	z             [6]byte         // the ReadyForQuery being handled
	// rest is what the driver still moves of the message the core had only
	// the head of: to the client if restPass, else nowhere.
	rest     int
	restPass bool
}

// pass relays msg, the whole message of size bytes or its head.
func (r *relay) pass(msg []byte, size int) error {
	if len(msg) < size {
		r.resp.rest, r.resp.restPass = size-len(msg), true
	}
	_, err := r.cw.Write(msg)
	return err
}

// drop hides msg, the whole message of size bytes or its head.
func (r *relay) drop(msg []byte, size int) error {
	if len(msg) < size {
		r.resp.rest, r.resp.restPass = size-len(msg), false
	}
	return nil
}

// reply is the core of the reply side: it handles one upstream message,
// msg, of size bytes (whole, or its head: see nextReply).
func (r *relay) reply(msg []byte, size int) error {
	typ := msg[0]
	if k := r.testingKnobs(); k != nil && k.OnReply != nil {
		k.OnReply(typ)
	}
	r.stats.toClient += int64(size)
	switch typ {
	case 'A', 'N', 'S':
		// NotificationResponse, NoticeResponse, ParameterStatus may come at any time.
		if typ == 'S' && r.up.hidesStatus() {
			return nil
		}
		if typ == 'N' && r.ledger.answering().own() {
			// pgtenant's own statements' notices are not the client's: the
			// warning of a SET LOCAL in an implicit transaction
			// (context_scope: transaction) above all.
			return nil
		}
		if typ == 'S' && r.guard != nil {
			r.watchParameter(msg)
		}
		if typ == 'A' {
			return r.up.notification(msg)
		}
		return r.pass(msg, size)
	}
	if r.ledger.silentN.Load() > 0 {
		r.resp.silent = r.settleSilent(r.rsc, r.resp.silent[:0])
	}
	code := ""
	if typ == 'E' {
		if r.noteFatal(msg) {
			// The server ends the connection: whatever it answers, this is
			// the last word, the client's to read as it is.
			r.obs.Error(r.tenant)
			return r.pass(msg, size)
		}
		if r.ledger.inCopyIn() {
			code = errorCode(msg)
		}
	}
	res := r.ledger.reply(typ, code)
	r.wake()
	if r.audit != nil && (res.audit != 0 || res.endsUnit || typ == 'E') && !res.origin.own() {
		r.auditReply(msg, res)
	}
	switch {
	case res.async:
		// Nothing outstanding: an asynchronous error. Pass it on.
		return r.pass(msg, size)
	case res.lost:
		// Relay the error, then end the session: what the upstream still
		// owes is not known.
		if err := r.pass(msg, size); err != nil {
			return err
		}
		return fatalf(codeProtocolViolation, "pgtenant: lost track of the upstream's replies: the COPY failed on its data after Sync messages were sent among that data")
	case res.outOfStep:
		// The replies and the requests no longer match: in transaction mode
		// the connection would carry that to the next client, so stop here.
		return fatalf(codeProtocolViolation, "pgtenant: unexpected reply %q from the upstream", typ)
	case res.origin.own():
		return r.ownReply(msg, size, res)
	}
	if typ == '1' || typ == '3' || typ == 'E' {
		if done, err := r.up.statementReply(msg, res); done {
			return err
		}
	}
	if typ == 'E' && (r.refusals.outstanding.Load() > 0 || r.up.renamedError(msg)) {
		return r.relayError(msg, res.name)
	}
	if typ == 'Z' {
		return r.readyForQuery(msg, res)
	}
	if typ == 'E' {
		r.obs.Error(r.tenant)
	}
	return r.pass(msg, size)
}

// ownReply handles a reply to pgtenant's own messages: hidden, unless the
// assertion failed.
func (r *relay) ownReply(msg []byte, size int, res replyResult) error {
	typ := msg[0]
	switch {
	case typ == 'Z':
		return r.readyForQuery(msg, res)
	case typ == 'D' && res.origin == fromReadback:
		r.readbackRow(msg)
	case typ == 'E' && res.origin == fromReadback:
		// In a failed block: a later unit reads back again.
		r.carry.failed = true
	case (typ == '1' || typ == '3') && (res.origin == fromPrepare || res.origin == fromPrepareInline):
		r.stmts.reply() // its effect on what the connection has prepared
	case typ == 'E':
		return r.ownError(msg, res)
	}
	return r.drop(msg, size)
}

// ownError handles an error, msg, answering pgtenant's own messages.
func (r *relay) ownError(msg []byte, res replyResult) error {
	upstreamErr := decodeError(msg)
	// In a failed transaction block the assertion fails as the client's own
	// first statement would: PostgreSQL's error is the client's.
	// Behind a RESET ALL in a failed block (or a DISCARD ALL that failed
	// the block) the re-assertion fails as the client's statement did:
	// neither ran, and the context stands.
	aborted := upstreamErr.Code == codeInFailedTransaction && (res.origin == fromAssert || res.origin == fromReassert || res.origin == fromStandalone)
	if res.origin == fromPrepare || res.origin == fromPrepareInline {
		// In a round trip of its own, the client's DEALLOCATE behind it
		// fails the same way (a failed block): its error is the client's.
		// Inside the client's group the server now skips that DEALLOCATE:
		// this error, the one it would have had, is the client's.
		r.stmts.dropUnit(res.unit, r.rsc, res.msgType == 'P' || res.msgType == 'C')
		if res.origin == fromPrepare {
			return nil
		}
		r.obs.Error(r.tenant)
		_, err := r.cw.Write(msg)
		return err
	}
	r.up.ownFailed(res, aborted)
	switch {
	case aborted && res.origin == fromReassert:
		return nil // the client has its own statement's error
	case aborted && res.origin == fromStandalone:
		r.resp.standaloneErr = upstreamErr // the client's statement, next, gets its own
		return nil
	case aborted:
		r.obs.Error(r.tenant)
		_, err := r.cw.Write(msg)
		return err
	case res.origin == fromStandalone || res.origin == fromReassert:
		r.resp.standaloneErr = upstreamErr
		return nil
	case res.origin == fromAssertSimple:
		// The server skips the client's Query and would wait for a Sync the
		// client does not send: end the session rather than misreport.
		return assertionFailed(upstreamErr)
	}
	// The server skips the client's group until its Sync and then sends
	// ReadyForQuery: report the failure in its place.
	e := assertionFailed(upstreamErr)
	e.Severity = severityError
	return r.writeClient(errorResponse(e))
}

// relayError passes on an upstream error, msg, as the client would have it
// from PostgreSQL: the guard's error when a statement pgtenant substituted
// caused it, and with the client's statement names for the names pgtenant
// gave them upstream (transaction mode; client, when known, is the name of
// the statement the failed message named).
func (r *relay) relayError(msg []byte, client string) error {
	upstreamErr := decodeError(msg)
	r.obs.Error(r.tenant)
	if refusal := r.refusals.match(upstreamErr); refusal != nil {
		return r.writeClient(errorResponse(refusal))
	}
	if renamed := r.up.clientError(msg, client); renamed != nil {
		return r.writeClient(renamed)
	}
	_, err := r.cw.Write(msg)
	return err
}

// readyForQuery handles the ReadyForQuery, msg, that ends unit res.unit.
func (r *relay) readyForQuery(msg []byte, res replyResult) error {
	if len(msg) != 6 {
		return fatalf(codeProtocolViolation, "pgtenant: invalid ReadyForQuery from upstream")
	}
	// Copied out before the pending count drops: in transaction mode that
	// may give the connection, and its read buffer, to another client.
	z := r.resp.z[:] // in the relay, not on the stack: it would escape to the heap
	copy(z, msg)
	status := z[5]
	own := res.origin.own()
	standaloneErr := r.resp.standaloneErr
	r.resp.standaloneErr = nil
	r.txStatus.Store(uint32(status))
	left, zDue, err := r.up.endUnit(z, res)
	if err != nil {
		return err
	}
	if own {
		if res.origin == fromReadback || res.origin == fromPrepare {
			r.wake()
			return nil
		}
		if res.origin == fromReassert {
			if standaloneErr != nil {
				return assertionFailed(standaloneErr)
			}
			return nil
		}
		r.standaloneErr.Store(standaloneErr)
		r.standaloneDone.Store(true)
		r.wake()
		return nil
	}
	r.wake()
	if r.draining.Load() && left == 0 && status == 'I' {
		// Shutting down and outside a transaction: this is the moment.
		if zDue {
			if _, err := r.cw.Write(z); err != nil {
				return err
			}
		}
		if e := r.endReason.Load(); e != nil {
			return e // why (a tenant moved while paused: pause.go)
		}
		return errDraining
	}
	if zDue {
		_, err := r.cw.Write(z)
		return err
	}
	return nil
}

// unitDone counts the end of a unit with transaction status status and
// returns how many are left: with none, the relay waits for the client.
func (r *relay) unitDone(status byte) int32 {
	left := r.ledger.unitDone()
	r.txIdle(status, int64(left))
	if left == 0 {
		r.armIdleTimeout()
		r.armUpstreamTimeout(r.rconn)
	}
	return left
}

// settleSilent undoes the statement bookkeeping on sc of units the server
// ended without a ReadyForQuery (see ledger.silent); buf is scratch.
func (r *relay) settleSilent(sc *serverConn, buf []uint64) []uint64 {
	buf = r.ledger.takeSilent(buf)
	r.up.skipped(buf, sc)
	return buf
}

// errorCode returns the SQLSTATE of an ErrorResponse, msg, or "".
func errorCode(msg []byte) string {
	code, _ := errorField(msg, 'C')
	return string(code)
}

// errorField returns the value of field in an ErrorResponse or
// NoticeResponse (type byte and length included).
func errorField(msg []byte, field byte) ([]byte, bool) {
	if len(msg) < 5 {
		return nil, false
	}
	// Fields: a type byte and a NUL-terminated value each.
	for body := msg[5:]; len(body) > 1; {
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			return nil, false
		}
		if body[0] == field {
			return body[1 : 1+end], true
		}
		body = body[2+end:]
	}
	return nil, false
}

// watchParameter notes a ParameterStatus that would make the upstream read
// SQL differently from the guard (standard_conforming_strings off, an
// encoding that is not ASCII-safe): however it came about, no statement is
// relayed after that.
func (r *relay) watchParameter(msg []byte) {
	body := msg[5:]
	nul := bytes.IndexByte(body, 0)
	if nul < 0 {
		return
	}
	name, rest := body[:nul], body[nul+1:]
	if end := bytes.IndexByte(rest, 0); end >= 0 {
		rest = rest[:end]
	}
	if !lexsafe.Safe(string(name), string(rest)) {
		r.unsafeLexing.Store(string(name) + " is " + string(rest))
	}
	if string(name) == "client_encoding" {
		r.clientEncoding.Store(encodingValue(string(rest)))
	}
}

// noteFatal records and reports whether the ErrorResponse msg is FATAL or
// PANIC: the upstream closes after it, and the client must not get a
// second error for that.
func (r *relay) noteFatal(msg []byte) bool {
	// V is the unlocalized severity (PostgreSQL 9.6+), S the localized one.
	sev, ok := errorField(msg, 'V')
	if !ok {
		sev, _ = errorField(msg, 'S')
	}
	fatal := string(sev) == severityFatal || string(sev) == "PANIC"
	if fatal {
		r.sawFatal = true
	}
	return fatal
}

func (r *relay) writeClient(msg pgproto3.BackendMessage) error {
	buf, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = r.cw.Write(buf)
	return err
}

// decodeError decodes an ErrorResponse message (type byte included).
func decodeError(msg []byte) *pgconn.PgError {
	var er pgproto3.ErrorResponse
	if err := er.Decode(msg[5:]); err != nil {
		return &pgconn.PgError{Severity: severityError, Code: codeProtocolViolation, Message: "malformed ErrorResponse from upstream"}
	}
	return pgconn.ErrorResponseToPgError(&er)
}

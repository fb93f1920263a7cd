package proxy

import (
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/auth"
)

// binding is how a relay is bound to its upstream server, in one of two
// ways: sessionBinding (binding_session.go), one direct connection for the
// whole session; leaseBinding (binding_lease.go, pooled.go), a connection of
// the pool leased for each transaction. The relay asks its binding at the
// points where the two differ; it does not branch on the pool mode.
//
// Writing upstream: the request side writes through r.uw only. A session
// binding sets it once; a lease binding sets it when the request side
// takes the held connection for writing (takeWriterLocked) and clears it
// when that write section ends (endWrite), before the connection can go
// back to the pool: with no lease held there is no writer, and a write
// cannot reach a connection another client holds.
type binding interface {
	// Request side.

	// awaitClient is called with the relay's writes flushed, before the
	// request side waits for the client's next message (a lease binding
	// waits with no read buffer, or in the parker).
	awaitClient() error
	// take makes sure the request side may write the message of type typ
	// and size bytes at the head of the client reader upstream (startsUnit:
	// it may begin a unit). It returns false when the
	// message goes nowhere and is dropped, errClientTerminated when a
	// Terminate ends the session here.
	take(typ byte, size int, startsUnit bool) (bool, error)
	// begin counts a new unit in the ledger as the one being sent (r.seq).
	begin()
	// flush sends what the request side has buffered at the end of a batch.
	flush() error
	// settledAssertion is the assertion for a connection that has this
	// client's settings already, or nil: the full one.
	settledAssertion() []byte
	// rewrite relays a Query or Parse the guard found statements in that
	// name channels, prepared statements or DEALLOCATE: what to send instead.
	rewrite(msg []byte) ([]byte, error)
	// deallocatedAll follows a Query that runs DEALLOCATE ALL or DISCARD ALL.
	deallocatedAll()
	// statement relays a Parse, Bind, Describe, Close or Query if the
	// binding has its own way with statement names (done); substitute is
	// what the guard replaced the message with, if it refused it.
	statement(typ byte, size int, msg, substitute []byte) (done bool, err error)

	// Reply side.

	// hidesStatus reports whether the ParameterStatus being answered is
	// hidden from the client.
	hidesStatus() bool
	// notification handles a NotificationResponse, msg.
	notification(msg []byte) error
	// statementReply handles a ParseComplete, CloseComplete or
	// ErrorResponse, msg (the binding's statement bookkeeping); done:
	// nothing else to do.
	statementReply(msg []byte, res replyResult) (done bool, err error)
	// renamedError reports whether the ErrorResponse msg may name
	// statements under names pgtenant gave them.
	renamedError(msg []byte) bool
	// clientError is msg, an ErrorResponse, in the client's statement names
	// (client: the name of the statement the failed message named); nil when
	// msg goes as it is.
	clientError(msg []byte, client string) pgproto3.BackendMessage
	// ownFailed follows an error answering pgtenant's own message;
	// aborted: in a failed transaction block.
	ownFailed(res replyResult, aborted bool)
	// endUnit ends the unit the ReadyForQuery z answers. It returns how many
	// units are left and whether z is still to be written to the client.
	endUnit(z []byte, res replyResult) (left int32, zDue bool, err error)
	// skipped settles the statement bookkeeping on sc of the units in buf,
	// which the server ended without a ReadyForQuery.
	skipped(buf []uint64, sc *serverConn)

	// The session.

	// run relays until the session ends.
	run(ss *session)
	// drain ends the session at its next moment outside a transaction.
	drain(ss *session)
	// terminate ends the session now.
	terminate(ss *session)
	// close lets go of the upstream once the session has ended.
	close(ss *session)
	// cut closes the upstream connection in use after a panic.
	cut()
	// endTransaction ends the transaction in progress by closing its
	// connection, and cancels what it runs (session: the session's cancel
	// target).
	endTransaction(session cancelTarget)
	// viaHub reports whether the client's notifications come through the
	// pool's hub (listening.go) rather than its upstream connection.
	viaHub() bool

	// Placement (pause.go).

	// samePlace reports whether a session placed on pl stays where o
	// would place it.
	samePlace(pl, o placement) bool
	// resumedElsewhere follows a resume that places the session's tenant
	// elsewhere (its hold is movedHold). Caller holds the server's mu.
	resumedElsewhere(ss *session)
	// moveTo puts the session on pl; errCannotMove when it cannot go
	// (its state is on the old placement).
	moveTo(ss *session, rt *runtime, ident auth.Identity, pl placement) error

	// After a reload (retire.go).

	// keeps reports whether a session on old may stay there now that the
	// upstream of its name is cur.
	keeps(old, cur *upstream) bool
	// strand follows the marking of ss as left on a retired placement,
	// with e the reason it ends with if it cannot move. Caller holds the
	// server's mu.
	strand(ss *session, e *pgconn.PgError)
	// leftRetired reports whether a stranded ss needs no more watching
	// (moved, or will move at its next transaction; one that cannot is
	// ended now with e).
	leftRetired(ss *session, e *pgconn.PgError) bool
	// endStranded ends ss now, a transaction in progress included: e is
	// its endReason already.
	endStranded(ss *session, e *pgconn.PgError)
}

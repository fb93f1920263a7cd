package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/guard"
)

const (
	relayBufSize = 8 << 10
	// maxMessageLen bounds a single protocol message. Messages are streamed,
	// so this limits protocol abuse, not memory.
	maxMessageLen = 1 << 30
	// maxUnitsInFlight bounds how far a pipelining client may run ahead of
	// the upstream's replies before the relay stops reading from it.
	maxUnitsInFlight = 32
	// screenPeekLen is how much of a statement's text the relay looks at to
	// choose how to assert ahead of it.
	screenPeekLen = 1024
)

// relay moves messages between a client and its upstream connection and
// asserts the tenant context at every point where the upstream may be
// outside a transaction block.
//
// The request side (relay.go) reads the client, asserts, guards and sends;
// the reply side (reply.go) reads the upstream's replies against the ledger
// (ledger.go), hides pgtenant's own and relays the rest. Where session
// and transaction mode differ, the relay asks its binding (binding.go): in
// session mode each side is a goroutine of the session; in transaction
// mode the reply side runs on the reader of whichever pooled connection
// the client holds (pooled.go).
//
// Ownership: cr, uw, wconn, seq, inGroup and copyParsed are the request
// side's; cw, ur, rconn, rsc and resp the reply side's; the ledger has its own
// lock; the lease fields (pooledState) are under leaseMu.
type relay struct {
	client          net.Conn
	waits           waiter        // the driver's: how the core blocks (waits.go)
	cw              *bufio.Writer // client writer, used only by the reply side
	assertion       *assertion    // shared: the pool context's in transaction mode
	guard           *guard.Guard  // nil when the guard is off for this user
	refusals        refusals
	expires         int64 // UnixNano: no transaction may start after this (token expiry); zero: never
	maxMessage      int   // largest client message accepted
	maxPrepared     int   // limits.max_prepared_bytes (transaction mode: statements.overLimit)
	idleTimeout     time.Duration
	idleInTxTimeout time.Duration
	upstreamTimeout time.Duration // no byte from the upstream for this long while a reply is owed ends the session
	clientOut       io.Writer     // what cw writes to: the client, or a rearmingWriter with upstreamTimeout
	obs             Observer
	user            string // the login user, named when its token expires
	tenant          string
	audit           *auditState // nil when the audit log is off (audit.go)
	// notifyScope prefixes the tenant's notification channels upstream
	// (channels.go); channels are those of the message being relayed.
	notifyScope string
	rate        *rateLimit // the tenant's transaction rate limit; nil: none (limits.go)
	// Pausing (pause.go): hold is the tenant's pause, movedHold, or nil;
	// busy (below, next to waiting: padding), set by the request side from
	// a unit's start until it waits for the client again; sess.move moves
	// it after a resume; stop closes when the server does.
	hold         atomic.Pointer[tenantPause]
	pauseTimeout time.Duration
	sess         *session // its session: what moves it (moveTo) and resumes it from the parker
	stop         <-chan struct{}
	txw          *txWatch                       // the tenant's max_transaction_duration; nil: none
	endReason    atomic.Pointer[pgconn.PgError] // why pgtenant closed the upstream under the session (txWatch)

	ledger ledger // what the upstream owes, in order
	// status byte of the last ReadyForQuery (with the three bools after
	// it, in what would be padding: 8 bytes more would put the relay in a
	// larger size class, see TestIdleClientStructSizes)
	txStatus atomic.Uint32

	inGroup bool // request side: an extended-protocol group has no Sync yet
	// Request side, context_scope: transaction: inBlockDue, assertDue is
	// the assertion inside a block the client began (startUnit);
	// blockAsserted, that one was sent since the last transaction start.
	inBlockDue, blockAsserted bool
	sawFatal                  bool   // the upstream sent a FATAL or PANIC (reply side)
	seq                       uint64 // the unit being sent (request side)
	// Request side: the statements whose text mentions COPY, and the
	// portals bound to them (nil for most sessions): an Execute of one may
	// start a COPY.
	copyStmts, copyPortals map[string]bool
	// endStmts: the statements whose text ends a transaction block;
	// groupPortals: the portals bound since the last Sync.
	endStmts map[string]bool

	// waiting: the request side waits on the reply side (await), which
	// then signals notify at every reply. The relay's own, not
	// relayWork's: the reply side signals after the unit's end, when a
	// client that has gone idle may already be parked.
	waiting  atomic.Bool
	busy     atomic.Bool // see hold
	notify   chan struct{}
	closing  atomic.Bool // the session is ending; suppress "upstream lost"
	panicked atomic.Bool // a bug ended the session (recover.go): the client is told so
	draining atomic.Bool // the server is shutting down: end at the next idle point
	// listened (transaction mode): listen.hub is set, the client's
	// channels are on this pool's hub. Here rather than in pooledState,
	// where it would cost the relay a size class (TestIdleClientStructSizes).
	listened     atomic.Bool
	unsafeLexing atomic.Value
	done         chan struct{} // closed when the reply side returns

	stats relayStats

	// Transaction mode (pool != nil): the upstream is leased per transaction
	// (pooled.go); wconn, rconn and rsc are in relayWork.
	pooledState
	leaseMu sync.Mutex

	// up is how the relay is bound to the upstream (binding.go): set when
	// the relay is made, for good.
	up binding

	// What only a working client needs (relaywork.go): nil while the
	// client is parked.
	*relayWork
}

type relayStats struct {
	assertions atomic.Int64
	refusals   atomic.Int64
	fromClient int64 // written by the request side only; read after it ends
	toClient   int64 // written by the reply side only; read after it ends
	statements int64 // request side: not yet reported to the observer
}

var errClientTerminated = errors.New("client sent Terminate")

func newRelay(client net.Conn, cr *bufio.Reader, cw *bufio.Writer, upstream net.Conn, a *assertion, g *guard.Guard, expires time.Time) *relay {
	r := &relay{
		maxMessage: maxMessageLen,
		obs:        nopObserver{},
		guard:      g,
		client:     client,
		waits:      goroutineWaiter{client},
		cw:         cw,
		assertion:  a,
		done:       make(chan struct{}),
		notify:     make(chan struct{}, 1),
	}
	if !expires.IsZero() {
		r.expires = expires.UnixNano()
	}
	r.takeWork()
	r.cr, r.wconn, r.rconn = cr, upstream, upstream
	r.up = sessionBinding{r}
	r.clientOut = client
	if upstream != nil {
		r.ur = bufio.NewReaderSize(upstream, relayBufSize)
		r.uw = bufio.NewWriterSize(upstream, relayBufSize)
	}
	r.txStatus.Store('I')
	return r
}

// readHeader peeks at a message header and validates its length.
// It returns the type and the total size of the message including the type byte.
func readHeader(rd *bufio.Reader) (byte, int, error) {
	hdr, err := rd.Peek(5)
	if err != nil {
		return 0, 0, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > maxMessageLen {
		return 0, 0, fatalf(codeProtocolViolation, "invalid message length")
	}
	return hdr[0], n + 1, nil
}

// forward streams size bytes from rd to w without holding the whole message.
func forward(w *bufio.Writer, rd *bufio.Reader, size int) error {
	for size > 0 {
		if rd.Buffered() == 0 {
			// About to wait for the rest: let what we have go on.
			if err := w.Flush(); err != nil {
				return err
			}
			if _, err := rd.Peek(1); err != nil {
				return err
			}
		}
		chunk := min(size, rd.Buffered())
		buf, _ := rd.Peek(chunk)
		if _, err := w.Write(buf); err != nil {
			return err
		}
		_, _ = rd.Discard(chunk)
		size -= chunk
	}
	return nil
}

// readMessage copies a whole message out of rd. Only for rare paths.
func readMessage(rd *bufio.Reader, size int) ([]byte, error) {
	msg := make([]byte, size)
	if _, err := io.ReadFull(rd, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// peekStatementText is the start of the SQL text of the Query or Parse
// being relayed (nil for other messages): a prefix of a long statement.
func (r *relay) peekStatementText(typ byte) []byte {
	if typ != 'Q' && typ != 'P' {
		return nil
	}
	return statementText(r.in[:min(len(r.in), screenPeekLen+5)])
}

// statementText returns the SQL text of a (possibly truncated) Query or
// Parse message, or nil for other messages.
func statementText(msg []byte) []byte {
	typ := msg[0]
	if typ != 'Q' && typ != 'P' {
		return nil
	}
	body := msg[5:]
	if typ == 'P' {
		// Parse: statement name, NUL, query text, NUL, ...
		nul := bytes.IndexByte(body, 0)
		if nul < 0 {
			return nil
		}
		body = body[nul+1:]
	}
	if nul := bytes.IndexByte(body, 0); nul >= 0 {
		body = body[:nul]
	}
	return body
}

// The request side is a core and a driver, like the reply side (reply.go).
// The core (relayMessage and what it calls) takes one client message as
// bytes, r.in, and writes what goes upstream to the upstream writer; it
// never reads the client. Where it must wait (for replies, a pooled
// connection, a paused tenant, a rate token) it blocks the caller's
// goroutine between calls to the driver's waiter (waits.go), which also
// looks for a hang-up and sets read deadlines: an event-loop driver hands
// its loop to another goroutine there. The driver, clientToUpstream, reads
// the client and hands the core each message: whole, or the head of one
// larger than the read buffer that the core relays or drops without reading
// it (requestWhole); it then takes the message out of the reader and moves
// the rest as the core said (inRest).

// clientToUpstream is the request side's driver. It returns nil when the
// client sent Terminate, the read error when the client went away, or a
// *pgconn.PgError to report to the client as FATAL.
func (r *relay) clientToUpstream() error {
	for {
		if r.cr.Buffered() < 5 {
			if r.carryTouched() {
				// About to wait for the client: its settings, if they are
				// final, are read back now, so that the lease can end.
				if err := r.readBack(); err != nil {
					return err
				}
			}
			// Everything that arrived together has been relayed: one write.
			if err := r.flushUpstream(); err != nil {
				return err
			}
			if r.busy.Load() {
				r.busy.Store(false) // what it let through is pending now
			}
			r.armIdleTimeout()
			if err := r.up.awaitClient(); err != nil {
				return err
			}
		}
		// Between two messages: on an event loop, a message not all here
		// yet sends the client back to the loop until the rest comes.
		r.loopBoundary = true
		typ, size, err := readHeader(r.cr)
		if err != nil {
			return r.readError(err)
		}
		if size > r.maxMessage {
			return fatalf(codeProgramLimitExceeded, "message of %d bytes exceeds pgtenant's max_message_size of %d bytes", size, r.maxMessage)
		}
		r.in, err = r.nextRequest(typ, size)
		r.loopBoundary = false
		if err != nil {
			return r.readError(err)
		}
		r.stats.fromClient += int64(size)
		if typ == 'Q' || typ == 'E' {
			r.stats.statements++
		}
		err = r.relayMessage(typ, size)
		if err == nil {
			err = r.consumeRequest()
		}
		if err != nil {
			return err
		}
		if r.carry != nil && r.carry.due {
			r.carry.due = false
			if err := r.readBack(); err != nil {
				return err
			}
		}
	}
}

// readError is what the request side's driver returns for err, from a
// read of the client between two messages: errParked when an event loop
// is to wait for the rest.
func (r *relay) readError(err error) error {
	if err == errWouldBlock {
		return errParked // the reader keeps what it holds, and no error
	}
	return r.idleError(err)
}

// nextRequest reads the client message of type typ and size bytes whose
// header is at the head of the client reader for the core: as much as the
// core needs of it (requestNeed), and whatever more of it the reader holds
// already. A message the core needs whole that is larger than the buffer
// is copied out.
func (r *relay) nextRequest(typ byte, size int) ([]byte, error) {
	need := r.requestNeed(typ, size)
	if r.cr.Buffered() < need {
		// About to wait for the client: what is buffered goes first.
		if err := r.flushUp(); err != nil {
			return nil, err
		}
	}
	if need > r.cr.Size() {
		r.loopBoundary = false // copied out as it comes
		r.inPeeked = false
		msg := make([]byte, size)
		_, err := io.ReadFull(r.cr, msg)
		return msg, err
	}
	r.inPeeked = true
	if _, err := r.cr.Peek(need); err != nil {
		return nil, err
	}
	return r.cr.Peek(min(size, r.cr.Buffered()))
}

// requestNeed is how much of a message the core reads: the whole of one it
// reads whole (requestWhole; of one too large for that, which the core
// refuses or, a Describe or Close in session mode, relays, the header and
// the byte that says what it describes or closes: forwardUp), the names
// and start of the text of the rest of the statement messages, the header
// of any other. It never waits for more: a client that declares a message
// and sends no more of it gets the upstream's answer to what it sent, as
// from PostgreSQL.
func (r *relay) requestNeed(typ byte, size int) int {
	switch {
	case r.requestWhole(typ) && size <= maxGuardedStatement:
		return size
	case r.requestWhole(typ):
		return 6 // size > maxGuardedStatement
	case typ == 'Q' || typ == 'P' || typ == 'B' || typ == 'E':
		return min(size, r.cr.Size())
	}
	return 5
}

// requestWhole reports whether the core reads a message of type typ whole:
// the statements the guard or the audit log reads, and Describe and Close,
// never large but from a hostile client.
func (r *relay) requestWhole(typ byte) bool {
	switch typ {
	case 'Q', 'P':
		return r.guard != nil || r.audit != nil
	case 'F':
		return r.guard != nil
	case 'D', 'C':
		return true
	}
	return false
}

// consumeRequest takes the message the core has handled out of the client
// reader, and moves what the core did not see of it as it said.
func (r *relay) consumeRequest() error {
	if r.inPeeked {
		if _, err := r.cr.Discard(len(r.in)); err != nil {
			return err
		}
	}
	r.in = nil
	rest, pass := r.inRest, r.inRestPass
	r.inRest = 0
	switch {
	case rest == 0:
		return nil
	case pass:
		return forward(r.uw, r.cr, rest)
	}
	_, err := r.cr.Discard(rest)
	return err
}

// passUp sends the message being relayed upstream from its byte from on
// (the message of size bytes, or its head: the driver sends the rest).
func (r *relay) passUp(from, size int) error {
	if len(r.in) < size {
		r.inRest, r.inRestPass = size-len(r.in), true
	}
	_, err := r.uw.Write(r.in[from:])
	return err
}

// relayMessage is the core of the request side: it guards, asserts ahead
// of and sends the client message r.in, of type typ and size bytes.
func (r *relay) relayMessage(typ byte, size int) error {
	var msg []byte // the whole message, when the guard needs to read it
	var substitute []byte
	resets, deallocates := false, false
	r.changes, r.deallocs, r.dealloc = false, false, ""
	r.prepare, r.executes, r.stmtExecutes, r.channels, r.listening, r.unlistensAll = nil, nil, nil, nil, false, false
	r.stmtMakes, r.deallocTo = nil, nil
	var err error
	// Only a unit's first message may take a new connection: anything
	// else with none held means pgtenant lost track of the stream.
	startsUnit := typ == 'Q' || typ == 'F' || !r.inGroup && (typ == 'P' || typ == 'B' || typ == 'E' || typ == 'D' || typ == 'C' || typ == 'S')
	if startsUnit && r.carry != nil && r.carry.sent {
		// The settings and pin read back behind the last unit decide how
		// this one is asserted, and whether it needs a new pin (check).
		if err := r.takeReadback(); err != nil {
			return err
		}
	}
	if startsUnit && !r.inGroup {
		// From here a pause sees this unit (pause.go); one load when the
		// tenant is not paused.
		if !r.busy.Load() {
			r.busy.Store(true)
		}
		if r.hold.Load() != nil {
			if err := r.waitPaused(); err != nil {
				return err
			}
		}
	}
	if startsUnit && r.rate != nil && r.mayNeedAssertion() {
		// A transaction may start: before a pooled connection is taken.
		if err := r.waitForToken(); err != nil {
			return err
		}
	}
	if r.guard != nil && (typ == 'Q' || typ == 'P' || typ == 'F') {
		if why, _ := r.unsafeLexing.Load().(string); why != "" {
			return fatalf(codeInsufficientPrivilege, "pgtenant cannot guard this session's statements: %s", why)
		}
		if msg, err = r.wholeMessage(size); err != nil {
			return err
		}
		if substitute, resets, deallocates, err = r.check(msg); err != nil {
			return err
		}
		if typ == 'Q' && r.rate != nil && substitute == nil {
			// One token per transaction the Query runs: the unit's came first.
			for n := guard.Transactions(statementText(msg)); n > 1; n-- {
				if err := r.waitForToken(); err != nil {
					return err
				}
			}
		}
		// DEALLOCATE ALL drops the prepared context statements too.
		r.changes = r.changes || deallocates
		r.deallocs = deallocates
	}
	if r.audit != nil && msg == nil && (typ == 'Q' || typ == 'P') {
		// The audit log needs the whole text.
		if msg, err = r.wholeMessage(size); err != nil {
			return err
		}
	}
	mayCopy, blindExecute, err := r.trackStatements(typ, size, msg, substitute != nil)
	if err != nil {
		return err
	}
	if r.groupTokenDue {
		r.groupTokenDue = false
		if err := r.waitForToken(); err != nil {
			return err
		}
	}
	if r.audit != nil {
		if err := r.auditRequest(typ, size, msg, substitute != nil); err != nil {
			return err
		}
	}
	if held, err := r.up.take(typ, size, startsUnit); err != nil {
		return err
	} else if !held {
		// Nothing to flush, no COPY in progress: PostgreSQL would ignore it too.
		return r.dropIn(size)
	}
	inCopy := false
	if !isCopyStreamMessage(typ) && r.ledger.copyRisk() {
		if inCopy, err = r.serverInCopy(); err != nil {
			return err
		}
	}
	if (r.dealloc != "" || len(r.channels) > 0 || r.prepare != nil || len(r.executes) > 0) && substitute == nil && !inCopy {
		if msg, err = r.up.rewrite(msg); err != nil {
			return err
		}
	}
	if chans := r.channelChange(); typ == 'Q' && chans != nil && substitute == nil && !inCopy {
		if err := r.beforeListeningQuery(chans); err != nil {
			return err
		}
	}
	step, inGroup := classifyClient(typ, r.inGroup, inCopy, typ == 'S' && r.ledger.dropsSync())
	if typ == 'S' && step != stepDrop {
		r.assertDue = nil // the group ends having run nothing that needed it
	}
	r.inGroup = inGroup
	if r.carryTouched() && !inGroup && step != stepDrop && step != stepIntoCopy && bytes.IndexByte(unitEnds, typ) >= 0 {
		r.carry.due = true // a unit or a COPY ends: read the settings back behind it
	}
	switch step {
	case stepDrop:
		return r.dropIn(size)
	case stepIntoCopy:
		r.assertDue = nil // nothing runs now
		return r.relayIntoCopy(typ, size, msg, substitute)
	case stepUnit:
		if err := r.startUnit(typ, size, msg, substitute != nil, typ == 'Q' || typ == 'F'); err != nil {
			return err
		}
	case stepLoneSync:
		if err := r.beginUnit(); err != nil {
			return err
		}
	case stepTerminate:
		// The upstream closes behind it: that is no news to tell the client.
		r.closing.Store(true)
		if err := r.passUp(0, size); err != nil {
			return err
		}
		_ = r.uw.Flush()
		return errClientTerminated
	}
	if deallocates && typ == 'Q' {
		r.up.deallocatedAll()
	}
	if r.assertDue != nil && ((typ == 'E' || typ == 'B') && blindExecute || typ == 'Q' || typ == 'F') {
		if err := r.settleAssertion(); err != nil {
			return err
		}
	}
	if err := r.sendAssertionIfDue(typ); err != nil {
		return err
	}
	if typ == 'P' || typ == 'B' || typ == 'D' || typ == 'C' || typ == 'Q' {
		if done, err := r.up.statement(typ, size, msg, substitute); done {
			return err
		}
	}
	if msg == nil {
		return r.forwardUp(typ, size, mayCopy)
	}
	out := msg
	if substitute != nil {
		out = substitute
	}
	if err := r.sendClient(out, mayCopy); err != nil {
		return err
	}
	if resets {
		// Re-assert right behind RESET ALL / DISCARD ALL, in a round trip of
		// its own: committed before the client's next statement, so that
		// not even a BEGIN; ROLLBACK can take it back. Nothing waits for it;
		// if it fails, the session ends.
		if err := r.beginUnit(); err != nil {
			return err
		}
		r.stats.assertions.Add(1)
		return r.sendMsgs(r.resetAllAssertion(), fromReassert)
	}
	return nil
}

// unitEnds are the client messages after which the server may be idle:
// Query, FunctionCall, Sync, CopyDone, CopyFail.
var unitEnds = []byte("QFScf")

// clientStep is what the request side does with one client message.
type clientStep uint8

const (
	stepRelay     clientStep = iota // relay it in the unit under way
	stepUnit                        // begin a unit (asserting ahead of it if due), then relay it
	stepLoneSync                    // begin a unit for a Sync alone: it yields a ReadyForQuery
	stepDrop                        // send nothing (a Sync among COPY data: ledger.dropsSync)
	stepIntoCopy                    // the server reads COPY data: relay it as it is (relayIntoCopy)
	stepTerminate                   // the client is leaving
)

// classifyClient decides what to do with a client message of type typ:
// inGroup, the client has sent extended-protocol messages since its last
// Sync; inCopy, the server is reading COPY data (known: the request side
// waits for it when it may be so); amongCopyData, a Sync would reach the
// server among copy data. It returns the step and inGroup after it.
func classifyClient(typ byte, inGroup, inCopy, amongCopyData bool) (clientStep, bool) {
	if inCopy && !isCopyStreamMessage(typ) {
		return stepIntoCopy, inGroup
	}
	switch typ {
	case 'Q', 'F':
		if inGroup {
			// Sent before the group's Sync: PostgreSQL runs it in the group's
			// implicit transaction, or skips it if the group failed. It ends
			// the group's unit either way; the ledger tells which happened.
			return stepRelay, false
		}
		return stepUnit, false
	case 'P', 'B', 'E', 'D', 'C':
		if inGroup {
			return stepRelay, true
		}
		return stepUnit, true
	case 'S':
		switch {
		case amongCopyData:
			return stepDrop, inGroup
		case inGroup:
			return stepRelay, false
		}
		return stepLoneSync, false
	case 'X':
		return stepTerminate, inGroup
	}
	// CopyData, CopyDone, CopyFail, Flush: no reply of their own.
	return stepRelay, inGroup
}

// isCopyStreamMessage reports whether a client message is one the server
// reads without error during COPY FROM STDIN.
func isCopyStreamMessage(typ byte) bool {
	switch typ {
	case 'd', 'c', 'f', 'H', 'S', 'X':
		return true
	}
	return false
}

// mayStartCopy reports whether a Query or Parse may be (or hold) a COPY:
// a cheap look for the word; a long statement that was not read whole may.
func (r *relay) mayStartCopy(typ byte, size int, msg []byte) bool {
	var text []byte
	if msg != nil {
		text = statementText(msg)
	} else {
		text = r.peekStatementText(typ)
		if size > screenPeekLen+5 {
			return true
		}
	}
	return containsFold(text, "copy")
}

// trackStatements follows, from the client's messages, which statements
// and portals may start a COPY, which statements end a transaction block,
// and which portals the group under way has bound. It reports whether the
// message may start a COPY (a Query or Execute) and, for an Execute,
// whether its portal is one the relay cannot vouch for (not bound in this
// group, or ending a transaction block): then the assertion must not be
// sent ahead of it blind (see startExecute).
func (r *relay) trackStatements(typ byte, size int, msg []byte, refused bool) (mayCopy, blind bool, err error) {
	switch typ {
	case 'Q':
		r.groupPortals = r.groupPortals[:0] // it ends a group's transaction, if any
		r.groupTxEnded = false
		return !refused && r.mayStartCopy(typ, size, msg), false, nil
	case 'P':
		copyText := !refused && r.mayStartCopy(typ, size, msg)
		ends := false
		if !refused {
			if text := r.statementHead(typ, msg); text != nil {
				ends = isTransactionEnd(text)
			}
		}
		if !copyText && !ends && len(r.copyStmts) == 0 && len(r.endStmts) == 0 {
			return false, false, nil
		}
		head := msg // read whole
		if head == nil {
			head = r.in
		}
		name, _, _ := splitName(head[5:])
		// A statement that may COPY stays marked when the server may not
		// replace it: a Parse under a taken name fails, and one behind an
		// earlier message of its group is skipped if that one failed.
		keepCopy := r.copyStmts[string(name)] && (len(name) > 0 || r.inGroup)
		r.copyStmts = markName(r.copyStmts, name, copyText || keepCopy)
		r.endStmts = markName(r.endStmts, name, ends)
	case 'B':
		head := r.in
		portal, rest, _ := splitName(head[5:])
		stmt, _, _ := splitName(rest)
		if len(r.copyStmts) > 0 || len(r.copyPortals) > 0 {
			r.copyPortals = markName(r.copyPortals, portal, r.copyStmts[string(stmt)])
		}
		ends := r.endStmts[string(stmt)]
		r.bindInGroup(portal, ends)
		// A transaction-scoped assertion goes ahead of a Bind (see
		// sendAssertionIfDue): not blind ahead of one that ends a block.
		return false, ends && r.assertion.local, nil
	case 'E':
		head := r.in
		portal, _, _ := splitName(head[5:])
		ends, bound := r.boundInGroup(portal)
		if r.rate != nil {
			// What runs after a transaction ended in the group runs in a
			// new one: it takes a token of its own.
			r.groupTokenDue = r.groupTxEnded
			r.groupTxEnded = r.groupTxEnded || ends
		}
		return r.copyPortals[string(portal)], ends || !bound, nil
	case 'S':
		r.groupPortals = r.groupPortals[:0]
		r.groupTxEnded = false
	}
	return false, false, nil
}

// statementHead is the text of a Query or Parse, or its start.
func (r *relay) statementHead(typ byte, msg []byte) []byte {
	if msg != nil {
		return statementText(msg)
	}
	return r.peekStatementText(typ)
}

// boundPortal is a portal the client bound in the group under way.
type boundPortal struct {
	name string
	ends bool // its statement ends a transaction block
}

func (r *relay) bindInGroup(portal []byte, ends bool) {
	for i := range r.groupPortals {
		if r.groupPortals[i].name == string(portal) {
			r.groupPortals[i].ends = ends
			return
		}
	}
	r.groupPortals = append(r.groupPortals, boundPortal{name: string(portal), ends: ends})
}

func (r *relay) boundInGroup(portal []byte) (ends, bound bool) {
	for _, p := range r.groupPortals {
		if p.name == string(portal) {
			return p.ends, true
		}
	}
	return false, false
}

// markName adds name to set (made on first use) or removes it.
func markName(set map[string]bool, name []byte, on bool) map[string]bool {
	switch {
	case on && set == nil:
		set = map[string]bool{}
		fallthrough
	case on:
		set[string(name)] = true
	default:
		delete(set, string(name))
	}
	return set
}

// containsFold reports whether text contains word (lower case, ASCII)
// in any case.
func containsFold(text []byte, word string) bool {
	for i := 0; i+len(word) <= len(text); i++ {
		j := 0
		for j < len(word) && text[i+j]|0x20 == word[j] {
			j++
		}
		if j == len(word) {
			return true
		}
	}
	return false
}

// dropIn drops the client message being relayed, of size bytes: it goes
// nowhere.
func (r *relay) dropIn(size int) error {
	if len(r.in) < size {
		r.inRest, r.inRestPass = size-len(r.in), false
	}
	return nil
}

// serverInCopy waits until the server has read everything sent so far, and
// reports whether it is then reading COPY FROM STDIN data. Only asked when
// a COPY may have started (ledger.copyRisk).
func (r *relay) serverInCopy() (bool, error) {
	if err := r.await(untilQuiet); err != nil {
		return false, err
	}
	return r.ledger.inCopyIn(), nil
}

// relayIntoCopy sends a message that is not copy data while the server
// reads COPY data. PostgreSQL takes it for bad COPY data: the COPY fails
// (08P01) and, its place in the stream lost, the server ends the session
// with a FATAL. pgtenant relays it as it is, with no assertion ahead of it
// (the server never runs it), and lets that happen.
func (r *relay) relayIntoCopy(typ byte, size int, msg, substitute []byte) error {
	if typ == 'Q' || typ == 'F' {
		// A unit of its own, which ends when the server reads it.
		if err := r.beginUnit(); err != nil {
			return err
		}
	}
	if msg == nil {
		return r.forwardUp(typ, size, false)
	}
	out := msg
	if substitute != nil {
		out = substitute
	}
	return r.sendClient(out, false)
}

// awaitReplyEnd waits until the reply side has ended, or the client has hung
// up: a client that has left must not keep an upstream connection.
func (r *relay) awaitReplyEnd() {
	r.waits.blocking(blockOnReplyEnd)
	defer r.waits.resumed(blockOnReplyEnd)
	tick := time.NewTicker(hangUpCheck)
	defer tick.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-tick.C:
			if r.waits.clientGone() {
				return
			}
		}
	}
}

// startUnit decides whether and how to assert the tenant ahead of a unit,
// and begins it. msg is the whole message when already read, refused when
// the guard replaced it.
func (r *relay) startUnit(typ byte, size int, msg []byte, refused, simple bool) error {
	r.assertDue = nil // a group that ran nothing left its assertion unsent: it was that group's
	// The text is only looked at when an assertion may be due: not on the
	// common path of a statement inside a transaction block.
	var text []byte
	if !refused && r.mayNeedAssertion() {
		if msg != nil {
			text = statementText(msg)
		} else {
			text = r.peekStatementText(typ)
		}
	}
	// While replies are outstanding the upstream's transaction state is not
	// known. For an extended group that is fine: an assertion in an aborted
	// block fails like the client's own statement would, and the group is
	// skipped. A simple Query cannot be skipped that way, and a ROLLBACK must
	// not be failed by an assertion, so those wait for the exact state.
	if r.ledger.pending.Load() > 0 && (simple || text != nil && isTransactionEnd(text)) {
		if err := r.waitDrained(); err != nil {
			return err
		}
	}
	if r.expires != 0 && r.mayNeedAssertion() && time.Now().UnixNano() > r.expires {
		// The transaction in progress may finish; no new one starts.
		if err := r.waitDrained(); err != nil {
			return err
		}
		if byte(r.txStatus.Load()) == 'I' {
			return auth.TokenExpired(r.user)
		}
	}
	if r.ledger.skipsNext() {
		// The server skips this unit up to its Sync after an error: nothing
		// in it runs, and a round trip of pgtenant's own (its Sync) would end
		// the skipping early.
		return r.beginUnit()
	}
	if text != nil && r.mayNeedAssertion() && !pipelineSafe(text, r.assertion.local) {
		// Not after an unsynced Execute: assert in a round trip of its own.
		if err := r.waitDrained(); err != nil {
			return err
		}
		if r.mayNeedAssertion() && !r.ledger.skipsNext() {
			if err := r.assertStandalone(); err != nil {
				return err
			}
		}
		return r.beginUnit()
	}
	need := r.mayNeedAssertion()
	r.inBlockDue = false
	if need {
		r.blockAsserted = false
	} else if r.assertion.local && !r.blockAsserted && byte(r.txStatus.Load()) == 'T' {
		// context_scope: transaction: once more inside the block the
		// client began. Its first assertion went ahead of the BEGIN, where
		// Citus does not carry a SET LOCAL to its workers (only inside a
		// block); PostgreSQL has the context already.
		need, r.inBlockDue, r.blockAsserted = true, true, true
	}
	var settled []byte
	if need {
		settled = r.up.settledAssertion()
	}
	if err := r.beginUnit(); err != nil {
		return err
	}
	if !need {
		return nil
	}
	r.assertDue = r.assertion.inline
	if settled != nil {
		r.assertDue = settled
	}
	if simple {
		return r.sendAssertion(fromAssertSimple)
	}
	// In a group, the assertion goes right before the first message that
	// runs something (sendAssertionIfDue): what comes before it (Parse,
	// Bind, Describe, Close) then meets the server as it would without
	// pgtenant, in a failed transaction block too.
	return nil
}

// settleAssertion decides, from the exact transaction state, the assertion
// due ahead of an Execute of a portal the relay cannot vouch for, or of a
// Query or FunctionCall ending a group that ran nothing yet. In a failed
// block PostgreSQL answers such a message itself (25P02, a ROLLBACK, or the
// portal does not exist), where the assertion would fail first and the
// server skip the message up to a Sync the client never sends. Inside a
// block no assertion is due, as for a Query of its own: the block was
// asserted when it began, and what follows a ROLLBACK in the same string
// runs with the connection's committed context, which is this client's
// (the session's start, or the pool's prepare) or none (a failed prepare,
// or context_scope: transaction, where the policies then refuse).
func (r *relay) settleAssertion() error {
	if r.ledger.pending.Load() > 1 {
		if err := r.await(untilOnlyThisUnit); err != nil {
			return err
		}
	}
	if r.ledger.pending.Load() > 1 {
		return nil // the server waits for the client: keep the assertion
	}
	if s := byte(r.txStatus.Load()); s == 'T' || s == 'E' || r.ledger.skipsNext() {
		r.assertDue = nil // inside a block (asserted when it began), or skipped
	}
	return nil
}

// sendAssertionIfDue sends the unit's assertion ahead of a message that
// runs a statement (Execute, or a Query or FunctionCall ending a group).
// A transaction-scoped context goes ahead of a Bind too: PostgreSQL plans
// the statement there and may evaluate the policies' current_setting
// (estimating a selectivity), which with no context in the session would
// fail the Bind.
func (r *relay) sendAssertionIfDue(typ byte) error {
	if r.assertDue == nil || typ != 'E' && typ != 'Q' && typ != 'F' && (typ != 'B' || !r.assertion.local) {
		return nil
	}
	return r.sendAssertion(fromAssert)
}

// sendAssertion sends the assertion due.
func (r *relay) sendAssertion(o origin) error {
	inline := r.assertDue
	r.assertDue = nil
	r.stats.assertions.Add(1)
	if r.inBlockDue {
		// Inside a block already counted.
		r.inBlockDue = false
		return r.sendMsgs(inline, o)
	}
	r.txStarted()
	r.obs.Transaction(r.tenant)
	r.obs.Statements(r.tenant, r.stats.statements)
	r.stats.statements = 0
	return r.sendMsgs(inline, o)
}

// beginUnit starts a unit (the messages up to a Query, FunctionCall or
// Sync): in transaction mode the held connection's reader now hands its
// replies to this relay.
func (r *relay) beginUnit() error {
	if r.ledger.pending.Load() >= maxUnitsInFlight {
		if err := r.await(untilFewerUnits); err != nil {
			return err
		}
	}
	r.up.begin()
	return nil
}

// sendMsgs records msgs (whole messages, back to back) in the ledger and
// writes them upstream.
func (r *relay) sendMsgs(msgs []byte, o origin) error {
	r.ledger.sendMsgs(msgs, r.seq, o)
	_, err := r.uw.Write(msgs)
	return err
}

// sendClient records and writes one whole client message.
func (r *relay) sendClient(msg []byte, mayCopy bool) error {
	m := sentMsg{unit: r.seq, typ: msg[0], mayCopy: mayCopy}
	if r.audit != nil {
		m.audit = r.audit.tagSent(m.typ, r.seq)
	}
	if (m.typ == 'D' || m.typ == 'C') && len(msg) > 5 {
		m.kind = msg[5]
	}
	r.ledger.send(m)
	_, err := r.uw.Write(msg)
	return err
}

// forwardUp records the client message at the head of the client reader
// and streams it upstream.
func (r *relay) forwardUp(typ byte, size int, mayCopy bool) error {
	m := sentMsg{unit: r.seq, typ: typ, mayCopy: mayCopy}
	if r.audit != nil {
		m.audit = r.audit.tagSent(typ, r.seq)
	}
	if (typ == 'D' || typ == 'C') && size > 5 {
		m.kind = r.in[5]
	}
	r.ledger.send(m)
	return r.passUp(0, size)
}

// flushMessage is a Flush: the server sends what it has, and reads on.
var flushMessage = []byte{'H', 0, 0, 0, 4}

// hangUpCheck is how often a request side that waits on the upstream looks
// whether its client has hung up.
const hangUpCheck = 200 * time.Millisecond

// waitFor names what await waits for (a method value would allocate).
type waitFor uint8

const (
	untilDrained      waitFor = iota // every unit ended, or the server needs the client
	untilQuiet                       // everything sent answered (ledger.quiet)
	untilFewerUnits                  // fewer than maxUnitsInFlight units pending
	untilStandalone                  // the standalone assertion answered
	untilStatements                  // no Parse or Close of a unit before waitSeq unanswered
	untilOnlyThisUnit                // no unit before the one under way pending, or the server needs the client
	untilAnswered                    // every unit ended but a group with no Sync yet (no Flush sent: see Terminate)
	untilNoQuery                     // no Query sent and not yet answered or passed over
	untilReadback                    // the settings readback answered (carried.go)
)

func (r *relay) holds(w waitFor) bool {
	switch w {
	case untilDrained:
		return r.ledger.pending.Load() == 0 || r.ledger.quiet()
	case untilQuiet:
		return r.ledger.quiet()
	case untilFewerUnits:
		return r.ledger.pending.Load() < maxUnitsInFlight || r.ledger.quiet()
	case untilStandalone:
		return r.standaloneDone.Load()
	case untilOnlyThisUnit:
		return r.ledger.pending.Load() <= 1 || r.ledger.quiet()
	case untilNoQuery:
		return r.ledger.queries.Load() == 0 || r.ledger.quiet()
	case untilReadback:
		return r.carry.answered.Load()
	case untilAnswered:
		open := int32(0)
		if r.inGroup {
			open = 1
		}
		return r.ledger.pending.Load() <= open || r.ledger.quiet()
	default:
		if r.ledger.silentN.Load() > 0 {
			// Units the server passed over get no reply that would settle
			// their statements: settle them here (the lease is held).
			r.waitSilent = r.settleSilent(r.sc, r.waitSilent[:0])
		}
		return !r.prepared().pendingBefore(r.waitSeq)
	}
}

// await waits until cond holds. It first sends what is buffered upstream,
// with a Flush of pgtenant's own so that the server sends what it has. It
// gives up when the reply side ends or the client hangs up: a client that
// has left must not keep an upstream connection while pgtenant waits.
func (r *relay) await(cond waitFor) error {
	if r.holds(cond) {
		return nil
	}
	if r.uw != nil {
		if cond != untilAnswered {
			if err := r.sendMsgs(flushMessage, fromOwn); err != nil {
				return err
			}
		}
		if err := r.uw.Flush(); err != nil {
			return err
		}
	}
	r.waiting.Store(true)
	defer r.waiting.Store(false)
	r.waits.blocking(blockOnReplies)
	defer r.waits.resumed(blockOnReplies)
	var tick *time.Ticker
	var stmtsChanged chan struct{} // nil (never ready) in session mode
	if r.stmts != nil {
		stmtsChanged = r.stmts.changed
	}
	for !r.holds(cond) {
		if tick == nil {
			tick = time.NewTicker(hangUpCheck)
			defer tick.Stop()
		}
		select {
		case <-r.notify:
		case <-stmtsChanged:
		case <-r.done:
			return io.ErrUnexpectedEOF
		case <-tick.C:
			if r.waits.clientGone() {
				return io.ErrUnexpectedEOF
			}
		}
	}
	return nil
}

// wake tells a waiting request side that the reply side moved on.
func (r *relay) wake() {
	if r.waiting.Load() {
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
}

// armIdleTimeout sets the client read deadline for the wait ahead: the idle
// timeout outside a transaction, the idle-in-transaction timeout inside one,
// none while replies are outstanding (the client is waiting for us). Both
// sides call it: the request side before it waits for the client, the
// reply side when the last reply is in.
func (r *relay) armIdleTimeout() {
	pinned := r.pinned.Load() // only ever in transaction mode
	if r.idleTimeout == 0 && r.idleInTxTimeout == 0 && !pinned {
		return
	}
	for {
		pending := r.ledger.pending.Load()
		var d time.Duration
		if pending == 0 {
			if byte(r.txStatus.Load()) == 'I' {
				d = r.idleTimeout
				if pinned {
					if p := r.pool.cfg.PinnedIdleTimeout.Duration; p > 0 && (d == 0 || p < d) {
						d = p
					}
				}
			} else {
				d = r.idleInTxTimeout
			}
		}
		if d > 0 {
			r.waits.clientReadDeadline(time.Now().Add(d))
		} else {
			r.waits.clientReadDeadline(time.Time{})
		}
		if r.ledger.pending.Load() == pending {
			return // nothing moved while the deadline was set
		}
	}
}

// armUpstreamTimeout sets the upstream read deadline while replies are owed
// and clears it when none are. The request side calls it after sending, the
// reply side at every message and when the last reply is in.
func (r *relay) armUpstreamTimeout(conn net.Conn) {
	if r.upstreamTimeout == 0 {
		return
	}
	for {
		pending := r.ledger.pending.Load()
		if pending > 0 {
			r.waits.upstreamReadDeadline(conn, time.Now().Add(r.upstreamTimeout))
		} else {
			r.waits.upstreamReadDeadline(conn, time.Time{})
		}
		if r.ledger.pending.Load() == pending {
			return
		}
	}
}

// setUpstreamTimeout makes the reply side end the session when the upstream
// says nothing for d while a reply is owed. Only time spent waiting on the
// upstream counts: the deadline starts again after every write to the
// client, which may block for as long as the client takes to read.
func (r *relay) setUpstreamTimeout(d time.Duration) {
	r.upstreamTimeout = d
	if d == 0 {
		return
	}
	r.clientOut = rearmingWriter{r}
	if r.cw != nil {
		_ = r.cw.Flush()
		r.cw.Reset(r.clientOut)
	}
}

// rearmingWriter writes to the client, then restarts the upstream read
// deadline (setUpstreamTimeout).
type rearmingWriter struct{ r *relay }

func (w rearmingWriter) Write(p []byte) (int, error) {
	n, err := w.r.client.Write(p)
	if w.r.ledger.pending.Load() > 0 {
		// Replies are owed, so the reply side is the writer and rconn is
		// the connection it reads (in transaction mode: attached).
		w.r.armUpstreamTimeout(w.r.rconn)
	}
	return n, err
}

// flushUpstream sends what the request side has buffered. In transaction
// mode it also ends the write section, which may give the connection back.
func (r *relay) flushUpstream() error { return r.up.flush() }

// flushUp sends what the request side has buffered for the upstream, if it
// holds a writer: between leases it has none, and a flush must never reach a
// connection that another client holds.
func (r *relay) flushUp() error {
	if r.uw == nil {
		return nil
	}
	return r.uw.Flush()
}

// idleError turns a read timeout from armIdleTimeout into PostgreSQL's error.
func (r *relay) idleError(err error) error {
	var ne net.Error
	pinned := r.pinned.Load() // only ever in transaction mode
	if r.idleTimeout == 0 && r.idleInTxTimeout == 0 && !pinned || !errors.As(err, &ne) || !ne.Timeout() {
		return err
	}
	if byte(r.txStatus.Load()) == 'I' && pinned {
		return fatalf(codeIdleSessionTimeout, "terminating connection due to idle-session timeout: it held a pooled connection pinned to it (pool.pinned_idle_timeout is %s)", r.pool.cfg.PinnedIdleTimeout.Duration)
	}
	if byte(r.txStatus.Load()) == 'I' {
		return fatalf(codeIdleSessionTimeout, "terminating connection due to idle-session timeout")
	}
	return fatalf(codeIdleInTransactionTimeout, "terminating connection due to idle-in-transaction timeout")
}

// mayNeedAssertion reports whether the upstream may be outside a
// transaction block when the next unit arrives.
func (r *relay) mayNeedAssertion() bool {
	if r.ledger.pending.Load() > 0 {
		return true
	}
	s := byte(r.txStatus.Load())
	return s != 'T' && s != 'E'
}

// waitDrained waits until every unit sent so far has ended, so that the
// transaction status is exact, or until the server needs the client to go
// on (an unsynced group, a COPY).
func (r *relay) waitDrained() error {
	return r.await(untilDrained)
}

// assertStandalone asserts the tenant in a round trip of its own and waits
// for the result, for statements that cannot follow an unsynced Execute.
func (r *relay) assertStandalone() error {
	if err := r.beginUnit(); err != nil {
		return err
	}
	r.stats.assertions.Add(1)
	r.obs.Transaction(r.tenant)
	r.standaloneDone.Store(false)
	if err := r.sendMsgs(r.assertion.standalone, fromStandalone); err != nil {
		return err
	}
	if err := r.await(untilStandalone); err != nil {
		return err
	}
	if e := r.standaloneErr.Swap(nil); e != nil && e.Code != codeInFailedTransaction {
		return assertionFailed(e)
	}
	// In a failed block (25P02) nothing runs until it ends: the client's
	// statement, sent next, gets PostgreSQL's own error or ends the block.
	return nil
}

func assertionFailed(upstream *pgconn.PgError) *pgconn.PgError {
	return &pgconn.PgError{
		Severity: severityFatal,
		Code:     upstream.Code,
		Message:  "pgtenant could not assert the tenant context: " + upstream.Message,
		Detail:   "The statement was not run.",
	}
}

// errDraining ends a session when the server shuts down.
var errDraining = errors.New("server shutting down")

// errUpstreamLost reports that the upstream connection ended on its own.
var errUpstreamLost = errors.New("upstream connection lost")

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
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/guard"
	"github.com/pgtenant/pgtenant/internal/lexsafe"
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

// unit is one stretch of the client's stream that ends with a ReadyForQuery:
// a simple Query, a FunctionCall, or an extended-protocol group up to its Sync.
// The request side queues one per unit, in order; the response side takes it
// when the unit's first reply arrives, so it knows which replies are the
// relay's own and must be hidden.
type unit struct {
	assert     bool // the inline assertion was sent ahead of the unit
	short      bool // and it was the context settings' alone (poolContext.settled)
	simple     bool // a Query or FunctionCall: an assertion failure cannot be reported in-band
	standalone bool // the relay's own standalone assertion; every reply is hidden
	afterReset bool // a standalone assertion behind RESET ALL / DISCARD ALL: nobody waits for it
	seq        uint64
}

// relay moves messages between a client and its upstream connection, one
// goroutine per direction, and asserts the tenant context at every point where
// the upstream may be outside a transaction block.
type relay struct {
	client          net.Conn
	cr              *bufio.Reader // client reader (shared with startup)
	cw              *bufio.Writer // client writer, used only by the response side
	ur              *bufio.Reader
	uw              *bufio.Writer // upstream writer, used only by the request side
	assertion       assertion
	guard           *guard.Guard // nil when the guard is off for this user
	refusals        refusals
	expires         time.Time // no transaction may start after this (token expiry); zero: never
	maxMessage      int       // largest client message accepted
	idleTimeout     time.Duration
	idleInTxTimeout time.Duration
	upstreamTimeout time.Duration // no byte from the upstream for this long while a reply is owed ends the session
	clientOut       io.Writer     // what cw writes to: the client, or a rearmingWriter with upstreamTimeout
	obs             Observer
	knobs           *TestingKnobs // nil outside tests
	tenant          string

	units    chan unit
	pending  atomic.Int32  // units sent upstream whose ReadyForQuery has not come back
	txStatus atomic.Uint32 // status byte of the last ReadyForQuery

	seq       uint64 // sequence number of the last queued unit (request side)
	drained   chan struct{}
	voidMu    sync.Mutex
	void      [][2]uint64 // ranges of voided unit sequence numbers
	voidCount atomic.Int32
	sawFatal  bool // the upstream sent a FATAL or PANIC (response side)

	standaloneDone chan *pgconn.PgError // result of a standalone assertion
	closing        atomic.Bool          // the session is ending; suppress "upstream lost"
	panicked       atomic.Bool          // a bug ended the session (recover.go): the client is told so
	draining       atomic.Bool          // the server is shutting down: end at the next idle point
	unsafeLexing   atomic.Value         // string: why the upstream would not read SQL as the guard does
	copyInUpstream atomic.Bool          // the upstream sent CopyInResponse and is reading copy data
	copySignal     chan struct{}        // the response side saw CopyInResponse or ReadyForQuery
	done           chan struct{}        // closed when the response side returns

	stats relayStats

	// Transaction mode (pool != nil): the upstream is leased per transaction
	// (pooled.go). wconn is the connection the request side writes, rconn
	// (and rsc) the one the response side reads; in session mode both are
	// upstream for the whole session.
	pooledState
	leaseMu sync.Mutex
	wconn   net.Conn
	rconn   net.Conn
	rsc     *serverConn
	resp    respState // response side only
}

type relayStats struct {
	assertions atomic.Int64
	refusals   atomic.Int64
	fromClient int64 // written by the request side only; read after it ends
	toClient   int64 // written by the response side only; read after it ends
	statements int64 // request side: not yet reported to the observer
}

var errClientTerminated = errors.New("client sent Terminate")

func newRelay(client net.Conn, cr *bufio.Reader, cw *bufio.Writer, upstream net.Conn, a assertion, g *guard.Guard, expires time.Time) *relay {
	r := &relay{
		maxMessage:     maxMessageLen,
		obs:            nopObserver{},
		expires:        expires,
		guard:          g,
		client:         client,
		cr:             cr,
		cw:             cw,
		assertion:      a,
		units:          make(chan unit, maxUnitsInFlight),
		standaloneDone: make(chan *pgconn.PgError, 1),
		drained:        make(chan struct{}, 1),
		copySignal:     make(chan struct{}, 1),
		done:           make(chan struct{}),
		wconn:          upstream,
		rconn:          upstream,
	}
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

// peekStatementText peeks at the start of the SQL text of a Query or Parse
// message. It returns nil for other messages, and may return a prefix of a
// long statement.
func peekStatementText(rd *bufio.Reader, typ byte, size int) []byte {
	if typ != 'Q' && typ != 'P' {
		return nil
	}
	msg, err := rd.Peek(min(size, screenPeekLen+5))
	if err != nil {
		return nil
	}
	return statementText(msg)
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

// clientToUpstream is the request side. It returns nil when the client sent
// Terminate, the read error when the client went away, or a *pgconn.PgError
// to report to the client as FATAL.
func (r *relay) clientToUpstream() error {
	inGroup := false // inside an extended-protocol group (no Sync yet)
	// COPY FROM STDIN: the server ignores Sync and Flush while it reads copy
	// data, and a client may send a Sync right behind the COPY command
	// before it knows the command was a COPY (libpq does). Those Syncs yield
	// no ReadyForQuery; they are told apart once copy data follows.
	copyIn := false               // the client is sending copy data
	afterExec := false            // an Execute or Query went out, no copy data since
	groupEndedBlind := false      // the Sync that ended the group came after it
	var blindFrom, blindTo uint64 // lone-Sync units queued after it
	for {
		if r.cr.Buffered() < 5 {
			// Everything that arrived together has been relayed: one write.
			if err := r.flushUpstream(); err != nil {
				return err
			}
			r.armIdleTimeout()
			if r.pooled() && r.cr.Buffered() == 0 {
				if err := r.parkReader(!inGroup && !copyIn); err != nil {
					if err == errParked {
						return err
					}
					return r.idleError(err)
				}
			}
		}
		typ, size, err := readHeader(r.cr)
		if err != nil {
			return r.idleError(err)
		}
		if size > r.maxMessage {
			return fatalf(codeProgramLimitExceeded, "message of %d bytes exceeds pgtenant's max_message_size of %d bytes", size, r.maxMessage)
		}
		r.stats.fromClient += int64(size)
		if typ == 'Q' || typ == 'E' {
			r.stats.statements++
		}
		var msg []byte // the whole message, when the guard needs to read it
		var substitute []byte
		peeked, resets, deallocates := false, false, false
		r.changes, r.deallocs = false, false
		if r.guard != nil && (typ == 'Q' || typ == 'P' || typ == 'F') {
			if why, _ := r.unsafeLexing.Load().(string); why != "" {
				return fatalf(codeInsufficientPrivilege, "pgtenant cannot guard this session's statements: %s", why)
			}
			if msg, peeked, err = r.wholeMessage(size); err != nil {
				return err
			}
			if substitute, resets, deallocates, err = r.check(msg); err != nil {
				return err
			}
			// DEALLOCATE ALL drops the prepared context statements too.
			r.changes = r.changes || deallocates
			r.deallocs = deallocates
		}
		if copyIn && typ != 'd' && typ != 'c' && typ != 'f' && typ != 'S' && typ != 'H' {
			return fatalf(codeProtocolViolation, "unexpected message type %q during COPY from stdin", typ)
		}
		if r.pooled() {
			if typ == 'X' {
				// The pooled connection is not the client's to terminate.
				return errClientTerminated
			}
			// Only a unit's first message may take a new connection: anything
			// else with none held means pgtenant lost track of the stream.
			startsUnit := typ == 'Q' || typ == 'F' || !inGroup && !copyIn && (typ == 'P' || typ == 'B' || typ == 'E' || typ == 'D' || typ == 'C' || typ == 'S')
			held, err := r.leaseFor(typ, startsUnit)
			if err != nil {
				return err
			}
			if held && r.changes {
				// The connection's committed settings may not stay this client's.
				r.sc.settled = ""
			}
			if !held {
				// Nothing to flush, no COPY in progress: PostgreSQL would ignore it too.
				if peeked || msg == nil {
					if _, err := r.cr.Discard(size); err != nil {
						return err
					}
				}
				continue
			}
		}
		switch typ {
		case 'Q', 'F':
			if inGroup {
				// PostgreSQL skips it if the group failed, and runs it otherwise:
				// which one happened is not visible in the replies, so pgtenant
				// cannot relay it faithfully. No driver sends this.
				return fatalf(codeProtocolViolation, "pgtenant does not relay a Query or FunctionCall inside an extended-protocol batch: send Sync first")
			}
			if err := r.startUnit(typ, size, msg, substitute != nil, true); err != nil {
				return err
			}
			afterExec, groupEndedBlind, blindFrom = typ == 'Q', false, 0
		case 'P', 'B', 'E', 'D', 'C':
			if !inGroup {
				inGroup = true
				if err := r.startUnit(typ, size, msg, substitute != nil, false); err != nil {
					return err
				}
			}
			if typ == 'E' {
				afterExec, groupEndedBlind, blindFrom = true, false, 0
			}
		case 'S':
			if copyIn {
				// Ignored by the server while it reads copy data, but answered
				// if the COPY has failed meanwhile, with a ReadyForQuery nobody
				// waits for. In transaction mode that reply could reach whoever
				// uses the connection next: it is closed after this lease.
				if r.pooled() {
					r.leaseMu.Lock()
					r.broken = true
					r.leaseMu.Unlock()
				}
				break
			}
			if !inGroup {
				// A lone Sync still yields a ReadyForQuery.
				seq := r.queueUnit(unit{})
				if afterExec {
					if blindFrom == 0 {
						blindFrom = seq
					}
					blindTo = seq
				}
			} else if afterExec {
				groupEndedBlind = true
			}
			inGroup = false
		case 'd', 'c', 'f':
			if afterExec {
				inCopy, err := r.upstreamInCopy()
				if err != nil {
					return err
				}
				if inCopy {
					// The server is in COPY FROM STDIN: the Syncs since the command
					// were ignored. The group goes on; the lone-Sync units are void.
					if groupEndedBlind {
						inGroup = true
					}
					if blindFrom != 0 {
						r.voidUnits(blindFrom, blindTo)
					}
					copyIn = true
				}
				// Otherwise a stray copy message, which the server ignores.
				afterExec, groupEndedBlind, blindFrom = false, false, 0
			}
			if typ != 'd' {
				// CopyDone or CopyFail ends the COPY on the server: whatever
				// comes next is not copy data, even before its ReadyForQuery.
				copyIn = false
				r.copyInUpstream.Store(false)
			}
		case 'X':
			if err := forward(r.uw, r.cr, size); err != nil {
				return err
			}
			_ = r.uw.Flush()
			return errClientTerminated
		}
		if r.pooled() && deallocates && typ == 'Q' {
			// A Parse of DEALLOCATE ALL runs nothing: its Bind does
			// (relayBind), perhaps on another connection.
			r.deallocateAll()
		}
		if r.pooled() && substitute == nil && (typ == 'P' || typ == 'B' || typ == 'D' || typ == 'C') {
			if err := r.relayStatementMessage(typ, size, msg, peeked); err != nil {
				return err
			}
			continue
		}
		if r.pooled() && typ == 'P' {
			r.stmts.record(replyEntry{seq: r.seq}) // the refusal's failing Parse
		}
		if msg != nil {
			out := msg
			if substitute != nil {
				out = substitute
			}
			if r.pooled() && typ == 'Q' {
				r.forgetUnnamed()
			}
			if _, err := r.uw.Write(out); err != nil {
				return err
			}
			if peeked {
				if _, err := r.cr.Discard(len(msg)); err != nil {
					return err
				}
			}
			if resets {
				// Re-assert right behind RESET ALL / DISCARD ALL, in a round trip of
				// its own: committed before the client's next statement, so that
				// not even a BEGIN; ROLLBACK can take it back. Nothing waits for it;
				// if it fails, the session ends.
				r.queueUnit(unit{standalone: true, afterReset: true})
				r.stats.assertions.Add(1)
				if _, err := r.uw.Write(r.assertion.standalone); err != nil {
					return err
				}
			}
			continue
		}
		if err := forward(r.uw, r.cr, size); err != nil {
			return err
		}
	}
}

// startUnit decides whether and how to assert the tenant ahead of a unit.
// msg is the whole message when already read, refused when the guard replaced it.
func (r *relay) startUnit(typ byte, size int, msg []byte, refused, simple bool) error {
	// The text is only looked at when an assertion may be due: not on the
	// common path of a statement inside a transaction block.
	var text []byte
	if !refused && r.mayNeedAssertion() {
		if msg != nil {
			text = statementText(msg)
		} else {
			text = peekStatementText(r.cr, typ, size)
		}
	}
	// While replies are outstanding the upstream's transaction state is not
	// known. For an extended group that is fine: an assertion in an aborted
	// block fails like the client's own statement would, and the group is
	// skipped. A simple Query cannot be skipped that way, and a ROLLBACK must
	// not be failed by an assertion, so those wait for the exact state.
	if r.pending.Load() > 0 && (simple || text != nil && isTransactionEnd(text)) {
		if err := r.waitDrained(); err != nil {
			return err
		}
	}
	if !r.expires.IsZero() && r.mayNeedAssertion() && time.Now().After(r.expires) {
		// The transaction in progress may finish; no new one starts.
		if err := r.waitDrained(); err != nil {
			return err
		}
		if byte(r.txStatus.Load()) == 'I' {
			return fatalf(codeInvalidAuthorization, "token expired")
		}
	}
	if text != nil && r.mayNeedAssertion() && !pipelineSafe(text) {
		// Not after an unsynced Execute: assert in a round trip of its own.
		if err := r.waitDrained(); err != nil {
			return err
		}
		if r.mayNeedAssertion() {
			if err := r.assertStandalone(); err != nil {
				return err
			}
		}
		r.queueUnit(unit{simple: simple})
		return nil
	}
	need := r.mayNeedAssertion()
	short := need && r.pooled() && r.sc.settled == r.pctx.key
	r.queueUnit(unit{assert: need, short: short, simple: simple})
	if need {
		r.stats.assertions.Add(1)
		r.obs.Transaction(r.tenant)
		r.obs.Statements(r.tenant, r.stats.statements)
		r.stats.statements = 0
		inline := r.assertion.inline
		if short {
			inline = r.pctx.settled.inline
		}
		if _, err := r.uw.Write(inline); err != nil {
			return err
		}
	}
	return nil
}

// upstreamInCopy tells whether the upstream is reading COPY FROM STDIN data,
// as the response side learns from CopyInResponse. A client may send copy data
// before that reply arrives (pgx does), so this waits until the reply comes
// or every unit sent so far has completed, which means no COPY is waiting.
func (r *relay) upstreamInCopy() (bool, error) {
	if err := r.flushUp(); err != nil {
		return false, err
	}
	for {
		if r.copyInUpstream.Load() {
			return true, nil
		}
		if r.pending.Load() == 0 {
			return false, nil
		}
		select {
		case <-r.copySignal:
		case <-r.done:
			return false, io.ErrUnexpectedEOF
		}
	}
}

// armIdleTimeout sets the client read deadline for the wait ahead: the idle
// timeout outside a transaction, the idle-in-transaction timeout inside one,
// none while replies are outstanding (the client is waiting for us). Both
// sides call it: the request side before it waits for the client, the
// response side when the last reply is in.
func (r *relay) armIdleTimeout() {
	if r.idleTimeout == 0 && r.idleInTxTimeout == 0 {
		return
	}
	for {
		pending := r.pending.Load()
		var d time.Duration
		if pending == 0 {
			if byte(r.txStatus.Load()) == 'I' {
				d = r.idleTimeout
			} else {
				d = r.idleInTxTimeout
			}
		}
		if d > 0 {
			_ = r.client.SetReadDeadline(time.Now().Add(d))
		} else {
			_ = r.client.SetReadDeadline(time.Time{})
		}
		if r.pending.Load() == pending {
			return // nothing moved while the deadline was set
		}
	}
}

// armUpstreamTimeout sets the upstream read deadline while replies are owed
// and clears it when none are. The request side calls it after sending, the
// response side at every message and when the last reply is in.
func (r *relay) armUpstreamTimeout(conn net.Conn) {
	if r.upstreamTimeout == 0 {
		return
	}
	for {
		pending := r.pending.Load()
		if pending > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(r.upstreamTimeout))
		} else {
			_ = conn.SetReadDeadline(time.Time{})
		}
		if r.pending.Load() == pending {
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
	if w.r.pending.Load() > 0 {
		// Replies are owed, so the reply side is the writer and rconn is
		// the connection it reads (in transaction mode: attached).
		w.r.armUpstreamTimeout(w.r.rconn)
	}
	return n, err
}

// flushUpstream sends what the request side has buffered. In transaction
// mode it also ends the write section, which may give the connection back.
func (r *relay) flushUpstream() error {
	if r.pooled() {
		if !r.writing {
			return nil
		}
		defer r.endWrite()
	}
	if err := r.uw.Flush(); err != nil {
		return err
	}
	r.armUpstreamTimeout(r.wconn)
	return nil
}

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
	if r.idleTimeout == 0 && r.idleInTxTimeout == 0 || !errors.As(err, &ne) || !ne.Timeout() {
		return err
	}
	if byte(r.txStatus.Load()) == 'I' {
		return fatalf(codeIdleSessionTimeout, "terminating connection due to idle-session timeout")
	}
	return fatalf(codeIdleInTransactionTimeout, "terminating connection due to idle-in-transaction timeout")
}

// mayNeedAssertion reports whether the upstream may be outside a
// transaction block when the next unit arrives.
func (r *relay) mayNeedAssertion() bool {
	if r.pending.Load() > 0 {
		return true
	}
	s := byte(r.txStatus.Load())
	return s != 'T' && s != 'E'
}

// waitDrained sends what is buffered and waits until every unit sent so far
// has its ReadyForQuery, so that the transaction status is exact.
func (r *relay) waitDrained() error {
	if err := r.flushUp(); err != nil {
		return err
	}
	for r.pending.Load() > 0 {
		select {
		case <-r.drained:
		case <-r.done:
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}

// queueUnit tells the response side about a unit before its bytes go out,
// and returns the unit's sequence number.
func (r *relay) queueUnit(u unit) uint64 {
	r.seq++
	u.seq = r.seq
	if r.pooled() {
		r.leaseMu.Lock()
		r.pending.Add(1)
		r.attachLocked()
		r.leaseMu.Unlock()
	} else {
		r.pending.Add(1)
	}
	select {
	case r.units <- u:
	default:
		// Full: the response side is waiting for replies to units still in our
		// write buffer. Send them before blocking, or both sides would wait.
		_ = r.flushUp()
		select {
		case r.units <- u:
		case <-r.done:
		}
	}
	return u.seq
}

// voidUnits marks queued units that will get no ReadyForQuery (lone Syncs
// the server ignored during COPY FROM STDIN).
func (r *relay) voidUnits(from, to uint64) {
	r.voidMu.Lock()
	r.void = append(r.void, [2]uint64{from, to})
	r.voidCount.Store(int32(len(r.void)))
	r.voidMu.Unlock()
	r.pending.Add(-int32(to - from + 1))
}

// isVoid reports whether the unit with seq was voided, forgetting ranges
// that are behind it.
func (r *relay) isVoid(seq uint64) bool {
	if r.voidCount.Load() == 0 {
		return false
	}
	r.voidMu.Lock()
	defer r.voidMu.Unlock()
	void := false
	kept := r.void[:0]
	for _, rg := range r.void {
		if seq >= rg[0] && seq <= rg[1] {
			void = true
		}
		if seq < rg[1] {
			kept = append(kept, rg)
		}
	}
	r.void = kept
	r.voidCount.Store(int32(len(r.void)))
	return void
}

// assertStandalone asserts the tenant in a round trip of its own and waits
// for the result, for statements that cannot follow an unsynced Execute.
func (r *relay) assertStandalone() error {
	r.queueUnit(unit{standalone: true})
	r.stats.assertions.Add(1)
	r.obs.Transaction(r.tenant)
	if _, err := r.uw.Write(r.assertion.standalone); err != nil {
		return err
	}
	if err := r.uw.Flush(); err != nil {
		return err
	}
	select {
	case pgErr := <-r.standaloneDone:
		if pgErr != nil {
			return assertionFailed(pgErr)
		}
		return nil
	case <-r.done:
		return io.ErrUnexpectedEOF
	}
}

func assertionFailed(upstream *pgconn.PgError) *pgconn.PgError {
	return &pgconn.PgError{
		Severity: severityFatal,
		Code:     upstream.Code,
		Message:  "pgtenant could not assert the tenant context: " + upstream.Message,
		Detail:   "The statement was not run.",
	}
}

// parseComplete answers a Parse that pgtenant served from a connection's cache.
var parseComplete = []byte{'1', 0, 0, 0, 4}

// errDraining ends a session when the server shuts down.
var errDraining = errors.New("server shutting down")

// errUpstreamLost reports that the upstream connection ended on its own.
var errUpstreamLost = errors.New("upstream connection lost")

// upstreamToClient is the response side. It hides the replies to the relay's
// own assertions and forwards everything else as bytes.
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
		if err := r.reply(typ, size); err != nil {
			return err
		}
	}
}

// upstreamReadError names why reading from the upstream failed.
func (r *relay) upstreamReadError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return errUpstreamLost
	}
	var ne net.Error
	if r.upstreamTimeout > 0 && errors.As(err, &ne) && ne.Timeout() {
		return fatalf(codeConnectionFailure, "pgtenant: no reply from the upstream server within upstream_timeout (%s)", r.upstreamTimeout)
	}
	return err
}

// respState is where the response side is in the reply stream.
type respState struct {
	cur           unit
	inUnit        bool
	assertLeft    int             // assertion replies still to hide
	assertReplies []byte          // the types of the assertion's replies
	standaloneErr *pgconn.PgError // failure of the current standalone assertion
	failed        bool            // an ErrorResponse came in the current unit
	z             [6]byte         // the ReadyForQuery being handled
}

// reply handles one upstream message whose header is at the head of r.ur:
// hides the replies to the relay's own messages and forwards everything
// else as bytes.
func (r *relay) reply(typ byte, size int) error {
	if r.knobs != nil && r.knobs.OnReply != nil {
		r.knobs.OnReply(typ)
	}
	r.armUpstreamTimeout(r.rconn)
	r.stats.toClient += int64(size)
	switch typ {
	case 'A', 'N', 'S':
		if typ == 'S' && r.resp.assertLeft > 0 && r.pooled() {
			// A setting the assertion re-applied: the client knows it already.
			if _, err := r.ur.Discard(size); err != nil {
				return err
			}
			return nil
		}
		// NotificationResponse, NoticeResponse, ParameterStatus may come at any time.
		if typ == 'S' && r.guard != nil {
			r.watchParameter(size)
		}
		if err := forward(r.cw, r.ur, size); err != nil {
			return err
		}
		return nil
	}
	if !r.resp.inUnit {
		var found bool
		switch r.resp.cur, found = r.nextUnit(); {
		case found:
			r.resp.inUnit = true
			r.resp.failed = false
			r.resp.assertLeft = 0
			if r.resp.cur.assert || r.resp.cur.standalone {
				r.resp.assertReplies = r.assertion.replies
				if r.resp.cur.short {
					r.resp.assertReplies = r.pctx.settled.replies
				}
				r.resp.assertLeft = len(r.resp.assertReplies)
			}
		default:
			// Nothing outstanding: an asynchronous error such as a FATAL on
			// shutdown. Pass it on. Anything else means the reply stream and
			// the requests no longer match: in transaction mode the
			// connection would carry that to the next client, so stop here.
			if r.pooled() && typ != 'E' {
				return fatalf(codeProtocolViolation, "pgtenant: unexpected reply %q from the upstream with nothing outstanding", typ)
			}
			if typ == 'E' {
				r.noteFatal(size)
			}
			if err := forward(r.cw, r.ur, size); err != nil {
				return err
			}
			return nil
		}
	}
	if typ == 'E' {
		r.resp.failed = true
	}
	if r.resp.assertLeft > 0 {
		if typ == r.resp.assertReplies[len(r.resp.assertReplies)-r.resp.assertLeft] && (typ != 'C' || r.isSetTag(size)) {
			r.resp.assertLeft--
			if _, err := r.ur.Discard(size); err != nil {
				return err
			}
			return nil
		}
		if typ != 'E' {
			return fatalf(codeProtocolViolation, "pgtenant: unexpected reply %q to the tenant assertion", typ)
		}
		r.resp.assertLeft = 0
		msg, err := readMessage(r.ur, size)
		if err != nil {
			return err
		}
		if r.pooled() {
			r.stmts.dropUnit(r.resp.cur.seq, r.rsc)
		}
		upstreamErr := decodeError(msg)
		if r.pooled() {
			// A connection that refused the context is not handed out again.
			r.rsc.dead.Store(true)
		}
		switch {
		case r.resp.cur.standalone:
			r.resp.standaloneErr = upstreamErr
		case r.resp.cur.simple:
			// The server skipped the client's Query and waits for a Sync that
			// will never come: end the session rather than misreport.
			return assertionFailed(upstreamErr)
		case upstreamErr.Severity == severityFatal || upstreamErr.Severity == "PANIC":
			r.sawFatal = true
			return assertionFailed(upstreamErr)
		default:
			// The server skips the client's group until its Sync and then
			// sends ReadyForQuery: report the failure in its place.
			e := assertionFailed(upstreamErr)
			e.Severity = severityError
			if err := r.writeClient(errorResponse(e)); err != nil {
				return err
			}
		}
		return nil
	}
	if r.pooled() {
		switch typ {
		case '1', '3':
			switch r.stmts.reply() {
			case replyHide:
				if _, err := r.ur.Discard(size); err != nil {
					return err
				}
				return nil
			case replyAsParse:
				if _, err := r.ur.Discard(size); err != nil {
					return err
				}
				if _, err := r.cw.Write(parseComplete); err != nil {
					return err
				}
				return nil
			}
		case 'E':
			r.stmts.dropUnit(r.resp.cur.seq, r.rsc)
		}
	}
	if typ == 'E' && r.refusals.outstanding.Load() > 0 {
		msg, err := readMessage(r.ur, size)
		if err != nil {
			return err
		}
		upstreamErr := decodeError(msg)
		if upstreamErr.Severity == severityFatal || upstreamErr.Severity == "PANIC" {
			r.sawFatal = true
		}
		r.obs.Error(r.tenant)
		if refusal := r.refusals.match(upstreamErr); refusal != nil {
			if err := r.writeClient(errorResponse(refusal)); err != nil {
				return err
			}
		} else if _, err := r.cw.Write(msg); err != nil {
			return err
		}
		return nil
	}
	if typ == 'G' || typ == 'W' {
		// CopyInResponse, CopyBothResponse: the upstream now reads copy data.
		r.copyInUpstream.Store(true)
		r.signalCopy()
	}
	if typ == 'Z' {
		if size != 6 {
			return fatalf(codeProtocolViolation, "pgtenant: invalid ReadyForQuery from upstream")
		}
		// Read it out before the pending count drops: in transaction mode
		// that may give the connection to another client.
		z := r.resp.z[:] // in the relay, not on the stack: it would escape to the heap
		if _, err := io.ReadFull(r.ur, z); err != nil {
			return err
		}
		status := z[5]
		r.copyInUpstream.Store(false)
		r.txStatus.Store(uint32(status))
		cur, standaloneErr := r.resp.cur, r.resp.standaloneErr
		r.resp.inUnit, r.resp.standaloneErr = false, nil
		if r.pooled() {
			r.stmts.dropUnit(cur.seq, r.rsc)
			r.stmts.unitEnded(cur.seq, r.resp.failed)
			if !cur.standalone {
				// The client gets everything before the lease can end: the next
				// lease's reader may write to it.
				if _, err := r.cw.Write(z); err != nil {
					return err
				}
				if err := r.cw.Flush(); err != nil {
					return err
				}
			}
			r.leaseMu.Lock()
		}
		left := r.pending.Add(-1)
		if left == 0 {
			select {
			case r.drained <- struct{}{}:
			default:
			}
			r.armIdleTimeout()
			r.armUpstreamTimeout(r.rconn)
		}
		if r.pooled() {
			if left == 0 && status == 'I' {
				// From here on another connection's reader may serve this relay:
				// nothing below touches the response side's state.
				r.detachLocked()
			}
			r.leaseMu.Unlock()
		}
		r.signalCopy()
		if r.draining.Load() && left == 0 && status == 'I' && !cur.standalone {
			// Shutting down and outside a transaction: this is the moment.
			if !r.pooled() {
				if _, err := r.cw.Write(z); err != nil {
					return err
				}
			}
			return errDraining
		}
		if cur.standalone {
			if cur.afterReset {
				if standaloneErr != nil {
					return assertionFailed(standaloneErr)
				}
				return nil
			}
			r.standaloneDone <- standaloneErr
			return nil
		}
		if !r.pooled() {
			if _, err := r.cw.Write(z); err != nil {
				return err
			}
		}
		return nil
	} else if r.resp.cur.standalone {
		if _, err := r.ur.Discard(size); err != nil {
			return err
		}
		return nil
	}
	if typ == 'E' {
		r.noteFatal(size)
		r.obs.Error(r.tenant)
	}
	return forward(r.cw, r.ur, size)
}

// isSetTag reports whether the CommandComplete at the head of the upstream
// reader is the assertion's ("SET"), not one the client provoked.
func (r *relay) isSetTag(size int) bool {
	msg, err := r.ur.Peek(min(size, 16))
	return err == nil && size == 9 && string(msg[5:9]) == "SET\x00"
}

// watchParameter notes a ParameterStatus that would make the upstream read
// SQL differently from the guard (standard_conforming_strings off, an
// encoding that is not ASCII-safe): however it came about, no statement is
// relayed after that.
func (r *relay) watchParameter(size int) {
	if size > r.ur.Size() {
		return
	}
	msg, err := r.ur.Peek(size)
	if err != nil {
		return
	}
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
}

func (r *relay) signalCopy() {
	select {
	case r.copySignal <- struct{}{}:
	default:
	}
}

// nextUnit takes the next queued unit that is not void, if any.
func (r *relay) nextUnit() (unit, bool) {
	for {
		select {
		case u := <-r.units:
			if !r.isVoid(u.seq) {
				return u, true
			}
		default:
			return unit{}, false
		}
	}
}

// noteFatal records whether the ErrorResponse at the head of the upstream
// reader is FATAL or PANIC: the upstream closes after it, and the client
// must not get a second error for that.
func (r *relay) noteFatal(size int) {
	if size > r.ur.Size() {
		return
	}
	msg, err := r.ur.Peek(size)
	if err != nil {
		return
	}
	// Fields: a type byte and a NUL-terminated value each; V is the
	// unlocalized severity.
	body := msg[5:]
	for len(body) > 1 {
		field := body[0]
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			return
		}
		value := string(body[1 : 1+end])
		if field == 'V' || field == 'S' {
			if value == severityFatal || value == "PANIC" {
				r.sawFatal = true
			}
			if field == 'V' {
				return
			}
		}
		body = body[2+end:]
	}
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

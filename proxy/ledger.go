package proxy

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// The ledger is the one record of what the upstream still owes a session:
// every message sent upstream (the client's, rewritten or not, and
// pgtenant's own), in order, until the server has answered it or passed
// over it, and the server's state as its replies show it. The request side
// writes to it as it sends; the reply side reads each reply against it.
//
// It models how PostgreSQL reads a connection (postgres.c, copyfromparse.c):
//   - normal: each message is answered in turn; Flush, and copy messages
//     outside a COPY, get no answer;
//   - skip: after an error in an extended-protocol message everything up to
//     the next Sync is ignored, a Query or FunctionCall included;
//   - copy in: during COPY FROM STDIN, CopyData is consumed, Flush and Sync
//     are ignored, CopyDone and CopyFail end it, any other message is an
//     error (08P01) that also ends it;
//   - copy out: the server sends data and reads nothing until it is done.
//
// So nothing has to be guessed or waited for on the request side: which
// Sync gets a ReadyForQuery, whether a Query sent inside an unsynced group
// runs or is skipped, which replies are pgtenant's own to hide, all follow
// from the replies in order. The one case the replies cannot settle is a
// COPY that fails on its data after Syncs were sent inside it (which of them
// the server read during the COPY is not shown): that session ends (fail
// closed).
//
// A ledger belongs to one relay. mu guards everything but pending, which
// the request side reads without it; lock order: relay.leaseMu, then mu.

// origin says who sent a message and so what happens to its replies.
type origin uint8

const (
	fromClient        origin = iota // the client's (perhaps under other names): replies are relayed
	fromAssert                      // pgtenant's inline assertion ahead of a group: replies hidden
	fromAssertSimple                // the same ahead of a Query or FunctionCall
	fromStandalone                  // pgtenant's standalone assertion, its Sync included: all hidden
	fromReassert                    // the same behind RESET ALL / DISCARD ALL: nobody waits for it
	fromReadback                    // the client's settings read back (carried.go): rows taken, the rest hidden
	fromPrepare                     // a stand-in prepared ahead of a DEALLOCATE, with a Sync: hidden
	fromPrepareInline               // the same inside the client's group: hidden, but an error is the client's
	fromOwn                         // other messages of pgtenant's with no reply (Flush)
)

// own reports whether replies to messages of this origin are pgtenant's.
func (o origin) own() bool { return o != fromClient }

// sentMsg is one message sent upstream.
type sentMsg struct {
	unit    uint64 // the unit it belongs to (a stretch ending in Query, FunctionCall or Sync)
	typ     byte
	kind    byte // Describe and Close: 'S' statement or 'P' portal
	origin  origin
	mayCopy bool   // a Query or Execute that may start COPY FROM STDIN
	name    string // transaction mode: the client's name of the statement it names upstream otherwise
	audit   uint64 // a Query or Execute the audit log follows: its entry (audit.go)
}

type serverState uint8

const (
	stateNormal serverState = iota
	stateSkip
	stateCopyIn
	stateCopyOut
)

// replyResult says what one reply answers.
type replyResult struct {
	origin  origin // who sent the message it answers
	unit    uint64
	name    string // sentMsg.name of that message
	msgType byte   // and its type
	audit   uint64 // and its sentMsg.audit
	// endsUnit: a ReadyForQuery that ends unit; failed: an error came in it.
	endsUnit, failed bool
	// async: a reply to nothing outstanding (an ErrorResponse the server
	// sends before it closes). outOfStep: a reply that cannot be placed,
	// or a COPY outcome the replies do not settle (see above).
	async, outOfStep bool
	// lost: an error the ledger cannot follow (see lostLocked); the
	// session ends after it.
	lost bool
}

type ledger struct {
	pending atomic.Int32 // units begun and not ended: written under mu
	silentN atomic.Int32 // len(silent), read without mu
	risk    atomic.Bool  // copyRisk, read without mu
	// queries counts Query messages sent and not yet passed over or ended by
	// their ReadyForQuery (queryAnswered, once the reply side has settled it).
	queries atomic.Int32
	// zOpen: a ReadyForQuery was placed and its unit not yet counted ended
	// (unitDone): meanwhile nothing is quiet, or a waiter could see the
	// server idle with the old transaction status.
	zOpen    atomic.Bool
	nextUnit uint64 // under mu

	// The rest is only a working client's: a parked one, which has nothing
	// outstanding, gives it back with its relayWork (relaywork.go).
	*ledgerWork
}

type ledgerWork struct {
	mu      sync.Mutex
	q       *sentQueue // sent, not yet taken up by the server: q.msgs[head:]; nil when empty
	head    int
	cur     sentMsg // the message whose replies are arriving
	hasCur  bool
	sawDesc bool // cur is a Describe of a statement and its ParameterDescription came
	state   serverState
	// copyData: copy data was read in the current COPY; uncertainSyncs
	// counts Syncs passed over after it, which the server may instead have
	// read after the COPY failed on its data (then it answers them).
	copyData       bool
	uncertainSyncs int
	// mayCopy counts messages sent or being answered that may start a COPY.
	mayCopy    int
	unitFailed bool
	// silent lists units whose end the server passed over (a Sync during a
	// COPY, a Query skipped after an error): they end with no ReadyForQuery.
	// The reply side settles them (takeSilent) before its next reply.
	silent []uint64
}

// begin starts a unit and returns its number.
func (l *ledger) begin() uint64 {
	l.mu.Lock()
	l.nextUnit++
	u := l.nextUnit
	l.pending.Add(1)
	l.mu.Unlock()
	return u
}

// sendMsgs records the messages in b (whole, back to back) as sent in unit.
func (l *ledger) sendMsgs(b []byte, unit uint64, o origin) {
	l.mu.Lock()
	for len(b) >= 5 {
		m := sentMsg{unit: unit, typ: b[0], origin: o}
		if (m.typ == 'D' || m.typ == 'C') && len(b) > 5 {
			m.kind = b[5]
		}
		l.appendLocked(m)
		b = b[1+int(binary.BigEndian.Uint32(b[1:5])):]
	}
	l.settleLocked()
	l.mu.Unlock()
}

// send records one message as sent.
func (l *ledger) send(m sentMsg) {
	l.mu.Lock()
	l.appendLocked(m)
	l.settleLocked()
	l.mu.Unlock()
}

// sentQueue is a ledger's queue, taken from queuePool while anything is
// outstanding: an idle client holds none.
type sentQueue struct{ msgs []sentMsg }

var queuePool = sync.Pool{New: func() any { return &sentQueue{msgs: make([]sentMsg, 0, 32)} }}

func (l *ledger) appendLocked(m sentMsg) {
	if l.q == nil {
		l.q = queuePool.Get().(*sentQueue)
	}
	if l.head > 0 && l.head == len(l.q.msgs) {
		l.q.msgs, l.head = l.q.msgs[:0], 0
	}
	if m.mayCopy {
		l.mayCopy++
	}
	if m.typ == 'Q' {
		l.queries.Add(1)
	}
	l.q.msgs = append(l.q.msgs, m)
}

// queued returns the messages not yet taken up by the server.
func (l *ledger) queued() []sentMsg {
	if l.q == nil {
		return nil
	}
	return l.q.msgs[l.head:]
}

// nameLast gives the message sent last the client's statement name.
func (l *ledger) nameLast(name string) {
	l.mu.Lock()
	if q := l.queued(); len(q) > 0 {
		q[len(q)-1].name = name
	}
	l.mu.Unlock()
}

// settleLocked passes over the messages the server reads without answering
// in its current state. Every change ends with it.
func (l *ledger) settleLocked() {
	l.passOverUnansweredLocked()
	l.risk.Store(l.state == stateCopyIn || l.mayCopy > 0)
}

func (l *ledger) passOverUnansweredLocked() {
	for q := l.queued(); len(q) > 0; q = q[1:] {
		m := q[0]
		switch l.state {
		case stateCopyOut:
			return
		case stateSkip:
			if m.typ == 'S' {
				return
			}
		case stateCopyIn:
			switch m.typ {
			case 'd':
				l.copyData = true
			case 'H':
			case 'S':
				if l.copyData {
					l.uncertainSyncs++
				}
			default:
				return
			}
		default:
			if l.hasCur {
				return // still busy with cur: it reads nothing more yet
			}
			switch m.typ {
			case 'H', 'd', 'c', 'f':
			default:
				return
			}
		}
		l.head++
		l.passOverLocked(m)
	}
}

// passOverLocked forgets a message the server read without answering; a
// unit whose end it was ends silently.
func (l *ledger) passOverLocked(m sentMsg) {
	if m.mayCopy {
		l.mayCopy--
	}
	if m.typ == 'Q' {
		l.queries.Add(-1)
	}
	switch m.typ {
	case 'Q', 'F', 'S':
		l.silent = append(l.silent, m.unit)
		l.silentN.Store(int32(len(l.silent)))
		l.pending.Add(-1)
	}
}

// takeSilent hands the reply side the units that ended silently, oldest
// first, into buf.
func (l *ledger) takeSilent(buf []uint64) []uint64 {
	l.mu.Lock()
	buf = append(buf, l.silent...)
	l.silent = l.silent[:0]
	l.silentN.Store(0)
	l.mu.Unlock()
	return buf
}

// queryAnswered counts a Query's ReadyForQuery handled.
func (l *ledger) queryAnswered() { l.queries.Add(-1) }

// unitDone counts the end of a unit whose ReadyForQuery the reply side has
// passed on, and returns how many are still pending. It is separate from
// reply so that the client gets the ReadyForQuery before a transaction-mode
// lease can end.
func (l *ledger) unitDone() int32 {
	left := l.pending.Add(-1)
	l.zOpen.Store(false)
	return left
}

// reply places one reply (not NoticeResponse, ParameterStatus or
// NotificationResponse, which may come at any time). code is the SQLSTATE
// of an ErrorResponse during COPY FROM STDIN (see inCopyIn), else ignored.
func (l *ledger) reply(typ byte, code string) replyResult {
	l.mu.Lock()
	res := l.replyLocked(typ, code)
	l.settleLocked() // what the server reads next without answering
	l.mu.Unlock()
	return res
}

func (l *ledger) replyLocked(typ byte, code string) replyResult {
	switch l.state {
	case stateCopyIn:
		return l.copyInReplyLocked(typ, code)
	case stateCopyOut:
		return l.copyOutReplyLocked(typ)
	}
	if !l.hasCur {
		q := l.queued()
		if len(q) == 0 {
			return replyResult{async: typ == 'E', outOfStep: typ != 'E'}
		}
		l.cur, l.hasCur, l.sawDesc = q[0], true, false
		l.head++
	}
	m := l.cur
	res := replyResult{origin: m.origin, unit: m.unit, name: m.name, msgType: m.typ, audit: m.audit}
	switch m.typ {
	case 'Q', 'F', 'S':
		switch {
		case typ == 'Z':
			l.doneLocked()
			l.zOpen.Store(true)
			res.endsUnit, res.failed = true, l.unitFailed
			l.unitFailed = false
			l.state = stateNormal
			return res
		case typ == 'E':
			// A Sync too: it commits the implicit transaction, and the
			// commit can fail (a deferred constraint). It starts no skip.
			l.unitFailed = true
		case m.typ == 'S':
			return l.stepLocked(res)
		case m.typ == 'Q' && (typ == 'G' || typ == 'W'):
			l.startCopyLocked(stateCopyIn)
		case m.typ == 'Q' && typ == 'H':
			l.startCopyLocked(stateCopyOut)
		case m.typ == 'F' && typ != 'V':
			return l.stepLocked(res)
		}
		return res
	}
	// An extended-protocol message.
	if typ == 'E' {
		l.doneLocked()
		l.unitFailed = true
		l.state = stateSkip
		l.settleLocked()
		return res
	}
	done := false
	switch m.typ {
	case 'P':
		done = typ == '1'
	case 'B':
		done = typ == '2'
	case 'C':
		done = typ == '3'
	case 'D':
		switch {
		case typ == 't' && m.kind == 'S' && !l.sawDesc:
			l.sawDesc = true
			return res
		case typ == 'T' || typ == 'n':
			done = m.kind != 'S' || l.sawDesc
		}
	case 'E':
		switch typ {
		case 'D':
			return res
		case 'C', 'I', 's':
			done = true
		case 'G', 'W':
			l.startCopyLocked(stateCopyIn)
			return res
		case 'H':
			l.startCopyLocked(stateCopyOut)
			return res
		}
	}
	if !done {
		return l.stepLocked(res)
	}
	l.doneLocked()
	return res
}

// stepLocked reports a reply that does not fit the message it should answer.
func (l *ledger) stepLocked(res replyResult) replyResult {
	res.outOfStep = true
	return res
}

// lostLocked reports a reply the ledger cannot place for lack of a sign in
// the replies (Syncs among the data of a COPY that failed on its data).
func (l *ledger) lostLocked(res replyResult) replyResult {
	res.lost = true
	return res
}

// dropsSync reports whether a Sync the client sends now would reach the
// server among COPY data: it is ignored there, unless the COPY failed on
// that data meanwhile, and then its answer could not be placed. pgtenant
// does not send it (ignoring it as the COPY does).
func (l *ledger) dropsSync() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Whatever is still queued during a COPY ends it (CopyDone, CopyFail or
	// another message): a Sync sent behind it is not among the data.
	return l.state == stateCopyIn && l.copyData && len(l.queued()) == 0
}

// doneLocked ends the current message's replies.
func (l *ledger) doneLocked() {
	if l.cur.mayCopy {
		l.mayCopy--
	}
	l.hasCur = false
	l.cur = sentMsg{}
}

func (l *ledger) startCopyLocked(s serverState) {
	l.state = s
	l.copyData, l.uncertainSyncs = false, 0
	l.settleLocked()
}

// copyInReplyLocked places a reply while the server reads COPY data: the
// COPY's end (CommandComplete after CopyDone) or an error.
func (l *ledger) copyInReplyLocked(typ byte, code string) replyResult {
	res := replyResult{origin: l.cur.origin, unit: l.cur.unit, msgType: l.cur.typ, audit: l.cur.audit}
	var next *sentMsg // what ended the COPY, if the server has read it
	if q := l.queued(); len(q) > 0 {
		next = &q[0]
	}
	switch typ {
	case 'C':
		if next == nil || next.typ != 'c' {
			return l.stepLocked(res)
		}
		l.head++
	case 'E':
		l.unitFailed = true
		consumed := false // the error is the message's own: it was read during the COPY
		if next != nil {
			switch next.typ {
			case 'c':
				consumed = true // read, or ignored after an earlier error: the same
			case 'f':
				consumed = true
				if code != codeQueryCanceled && l.uncertainSyncs > 0 {
					return l.lostLocked(res)
				}
			default:
				consumed = code == codeProtocolViolation
			}
		}
		if !consumed && l.uncertainSyncs > 0 {
			// A data error, with Syncs sent among the copy data: which of
			// them the server read before it is not shown.
			return l.lostLocked(res)
		}
		if consumed {
			l.head++
			l.passOverLocked(*next)
		}
		if l.cur.typ == 'E' {
			// An Execute's COPY: the error ends it, and the server skips
			// to the next Sync.
			l.doneLocked()
			l.state = stateSkip
			l.settleLocked()
			return res
		}
	default:
		return l.stepLocked(res)
	}
	// The COPY is over; a Query goes on to its ReadyForQuery.
	l.state = stateNormal
	if l.cur.typ == 'E' {
		l.doneLocked()
	}
	l.settleLocked()
	return res
}

// copyOutReplyLocked places a reply while the server sends COPY data.
func (l *ledger) copyOutReplyLocked(typ byte) replyResult {
	res := replyResult{origin: l.cur.origin, unit: l.cur.unit, msgType: l.cur.typ, audit: l.cur.audit}
	switch typ {
	case 'd', 'c':
		return res
	case 'C', 'E':
		if typ == 'E' {
			l.unitFailed = true
		}
		l.state = stateNormal
		if l.cur.typ == 'E' {
			l.doneLocked()
			if typ == 'E' {
				l.state = stateSkip
			}
		}
		l.settleLocked()
		return res
	}
	return l.stepLocked(res)
}

// inCopyIn reports whether the server is reading COPY FROM STDIN data.
func (l *ledger) inCopyIn() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == stateCopyIn
}

// copyRisk reports whether the server is reading COPY data or may start to
// before it reads the next message: a message that is not copy data must
// then wait until that is known (the server would take it for bad COPY data).
func (l *ledger) copyRisk() bool { return l.risk.Load() }

// quiet reports whether the server has answered or passed over everything
// sent, or waits for COPY data with nothing left to read: either way it
// needs the client to go on.
func (l *ledger) quiet() bool {
	if l.zOpen.Load() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.zOpen.Load() {
		// Placed (under mu) since the look above: the ReadyForQuery that
		// emptied the queue is being handled.
		return false
	}
	l.settleLocked()
	if len(l.queued()) > 0 {
		return false
	}
	return !l.hasCur || l.state == stateCopyIn
}

// skipsNext reports whether the server will pass over the next message sent:
// it skips to a Sync after an error, and no Sync is on its way.
func (l *ledger) skipsNext() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == stateSkip && !l.hasCur && len(l.queued()) == 0
}

// answering is the origin of the message the reply side is answering
// (a ParameterStatus while it answers pgtenant's own is the assertion's).
func (l *ledger) answering() origin {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hasCur {
		return l.cur.origin
	}
	if q := l.queued(); len(q) > 0 {
		return q[0].origin
	}
	return fromClient
}

// reset forgets everything: the connection is gone or the lease is over.
func (l *ledger) reset() {
	l.mu.Lock()
	if l.q != nil {
		l.q.msgs = l.q.msgs[:0]
		queuePool.Put(l.q)
		l.q = nil
	}
	l.head = 0
	l.hasCur, l.cur, l.state, l.copyData, l.uncertainSyncs, l.mayCopy, l.unitFailed = false, sentMsg{}, stateNormal, false, 0, 0, false
	l.silent = l.silent[:0]
	l.silentN.Store(0)
	l.risk.Store(false)
	l.zOpen.Store(false)
	l.queries.Store(0)
	l.mu.Unlock()
}

package proxy

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/guard"
)

// relayWork is the part of a relay that only a working client needs: the
// message being relayed and what the guard said of it, the request side's
// scratch, the reply side's state. A parked transaction-mode client gives
// it back (putWork) and takes one again when it resumes (takeWork), so an
// idle client does not keep it: that is one allocation at most per wake-up
// after a second idle, never per message. Every field is at rest when a
// client parks (no message under way, no lease, nothing awaited): the
// request side parks only between messages, outside an extended-protocol
// group, with no connection held, and the reply side touches none of it
// once the lease is over.
//
// The relay embeds a pointer to it, so that the fields read as the
// relay's own.
type relayWork struct {
	cr *bufio.Reader // client reader (shared with startup); nil while waiting in parkReader
	// The upstream: ur is what the reply side reads, uw what the request
	// side writes (nil outside a lease's write section, binding.go). In
	// transaction mode wconn is the connection the request side writes,
	// rconn (and rsc) the one the reply side reads, for the lease; in
	// session mode both are upstream for the whole session.
	ur    *bufio.Reader
	uw    *bufio.Writer
	wconn net.Conn
	rconn net.Conn
	rsc   *serverConn

	// The request side's core and driver: in is the message being relayed
	// (whole, or its head), inPeeked whether it is in the client reader
	// still; inRest is what the driver still moves of it, upstream if
	// inRestPass, else nowhere.
	in         []byte
	inPeeked   bool
	inRestPass bool
	// groupTxEnded: an Execute of the group under way ended a transaction;
	// groupTokenDue: the Execute being relayed starts another (limits.go).
	groupTxEnded, groupTokenDue bool
	inRest                      int
	assertDue                   []byte   // request side: the assertion the unit still needs, before it runs anything
	waitSeq                     uint64   // request side: the unit untilStatements waits for
	waitSilent                  []uint64 // request side: scratch for settleSilent
	// groupPortals: the portals bound since the last Sync.
	groupPortals []boundPortal
	channels     []guard.Channel // those of the message being relayed

	// What the guard said of the message being relayed (transaction mode,
	// pooled.go): its ChangesSettings, DeallocatesAll, Deallocate, Pins.
	changes  bool
	deallocs bool
	dealloc  string
	pins     string
	// And its Prepare and Executes (sqlprepared.go); stmtExecutes are the
	// carried statements a Parse's text runs.
	prepare      *guard.Prepare
	executes     []guard.NameAt
	stmtExecutes []*clientStmt
	stmtMakes    *clientStmt // a Parse of PREPARE: what its Binds make (sqlprepared.go)
	// A Parse of DEALLOCATE name: what its Binds deallocate (deallocateOne).
	deallocTo    *deallocTarget
	listening    bool // and its Listening
	unlistensAll bool // and its UnlistensAll

	standaloneDone atomic.Bool
	standaloneErr  atomic.Pointer[pgconn.PgError] // result of the standalone assertion awaited

	resp   respState // reply side only
	ledger ledgerWork

	// An idle transaction-mode client holds no read or write buffer: the
	// request side waits for its next bytes in park, the reply side
	// takes a writer for the length of a lease.
	prefix prefixReader

	loopIn loopReader // what the client reader reads on an event loop
	// A wait for a pooled connection an event loop queued before the
	// message that needs it was read (queueForConnection): fresh until the
	// step it wakes begins; poolTimer ends it at pool.wait_timeout.
	poolWait      *poolWaiter
	poolWaitFresh bool
	poolTimer     *time.Timer
}

var workPool = sync.Pool{New: func() any { return new(relayWork) }}

// takeWork gives the relay a relayWork.
func (r *relay) takeWork() {
	w := workPool.Get().(*relayWork)
	r.relayWork, r.ledger.ledgerWork = w, &w.ledger
}

// putWork gives the relay's relayWork back, at rest: its scratch keeps its
// capacity for the next client, nothing else of this one's.
func (r *relay) putWork() {
	w := r.relayWork
	r.relayWork, r.ledger.ledgerWork = nil, nil
	w.rest()
	workPool.Put(w)
}

// rest brings w back to rest, keeping its scratch capacity.
func (w *relayWork) rest() {
	w.prefix.release()
	if w.ledger.q != nil {
		w.ledger.q.msgs = w.ledger.q.msgs[:0]
		queuePool.Put(w.ledger.q)
	}
	clear(w.groupPortals)
	*w = relayWork{
		waitSilent:   w.waitSilent[:0],
		groupPortals: w.groupPortals[:0],
		resp:         respState{silent: w.resp.silent[:0]},
		ledger:       ledgerWork{silent: w.ledger.silent[:0]},
	}
}

// encodings are the client_encoding values seen, each boxed once: storing
// one in a relay's clientEncoding (an atomic.Value) then allocates
// nothing, where boxing the string would take 16 bytes per client.
var encodings struct {
	mu     sync.Mutex
	values map[string]any
}

// encodingValue returns name boxed, the same box for every client (up to
// a few dozen names: there are only so many encodings).
func encodingValue(name string) any {
	encodings.mu.Lock()
	defer encodings.mu.Unlock()
	if v, ok := encodings.values[name]; ok {
		return v
	}
	if encodings.values == nil {
		encodings.values = map[string]any{}
	}
	v := any(name)
	if len(encodings.values) < 64 {
		encodings.values[name] = v
	}
	return v
}

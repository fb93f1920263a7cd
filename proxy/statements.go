package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
)

// Prepared statements in transaction mode.
//
// A client's named statements outlive its transactions, but its upstream
// connection does not. pgtenant keeps each client's statements (name → the
// Parse that made it) and prepares them under names of its own on whichever
// connection the client gets: the name is a hash of the statement and of the
// client's context settings, so clients of one tenant with the same
// settings share prepared statements on a connection, and nobody else can
// reach them. Each connection remembers what it has prepared (bounded, least
// recently used out).
//
// Every Parse and Close sent upstream in transaction mode is recorded, in
// order, with what to do with its reply (ParseComplete, CloseComplete): pass
// it on, or hide it (pgtenant's own). A client's Parse is always parsed
// upstream, also where the connection has the statement already: DDL since
// may have changed what the text means. When the upstream skips or fails
// them (an error earlier in the same Sync group), their bookkeeping is
// undone.

const (
	serverStmtPrefix = "pgtenant_"
	// noPortal is closed to get a CloseComplete in the reply stream at a
	// given point, with no effect upstream.
	noPortal = "pgtenant_none"
)

type replyAction uint8

const (
	replyForward replyAction = iota
	replyHide
)

type effectKind uint8

const (
	effectNone               effectKind = iota
	effectServerAdd                     // a Parse of a server statement
	effectServerRemove                  // a Close of a server statement
	effectUnnamed                       // a Parse of the unnamed statement
	effectClientAdd                     // a client's Parse: undo removes its name
	effectClientRemove                  // a client's Close: undo brings its name back
	effectClientAddServer               // a client's Parse of a new server statement: both
	effectClientUnnamed                 // a client's Parse of the unnamed statement
	effectClientUnnamedClose            // a client's Close of the unnamed statement
)

// replyEntry is one Parse or Close sent upstream, waiting for its reply.
type replyEntry struct {
	seq    uint64 // the unit it belongs to
	action replyAction
	kind   effectKind
	server string      // server statement name
	had    bool        // the connection had it before
	client string      // client statement name
	stmt   *clientStmt // for effectClientRemove
	// For effectClientUnnamedClose and effectClientUnnamed: the unnamed
	// Parse (and its flags) it closed or replaced.
	prev                         []byte
	prevChanges, prevDeallocates bool
	prevPins                     string
	prevDealloc                  *deallocTarget
	// For effectClientUnnamed and effectClientUnnamedClose: the client's
	// statements.gen before, and whose unnamed statement the connection held.
	prevGen    uint64
	prevOwner  *relay
	prevOwnerN uint64
}

// clientStmt is a client's named statement.
type clientStmt struct {
	client  string // the client's name
	server  string // name upstream
	parse   []byte // the Parse message under that name, to prepare it again
	changes bool   // running it may change the connection's settings (guard.Verdict.ChangesSettings)
	pins    string // running it pins the connection (guard.Verdict.Pins)
	// deallocates: it is DEALLOCATE ALL (guard.Verdict.DeallocatesAll)
	deallocates bool
	// runs are the carried SQL statements its text EXECUTEs: prepared
	// before it is bound (sqlprepared.go).
	runs []*clientStmt
	// inner is a carried PREPARE's statement text; parse is nil until its
	// parameter types are read back.
	inner string
	// chans: running it may change the client's channels (listening.go).
	chans *channelChange
	// makes: it is a PREPARE; what each Bind of it makes (sqlprepared.go).
	makes *clientStmt
	// dealloc: it is DEALLOCATE name; what each Bind of it deallocates
	// (deallocateAtBind).
	dealloc *deallocTarget
	// counted is what statements.bytes counts for it.
	counted int
	// parsed is the parseEpoch of the client's Parse (0: a carried
	// PREPARE, or unknown).
	parsed uint64
}

// size is what cs keeps in memory, roughly.
func (cs *clientStmt) size() int {
	return len(cs.client) + len(cs.server) + len(cs.parse) + len(cs.inner) + 128
}

// statements is a client's prepared-statement state in transaction mode.
type statements struct {
	byName map[string]*clientStmt
	// bytes is what byName keeps (put, remove), bounded by
	// limits.max_prepared_bytes at each new statement (overLimit).
	bytes              int
	unnamed            []byte // the client's last unnamed Parse, nil when it has none
	unnamedChanges     bool   // like clientStmt.changes
	unnamedDeallocates bool   // like clientStmt.deallocates
	unnamedPins        string // like clientStmt.pins
	// unnamedRuns is like clientStmt.runs. A skipped Parse does not bring
	// the previous back: preparing more than needed is harmless.
	unnamedRuns []*clientStmt
	// unnamedChans and unnamedMakes are like clientStmt's, with the same
	// caveat.
	unnamedChans *channelChange
	unnamedMakes *clientStmt
	// unnamedDealloc is like clientStmt.dealloc; a skipped Parse brings the
	// previous back.
	unnamedDealloc *deallocTarget
	gen            uint64 // which unnamed Parse that was

	// mu guards replies, and byName and unnamed against undo by the
	// reply side; changed signals that replies were resolved.
	mu         sync.Mutex
	changed    chan struct{}
	deallocSeq uint64 // the unit with a DEALLOCATE ALL, if any
	replies    []replyEntry
	head       int
	scratch    []byte // request side: message being rewritten
}

var serverStmtPrefixBytes = []byte(serverStmtPrefix)

// put names cs the client's statement name. Caller holds st.mu.
func (st *statements) put(name string, cs *clientStmt) {
	if st.byName == nil {
		st.byName = map[string]*clientStmt{} // most clients never prepare by name
	}
	if old := st.byName[name]; old != nil {
		st.bytes -= old.counted
	}
	cs.counted = cs.size()
	st.bytes += cs.counted
	st.byName[name] = cs
}

// remove forgets the client's statement name. Caller holds st.mu.
func (st *statements) remove(name string) {
	if old := st.byName[name]; old != nil {
		st.bytes -= old.counted
		delete(st.byName, name)
	}
}

// grew counts what cs took on after put (a PREPARE's Parse, read back).
// Caller holds st.mu.
func (st *statements) grew(cs *clientStmt) {
	if st.byName[cs.client] == cs {
		n := cs.size()
		st.bytes += n - cs.counted
		cs.counted = n
	}
}

// overLimit is the error ending a session whose statements, with more
// bytes to come, would take more than max.
func (st *statements) overLimit(more, max int) error {
	st.mu.Lock()
	n := st.bytes
	st.mu.Unlock()
	if max <= 0 || n+more <= max {
		return nil
	}
	return fatalf(codeProgramLimitExceeded, "pgtenant: this session's prepared statements would take more than %d bytes of pgtenant's memory (limits.max_prepared_bytes); deallocate some", max)
}

// clientNames replaces, in text from the upstream, the names of server
// statements with the client's names for them: with client, when the
// message that failed named one (clients with the same statement under two
// names share one upstream), else from the client's statements.
func (st *statements) clientNames(text, client string) string {
	i := strings.Index(text, serverStmtPrefix)
	if i < 0 {
		return text
	}
	if client != "" {
		end := i + len(serverStmtPrefix)
		for end < len(text) && isHex(text[end]) {
			end++
		}
		return text[:i] + client + text[end:]
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for name, cs := range st.byName {
		text = strings.ReplaceAll(text, cs.server, name)
	}
	return text
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

// serverStmtName derives the upstream name of a statement: a hash of the
// client's context settings and of the Parse body after the name (text and
// parameter types).
func serverStmtName(ctxKey string, parseRest []byte) string {
	h := sha256.New()
	h.Write([]byte(ctxKey))
	h.Write([]byte{0})
	h.Write(parseRest)
	var sum [sha256.Size]byte
	return serverStmtPrefix + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// appendParse encodes a Parse of rest (text, NUL, parameter types) as name.
func appendParse(buf []byte, name string, rest []byte) []byte {
	buf = append(buf, 'P')
	buf = binary.BigEndian.AppendUint32(buf, uint32(4+len(name)+1+len(rest)))
	buf = append(buf, name...)
	buf = append(buf, 0)
	return append(buf, rest...)
}

// appendDescribe encodes a Describe of a statement ('S') or portal ('P').
func appendDescribe(buf []byte, kind byte, name string) []byte {
	buf = append(buf, 'D')
	buf = binary.BigEndian.AppendUint32(buf, uint32(4+1+len(name)+1))
	buf = append(buf, kind)
	buf = append(buf, name...)
	return append(buf, 0)
}

// stmtCopy is a server statement prepared on a connection: when it was
// last used there (sc.tick, for least-recently-used eviction) and when it
// was parsed (a parseEpoch; 0: not known). A stand-in (occupyName) holds
// the name only: for everyone else the connection lacks the statement.
type stmtCopy struct {
	used, parsed uint64
	standIn      bool
}

// parseEpoch orders Parses across connections: a client's statement and
// each connection's copy of it are stamped when parsed. A copy parsed
// before the client's own Parse may predate DDL the client's statement
// sees (a column dropped, a type made again): PostgreSQL would have
// parsed afresh, so it is not used for that client (ensurePrepared).
var parseEpoch atomic.Uint64

// touch marks a server statement as prepared and just used on sc, and
// reports whether sc had it before.
func (sc *serverConn) touch(name string) (had bool) {
	_, had = sc.use(name)
	return had
}

// touchParsedSince is touch for a client whose statement was parsed at
// epoch: it reports whether sc has a copy parsed since, or the copy that
// Parse made (the same epoch: preparing it again would fail in a failed
// transaction block, where PostgreSQL describes or binds the statement
// it has). A copy of unknown epoch (0) is never the client's.
func (sc *serverConn) touchParsedSince(name string, epoch uint64) bool {
	c, had := sc.use(name)
	return had && c.parsed != 0 && c.parsed >= epoch
}

// use marks a server statement as prepared and just used on sc, and
// returns its copy there as it was (none: a stand-in).
func (sc *serverConn) use(name string) (stmtCopy, bool) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, had := sc.prepared[name]
	sc.tick++
	sc.prepared[name] = stmtCopy{used: sc.tick, parsed: c.parsed}
	return c, had && !c.standIn
}

// standIn marks a server statement name as taken on sc by a stand-in,
// unless something (the statement or a stand-in) holds it already, and
// reports whether something did.
func (sc *serverConn) standIn(name string) (held bool) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, held := sc.prepared[name]
	sc.tick++
	c.used = sc.tick
	if !held {
		c = stmtCopy{used: sc.tick, standIn: true}
	}
	sc.prepared[name] = c
	return held
}

// parsing marks a server statement as prepared and just used on sc, parsed
// now (a Parse of it is being sent), and returns the epoch and whether sc
// had it before.
func (sc *serverConn) parsing(name string) (epoch uint64, had bool) {
	epoch = parseEpoch.Add(1)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	c, had := sc.prepared[name]
	sc.tick++
	sc.prepared[name] = stmtCopy{used: sc.tick, parsed: epoch}
	return epoch, had && !c.standIn
}

// appendClose encodes a Close of a statement ('S') or portal ('P').
func appendClose(buf []byte, kind byte, name string) []byte {
	buf = append(buf, 'C')
	buf = binary.BigEndian.AppendUint32(buf, uint32(4+1+len(name)+1))
	buf = append(buf, kind)
	buf = append(buf, name...)
	return append(buf, 0)
}

// record notes a Parse or Close about to go upstream.
func (st *statements) record(e replyEntry) {
	st.mu.Lock()
	if st.head > 0 && st.head == len(st.replies) {
		st.replies, st.head = st.replies[:0], 0
	}
	st.replies = append(st.replies, e)
	st.mu.Unlock()
}

// The reply side's methods below take a nil *statements (a client before
// its first lease, prepared) as one with nothing recorded.

// reply tells the reply side what to do with a ParseComplete or
// CloseComplete: the oldest recorded Parse or Close answers to it.
func (st *statements) reply() replyAction {
	if st == nil {
		return replyForward // nothing recorded
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.head == len(st.replies) {
		return replyForward // not recorded: cannot happen; pass it on
	}
	a := st.replies[st.head].action
	st.replies[st.head] = replyEntry{}
	st.head++
	st.signal()
	return a
}

func (st *statements) signal() {
	select {
	case st.changed <- struct{}{}:
	default:
	}
}

// pendingBefore reports whether Parse or Close messages of units before seq
// still wait for their replies.
func (st *statements) pendingBefore(seq uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.head < len(st.replies) && st.replies[st.head].seq < seq
}

// dropUnit undoes, newest first, the bookkeeping of the unit's Parse and
// Close messages that got no reply: the upstream skipped them, or failed the
// oldest of them (headFailed: the error answers a Parse or Close).
func (st *statements) dropUnit(seq uint64, sc *serverConn, headFailed bool) {
	if st == nil {
		return // nothing recorded
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	end := st.head
	for end < len(st.replies) && st.replies[end].seq == seq {
		end++
	}
	if end == st.head {
		return
	}
	sc.mu.Lock()
	for i := end - 1; i >= st.head; i-- {
		e := st.replies[i]
		switch e.kind {
		case effectServerAdd, effectClientAddServer, effectServerRemove:
			if e.had {
				sc.prepared[e.server] = stmtCopy{used: sc.tick} // when parsed: not known
			} else {
				delete(sc.prepared, e.server)
			}
		case effectClientUnnamed, effectClientUnnamedClose:
			if !(i == st.head && headFailed) {
				// Skipped: the connection keeps the unnamed statement it
				// had. (Taking it for unknown would prepare the client's
				// again before its next use, which a failed block refuses.)
				sc.unnamed, sc.unnamedN = e.prevOwner, e.prevOwnerN
				break
			}
			sc.unnamed = nil
		case effectUnnamed:
			sc.unnamed = nil // unknown: the next use prepares the client's again
		}
		switch e.kind {
		case effectClientAdd, effectClientAddServer:
			st.remove(e.client)
		case effectClientRemove:
			st.put(e.client, e.stmt)
		case effectClientUnnamed:
			if i == st.head && headFailed {
				// Failed: PostgreSQL drops the unnamed statement before it
				// parses, so there is none now.
				st.unnamed = nil
				break
			}
			// Skipped: the client's unnamed statement is the one before.
			st.unnamed, st.unnamedChanges, st.unnamedDeallocates, st.unnamedPins = e.prev, e.prevChanges, e.prevDeallocates, e.prevPins
			st.unnamedDealloc = e.prevDealloc
			st.gen = e.prevGen
		case effectClientUnnamedClose:
			st.unnamed = e.prev
		}
		st.replies[i] = replyEntry{}
	}
	sc.mu.Unlock()
	st.head = end
	st.signal()
}

// unitEnded applies a DEALLOCATE ALL of unit seq once it has succeeded.
func (st *statements) unitEnded(seq uint64, failed bool) {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deallocSeq != 0 && st.deallocSeq == seq {
		st.deallocSeq = 0
		if !failed {
			clear(st.byName)
			st.bytes = 0
		}
	}
}

// reset forgets the replies of a connection that is gone.
func (st *statements) reset() {
	if st == nil {
		return
	}
	st.mu.Lock()
	clear(st.replies)
	st.replies, st.head = st.replies[:0], 0
	st.mu.Unlock()
}

// splitName splits a NUL-terminated name off the front of b.
func splitName(b []byte) (name, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// prepared returns the client's statements, making them at the first use:
// on the request side, at the latest before its first lease, so that the
// reply side (which reads them only under a lease) always finds them.
func (r *relay) prepared() *statements {
	if r.stmts == nil {
		r.stmts = &statements{changed: make(chan struct{}, 1)}
	}
	return r.stmts
}

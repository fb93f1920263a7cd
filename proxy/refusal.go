package proxy

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// maxGuardedStatement bounds a statement the guard reads whole.
const maxGuardedStatement = 64 << 20

// refusalMarker starts the text that replaces a refused statement. It is a
// syntax error on purpose: the upstream rejects it at parse time, in any
// transaction state, exactly where the client's statement would have failed,
// so a transaction block fails and an extended-protocol group is skipped up
// to its Sync, as for any PostgreSQL error. The error that comes back is
// replaced by the guard's.
const refusalMarker = "pgtenant_guard_refused_"

// refusals matches the upstream's errors for substituted statements with the
// guard errors the client must see instead.
type refusals struct {
	mu          sync.Mutex
	next        uint64
	pending     map[uint64]*pgconn.PgError
	outstanding atomic.Int32
}

func (rf *refusals) add(e *pgconn.PgError) uint64 {
	rf.mu.Lock()
	defer rf.mu.Unlock()
	rf.next++
	if rf.pending == nil {
		rf.pending = map[uint64]*pgconn.PgError{} // most sessions never need it
	}
	rf.pending[rf.next] = e
	rf.outstanding.Store(int32(len(rf.pending)))
	return rf.next
}

// match returns the guard error for an upstream error caused by a marker.
// A marker the server skipped (after an earlier error) never comes back; its
// entry goes when a later one does.
func (rf *refusals) match(upstream *pgconn.PgError) *pgconn.PgError {
	i := strings.Index(upstream.Message, refusalMarker)
	if upstream.Code != "42601" || i < 0 {
		return nil
	}
	digits := upstream.Message[i+len(refusalMarker):]
	if j := strings.IndexByte(digits, '"'); j >= 0 {
		digits = digits[:j]
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return nil
	}
	rf.mu.Lock()
	defer rf.mu.Unlock()
	e := rf.pending[seq]
	for k := range rf.pending {
		if k <= seq {
			delete(rf.pending, k)
		}
	}
	rf.outstanding.Store(int32(len(rf.pending)))
	return e
}

// wholeMessage returns the whole message being relayed, of size bytes (the
// driver reads it whole: requestWhole).
func (r *relay) wholeMessage(size int) ([]byte, error) {
	if len(r.in) == size {
		return r.in, nil
	}
	if size > maxGuardedStatement {
		return nil, fatalf(codeProgramLimitExceeded, "statement of %d bytes exceeds pgtenant's limit of %d bytes", size, maxGuardedStatement)
	}
	return nil, fatalf(codeInternalError, "pgtenant: message %q of %d bytes not read whole", r.in[0], size)
}

// check runs the guard on a Query, Parse or FunctionCall message. It returns
// the bytes to send upstream instead when the message is refused, and whether
// the message resets the tenant context (RESET ALL, DISCARD ALL).
func (r *relay) check(msg []byte) (substitute []byte, resets, deallocates bool, err error) {
	if k := r.testingKnobs(); k != nil && k.OnStatement != nil {
		k.OnStatement(statementText(msg))
	}
	var verdictErr *pgconn.PgError
	var name, pins string
	switch msg[0] {
	case 'F':
		if len(msg) < 9 {
			return nil, false, false, fatalf(codeProtocolViolation, "invalid FunctionCall message")
		}
		oid := uint32(msg[5])<<24 | uint32(msg[6])<<16 | uint32(msg[7])<<8 | uint32(msg[8])
		verdictErr = r.guard.CheckFunctionCall(oid)
	case 'Q':
		v := r.guard.CheckQuery(statementText(msg))
		verdictErr, resets, deallocates, pins = v.Err, v.ResetsContext, v.DeallocatesAll, v.Pins
		r.changes, r.dealloc = v.ChangesSettings, v.Deallocate
		r.prepare, r.executes, r.channels = v.Prepare, v.Executes, v.Channels
		r.listening, r.unlistensAll = v.Listening, v.UnlistensAll
		if verdictErr == nil {
			verdictErr = r.noteCustomSettings(v.CustomSettings)
		}
	case 'P':
		body := msg[5:]
		nul := bytes.IndexByte(body, 0)
		if nul < 0 {
			return nil, false, false, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		v := r.guard.CheckParse(statementText(msg))
		verdictErr, deallocates, pins = v.Err, v.DeallocatesAll, v.Pins
		r.changes, r.dealloc = v.ChangesSettings, v.Deallocate
		r.prepare, r.executes, r.channels = v.Prepare, v.Executes, v.Channels
		r.listening, r.unlistensAll = v.Listening, v.UnlistensAll
		if verdictErr == nil {
			verdictErr = r.noteCustomSettings(v.CustomSettings)
		}
		if verdictErr != nil {
			name = string(body[:nul])
		}
	}
	if verdictErr == nil {
		verdictErr = r.checkChannels(r.channels)
	}
	if verdictErr == nil && r.listening && r.up.viaHub() && r.notifyScope != "" {
		verdictErr = r.checkListening()
	}
	if pins == "" && verdictErr == nil {
		pins = r.prepared().runsPin(r.executes) // what the carried statements it runs pin
	}
	r.pins = pins
	if verdictErr == nil && pins != "" {
		if msg[0] == 'Q' {
			verdictErr = r.pinFor(pins)
		} else {
			// Pinned when it runs (relayBind); refused now if it could not be.
			verdictErr = r.pinRoom()
		}
	}
	if verdictErr == nil {
		return nil, resets, deallocates, nil
	}
	r.auditRefused(msg, verdictErr)
	seq := r.refusals.add(verdictErr)
	text := refusalMarker + strconv.FormatUint(seq, 10)
	var sub pgproto3.FrontendMessage = &pgproto3.Query{String: text}
	if msg[0] == 'P' {
		sub = &pgproto3.Parse{Name: name, Query: text}
	}
	r.stats.refusals.Add(1)
	r.obs.Refusal(r.tenant)
	substitute, err = sub.Encode(nil)
	return substitute, false, false, err
}

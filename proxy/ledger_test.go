package proxy

import (
	"strings"
	"sync/atomic"
	"testing"
)

// ledgerStep is one step of a ledger test: messages sent (in) or a reply
// received (a single type, with an SQLSTATE after ':' for errors in COPY).
//
// Sent messages are written as their type letters, space separated; a
// prefix says more: '*' pgtenant's inline assertion, '!' a message that
// may start COPY, "DS"/"DP" a Describe of a statement or portal. A '|'
// begins a new unit.
type ledgerStep struct {
	send  string
	reply string
	want  string // for a reply: "client", "own", "end", "end-failed", "out-of-step", "lost", "async"
	quiet bool   // after the step: ledger.quiet()
	skips *bool  // after the step: ledger.skipsNext()
	drops *bool  // after the step: ledger.dropsSync()
}

func runLedger(t *testing.T, steps []ledgerStep) (pending int32) {
	t.Helper()
	l := ledger{ledgerWork: &ledgerWork{}}
	var unit uint64
	for i, st := range steps {
		if st.send != "" {
			for _, w := range strings.Fields(st.send) {
				if w == "|" {
					unit = l.begin()
					continue
				}
				m := sentMsg{unit: unit, origin: fromClient}
				if strings.HasPrefix(w, "*") {
					m.origin, w = fromAssert, w[1:]
				}
				if strings.HasPrefix(w, "!") {
					m.mayCopy, w = true, w[1:]
				}
				m.typ = w[0]
				if len(w) > 1 {
					m.kind = w[1]
				}
				l.send(m)
			}
		}
		if st.reply != "" {
			typ, code, _ := strings.Cut(st.reply, ":")
			res := l.reply(typ[0], code)
			got := "client"
			switch {
			case res.lost:
				got = "lost"
			case res.outOfStep:
				got = "out-of-step"
			case res.async:
				got = "async"
			case res.endsUnit && res.failed:
				got = "end-failed"
				l.unitDone()
			case res.endsUnit:
				got = "end"
				l.unitDone()
			case res.origin.own():
				got = "own"
			}
			if st.want != "" && got != st.want {
				t.Fatalf("step %d (reply %s): got %s, want %s", i, st.reply, got, st.want)
			}
		}
		if st.drops != nil && l.dropsSync() != *st.drops {
			t.Fatalf("step %d: dropsSync %v, want %v", i, l.dropsSync(), *st.drops)
		}
		if st.skips != nil && l.skipsNext() != *st.skips {
			t.Fatalf("step %d: skipsNext %v, want %v", i, l.skipsNext(), *st.skips)
		}
		if st.quiet && !l.quiet() {
			t.Fatalf("step %d: not quiet", i)
		}
	}
	return l.pending.Load()
}

func TestLedger(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		desc    string
		steps   []ledgerStep
		pending int32 // units left at the end
	}{
		{"simple query", []ledgerStep{
			{send: "| Q"}, {reply: "T", want: "client"}, {reply: "D"}, {reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"assertion ahead of a query is hidden", []ledgerStep{
			{send: "| *P *B *E *C *C Q"},
			{reply: "1", want: "own"}, {reply: "2", want: "own"}, {reply: "C", want: "own"}, {reply: "3", want: "own"}, {reply: "3", want: "own"},
			{reply: "C", want: "client"}, {reply: "Z", want: "end"},
		}, 0},
		{"pipelined groups", []ledgerStep{
			{send: "| P B DP E S | B E S"},
			{reply: "1"}, {reply: "2"}, {reply: "T"}, {reply: "D"}, {reply: "C"}, {reply: "Z", want: "end"},
			{reply: "2"}, {reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"a Sync whose commit fails (a deferred constraint) starts no skip", []ledgerStep{
			{send: "| P B E S | B E S"},
			{reply: "1"}, {reply: "2"}, {reply: "C"}, {reply: "E", want: "client", skips: &no}, {reply: "Z", want: "end-failed"},
			{reply: "2"}, {reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"describe statement: parameters then row description", []ledgerStep{
			{send: "| P DS S"}, {reply: "1"}, {reply: "t"}, {reply: "n"}, {reply: "Z", want: "end"},
		}, 0},
		{"error skips to Sync, a Query inside included", []ledgerStep{
			{send: "| P B E Q"}, {reply: "E", want: "client"},
			{send: "| P B E S"}, {reply: "Z", want: "end-failed", quiet: true},
		}, 0},
		{"query after an unsynced group runs in it (PgJDBC autosave)", []ledgerStep{
			{send: "| P B E Q"}, {reply: "1"}, {reply: "2"}, {reply: "C"}, {reply: "C"}, {reply: "Z", want: "end"},
			{send: "| P B E S"}, {reply: "1"}, {reply: "2"}, {reply: "C"}, {reply: "Z", want: "end"},
		}, 0},
		{"asyncpg: Parse, Describe, Flush, then COPY as a Query", []ledgerStep{
			{send: "| P DS H"}, {reply: "1"}, {reply: "t"}, {reply: "n", quiet: true},
			{send: "!Q"}, {reply: "G"}, {send: "d d c"}, {reply: "C"}, {reply: "Z", want: "end"},
		}, 0},
		{"Execute of a missing portal, copy data, Sync", []ledgerStep{
			{send: "| E d S"}, {reply: "E"}, {reply: "Z", want: "end-failed", quiet: true},
		}, 0},
		{"COPY FROM STDIN by Execute: the Sync behind it is read during the COPY", []ledgerStep{
			{send: "| P B !E S"}, {reply: "1"}, {reply: "2"}, {reply: "G"},
			{send: "d c | S"}, {reply: "C"}, {reply: "Z", want: "end"},
		}, 0},
		{"a Query during COPY is an error that ends it, and is read", []ledgerStep{
			{send: "| !Q"}, {reply: "G", quiet: true}, {send: "| Q"},
			{reply: "E:08P01", want: "client"}, {reply: "Z", want: "end-failed", quiet: true},
		}, 0},
		{"pgtenant's CopyFail in place of a Query during COPY", []ledgerStep{
			{send: "| !Q"}, {reply: "G", quiet: true}, {send: "f"},
			{reply: "E:57014", want: "client"}, {reply: "Z", want: "end-failed", quiet: true},
		}, 0},
		{"two COPYs in one Query, Syncs during the second", []ledgerStep{
			{send: "| !Q"}, {reply: "G"}, {send: "d c"}, {reply: "C"}, {reply: "G"},
			{send: "d | S | S d c"}, {reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"two COPYs in one Query sent in one write", []ledgerStep{
			{send: "| !Q d c d c"}, {reply: "G"}, {reply: "C"}, {reply: "G"}, {reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"COPY failed by the client", []ledgerStep{
			{send: "| !Q"}, {reply: "G"}, {send: "d f"}, {reply: "E:57014"}, {reply: "Z", want: "end-failed"},
		}, 0},
		{"COPY failing on its data, stray Syncs after its end are answered", []ledgerStep{
			{send: "| !Q"}, {reply: "G"}, {send: "d"}, {reply: "E:22P04"}, {reply: "Z", want: "end-failed"},
			{send: "d c | S"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"COPY failing on its data after a Sync among its data cannot be placed", []ledgerStep{
			{send: "| !Q"}, {reply: "G"}, {send: "d | S d"}, {reply: "E:22P04", want: "lost"},
		}, 1},
		{"a Sync behind a CopyDone not yet answered is not among the data", []ledgerStep{
			{send: "| P B !E"}, {reply: "1"}, {reply: "2"}, {reply: "G"}, {send: "d c", drops: &no}, {send: "S"},
			{reply: "C"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"a Sync right behind the COPY is read before its data (libpq)", []ledgerStep{
			{send: "| P B !E S"}, {reply: "1"}, {reply: "2"}, {reply: "G"},
			{send: "d"}, {reply: "E:22P04"}, {send: "c | S"}, {reply: "Z", want: "end-failed", quiet: true},
		}, 0},
		{"COPY TO STDOUT by Execute", []ledgerStep{
			{send: "| B !E S"}, {reply: "2"}, {reply: "H"}, {reply: "d"}, {reply: "d"}, {reply: "c"}, {reply: "C"}, {reply: "Z", want: "end"},
		}, 0},
		{"CopyData and Flush between transactions get no reply", []ledgerStep{
			{send: "| d c f H S"}, {reply: "Z", want: "end", quiet: true},
		}, 0},
		{"after an error the next message is passed over, up to a Sync", []ledgerStep{
			{send: "| P DS H"}, {reply: "E", skips: &yes}, {send: "Q", skips: &yes}, {send: "| S", skips: &no},
			{reply: "Z", want: "end-failed", skips: &no},
		}, 0},
		{"FunctionCall", []ledgerStep{
			{send: "| F"}, {reply: "V"}, {reply: "Z", want: "end"},
		}, 0},
		{"a reply with nothing outstanding", []ledgerStep{
			{reply: "C", want: "out-of-step"},
		}, 0},
		{"an error with nothing outstanding is the server's own (shutdown)", []ledgerStep{
			{reply: "E", want: "async"},
		}, 0},
		{"a reply that does not answer the message", []ledgerStep{
			{send: "| P"}, {reply: "2", want: "out-of-step"},
		}, 1},
		{"an unsynced group holds its unit", []ledgerStep{
			{send: "| P B E"}, {reply: "1"}, {reply: "2"}, {reply: "C", quiet: true},
		}, 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := runLedger(t, tc.steps); got != tc.pending {
				t.Fatalf("pending units at the end: %d, want %d", got, tc.pending)
			}
		})
	}
}

// The ledger takes no allocation per message once its queue has grown.
func TestLedgerAllocations(t *testing.T) {
	l := ledger{ledgerWork: &ledgerWork{}}
	msgs := []byte{'B', 0, 0, 0, 4, 'E', 0, 0, 0, 4, 'S', 0, 0, 0, 4}
	round := func() {
		u := l.begin()
		l.sendMsgs(msgs, u, fromClient)
		l.reply('2', "")
		l.reply('C', "")
		l.reply('Z', "")
		l.unitDone()
	}
	round()
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Fatalf("%v allocations per round", n)
	}
}

// TestLedgerQuietNotBeforeUnitDone: while the reply side handles a
// ReadyForQuery (placed, its unit not yet counted ended), a waiter must not
// see the server quiet: it would act on the transaction status before the
// ReadyForQuery's (an assertion sent into a failed block). The window is a
// few instructions wide: many rounds, two goroutines.
func TestLedgerQuietNotBeforeUnitDone(t *testing.T) {
	l := ledger{ledgerWork: &ledgerWork{}}
	var sent, ending atomic.Int64 // the last unit whose Query went, whose unitDone began
	var stop atomic.Bool
	var early atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			s, e := sent.Load(), ending.Load()
			if s > e && l.quiet() && ending.Load() < s {
				early.Add(1) // quiet with the Query in flight or its ReadyForQuery being handled
			}
		}
	}()
	for i := int64(1); i <= 100000 && early.Load() == 0; i++ {
		u := l.begin()
		l.send(sentMsg{unit: u, typ: 'Q', origin: fromClient})
		sent.Store(i)
		l.reply('C', "")
		l.reply('Z', "")
		ending.Store(i)
		l.unitDone()
	}
	stop.Store(true)
	<-done
	if n := early.Load(); n > 0 {
		t.Fatalf("quiet() while a ReadyForQuery was being handled (%d times)", n)
	}
}

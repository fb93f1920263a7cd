package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/guard"
)

var zeroTime time.Time

// clientStream encodes n copies of the messages.
func clientStream(t testing.TB, n int, msgs ...pgproto3.FrontendMessage) []byte {
	var one []byte
	for _, m := range msgs {
		var err error
		if one, err = m.Encode(one); err != nil {
			t.Fatal(err)
		}
	}
	return bytes.Repeat(one, n)
}

// requestSide runs the request side over an in-memory client stream, with
// the reply side replaced by a fakeUpstream. It returns the bytes sent
// upstream.
func requestSide(t testing.TB, stream []byte, g *guard.Guard) []byte {
	var upstream bytes.Buffer
	requestSideTo(t, stream, g, 'T', &upstream)
	return upstream.Bytes()
}

// requestSideTo runs the request side with the upstream in transaction
// status txStatus after every unit: 'T' (no assertion due) or 'I' (an
// assertion ahead of every unit).
func requestSideTo(t testing.TB, stream []byte, g *guard.Guard, txStatus byte, upstream io.Writer) {
	requestSideScoped(t, stream, g, txStatus, upstream, false)
}

// requestSideScoped is requestSideTo with the context set locally
// (context_scope: transaction) when local.
func requestSideScoped(t testing.TB, stream []byte, g *guard.Guard, txStatus byte, upstream io.Writer, local bool) {
	r := newRelay(nil, bufio.NewReaderSize(bytes.NewReader(stream), relayBufSize), nil, nil,
		ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1", local: local}})), g, zeroTime)
	r.uw = bufio.NewWriterSize(&fakeUpstream{r: r, status: txStatus, out: upstream}, relayBufSize)
	r.txStatus.Store(uint32(txStatus))
	err := r.clientToUpstream()
	if !errors.Is(err, io.EOF) {
		t.Fatalf("request side: %v", err)
	}
	_ = r.uw.Flush()
}

// fakeUpstream stands in for the upstream and the reply side of a request
// side under test: it answers each message written to it, through the
// ledger, at once and as PostgreSQL would in the simplest case (no errors;
// a COPY FROM STDIN only from a Query), reporting status at every
// ReadyForQuery. What it is written goes on to out.
type fakeUpstream struct {
	r       *relay
	status  byte
	out     io.Writer
	partial []byte
}

func (f *fakeUpstream) Write(p []byte) (int, error) {
	if f.out != nil {
		if _, err := f.out.Write(p); err != nil {
			return 0, err
		}
	}
	f.partial = append(f.partial, p...)
	done := 0
	for len(f.partial)-done >= 5 {
		n := 1 + int(binary.BigEndian.Uint32(f.partial[done+1:done+5]))
		if len(f.partial)-done < n {
			break
		}
		f.answer(f.partial[done : done+n])
		done += n
	}
	f.partial = f.partial[:copy(f.partial, f.partial[done:])]
	return len(p), nil
}

func (f *fakeUpstream) answer(msg []byte) {
	l := &f.r.ledger
	replies := ""
	switch {
	case l.inCopyIn():
		switch msg[0] {
		case 'd', 'H', 'S':
		case 'c':
			replies = "CZ"
		case 'f':
			f.reply('E', codeQueryCanceled)
			replies = "Z"
		default:
			// PostgreSQL ends the session here (ERROR, then FATAL); the fake
			// goes on as if it had only failed the COPY.
			f.reply('E', codeProtocolViolation)
			replies = "Z"
		}
	default:
		switch msg[0] {
		case 'Q':
			text := statementText(msg)
			if containsFold(text, "copy") && containsFold(text, "stdin") {
				replies = "G"
			} else {
				replies = "CZ"
			}
		case 'F':
			replies = "VZ"
		case 'P':
			replies = "1"
		case 'B':
			replies = "2"
		case 'D':
			replies = "n"
			if len(msg) > 5 && msg[5] == 'S' {
				replies = "tn"
			}
		case 'E':
			replies = "C"
		case 'C':
			replies = "3"
		case 'S':
			replies = "Z"
		}
	}
	for i := 0; i < len(replies); i++ {
		f.reply(replies[i], "")
	}
}

func (f *fakeUpstream) reply(typ byte, code string) {
	r := f.r
	res := r.ledger.reply(typ, code)
	if res.endsUnit {
		r.txStatus.Store(uint32(f.status))
		if res.msgType == 'Q' {
			r.ledger.queryAnswered()
		}
		r.ledger.unitDone()
		if res.origin == fromStandalone {
			r.standaloneDone.Store(true)
		}
	}
	r.wake()
}

// countingWriter counts Write calls: system calls, for a socket.
type countingWriter struct{ writes, bytes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	w.bytes += len(p)
	return len(p), nil
}

// Messages that arrive together leave together: one write upstream for a
// batch, not one per message.
func TestRequestSideOneWritePerBatch(t *testing.T) {
	batch := clientStream(t, 20, &pgproto3.Parse{Name: "s", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if len(batch) >= relayBufSize {
		t.Fatalf("batch of %d bytes does not fit one read", len(batch))
	}
	for _, status := range []byte{'T', 'I'} {
		var w countingWriter
		requestSideTo(t, batch, guard.New(guard.Policy{TenantSetting: "app.tenant_id"}), status, &w)
		if w.writes != 1 {
			t.Errorf("status %c: %d writes for 80 messages that arrived together, want 1", status, w.writes)
		}
	}
}

func TestRequestSideForwardsBytes(t *testing.T) {
	stream := clientStream(t, 50,
		&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 1"},
		&pgproto3.Parse{Name: "s", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		// COPY with a data message larger than the relay's buffer.
		&pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 20000)}, &pgproto3.CopyDone{},
	)
	a := newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})
	for _, g := range []*guard.Guard{nil, guard.New(guard.Policy{TenantSetting: "app.tenant_id"})} {
		// While replies are outstanding the relay may assert ahead of a group
		// and send a Flush of its own before it waits; apart from that the
		// client's bytes go upstream unchanged.
		got := bytes.ReplaceAll(bytes.ReplaceAll(requestSide(t, stream, g), a.inline, nil), flushMessage, nil)
		if !bytes.Equal(got, stream) {
			t.Fatalf("guard %v: upstream got %d bytes, want the client's %d unchanged", g != nil, len(got), len(stream))
		}
	}
}

// Relaying a message allocates nothing, with or without the guard: the
// allocations of a run do not grow with the number of messages.
func TestRequestSideAllocatesNothing(t *testing.T) {
	const n = 2000
	query := &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"}
	short, long := clientStream(t, n, query), clientStream(t, 2*n, query)
	for _, g := range []*guard.Guard{nil, guard.New(guard.Policy{TenantSetting: "app.tenant_id"})} {
		base := testing.AllocsPerRun(5, func() { requestSideTo(t, short, g, 'T', io.Discard) })
		more := testing.AllocsPerRun(5, func() { requestSideTo(t, long, g, 'T', io.Discard) })
		if perMessage := (more - base) / n; perMessage > 0.001 {
			t.Fatalf("guard %v: %.3f allocations per message (%v for %d messages, %v for %d)", g != nil, perMessage, base, n, more, 2*n)
		}
	}
}

// Relaying a Query message: inside a transaction block (bytes only, with
// and without the guard's check), and at a transaction start (with the
// tenant assertion written ahead of it).
func BenchmarkRequestSide(b *testing.B) {
	const n = 1000
	stream := clientStream(b, n, &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"})
	guarded := guard.New(guard.Policy{TenantSetting: "app.tenant_id"})
	for _, tc := range []struct {
		name   string
		g      *guard.Guard
		status byte
		local  bool
	}{{"guard off", nil, 'T', false}, {"guard on", guarded, 'T', false}, {"guard on, assertion", guarded, 'I', false},
		{"guard on, transaction-scoped assertion", guarded, 'I', true}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				requestSideScoped(b, stream, tc.g, tc.status, io.Discard, tc.local)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
		})
	}
}

// responseSide runs the response side over an in-memory upstream stream of
// n units, each ending with ReadyForQuery, writing to the client writer w.
func responseSide(t testing.TB, stream []byte, n int, w io.Writer) {
	r := newRelay(nil, nil, bufio.NewWriterSize(w, relayBufSize), nil,
		ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})), nil, zeroTime)
	r.ur = bufio.NewReaderSize(bytes.NewReader(stream), relayBufSize)
	// Every Query sent up front: no goroutine, nothing but the response
	// side allocating.
	query := []byte{'Q', 0, 0, 0, 5, 0}
	for i := 0; i < n; i++ {
		r.ledger.sendMsgs(query, r.ledger.begin(), fromClient)
	}
	if err := r.upstreamToClient(); !errors.Is(err, errUpstreamLost) {
		t.Fatalf("response side: %v", err)
	}
}

// selectReplies is n replies to a one-row SELECT, as an upstream sends them.
func selectReplies(n int) []byte {
	var one []byte
	for _, m := range []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("0")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'},
	} {
		one, _ = m.Encode(one)
	}
	return bytes.Repeat(one, n)
}

// Forwarding replies allocates nothing per message.
func TestResponseSideAllocatesNothing(t *testing.T) {
	const n = 1000
	short, long := selectReplies(n), selectReplies(2*n)
	base := testing.AllocsPerRun(5, func() { responseSide(t, short, n, io.Discard) })
	more := testing.AllocsPerRun(5, func() { responseSide(t, long, 2*n, io.Discard) })
	if perMessage := (more - base) / (4 * n); perMessage > 0.001 {
		t.Fatalf("%.3f allocations per reply message", perMessage)
	}
}

func BenchmarkResponseSide(b *testing.B) {
	const n = 1000
	stream := selectReplies(n)
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		responseSide(b, stream, n, io.Discard)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*4*n), "ns/msg")
}

// ptrTo returns a pointer to a copy of v.
func ptrTo[T any](v T) *T { return &v }

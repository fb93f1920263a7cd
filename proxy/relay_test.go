package proxy

import (
	"bufio"
	"bytes"
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
// the response side replaced by a drain of the unit queue. It returns the
// bytes sent upstream.
func requestSide(t testing.TB, stream []byte, g *guard.Guard) []byte {
	var upstream bytes.Buffer
	r := newRelay(nil, bufio.NewReaderSize(bytes.NewReader(stream), relayBufSize), nil, nil,
		newAssertion([]setting{{"app.tenant_id", "t1"}}), g, zeroTime)
	r.uw = bufio.NewWriterSize(&upstream, relayBufSize)
	// Every unit is settled at once, inside a transaction block, so no
	// assertion is due and the upstream bytes equal the client's.
	r.txStatus.Store('T')
	r.pending.Store(0)
	go func() {
		for range r.units {
			if r.pending.Add(-1) == 0 {
				select {
				case r.drained <- struct{}{}:
				default:
				}
			}
			r.signalCopy() // as after a ReadyForQuery
		}
	}()
	defer close(r.units)
	err := r.clientToUpstream()
	if !errors.Is(err, io.EOF) {
		t.Fatalf("request side: %v", err)
	}
	_ = r.uw.Flush()
	return upstream.Bytes()
}

func TestRequestSideForwardsBytes(t *testing.T) {
	stream := clientStream(t, 50,
		&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 1"},
		&pgproto3.Parse{Name: "s", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		// COPY with a data message larger than the relay's buffer.
		&pgproto3.Query{String: "COPY t FROM STDIN"}, &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 20000)}, &pgproto3.CopyDone{},
	)
	a := newAssertion([]setting{{"app.tenant_id", "t1"}})
	for _, g := range []*guard.Guard{nil, guard.New(guard.Policy{TenantSetting: "app.tenant_id"})} {
		// While replies are outstanding the relay may assert ahead of a group;
		// apart from that the client's bytes go upstream unchanged.
		got := bytes.ReplaceAll(requestSide(t, stream, g), a.inline, nil)
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
		base := testing.AllocsPerRun(5, func() { requestSide(t, short, g) })
		more := testing.AllocsPerRun(5, func() { requestSide(t, long, g) })
		if perMessage := (more - base) / n; perMessage > 0.001 {
			t.Fatalf("guard %v: %.3f allocations per message (%v for %d messages, %v for %d)", g != nil, perMessage, base, n, more, 2*n)
		}
	}
}

func BenchmarkRequestSide(b *testing.B) {
	const n = 1000
	stream := clientStream(b, n, &pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"})
	for _, tc := range []struct {
		name string
		g    *guard.Guard
	}{{"guard off", nil}, {"guard on", guard.New(guard.Policy{TenantSetting: "app.tenant_id"})}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				requestSide(b, stream, tc.g)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
		})
	}
}

package audit

import (
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/proxy"
)

// BenchmarkStatement is the audit log's cost per statement on the session's
// goroutines: sample, then the fingerprint and normalized text. Cached, a
// repeated text (prepared statements, pgbench -M prepared); uncached, a
// text never seen (pgbench -S in simple protocol sends its literal aid
// inline). Queueing the event and the writer's work are in BenchmarkWrite.
func BenchmarkStatement(b *testing.B) {
	const text = "SELECT abalance FROM pgbench_accounts WHERE aid = "
	for _, tc := range []struct {
		name   string
		cached bool
	}{{"cached", true}, {"uncached", false}} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := Open(&config.Audit{Output: config.AuditStdout, Buffer: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Stdout: io.Discard})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			buf := []byte(text + "1")
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if !tc.cached {
					buf = strconv.AppendInt(buf[:len(text)], int64(i), 10)
				}
				if l.Sample("t1") && l.Statement(buf) == nil {
					b.Fatal("no statement")
				}
			}
		})
	}
}

// BenchmarkWrite is the rest of a statement's cost: queueing its event (on
// the session's goroutine) and encoding the line (on the writer's).
func BenchmarkWrite(b *testing.B) {
	st := describe("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
	ev := proxy.AuditEvent{Kind: proxy.AuditStatementRun, Time: time.Now(), Tenant: "11111111-1111-1111-1111-111111111111", User: "acme_app", Conn: 1,
		Statement: st, Protocol: "simple", Duration: time.Millisecond, Rows: 1}
	events := make(chan proxy.AuditEvent, 1)
	enc := json.NewEncoder(io.Discard)
	var line jsonLine
	b.ReportAllocs()
	for range b.N {
		events <- ev
		e := <-events
		line.fill(&e)
		if err := enc.Encode(&line); err != nil {
			b.Fatal(err)
		}
	}
}

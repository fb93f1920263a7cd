package e2e

// Regression tests for the findings of issue 12 (the relay rebuilt so that
// it cannot desync). Each runs in both pool modes; where PostgreSQL itself
// answers, pgtenant must answer the same, message by message, in time.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// relayLongSQL is a statement of about 450 bytes: longer than what pgtenant
// reads of a client's first bytes while it waits (parkSize), like psql's
// catalog queries.
var relayLongSQL = "SELECT current_setting('app.tenant_id') AS tenant, count(*) AS n FROM projects /* " +
	strings.Repeat("a comment long enough ", 17) + "*/"

// Finding 1. A session's first Query or Parse longer than about 250 bytes,
// or a first message that arrives in several TCP pieces, is answered as
// PostgreSQL answers it. (On the code of issue 12 the transaction-mode run
// panics in proxy/refusal.go, flushing an upstream writer the session does
// not have yet, and the panic ends the whole test binary: that is the
// failure.)
func TestRelayFirstMessageLongOrInPieces(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		short := "SELECT current_setting('app.tenant_id') AS tenant, count(*) AS n FROM projects"
		for i, tc := range []struct {
			desc  string
			steps []relayStep
		}{
			{"first Query of 450 bytes", []relayStep{relayAt(ppQuery(relayLongSQL))}},
			{"first Parse of 450 bytes", []relayStep{relayAt(ppParse("", relayLongSQL), ppBind(""), ppDescribePortal(""), ppExec(), ppSync())}},
			{"first Parse of 450 bytes, named, then Flush", []relayStep{
				relayAt(ppParse("first", relayLongSQL), ppDescribeStmt("first"), ppFlush()),
				relayAt(ppBind("first"), ppExec(), ppSync()),
			}},
			{"first Query in 7-byte pieces", []relayStep{{msgs: []pgproto3.FrontendMessage{ppQuery(short)}, chunk: 7}}},
			{"first Parse group in 7-byte pieces", []relayStep{{msgs: []pgproto3.FrontendMessage{ppParse("", short), ppBind(""), ppDescribePortal(""), ppExec(), ppSync()}, chunk: 7}}},
			{"first Query of 450 bytes in 100-byte pieces", []relayStep{{msgs: []pgproto3.FrontendMessage{ppQuery(relayLongSQL)}, chunk: 100}}},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				p := m.start(t)
				relaySameAsPostgres(t, p, tenantA, fmt.Sprintf("relay_first_%d", i), tc.steps)
			})
		}
		t.Run(`psql -c '\l'`, func(t *testing.T) {
			p := m.start(t)
			out, err := psql(t, p, tenantA, "-c", `\l`)
			if err != nil || !strings.Contains(out, demo.Database+"|") {
				t.Fatalf(`psql -c '\l': %v\n%s`, err, out)
			}
		})
	})
}

// Finding 2. Tenant B's pipelined statements get exactly their own replies,
// in order, while tenant A, between its transactions on the same pooled
// connection (a pool of one), sends statements longer than one read. On
// the code of issue 12 A's request side flushes the writer of the pooled
// connection it last held, which B now owns: B's statements are sent twice
// or torn, and B reads another statement's row (or the race detector
// reports the shared writer).
func TestRelayLongStatementBetweenTransactionsKeepsOtherTenantsReplies(t *testing.T) {
	const groups = 20
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := relayProxied(t, p, tenantA, "relay_corrupt_a")
		b := relayProxied(t, p, tenantB, "relay_corrupt_b")
		// Both sessions have run a transaction, so A has held the
		// pooled connection before its long statements.
		for _, c := range []*ppConn{a, b} {
			if got, err := c.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT 1")}, 0); err != nil {
				t.Fatalf("warm-up: %q %v", got, err)
			}
		}
		stop := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		var roundsA, roundsB int
		var batch []pgproto3.FrontendMessage
		var want []string
		for i := 1; i <= groups; i++ {
			batch = append(batch, ppParse("", fmt.Sprintf("SELECT %d AS n", i)), ppBind(""), ppExec(), ppSync())
			want = append(want, "ParseComplete", "BindComplete", fmt.Sprintf("DataRow %d", i), "CommandComplete SELECT 1", "ReadyForQuery I")
		}
		batchB := relayEncode(t, batch)
		long := relayEncode(t, []pgproto3.FrontendMessage{ppQuery(relayLongSQL)})
		wg.Add(2)
		go func() { // tenant B: pipelines of Sync groups, every value checked
			defer wg.Done()
			for ; time.Now().Before(stop); roundsB++ {
				if err := relayWrite(b, batchB, 0); err != nil {
					t.Errorf("tenant B, round %d: send: %v", roundsB, err)
					return
				}
				deadline := time.Now().Add(relayReplyWithin)
				var got []string
				for len(got) < len(want) {
					msg, err := relayReceive(b, deadline)
					if err != nil {
						t.Errorf("tenant B, round %d: after %d replies: %v", roundsB, len(got), err)
						return
					}
					got = append(got, relayDescribe(msg))
					if n := len(got) - 1; got[n] != want[n] {
						t.Errorf("CORRUPTED: tenant B, round %d: reply %d (statement %d) is %q, want %q; replies so far: %q",
							roundsB, n, n/5+1, got[n], want[n], got)
						return
					}
				}
			}
		}()
		go func() { // tenant A: a short transaction, then a long statement in two pieces
			defer wg.Done()
			for ; time.Now().Before(stop); roundsA++ {
				if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT 1")}, 0); err != nil || len(got) != 4 || got[1] != "DataRow 1" {
					t.Errorf("tenant A, round %d: SELECT 1: %q %v", roundsA, got, err)
					return
				}
				if err := relayWrite(a, long, 200); err != nil {
					t.Errorf("tenant A, round %d: send: %v", roundsA, err)
					return
				}
				var got []string
				deadline := time.Now().Add(relayReplyWithin)
				for len(got) == 0 || got[len(got)-1] != "ReadyForQuery I" {
					msg, err := relayReceive(a, deadline)
					if err != nil {
						t.Errorf("tenant A, round %d: long statement: %q %v", roundsA, got, err)
						return
					}
					got = append(got, relayDescribe(msg))
				}
				if want := fmt.Sprintf("DataRow %s|%d", tenantA.ID, len(demo.Projects[tenantA.ID])); len(got) != 4 || got[1] != want {
					t.Errorf("CORRUPTED: tenant A, round %d: long statement got %q, want its row %q", roundsA, got, want)
					return
				}
			}
		}()
		wg.Wait()
		t.Logf("%d rounds of tenant A, %d pipelines of %d statements of tenant B", roundsA, roundsB, groups)
	})
}

// relayWedges are the sequences of finding 3, (a) to (d), and their
// neighbours. PostgreSQL answers (a) and (d) with an error or the COPY's
// result and ReadyForQuery, and (b) and (c) with ERROR 08P01, FATAL 08P01
// ("protocol synchronization was lost") and a close; on the code of issue
// 12 pgtenant answers nothing more and holds the session (and in
// transaction mode a pooled connection) forever. The neighbours (the second
// COPY fed normally, at once, after a pause, failed, with a Flush) are
// answered correctly today and must stay so.
func relayWedges() []struct {
	desc  string
	steps []relayStep
} {
	copyIn := ppQuery("COPY copy_sink (line) FROM STDIN")
	copyTwice := ppQuery("COPY copy_sink (line) FROM STDIN; COPY copy_sink (line) FROM STDIN")
	data := func(s string) *pgproto3.CopyData { return &pgproto3.CopyData{Data: []byte(relayLine + "-" + s + "\n")} }
	done := &pgproto3.CopyDone{}
	return []struct {
		desc  string
		steps []relayStep
	}{
		{"(a) Execute of a portal that does not exist, CopyData, Sync", []relayStep{
			relayAt(ppExecPortal("no_such_portal"), data("stray"), ppSync()),
		}},
		{"(b) COPY FROM STDIN, then a Query instead of copy data", []relayStep{
			relayAt(copyIn),
			relayAt(ppQuery("SELECT 1")),
		}},
		{"(b) COPY FROM STDIN and a Query in one write", []relayStep{
			relayAt(copyIn, ppQuery("SELECT 1")),
		}},
		{"(c) the second COPY of a two-COPY Query, a Query instead of its data", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			relayAt(ppQuery("SELECT 1")),
		}},
		{"(d) Syncs during the second COPY of a two-COPY Query", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			relayAt(ppSync(), ppSync()),
			relayAt(data("second"), done),
		}},
		{"the second COPY of a two-COPY Query, fed", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			relayAt(data("second"), done),
		}},
		{"the second COPY of a two-COPY Query, all in one write", []relayStep{
			relayAt(copyTwice, data("first"), done, data("second"), done),
		}},
		{"the second COPY of a two-COPY Query, its data after a pause", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			{pause: 1500 * time.Millisecond, msgs: []pgproto3.FrontendMessage{data("second"), done}},
		}},
		{"the second COPY of a two-COPY Query, CopyFail", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			relayAt(&pgproto3.CopyFail{Message: "client gives up"}),
		}},
		{"the second COPY of a two-COPY Query, a Flush and its data", []relayStep{
			relayAt(copyTwice),
			relayAt(data("first"), done),
			relayAt(ppFlush(), data("second"), done),
		}},
	}
}

// Finding 3, the replies: each wedge sequence is answered as PostgreSQL
// answers it, within relayReplyWithin, and the session goes on.
func TestRelayWedgesAnswerLikePostgres(t *testing.T) {
	relayCleanCopySink(t)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, w := range relayWedges() {
			t.Run(w.desc, func(t *testing.T) {
				p := m.start(t)
				relaySameAsPostgres(t, p, tenantA, fmt.Sprintf("relay_wedge_%d", i), w.steps)
			})
		}
	})
}

// Finding 3, hanging up: a client that sent a wedge sequence, waited and hung
// up leaves no upstream behind (session mode: its backend is gone; transaction
// mode: the pool of two still serves two transactions of another tenant, and
// no third backend stays open).
func TestRelayWedgeHangUpReleasesUpstream(t *testing.T) {
	relayCleanCopySink(t)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, w := range relayWedges() {
			t.Run(w.desc, func(t *testing.T) {
				since := relayNow(t)
				p := m.start(t)
				app := fmt.Sprintf("relay_wedge_hangup_%d", i)
				c := relayProxied(t, p, tenantA, app)
				for _, s := range w.steps {
					if err := relayWrite(c, relayEncode(t, s.msgs), 0); err != nil {
						t.Fatalf("send: %v", err)
					}
					time.Sleep(150 * time.Millisecond)
				}
				time.Sleep(300 * time.Millisecond)
				c.conn.Close()
				relayWantReleased(t, p, m, app, since, modePoolSize, "hung up after: "+w.desc)
			})
		}
	})
}

// Finding 4. A Query after extended-protocol messages not closed by a Sync
// runs as it does on PostgreSQL, in the shapes real drivers send (on the
// code of issue 12 pgtenant ends the session with FATAL 08P01).
func TestRelayQueryAfterUnsyncedExtendedMessages(t *testing.T) {
	relayCleanCopySink(t)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, tc := range []struct {
			desc  string
			steps []relayStep
		}{
			// asyncpg's copy_records_to_table: the column types from a
			// prepared statement (Parse, Describe, Flush; the replies
			// read), then the COPY as a simple Query.
			{"asyncpg copy_records_to_table", []relayStep{
				relayAt(ppParse("__asyncpg_stmt_1__", "SELECT line FROM copy_sink LIMIT 1"), ppDescribeStmt("__asyncpg_stmt_1__"), ppFlush()),
				relayAt(ppQuery("COPY copy_sink (line) FROM STDIN")),
				relayAt(&pgproto3.CopyData{Data: []byte(relayLine + "-asyncpg\n")}, &pgproto3.CopyDone{}),
			}},
			// PgJDBC autosave=conservative, in one write: BEGIN without a
			// Sync, the savepoint as a Query, the statement, Sync.
			{"PgJDBC autosave=conservative", []relayStep{
				relayAt(
					ppParse("", "BEGIN"), ppBind(""), ppExec(),
					ppQuery("SAVEPOINT PGJDBC_AUTOSAVE"),
					ppParse("", "SELECT current_setting('app.tenant_id') AS tenant"), ppBind(""), ppDescribePortal(""), ppExec(), ppSync(),
				),
				relayAt(ppQuery("COMMIT")),
			}},
			// A Query after a group that failed is skipped with it, up to
			// the Sync.
			{"a failed group skips the Query sent in it", []relayStep{
				relayAt(ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppQuery("SELECT 1"), ppSync()),
				relayAt(ppQuery("SELECT 2 AS n")),
			}},
			// The same with the unsynced messages read first (Flush).
			{"Parse, Bind, Execute, Flush, then a Query", []relayStep{
				relayAt(ppParse("", "SELECT 42 AS n"), ppBind(""), ppExec(), ppFlush()),
				relayAt(ppQuery("SELECT 43 AS n")),
			}},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				p := m.start(t)
				relaySameAsPostgres(t, p, tenantA, fmt.Sprintf("relay_unsynced_%d", i), tc.steps)
			})
		}
	})
}

// A Query ending a transaction block (END, ROLLBACK, COMMIT), sent after
// extended-protocol messages with no Sync while the block's failure was not
// yet known to pgtenant (all in one write), ends the block as on PostgreSQL;
// anything else keeps its assertion (fuzzer seed 4569883905413853720:
// pgtenant asserted ahead of the END, the assertion failed with 25P02, and
// the server skipped the END up to a Sync the client never sends).
func TestRelayTransactionEndAfterUnsyncedClose(t *testing.T) {
	failed := []pgproto3.FrontendMessage{ppQuery("BEGIN"), ppQuery("SELECT 1/0"), ppCloseStmt("")}
	ended := []string{"CommandComplete BEGIN", "ReadyForQuery T", "ErrorResponse 22012", "ReadyForQuery E",
		"CloseComplete", "CommandComplete ROLLBACK", ppRFQ}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for _, tc := range []struct {
			desc  string
			steps []ppStep
		}{
			{"END after a failed block", []ppStep{ppAs(0, ended, append(failed, ppQuery("END"))...)}},
			{"ROLLBACK after a failed block", []ppStep{ppAs(0, ended, append(failed, ppQuery("ROLLBACK"))...)}},
			{"the fuzzer's shape: PgJDBC autosave, a failed Execute, Close, END", []ppStep{ppAs(0, nil,
				ppParse("", "BEGIN"), ppBind(""), ppExec(), ppQuery("SAVEPOINT PGJDBC_AUTOSAVE"),
				ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppSync(),
				ppCloseStmt(""), ppQuery("END"),
			)}},
			{"COMMIT of a valid block", []ppStep{ppAs(0, nil,
				ppQuery("BEGIN"), ppQuery(ppCount), ppCloseStmt(""), ppQuery("COMMIT"),
			)}},
			// Anything else in a failed block is PostgreSQL's to answer:
			// 25P02, or what follows a ROLLBACK in the string, which runs
			// with the tenant's committed context (in transaction mode after
			// another tenant held the connection).
			{"SELECT after a failed block", []ppStep{
				ppAs(0, append(ended[:4:4], "CloseComplete", "ErrorResponse 25P02", "ReadyForQuery E"), append(failed, ppQuery("SELECT 1"))...),
				ppAs(0, []string{"CommandComplete ROLLBACK", ppRFQ}, ppQuery("ROLLBACK")),
			}},
			{"ROLLBACK and a SELECT in one Query after a failed block", []ppStep{
				ppAs(1, nil, ppQuery(ppCount)),
				ppAs(0, nil, append(failed, ppQuery("ROLLBACK; SELECT current_setting('app.tenant_id')"))...),
				ppAs(1, nil, ppQuery(ppCount)),
			}},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				ppScenario(t, m.start(t), []demo.Tenant{tenantA, tenantB}, tc.steps)
			})
		}
		// The guard's refusal takes the place of PostgreSQL's 25P02, and
		// the session goes on.
		t.Run("a refused statement after a failed block", func(t *testing.T) {
			c := ppHijack(t, m.start(t).pgconnect(t, tenantA))
			want := append(ended[:4:4], "CloseComplete", "ErrorResponse 42501", "ReadyForQuery E")
			if got, err := c.exchange(append(failed, ppQuery("SET app.tenant_id = 'x'")), 0); err != nil || !slices.Equal(got, want) {
				t.Fatalf("got %q (%v), want %q", got, err, want)
			}
			if got, err := c.exchange([]pgproto3.FrontendMessage{ppQuery("ROLLBACK")}, 0); err != nil || !slices.Equal(got, []string{"CommandComplete ROLLBACK", ppRFQ}) {
				t.Fatalf("ROLLBACK: %q (%v)", got, err)
			}
		})
	})
}

// relaySlowWriter takes its first write after a pause, as a client that
// reads slowly (psql's \copy ... to program 'sleep 3; wc -c').
type relaySlowWriter struct {
	pause time.Duration
	n     int
}

func (w *relaySlowWriter) Write(b []byte) (int, error) {
	if w.n == 0 {
		time.Sleep(w.pause)
	}
	w.n += len(b)
	return len(b), nil
}

// Finding 5. limits.upstream_timeout counts only time spent waiting on the
// upstream: a client that reads a 50 MB COPY TO STDOUT slowly (nothing for
// three seconds, with a timeout of one) gets all of it (on the code of issue
// 12 the session is cut off after a few MB).
func TestRelayUpstreamTimeoutIgnoresSlowClient(t *testing.T) {
	const rows, width = 50000, 1000
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) {
			c.Limits.UpstreamTimeout = config.Duration{Duration: time.Second}
		})
		conn := p.pgconnect(t, tenantA)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		w := &relaySlowWriter{pause: 3 * time.Second}
		tag, err := conn.CopyTo(ctx, w, fmt.Sprintf("COPY (SELECT repeat('x', %d) FROM generate_series(1, %d)) TO STDOUT", width, rows))
		if err != nil || tag.String() != fmt.Sprintf("COPY %d", rows) || w.n != rows*(width+1) {
			t.Fatalf("slow reader of COPY TO STDOUT with upstream_timeout 1s: got %d of %d bytes, tag %q, error %v", w.n, rows*(width+1), tag.String(), err)
		}
		// The session goes on.
		if got := queryOne(t, conn, currentTenant); got != tenantA.ID {
			t.Fatalf("after the COPY: tenant %q", got)
		}
	})
}

// Finding 6 (issue 12, item 6). A client that hangs up releases its upstream
// within relayReleaseWithin whatever state its session is in: waiting for
// replies, in COPY FROM STDIN, in the middle of a message, in an
// extended-protocol group, in a transaction block.
func TestRelayHangUpReleasesUpstream(t *testing.T) {
	relayCleanCopySink(t)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		copyIn := func(t *testing.T) []byte {
			return relayEncode(t, []pgproto3.FrontendMessage{ppQuery("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte(relayLine + "-hangup\n")}})
		}
		for i, tc := range []struct {
			desc string
			send func(t *testing.T) []byte
		}{
			{"waiting for a large result it does not read", func(t *testing.T) []byte {
				return relayEncode(t, []pgproto3.FrontendMessage{ppQuery("SELECT repeat('x', 1000) FROM generate_series(1, 200000)")})
			}},
			{"waiting for a slow statement", func(t *testing.T) []byte {
				return relayEncode(t, []pgproto3.FrontendMessage{ppQuery("SELECT pg_sleep(10)")})
			}},
			{"in COPY FROM STDIN", copyIn},
			{"in COPY FROM STDIN, in the middle of a CopyData (1000 bytes announced, 50 sent)", func(t *testing.T) []byte {
				return append(append(copyIn(t), badHeader('d', 1004)...), strings.Repeat("y", 50)...)
			}},
			{"in the middle of a Query (1000 bytes announced, 50 sent)", func(t *testing.T) []byte {
				return append(badHeader('Q', 1004), ("SELECT 1 /*" + strings.Repeat("z", 39))...)
			}},
			{"in an extended-protocol group without Sync", func(t *testing.T) []byte {
				return relayEncode(t, []pgproto3.FrontendMessage{ppParse("", "SELECT 1"), ppBind(""), ppExec()})
			}},
			{"in a transaction block", func(t *testing.T) []byte {
				return relayEncode(t, []pgproto3.FrontendMessage{ppQuery("BEGIN; SELECT 1")})
			}},
			{"in a failed transaction block", func(t *testing.T) []byte {
				return relayEncode(t, []pgproto3.FrontendMessage{ppQuery("BEGIN"), ppQuery("SELECT 1/0")})
			}},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				relayHangUpReleases(t, m, fmt.Sprintf("relay_hangup_%d", i), tc.send(t), "hung up "+tc.desc)
			})
		}
	})
}

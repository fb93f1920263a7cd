package e2e

// Messages larger than pgtenant's 8 KiB read buffers, in both directions,
// since the relay's request and reply sides became a core that takes one
// message as bytes and a driver that reads the sockets: the driver hands
// the core a message whole, or only the head of one it streams.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

// TestRelayHugeDescribeHeaderOnly: a client that announces a Describe (or
// Close) larger than the guard's 64 MiB and sends only its header does not
// crash its session in pgtenant (the request side indexed the byte after the
// header, which had not come). When it hangs up, its upstream goes.
func TestRelayHugeDescribeHeaderOnly(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, typ := range []byte{'D', 'C'} {
			t.Run(string(typ), func(t *testing.T) {
				since := relayNow(t)
				p := m.start(t)
				app := fmt.Sprintf("relay_huge_header_%d", i)
				c := relayProxied(t, p, tenantA, app)
				if got, err := c.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT 1")}, 0); err != nil {
					t.Fatalf("warm-up: %q %v", got, err)
				}
				if err := relayWrite(c, badHeader(typ, 70<<20), 0); err != nil {
					t.Fatalf("send: %v", err)
				}
				time.Sleep(500 * time.Millisecond)
				if strings.Contains(p.logs.String(), "pgtenant bug") {
					t.Errorf("a %q of 70 MiB announced, its header sent: pgtenant panicked:\n%s", typ, p.logs.String())
				}
				c.conn.Close()
				relayWantReleased(t, p, m, app, since, modePoolSize, fmt.Sprintf("hung up after the header of a 70 MiB %q", typ))
			})
		}
	})
}

// relayBig is n bytes of text, different at every position mod 26, so that
// a torn or shifted message shows.
func relayBig(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteByte('a' + byte(i%26))
	}
	return b.String()
}

// TestRelayLargeMessagesSameAsPostgres: statements, parameters, rows, copy
// data and errors larger than the read buffers (some far larger) are
// answered as PostgreSQL answers them, message by message: in transaction
// mode a named statement's Bind is rewritten at its head and its
// parameters streamed behind it.
func TestRelayLargeMessagesSameAsPostgres(t *testing.T) {
	relayCleanCopySink(t)
	big, huge := relayBig(20000), relayBig(300000)
	steps := []relayStep{
		// A Query read whole for the guard; a DataRow relayed in pieces.
		relayAt(ppQuery("SELECT '" + big + "' AS v")),
		relayAt(ppQuery("SELECT length('" + huge + "') AS n, md5('" + huge + "') AS h")),
		// Bind parameters larger than the buffer: the unnamed statement
		// (relayed as it is), then a named one (rewritten in transaction
		// mode), twice in one group, then a large and a small group in one
		// write.
		relayAt(ppParse("", "SELECT $1::text AS v, length($1::text) AS n"), ppBind("", big), ppExec(), ppSync()),
		relayAt(ppParse("large_bind", "SELECT md5($1::text) AS h, length($1::text) AS n"), ppBind("large_bind", huge), ppExec(), ppSync()),
		relayAt(ppBind("large_bind", big), ppExec(), ppBind("large_bind", huge), ppExec(), ppSync()),
		relayAt(ppBind("large_bind", huge), ppExec(), ppSync(), ppBind("large_bind", "small"), ppExec(), ppSync()),
		// A named statement whose text is larger than the buffer.
		relayAt(ppParse("large_text", "SELECT length($1::text) AS n /* "+big+" */"), ppBind("large_text", "x"), ppExec(), ppSync()),
		relayAt(ppBind("large_text", big), ppExec(), ppSync()),
		// Errors larger than the buffer: in a block, in a named
		// statement's group, and from a statement that is not large itself.
		relayAt(ppQuery("BEGIN"), ppQuery("SELECT '"+big+"'::int")),
		relayAt(ppQuery("ROLLBACK")),
		relayAt(ppParse("large_error", "SELECT $1::int"), ppBind("large_error", big), ppExec(), ppSync()),
		relayAt(ppQuery("SELECT repeat('e', 20000)::int")),
		// Copy data larger than the buffer, both ways.
		relayAt(ppQuery("COPY (SELECT '" + big + "' AS v, 2 AS n) TO STDOUT")),
		relayAt(ppQuery("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte(relayLine + "-large-" + huge + "\n")}, &pgproto3.CopyDone{}),
		relayAt(ppQuery("DELETE FROM copy_sink WHERE line LIKE '" + relayLine + "-large-%' RETURNING length(line), md5(line)")),
		// Large messages arriving in pieces.
		{msgs: []pgproto3.FrontendMessage{ppQuery("SELECT md5('" + huge + "') AS h")}, chunk: 16000},
		{msgs: []pgproto3.FrontendMessage{ppBind("large_bind", huge), ppExec(), ppSync()}, chunk: 16000},
		// In one write: a large Query, a large Bind, a small Query.
		relayAt(ppQuery("SELECT md5('"+huge+"') AS h"), ppParse("", "SELECT md5($1::text) AS h"), ppBind("", huge), ppExec(), ppSync(), ppQuery("SELECT 1 AS n")),
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		relaySameAsPostgres(t, p, tenantA, "relay_large_"+m.name, steps)
	})
}

// TestRelayLargeSettingCarried: a custom setting larger than the read
// buffer is the client's own in both modes. In transaction mode pgtenant
// reads it back (a DataRow larger than the buffer, which the reply side's
// core needs whole), asserts it on whichever connection the client's next
// transactions get, and never shows it to another tenant on the same pool.
func TestRelayLargeSettingCarried(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		v1, v2 := relayBig(20000), strings.ToUpper(relayBig(30000))
		want := func(value, what string) {
			t.Helper()
			if got := queryOne(t, a, "SHOW myapp.blob"); got != value {
				t.Fatalf("%s: SHOW myapp.blob is %d bytes (%.30q...), want %d bytes", what, len(got), got, len(value))
			}
		}
		queryRows(t, a, "SET myapp.blob = '"+v1+"'")
		want(v1, "after SET")
		for i := 0; i < 3; i++ {
			// B holds a connection in a block (in transaction mode): A's
			// transactions run on another, then on either.
			queryRows(t, b, "BEGIN")
			if got := queryOne(t, a, "SELECT current_setting('myapp.blob')"); got != v1 {
				t.Fatalf("round %d: current_setting is %d bytes, want %d", i, len(got), len(v1))
			}
			res := a.ExecParams(context.Background(), "SELECT current_setting($1)", [][]byte{[]byte("myapp.blob")}, nil, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != v1 {
				t.Fatalf("round %d: extended protocol: %v, %d rows", i, res.Err, len(res.Rows))
			}
			queryRows(t, b, "COMMIT")
			if got := queryOne(t, b, "SELECT coalesce(current_setting('myapp.blob', true), '')"); got != "" {
				t.Fatalf("round %d: tenant B sees %d bytes of tenant A's setting", i, len(got))
			}
		}
		queryRows(t, a, "BEGIN; SET myapp.blob = '"+v2+"'; COMMIT")
		want(v2, "after a block that set it")
		queryRows(t, a, "BEGIN; SET myapp.blob = 'rolled back'; ROLLBACK")
		want(v2, "after a block that set it and rolled back")
		queryRows(t, b, "BEGIN")
		want(v2, "on another connection")
		queryRows(t, b, "COMMIT")
		queryRows(t, a, "RESET myapp.blob")
		want("", "after RESET")
	})
}

// TestRelayLargeErrorsAndNoticesIntact: errors and notices larger than the
// read buffer reach the client whole (the reply side's core reads them
// whole), from simple and extended statements, and the session goes on.
func TestRelayLargeErrorsAndNoticesIntact(t *testing.T) {
	superQuery(t, `CREATE OR REPLACE FUNCTION relay_large_notice(n int) RETURNS int LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE '%', repeat('n', n); RETURN n; END$$`)
	t.Cleanup(func() { superQuery(t, "DROP FUNCTION IF EXISTS relay_large_notice(int)") })
	big := relayBig(20000)
	wantIntact := `invalid input syntax for type integer: "` + big + `"`
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg, err := pgconn.ParseConfig(p.connString(tenantA))
		if err != nil {
			t.Fatal(err)
		}
		var notices []string
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		wantError := func(what string, err error, want string) {
			t.Helper()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "22P02" || pgErr.Message != want {
				t.Fatalf("%s: %v (%T), want 22P02 with a message of %d bytes", what, err, err, len(want))
			}
		}
		_, err = conn.Exec(ctx, "SELECT '"+big+"'::int").ReadAll()
		wantError("simple Query", err, wantIntact)
		_, err = conn.Exec(ctx, "BEGIN; SELECT '"+big+"'::int").ReadAll()
		wantError("in a block", err, wantIntact)
		queryRows(t, conn, "ROLLBACK")
		_, err = conn.Exec(ctx, "SELECT repeat('e', 20000)::int").ReadAll()
		wantError("built by the server", err, `invalid input syntax for type integer: "`+strings.Repeat("e", 20000)+`"`)
		if _, err := conn.Prepare(ctx, "large_error", "SELECT $1::int", nil); err != nil {
			t.Fatal(err)
		}
		wantError("named statement", conn.ExecPrepared(ctx, "large_error", [][]byte{[]byte(big)}, nil, nil).Read().Err, wantIntact)
		wantError("unnamed statement", conn.ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte(big)}, nil, nil, nil).Read().Err, wantIntact)
		for _, sql := range []string{"SELECT relay_large_notice(20000)", "BEGIN; SELECT relay_large_notice(20000); COMMIT"} {
			notices = nil
			queryRows(t, conn, sql)
			if len(notices) != 1 || notices[0] != strings.Repeat("n", 20000) {
				t.Fatalf("%s: %d notices, want one of 20000 bytes", sql, len(notices))
			}
		}
		notices = nil
		res := conn.ExecParams(ctx, "SELECT relay_large_notice($1::int)", [][]byte{[]byte("30000")}, nil, nil, nil).Read()
		if res.Err != nil || len(notices) != 1 || notices[0] != strings.Repeat("n", 30000) {
			t.Fatalf("extended protocol: %v, %d notices, want one of 30000 bytes", res.Err, len(notices))
		}
		if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("after the large errors: tenant %q", got)
		}
	})
}

// TestRelayLargeUnguarded: with the guard off (a trusted user; session mode
// only, as transaction mode requires the guard) a Query larger than the
// read buffer is relayed without being read whole, and so is a FunctionCall
// and its FunctionCallResponse, larger than the buffer too.
func TestRelayLargeUnguarded(t *testing.T) {
	relayCleanCopySink(t)
	repeatOID := superQuery(t, "SELECT 'repeat(text,integer)'::regprocedure::oid::text")[0][0]
	var oid uint32
	fmt.Sscan(repeatOID, &oid)
	big := relayBig(20000)
	off := false
	p := startProxy(t, func(c *config.Config) { c.Users[0].Guard = &off })
	relaySameAsPostgres(t, p, tenantA, "relay_large_unguarded", []relayStep{
		relayAt(ppQuery("SELECT '" + big + "' AS v, length('" + big + "') AS n")),
		relayAt(ppParse("", "SELECT length($1::text) AS n /* "+big+" */"), ppBind("", big), ppExec(), ppSync()),
		relayAt(&pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte(big), []byte("3")}, ResultFormatCode: 0}),
		relayAt(ppQuery("COPY copy_sink (line) FROM STDIN /* "+big+" */"), &pgproto3.CopyData{Data: []byte(relayLine + "-unguarded-" + big + "\n")}, &pgproto3.CopyDone{}),
		relayAt(ppQuery("DELETE FROM copy_sink WHERE line LIKE '" + relayLine + "-unguarded-%' RETURNING length(line)")),
	})
}

// TestRelayLargeHangUpReleasesUpstream: a client that hangs up in the middle
// of a message larger than the read buffer (one read whole for the guard,
// or one whose head went upstream and whose rest was streaming) releases its
// upstream.
func TestRelayLargeHangUpReleasesUpstream(t *testing.T) {
	relayCleanCopySink(t)
	cut := func(t *testing.T, msgs []pgproto3.FrontendMessage, keep int) []byte {
		b := relayEncode(t, msgs)
		return b[:len(b)-keep]
	}
	huge := relayBig(100000)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, tc := range []struct {
			desc string
			send func(t *testing.T) []byte
		}{
			{"a 100 KB Query, 20 KB sent", func(t *testing.T) []byte {
				return cut(t, []pgproto3.FrontendMessage{ppQuery("SELECT '" + huge + "'")}, 80000)
			}},
			{"a named statement's 100 KB Bind, 20 KB sent", func(t *testing.T) []byte {
				return cut(t, []pgproto3.FrontendMessage{ppParse("s", "SELECT $1::text"), ppBind("s", huge)}, 80000)
			}},
			{"a 100 KB CopyData, 20 KB sent", func(t *testing.T) []byte {
				return cut(t, []pgproto3.FrontendMessage{ppQuery("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte(huge)}}, 80000)
			}},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				relayHangUpReleases(t, m, fmt.Sprintf("relay_large_hangup_%d", i), tc.send(t), "hung up in "+tc.desc)
			})
		}
	})
}

// TestRelayLargeRowsSharedConnection: two tenants take turns on one pooled
// connection (transaction mode; in session mode each has its own), one
// reading rows larger than the read buffer with a large setting carried,
// the other short statements: each gets its own values, whole (under
// -race, also no relay touched by a connection's reader after its lease).
func TestRelayLargeRowsSharedConnection(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		blob := relayBig(12000)
		queryRows(t, a, "SET myapp.blob = '"+blob+"'")
		stop := time.Now().Add(2 * time.Second)
		done := make(chan error, 2)
		go func() {
			for i := 0; time.Now().Before(stop); i++ {
				res, err := a.Exec(context.Background(), "SELECT current_setting('myapp.blob') || n, current_setting('app.tenant_id') FROM generate_series(1, 3) n").ReadAll()
				if err != nil {
					done <- fmt.Errorf("tenant A, round %d: %v", i, err)
					return
				}
				for j, row := range res[0].Rows {
					if string(row[0]) != blob+fmt.Sprint(j+1) || string(row[1]) != tenantA.ID {
						done <- fmt.Errorf("tenant A, round %d, row %d: %d bytes, tenant %q", i, j, len(row[0]), row[1])
						return
					}
				}
			}
			done <- nil
		}()
		go func() {
			for i := 0; time.Now().Before(stop); i++ {
				res, err := b.Exec(context.Background(), "SELECT current_setting('app.tenant_id'), coalesce(current_setting('myapp.blob', true), '')").ReadAll()
				if err != nil {
					done <- fmt.Errorf("tenant B, round %d: %v", i, err)
					return
				}
				if row := res[0].Rows[0]; string(row[0]) != tenantB.ID || len(row[1]) != 0 {
					done <- fmt.Errorf("tenant B, round %d: tenant %q, myapp.blob of %d bytes", i, row[0], len(row[1]))
					return
				}
			}
			done <- nil
		}()
		for range 2 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
	})
}

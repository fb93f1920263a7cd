package e2e

// Red-team tests of transaction pool mode: a hostile tenant shares one
// pooled upstream connection (pool size 1) with another tenant and tries to
// leave state behind, read what the other left, or desynchronize the reply
// stream so that one tenant reads the other's replies. Each test states what
// must hold; a test that fails here shows a leak. The scenarios that do not
// depend on sharing a connection (guard refusals, abandoned work, pipelines
// with errors, a failed COPY) run in session mode too.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// rtSend writes msgs to a raw connection in one flush.
func rtSend(t *testing.T, c *ppConn, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// rtRead reads and describes replies until stop holds for one of them, the
// connection fails or d passes (the error says which).
func rtRead(c *ppConn, d time.Duration, stop func(pgproto3.BackendMessage) bool) ([]string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = c.conn.SetReadDeadline(time.Time{}) }()
	var out []string
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			return out, err
		}
		out = append(out, describe(msg))
		if stop(msg) {
			return out, nil
		}
	}
}

func rtIsRFQ(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok }

// rtWho is the tenant context and the rows a statement sees: it names the
// tenant it ran for.
const rtWho = "SELECT current_setting('app.tenant_id', true) AS tenant, coalesce(string_agg(name, ',' ORDER BY id), '') AS names FROM projects"

// rtWant checks that conn runs as tn and sees exactly tn's rows.
func rtWant(t *testing.T, conn *pgconn.PgConn, tn demo.Tenant, after string) {
	t.Helper()
	rows := queryRows(t, conn, rtWho)
	want := []string{tn.ID, strings.Join(demo.Projects[tn.ID], ",")}
	if len(rows) != 1 || rows[0][0] != want[0] || rows[0][1] != want[1] {
		t.Errorf("after %s, %s sees %v, want %v", after, tn.Name, rows, want)
	}
}

// rtExecErr runs sql as a simple query and returns its error.
func rtExecErr(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql).ReadAll()
	return err
}

// rtGrantTemp lets the pooled role create temporary objects for the test:
// the demo schema revokes TEMPORARY, which would hide what the pool-mode
// guard itself lets through.
func rtGrantTemp(t *testing.T) {
	superQuery(t, "GRANT TEMPORARY ON DATABASE app TO "+demo.RLSRole)
	t.Cleanup(func() { superQuery(t, "REVOKE TEMPORARY ON DATABASE app FROM "+demo.RLSRole) })
}

// LEAK (protocol desync). pgtenant decides that the upstream is in COPY FROM
// STDIN from a flag the response side sets at CopyInResponse and clears only
// when it reads the next ReadyForQuery. Copy data the client sends after its
// own CopyDone (and after more Syncs) is taken as proof that the server still
// reads copy data: pgtenant then believes the Syncs in between were ignored,
// so it expects fewer ReadyForQuery than the server sends and relays later
// groups without queueing a unit for them. The lease ends at the first
// ReadyForQuery; the rest of the attacker's replies go to whoever holds the
// connection next: the pool's own reset round trip eats the first group, the
// next client's relay takes the second as its own replies (its assertion's
// five replies forged by the attacker), and the shift carries on. Tenant B
// gets rows of tenant A's choosing as the answer to its query; and A, queued
// behind B, usually gets B's replies, B's rows, as the answer to its own.
func TestPoolRedTeamCopyDesync(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	b := ppHijack(t, p.pgconnect(t, tenantB))

	// A starts a COPY FROM STDIN in an extended-protocol group and waits
	// for CopyInResponse: pgtenant's flag is now set.
	rtSend(t, a, ppParse("", "COPY copy_sink (line) FROM STDIN"), ppBind(""), ppExec(), ppSync())
	if got, err := rtRead(a, 5*time.Second, func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.CopyInResponse)
		return ok
	}); err != nil {
		t.Fatalf("COPY did not start: %v %v", got, err)
	}
	stray := &pgproto3.CopyData{Data: []byte("x\n")}
	done := &pgproto3.CopyDone{}
	rtSend(t, a,
		done,                                                                // ends the COPY; its group goes on (its Sync was ignored)
		ppParse("", "SELECT pg_sleep(0.5)"), ppBind(""), ppExec(), ppSync(), // the lease ends at this ReadyForQuery
		stray, done, // "still in COPY": pgtenant now thinks the Sync above was ignored
		// Unit-less group 1: eaten by the reset round trip of the next holder.
		ppParse("", "SELECT pg_sleep(0.5)"), ppBind(""), ppExec(), ppSync(),
		stray, done,
		// Unit-less group 2: five replies shaped like the next holder's
		// assertion (ParseComplete, BindComplete, CommandComplete,
		// CloseComplete x2), then A's rows.
		ppParse("", "SELECT 1 FROM pg_sleep(0.5) WHERE false"), ppBind(""), ppExec(), ppCloseStmt(""), ppClosePortal(""),
		ppParse("", rtWho), ppBind(""), ppDescribePortal(""), ppExec(), ppSync(),
	)
	time.Sleep(100 * time.Millisecond)
	// B queries while A holds the connection; it gets it when A's lease ends.
	rtSend(t, b, ppParse("", rtWho), ppBind(""), ppDescribePortal(""), ppExec(), ppSync())
	gotA1, errA1 := rtRead(a, 5*time.Second, rtIsRFQ)
	time.Sleep(200 * time.Millisecond)
	// A queues behind B for its next transaction.
	rtSend(t, a, ppParse("", rtWho), ppBind(""), ppDescribePortal(""), ppExec(), ppSync())
	gotB, errB := rtRead(b, 8*time.Second, rtIsRFQ)
	gotA2, errA2 := rtRead(a, 8*time.Second, rtIsRFQ)
	t.Logf("A, first reply: %q (%v)", gotA1, errA1)
	t.Logf("B's reply to its query: %q (%v)", gotB, errB)
	t.Logf("A's reply to its second query: %q (%v)", gotA2, errA2)
	if s := strings.Join(gotB, "\n"); strings.Contains(s, tenantA.ID) || strings.Contains(s, "rocket sled") {
		t.Errorf("LEAK: tenant B's query was answered with tenant A's context and rows: %q", gotB)
	}
	if s := strings.Join(gotA2, "\n"); strings.Contains(s, tenantB.ID) || strings.Contains(s, "monorail") {
		t.Errorf("LEAK: tenant A's query was answered with tenant B's context and rows: %q", gotA2)
	}
}

// HANG ACROSS TENANTS. The same desync (see TestPoolRedTeamCopyDesync) with
// a burst of ReadyForQuery behind a slow unit-less group: while pgtenant
// believes the server reads copy data it lets Syncs through uncounted. The
// next holder's reset round trip (txPool.roundTrip) gets the burst; its
// collector sends every ReadyForQuery on a channel of one that nobody reads
// after the first, so the connection's reader blocks forever: tenant B's
// query never gets an answer, the pool slot is gone for good, and
// Server.Close never returns.
func TestPoolRedTeamCopyDesyncWedgesPool(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	b := ppHijack(t, p.pgconnect(t, tenantB))
	rtSend(t, a, ppParse("", "COPY copy_sink (line) FROM STDIN"), ppBind(""), ppExec(), ppSync())
	if got, err := rtRead(a, 5*time.Second, func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.CopyInResponse)
		return ok
	}); err != nil {
		t.Fatalf("COPY did not start: %v %v", got, err)
	}
	stray := &pgproto3.CopyData{Data: []byte("x\n")}
	done := &pgproto3.CopyDone{}
	msgs := []pgproto3.FrontendMessage{
		done,
		ppParse("", "SELECT pg_sleep(0.3)"), ppBind(""), ppExec(), ppSync(), // A's lease ends here
		stray, done,
		ppParse("", "SELECT pg_sleep(0.5)"), ppBind(""), ppExec(), ppSync(), // unit-less
		stray, // pgtenant: "in COPY" again, so the Syncs below are not counted
	}
	for i := 0; i < 20; i++ {
		msgs = append(msgs, ppSync())
	}
	rtSend(t, a, msgs...)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	got, err := b.exchange(ppRun("", rtWho), 0)
	if err != nil || !strings.Contains(strings.Join(got, ","), tenantB.ID) {
		t.Errorf("HANG/DoS: tenant B's query after A's uncounted Syncs: %q, %v after %s", got, err, time.Since(start).Round(time.Millisecond))
	}
}

// LEAK. pg_prepared_statements is refused by name (42501), but
// table_to_xml takes the view as a regclass given as a string constant,
// which the guard treats as data: tenant B reads the text of every
// statement other tenants left prepared on the shared connection (pgtenant
// keeps even closed ones prepared upstream), literals included, and learns
// pgtenant's upstream names for them.
func TestPoolRedTeamPreparedStatementsViaTableToXML(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	b := p.pgconnect(t, tenantB)
	const secret = "acme-secret-7f3a"
	got, err := a.exchange([]pgproto3.FrontendMessage{
		ppParse("s1", "SELECT name FROM projects WHERE name <> '"+secret+"'"), ppSync(),
		ppCloseStmt("s1"), ppSync(),
	}, 0)
	if err != nil {
		t.Fatalf("A: %v %v", got, err)
	}
	if err := rtExecErr(b, "SELECT statement FROM pg_prepared_statements"); pgCode(err) != "42501" {
		t.Fatalf("direct read of pg_prepared_statements: %v, want 42501", err)
	}
	for _, sql := range []string{
		"SELECT table_to_xml('pg_prepared_statements'::regclass, true, false, '')::text",
		"SELECT table_to_xml_and_xmlschema('pg_catalog.pg_prepared_statements', true, false, '')::text",
	} {
		res, err := b.Exec(context.Background(), sql).ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
			t.Logf("%s: %v", sql, err)
			continue
		}
		if out := string(res[0].Rows[0][0]); strings.Contains(out, secret) {
			t.Errorf("LEAK: tenant B read tenant A's prepared statement text with %q:\n%s", sql, out)
		}
	}
	rtWant(t, b, tenantB, "reading the statements")
}

// LEAK (requires TEMPORARY on the database, which the pool-mode guard
// otherwise handles). The login check refuses a search_path naming pg_temp
// only under the exact key "search_path"; PostgreSQL's setting names are
// case-insensitive, and pgtenant passes "-c SEARCH_PATH=pg_temp" on (sets it
// at every hand-out). Plain CREATE TABLE then creates a temporary table,
// which outlives the transaction on the shared connection and, temp schemas
// being searched first, shadows the real table for the next tenant: B's
// rows go into A's table and A reads them.
func TestPoolRedTeamStartupSearchPathCase(t *testing.T) {
	rtGrantTemp(t)
	p := startProxy(t, transactionPool(1))
	for _, opt := range []string{"options='-c SEARCH_PATH=pg_temp'", "options='-c Search_Path=pg_temp'"} {
		t.Run(opt, func(t *testing.T) {
			ctx := context.Background()
			a, err := pgconn.Connect(ctx, p.connString(tenantA, opt))
			if err != nil {
				if pgCode(err) == "0A000" {
					return // refused at login, as "search_path" is
				}
				t.Fatalf("connect: %v", err)
			}
			defer a.Close(ctx)
			// search_path is pg_temp alone: "projects" is A's temporary table.
			if err := rtExecErr(a, "CREATE TABLE projects (LIKE public.projects INCLUDING DEFAULTS)"); err != nil {
				t.Logf("CREATE TABLE refused: %v", err)
				return
			}
			defer func() { _ = rtExecErr(a, "DROP TABLE projects") }()
			b := p.pgconnect(t, tenantB)
			// B's unqualified reads and writes now go to A's table.
			rtWant(t, b, tenantB, "A's CREATE TABLE under SEARCH_PATH=pg_temp")
			err = rtExecErr(b, "INSERT INTO projects (tenant_id, name) VALUES ('"+tenantB.ID+"', 'globex-secret')")
			stolen := queryRows(t, a, "SELECT tenant_id::text, name FROM projects")
			t.Logf("B's INSERT: %v; A's temporary table now holds %v", err, stolen)
			if len(stolen) > 0 {
				t.Errorf("LEAK: tenant B's INSERT INTO projects landed in tenant A's temporary table, and A read it: %v", stolen)
			}
			superQuery(t, "DELETE FROM projects WHERE name = 'globex-secret'")
		})
	}
}

// STATE CARRIED OVER. setseed() sets the session's random() seed, which no
// reset undoes: tenant A decides the "random" values tenant B's transactions
// get next (and can count B's random() calls from where the sequence is).
func TestPoolRedTeamSetseedCarriesOver(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	// The seed would stay with the shared connection and decide tenant B's
	// random() values: refused in transaction mode.
	if _, err := a.Exec(context.Background(), "SELECT setseed(0.4242)").ReadAll(); pgCode(err) != "0A000" {
		t.Fatalf("setseed: %v, want 0A000", err)
	}
}

func TestPoolRedTeamLargeObjects(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		// Large objects have no row-level security and one role owns them all:
		// refused, so tenant A cannot store one for tenant B to read.
		if _, err := a.Exec(context.Background(), "SELECT lo_from_bytea(0, convert_to('acme-lo-secret', 'UTF8'))::text").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("lo_from_bytea: %v, want 42501", err)
		}
		if _, err := b.Exec(context.Background(), "SELECT coalesce(string_agg(convert_from(lo_get(oid), 'UTF8'), ','), '') FROM pg_largeobject_metadata").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("lo_get: %v, want 42501", err)
		}
	})
}

// Every spelling of session state and of the guard's refusals is refused on
// the shared connection, and nothing is left on it. Transaction mode only:
// session state (the 0A000 refusals) is the client's own in session mode.
func TestPoolRedTeamGuardSpellings(t *testing.T) {
	rtGrantTemp(t)
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	b := p.pgconnect(t, tenantB)
	for _, tc := range []struct{ sql, code string }{
		// Session settings: idle_session_timeout would act on the idle
		// pooled connection; a search_path naming pg_temp makes temporary tables.
		{"SET idle_session_timeout = '1s'", "0A000"},
		{"SET search_path = public, pg_temp", "0A000"},
		{"BEGIN; SET LOCAL search_path = public, U&'pg\\005ftemp'; COMMIT", "0A000"},
		{"BEGIN; SET LOCAL search_path = 'public,pg_temp_3'; COMMIT", "0A000"},
		{"SELECT U&\"set\\005fconfig\"('app.tenant_id', 'x', false)", "42501"},
		{"SELECT \"pg_catalog\".\"set_config\"('statement_timeout', '1', false)", "42501"},
		{"SELECT set_config FROM set_config('work_mem', '1MB', false)", "42501"},
		{"UPDATE pg_settings SET setting = '1' WHERE name = 'work_mem'", "42501"},
		{"ALTER ROLE CURRENT_USER SET search_path = pg_temp", "42501"},
		{"ALTER DATABASE app SET work_mem = '1MB'", "42501"},
		{"ALTER FUNCTION now() SET work_mem = '1MB'", "42501"},
		{"RESET ROLE", "42501"},
		{"RESET SESSION AUTHORIZATION", "42501"},
		{"BEGIN; SET LOCAL ROLE NONE; COMMIT", "42501"},
		{"RESET app.tenant_id", "42501"},
		{"DO $$BEGIN EXECUTE 'LISTEN x'; END$$", "42501"},
		{"DO $$BEGIN EXECUTE 'PREPARE p AS SELECT 1'; END$$", "42501"},
		// Temporary objects.
		{"CREATE TABLE pg_temp.x (i int)", "0A000"},
		{"CREATE TABLE \"pg_temp\".x (i int)", "0A000"},
		{"CREATE TABLE U&\"pg\\005ftemp\".x (i int)", "0A000"},
		{"SELECT 1 AS i INTO pg_temp.x", "0A000"},
		{"CREATE TYPE pg_temp.t AS (i int)", "0A000"},
		{"CREATE DOMAIN pg_temp.d AS int", "0A000"},
		// Cursors, statements, listeners, locks.
		{"DECLARE c CURSOR FOR SELECT 1", "25P01"},
		{"DEALLOCATE PREPARE q", "26000"},           // no such statement: the server says so
		{"SELECT \"PG_ADVISORY_LOCK\"(7)", "42883"}, // pins, but there is no such function
		{"SELECT * FROM pg_cursors", "42501"},
		{"SELECT * FROM pg_catalog.pg_prepared_statement()", "42501"},
		{"SELECT * FROM query_to_xml('SELECT * FROM pg_prepared_statements', true, false, '')", "42501"},
	} {
		err := rtExecErr(a, tc.sql)
		if code := pgCode(err); code != tc.code {
			t.Errorf("%s: %v, want %s", tc.sql, err, tc.code)
		}
		_ = rtExecErr(a, "ROLLBACK")
		rtWant(t, b, tenantB, tc.sql)
	}
	// Spellings of state that outlives the transaction pin A's connection:
	// B waits for it until A drops the state (DISCARD ALL), then finds
	// nothing of A's on it.
	for _, sql := range []string{
		"SELECT 1 AS i INTO TEMP x",
		"CREATE TEMP SEQUENCE s",
		"CREATE TEMP VIEW v AS SELECT 1",
		"CREATE TEMPORARY TABLE x (LIKE projects)",
		"CREATE TEMP TABLE x AS SELECT 1 AS i",
		"BEGIN; DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITH HOLD FOR SELECT 1; COMMIT",
		"LISTEN \"pgtenant\"",
		"SELECT pg_try_advisory_lock_shared(1, 2)",
		"PREPARE q (int) AS SELECT $1",
		"SELECT pg_catalog.pg_advisory_lock(1::int4, 2::int4)",
		"SELECT U&\"pg_advisory\\005flock\"(7)",
		"BEGIN; CREATE TEMP TABLE p (i int) PARTITION BY LIST (i) ON COMMIT DROP; CREATE TEMP TABLE c PARTITION OF p FOR VALUES IN (1); COMMIT",
	} {
		if err := rtExecErr(a, sql); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
		rtWant(t, a, tenantA, sql)
		if err := rtExecErr(a, "DISCARD ALL"); err != nil {
			t.Fatalf("DISCARD ALL after %s: %v", sql, err)
		}
		rtWant(t, b, tenantB, sql)
	}
	// Allowed statements that drop or reset session state leave A's context
	// in place and nothing behind (the implicit temporary view goes with the
	// ON COMMIT DROP table it depends on).
	for _, sql := range []string{
		"BEGIN; CREATE TEMP TABLE t (i int) ON COMMIT DROP; CREATE VIEW v AS SELECT * FROM t; CREATE INDEX ON t (i); COMMIT",
		"DISCARD ALL", "DISCARD PLANS", "DISCARD SEQUENCES", "DISCARD TEMP", "RESET ALL", "DEALLOCATE ALL",
		"RESET statement_timeout", "UNLISTEN *", "SELECT pg_advisory_unlock_all()",
		// Session settings are A's own, carried to its next transactions, never B's.
		"SET SESSION statement_timeout = 100000", "SET TIME ZONE 'Asia/Tokyo'", "SET NAMES 'UTF8'", "SET SCHEMA 'public'",
		"SET XML OPTION DOCUMENT", "SET statement_timeout FROM CURRENT",
		"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
		"BEGIN; SET LOCAL statement_timeout = 1000; SET LOCAL search_path = public; COMMIT",
	} {
		if err := rtExecErr(a, sql); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
		rtWant(t, a, tenantA, sql)
		rtWant(t, b, tenantB, sql)
	}
	// Nothing A tried is left on the connection.
	left := queryRows(t, b, `SELECT
		(SELECT count(*) FROM pg_class WHERE relpersistence = 't')::text,
		(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')::text,
		(SELECT count(*) FROM pg_listening_channels())::text,
		current_setting('statement_timeout'), current_setting('TimeZone') = (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone') AS tz`)
	if got := strings.Join(left[0], ","); got != "0,0,0,0,t" {
		t.Errorf("left on the connection (temp relations, advisory locks, listens, statement_timeout, default time zone): %s", got)
	}
	rtWant(t, a, tenantA, "the refusals")
}

// lastval()/currval() of A's nextval, and a ROLLBACK of B's own assertion,
// show B nothing of A's: the pool resets A's context and sequences first.
func TestPoolRedTeamResetBetweenTenants(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	b := p.pgconnect(t, tenantB)
	queryOne(t, a, "SELECT nextval('projects_id_seq')")
	for _, sql := range []string{"SELECT lastval()", "SELECT currval('projects_id_seq')"} {
		if err := rtExecErr(b, sql); pgCode(err) != "55000" {
			t.Errorf("%s as B after A's nextval: %v, want 55000", sql, err)
		}
	}
	queryOne(t, a, "SELECT 1")
	for _, sql := range []string{
		"ROLLBACK; SELECT current_setting('app.tenant_id', true)",
		"BEGIN; ROLLBACK; SELECT current_setting('app.tenant_id', true)",
		"START TRANSACTION; SAVEPOINT s; ROLLBACK TO s; ABORT; SELECT current_setting('app.tenant_id', true)",
	} {
		queryOne(t, a, "SELECT 1") // A's context committed on the connection
		rows := queryRows(t, b, sql)
		if got := rows[len(rows)-1][0]; got == tenantA.ID {
			t.Errorf("LEAK: %q as B fell back to tenant A's context", sql)
		}
	}
	// A portal A leaves suspended at its Sync is gone for B.
	araw := ppHijack(t, p.pgconnect(t, tenantA))
	if got, err := araw.exchange([]pgproto3.FrontendMessage{
		ppParse("", rtWho), ppBindPortal("p1", ""), &pgproto3.Execute{Portal: "p1", MaxRows: 1}, ppSync(),
	}, 0); err != nil {
		t.Fatalf("A's suspended portal: %q %v", got, err)
	}
	bportal := ppHijack(t, p.pgconnect(t, tenantB))
	if got, err := bportal.exchange([]pgproto3.FrontendMessage{ppExecPortal("p1"), ppSync()}, 0); err != nil || strings.Join(got, ",") != "ErrorResponse 34000,ReadyForQuery I" {
		t.Errorf("B's Execute of A's portal p1: %q %v, want 34000", got, err)
	}
	// The same through the extended protocol, ROLLBACK first in the group.
	queryOne(t, a, "SELECT 1")
	braw := ppHijack(t, p.pgconnect(t, tenantB))
	got, err := braw.exchange([]pgproto3.FrontendMessage{
		ppParse("", "ROLLBACK"), ppBind(""), ppExec(),
		ppParse("", "SELECT current_setting('app.tenant_id', true)"), ppBind(""), ppExec(), ppSync(),
	}, 0)
	if err != nil || strings.Contains(strings.Join(got, ","), tenantA.ID) {
		t.Errorf("extended ROLLBACK then read as B: %q %v", got, err)
	}
	rtWant(t, b, tenantB, "the rollbacks")
}

// pgtenant's statement and portal names: a client reaches neither
// pgtenant_assert nor another client's upstream statements through
// Describe, Bind or Close, and B's SQL EXECUTE of A's upstream statement
// runs with B's context.
func TestPoolRedTeamReservedNames(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	bconn := p.pgconnect(t, tenantB)
	b := ppHijack(t, p.pgconnect(t, tenantB))
	if got, err := a.exchange(ppRun("s1", rtWho), 0); err != nil || !strings.Contains(strings.Join(got, ","), tenantA.ID) {
		t.Fatalf("A: %q %v", got, err)
	}
	// A's upstream name, as B learns it (TestPoolRedTeamPreparedStatementsViaTableToXML).
	// B cannot learn A's upstream statement names: the views that list them
	// are refused, also through table_to_xml.
	var server string
	if _, err := bconn.Exec(context.Background(), "SELECT table_to_xml('pg_prepared_statements'::regclass, true, false, '')::text").ReadAll(); pgCode(err) != "42501" {
		t.Fatalf("table_to_xml of pg_prepared_statements: %v, want 42501", err)
	}
	t.Logf("A's upstream statement as B sees it: %q", server)
	names := []string{"pgtenant_assert", "pgtenant_none", "pgtenant_unknown"}
	if server != "" {
		names = append(names, server)
	}
	for _, name := range names {
		for _, step := range [][]pgproto3.FrontendMessage{
			{ppDescribeStmt(name), ppSync()},
			{ppBind(name), ppExec(), ppSync()},
			{ppDescribePortal(name), ppSync()},
			{ppExecPortal(name), ppSync()},
			{ppCloseStmt(name), ppClosePortal(name), ppSync()},
		} {
			got, err := b.exchange(step, 0)
			if err != nil || strings.Contains(strings.Join(got, ","), tenantA.ID) || strings.Contains(strings.Join(got, ","), "DataRow") {
				t.Errorf("B %s: %q %v", ppSummary(step), got, err)
			}
		}
	}
	if server != "" {
		if got := queryRows(t, bconn, "EXECUTE "+server); len(got) != 1 || got[0][0] != tenantB.ID {
			t.Errorf("B's SQL EXECUTE of A's upstream statement: %v", got)
		}
	}
	// A's statement survived B's Close of its upstream name.
	if got, err := a.exchange(ppRun("s1", ""), 0); err != nil || !strings.Contains(strings.Join(got, ","), tenantA.ID) {
		t.Errorf("A's s1 after B's attempts: %q %v", got, err)
	}
	rtWant(t, bconn, tenantB, "the reserved names")
}

// Portal names are not reserved: A binds a portal named pgtenant_assert
// inside a block and pipelines a group behind it, so the inline assertion's
// Parse succeeds and its Bind fails (42P03); the rest of the group, the
// assertion's Close of its statement included, is skipped, and the statement
// pgtenant_assert stays prepared on the shared connection (prepared
// statements are not transactional). Before commit 684d41b every later
// assertion on that connection then failed with 42P05, for any tenant
// (FATAL on a simple query, an error on every extended-protocol group while
// the connection stayed in the pool). It now passes: such a connection is
// discarded.
func TestPoolRedTeamAssertPortalPoisonsConnection(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	got, err := a.exchange([]pgproto3.FrontendMessage{
		ppQuery("BEGIN"),
		ppParse("", "SELECT 1"), ppBindPortal("pgtenant_assert", ""), ppSync(),
		ppParse("", rtWho), ppBind(""), ppExec(), ppSync(),
		ppQuery("ROLLBACK"),
	}, 0)
	t.Logf("A: %q %v", got, err)
	braw := ppHijack(t, p.pgconnect(t, tenantB))
	for i := 0; i < 2; i++ {
		got, err := braw.exchange(ppRun("", rtWho), 0)
		if err != nil || !strings.Contains(strings.Join(got, ","), tenantB.ID) {
			t.Errorf("DoS: tenant B's extended-protocol query %d after A's pgtenant_assert portal: %q %v", i, got, err)
		}
	}
	b := p.pgconnect(t, tenantB)
	if err := rtExecErr(b, rtWho); err != nil {
		t.Errorf("DoS: tenant B's simple query after A's pgtenant_assert portal: %v", err)
	}
}

// A client that leaves the protocol mid-way (Execute without Sync, Flush
// without Sync, Terminate mid-group, disconnect while its query runs, COPY
// left open) leaves nothing to the next tenant: its work is not committed
// and the next transaction on the pool runs with its own context.
func TestPoolRedTeamAbandonedWork(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		superQuery(t, "DELETE FROM projects WHERE name LIKE 'redteam-%'")
		t.Cleanup(func() { superQuery(t, "DELETE FROM projects WHERE name LIKE 'redteam-%'") })
		insert := func(name string) string {
			return "INSERT INTO projects (tenant_id, name) VALUES ('" + tenantA.ID + "', '" + name + "')"
		}
		for _, tc := range []struct {
			name string
			run  func(t *testing.T, a *ppConn)
		}{
			{"execute without sync, then disconnect", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppParse("", insert("redteam-nosync")), ppBind(""), ppExec())
			}},
			{"flush without sync, replies read, then disconnect", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppParse("", insert("redteam-flush")), ppBind(""), ppExec(), ppFlush())
				if got, err := rtRead(a, 5*time.Second, func(m pgproto3.BackendMessage) bool {
					_, ok := m.(*pgproto3.CommandComplete)
					return ok
				}); err != nil {
					t.Fatalf("replies to the flushed group: %q %v", got, err)
				}
			}},
			{"terminate mid-group", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppParse("", insert("redteam-terminate")), ppBind(""), ppExec(), &pgproto3.Terminate{})
			}},
			{"terminate mid-group while it runs, then disconnect", func(t *testing.T, a *ppConn) {
				// The Terminate waits for the statement (PostgreSQL reads it
				// only then), but not for a client that has gone.
				rtSend(t, a, ppParse("", "SELECT pg_sleep(3)"), ppBind(""), ppExec(), &pgproto3.Terminate{})
			}},
			{"terminate inside a block", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppQuery("BEGIN; "+insert("redteam-block")), &pgproto3.Terminate{})
			}},
			{"disconnect while the query runs", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppQuery("BEGIN"), ppQuery(insert("redteam-running")+"; SELECT pg_sleep(3)"))
				time.Sleep(200 * time.Millisecond)
			}},
			{"COPY left open", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppQuery("COPY projects (tenant_id, name) FROM STDIN"), &pgproto3.CopyData{Data: []byte(tenantA.ID + "\tredteam-copy\n")})
				time.Sleep(100 * time.Millisecond)
			}},
			{"sync group with a failing statement, then open block, then disconnect", func(t *testing.T, a *ppConn) {
				rtSend(t, a, ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppSync(), ppQuery("BEGIN; "+insert("redteam-aborted")))
				time.Sleep(100 * time.Millisecond)
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a := ppHijack(t, p.pgconnect(t, tenantA))
				tc.run(t, a)
				_ = a.conn.(*net.TCPConn).SetLinger(0)
				a.conn.Close()
				b := p.pgconnect(t, tenantB)
				start := time.Now()
				rtWant(t, b, tenantB, tc.name)
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("B waited %s for a connection after A left", d)
				}
				if got := queryOne(t, b, "SELECT txid_current_if_assigned() IS NULL"); got != "t" {
					t.Errorf("B's first statement found a transaction in progress")
				}
			})
		}
		// The backend running pg_sleep(3) notices its client is gone only when
		// the sleep ends.
		time.Sleep(3 * time.Second)
		if got := superQuery(t, "SELECT coalesce(string_agg(name, ','), '') FROM projects WHERE name LIKE 'redteam-%'")[0][0]; got != "" {
			t.Errorf("work of clients that left was committed: %s", got)
		}
	})
}

// A long pipeline of Sync groups, every other one failing, with Flushes,
// lone Syncs and Binds of pgtenant_assert, is answered in order; the other
// tenant, querying concurrently on the same pooled connection, sees only
// its own context.
func TestPoolRedTeamPipelineWithErrors(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1, func(c *config.Config) {
			c.Pool.WaitTimeout = config.Duration{Duration: 30 * time.Second}
		}))
		a := ppHijack(t, p.pgconnect(t, tenantA))
		b := p.pgconnect(t, tenantB)
		const groups = 3000
		var msgs []pgproto3.FrontendMessage
		for i := 0; i < groups; i++ {
			switch i % 4 {
			case 0:
				msgs = append(msgs, ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppFlush(), ppSync())
			case 1:
				msgs = append(msgs, ppParse("", "SELECT current_setting('app.tenant_id')"), ppBind(""), ppExec(), ppSync())
			case 2:
				msgs = append(msgs, ppBind("pgtenant_assert"), ppExec(), ppSync())
			case 3:
				msgs = append(msgs, ppSync())
			}
		}
		bdone := make(chan []string, 1)
		go func() {
			var seen []string
			for i := 0; i < 20; i++ {
				rows, err := b.Exec(context.Background(), rtWho).ReadAll()
				if err != nil {
					seen = append(seen, "error: "+err.Error())
					continue
				}
				seen = append(seen, string(rows[0].Rows[0][0]))
			}
			bdone <- seen
		}()
		got, err := a.exchange(msgs, 0)
		if err != nil {
			t.Fatalf("A's pipeline: %v (after %d replies)", err, len(got))
		}
		rfq, errs, tenantRows := 0, 0, 0
		for _, g := range got {
			switch {
			case strings.HasPrefix(g, "ReadyForQuery"):
				rfq++
			case strings.HasPrefix(g, "ErrorResponse"):
				errs++
			case g == "DataRow "+tenantA.ID:
				tenantRows++
			case strings.HasPrefix(g, "DataRow"):
				t.Errorf("A got a row that is not its tenant: %s", g)
			}
		}
		if rfq != groups || errs != groups/2 || tenantRows != groups/4 {
			t.Errorf("A's pipeline: %d ReadyForQuery, %d errors, %d tenant rows; want %d, %d, %d", rfq, errs, tenantRows, groups, groups/2, groups/4)
		}
		for _, s := range <-bdone {
			if s != tenantB.ID {
				t.Errorf("B, interleaved with A's pipeline, ran as %q", s)
			}
		}
	})
}

// A's cancel request while A only waits for a connection (B holds it) or
// after A's transaction is over never reaches B's query.
func TestPoolRedTeamCancelWhileWaiting(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	b := p.pgconnect(t, tenantB)
	ctx := context.Background()
	queryOne(t, a, "SELECT 1") // A has used the connection B gets next
	bdone := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "SELECT pg_sleep(1)").ReadAll()
		bdone <- err
	}()
	eventually(t, 5*time.Second, "B's query running", func() bool {
		return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1)' AND state = 'active'")[0][0] == "1"
	})
	adone := make(chan error, 1)
	go func() {
		_, err := a.Exec(ctx, "SELECT 1").ReadAll()
		adone <- err
	}()
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if err := a.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-bdone; err != nil {
		t.Errorf("B's query was hit by A's cancel: %v", err)
	}
	if err := <-adone; err != nil && pgCode(err) != "57014" {
		t.Errorf("A's waiting query: %v", err)
	}
	rtWant(t, b, tenantB, "A's cancels")
}

// DESYNC (one client's own stream). A Close of a portal is relayed without
// being recorded among the Parse and Close replies pgtenant tracks, so its
// CloseComplete answers the entry of the next tracked message instead: with
// a Parse that pgtenant answers from the connection's cache (sent upstream
// as a Close of pgtenant_none), the client gets ParseComplete and
// CloseComplete in the wrong order. PostgreSQL answers in message order.
func TestPoolRedTeamClosePortalReorders(t *testing.T) {
	p := startProxy(t, ppPool())
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s1", ppWho)...),
		ppAs(ppA, ppOK("CloseComplete"), ppCloseStmt("s1"), ppSync()),
		// s1's text is still prepared upstream: the Parse is answered from the cache.
		ppAs(ppA, ppOK("CloseComplete", "ParseComplete", ppRan(ppWhoRow(tenantA))),
			ppClosePortal("no_such_portal"), ppParse("s1", ppWho), ppBind("s1"), ppExec(), ppSync()),
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("", ppWho)...),
	})
}

// DoS ACROSS TENANTS (not specific to pool mode). Every pooled connection
// logs in as the same upstream role, and a role may cancel or terminate its
// own backends: tenant A cancels tenant B's statement running on the other
// pooled connection.
func TestPoolRedTeamSignalOtherBackends(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		ctx := context.Background()
		bdone := make(chan error, 1)
		go func() {
			_, err := b.Exec(ctx, "SELECT pg_sleep(2)").ReadAll()
			bdone <- err
		}()
		eventually(t, 5*time.Second, "B's query running", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'")[0][0] == "1"
		})
		sql := "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid() AND state = 'active'"
		if err := rtExecErr(a, sql); pgCode(err) != "42501" {
			t.Errorf("%s: %v, want 42501", sql, err)
		}
		if err := <-bdone; err != nil {
			t.Errorf("DoS: tenant B's statement was cancelled by tenant A's pg_cancel_backend: %v", err)
		}
	})
}

// The context statements pgtenant prepares on a pooled connection are its
// own. A client cannot EXECUTE them (SQL EXECUTE of pgtenant_ names is
// refused in transaction mode), and a holder whose context is shorter than the previous holder's
// (a password user after a JWT user with claim settings, claims and a role)
// inherits none of it, not even after a ROLLBACK, and neither does the next.
func TestPoolContextStatementsStayPgtenants(t *testing.T) {
	e := startJWTProxy(t, func(c *config.Config) {
		c.Pool = config.Pool{Mode: config.PoolModeTransaction, Size: 1}
		c.JWT.ClaimsSetting = "request.jwt.claims"
	})
	ctx := context.Background()
	claims := claimsFor(tenantA.ID, "alice@acme", time.Hour)
	claims["db_role"] = "analyst_ro"
	a, err := e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claims))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	if got := queryRows(t, a, "SELECT current_setting('app.user_id'), current_user::text")[0]; got[0] != "alice@acme" || got[1] != "analyst_ro" {
		t.Fatalf("A runs with %v", got)
	}

	b := e.p.pgconnect(t, tenantB)
	for i := 0; i < 6; i++ {
		for _, sql := range []string{"EXECUTE pgtenant_ctx%d", "explain execute pgtenant_ctx%d", "CREATE TEMP TABLE x AS EXECUTE pgtenant_ctx%d"} {
			sql = fmt.Sprintf(sql, i)
			if _, err := b.Exec(ctx, sql).ReadAll(); pgCode(err) != "42501" {
				t.Fatalf("%s: %v, want 42501", sql, err)
			}
			if err := b.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err; pgCode(err) != "42501" {
				t.Fatalf("%s (extended): %v, want 42501", sql, err)
			}
		}
	}
	next := e.p.pgconnect(t, tenantB)
	for name, c := range map[string]*pgconn.PgConn{"B": b, "the next holder": next} {
		rows := queryRows(t, c, `BEGIN; ROLLBACK; SELECT current_setting('app.tenant_id'), coalesce(current_setting('app.user_id', true), ''),
			coalesce(current_setting('app.roles', true), ''), coalesce(current_setting('request.jwt.claims', true), ''), current_user::text`)
		if got := rows[len(rows)-1]; got[0] != tenantB.ID || got[1] != "" || got[2] != "" || got[3] != "" || got[4] != demo.RLSRole {
			t.Fatalf("%s after A: tenant, user id, roles, claims, role = %q", name, got)
		}
	}
}

// A client in COPY FROM STDIN that sends Syncs among its copy data, whose
// COPY fails on that data: the server ignores Syncs during a COPY and
// answers those it reads after the COPY failed, which pgtenant could not
// tell apart; so a Sync among copy data is not sent (the COPY ignores it).
// No stray ReadyForQuery is left for the next holder of the connection
// (found by the red team: the pool froze), and the client goes on.
func TestPoolSyncsDuringAFailedCopy(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		pa := p.pgconnect(t, tenantA)
		a := ppHijack(t, pa)
		rtStartCopy(t, a)
		// A bad row, more copy data and three Syncs in one write.
		rtSend(t, a, &pgproto3.CopyData{Data: []byte("not-a-uuid\tbad\n")}, &pgproto3.CopyData{Data: []byte("more\n")},
			ppSync(), ppSync(), ppSync())
		got, err := rtRead(a, 5*time.Second, rtIsRFQ)
		if err != nil || !strings.Contains(strings.Join(got, " "), "ErrorResponse ERROR 22P02") {
			t.Fatalf("COPY did not fail as it should: %q %v", got, err)
		}
		time.Sleep(300 * time.Millisecond)

		b := p.pgconnect(t, tenantB)
		for i := 0; i < 3; i++ {
			if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
				t.Fatalf("next client ran as %q", got)
			}
		}
		// A is still in step.
		got, err = a.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT current_setting('app.tenant_id')")}, 0)
		if err != nil || !strings.Contains(strings.Join(got, " "), tenantA.ID) {
			t.Fatalf("A after its failed COPY: %q %v", got, err)
		}
	})
}

// DEALLOCATE ALL takes effect where and when it is executed: parsed in one
// transaction and executed in a later one, on another connection or the
// same, it must leave pgtenant's record of what each connection holds right,
// or another tenant's prepared statements would fail there for good (found
// by the red team). Its Parse alone drops nothing, as in PostgreSQL.
func TestPoolDeallocateAllExecutedLater(t *testing.T) {
	for _, name := range []string{"d", ""} {
		t.Run("statement "+strconv.Quote(name), func(t *testing.T) {
			p := startProxy(t, transactionPool(1))
			a := ppHijack(t, p.pgconnect(t, tenantA))
			b := ppHijack(t, p.pgconnect(t, tenantB))
			step := func(who string, c *ppConn, msgs []pgproto3.FrontendMessage) []string {
				t.Helper()
				got, err := c.exchange(msgs, 0)
				if err != nil {
					t.Fatalf("%s: %v", who, err)
				}
				return got
			}
			noError := func(who string, got []string) {
				t.Helper()
				if strings.Contains(strings.Join(got, " "), "ErrorResponse") {
					t.Fatalf("%s: %q", who, got)
				}
			}
			noError("A prepares s", step("A prepares s", a, ppRun("s", "SELECT 1")))
			noError("A parses DEALLOCATE ALL", step("A parses DEALLOCATE ALL", a, []pgproto3.FrontendMessage{ppParse(name, "DEALLOCATE ALL"), ppSync()}))
			noError("A's s after only a Parse of DEALLOCATE ALL", step("A runs s", a, ppRun("s", "")))
			noError("B prepares q", step("B prepares q", b, ppRun("q", rtWho)))
			noError("A executes DEALLOCATE ALL", step("A executes it", a, []pgproto3.FrontendMessage{ppBind(name), ppExec(), ppSync()}))
			for i := 0; i < 2; i++ {
				noError("B runs q again", step("B runs q", b, ppRun("q", "")))
			}
			b2 := ppHijack(t, p.pgconnect(t, tenantB))
			noError("another B prepares q", step("B2", b2, ppRun("q", rtWho)))
			// A's own statements are gone, as in PostgreSQL.
			if got := step("A runs s after", a, ppRun("s", "")); !strings.Contains(strings.Join(got, " "), "ErrorResponse 26000") {
				t.Fatalf("A's s after DEALLOCATE ALL ran: %q", got)
			}
		})
	}
}

// The same with a large batch and another tenant's pipeline arriving while
// pgtenant forwards it: the race in which the stray replies reached that
// tenant's reset round trip and froze the pool (the red team saw it in
// about one round in five before the fix).
func TestPoolSyncsDuringAFailedCopyUnderLoad(t *testing.T) {
	for round := 0; round < 5; round++ {
		p := startProxy(t, transactionPool(1))
		a := ppHijack(t, p.pgconnect(t, tenantA))
		b := ppHijack(t, p.pgconnect(t, tenantB))
		rtStartCopy(t, a)
		batch := []pgproto3.FrontendMessage{&pgproto3.CopyData{Data: []byte("zzz\tbad\n")}}
		for i := 0; i < 2000; i++ {
			batch = append(batch, &pgproto3.CopyData{Data: []byte(strings.Repeat("x", 8000))})
		}
		batch = append(batch, ppSync(), ppSync(), ppSync())
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			time.Sleep(time.Duration(round%2) * 5 * time.Millisecond)
			rtSend(t, b, ppParse("", rtWho), ppBind(""), ppDescribePortal(""), ppExec(), ppSync())
		}()
		rtSend(t, a, batch...)
		<-sent
		gotB, err := rtRead(b, 10*time.Second, rtIsRFQ)
		if err != nil {
			t.Fatalf("round %d: tenant B got no answer: %q %v", round, gotB, err)
		}
		if all := strings.Join(gotB, " "); strings.Contains(all, tenantA.ID) || !strings.Contains(all, tenantB.ID) && !strings.Contains(all, "ErrorResponse") {
			t.Fatalf("round %d: tenant B got %q", round, gotB)
		}
	}
}

// rtStartCopy starts a COPY FROM STDIN into copy_sink on c and waits until
// the server is reading copy data.
func rtStartCopy(t *testing.T, c *ppConn) {
	t.Helper()
	rtSend(t, c, ppQuery("COPY copy_sink (tenant_id, line) FROM STDIN"))
	if got, err := rtRead(c, 5*time.Second, func(m pgproto3.BackendMessage) bool {
		_, ok := m.(*pgproto3.CopyInResponse)
		return ok
	}); err != nil {
		t.Fatalf("COPY did not start: %v %v", got, err)
	}
}

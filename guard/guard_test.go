package guard

import (
	"strings"
	"testing"
)

func newTestGuard() *Guard {
	return New(Policy{TenantSetting: "app.tenant_id", ExtraSettings: []string{"request.jwt.claims"}})
}

// refusedSQL are statements the guard must refuse, written as an attacker would.
var refusedSQL = []string{
	"SET app.tenant_id = '22222222-2222-2222-2222-222222222222'",
	"set app.tenant_id to 'x'",
	"SET LOCAL app.tenant_id = 'x'",
	"SET SESSION app.tenant_id = 'x'",
	"SET APP.TENANT_ID = 'x'",
	`SET "app"."tenant_id" = 'x'`,
	`SET "app.tenant_id" = 'x'`,
	`SET U&"\0061pp".tenant_id = 'x'`,
	`SET u&"app".u&"tenant\005fid" = 'x'`,
	"SET app.tenant_id TO DEFAULT",
	"RESET app.tenant_id",
	"SET app.anything_else = 'x'",
	"SET request.jwt.claims = '{}'",
	"SELECT 1; SET app.tenant_id = 'x'",
	"SELECT set_config('app.tenant_id', 'x', false)",
	"select SET_CONFIG('app.tenant_id', 'x', true)",
	"SELECT pg_catalog.set_config('app.tenant_id', 'x', false)",
	`SELECT "set_config"('app.tenant_id', 'x', false)`,
	`SELECT U&"\0073et_config"('app.tenant_id', 'x', false)`,
	"SELECT set_config('app.' || 'tenant_id', (SELECT 'x'), false)",
	"SELECT set_config(name := 'app.tenant_id', new_value := 'x', is_local := false)",
	"SELECT * FROM projects WHERE set_config('app.tenant_id', 'x', false) IS NOT NULL",
	"SELECT (SELECT set_config('app.tenant_id', 'x', false))",
	"WITH x AS (SELECT set_config('app.tenant_id', 'x', false)) SELECT * FROM x, projects",
	"EXPLAIN ANALYZE SELECT set_config('app.tenant_id', 'x', false)",
	"PREPARE p AS SELECT set_config('app.tenant_id', $1, false)",
	"DECLARE c CURSOR FOR SELECT set_config('app.tenant_id', 'x', false)",
	"CREATE TABLE t AS SELECT set_config('app.tenant_id', 'x', false)",
	"COPY (SELECT set_config('app.tenant_id', 'x', false)) TO STDOUT",
	"CREATE VIEW v AS SELECT set_config('app.tenant_id', 'x', false)",
	"SELECT * FROM projects ORDER BY set_config('app.tenant_id', 'x', false)",
	"INSERT INTO t SELECT set_config('app.tenant_id', 'x', false)",
	"UPDATE pg_settings SET setting = 'x' WHERE name = 'app.tenant_id'",
	"UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'app.tenant_id'",
	`UPDATE "pg_settings" SET setting = 'x' WHERE name = 'app.tenant_id'`,
	"WITH u AS (UPDATE pg_settings SET setting = 'x' WHERE name = 'app.tenant_id' RETURNING 1) SELECT * FROM u",
	"CREATE VIEW s AS SELECT * FROM pg_settings",
	"CREATE RULE r AS ON INSERT TO t DO INSTEAD UPDATE pg_settings SET setting = 'x'",
	"DO $$ BEGIN PERFORM 1; END $$",
	"do 'begin null; end'",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT 1'",
	"CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE sql SET app.tenant_id = 'x' AS 'SELECT 1'",
	"CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$",
	"ALTER FUNCTION f() SET app.tenant_id = 'x'",
	"ALTER PROCEDURE p() SECURITY DEFINER",
	"ALTER ROUTINE f() RESET ALL",
	"ALTER ROLE app_rls SET app.tenant_id = 'x'",
	"ALTER USER app_rls SET app.tenant_id = 'x'",
	"ALTER ROLE app_rls BYPASSRLS",
	"ALTER DATABASE app SET app.tenant_id = 'x'",
	"ALTER SYSTEM SET app.tenant_id = 'x'",
	"SET ROLE postgres",
	"set role none",
	"RESET ROLE",
	"SET SESSION AUTHORIZATION postgres",
	"RESET SESSION AUTHORIZATION",
	"SET row_security = off",
	"GRANT postgres TO app_rls",
	"CREATE ROLE evil",
	"LOAD 'auto_explain'",
	"CREATE EXTENSION dblink",
	"SELECT dblink_exec('dbname=app', 'SET app.tenant_id = ''x''')",
	"SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''x'', false)', true, true, '')",
	"SELECT ts_stat('SELECT 1')",
	"RESET ALL; SELECT * FROM projects",
	"DISCARD ALL; SELECT 1",
	"RESET ALL; RESET ALL",
	"CREATE OPERATOR === (FUNCTION = set_config, LEFTARG = text, RIGHTARG = text)",
	"SET standard_conforming_strings = off",
	"SET standard_conforming_strings TO false",
	"set local standard_conforming_strings = 0",
	"SET client_encoding = 'SJIS'",
	"SET client_encoding TO big5",
	"SET NAMES 'GBK'",
	"SET backslash_quote = on",
	// Unparsable, and the parser is needed: refused with the parser's message.
	"SET app.tenant_id = 'x' garbage garbage",
}

var allowedSQL = []string{
	"SELECT * FROM projects",
	"select current_setting('app.tenant_id')",
	"SELECT 'set_config' AS s",
	"SELECT 'SET app.tenant_id = x'",
	"UPDATE projects SET name = 'x' WHERE id = 1",
	"SET search_path = public",
	"SET statement_timeout = '5s'",
	"SET TIME ZONE 'UTC'",
	"SET client_encoding = 'UTF8'",
	"SET NAMES 'LATIN1'",
	"SET standard_conforming_strings = on",
	"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
	"RESET statement_timeout",
	"SHOW app.tenant_id",
	"BEGIN; SELECT 1; COMMIT",
	"SELECT * FROM pg_settings WHERE name = 'work_mem'",
	"DISCARD PLANS",
	"DISCARD TEMP",
	"EXPLAIN SELECT * FROM projects",
	"PREPARE p AS SELECT * FROM projects WHERE id = $1",
	"LISTEN x",
	"CREATE TEMP TABLE t (a int)",
	"VACUUM projects",
}

func TestGuardRefuses(t *testing.T) {
	g := newTestGuard()
	for _, sql := range refusedSQL {
		v := g.CheckQuery([]byte(sql))
		if v.Err == nil {
			t.Errorf("allowed: %s", sql)
			continue
		}
		want := CodeRefused
		if strings.HasSuffix(sql, "garbage") {
			want = CodeSyntaxError
		}
		if v.Err.Code != want || v.Err.Severity != "ERROR" {
			t.Errorf("%s: got %s %s %q, want ERROR %s", sql, v.Err.Severity, v.Err.Code, v.Err.Message, want)
		}
		// The extended protocol path sees the same verdict.
		if pv := g.CheckParse([]byte(sql)); pv.Err == nil {
			t.Errorf("allowed through Parse: %s", sql)
		}
	}
	if len(refusedSQL) < 40 {
		t.Fatalf("only %d attempts", len(refusedSQL))
	}
}

func TestGuardAllows(t *testing.T) {
	g := newTestGuard()
	for _, sql := range allowedSQL {
		if v := g.CheckQuery([]byte(sql)); v.Err != nil || v.ResetsContext {
			t.Errorf("%s: refused: %v", sql, v.Err)
		}
	}
}

func TestGuardResets(t *testing.T) {
	g := newTestGuard()
	for _, sql := range []string{"RESET ALL", "discard all", "DISCARD ALL;",
		"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"} {
		v := g.CheckQuery([]byte(sql))
		if v.Err != nil || !v.ResetsContext {
			t.Errorf("%s as a simple query: %+v, want allowed with ResetsContext", sql, v)
		}
		if pv := g.CheckParse([]byte(sql)); pv.Err == nil {
			t.Errorf("%s through Parse: allowed, want refused", sql)
		}
	}
}

func TestFunctionCall(t *testing.T) {
	g := newTestGuard()
	if err := g.CheckFunctionCall(2078); err == nil || err.Code != CodeRefused { // set_config
		t.Fatalf("FunctionCall of set_config: %v", err)
	}
	// Large objects have no row-level security: refused too.
	if err := g.CheckFunctionCall(952); err == nil || err.Code != CodeRefused { // lo_open
		t.Fatalf("FunctionCall of lo_open: %v", err)
	}
	for _, sql := range []string{
		"SELECT lo_from_bytea(0, 'x')", "SELECT lo_get(16400)", "SELECT LO_IMPORT('/etc/passwd')", "SELECT loread(0, 10)",
		"SELECT pg_cancel_backend(1234)", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
	} {
		if v := g.CheckQuery([]byte(sql)); v.Err == nil || v.Err.Code != CodeRefused {
			t.Errorf("%s: %v, want refused", sql, v.Err)
		}
	}
	if v := g.CheckQuery([]byte("SELECT lock_timeout, log_min FROM t")); v.Err != nil {
		t.Errorf("words merely starting with lo: %v", v.Err)
	}
}

// The screen lets the common statements skip the parser.
func TestScreenFastPath(t *testing.T) {
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
		"select * from projects where tenant_id = $1",
		"INSERT INTO projects (tenant_id, name) VALUES ($1, $2)",
		`SELECT "name", "offset" FROM "public"."projects" LIMIT 10 OFFSET 20`,
		"SELECT current_user, session_user",
		"WITH x AS (SELECT 1) SELECT * FROM x",
	} {
		if !screen([]byte(sql), false) {
			t.Errorf("screen sends %q to the parser", sql)
		}
	}
	for _, sql := range refusedSQL {
		if screen([]byte(sql), false) {
			t.Errorf("screen passes a refused statement: %s", sql)
		}
	}
}

func TestScreenAllocatesNothing(t *testing.T) {
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
	if n := testing.AllocsPerRun(100, func() { screen(sql, false) }); n != 0 {
		t.Fatalf("screen allocates %.0f times per statement", n)
	}
}

// FuzzScreenSound: whatever the input, the screen never passes a statement
// the full check refuses for a reason other than a syntax error (which the
// upstream's own parser reports identically).
func FuzzScreenSound(f *testing.F) {
	for _, s := range append(append([]string{}, refusedSQL...), allowedSQL...) {
		f.Add(s)
	}
	for _, s := range []string{
		`SELECT 'a\'' , set_config('app.tenant_id','x',false) --'`,
		"SELECT $a$set_config$a$",
		`SELECT "se""t_config"()`,
		"SELECT set/**/_config('a','b',false)",
		"SELECT U&'\\0073' ; SET app.tenant_id = 1",
		"SELECT 1 -- SET app.tenant_id = 1\n",
		"/* /* */ SET app.tenant_id = 1 */ SELECT 1",
	} {
		f.Add(s)
	}
	g := newTestGuard()
	f.Fuzz(func(t *testing.T, sql string) {
		if !screen([]byte(sql), false) {
			return
		}
		v := g.full(sql, true)
		if v.ResetsContext || len(v.Channels) > 0 {
			t.Fatalf("screen passed %q with verdict %+v", sql, v)
		}
		if v.Err != nil && v.Err.Code != CodeSyntaxError {
			t.Fatalf("screen passed %q, which the full check refuses: %s", sql, v.Err.Message)
		}
	})
}

func BenchmarkScreen(b *testing.B) {
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
	b.ReportAllocs()
	for b.Loop() {
		screen(sql, false)
	}
}

func BenchmarkFullCheck(b *testing.B) {
	g := newTestGuard()
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
	b.ReportAllocs()
	for b.Loop() {
		g.full(sql, true)
	}
}

func newPooledGuard() *Guard {
	return New(Policy{TenantSetting: "app.tenant_id", ExtraSettings: []string{"request.jwt.claims"}, Pooled: true})
}

// pooledCases are statements whose verdict transaction pool mode may change:
// pooled is the SQLSTATE a pooled guard answers, plain the one a guard not in
// pool mode answers ("" for allowed), and deallocates and changes the
// expected DeallocatesAll and ChangesSettings of a pooled guard.
var pooledCases = []struct {
	sql         string
	pooled      string
	plain       string
	deallocates bool
	changes     bool
	pins        string
}{
	// Reading the connection's views through a regclass, and the shared seed.
	{sql: "SELECT table_to_xml('pg_prepared_statements'::regclass, true, false, '')", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT TABLE_TO_XML_AND_XMLSCHEMA('pg_catalog.pg_cursors', true, false, '')", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT schema_to_xml('pg_catalog', true, false, '')", pooled: CodeRefused, plain: CodeRefused},
	// Other sessions' statements: every tenant shares the database role.
	{sql: "SELECT query FROM pg_stat_activity", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT * FROM pg_catalog.PG_STAT_ACTIVITY a JOIN pg_locks l USING (pid)", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT * FROM pg_stat_get_activity(NULL)", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT query FROM pg_stat_statements", pooled: CodeRefused, plain: CodeRefused},
	{sql: `SELECT * FROM U&"pg_\0073tat_activity"`, pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT table_to_xml('pg_stat_activity', true, false, '')", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SELECT 'pg_stat_activity'"},
	// Two-phase commit: a prepared transaction is the role's, any session of it may finish it.
	{sql: "PREPARE TRANSACTION 'a1'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "commit prepared 'a1'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "ROLLBACK PREPARED 'a1'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'a1'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "COMMIT"},
	{sql: "SELECT 'prepared'"},
	{sql: "SELECT setseed(0.42)", pooled: CodeNotSupported},
	{sql: "SELECT random()"},
	// 1. Session-level SET: carried by the relay, reported as changing settings.
	{sql: "SET statement_timeout = '5s'", changes: true},
	{sql: "SET SESSION statement_timeout = '5s'", changes: true},
	{sql: "set search_path to public", changes: true},
	{sql: "SET SCHEMA 'public'", changes: true},
	{sql: "SET TIME ZONE 'UTC'", changes: true},
	{sql: "SET NAMES 'LATIN1'", changes: true},
	{sql: "SET work_mem TO DEFAULT", changes: true},
	{sql: "SET work_mem FROM CURRENT", changes: true},
	{sql: "SET myapp.flag = 'on'", changes: true},
	{sql: "SELECT 1; SET work_mem = '64MB'", changes: true},
	{sql: "BEGIN; SET work_mem = '64MB'; COMMIT", changes: true},
	{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", changes: true},
	// ... but not one the server would apply to the connection idle in the pool.
	{sql: "SET idle_session_timeout = '1s'", pooled: CodeNotSupported},
	{sql: "SET search_path = pg_temp, public", pooled: CodeNotSupported},
	{sql: "SET LOCAL search_path = pg_temp, public", pooled: CodeNotSupported},
	{sql: `SET LOCAL search_path = 'public, "pg_temp"'`, pooled: CodeNotSupported},
	{sql: "SET LOCAL search_path = public, PG_TEMP_3", pooled: CodeNotSupported},
	{sql: "SET LOCAL statement_timeout = '5s'"},
	{sql: "BEGIN; SET LOCAL work_mem = '64MB'; SELECT 1; COMMIT"},
	{sql: "SET LOCAL search_path = public, app"},
	{sql: "SET LOCAL TIME ZONE 'UTC'"},
	{sql: "SET LOCAL SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
	{sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
	{sql: "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'"},
	{sql: "SET CONSTRAINTS ALL DEFERRED"},
	{sql: "RESET statement_timeout", changes: true},
	{sql: "BEGIN; reset work_mem; COMMIT", changes: true},
	{sql: "RESET TIME ZONE", changes: true},
	{sql: "UPDATE projects SET name = 'x' WHERE id = 1"},
	{sql: "SELECT 'SET work_mem = 1'"},
	// The existing refusals take precedence, within a statement and across.
	{sql: "SET app.tenant_id = 'x'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SET LOCAL app.tenant_id = 'x'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SET ROLE postgres", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SET work_mem = '1MB'; SET app.tenant_id = 'x'", pooled: CodeRefused, plain: CodeRefused},
	{sql: "SET standard_conforming_strings = off", pooled: CodeRefused, plain: CodeRefused},
	{sql: "PREPARE p AS SELECT set_config('app.tenant_id', 'x', false)", pooled: CodeRefused, plain: CodeRefused},
	{sql: "LISTEN x; SELECT set_config('a', 'b', false)", pooled: CodeRefused, plain: CodeRefused},

	// 2. LISTEN.
	{sql: "LISTEN jobs"}, // the pool's hub listens for it: no pin
	{sql: `listen "Jobs"`},
	{sql: "UNLISTEN jobs"},
	{sql: "UNLISTEN *"},
	{sql: "NOTIFY jobs, 'x'"},
	{sql: "SELECT pg_notify('jobs', 'x')"},

	// 3. Temporary objects.
	{sql: "CREATE TEMP TABLE t (a int)", pins: PinTempTable},
	{sql: "CREATE TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS", pins: PinTempTable},
	{sql: "CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS", pins: PinTempTable},
	{sql: "CREATE LOCAL TEMP TABLE t (a int)", pins: PinTempTable},
	{sql: "CREATE TEMP VIEW v AS SELECT 1", pins: PinTempTable},
	{sql: "CREATE TEMP SEQUENCE s", pins: PinTempTable},
	{sql: "SELECT 1 AS a INTO TEMP t", pins: PinTempTable},
	{sql: "SELECT 1 AS a INTO TEMPORARY TABLE t", pins: PinTempTable},
	{sql: "CREATE TEMP TABLE t AS SELECT 1 AS a", pins: PinTempTable},
	{sql: "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1 AS a", pins: PinTempTable},
	{sql: "CREATE TABLE pg_temp.t (a int)", pooled: CodeNotSupported},
	{sql: "CREATE TABLE PG_TEMP.t (a int)", pooled: CodeNotSupported},
	{sql: "CREATE TABLE pg_temp_3.t (a int)", pooled: CodeNotSupported},
	{sql: "CREATE TABLE app.pg_temp.t (a int)", pooled: CodeNotSupported},
	{sql: "CREATE VIEW pg_temp.v AS SELECT 1", pooled: CodeNotSupported},
	{sql: "CREATE DOMAIN pg_temp.d AS int", pooled: CodeNotSupported},
	{sql: "CREATE DOMAIN app.pg_temp.d AS int", pooled: CodeNotSupported},
	{sql: "CREATE TYPE pg_temp.e AS ENUM ('a')", pooled: CodeNotSupported},
	{sql: "CREATE TYPE pg_temp.c AS (a int)", pooled: CodeNotSupported},
	{sql: "SELECT * FROM pg_temp.t", pooled: CodeNotSupported},
	{sql: "SELECT 1::pg_temp.d", pooled: CodeNotSupported},
	{sql: "CREATE TEMP TABLE t (a int) ON COMMIT DROP; CREATE TEMP TABLE u (a int)", pins: PinTempTable},
	{sql: "CREATE TEMP TABLE t (a pg_temp.d) ON COMMIT DROP", pooled: CodeNotSupported},
	{sql: "CREATE TEMP TABLE t () INHERITS (pg_temp.p) ON COMMIT DROP", pooled: CodeNotSupported},
	{sql: "CREATE TEMP TABLE t (a int) ON COMMIT DROP"},
	{sql: "BEGIN; CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP; INSERT INTO t VALUES (1); COMMIT"},
	{sql: "CREATE TABLE pg_temp.t (a int) ON COMMIT DROP"},
	{sql: "CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1 AS a"},
	{sql: "CREATE TABLE t (a int)"},
	{sql: "SELECT * FROM temp"},
	{sql: "SELECT 'pg_temp'"},
	{sql: "SELECT 'pg_temp.t'::text, 'pg_temp_1' AS s"},
	{sql: "SELECT * FROM projects WHERE name IN ('pg_temp', 'temp')"},
	{sql: "CREATE TYPE mood AS ENUM ('pg_temp', 'happy')"},
	{sql: "DISCARD TEMP"},

	// 4. Holdable cursors.
	{sql: "DECLARE c CURSOR WITH HOLD FOR SELECT 1", pins: PinCursor},
	{sql: "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM projects", pins: PinCursor},
	{sql: "DECLARE c CURSOR FOR SELECT 1"},
	{sql: "DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT * FROM projects"},

	// 5. SQL-level prepared statements.
	// (PREPARE and EXECUTE as carried: TestPooledPrepare.)
	{sql: "SELECT 1; PREPARE p AS SELECT 1", pins: PinPrepared},
	{sql: "PREPARE pgtenant_readback AS SELECT 1", pooled: CodeRefused},
	{sql: "DEALLOCATE p"},
	{sql: "DEALLOCATE PREPARE p"},
	{sql: "DEALLOCATE ALL", deallocates: true},
	{sql: "deallocate prepare all", deallocates: true},
	{sql: "SELECT 1; DEALLOCATE ALL; SELECT 2", deallocates: true},
	{sql: "DEALLOCATE ALL; DEALLOCATE p", pooled: CodeNotSupported},
	{sql: "execute pgtenant_ctx2", pooled: CodeRefused},
	{sql: "EXECUTE PGTENANT_S0123", pooled: CodeRefused},
	{sql: "EXPLAIN EXECUTE pgtenant_ctx0", pooled: CodeRefused},
	{sql: "CREATE TABLE t AS EXECUTE pgtenant_ctx1", pooled: CodeRefused},
	{sql: "PREPARE TRANSACTION 'x'", pooled: CodeRefused, plain: CodeRefused}, // not SQL PREPARE: two-phase commit, refused in both modes
	{sql: "DISCARD PLANS"},

	// 6. Session-level advisory locks.
	{sql: "SELECT pg_advisory_lock(1)", pins: PinAdvisoryLock},
	{sql: "SELECT pg_catalog.pg_advisory_lock(1, 2)", pins: PinAdvisoryLock},
	{sql: "SELECT pg_advisory_lock_shared(1)", pins: PinAdvisoryLock},
	{sql: "SELECT pg_try_advisory_lock(1)", pins: PinAdvisoryLock},
	{sql: "SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", pins: PinAdvisoryLock},
	{sql: `SELECT "pg_advisory_lock"(1)`, pins: PinAdvisoryLock},
	{sql: `SELECT U&"\0070g_advisory_lock"(1)`, pins: PinAdvisoryLock},
	{sql: "SELECT * FROM projects WHERE pg_try_advisory_lock(id)", pins: PinAdvisoryLock},
	{sql: "SELECT pg_advisory_xact_lock(1)"},
	{sql: "SELECT pg_catalog.pg_advisory_xact_lock_shared(1)"},
	{sql: "SELECT pg_try_advisory_xact_lock(1, 2)"},
	{sql: "SELECT pg_advisory_unlock(1), pg_advisory_unlock_shared(2), pg_advisory_unlock_all()"},
	{sql: "SELECT 'pg_advisory_lock'"},

	// 7. Views of the shared connection's statements and cursors.
	{sql: "SELECT * FROM pg_prepared_statements", pooled: CodeRefused},
	{sql: "SELECT name FROM pg_catalog.pg_prepared_statements", pooled: CodeRefused},
	{sql: "SELECT * FROM pg_prepared_statement()", pooled: CodeRefused},
	{sql: "TABLE pg_cursors", pooled: CodeRefused},
	{sql: "SELECT count(*) FROM PG_CURSORS", pooled: CodeRefused},
	{sql: "SELECT 'pg_prepared_statements'"},
}

func TestPooled(t *testing.T) {
	pooled, plain := newPooledGuard(), newTestGuard()
	for _, tc := range pooledCases {
		for _, check := range []struct {
			name    string
			f       func([]byte) Verdict
			want    string
			dealloc bool
			changes bool
			pins    string
		}{
			{"pooled CheckQuery", pooled.CheckQuery, tc.pooled, tc.deallocates, tc.changes, tc.pins},
			{"pooled CheckParse", pooled.CheckParse, tc.pooled, tc.deallocates, tc.changes, tc.pins},
			{"plain CheckQuery", plain.CheckQuery, tc.plain, false, false, ""},
			{"plain CheckParse", plain.CheckParse, tc.plain, false, false, ""},
		} {
			v := check.f([]byte(tc.sql))
			switch {
			case check.want == "" && v.Err != nil:
				t.Errorf("%s %q: refused %s %q, want allowed", check.name, tc.sql, v.Err.Code, v.Err.Message)
			case check.want != "" && v.Err == nil:
				t.Errorf("%s %q: allowed, want %s", check.name, tc.sql, check.want)
			case check.want != "" && (v.Err.Code != check.want || v.Err.Severity != "ERROR"):
				t.Errorf("%s %q: got %s %s %q, want ERROR %s", check.name, tc.sql, v.Err.Severity, v.Err.Code, v.Err.Message, check.want)
			case v.DeallocatesAll != check.dealloc:
				t.Errorf("%s %q: DeallocatesAll %v, want %v", check.name, tc.sql, v.DeallocatesAll, check.dealloc)
			case v.Err == nil && v.ChangesSettings != check.changes:
				t.Errorf("%s %q: ChangesSettings %v, want %v", check.name, tc.sql, v.ChangesSettings, check.changes)
			case v.Err == nil && v.Pins != check.pins:
				t.Errorf("%s %q: Pins %q, want %q", check.name, tc.sql, v.Pins, check.pins)
			case v.ResetsContext:
				t.Errorf("%s %q: ResetsContext", check.name, tc.sql)
			}
			// What transaction pool mode refuses tells the client what to do instead.
			if v.Err != nil && v.Err.Code == CodeNotSupported && (!strings.Contains(v.Err.Message, "transaction pool mode") || v.Err.Hint == "") {
				t.Errorf("%s %q: message %q, hint %q", check.name, tc.sql, v.Err.Message, v.Err.Hint)
			}
		}
	}
}

func TestPooledMessages(t *testing.T) {
	g := newPooledGuard()
	v := g.CheckQuery([]byte("SET idle_session_timeout = '5s'"))
	if v.Err == nil || v.Err.Message != "SET idle_session_timeout is not supported in transaction pool mode" || !strings.Contains(v.Err.Hint, "limits.idle_timeout") {
		t.Errorf("SET idle_session_timeout: %+v", v.Err)
	}
	if v := g.CheckParse([]byte("DEALLOCATE _pg3_7")); v.Err != nil || v.Deallocate != "_pg3_7" {
		t.Errorf("DEALLOCATE name: %+v", v)
	}
	if v := g.CheckQuery([]byte("DEALLOCATE a; SELECT 1")); v.Err == nil || v.Err.Code != CodeNotSupported {
		t.Errorf("DEALLOCATE name among other statements: %+v", v)
	}
	if v := g.CheckQuery([]byte("SET myapp.Flag = 'x'; SET work_mem = '1MB'")); v.Err != nil || !v.ChangesSettings || len(v.CustomSettings) != 1 || v.CustomSettings[0] != "myapp.flag" {
		t.Errorf("custom SET: %+v", v)
	}
	v = g.CheckQuery([]byte("SELECT * FROM pg_prepared_statements"))
	if v.Err == nil || v.Err.Message != "permission denied: pg_prepared_statements shows other clients' statements in transaction pool mode" {
		t.Errorf("pg_prepared_statements: %+v", v.Err)
	}
	v = g.CheckQuery([]byte("SELECT 1/0; DECLARE c CURSOR WITH HOLD FOR SELECT 1; LISTEN x"))
	if v.Err != nil || v.Pins != PinCursor {
		t.Errorf("the first pin's reason: %+v", v)
	}
}

// RESET ALL and DISCARD ALL keep their behaviour in pool mode; DISCARD ALL
// also deallocates every prepared statement.
func TestPooledResets(t *testing.T) {
	g := newPooledGuard()
	for _, tc := range []struct {
		sql         string
		deallocates bool
	}{{"RESET ALL", false}, {"discard all", true}, {"DISCARD ALL;", true},
		{"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", false}, {"SELECT 1; DISCARD ALL", true}} {
		v := g.CheckQuery([]byte(tc.sql))
		if v.Err != nil || !v.ResetsContext || !v.ChangesSettings || v.DeallocatesAll != tc.deallocates {
			t.Errorf("%s as a simple query: %+v, want allowed with ResetsContext, ChangesSettings, DeallocatesAll %v", tc.sql, v, tc.deallocates)
		}
		if pv := g.CheckParse([]byte(tc.sql)); pv.Err == nil || pv.Err.Code != CodeRefused && pv.Err.Code != CodeSyntaxError {
			t.Errorf("%s through Parse: %+v, want refused", tc.sql, pv)
		}
	}
	if v := g.CheckQuery([]byte("DISCARD ALL; SELECT 1")); v.Err == nil || v.Err.Code != CodeRefused {
		t.Errorf("DISCARD ALL before another statement: %+v", v)
	}
}

// Pool mode only adds refusals: everything refused otherwise stays refused,
// with the same SQLSTATE.
func TestPooledKeepsRefusals(t *testing.T) {
	pooled, plain := newPooledGuard(), newTestGuard()
	for _, sql := range refusedSQL {
		want := plain.CheckQuery([]byte(sql)).Err
		got := pooled.CheckQuery([]byte(sql)).Err
		if got == nil || got.Code != want.Code {
			t.Errorf("%s: pooled %v, not pooled %v", sql, got, want)
		}
	}
}

func TestPooledScreen(t *testing.T) {
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
		"select * from projects where tenant_id = $1",
		"INSERT INTO projects (tenant_id, name) VALUES ($1, $2)",
		"WITH x AS (SELECT 1) SELECT * FROM x",
		"SELECT tmp, holder, prepares, listener FROM t",
	} {
		if !screen([]byte(sql), true) {
			t.Errorf("pooled screen sends %q to the parser", sql)
		}
	}
	for _, tc := range pooledCases {
		if tc.pooled != "" || tc.deallocates {
			if screen([]byte(tc.sql), true) {
				t.Errorf("pooled screen passes %s", tc.sql)
			}
		}
	}
	// A word longer than the longest screen word goes through the prefix checks.
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213 AND pgtenant_some_very_long_column_name = 1;")
	if n := testing.AllocsPerRun(100, func() { screen(sql, true) }); n != 0 {
		t.Fatalf("pooled screen allocates %.0f times per statement", n)
	}
}

// dangerousWord and pooledWord look words up only up to a length.
func TestScreenWordsFit(t *testing.T) {
	for _, set := range []struct {
		words   map[string]bool
		longest int
	}{{screenWords, longestScreenWord}, {pooledScreenWords, longestPooledWord}} {
		for w := range set.words {
			if len(w) > set.longest || w != strings.ToLower(w) {
				t.Errorf("screen word %q is never matched", w)
			}
		}
	}
}

// FuzzScreenSoundPooled is FuzzScreenSound for pooled guards: the pooled
// screen never passes a statement the pooled full check refuses, nor one
// whose verdict carries a flag.
func FuzzScreenSoundPooled(f *testing.F) {
	for _, s := range append(append([]string{}, refusedSQL...), allowedSQL...) {
		f.Add(s)
	}
	for _, tc := range pooledCases {
		f.Add(tc.sql)
	}
	for _, s := range []string{
		"SELECT $t$pg_temp$t$",
		`SELECT "pg_""temp"`,
		"SELECT 1 /* temp */; LISTEN x",
		"SELECT pg_notify('a', 'b')",
		"EXECUTE q(1)",
		"NOTIFY x",
		"CREATE TEMP TABLE t (a int) ON COMMIT DROP; DEALLOCATE ALL",
		"DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)",
	} {
		f.Add(s)
	}
	g := newPooledGuard()
	f.Fuzz(func(t *testing.T, sql string) {
		if !screen([]byte(sql), true) {
			return
		}
		v := g.full(sql, true)
		if v.ResetsContext || v.DeallocatesAll || v.ChangesSettings || v.Pins != "" || v.Deallocate != "" ||
			v.Prepare != nil || len(v.Executes) > 0 || len(v.Channels) > 0 {
			t.Fatalf("pooled screen passed %q with verdict %+v", sql, v)
		}
		if v.Err != nil && v.Err.Code != CodeSyntaxError {
			t.Fatalf("pooled screen passed %q, which the pooled full check refuses: %s", sql, v.Err.Message)
		}
	})
}

func BenchmarkFullCheckPooled(b *testing.B) {
	g := newPooledGuard()
	sql := "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
	b.ReportAllocs()
	for b.Loop() {
		g.full(sql, true)
	}
}

func BenchmarkScreenPooled(b *testing.B) {
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
	b.ReportAllocs()
	for b.Loop() {
		screen(sql, true)
	}
}

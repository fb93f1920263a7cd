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
	"SELECT 1; DISCARD ALL",
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
	for _, sql := range []string{"RESET ALL", "discard all", "DISCARD ALL;"} {
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
	if err := g.CheckFunctionCall(952); err != nil { // lo_open
		t.Fatalf("FunctionCall of lo_open: %v", err)
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
		if !screen([]byte(sql)) {
			t.Errorf("screen sends %q to the parser", sql)
		}
	}
	for _, sql := range refusedSQL {
		if screen([]byte(sql)) {
			t.Errorf("screen passes a refused statement: %s", sql)
		}
	}
}

func TestScreenAllocatesNothing(t *testing.T) {
	sql := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
	if n := testing.AllocsPerRun(100, func() { screen(sql) }); n != 0 {
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
		if !screen([]byte(sql)) {
			return
		}
		v := g.full(sql, true)
		if v.ResetsContext {
			t.Fatalf("screen passed a context reset: %q", sql)
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
		screen(sql)
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

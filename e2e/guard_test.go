package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

// attacks are statements a hostile SQL client sends to leave its tenant, each
// with the SQLSTATE the client must get instead.
var attacks = []struct{ sql, code string }{
	{"SET app.tenant_id = '22222222-2222-2222-2222-222222222222'", "42501"},
	{"SET LOCAL app.tenant_id = '22222222-2222-2222-2222-222222222222'", "42501"},
	{"SET SESSION APP.Tenant_Id TO '22222222-2222-2222-2222-222222222222'", "42501"},
	{`SET "app"."tenant_id" = '22222222-2222-2222-2222-222222222222'`, "42501"},
	{`SET U&"\0061pp".tenant_id = '22222222-2222-2222-2222-222222222222'`, "42501"},
	{"RESET app.tenant_id", "42501"},
	{"SET app.tenant_id TO DEFAULT", "42501"},
	{"SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)", "42501"},
	{"SELECT pg_catalog.set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', true), * FROM projects", "42501"},
	{`SELECT "set_config"('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)`, "42501"},
	{`SELECT U&"\0073et_config"('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)`, "42501"},
	{"SELECT set_config('app.' || 'tenant_id', (SELECT min(id::text) FROM tenants), false)", "42501"},
	{"SELECT * FROM projects WHERE set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', true) IS NOT NULL", "42501"},
	{"WITH s AS (SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', true)) SELECT p.* FROM s, projects p", "42501"},
	{"EXPLAIN ANALYZE SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)", "42501"},
	{"PREPARE evil AS SELECT set_config('app.tenant_id', $1, false)", "42501"},
	{"DECLARE c CURSOR WITH HOLD FOR SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)", "42501"},
	{"COPY (SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false)) TO STDOUT", "42501"},
	{"UPDATE pg_settings SET setting = '22222222-2222-2222-2222-222222222222' WHERE name = 'app.tenant_id'", "42501"},
	{"WITH u AS (UPDATE pg_catalog.pg_settings SET setting = '22222222-2222-2222-2222-222222222222' WHERE name = 'app.tenant_id' RETURNING 1) SELECT * FROM u", "42501"},
	{"DO $$ BEGIN PERFORM set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false); END $$", "42501"},
	{"DO $x$ BEGIN EXECUTE 'SET app.tenant_id = ''22222222-2222-2222-2222-222222222222'''; END $x$", "42501"},
	{"CREATE FUNCTION pg_temp.f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.tenant_id', '22222222-2222-2222-2222-222222222222', false) $$", "42501"},
	{"CREATE OR REPLACE PROCEDURE pg_temp.p() LANGUAGE sql AS 'SELECT 1'", "42501"},
	{"ALTER ROLE app_rls SET app.tenant_id = '22222222-2222-2222-2222-222222222222'", "42501"},
	{"ALTER DATABASE app SET app.tenant_id = '22222222-2222-2222-2222-222222222222'", "42501"},
	{"SET ROLE postgres", "42501"},
	{"SET SESSION AUTHORIZATION postgres", "42501"},
	{"RESET ROLE", "42501"},
	{"SET row_security = off", "42501"},
	{"SELECT query_to_xml('SELECT set_config(''app.tenant_id'', ''22222222-2222-2222-2222-222222222222'', false)', true, true, '')", "42501"},
	{"SELECT 1; SET app.tenant_id = '22222222-2222-2222-2222-222222222222'; SELECT * FROM projects", "42501"},
	{"RESET ALL; SELECT * FROM projects", "42501"},
	{"SET app.tenant_id = 'x' trailing garbage", "42601"},
}

func checkStillTenant(t *testing.T, conn *pgconn.PgConn, tenant string) {
	t.Helper()
	rows := queryRows(t, conn, "SELECT current_setting('app.tenant_id'), (SELECT string_agg(DISTINCT tenant_id::text, ',') FROM projects)")
	if rows[0][0] != tenant || rows[0][1] != tenant {
		t.Fatalf("after the attack: context %q, rows of %q; want only %s", rows[0][0], rows[0][1], tenant)
	}
}

// The red-team suite: every attack on every protocol path is refused with a
// PostgreSQL-shaped error, leaves the session usable, and never changes whose
// rows the client sees.
func TestGuardRedTeam(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		ctx := context.Background()

		t.Run("simple", func(t *testing.T) {
			conn := p.pgconnect(t, tenantA)
			for _, a := range attacks {
				_, err := conn.Exec(ctx, a.sql).ReadAll()
				if pgCode(err) != a.code {
					t.Fatalf("%s: got %v, want %s", a.sql, err, a.code)
				}
				checkStillTenant(t, conn, tenantA.ID)
			}
		})

		t.Run("extended", func(t *testing.T) {
			conn := p.pgconnect(t, tenantA)
			for _, a := range attacks {
				if strings.Count(a.sql, ";") > 0 && !strings.Contains(a.sql, "$$") && !strings.Contains(a.sql, "$x$") {
					continue // several statements cannot be one prepared statement
				}
				_, err := conn.ExecParams(ctx, a.sql, nil, nil, nil, nil).Close()
				if pgCode(err) != a.code {
					t.Fatalf("%s: got %v, want %s", a.sql, err, a.code)
				}
				checkStillTenant(t, conn, tenantA.ID)
			}
		})

		t.Run("inside a transaction", func(t *testing.T) {
			conn := p.pgconnect(t, tenantB)
			for _, a := range attacks[:8] {
				queryRows(t, conn, "BEGIN")
				_, err := conn.Exec(ctx, a.sql).ReadAll()
				if pgCode(err) != a.code {
					t.Fatalf("%s: got %v, want %s", a.sql, err, a.code)
				}
				// As after any PostgreSQL error: the block has failed.
				if conn.TxStatus() != 'E' {
					t.Fatalf("%s: status %c after refusal in a block, want E", a.sql, conn.TxStatus())
				}
				if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); pgCode(err) != "25P02" {
					t.Fatalf("statement after refusal in a block: %v, want 25P02", err)
				}
				queryRows(t, conn, "ROLLBACK")
				checkStillTenant(t, conn, tenantB.ID)
			}
		})

		t.Run("pipelined", func(t *testing.T) {
			conn := p.pgconnect(t, tenantA)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			pl := conn.StartPipeline(pctx)
			setting := "SELECT current_setting('app.tenant_id')"
			n := 0
			for _, a := range attacks {
				if strings.Contains(a.sql, ";") {
					continue
				}
				// The attack and a read in one group, then a read in the next.
				pl.SendQueryParams(a.sql, nil, nil, nil, nil)
				pl.SendQueryParams(setting, nil, nil, nil, nil)
				pl.SendPipelineSync()
				pl.SendQueryParams(setting, nil, nil, nil, nil)
				pl.SendPipelineSync()
				n++
			}
			if err := pl.Flush(); err != nil {
				t.Fatal(err)
			}
			var codes, values []string
			for syncs := 0; syncs < 2*n; {
				res, err := pl.GetResults()
				if pgCode(err) != "" {
					codes = append(codes, pgCode(err))
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				switch r := res.(type) {
				case *pgconn.ResultReader:
					rr := r.Read()
					if rr.Err != nil {
						codes = append(codes, pgCode(rr.Err))
					} else if len(rr.Rows) == 1 {
						values = append(values, string(rr.Rows[0][0]))
					}
				case *pgconn.PipelineSync:
					syncs++
				}
			}
			if err := pl.Close(); err != nil {
				t.Fatal(err)
			}
			if len(codes) != n || len(values) != n {
				t.Fatalf("%d attacks: %d errors (%v), %d reads", n, len(codes), codes, len(values))
			}
			for _, v := range values {
				if v != tenantA.ID {
					t.Fatalf("a pipelined read saw tenant %q", v)
				}
			}
			checkStillTenant(t, conn, tenantA.ID)
		})

		t.Run("FunctionCall of set_config by OID", func(t *testing.T) {
			conn := p.pgconnect(t, tenantA)
			hc, err := conn.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Conn.Close()
			fe := hc.Frontend
			fe.Send(&pgproto3.FunctionCall{Function: 2078, ArgFormatCodes: []uint16{0},
				Arguments: [][]byte{[]byte("app.tenant_id"), []byte(tenantB.ID), []byte("f")}})
			fe.Send(&pgproto3.Query{String: "SELECT current_setting('app.tenant_id')"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for rfq := 0; rfq < 2; {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := msg.(type) {
				case *pgproto3.ErrorResponse:
					got = append(got, "error "+m.Code)
				case *pgproto3.FunctionCallResponse:
					got = append(got, "called")
				case *pgproto3.DataRow:
					got = append(got, string(m.Values[0]))
				case *pgproto3.ReadyForQuery:
					rfq++
				}
			}
			if strings.Join(got, " ") != "error 42501 "+tenantA.ID {
				t.Fatalf("FunctionCall set_config: %v", got)
			}
		})

		t.Run("RESET ALL and DISCARD ALL re-assert the context", func(t *testing.T) {
			conn := p.pgconnect(t, tenantB)
			for _, sql := range []string{"RESET ALL", "DISCARD ALL"} {
				queryRows(t, conn, sql)
				checkStillTenant(t, conn, tenantB.ID)
			}
			// Inside a block, the statement after RESET ALL still sees the tenant.
			queryRows(t, conn, "BEGIN")
			queryRows(t, conn, "RESET ALL")
			checkStillTenant(t, conn, tenantB.ID)
			queryRows(t, conn, "COMMIT")
			checkStillTenant(t, conn, tenantB.ID)
		})
	})
}

// The guard can be turned off per user for a trusted application. Session
// mode only: transaction mode requires the guard (the config refuses
// guard: false there).
func TestGuardOffForTrustedUser(t *testing.T) {
	off := false
	p := startProxy(t, func(c *config.Config) {
		for i := range c.Users {
			if c.Users[i].Name == tenantB.User {
				c.Users[i].Guard = &off
			}
		}
	})
	if !strings.Contains(p.logs.String(), "statement guard is OFF for this user") || !strings.Contains(p.logs.String(), "user="+tenantB.User) {
		t.Fatal("the startup log does not say the guard is off for the trusted user")
	}
	trusted := p.pgconnect(t, tenantB)
	if _, err := trusted.Exec(context.Background(), "SET application_name = 'x'; SELECT set_config('app.other', 'y', false)").ReadAll(); err != nil {
		t.Fatalf("trusted user: %v", err)
	}
	guarded := p.pgconnect(t, tenantA)
	_, err := guarded.Exec(context.Background(), "SELECT set_config('app.other', 'y', false)").ReadAll()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("guarded user: %v", err)
	}
}

// The lexing attacks: with standard_conforming_strings off or a client
// encoding whose characters can end in a backslash (SJIS, BIG5, GBK, ...),
// PostgreSQL would read a string literal differently from the guard's
// parser. Both settings are refused on every path, and the re-assertion after
// RESET ALL / DISCARD ALL cannot be rolled back.
func TestGuardLexingAndResetAttacks(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		ctx := context.Background()
		attack := `SELECT 'a\', ' , set_config($$app.tenant_id$$, $$` + tenantB.ID + `$$, true), (SELECT string_agg(DISTINCT tenant_id::text, ',') FROM projects) -- '`

		for _, extra := range []string{"standard_conforming_strings=off", "client_encoding=SJIS", "options='-c standard_conforming_strings=off'"} {
			e := connectErr(t, p.connString(tenantA, extra))
			if e.Code != "42501" {
				t.Fatalf("startup with %s: %s %s", extra, e.Code, e.Message)
			}
		}
		conn := p.pgconnect(t, tenantA)
		for _, sql := range []string{
			"SET standard_conforming_strings = off",
			"SET client_encoding = 'SJIS'",
			"SET NAMES 'BIG5'",
			"BEGIN; SET LOCAL standard_conforming_strings TO false; COMMIT",
			"SET backslash_quote = on",
		} {
			if _, err := conn.Exec(ctx, sql).ReadAll(); pgCode(err) != "42501" {
				t.Fatalf("%s: %v, want 42501", sql, err)
			}
		}
		// With standard strings on, the attack text is three harmless constants.
		if rows := queryRows(t, conn, attack); len(rows[0]) != 3 || !strings.HasPrefix(rows[0][1], " , set_config(") {
			t.Fatalf("attack text read as %q", rows)
		}
		checkStillTenant(t, conn, tenantA.ID)

		// RESET ALL / DISCARD ALL, then a block that rolls back: still the tenant.
		for _, reset := range []string{"DISCARD ALL", "RESET ALL"} {
			queryRows(t, conn, reset)
			rows := queryRows(t, conn, "BEGIN; ROLLBACK; SELECT current_setting('app.tenant_id', true)")
			if rows[0][0] != tenantA.ID {
				t.Fatalf("after %s and a rolled-back block: tenant %q", reset, rows[0][0])
			}
		}
	})
}

// An upstream whose defaults would make it read SQL differently from the
// guard (here a role default of standard_conforming_strings = off) gets no
// guarded sessions at all.
func TestGuardRefusesUnsafeUpstream(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		superQuery(t, "ALTER ROLE app_rls SET standard_conforming_strings = off")
		defer superQuery(t, "ALTER ROLE app_rls RESET standard_conforming_strings")
		e := connectErr(t, p.connString(tenantA))
		if e.Code != "42501" || !strings.Contains(e.Message, "standard_conforming_strings is off") {
			t.Fatalf("session on an upstream with standard_conforming_strings off: %s %q", e.Code, e.Message)
		}
	})
}

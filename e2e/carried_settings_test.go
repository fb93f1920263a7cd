package e2e

// Session settings in both modes: what a client SETs, RESETs or rolls
// back is its own, as PostgreSQL keeps it, and never another client's. In
// transaction mode the two clients share one pooled connection (a pool of
// one), so each sees the connection right after the other.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// csStep is one statement of one client (0: A, 1: B).
type csStep struct {
	who int
	sql string
	ext bool // sent with the extended protocol (Parse, Bind, Execute, Sync)
	// want is what it must return (its rows' first columns, or "ERROR
	// code"); "" leaves it to PostgreSQL: the same as a direct session.
	want string
	// proxyOnly: a direct session answers otherwise by design (RESET ALL
	// resets the tenant setting there; pgtenant asserts it again).
	proxyOnly bool
}

// csRun runs a statement and describes its outcome.
func csRun(conn *pgconn.PgConn, s csStep) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var vals []string
	var err error
	if s.ext {
		res := conn.ExecParams(ctx, s.sql, nil, nil, nil, nil).Read()
		err = res.Err
		for _, row := range res.Rows {
			vals = append(vals, string(row[0]))
		}
	} else {
		var results []*pgconn.Result
		results, err = conn.Exec(ctx, s.sql).ReadAll()
		for _, res := range results {
			for _, row := range res.Rows {
				vals = append(vals, string(row[0]))
			}
		}
	}
	if err != nil {
		return "ERROR " + pgCode(err)
	}
	return strings.Join(vals, ",")
}

// csDirect connects straight to PostgreSQL as a tenant's session would be,
// with the startup parameters given.
func csDirect(t *testing.T, tn demo.Tenant, app string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, pgcluster.Shared().URL(demo.RLSRole, demo.RLSPassword, demo.Database)+"&application_name="+app)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "SET app.tenant_id TO '"+tn.ID+"'").ReadAll(); err != nil {
		t.Fatal(err)
	}
	return conn
}

func TestCarriedSessionSettings(t *testing.T) {
	const A, B = 0, 1
	tenants := []demo.Tenant{tenantA, tenantB}
	apps := []string{"carry_a", "carry_b"}
	steps := []csStep{
		{who: A, sql: "SHOW statement_timeout", want: "0"},
		{who: A, sql: "SET statement_timeout = '7s'"},
		{who: B, sql: "SHOW statement_timeout", want: "0"},
		{who: A, sql: "SHOW statement_timeout", want: "7s"},
		// As PgJDBC's setClientInfo does it.
		{who: A, sql: "SET application_name = 'renamed_a'", ext: true},
		{who: B, sql: "SHOW application_name", want: "carry_b"},
		{who: A, sql: "SHOW application_name", ext: true, want: "renamed_a"},
		// A block that rolls back takes its SET with it; one that commits keeps it.
		{who: A, sql: "BEGIN; SET work_mem = '8MB'; ROLLBACK"},
		{who: A, sql: "SHOW work_mem", want: "4MB"},
		{who: A, sql: "BEGIN"},
		{who: A, sql: "SET work_mem = '9MB'", ext: true},
		{who: A, sql: "SHOW work_mem", want: "9MB"},
		{who: A, sql: "COMMIT"},
		{who: B, sql: "SHOW work_mem", want: "4MB"},
		{who: A, sql: "SHOW work_mem", want: "9MB"},
		{who: A, sql: "BEGIN; SET work_mem = '10MB'; SAVEPOINT s; SET work_mem = '11MB'; ROLLBACK TO s; COMMIT"},
		{who: A, sql: "SHOW work_mem", want: "10MB"},
		{who: A, sql: "BEGIN; SET work_mem = '12MB'; SELECT 1/0"},
		{who: A, sql: "ROLLBACK"},
		{who: A, sql: "SHOW work_mem", want: "10MB"},
		{who: A, sql: "RESET work_mem"},
		{who: A, sql: "SHOW work_mem", want: "4MB"},
		// Django's connection set-up; PgJDBC's readOnlyMode=always.
		{who: A, sql: "SET TIME ZONE 'Asia/Tokyo'"},
		{who: A, sql: "SELECT current_setting('TimeZone')", ext: true, want: "Asia/Tokyo"},
		{who: B, sql: "SHOW TimeZone"},
		{who: A, sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"},
		{who: A, sql: "SHOW transaction_read_only", want: "on"},
		{who: A, sql: "INSERT INTO projects (tenant_id, name) VALUES (current_setting('app.tenant_id')::uuid, 'ro')", want: "ERROR 25006"},
		{who: B, sql: "SHOW transaction_read_only", want: "off"},
		{who: A, sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"},
		// psycopg2 and SQLAlchemy after an explicit isolation level.
		{who: A, sql: "SET default_transaction_isolation TO 'serializable'"},
		{who: A, sql: "SHOW transaction_isolation", want: "serializable"},
		{who: B, sql: "SHOW transaction_isolation", want: "read committed"},
		{who: A, sql: "SET default_transaction_isolation TO DEFAULT"},
		{who: A, sql: "SHOW transaction_isolation", want: "read committed"},
		// A custom setting, which pg_settings does not list.
		{who: A, sql: "SET myapp.flag = 'x'"},
		{who: A, sql: "SELECT current_setting('myapp.flag')", want: "x"},
		{who: B, sql: "SELECT coalesce(current_setting('myapp.flag', true), '')", want: ""},
		{who: A, sql: "SET search_path = public, pg_catalog"},
		{who: A, sql: "SHOW search_path", want: "public, pg_catalog"},
		{who: B, sql: "SHOW search_path"},
		// RESET goes back to the startup value.
		{who: A, sql: "RESET application_name"},
		{who: A, sql: "SHOW application_name", want: "carry_a"},
		{who: A, sql: "SET application_name = 'again_a'"},
		// RESET ALL: every setting back to its startup value, the tenant still asserted.
		{who: A, sql: "RESET ALL"},
		{who: A, sql: "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name') || ' ' || current_setting('search_path')"},
		{who: A, sql: "SELECT current_setting('app.tenant_id')", want: tenantA.ID, proxyOnly: true},
		{who: A, sql: "SELECT current_setting('myapp.flag')", want: ""},
		// asyncpg's Pool resets every connection it takes back with this.
		{who: A, sql: "SET statement_timeout = '3s'"},
		{who: A, sql: "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"},
		{who: A, sql: "SHOW statement_timeout", want: "0"},
		{who: A, sql: "SELECT current_setting('app.tenant_id')", want: tenantA.ID, proxyOnly: true},
		{who: B, sql: "SELECT current_setting('app.tenant_id')", want: tenantB.ID},
	}
	direct := []*pgconn.PgConn{csDirect(t, tenantA, apps[0]), csDirect(t, tenantB, apps[1])}
	var wantOut []string
	for i, s := range steps {
		got := csRun(direct[s.who], s)
		if s.want != "" && !s.proxyOnly && got != s.want {
			t.Fatalf("step %d (%s): PostgreSQL itself returns %q, the test wants %q", i, s.sql, got, s.want)
		}
		wantOut = append(wantOut, got)
	}
	wantStatus := [2]string{direct[A].ParameterStatus("application_name"), direct[B].ParameterStatus("application_name")}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		conns := []*pgconn.PgConn{
			p.pgconnect(t, tenants[A], "application_name="+apps[A]),
			p.pgconnect(t, tenants[B], "application_name="+apps[B]),
		}
		var log strings.Builder
		for i, s := range steps {
			got := csRun(conns[s.who], s)
			want := wantOut[i]
			if s.proxyOnly {
				want = s.want
			}
			mark := "  "
			if got != want {
				mark = "!!"
				t.Fail()
			}
			fmt.Fprintf(&log, "%s %d %c: %s -> %q (want %q)\n", mark, i, "AB"[s.who], s.sql, got, want)
		}
		for who, c := range conns {
			if got := c.ParameterStatus("application_name"); got != wantStatus[who] {
				t.Errorf("%c: application_name reported %q, PostgreSQL reports %q", "AB"[who], got, wantStatus[who])
			}
		}
		if t.Failed() {
			t.Logf("steps (!! differs from PostgreSQL):\n%s", log.String())
		}
	})
}

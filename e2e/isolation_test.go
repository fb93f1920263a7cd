package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

// Each tenant sees, updates and deletes only its own rows; inserting a row for
// the other tenant is refused by the policy.
func TestTenantsSeeOnlyTheirRows(t *testing.T) {
	eachScope(t, func(t *testing.T, m poolMode, scope string) {
		p := m.start(t, withScope(scope))
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)

		for _, tc := range []struct {
			conn   *pgconn.PgConn
			tenant string
		}{{a, tenantA.ID}, {b, tenantB.ID}} {
			ids := queryRows(t, tc.conn, "SELECT DISTINCT tenant_id FROM projects")
			if len(ids) != 1 || ids[0][0] != tc.tenant {
				t.Fatalf("tenant %s sees tenant ids %v", tc.tenant, ids)
			}
			if n := queryOne(t, tc.conn, "SELECT count(*) FROM tenants"); n != "1" {
				t.Fatalf("tenant %s sees %s tenants rows, want 1", tc.tenant, n)
			}
		}

		// UPDATE and DELETE without a WHERE touch only the caller's rows.
		if tag := execTag(t, a, "UPDATE projects SET name = name"); tag != "UPDATE 3" {
			t.Fatalf("tenant A update-all: %s, want UPDATE 3", tag)
		}
		queryRows(t, b, "INSERT INTO projects (tenant_id, name) VALUES ('"+tenantB.ID+"', 'e2e-temp')")
		if tag := execTag(t, a, "DELETE FROM projects WHERE name = 'e2e-temp'"); tag != "DELETE 0" {
			t.Fatalf("tenant A deleted tenant B's row: %s", tag)
		}
		if tag := execTag(t, b, "DELETE FROM projects WHERE name = 'e2e-temp'"); tag != "DELETE 1" {
			t.Fatalf("tenant B delete own row: %s, want DELETE 1", tag)
		}

		// Writing a row for the other tenant violates the policy.
		_, err := a.Exec(context.Background(), "INSERT INTO projects (tenant_id, name) VALUES ('"+tenantB.ID+"', 'smuggled')").ReadAll()
		if code := pgCode(err); code != "42501" {
			t.Fatalf("insert of other tenant's id: got %v (code %q), want 42501", err, code)
		}
		_, err = a.Exec(context.Background(), "UPDATE projects SET tenant_id = '"+tenantB.ID+"'").ReadAll()
		if code := pgCode(err); code != "42501" {
			t.Fatalf("moving rows to the other tenant: got %v (code %q), want 42501", err, code)
		}
		if n := superQuery(t, "SELECT count(*) FROM projects WHERE name = 'smuggled'"); n[0][0] != "0" {
			t.Fatal("smuggled row exists")
		}
	})
}

func execTag(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	res, err := conn.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return res[len(res)-1].CommandTag.String()
}

// The tenant context is right in every transaction state a client can reach
// (with context_scope: transaction, in every transaction pgtenant can
// assert: not one that begins after a COMMIT or ROLLBACK in the middle of a
// string, which runs with the connection's empty session value).
func TestTenantContextEverywhere(t *testing.T) {
	eachScope(t, func(t *testing.T, m poolMode, scope string) {
		p := m.start(t, withScope(scope))
		conn := p.pgconnect(t, tenantA)
		want := tenantA.ID
		setting := "SELECT current_setting('app.tenant_id')"
		midString := want // what a statement after a COMMIT in the middle of a string sees
		if scope == config.ContextScopeTransaction {
			midString = ""
		}

		check := func(desc, sql string) {
			t.Helper()
			rows := queryRows(t, conn, sql)
			got := rows[len(rows)-1][0]
			if got != want {
				t.Fatalf("%s: current_setting = %q, want %q", desc, got, want)
			}
		}
		check("first statement", setting)
		// On a fresh connection, a ROLLBACK in the first string must not undo the context.
		fresh := p.pgconnect(t, tenantA)
		rows := queryRows(t, fresh, "BEGIN; ROLLBACK; "+setting)
		if rows[0][0] != midString {
			t.Fatalf("after BEGIN; ROLLBACK in the first string: %q", rows[0][0])
		}

		check("before a transaction", setting)
		queryRows(t, conn, "BEGIN")
		check("inside a transaction", setting)
		queryRows(t, conn, "COMMIT")
		check("after COMMIT", setting)

		queryRows(t, conn, "BEGIN")
		queryRows(t, conn, "ROLLBACK")
		check("after ROLLBACK", setting)

		queryRows(t, conn, "BEGIN ISOLATION LEVEL SERIALIZABLE")
		check("inside serializable", setting)
		queryRows(t, conn, "ROLLBACK")

		// SET TRANSACTION must still be allowed as the first statement of a block.
		queryRows(t, conn, "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
		check("after SET TRANSACTION", setting)
		queryRows(t, conn, "COMMIT")

		queryRows(t, conn, "BEGIN")
		if _, err := conn.Exec(context.Background(), "SELECT 1/0").ReadAll(); pgCode(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
		if _, err := conn.Exec(context.Background(), setting).ReadAll(); pgCode(err) != "25P02" {
			t.Fatalf("statement in failed transaction: got %v, want 25P02", err)
		}
		queryRows(t, conn, "ROLLBACK")
		check("after an error inside a transaction", setting)

		if rows := queryRows(t, conn, "BEGIN; SELECT 1; COMMIT; "+setting); rows[len(rows)-1][0] != midString {
			t.Fatalf("after COMMIT in a multi-statement string: current_setting = %q, want %q", rows[len(rows)-1][0], midString)
		}
		check("after the string", setting)
		check("multi-statement implicit transaction", "SELECT 1; "+setting)

		queryRows(t, conn, "BEGIN")
		queryRows(t, conn, "SAVEPOINT s1")
		if _, err := conn.Exec(context.Background(), "SELECT 1/0").ReadAll(); err == nil {
			t.Fatal("want error")
		}
		queryRows(t, conn, "ROLLBACK TO SAVEPOINT s1")
		check("after ROLLBACK TO SAVEPOINT", setting)
		queryRows(t, conn, "COMMIT")
		check("after the block", setting)
	})
}

// Every statement of a pipeline runs with the tenant, across Syncs, explicit
// blocks inside the pipeline, and errors.
func TestTenantContextInPipeline(t *testing.T) {
	eachScope(t, func(t *testing.T, m poolMode, scope string) {
		p := m.start(t, withScope(scope))
		gotValues, gotErrs := runPipeline(t, p.pgconnect(t, tenantB))
		// The same pipeline straight to PostgreSQL: the proxy must not change a result.
		wantValues, wantErrs := runPipeline(t, directConnect(t, tenantB.ID))
		if gotErrs != wantErrs || gotErrs != "22012,22012" {
			t.Fatalf("errors in pipeline: %s, direct %s, want 22012,22012 (the ROLLBACK after the failed block must succeed)", gotErrs, wantErrs)
		}
		if len(gotValues) != len(wantValues) || len(gotValues) < 5 {
			t.Fatalf("got %d current_setting values, direct %d", len(gotValues), len(wantValues))
		}
		for i, v := range gotValues {
			if v != tenantB.ID {
				t.Fatalf("pipeline statement %d saw tenant %q, want %q", i, v, tenantB.ID)
			}
		}
	})
}

func runPipeline(t *testing.T, conn *pgconn.PgConn) (values []string, errors string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	setting := "SELECT current_setting('app.tenant_id')"

	pl := conn.StartPipeline(ctx)
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("BEGIN", nil, nil, nil, nil)
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendQueryParams("COMMIT", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("BEGIN", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("ROLLBACK", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams(setting, nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}

	var errs []string
	syncs := 0
	for syncs < 8 {
		res, err := pl.GetResults()
		if pgCode(err) != "" {
			errs = append(errs, pgCode(err))
			continue
		}
		if err != nil {
			t.Fatalf("GetResults: %v", err)
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				errs = append(errs, pgCode(rr.Err))
				continue
			}
			if len(rr.Rows) == 1 && len(rr.Rows[0]) == 1 {
				values = append(values, string(rr.Rows[0][0]))
			}
		case *pgconn.PipelineSync:
			syncs++
		case nil:
			t.Fatal("pipeline ended early")
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	// The connection is usable and idle afterwards.
	if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
		t.Fatalf("after pipeline: %q", got)
	}
	if conn.TxStatus() != 'I' {
		t.Fatalf("transaction status %c, want I", conn.TxStatus())
	}
	return values, strings.Join(errs, ",")
}

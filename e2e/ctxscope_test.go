package e2e

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// contextScopes: the isolation tests run under both (eachScope).
var contextScopes = []string{config.ContextScopeSession, config.ContextScopeTransaction}

// eachScope runs test in every pool mode under every context scope, as
// subtests.
func eachScope(t *testing.T, test func(t *testing.T, m poolMode, scope string)) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for _, scope := range contextScopes {
			t.Run(scope+"_scope", func(t *testing.T) { test(t, m, scope) })
		}
	})
}

// withScope sets context_scope.
func withScope(scope string) func(*config.Config) {
	return func(c *config.Config) { c.ContextScope = scope }
}

// transactionScope is context_scope: transaction.
var transactionScope = withScope(config.ContextScopeTransaction)

// Through every way of running a statement, each tenant sees its own rows
// and no other's: simple, extended, pipelined extended, explicit blocks,
// savepoints, COPY out and in.
func TestContextScopeIsolation(t *testing.T) {
	eachScope(t, func(t *testing.T, m poolMode, scope string) {
		p := m.start(t, withScope(scope))
		relayCleanCopySink(t)
		for _, tn := range []demo.Tenant{tenantA, tenantB} {
			conn := p.pgconnect(t, tn)
			ids := "SELECT coalesce(string_agg(DISTINCT tenant_id::text, ','), '') FROM projects"
			for _, w := range []struct {
				desc string
				run  func() string
			}{
				{"simple", func() string { return queryOne(t, conn, ids) }},
				{"extended", func() string { return extendedOne(t, conn, ids) }},
				{"pipelined extended", func() string { return pipelinedOnes(t, conn, ids, 3) }},
				{"explicit block", func() string {
					queryRows(t, conn, "BEGIN")
					defer queryRows(t, conn, "COMMIT")
					return queryOne(t, conn, ids)
				}},
				{"block in one string", func() string {
					rows := queryRows(t, conn, "BEGIN; "+ids+"; COMMIT")
					return rows[0][0]
				}},
				{"savepoint", func() string {
					queryRows(t, conn, "BEGIN")
					defer queryRows(t, conn, "COMMIT")
					queryRows(t, conn, "SAVEPOINT s")
					if _, err := conn.Exec(context.Background(), "SELECT 1/0").ReadAll(); pgCode(err) != "22012" {
						t.Fatalf("want 22012, got %v", err)
					}
					queryRows(t, conn, "ROLLBACK TO SAVEPOINT s")
					return extendedOne(t, conn, ids)
				}},
				{"copy out", func() string {
					var out bytes.Buffer
					if _, err := conn.CopyTo(context.Background(), &out, "COPY ("+ids+") TO STDOUT"); err != nil {
						t.Fatal(err)
					}
					return strings.TrimSuffix(out.String(), "\n")
				}},
				{"copy in", func() string {
					// copy_sink's tenant column defaults to the context.
					line := relayLine + "-ctxscope-" + tn.User
					if _, err := conn.CopyFrom(context.Background(), strings.NewReader(line+"\n"), "COPY copy_sink (line) FROM STDIN"); err != nil {
						t.Fatal(err)
					}
					return queryOne(t, conn, "SELECT string_agg(DISTINCT tenant_id::text, ',') FROM copy_sink WHERE line = '"+line+"'")
				}},
			} {
				if got := w.run(); got != tn.ID {
					t.Fatalf("%s: tenant %s sees tenant ids %q", w.desc, tn.User, got)
				}
			}
		}
	})
}

// extendedOne runs sql through the extended protocol and returns its one value.
func extendedOne(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	res := conn.ExecParams(context.Background(), sql, nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 {
		t.Fatalf("%s: %v (%d rows)", sql, res.Err, len(res.Rows))
	}
	return string(res.Rows[0][0])
}

// pipelinedOnes runs sql n times in one pipeline, a Sync after each, and
// returns the value they all returned (or all the values if they differ).
func pipelinedOnes(t *testing.T, conn *pgconn.PgConn, sql string, n int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pl := conn.StartPipeline(ctx)
	for range n {
		pl.SendQueryParams(sql, nil, nil, nil, nil)
		pl.SendPipelineSync()
	}
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	var values []string
	for syncs := 0; syncs < n; {
		res, err := pl.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil || len(rr.Rows) != 1 {
				t.Fatalf("pipelined %s: %v", sql, rr.Err)
			}
			values = append(values, string(rr.Rows[0][0]))
		case *pgconn.PipelineSync:
			syncs++
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	if slices.Min(values) == slices.Max(values) {
		return values[0]
	}
	return strings.Join(values, " ")
}

// With context_scope: transaction, a statement that runs after a COMMIT in
// the middle of a simple-query string, or after a COMMIT within an
// extended-protocol group, runs in a transaction pgtenant could not assert:
// it has no context (the connection's session value is empty) and the
// policies refuse it. The statements before it, and the next string, have
// the context.
func TestContextScopeAfterCommitMidString(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, transactionScope)
		conn := p.pgconnect(t, tenantA)
		missingOK := "SELECT current_setting('app.tenant_id', true)"

		rows := queryRows(t, conn, missingOK+"; COMMIT; "+missingOK)
		if rows[0][0] != tenantA.ID || rows[1][0] != "" {
			t.Fatalf("before and after a COMMIT in an implicit block: %q, want %q and empty", rows, tenantA.ID)
		}
		rows = queryRows(t, conn, "BEGIN; "+missingOK+"; COMMIT; "+missingOK)
		if rows[0][0] != tenantA.ID || rows[1][0] != "" {
			t.Fatalf("inside and after a block in one string: %q", rows)
		}
		rows = queryRows(t, conn, "BEGIN; ROLLBACK; "+missingOK)
		if rows[0][0] != "" {
			t.Fatalf("after ROLLBACK in the string: %q, want empty", rows)
		}
		// The policies refuse: the empty value is no uuid.
		_, err := conn.Exec(context.Background(), "SELECT 1; COMMIT; SELECT count(*) FROM projects").ReadAll()
		if code := pgCode(err); code != "22P02" {
			t.Fatalf("reading the table after a COMMIT in the string: %v (code %q), want 22P02 (the policy refuses an empty context)", err, code)
		}
		if n := superQuery(t, "SELECT count(*) FROM projects WHERE tenant_id = '"+tenantA.ID+"'")[0][0]; queryOne(t, conn, "SELECT count(*) FROM projects") != n {
			t.Fatal("the next string does not have the context")
		}

		// Extended protocol: COMMIT ends the transaction before the group's Sync.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pl := conn.StartPipeline(ctx)
		for _, sql := range []string{"BEGIN", missingOK, "COMMIT", missingOK} {
			pl.SendQueryParams(sql, nil, nil, nil, nil)
		}
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		var values []string
		for done := false; !done; {
			res, err := pl.GetResults()
			if err != nil {
				t.Fatal(err)
			}
			switch r := res.(type) {
			case *pgconn.ResultReader:
				rr := r.Read()
				if rr.Err != nil {
					t.Fatal(rr.Err)
				}
				if len(rr.Rows) == 1 {
					values = append(values, string(rr.Rows[0][0]))
				}
			case *pgconn.PipelineSync:
				done = true
			}
		}
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}
		if len(values) != 2 || values[0] != tenantA.ID || values[1] != "" {
			t.Fatalf("pipeline BEGIN, value, COMMIT, value, Sync: %q, want [%s \"\"]", values, tenantA.ID)
		}
	})
}

// With context_scope: transaction, the upstream connection's session value
// is empty between transactions, whoever held it before: a statement that
// runs outside every transaction pgtenant asserts (after a COMMIT in the
// middle of a string) finds nothing, on a fresh connection, on the session's
// own connection, and on a pooled connection another tenant just used.
func TestContextScopeUpstreamSessionValueEmpty(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1, transactionScope)) // one pooled connection: B's, then A's
		outside := "SELECT 1; COMMIT; SELECT current_setting('app.tenant_id')"
		b := p.pgconnect(t, tenantB)
		if rows := queryRows(t, b, outside); rows[1][0] != "" {
			t.Fatalf("first use: session value %q, want empty", rows[1][0])
		}
		for range 3 {
			queryOne(t, b, "SELECT count(*) FROM projects")
		}
		a := p.pgconnect(t, tenantA)
		for _, c := range []*pgconn.PgConn{a, b} {
			if rows := queryRows(t, c, outside); rows[1][0] != "" {
				t.Fatalf("after tenant B's transactions: session value %q, want empty", rows[1][0])
			}
		}
	})
}

// On pooled connections shared by two tenants at once, with
// context_scope: transaction, no statement ever sees another tenant's
// context: an asserted one sees its own, one outside (after a COMMIT in the
// middle of the string) sees nothing.
func TestContextScopeNoOtherTenantOnPool(t *testing.T) {
	p := startProxy(t, poolModes[1].config(2, transactionScope))
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for _, tn := range []demo.Tenant{tenantA, tenantB, tenantA, tenantB} {
		conn := p.pgconnect(t, tn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range 150 {
				sql := "SELECT current_setting('app.tenant_id', true); COMMIT; SELECT current_setting('app.tenant_id', true)"
				if i%3 == 0 {
					sql = "BEGIN; SELECT current_setting('app.tenant_id', true); COMMIT; SELECT current_setting('app.tenant_id', true)"
				}
				res, err := conn.Exec(ctx, sql).ReadAll()
				if err != nil {
					errs <- err.Error()
					return
				}
				var got []string
				for _, r := range res {
					for _, row := range r.Rows {
						got = append(got, string(row[0]))
					}
				}
				if len(got) != 2 || got[0] != tn.ID || got[1] != "" {
					errs <- fmt.Sprintf("tenant %s, round %d: saw %q, want [%s \"\"]", tn.User, i, got, tn.ID)
					return
				}
				if v := extendedValue(ctx, conn); v != tn.ID {
					errs <- fmt.Sprintf("tenant %s, round %d, extended: saw %q", tn.User, i, v)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// extendedValue is the context as an extended-protocol statement sees it.
func extendedValue(ctx context.Context, conn *pgconn.PgConn) string {
	res := conn.ExecParams(ctx, "SELECT current_setting('app.tenant_id', true)", nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 {
		return fmt.Sprint("error: ", res.Err)
	}
	return string(res.Rows[0][0])
}

// With context_scope: transaction, the client gets the notices PostgreSQL
// would send it and no more: not the warning of pgtenant's SET LOCAL in an
// implicit transaction, but its own statements' (here the same warning, and
// COMMIT's outside a block).
func TestContextScopeNoticesAsPostgres(t *testing.T) {
	statements := []string{
		"SELECT count(*) FROM projects",
		"SELECT 1; COMMIT; SELECT 2",
		"SET LOCAL work_mem = '4MB'",
		"BEGIN",
		"SELECT 1",
		"COMMIT",
	}
	notices := func(connString string, setContext bool) []string {
		cfg, err := pgconn.ParseConfig(connString)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			got = append(got, n.Severity+" "+n.Code+" "+n.Message)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if setContext {
			queryRows(t, conn, "SET app.tenant_id TO '"+tenantA.ID+"'")
		}
		got = nil
		for _, sql := range statements {
			queryRows(t, conn, sql)
			extendedOne(t, conn, "SELECT count(*) FROM projects")
		}
		return got
	}
	want := notices(pgcluster.Shared().URL(demo.RLSRole, demo.RLSPassword, demo.Database), true)
	if len(want) != 2 {
		t.Fatalf("PostgreSQL sent %d notices, want 2: %q", len(want), want)
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, transactionScope)
		if got := notices(p.connString(tenantA), false); !slices.Equal(got, want) {
			t.Fatalf("notices through pgtenant:\n%q\nPostgreSQL:\n%q", got, want)
		}
	})
}

// With context_scope: transaction, the context is set once more inside a
// block the client began (Citus carries a SET LOCAL to its workers only
// inside a block): the server's statement log shows a SET LOCAL between
// the client's BEGIN and its first statement in the block.
func TestContextScopeAssertedInsideBlock(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, transactionScope)
		app := "ctxscope_inblock_" + m.name
		conn := p.pgconnect(t, tenantA, "application_name="+app)
		queryRows(t, conn, "BEGIN")
		queryRows(t, conn, "SELECT 'ctxscope-in-block'")
		queryRows(t, conn, "COMMIT")
		var lines []string
		eventually(t, 5*time.Second, "the statements in the server log", func() bool {
			logs, err := pgcluster.Shared().LogContents()
			if err != nil {
				t.Fatal(err)
			}
			lines = lines[:0]
			for _, l := range strings.Split(logs, "\n") {
				if strings.HasPrefix(l, app+"|") && strings.Contains(l, "LOG:") {
					lines = append(lines, l)
				}
			}
			return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "statement: COMMIT") })
		})
		begin := slices.IndexFunc(lines, func(l string) bool { return strings.HasSuffix(l, "statement: BEGIN") })
		stmt := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "'ctxscope-in-block'") })
		if begin < 0 || stmt < begin || !slices.ContainsFunc(lines[begin:stmt], func(l string) bool { return strings.Contains(l, "SET LOCAL") }) {
			t.Fatalf("no SET LOCAL between BEGIN and the block's statement:\n%s", strings.Join(lines, "\n"))
		}
	})
}

// With context_scope: transaction, a string that starts with SET, which the
// relay would otherwise assert in a round trip of its own, gets the
// assertion in its own transaction: it sees the tenant's rows. (DO, also
// asserted inline then, is the guard's to refuse.)
func TestContextScopeSetAndDo(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, transactionScope)
		conn := p.pgconnect(t, tenantA)
		want := queryOne(t, directConnect(t, tenantA.ID), "SELECT count(*) FROM projects")
		rows := queryRows(t, conn, "SET work_mem = '4MB'; SELECT count(*) FROM projects")
		if len(rows) != 1 || rows[0][0] != want {
			t.Fatalf("SET; SELECT: %q, want %s", rows, want)
		}
		rows = queryRows(t, conn, "RESET work_mem; SELECT count(*) FROM projects")
		if len(rows) != 1 || rows[0][0] != want {
			t.Fatalf("RESET; SELECT: %q, want %s", rows, want)
		}
	})
}

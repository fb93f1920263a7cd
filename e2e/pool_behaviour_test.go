package e2e

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// What would outlive a transaction on a shared connection is refused in
// transaction mode, with SQLSTATE and a hint naming what to use instead;
// the transaction-scoped forms work.
func TestPoolRefusesSessionState(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	ctx := context.Background()
	// The demo database keeps temporary tables from tenants; allow them here
	// to show that transaction-scoped ones work.
	superQuery(t, "GRANT TEMPORARY ON DATABASE app TO "+demo.RLSRole)
	t.Cleanup(func() { superQuery(t, "REVOKE TEMPORARY ON DATABASE app FROM "+demo.RLSRole) })
	for _, tc := range []struct{ sql, code, hint string }{
		{"SET idle_session_timeout = '5s'", "0A000", "limits.idle_timeout"},
		{"PREPARE pgtenant_q AS SELECT 1", "42501", ""},
		{"CREATE TABLE pg_temp.scratch (x int)", "0A000", "ON COMMIT DROP"},
		{"SELECT name FROM pg_prepared_statements", "42501", ""},
	} {
		_, err := a.Exec(ctx, tc.sql).ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != tc.code || !strings.Contains(pgErr.Hint, tc.hint) {
			t.Errorf("%s: got %v (hint %q), want %s with a hint naming %q", tc.sql, err, hintOf(err), tc.code, tc.hint)
		}
		// A refusal inside a block fails the block, as any error does.
		if _, err := a.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		"BEGIN; SET LOCAL statement_timeout = '5s'; SHOW statement_timeout; COMMIT",
		"BEGIN; CREATE TEMP TABLE scratch (x int) ON COMMIT DROP; INSERT INTO scratch VALUES (1); COMMIT",
		"BEGIN; DECLARE c CURSOR FOR SELECT 1; FETCH c; COMMIT",
		"SELECT pg_advisory_xact_lock(42)",
		"UNLISTEN *",
		"DEALLOCATE ALL",
		"RESET statement_timeout",
	} {
		if _, err := a.Exec(ctx, sql).ReadAll(); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
	}
	if got := queryOne(t, a, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
		t.Fatalf("tenant after the refusals: %q", got)
	}
}

func hintOf(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Hint
	}
	return ""
}

// A ROLLBACK takes back the transaction's own assertion. On a connection
// that served another tenant, what it falls back to must never be that
// tenant's context: the pool resets the connection and commits the new
// holder's own context before handing it over.
func TestPoolRollbackNeverRevealsPreviousTenant(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	b := p.pgconnect(t, tenantB)
	for i := 0; i < 3; i++ {
		queryOne(t, a, "SELECT count(*) FROM projects") // commits A's context on the connection
		rows := queryRows(t, b, "BEGIN; ROLLBACK; SELECT current_setting('app.tenant_id', true)")
		if got := rows[len(rows)-1][0]; got != tenantB.ID {
			t.Fatalf("after ROLLBACK tenant B's statement ran as %q", got)
		}
		rows = queryRows(t, b, "BEGIN; ROLLBACK; SELECT string_agg(name, ',' ORDER BY name) FROM projects")
		if got, want := rows[len(rows)-1][0], queryOne(t, b, "SELECT string_agg(name, ',' ORDER BY name) FROM projects"); got != want {
			t.Fatalf("after ROLLBACK tenant B sees %q, want its own %q", got, want)
		}
	}
}

// Startup parameters are the client's session settings: in transaction
// mode pgtenant applies them with the tenant at every transaction start,
// so two clients sharing one connection each keep their own.
func TestPoolCarriesStartupParameters(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := p.pgconnect(t, tenantA, "application_name=alpha", "options='-c statement_timeout=1234'")
		b := p.pgconnect(t, tenantB, "application_name=beta")
		if got := a.ParameterStatus("application_name"); got != "alpha" {
			t.Fatalf("ParameterStatus application_name for A: %q", got)
		}
		for i := 0; i < 3; i++ {
			if got := queryRows(t, a, "SELECT current_setting('application_name'), current_setting('statement_timeout')")[0]; got[0] != "alpha" || got[1] != "1234ms" {
				t.Fatalf("A sees %v", got)
			}
			if got := queryRows(t, b, "SELECT current_setting('application_name'), current_setting('statement_timeout')")[0]; got[0] != "beta" || got[1] != "0" {
				t.Fatalf("B sees %v", got)
			}
		}
		if !m.tx {
			return
		}
		// Transaction mode refuses a search_path naming pg_temp at login.
		for _, opt := range []string{"options='-c search_path=pg_temp,public'", "options='-c SEARCH_PATH=pg_temp'", "options='-c Search_Path=public,PG_TEMP'"} {
			_, err := pgconn.Connect(context.Background(), p.connString(tenantA, opt))
			if code := pgCode(err); code != "0A000" {
				t.Fatalf("%s: %v, want 0A000", opt, err)
			}
		}
	})
}

// A connection keeps its holder's startup parameters committed and its
// context statements prepared, so that a transaction asserts only the
// tenant, through them. A RESET, in any form, changes what is committed, and
// DEALLOCATE ALL drops the statements: the next transaction must still see
// the startup values and its tenant, as a PostgreSQL session would (RESET
// goes back to the startup value).
func TestPoolResetRestoresStartupParameters(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ctx := context.Background()
		a := p.pgconnect(t, tenantA, "application_name=alpha", "options='-c statement_timeout=1234'")
		if _, err := a.Prepare(ctx, "reset_app", "RESET application_name", nil); err != nil {
			t.Fatal(err)
		}

		resets := []struct {
			name string
			run  func() error
		}{
			{"simple RESET", func() error {
				_, err := a.Exec(ctx, "RESET application_name; RESET statement_timeout").ReadAll()
				return err
			}},
			{"RESET in a block", func() error { _, err := a.Exec(ctx, "BEGIN; RESET statement_timeout; COMMIT").ReadAll(); return err }},
			{"extended unnamed", func() error { return a.ExecParams(ctx, "RESET application_name", nil, nil, nil, nil).Read().Err }},
			{"prepared, first run", func() error { return a.ExecPrepared(ctx, "reset_app", nil, nil, nil).Read().Err }},
			{"prepared, run again", func() error { return a.ExecPrepared(ctx, "reset_app", nil, nil, nil).Read().Err }},
			{"DEALLOCATE ALL", func() error { _, err := a.Exec(ctx, "DEALLOCATE ALL").ReadAll(); return err }},
			{"extended DEALLOCATE ALL", func() error { return a.ExecParams(ctx, "DEALLOCATE ALL", nil, nil, nil, nil).Read().Err }},
			{"RESET ALL", func() error { _, err := a.Exec(ctx, "RESET ALL").ReadAll(); return err }},
			{"DISCARD ALL", func() error { _, err := a.Exec(ctx, "DISCARD ALL").ReadAll(); return err }},
		}
		for _, r := range resets {
			queryOne(t, a, "SELECT 1") // the connection's committed settings are A's
			if err := r.run(); err != nil {
				t.Fatalf("%s: %v", r.name, err)
			}
			for i := 0; i < 2; i++ {
				got := queryRows(t, a, "SELECT current_setting('application_name'), current_setting('statement_timeout'), current_setting('app.tenant_id')")[0]
				if got[0] != "alpha" || got[1] != "1234ms" || got[2] != tenantA.ID {
					t.Fatalf("after %s, transaction %d sees %v", r.name, i, got)
				}
			}
			if r.name == "prepared, run again" {
				// DEALLOCATE ALL and DISCARD ALL below drop it.
				continue
			}
		}
	})
}

// A cancel reaches the query of the client that sent it, and never the
// query of another client (in transaction mode, on a connection the first
// one used before).
func TestPoolCancel(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		ctx := context.Background()

		// A's own query is cancelled.
		done := make(chan error, 1)
		go func() {
			_, err := a.Exec(ctx, "SELECT pg_sleep(10)").ReadAll()
			done <- err
		}()
		eventually(t, 5*time.Second, "A's query running", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'")[0][0] == "1"
		})
		if err := a.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; pgCode(err) != "57014" {
			t.Fatalf("A's cancelled query: %v, want 57014", err)
		}

		// A holds no connection now; its cancel must not reach B's query on the
		// connection A used.
		go func() {
			_, err := b.Exec(ctx, "SELECT pg_sleep(1)").ReadAll()
			done <- err
		}()
		eventually(t, 5*time.Second, "B's query running", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1)' AND state = 'active'")[0][0] == "1"
		})
		if err := a.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("B's query was hit by A's cancel: %v", err)
		}
	})
}

// Waiting for a connection is bounded: by pool.wait_timeout (57014) and by
// pool.max_waiting (53300).
func TestPoolWaitLimits(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		transactionPool(1)(c)
		c.Pool.WaitTimeout = config.Duration{Duration: time.Second}
		c.Pool.MaxWaiting = 1
	})
	holder := p.pgconnect(t, tenantA)
	if _, err := holder.Exec(context.Background(), "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	waiter := p.pgconnect(t, tenantB)
	start := time.Now()
	_, err := waiter.Exec(context.Background(), "SELECT 1").ReadAll()
	if code := pgCode(err); code != "57014" || time.Since(start) > 5*time.Second {
		t.Fatalf("waiting past wait_timeout: %v after %s, want 57014 after ~1s", err, time.Since(start))
	}

	// One client waits; the next one is refused at once. Both are logged in
	// first, so that the first still waits when the second asks, even on a
	// loaded machine.
	waiting := p.pgconnect(t, tenantB)
	third := p.pgconnect(t, tenantB)
	waited := make(chan struct{})
	defer func() { <-waited }() // before the connections close
	go func() {
		defer close(waited)
		_, _ = waiting.Exec(context.Background(), "SELECT 1").ReadAll()
	}()
	eventually(t, 5*time.Second, "a client waiting for the pool", func() bool {
		_, _, w := p.srv.PoolStats()
		return w == 1
	})
	_, err = third.Exec(context.Background(), "SELECT 1").ReadAll()
	if code := pgCode(err); code != "53300" {
		t.Fatalf("beyond max_waiting: %v, want 53300", err)
	}
	<-waited
	if _, err := holder.Exec(context.Background(), "COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}
}

// A tenant never holds more connections than its cap, and clients waiting
// are served across tenants, not first come first served: a tenant that
// floods the queue does not starve another.
func TestPoolFairness(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		transactionPool(2)(c)
		c.Pool.TenantMaxConnections = 1
		c.Pool.Tenants = map[string]config.PoolTenant{tenantB.ID: {MaxConnections: 2}}
		c.Pool.WaitTimeout = config.Duration{Duration: 20 * time.Second}
	})
	ctx := context.Background()
	// Tenant A: five clients each holding a transaction open for a while.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var maxA int
	for i := 0; i < 5; i++ {
		c := p.pgconnect(t, tenantA)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Exec(ctx, "BEGIN; SELECT pg_sleep(0.2); COMMIT").ReadAll(); err != nil {
				t.Error(err)
			}
		}()
	}
	// Meanwhile tenant B gets through in less than A's queue takes.
	time.Sleep(50 * time.Millisecond)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n := len(superQuery(t, "SELECT pid FROM pg_stat_activity WHERE query = 'BEGIN; SELECT pg_sleep(0.2); COMMIT' AND state = 'active'"))
			mu.Lock()
			maxA = max(maxA, n)
			mu.Unlock()
		}
	}()
	b := p.pgconnect(t, tenantB)
	start := time.Now()
	if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
		t.Fatalf("B runs as %q", got)
	}
	waitedB := time.Since(start)
	wg.Wait()
	close(stop)
	<-sampled
	if maxA > 1 {
		t.Fatalf("tenant A held %d connections at once, cap 1", maxA)
	}
	if waitedB > 600*time.Millisecond {
		t.Fatalf("tenant B waited %s behind tenant A's queue (A's five transactions take ~1s)", waitedB)
	}
}

// A client that goes away mid-transaction, mid-COPY or mid-pipeline leaves
// nothing behind: its connection is discarded, its work rolled back, and
// the next client gets a clean connection with its own context.
func TestPoolClientDisconnects(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		superQuery(t, "DELETE FROM projects WHERE name LIKE 'pool-abandoned%'")
		for _, tc := range []struct {
			name string
			send func(c *pgconn.PgConn)
		}{
			{"transaction", func(c *pgconn.PgConn) {
				_, err := c.Exec(context.Background(), "BEGIN; INSERT INTO projects (tenant_id, name) VALUES ('"+tenantA.ID+"', 'pool-abandoned-tx')").ReadAll()
				if err != nil {
					t.Fatal(err)
				}
			}},
			{"copy", func(c *pgconn.PgConn) {
				conn := c.Conn()
				msg := []byte("Q\x00\x00\x00\x00COPY projects (tenant_id, name) FROM STDIN\x00")
				msg[4] = byte(len(msg) - 1)
				if _, err := conn.Write(msg); err != nil {
					t.Fatal(err)
				}
				row := tenantA.ID + "\tpool-abandoned-copy\n"
				data := append([]byte{'d', 0, 0, 0, byte(4 + len(row))}, row...)
				if _, err := conn.Write(data); err != nil {
					t.Fatal(err)
				}
			}},
			{"pipeline", func(c *pgconn.PgConn) {
				conn := c.Conn()
				for _, q := range []string{"BEGIN", "INSERT INTO projects (tenant_id, name) VALUES ('" + tenantA.ID + "', 'pool-abandoned-pipeline')", "SELECT pg_sleep(0.2)"} {
					msg := append([]byte{'Q', 0, 0, 0, byte(4 + len(q) + 1)}, q...)
					if _, err := conn.Write(append(msg, 0)); err != nil {
						t.Fatal(err)
					}
				}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := upstreamPIDs(t)
				a := p.pgconnect(t, tenantA)
				tc.send(a)
				time.Sleep(100 * time.Millisecond)
				a.Conn().(*net.TCPConn).SetLinger(0)
				a.Conn().Close()
				b := p.pgconnect(t, tenantB)
				if got := queryRows(t, b, "SELECT current_setting('app.tenant_id'), txid_current_if_assigned() IS NULL")[0]; got[0] != tenantB.ID || got[1] != "t" {
					t.Fatalf("next client: %v", got)
				}
				if n := superQuery(t, "SELECT count(*) FROM projects WHERE name LIKE 'pool-abandoned%'")[0][0]; n != "0" {
					t.Fatalf("%s rows of the abandoned client committed", n)
				}
				eventually(t, 5*time.Second, "abandoned connection closed", func() bool {
					return !strings.Contains(strings.Join(upstreamPIDs(t), ","), "idle in transaction")
				})
				_ = before
			})
		}
	})
}

// A client that goes away in the middle of a message that pgtenant was
// forwarding leaves the upstream connection expecting the rest: that
// connection is never handed to the next client, whose bytes PostgreSQL
// would otherwise read as the rest of the message.
func TestPoolHalfAMessageNeverReachesTheNextClient(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := p.pgconnect(t, tenantA)
	pidA := queryOne(t, a, "SELECT pg_backend_pid()")
	q := "SELECT 1"
	msg := append([]byte{'Q', 0, 0, 0, byte(4 + len(q) + 1)}, q...)
	msg = append(msg, 0)
	// A CopyData that announces 1000 bytes and brings 50.
	msg = append(msg, 'd', 0, 0, 0x03, 0xec)
	msg = append(msg, strings.Repeat("x", 50)...)
	if _, err := a.Conn().Write(msg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	a.Conn().(*net.TCPConn).SetLinger(0)
	a.Conn().Close()

	// Same tenant and settings: the connection would go to it as it is.
	next := p.pgconnect(t, tenantA)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	res, err := next.Exec(ctx, "SELECT pg_backend_pid()::text, current_setting('app.tenant_id')").ReadAll()
	if err != nil {
		t.Fatalf("the next client's query: %v (swallowed by the connection the last client left mid-message?)", err)
	}
	row := res[0].Rows[0]
	if string(row[0]) == pidA || string(row[1]) != tenantA.ID {
		t.Fatalf("next client ran on backend %s (the abandoned one was %s) as %q", row[0], pidA, row[1])
	}
}

func upstreamPIDs(t *testing.T) []string {
	var out []string
	for _, r := range superQuery(t, "SELECT pid::text || ' ' || coalesce(state, '') FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend'") {
		out = append(out, r[0])
	}
	return out
}

// Pooled connections are recycled after max_lifetime, and one that died
// while idle is noticed by the health check and replaced before a client
// gets it.
func TestPoolRecycling(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		transactionPool(1)(c)
		c.Pool.HealthCheckAfter = config.Duration{Duration: time.Millisecond}
	})
	a := p.pgconnect(t, tenantA)
	pid := queryOne(t, a, "SELECT pg_backend_pid()")
	superQuery(t, "SELECT pg_terminate_backend("+pid+")")
	time.Sleep(50 * time.Millisecond)
	next := queryOne(t, a, "SELECT pg_backend_pid()")
	if next == pid {
		t.Fatal("the terminated connection was handed out again")
	}

	p2 := startProxy(t, func(c *config.Config) {
		transactionPool(1)(c)
		c.Pool.MaxLifetime = config.Duration{Duration: 100 * time.Millisecond}
	})
	b := p2.pgconnect(t, tenantB)
	first := queryOne(t, b, "SELECT pg_backend_pid()")
	time.Sleep(200 * time.Millisecond)
	queryOne(t, b, "SELECT 1") // released past its lifetime: closed
	if again := queryOne(t, b, "SELECT pg_backend_pid()"); again == first {
		t.Fatal("connection used past max_lifetime")
	}
}

// Shutdown: an idle client is told 57P01 at once.
func TestPoolDrain(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		a := p.pgconnect(t, tenantA)
		queryOne(t, a, "SELECT 1")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		_, err := a.Exec(context.Background(), "SELECT 1").ReadAll()
		if err == nil {
			t.Fatal("query after shutdown succeeded")
		}
	})
}

// When the context cannot be asserted on a handed-out connection, the
// client's statement does not run and the connection is not used again.
// Transaction mode only: in session mode the startup setting that stops
// applying is not applied again (TestAssertionFailureRunsNothing is the
// session-mode counterpart).
func TestPoolAssertionFailureDiscardsConnection(t *testing.T) {
	superQuery(t, "DROP TEXT SEARCH CONFIGURATION IF EXISTS public.pool_tsc; CREATE TEXT SEARCH CONFIGURATION public.pool_tsc (COPY = pg_catalog.english)")
	t.Cleanup(func() { superQuery(t, "DROP TEXT SEARCH CONFIGURATION IF EXISTS public.pool_tsc") })
	p := startProxy(t, transactionPool(1))
	ctx := context.Background()
	// A startup setting that applies at login and stops applying later.
	a := p.pgconnect(t, tenantA, "options='-c default_text_search_config=public.pool_tsc'")
	b := p.pgconnect(t, tenantB)
	first := queryOne(t, a, "SELECT pg_backend_pid()")
	superQuery(t, "DROP TEXT SEARCH CONFIGURATION public.pool_tsc")
	superQuery(t, "DELETE FROM projects WHERE name = 'pool-assert-failed'")
	// B takes the connection in between, so that A's settings must be
	// applied again (a connection that kept A's committed settings would
	// need only the tenant, which still applies).
	queryOne(t, b, "SELECT 1")

	// Extended protocol: an error in place of the statement, which did not run.
	res := a.ExecParams(ctx, "INSERT INTO projects (tenant_id, name) VALUES ($1, 'pool-assert-failed')", [][]byte{[]byte(tenantA.ID)}, nil, nil, nil).Read()
	if res.Err == nil || !strings.Contains(res.Err.Error(), "could not assert the tenant context") {
		t.Fatalf("statement after a failed assertion: %v", res.Err)
	}
	if n := superQuery(t, "SELECT count(*) FROM projects WHERE name = 'pool-assert-failed'")[0][0]; n != "0" {
		t.Fatal("the statement ran without its context")
	}
	// The next client gets another connection.
	if got := queryOne(t, b, "SELECT pg_backend_pid()"); got == first {
		t.Fatal("the connection that refused the context was handed out again")
	}
	// Simple protocol: the session ends with the reason.
	_, err := a.Exec(ctx, "SELECT 1").ReadAll()
	if err == nil || !strings.Contains(err.Error(), "could not assert the tenant context") {
		t.Fatalf("simple query after a failed assertion: %v", err)
	}
}

// Connections unused for pool.idle_timeout are closed, down to min_idle.
func TestPoolIdleTimeout(t *testing.T) {
	for _, minIdle := range []int{0, 1} {
		p := startProxy(t, func(c *config.Config) {
			transactionPool(3)(c)
			c.Pool.IdleTimeout = config.Duration{Duration: 200 * time.Millisecond}
			c.Pool.MinIdle = minIdle
		})
		// Three clients in transactions at once make the pool open three.
		var conns []*pgconn.PgConn
		for i := 0; i < 3; i++ {
			c := p.pgconnect(t, tenantA)
			if _, err := c.Exec(context.Background(), "BEGIN").ReadAll(); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			if _, err := c.Exec(context.Background(), "COMMIT").ReadAll(); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, 5*time.Second, "idle connections closed", func() bool {
			open, _, _ := p.srv.PoolStats()
			return open == minIdle
		})
	}
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

const (
	stressTenants = 20
	stressClients = 200
	stressPool    = 10
	stressTxns    = 10
)

// stressTenant i owns i+1 rows of pool_stress, so a count names the tenant.
func stressTenant(i int) string { return fmt.Sprintf("stress-tenant-%02d", i) }

func setupStressTable(t *testing.T) {
	t.Helper()
	superQuery(t, `DROP TABLE IF EXISTS pool_stress;
CREATE TABLE pool_stress (tenant_id text NOT NULL, n int NOT NULL);
ALTER TABLE pool_stress ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pool_stress USING (tenant_id = current_setting('app.tenant_id'));
GRANT SELECT, INSERT ON pool_stress TO `+demo.RLSRole)
	for i := 0; i < stressTenants; i++ {
		superQuery(t, fmt.Sprintf("INSERT INTO pool_stress SELECT '%s', g FROM generate_series(1, %d) g", stressTenant(i), i+1))
	}
	t.Cleanup(func() { superQuery(t, "DROP TABLE IF EXISTS pool_stress") })
}

// 200 clients of 20 tenants share 10 upstream connections, with simple,
// extended, prepared and pipelined transactions, committed and aborted
// ones, session settings of their own, and pinned connections (a WITH HOLD
// cursor and a session advisory lock). Every transaction checks the context
// it runs in and the rows it sees, and now and then the client's own
// setting; none may see another tenant's or another client's, none may fail
// unexpectedly, and no pin, lock or cursor outlives it.
func TestPoolStress(t *testing.T) {
	setupStressTable(t)
	p := startProxy(t, func(c *config.Config) {
		transactionPool(stressPool)(c)
		c.Pool.WaitTimeout = config.Duration{Duration: 30 * time.Second}
		c.Users = nil
		for i := 0; i < stressTenants; i++ {
			c.Users = append(c.Users, config.User{Name: fmt.Sprintf("stress%02d", i), Password: "pw", Tenant: stressTenant(i)})
		}
	})
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeCacheDescribe}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var crossTenant, failures, transactions atomic.Int64
	var maxUpstream atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	sampler, err := pgconn.Connect(ctx, pgcluster.Shared().SuperURL(demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer sampler.Close(context.Background())
	start := time.Now()
	go func() {
		// How many upstream connections the pool holds while the clients run.
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			n := upstreamBackends(t, sampler)
			for {
				m := maxUpstream.Load()
				if n <= m || maxUpstream.CompareAndSwap(m, n) {
					break
				}
			}
		}
	}()

	if m := os.Getenv("STRESS_MODE"); m != "" {
		i, _ := strconv.Atoi(m)
		modes = modes[i : i+1]
	}
	connecting := make(chan struct{}, 16) // logins are CPU-bound (SCRAM); do not pile them up
	var wg sync.WaitGroup
	for c := 0; c < stressClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant := c % stressTenants
			report := func(format string, args ...any) {
				failures.Add(1)
				t.Errorf("client %d (%s): %s", c, stressTenant(tenant), fmt.Sprintf(format, args...))
			}
			cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://stress%02d:pw@%s/%s?sslmode=disable", tenant, p.addr, demo.Database))
			if err != nil {
				report("%v", err)
				return
			}
			cfg.DefaultQueryExecMode = modes[c%len(modes)]
			connecting <- struct{}{}
			conn, err := pgx.ConnectConfig(ctx, cfg)
			<-connecting
			if err != nil {
				report("connect: %v", err)
				return
			}
			defer conn.Close(context.Background())
			check := func(q pgx.Row, what string) {
				var setting string
				var count int
				if err := q.Scan(&setting, &count); err != nil {
					report("%s: %v", what, err)
					return
				}
				transactions.Add(1)
				if setting != stressTenant(tenant) || count != tenant+1 {
					crossTenant.Add(1)
					report("%s: ran as %q seeing %d rows", what, setting, count)
				}
			}
			const probe = "SELECT current_setting('app.tenant_id'), count(*)::int FROM pool_stress"
			mine := [1]string{"4MB"} // the work_mem this client set, or the default
			for i := 0; i < stressTxns; i++ {
				if i%3 == 2 {
					// Its own setting, never another client's.
					var got string
					if err := conn.QueryRow(ctx, "SELECT current_setting('work_mem')").Scan(&got); err != nil || got != mine[0] {
						crossTenant.Add(1)
						report("work_mem %q (%v), want %q", got, err, mine[0])
					}
				}
				switch (c + i) % 7 {
				case 0: // a statement of its own
					check(conn.QueryRow(ctx, probe), "autocommit")
				case 1: // a transaction block, inserting and rolling back
					tx, err := conn.Begin(ctx)
					if err != nil {
						report("begin: %v", err)
						return
					}
					if _, err := tx.Exec(ctx, "INSERT INTO pool_stress VALUES (current_setting('app.tenant_id'), -1)"); err != nil {
						report("insert: %v", err)
					}
					var setting string
					var count int
					if err := tx.QueryRow(ctx, probe).Scan(&setting, &count); err != nil || setting != stressTenant(tenant) || count != tenant+2 {
						crossTenant.Add(1)
						report("in block: %q %d %v", setting, count, err)
					}
					if err := tx.Rollback(ctx); err != nil {
						report("rollback: %v", err)
					}
					check(conn.QueryRow(ctx, probe), "after rollback")
				case 2: // an aborted block
					tx, err := conn.Begin(ctx)
					if err != nil {
						report("begin: %v", err)
						return
					}
					if _, err := tx.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
						report("division by zero: %v", err)
					}
					_ = tx.Rollback(ctx)
					check(conn.QueryRow(ctx, probe), "after abort")
				case 3: // a pipeline of three
					b := &pgx.Batch{}
					for k := 0; k < 3; k++ {
						b.Queue(probe)
					}
					br := conn.SendBatch(ctx, b)
					for k := 0; k < 3; k++ {
						check(br.QueryRow(), "batch")
					}
					if err := br.Close(); err != nil {
						report("batch close: %v", err)
					}
				case 5: // a session setting of its own, carried to its next transactions
					want := fmt.Sprintf("%dkB", 1000+tenant) // not a multiple of 1024: SHOW would say MB
					if _, err := conn.Exec(ctx, "SET work_mem = '"+want+"'"); err != nil {
						report("SET: %v", err)
						continue
					}
					mine[0] = want
					if i%2 == 1 {
						// asyncpg's reset string, as its Pool sends it: the
						// setting goes back to the default.
						if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", pgx.QueryExecModeSimpleProtocol); err != nil {
							report("reset string: %v", err)
						}
						mine[0] = "4MB"
					}
				case 6: // a pinned connection: a WITH HOLD cursor, an advisory lock, a temporary table
					name := fmt.Sprintf("held_%d", c)
					if _, err := conn.Exec(ctx, "DECLARE "+name+" CURSOR WITH HOLD FOR SELECT current_setting('app.tenant_id'), n FROM pool_stress"); err != nil {
						report("DECLARE: %v", err)
						continue
					}
					if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(c)); err != nil {
						report("advisory lock: %v", err)
					}
					rows, err := conn.Query(ctx, "FETCH ALL FROM "+name, pgx.QueryExecModeSimpleProtocol)
					n := 0
					for err == nil && rows.Next() {
						var setting string
						var v int
						if err := rows.Scan(&setting, &v); err != nil || setting != stressTenant(tenant) {
							crossTenant.Add(1)
							report("held cursor row: %q %v", setting, err)
						}
						n++
					}
					if err == nil {
						rows.Close()
						err = rows.Err()
					}
					if err != nil || n != tenant+1 {
						report("FETCH ALL: %d rows, %v", n, err)
					}
					for _, sql := range []string{"CLOSE " + name, "SELECT pg_advisory_unlock_all()"} {
						if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
							report("%s: %v", sql, err)
						}
					}
				case 4: // a statement with parameters, prepared by pgx's cache
					var setting string
					var count int
					if err := conn.QueryRow(ctx, "SELECT current_setting('app.tenant_id'), count(*)::int FROM pool_stress WHERE n > $1", 0).Scan(&setting, &count); err != nil {
						report("param: %v", err)
					} else if transactions.Add(1); setting != stressTenant(tenant) || count != tenant+1 {
						crossTenant.Add(1)
						report("param: %q %d", setting, count)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	t.Logf("%s: %d clients of %d tenants, %d checked transactions, at most %d upstream connections; %d cross-tenant observations, %d failures",
		time.Since(start).Round(time.Millisecond), stressClients, stressTenants, transactions.Load(), maxUpstream.Load(), crossTenant.Load(), failures.Load())
	if crossTenant.Load() != 0 || failures.Load() != 0 {
		t.Fatal("stress run failed")
	}
	if m := maxUpstream.Load(); m > stressPool {
		t.Fatalf("%d upstream connections, pool size %d", m, stressPool)
	}
	if n := superQuery(t, "SELECT count(*) FROM pool_stress WHERE n = -1")[0][0]; n != "0" {
		t.Fatalf("%s rolled-back rows committed", n)
	}
	// No state left behind on the pooled connections.
	leftovers := superQuery(t, `SELECT
  (SELECT count(*) FROM pg_stat_activity WHERE usename = '`+demo.RLSRole+`' AND state <> 'idle'),
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
  (SELECT count(*) FROM pg_class WHERE relpersistence = 't')`)[0]
	for i, what := range []string{"busy or idle-in-transaction backends", "advisory locks", "temporary tables"} {
		if leftovers[i] != "0" {
			t.Errorf("%s: %s", what, leftovers[i])
		}
	}
}

func upstreamBackends(t *testing.T, conn *pgconn.PgConn) int64 {
	n, err := strconv.ParseInt(queryOne(t, conn, "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend'"), 10, 64)
	if err != nil {
		t.Error(err)
	}
	return n
}

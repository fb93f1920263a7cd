package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
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

// stressTenant is TestPoolStress's tenant i, who owns i+1 rows of
// pool_stress, so a count names the tenant.
func stressTenant(i int) string { return fmt.Sprintf("stress-tenant-%02d", i) }

// sharedStressTenants are TestPoolStress's tenants: all in the shared
// tables, on the default upstream.
func sharedStressTenants() []placedTenant {
	out := make([]placedTenant, stressTenants)
	for i := range out {
		out[i] = sharedTenant(demo.Tenant{ID: stressTenant(i), Name: stressTenant(i), User: fmt.Sprintf("stress%02d", i), Password: "pw"})
	}
	return out
}

// setupStressTables gives tenant i i+1 rows of a pool_stress table: the
// shared tenants one table under RLS, the others one in their own place.
func setupStressTables(t *testing.T, tenants []placedTenant) {
	t.Helper()
	const table = "CREATE TABLE pool_stress (tenant_id text NOT NULL, n int NOT NULL);\n"
	rows := func(i int, pt placedTenant) string {
		return fmt.Sprintf("INSERT INTO pool_stress SELECT '%s', g FROM generate_series(1, %d) g;\n", pt.ID, i+1)
	}
	shared := "DROP TABLE IF EXISTS pool_stress;\n" + table + `ALTER TABLE pool_stress ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pool_stress USING (tenant_id = current_setting('app.tenant_id'));
GRANT SELECT, INSERT ON pool_stress TO ` + demo.RLSRole + ";\n"
	for i, pt := range tenants {
		if pt.layout == layoutShared {
			shared += rows(i, pt)
			continue
		}
		pt.exec(t, table+"GRANT SELECT, INSERT ON pool_stress TO "+pt.runsAs()+";\n"+rows(i, pt))
	}
	superQuery(t, shared)
	t.Cleanup(func() { superQuery(t, "DROP TABLE IF EXISTS pool_stress") })
}

// 200 clients of 20 tenants share 10 upstream connections, with simple,
// extended, prepared and pipelined transactions, committed and aborted
// ones, session settings of their own, and pinned connections (a WITH HOLD
// cursor and a session advisory lock). Every transaction checks the context
// it runs in and the rows it sees, and now and then the client's own
// setting; none may see another tenant's or another client's, none may fail
// unexpectedly, and no pin, lock or cursor outlives it.
//
// Under both drivers of transaction mode: the event loop (the default),
// where clients wait for a connection without a goroutine, and goroutines.
func TestPoolStress(t *testing.T) {
	tenants := sharedStressTenants()
	setupStressTables(t, tenants)
	for _, loop := range []bool{true, false} {
		name := map[bool]string{true: "event loop", false: "goroutines"}[loop]
		t.Run(name, func(t *testing.T) {
			p := startProxy(t, func(c *config.Config) {
				transactionPool(stressPool)(c)
				c.Pool.WaitTimeout = config.Duration{Duration: 30 * time.Second}
				c.EventLoop = &loop
				c.Users = nil
				for _, pt := range tenants {
					c.Users = append(c.Users, config.User{Name: pt.User, Password: pt.Password, Tenant: pt.ID})
				}
			})
			stressRun{proxy: p, tenants: tenants, clients: stressClients,
				limits: map[stressPlace]int{{pgcluster.Shared(), demo.Database}: stressPool}}.run(t)
			running, handOvers := p.srv.EventLoopHandOvers()
			t.Logf("event loop: %v, %d hand-overs", running, handOvers)
			if running != loop {
				t.Fatalf("event loop running: %v, want %v", running, loop)
			}
			// Waits for a connection (and for its reset for another
			// tenant) cost the loop no hand-over; pins and standalone
			// assertions do (about 0.4 per transaction here, 1.7 when every
			// wait for a connection handed the loop over).
			if handOvers >= stressClients*stressTxns {
				t.Errorf("%d hand-overs of the event loop for %d transactions", handOvers, stressClients*stressTxns)
			}
		})
	}
}

// stressPlace is a database on a cluster.
type stressPlace struct {
	cluster *pgcluster.Cluster
	db      string
}

// stressRun is a stress run: clients (client c of tenants[c % len]) run
// stressTxns transactions each through proxy.
type stressRun struct {
	proxy   *testProxy
	tenants []placedTenant // tenant i owns i+1 rows of its pool_stress (setupStressTables)
	clients int
	// limits are the most upstream connections each place may have at
	// once (transaction mode: its pool's size); nil in session mode.
	limits map[stressPlace]int
}

// run runs the clients and checks what they saw, the upstream connections
// and what they left behind.
func (r stressRun) run(t *testing.T) {
	t.Helper()
	p := r.proxy
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeCacheDescribe}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var crossTenant, failures, transactions atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan map[stressPlace]int)
	start := time.Now()
	go func() { sampled <- r.sampleUpstreams(t, stop) }()

	if m := os.Getenv("STRESS_MODE"); m != "" {
		i, _ := strconv.Atoi(m)
		modes = modes[i : i+1]
	}
	connecting := make(chan struct{}, 16) // logins are CPU-bound (SCRAM); do not pile them up
	var wg sync.WaitGroup
	for c := 0; c < r.clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant := c % len(r.tenants)
			pt := r.tenants[tenant]
			// Where the client's transactions must run: its tenant, its
			// database and its role.
			want := pt.ID + " " + pt.db + " " + pt.runsAs()
			report := func(format string, args ...any) {
				failures.Add(1)
				t.Errorf("client %d (%s, %s): %s", c, pt.Name, pt.layout, fmt.Sprintf(format, args...))
			}
			cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pt.User, pt.Password, p.addr, demo.Database))
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
				if setting != want || count != tenant+1 {
					crossTenant.Add(1)
					report("%s: ran as %q seeing %d rows", what, setting, count)
				}
			}
			const probe = "SELECT " + whereSQL + ", count(*)::int FROM pool_stress"
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
					if err := tx.QueryRow(ctx, probe).Scan(&setting, &count); err != nil || setting != want || count != tenant+2 {
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
						if err := rows.Scan(&setting, &v); err != nil || setting != pt.ID {
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
					if err := conn.QueryRow(ctx, "SELECT "+whereSQL+", count(*)::int FROM pool_stress WHERE n > $1", 0).Scan(&setting, &count); err != nil {
						report("param: %v", err)
					} else if transactions.Add(1); setting != want || count != tenant+1 {
						crossTenant.Add(1)
						report("param: %q %d", setting, count)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	most := <-sampled
	var mostText []string
	for place, n := range most {
		mostText = append(mostText, fmt.Sprintf("%s:%d", place.db, n))
	}
	slices.Sort(mostText)
	t.Logf("%s: %d clients of %d tenants, %d checked transactions, at most %v upstream connections; %d cross-tenant observations, %d failures",
		time.Since(start).Round(time.Millisecond), r.clients, len(r.tenants), transactions.Load(), mostText, crossTenant.Load(), failures.Load())
	if crossTenant.Load() != 0 || failures.Load() != 0 {
		t.Fatal("stress run failed")
	}
	for place, limit := range r.limits {
		if n := most[place]; n > limit {
			t.Errorf("%d upstream connections to %s, pool size %d", n, place.db, limit)
		}
	}
	r.checkLeftovers(t)
}

// whereSQL says where a transaction runs: tenant, database and role.
const whereSQL = "current_setting('app.tenant_id') || ' ' || current_database() || ' ' || current_user"

// sampleUpstreams returns the most upstream connections each place of
// r.limits had at once, sampled until stop.
func (r stressRun) sampleUpstreams(t *testing.T, stop <-chan struct{}) map[stressPlace]int {
	most := map[stressPlace]int{}
	conns := map[*pgcluster.Cluster]*pgconn.PgConn{}
	for place := range r.limits {
		if conns[place.cluster] != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := pgconn.Connect(ctx, place.cluster.SuperURL("postgres"))
		cancel()
		if err != nil {
			t.Error(err)
			<-stop
			return most
		}
		defer conn.Close(context.Background())
		conns[place.cluster] = conn
	}
	// Backends of earlier tests' proxies may still be going away: only
	// those started since the run began are this run's.
	since := map[*pgcluster.Cluster]string{}
	for cluster, conn := range conns {
		since[cluster] = queryOne(t, conn, "SELECT now()::text")
	}
	for {
		select {
		case <-stop:
			return most
		case <-time.After(20 * time.Millisecond):
		}
		for cluster, conn := range conns {
			for db, n := range upstreamBackends(t, conn, since[cluster]) {
				place := stressPlace{cluster, db}
				most[place] = max(most[place], n)
			}
		}
	}
}

// upstreamBackends counts the login role's backends per database, those
// started at since (a timestamp of the server's clock) or later.
func upstreamBackends(t *testing.T, conn *pgconn.PgConn, since string) map[string]int {
	out := map[string]int{}
	for _, r := range queryRows(t, conn, "SELECT datname, count(*) FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend' AND backend_start >= '"+since+"'::timestamptz GROUP BY datname") {
		n, err := strconv.Atoi(r[1])
		if err != nil {
			t.Error(err)
		}
		out[r[0]] = n
	}
	return out
}

// checkLeftovers checks that no rolled-back row was committed and that no
// state is left behind upstream: no busy backend, advisory lock or
// temporary table in any of the tenants' places.
func (r stressRun) checkLeftovers(t *testing.T) {
	t.Helper()
	seen := map[stressPlace]bool{}
	for _, pt := range r.tenants {
		if n := pt.query(t, "SELECT count(*) FROM "+pt.qualify("pool_stress")+" WHERE n = -1")[0][0]; n != "0" {
			t.Errorf("%s: %s rolled-back rows committed", pt.Name, n)
		}
		place := stressPlace{pt.cluster, pt.db}
		if seen[place] {
			continue
		}
		seen[place] = true
		leftovers := pt.query(t, `SELECT
  (SELECT count(*) FROM pg_stat_activity WHERE usename = '`+demo.RLSRole+`' AND datname = current_database() AND state <> 'idle'),
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),
  (SELECT count(*) FROM pg_class WHERE relpersistence = 't')`)[0]
		for i, what := range []string{"busy or idle-in-transaction backends", "advisory locks", "temporary tables"} {
			if leftovers[i] != "0" {
				t.Errorf("%s in %s: %s", what, pt.db, leftovers[i])
			}
		}
	}
}

// placedStressPool is the pool size of each database tenant's upstream.
const placedStressPool = 3

// placedStressTenants are twelve tenants over the layouts: four in the
// shared tables, four in schemas, two in databases on the shared cluster
// and two on the second cluster.
func placedStressTenants(t *testing.T) []placedTenant {
	layouts := []layout{layoutShared, layoutShared, layoutShared, layoutShared, layoutSchema, layoutSchema, layoutSchema, layoutSchema,
		layoutDatabase, layoutDatabase, layoutRemote, layoutRemote}
	out := make([]placedTenant, len(layouts))
	for i, l := range layouts {
		out[i] = newPlacedTenant(t, 11+i, fmt.Sprintf("stress%02d", i), l)
	}
	return out
}

// The stress run over every layout at once, in both modes: tenants in
// the shared tables, in schemas and in databases of their own on both
// clusters run the same mix of transactions concurrently (in transaction
// mode, the shared and schema tenants through the default upstream's pool
// of 10, each database tenant through its upstream's own pool of 3; in
// session mode, 60 clients, for the clusters' max_connections). Every
// transaction checks its tenant, database and role and the rows it sees:
// no cross-tenant observation, no unexpected failure, no pool above its
// size, nothing left behind in any place.
func TestPoolStressPlacements(t *testing.T) {
	tenants := placedStressTenants(t)
	placeTenants(t, tenants...)
	setupStressTables(t, tenants)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		run := stressRun{tenants: tenants, clients: 60}
		run.proxy = startProxy(t, func(c *config.Config) {
			c.Users = nil
			placedInConfig(tenants...)(c)
			if !m.tx {
				return
			}
			transactionPool(stressPool)(c)
			c.Pool.WaitTimeout = config.Duration{Duration: 30 * time.Second}
			run.clients = stressClients
			run.limits = map[stressPlace]int{{pgcluster.Shared(), demo.Database}: stressPool}
			for i := range c.Upstreams {
				c.Upstreams[i].Pool.Size = placedStressPool
			}
			for _, pt := range tenants {
				if pt.upstream() != config.DefaultUpstream {
					run.limits[stressPlace{pt.cluster, pt.db}] = placedStressPool
				}
			}
		})
		run.run(t)
	})
}

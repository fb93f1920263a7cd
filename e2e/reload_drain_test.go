package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/metrics"
	"github.com/pgtenant/pgtenant/proxy"
)

// Reloads that remove or change an upstream (reload retires its pool or
// its sessions' connections: proxy/retire.go).

// backends lists the pids of the upstream role's backends in database db.
func backends(t *testing.T, db string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, pgcluster.Shared().SuperURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return flat(queryRows(t, conn, "SELECT pid::text FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND datname = '"+db+"' ORDER BY pid"))
}

// backendsGone waits until none of pids is a backend in db any more.
func backendsGone(t *testing.T, db string, pids []string, what string) {
	t.Helper()
	eventually(t, 10*time.Second, what, func() bool {
		return !slices.ContainsFunc(backends(t, db), func(pid string) bool { return slices.Contains(pids, pid) })
	})
}

// reloadTo makes p's server use cfg, as SIGHUP does.
func reloadTo(t *testing.T, p *testProxy, cfg *config.Config) {
	t.Helper()
	if err := cli.Reload(p.srv, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
}

// shutdownTimeout sets the bound a reload's drain gives transactions in
// progress on a retired upstream.
func shutdownTimeout(d time.Duration) func(*config.Config) {
	return func(c *config.Config) { c.ShutdownTimeout = config.Duration{Duration: d} }
}

// wantRetired checks that err ends a session left on an upstream a reload
// removed or changed: FATAL 57P01 naming it.
func wantRetired(t *testing.T, who string, err error, upstream, what string) {
	t.Helper()
	if pgCode(err) != "57P01" || !strings.Contains(err.Error(), `upstream "`+upstream+`" was `+what+` by a configuration reload`) {
		t.Fatalf("%s: %v, want FATAL 57P01: upstream %q was %s", who, err, upstream, what)
	}
}

// A reload that removes the upstream tenant C's database is on (and puts
// C back in the shared tables): in transaction mode C's idle session
// moves at its next transaction, its transaction in progress finishes
// where it began and the session moves after it, while a session that
// listens (its state is on the old pool's hub) ends with FATAL 57P01; in
// session mode every session of C ends with 57P01, at once if idle, else
// when its transaction ends. A transaction still open after
// shutdown_timeout is ended. Then nothing of pgtenant's is left in C's
// old database (no pool connection, no hub), and B, on the default
// upstream, saw no error.
func TestReloadRemovesUpstream(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		placeC := databaseTenant(t)
		p := m.start(t, placeC, shutdownTimeout(2*time.Second))
		cIdle, cTx, cStuck := p.pgconnect(t, tenantC), p.pgconnect(t, tenantC), p.pgconnect(t, tenantC)
		for _, c := range []*pgconn.PgConn{cIdle, cTx, cStuck} {
			if got := queryOne(t, c, "SELECT current_database()"); got != placementDB {
				t.Fatalf("before the reload C is in %s", got)
			}
		}
		var cListen *pgconn.PgConn
		if m.tx {
			cListen = p.pgconnect(t, tenantC)
			queryRows(t, cListen, "LISTEN drain_news")
		}
		queryRows(t, cTx, "BEGIN")
		queryRows(t, cStuck, "BEGIN") // never ends: shutdown_timeout ends it
		if len(backends(t, placementDB)) == 0 {
			t.Fatal("no backend in C's database before the reload")
		}
		b := p.pgconnect(t, tenantB)
		stopB := keepQuerying(b, "SELECT count(*) FROM projects")

		reloadTo(t, p, proxyConfig(t, m.config(modePoolSize, placeC, shutdownTimeout(2*time.Second), func(c *config.Config) {
			c.Upstreams = nil
			delete(c.Tenants, tenantC.ID)
		})))
		if got := queryOne(t, cTx, "SELECT current_database()"); got != placementDB {
			t.Fatalf("C's transaction in progress at the reload runs in %s", got)
		}
		queryRows(t, cTx, "COMMIT")
		if m.tx {
			for who, c := range map[string]*pgconn.PgConn{"idle": cIdle, "in a transaction": cTx} {
				if got := queryOne(t, c, "SELECT current_database()"); got != demo.Database {
					t.Fatalf("C's %s session after the reload runs in %s, want %s", who, got, demo.Database)
				}
			}
			wantRetired(t, "C's listening session", execErr(cListen, "SELECT 1"), "c_db", "removed")
		} else {
			wantRetired(t, "C's idle session", execErr(cIdle, "SELECT 1"), "c_db", "removed")
			wantRetired(t, "C's session after its transaction", execErr(cTx, "SELECT 1"), "c_db", "removed")
		}
		if got := queryOne(t, p.pgconnect(t, tenantC), "SELECT current_database()"); got != demo.Database {
			t.Fatalf("C's new session runs in %s", got)
		}

		// Within shutdown_timeout (2s) of the reload the stuck transaction is
		// ended, and with it the last of pgtenant's backends there.
		eventually(t, 10*time.Second, "C's old database to have no backend of pgtenant's", func() bool { return len(backends(t, placementDB)) == 0 })
		wantRetired(t, "C's session stuck in a transaction", execErr(cStuck, "SELECT 1"), "c_db", "removed")
		if n, errs := stopB(); n == 0 || len(errs) > 0 {
			t.Fatalf("B, on the default upstream: %d queries, errors %v", n, errs)
		}
		eventually(t, 5*time.Second, "the retired pool to close", func() bool {
			pools := p.srv.UpstreamPools()
			return !slices.ContainsFunc(pools, func(ps proxy.PoolStat) bool { return ps.Retired || ps.Upstream == "c_db" })
		})
	})
}

// A reload that changes the default upstream's pool size. In transaction
// mode the old pool is replaced: its idle connections close at once, a
// transaction in progress finishes on its connection (the same backend),
// then every session goes on on the new pool without an error, the new
// size applies, a session pinned to an old connection ends with 57P01,
// and the old pool's backends are all gone. In session mode there is no
// pool: the sessions keep their backends and see nothing.
func TestReloadChangesPoolSize(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		a, aTx, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		var pinned *pgconn.PgConn
		if m.tx {
			pinned = p.pgconnect(t, tenantB)
			queryRows(t, pinned, "SELECT pg_advisory_lock(4243)")
		}
		bPID := queryOne(t, b, "SELECT pg_backend_pid()")
		queryRows(t, a, "SET work_mem = '7MB'") // the client's own setting goes along
		ctx := context.Background()
		if _, err := a.Prepare(ctx, "drain_stmt", "SELECT current_setting('work_mem') || ' ' || $1::text", nil); err != nil {
			t.Fatal(err) // and its prepared statement
		}
		txPID := queryOne(t, aTx, "BEGIN; SELECT pg_backend_pid()")
		old := backends(t, demo.Database)
		stopB := keepQuerying(b, "SELECT count(*) FROM projects")

		reloadTo(t, p, proxyConfig(t, m.config(modePoolSize+2)))
		if got := queryOne(t, aTx, "SELECT pg_backend_pid()"); got != txPID {
			t.Fatalf("the transaction in progress moved from backend %s to %s", txPID, got)
		}
		queryRows(t, aTx, "COMMIT")
		if got := queryOne(t, a, "SELECT current_setting('work_mem')"); got != "7MB" {
			t.Fatalf("A's own setting after the reload: %s", got)
		}
		res := a.ExecPrepared(ctx, "drain_stmt", [][]byte{[]byte("x")}, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "7MB x" {
			t.Fatalf("A's prepared statement after the reload: %v %q", res.Err, res.Rows)
		}
		if n, errs := stopB(); n == 0 || len(errs) > 0 {
			t.Fatalf("B: %d queries, errors %v", n, errs)
		}
		if !m.tx {
			if got := queryOne(t, b, "SELECT pg_backend_pid()"); got != bPID {
				t.Fatalf("B's session-mode backend changed from %s to %s", bPID, got)
			}
			for _, pid := range []string{bPID, txPID} {
				if !slices.Contains(backends(t, demo.Database), pid) {
					t.Fatalf("session-mode backend %s gone after a pool reload", pid)
				}
			}
			return
		}
		wantRetired(t, "a session pinned to an old connection", execErr(pinned, "SELECT 1"), "default", "changed")
		backendsGone(t, demo.Database, old, "the old pool's backends to be gone")
		// The new size: four transactions at once, each on a backend of its
		// own (the old pool had two).
		conns := []*pgconn.PgConn{a, aTx, b, p.pgconnect(t, tenantB)}
		pids := map[string]bool{}
		for _, c := range conns {
			pid := queryOne(t, c, "BEGIN; SELECT pg_backend_pid()")
			if slices.Contains(old, pid) {
				t.Fatalf("a transaction after the reload runs on the old pool's backend %s", pid)
			}
			pids[pid] = true
		}
		for _, c := range conns {
			queryRows(t, c, "COMMIT")
		}
		if len(pids) != modePoolSize+2 {
			t.Fatalf("%d transactions at once ran on %d backends, want %d", len(conns), len(pids), modePoolSize+2)
		}
		if pools := p.srv.UpstreamPools(); len(pools) != 1 || pools[0].Retired {
			t.Fatalf("pools after the drain: %+v", pools)
		}
	})
}

// drainDB is a second database on the shared cluster for the default
// upstream to move to.
const drainDB = "drain_new"

// A reload that points the default upstream at another database: its
// sessions move there at their next transaction (transaction mode) or end
// with 57P01 (session mode); the old database is left with no backend of
// the old pool or of the sessions; tenant C, on its own upstream that the
// reload left as it was, sees no error and keeps its pooled connection;
// new logins name the new database.
func TestReloadChangesDefaultUpstream(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		drop := "DROP DATABASE IF EXISTS " + drainDB + " WITH (FORCE)"
		superExec(t, "postgres", drop)
		superExec(t, "postgres", "CREATE DATABASE "+drainDB)
		t.Cleanup(func() { superExec(t, "postgres", drop) })
		placeC := databaseTenant(t)
		p := m.start(t, placeC)
		a, c := p.pgconnect(t, tenantA), p.pgconnect(t, tenantC)
		queryRows(t, a, "SELECT 1")
		cPID := queryOne(t, c, "SELECT pg_backend_pid()")
		old := backends(t, demo.Database)
		stopC := keepQuerying(c, "SELECT count(*) FROM placement_notes")

		reloadTo(t, p, proxyConfig(t, m.config(modePoolSize, placeC, func(cfg *config.Config) {
			cfg.Upstream = pgcluster.Shared().URL(demo.RLSRole, demo.RLSPassword, drainDB)
		})))
		if m.tx {
			if got := queryOne(t, a, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != drainDB+" "+tenantA.ID {
				t.Fatalf("A after the reload: %s", got)
			}
		} else {
			wantRetired(t, "A's session-mode session", execErr(a, "SELECT 1"), "default", "changed")
		}
		backendsGone(t, demo.Database, old, "the old default upstream's backends to be gone")
		if n, errs := stopC(); n == 0 || len(errs) > 0 {
			t.Fatalf("C, on its own upstream: %d queries, errors %v", n, errs)
		}
		if m.tx {
			if got := queryOne(t, c, "SELECT pg_backend_pid()"); got != cPID {
				t.Fatalf("C's pool was replaced: backend %s, was %s", got, cPID)
			}
		}
		if got := queryOne(t, p.pgconnect(t, tenantB, "dbname="+drainDB), "SELECT current_database()"); got != drainDB {
			t.Fatalf("B's new session runs in %s", got)
		}
		if pools := p.srv.UpstreamPools(); slices.ContainsFunc(pools, func(ps proxy.PoolStat) bool { return ps.Retired }) {
			t.Fatalf("a retired pool is still open: %+v", pools)
		}
	})
}

// /readyz checks every upstream: with one of three down (its URL names a
// closed port) the replica is still ready, the answer lists each, and
// ?upstream= asks about one; with the default one down it is not ready.
// The metrics count the sessions per upstream. Readiness does not depend
// on the pool mode: session mode only.
func TestReadyzPerUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	downURL := "postgres://" + demo.RLSRole + ":" + demo.RLSPassword + "@127.0.0.1:" + strconv.Itoa(closedPort) + "/" + demo.Database + "?sslmode=disable"
	placeC := databaseTenant(t)
	down := func(c *config.Config) {
		c.Upstreams = append(c.Upstreams, config.Upstream{Name: "down", URL: downURL})
	}
	p := startProxy(t, func(c *config.Config) { placeC(c); down(c) })
	m := metrics.New(metrics.Options{})
	m.WatchUpstreams(p.srv.UpstreamSessions)
	admin := httptest.NewServer(metrics.AdminHandler(m, metrics.Admin{Ready: p.srv.Readiness}))
	defer admin.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	refused := "unreachable: dial tcp 127.0.0.1:" + strconv.Itoa(closedPort) + ": connect: connection refused"
	for _, tt := range []struct {
		path  string
		code  int
		lines []string
	}{
		{"/readyz", 200, []string{"ok", "default: ok", "c_db: ok", "down: " + refused}},
		{"/readyz?upstream=down", 503, []string{"upstream down unreachable", "down: " + refused}},
		{"/readyz?upstream=c_db", 200, []string{"ok", "c_db: ok"}},
		{"/readyz?upstream=mars", 404, []string{`no upstream named "mars" in the configuration`}},
	} {
		code, body := get(tt.path)
		if code != tt.code || !slices.Equal(strings.Split(strings.TrimSpace(body), "\n"), tt.lines) {
			t.Errorf("%s: %d %q, want %d %q", tt.path, code, body, tt.code, tt.lines)
		}
	}

	p.pgconnect(t, tenantC)
	p.pgconnect(t, tenantA)
	p.pgconnect(t, tenantB)
	_, body := get("/metrics")
	for _, want := range []string{`pgtenant_upstream_sessions{upstream="default"} 2`, `pgtenant_upstream_sessions{upstream="c_db"} 1`, `pgtenant_upstream_sessions{upstream="down"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	reloadTo(t, p, proxyConfig(t, func(c *config.Config) {
		placeC(c)
		down(c)
		c.Upstream = downURL
	}))
	if code, body := get("/readyz"); code != 503 || !strings.HasPrefix(body, "upstream default unreachable\ndefault: "+refused+"\nc_db: ok\n") {
		t.Errorf("/readyz with the default upstream down: %d %q", code, body)
	}
}

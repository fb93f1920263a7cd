// Package e2e runs pgtenant end to end: a real PostgreSQL started by the
// shared harness, the proxy in-process, and real clients (psql, pgx, lib/pq).
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestMain(m *testing.M) {
	pgcluster.RunMain(m, pgcluster.Options{
		LogStatements: true,
		// The application name on every log line lets a test find its own statements.
		ExtraConf: []string{"log_line_prefix = '%a|'"},
	}, func(c *pgcluster.Cluster) error {
		if err := demo.Setup(context.Background(), c); err != nil {
			return err
		}
		// PostgreSQL refuses COPY FROM into a table with row-level security,
		// so COPY IN is exercised on a staging table whose tenant column
		// defaults to the session's tenant context.
		return c.Exec(context.Background(), demo.Database, copySinkSQL)
	})
}

const copySinkSQL = `
CREATE TABLE copy_sink (
    tenant_id uuid NOT NULL DEFAULT current_setting('app.tenant_id')::uuid,
    line text NOT NULL
);
GRANT SELECT, INSERT, DELETE ON copy_sink TO app_rls;
`

var (
	tenantA = demo.TenantA
	tenantB = demo.TenantB
)

// testProxy is a pgtenant instance in front of the shared cluster.
type testProxy struct {
	srv  *proxy.Server
	addr string
	host string
	port string
	logs *testutil.SyncBuffer // everything the proxy logged
}

// startProxy starts a proxy for the test with the demo tenants as users;
// mutate may change the config before it starts. It checks for leaked
// goroutines when the test ends.
func startProxy(t testing.TB, mutate func(*config.Config)) *testProxy {
	t.Helper()
	noLeaks(t)
	cfg := proxyConfig(t, mutate)
	logs := &testutil.SyncBuffer{}
	tw := &testWriter{t: t}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(tw, logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := cli.NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		// A wedged proxy fails the test rather than hanging the binary.
		closed := make(chan struct{})
		go func() {
			srv.Close()
			<-done
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Errorf("HANG: Server.Close did not return within 10s (a pooled connection's reader or a session is wedged)")
		}
		tw.done.Store(true) // wedged goroutines must not log to a finished test
	})
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	return &testProxy{srv: srv, addr: ln.Addr().String(), host: host, port: port, logs: logs}
}

// proxyConfig is the tests' configuration: the shared cluster as upstream,
// tenants A and B as users, changed by mutate, validated.
func proxyConfig(t testing.TB, mutate func(*config.Config)) *config.Config {
	t.Helper()
	c := pgcluster.Shared()
	cfg := &config.Config{
		Listen:         "127.0.0.1:0",
		Upstream:       c.URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		TenantSetting:  "app.tenant_id",
		ConnectTimeout: config.Duration{Duration: 5 * time.Second},
		LogLevel:       "debug",
		LogFormat:      "text",
		// Tests log in wrongly on purpose; TestLoginThrottle turns the back-off on.
		Auth: config.Auth{Throttle: config.Throttle{Initial: config.Duration{Duration: time.Nanosecond}, Max: config.Duration{Duration: time.Nanosecond}}},
	}
	for _, tn := range []demo.Tenant{tenantA, tenantB} {
		cfg.Users = append(cfg.Users, config.User{Name: tn.User, Password: tn.Password, Tenant: tn.ID})
	}
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// noLeaks fails the test if it leaves goroutines behind. Registered first, its
// cleanup runs last, after the proxies and connections are closed.
func noLeaks(t testing.TB) {
	if _, ok := leakChecked.Load(t.Name()); ok {
		return
	}
	leakChecked.Store(t.Name(), true)
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// connString is a libpq keyword/value string for tenant tn through the proxy.
func (p *testProxy) connString(tn demo.Tenant, extra ...string) string {
	s := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", p.host, p.port, tn.User, tn.Password, demo.Database)
	for _, e := range extra {
		s += " " + e
	}
	return s
}

// pgconnect opens a pgconn connection to the proxy as tenant tn.
func (p *testProxy) pgconnect(t *testing.T, tn demo.Tenant, extra ...string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, p.connString(tn, extra...))
	if err != nil {
		t.Fatalf("connect as %s: %v", tn.User, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// directConnect opens a connection straight to the upstream as the RLS role.
func directConnect(t *testing.T, tenant string) *pgconn.PgConn {
	t.Helper()
	c := pgcluster.Shared()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if tenant != "" {
		if _, err := conn.Exec(ctx, "SET app.tenant_id TO '"+tenant+"'").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// superExec runs SQL on the upstream as superuser and returns the rows as strings.
func superQuery(t *testing.T, sql string) [][]string {
	t.Helper()
	c := pgcluster.Shared()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.SuperURL(demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return queryRows(t, conn, sql)
}

// queryRows runs one simple-protocol query and returns its rows as text.
func queryRows(t *testing.T, conn *pgconn.PgConn, sql string) [][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var rows [][]string
	for _, r := range results {
		if r.Err != nil {
			t.Fatalf("%s: %v", sql, r.Err)
		}
		for _, row := range r.Rows {
			var vals []string
			for _, v := range row {
				vals = append(vals, string(v))
			}
			rows = append(rows, vals)
		}
	}
	return rows
}

// queryOne returns the single value of a single-row query.
func queryOne(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	rows := queryRows(t, conn, sql)
	if len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%s: want one value, got %v", sql, rows)
	}
	return rows[0][0]
}

// pgCode returns the SQLSTATE of err, or "" when it has none.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testWriter logs to the test until done.
type testWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

var _ io.Writer = &testWriter{}

func init() {
	// A leftover PGPASSWORD or PGSSLMODE in the environment must not change the tests.
	for _, k := range []string{"PGPASSWORD", "PGSSLMODE", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"} {
		os.Unsetenv(k)
	}
}

var leakChecked sync.Map

func errorsAs(err error, target any) bool { return errors.As(err, target) }

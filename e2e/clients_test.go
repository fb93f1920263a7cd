package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/lib/pq"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// psql runs the real psql client against the proxy and returns its output.
func psql(t *testing.T, p *testProxy, tn demo.Tenant, args ...string) (string, error) {
	t.Helper()
	dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", p.host, p.port, tn.User, demo.Database)
	return psqlAt(t, dsn, []string{"PGPASSWORD=" + tn.Password}, append([]string{"-A", "-t"}, args...)...)
}

// psqlAt runs psql on dsn with env added to its environment.
func psqlAt(t *testing.T, dsn string, env []string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql not found: install the PostgreSQL client (apt-get install -y postgresql-client)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-d", dsn}, args...)
	cmd := exec.CommandContext(ctx, path, full...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// psql's meta-commands (the catalog queries a psql user types first) print
// through pgtenant what they print straight from PostgreSQL, in both modes.
func TestPsqlMetaCommands(t *testing.T) {
	var args []string
	for _, c := range []string{`\l`, `\dn`, `\dt`, `\d projects`, `\d+ projects`, `\dv`, `\di`, `\ds`,
		`\df current_setting`, `\du`, `\dx`, `\dp projects`, `\dT`, `\sf pg_catalog.lower(text)`, `\encoding`,
		`\x on`, `SELECT name FROM projects ORDER BY id`, `\gset one_`, `\echo :one_name`} {
		args = append(args, "-c", c)
	}
	direct, err := psqlAt(t, pgcluster.Shared().URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		[]string{"PGOPTIONS=-c app.tenant_id=" + tenantA.ID}, args...)
	if err != nil || !strings.Contains(direct, "projects") {
		t.Fatalf("psql straight to PostgreSQL: %v\n%s", err, direct)
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", p.host, p.port, tenantA.User, demo.Database)
		got, err := psqlAt(t, dsn, []string{"PGPASSWORD=" + tenantA.Password}, args...)
		if err != nil || got != direct {
			t.Errorf("psql through pgtenant: %v\n%s\nstraight to PostgreSQL:\n%s", err, got, direct)
		}
	})
}

func TestPsql(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)

		out, err := psql(t, p, tenantA, "-c", "SELECT current_setting('app.tenant_id'); SELECT count(*) FROM projects")
		if err != nil {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		if got := strings.Fields(out); len(got) != 2 || got[0] != tenantA.ID || got[1] != "3" {
			t.Fatalf("psql multi-statement output %q", out)
		}

		// \copy in both directions goes through COPY FROM STDIN / TO STDOUT; the
		// rows copied in get the session's tenant from the column default.
		csv := filepath.Join(t.TempDir(), "in.csv")
		if err := os.WriteFile(csv, []byte("psql-copied-1\npsql-copied-2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err = psql(t, p, tenantA,
			"-c", `\copy copy_sink (line) FROM '`+csv+`' CSV`,
			"-c", `\copy (SELECT tenant_id, line FROM copy_sink WHERE line LIKE 'psql-copied-%' ORDER BY line) TO STDOUT`,
			"-c", "DELETE FROM copy_sink WHERE line LIKE 'psql-copied-%'")
		if err != nil {
			t.Fatalf("psql \\copy: %v\n%s", err, out)
		}
		want := tenantA.ID + "\tpsql-copied-1\n" + tenantA.ID + "\tpsql-copied-2"
		if !strings.Contains(out, "COPY 2") || !strings.Contains(out, want) || !strings.Contains(out, "DELETE 2") {
			t.Fatalf("psql \\copy output %q", out)
		}
		out, err = psql(t, p, tenantA, "-c", `\copy (SELECT name FROM projects ORDER BY name) TO STDOUT`)
		if err != nil || strings.Count(out, "\n") != 3 {
			t.Fatalf("\\copy out of projects: %v %q", err, out)
		}

		// psql sees tenant B's rows as B.
		out, err = psql(t, p, tenantB, "-c", "SELECT string_agg(DISTINCT tenant_id::text, ',') FROM projects")
		if err != nil || strings.TrimSpace(out) != tenantB.ID {
			t.Fatalf("psql as B: %v %q", err, out)
		}
	})
}

func pgxConnect(t *testing.T, p *testProxy, tn demo.Tenant, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.connString(tn))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgx connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestPgx(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		modes := []pgx.QueryExecMode{
			pgx.QueryExecModeCacheStatement, // named prepared statements
			pgx.QueryExecModeCacheDescribe,
			pgx.QueryExecModeDescribeExec, // unnamed statement kept across a Sync
			pgx.QueryExecModeExec,
			pgx.QueryExecModeSimpleProtocol,
		}
		for _, mode := range modes {
			t.Run(mode.String(), func(t *testing.T) {
				conn := pgxConnect(t, p, tenantA, mode)
				for i := 0; i < 3; i++ {
					var tenant string
					var n int
					err := conn.QueryRow(ctx, "SELECT current_setting('app.tenant_id'), count(*) FROM projects WHERE tenant_id = $1", tenantA.ID).Scan(&tenant, &n)
					if err != nil {
						t.Fatal(err)
					}
					if tenant != tenantA.ID || n != 3 {
						t.Fatalf("got tenant %s, %d rows", tenant, n)
					}
				}
				// Asking for the other tenant's rows by id finds nothing.
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM projects WHERE tenant_id = $1", tenantB.ID).Scan(&n); err != nil || n != 0 {
					t.Fatalf("other tenant's rows: %d, %v", n, err)
				}

				// A transaction through pgx.
				tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
				if err != nil {
					t.Fatal(err)
				}
				var tenant string
				if err := tx.QueryRow(ctx, "SELECT current_setting('app.tenant_id')").Scan(&tenant); err != nil || tenant != tenantA.ID {
					t.Fatalf("in tx: %q %v", tenant, err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}

				// A batch: several statements, one Sync.
				batch := &pgx.Batch{}
				batch.Queue("SELECT current_setting('app.tenant_id')")
				batch.Queue("SELECT count(*) FROM projects")
				batch.Queue("SELECT current_setting('app.tenant_id')")
				br := conn.SendBatch(ctx, batch)
				var s1, s2 string
				var count int
				if err := br.QueryRow().Scan(&s1); err != nil {
					t.Fatal(err)
				}
				if err := br.QueryRow().Scan(&count); err != nil {
					t.Fatal(err)
				}
				if err := br.QueryRow().Scan(&s2); err != nil {
					t.Fatal(err)
				}
				if err := br.Close(); err != nil {
					t.Fatal(err)
				}
				if s1 != tenantA.ID || s2 != tenantA.ID || count != 3 {
					t.Fatalf("batch: %s %s %d", s1, s2, count)
				}
			})
		}

		t.Run("CopyFrom", func(t *testing.T) {
			conn := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
			rows := [][]any{{"pgx-copy-1"}, {"pgx-copy-2"}}
			n, err := conn.CopyFrom(ctx, pgx.Identifier{"copy_sink"}, []string{"line"}, pgx.CopyFromRows(rows))
			if err != nil || n != 2 {
				t.Fatalf("CopyFrom: %d %v", n, err)
			}
			var tenants int
			var tenant string
			if err := conn.QueryRow(ctx, "SELECT count(DISTINCT tenant_id), min(tenant_id::text) FROM copy_sink WHERE line LIKE 'pgx-copy-%'").Scan(&tenants, &tenant); err != nil {
				t.Fatal(err)
			}
			if tenants != 1 || tenant != tenantA.ID {
				t.Fatalf("copied rows carry %d tenants (%s)", tenants, tenant)
			}
			// PostgreSQL refuses COPY FROM into an RLS table; the refusal comes through intact.
			_, err = conn.CopyFrom(ctx, pgx.Identifier{"projects"}, []string{"tenant_id", "name"}, pgx.CopyFromRows([][]any{{tenantB.ID, "pgx-smuggled"}}))
			if pgCode(err) != "0A000" {
				t.Fatalf("CopyFrom into RLS table: %v", err)
			}
			tag, err := conn.Exec(ctx, "DELETE FROM copy_sink WHERE line LIKE 'pgx-copy-%'")
			if err != nil || tag.RowsAffected() != 2 {
				t.Fatalf("cleanup: %v %v", tag, err)
			}
		})

		// LISTEN is refused in transaction mode (TestPoolRefusesSessionState).
		if !m.tx {
			t.Run("ListenNotify", func(t *testing.T) {
				listener := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
				notifier := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
				if _, err := listener.Exec(ctx, "LISTEN e2e_events"); err != nil {
					t.Fatal(err)
				}
				if _, err := notifier.Exec(ctx, "SELECT pg_notify('e2e_events', 'hello')"); err != nil {
					t.Fatal(err)
				}
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				defer wcancel()
				n, err := listener.WaitForNotification(wctx)
				if err != nil {
					t.Fatal(err)
				}
				if n.Channel != "e2e_events" || n.Payload != "hello" {
					t.Fatalf("notification %+v", n)
				}
				// The listener still works after an asynchronous message.
				var s string
				if err := listener.QueryRow(ctx, "SELECT current_setting('app.tenant_id')").Scan(&s); err != nil || s != tenantA.ID {
					t.Fatalf("after notification: %q %v", s, err)
				}
			})
		}

		t.Run("CancelLongQuery", func(t *testing.T) {
			conn := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
			qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer qcancel()
			start := time.Now()
			_, err := conn.Exec(qctx, "SELECT pg_sleep(60) /* e2e-cancel */")
			if err == nil {
				t.Fatal("long query was not interrupted")
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("cancel took %s", time.Since(start))
			}
			// The query must actually stop on the upstream, not just on the client.
			eventually(t, 5*time.Second, "the upstream query to stop", func() bool {
				rows := superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%e2e-cancel%' AND pid <> pg_backend_pid()")
				return rows[0][0] == "0"
			})
		})
	})
}

// The query is cancelled through the proxy's own BackendKeyData, and the
// connection stays usable: a CancelRequest reaches the right backend.
func TestCancelKeepsSession(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		conn := p.pgconnect(t, tenantB)
		ctx := context.Background()
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(60) /* e2e-cancel-2 */").ReadAll()
			done <- err
		}()
		eventually(t, 5*time.Second, "the query to start", func() bool {
			rows := superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%e2e-cancel-2%' AND pid <> pg_backend_pid()")
			return rows[0][0] == "1"
		})
		if err := conn.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if pgCode(err) != "57014" {
				t.Fatalf("cancelled query: %v, want 57014", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("cancel did not stop the query")
		}
		if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("after cancel: %q", got)
		}
	})
}

func TestLibPQ(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		db, err := sql.Open("postgres", p.connString(tenantB))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		rows, err := db.QueryContext(ctx, "SELECT tenant_id, name FROM projects ORDER BY name")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for rows.Next() {
			var tenant, name string
			if err := rows.Scan(&tenant, &name); err != nil {
				t.Fatal(err)
			}
			if tenant != tenantB.ID {
				t.Fatalf("lib/pq saw tenant %s", tenant)
			}
			names = append(names, name)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if len(names) != 3 {
			t.Fatalf("lib/pq saw %v", names)
		}

		// Prepared statement (named, extended protocol) and a transaction.
		stmt, err := db.PrepareContext(ctx, "SELECT count(*) FROM projects WHERE tenant_id = $1")
		if err != nil {
			t.Fatal(err)
		}
		defer stmt.Close()
		for _, tc := range []struct {
			id   string
			want int
		}{{tenantB.ID, 3}, {tenantA.ID, 0}} {
			var n int
			if err := stmt.QueryRowContext(ctx, tc.id).Scan(&n); err != nil || n != tc.want {
				t.Fatalf("prepared count for %s: %d %v", tc.id, n, err)
			}
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO projects (tenant_id, name) VALUES ($1, 'libpq-tx')", tenantB.ID); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := tx.QueryRowContext(ctx, "SELECT current_setting('app.tenant_id')").Scan(&s); err != nil || s != tenantB.ID {
			t.Fatalf("in tx: %q %v", s, err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM projects WHERE name = 'libpq-tx'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("rolled back row visible: %d %v", n, err)
		}
		_, err = db.ExecContext(ctx, "INSERT INTO projects (tenant_id, name) VALUES ($1, 'libpq-smuggled')", tenantA.ID)
		var pqErr interface{ SQLState() string }
		if !errors.As(err, &pqErr) || pqErr.SQLState() != "42501" {
			t.Fatalf("insert for other tenant: %v", err)
		}
	})
}

// A large result streams through the proxy without being held in memory: the
// client is psql in another process, so what this process allocates while the
// result flows is the proxy's doing.
func TestLargeResultStreams(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		// Warm up: connection set-up allocations are not the point.
		if out, err := psql(t, p, tenantA, "-c", "SELECT 1"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		const rows, width = 64000, 1000 // 64 MB of COPY data
		out, err := psql(t, p, tenantA, "-c",
			fmt.Sprintf(`\copy (SELECT repeat('x', %d) FROM generate_series(1, %d)) TO '/dev/null'`, width, rows),
			"-c", fmt.Sprintf("SELECT sum(length(repeat('y', %d))) FROM generate_series(1, %d)", width, rows))
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !strings.Contains(out, fmt.Sprintf("COPY %d", rows)) || !strings.Contains(out, fmt.Sprint(rows*width)) {
			t.Fatalf("psql output %q", out)
		}
		allocated := after.TotalAlloc - before.TotalAlloc
		t.Logf("allocated %d KB while relaying %d MB", allocated/1024, rows*width>>20)
		if allocated > 4<<20 {
			t.Fatalf("the proxy allocated %d MB relaying a %d MB result: it is buffering", allocated>>20, rows*width>>20)
		}
	})
}

// Terminate from the client ends its session and releases its upstream: in
// session mode the backend ends too, in transaction mode the connection is
// idle in the pool again.
func TestTerminateEndsUpstream(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		conn := p.pgconnect(t, tenantA, "application_name=e2e_terminate")
		queryRows(t, conn, "SELECT 1")
		if err := conn.Close(context.Background()); err != nil { // sends Terminate
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the session to end", func() bool { return len(p.srv.Sessions()) == 0 })
		if m.tx {
			open, idle, _ := p.srv.PoolStats()
			if open != idle {
				t.Fatalf("after the only client's Terminate: %d pooled connections open, %d idle", open, idle)
			}
			return
		}
		eventually(t, 5*time.Second, "the upstream session to end", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'e2e_terminate'")[0][0] == "0"
		})
	})
}

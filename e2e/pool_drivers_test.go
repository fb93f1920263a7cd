package e2e

// Real drivers, in both pool modes. Each test has two tenants (in
// transaction mode sharing a pool of one upstream connection, so that their
// transactions take turns on it) and checks that every statement ran in its
// own tenant's context and saw its own tenant's rows.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// pdProbe names the tenant context and the projects a statement sees. Its
// parameter is a minimum name length: 0 lets every project through.
const pdProbe = "SELECT current_setting('app.tenant_id'), coalesce(string_agg(name, ',' ORDER BY id), '') FROM projects WHERE length(name) > $1"

// pdCountFor counts the projects of the tenant id given.
const pdCountFor = "SELECT current_setting('app.tenant_id'), count(*) FROM projects WHERE tenant_id = $1::uuid"

// pdNames is tn's projects, comma-separated, in id order.
func pdNames(tn demo.Tenant) string { return strings.Join(demo.Projects[tn.ID], ",") }

// pdWant checks what a probe returned for tn.
func pdWant(t *testing.T, what string, tn demo.Tenant, gotTenant, gotNames string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s as %s: %v", what, tn.Name, err)
		return
	}
	if gotTenant != tn.ID || gotNames != pdNames(tn) {
		t.Errorf("%s as %s: ran as %s seeing %q; want %s seeing %q", what, tn.Name, gotTenant, gotNames, tn.ID, pdNames(tn))
	}
}

// pdProbeRow runs pdProbe (or another statement of the same shape) with pgx.
func pdProbeRow(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (tenant, names string, err error) {
	err = q.QueryRow(ctx, sql, args...).Scan(&tenant, &names)
	return
}

// pdCount runs pdCountFor with pgx.
func pdCount(ctx context.Context, conn *pgx.Conn, id string) (tenant string, n int64, err error) {
	err = conn.QueryRow(ctx, pdCountFor, id).Scan(&tenant, &n)
	return
}

func pdWantCount(t *testing.T, what string, tn demo.Tenant, tenant string, n, want int64, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s as %s: %v", what, tn.Name, err)
	} else if tenant != tn.ID || n != want {
		t.Errorf("%s as %s: ran as %s counting %d; want %s counting %d", what, tn.Name, tenant, n, tn.ID, want)
	}
}

// pdConnectPgx connects with pgx as tn, with cfg adjusted by adjust.
func pdConnectPgx(t *testing.T, p *testProxy, tn demo.Tenant, adjust func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.connString(tn))
	if err != nil {
		t.Fatal(err)
	}
	adjust(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgx connect as %s: %v", tn.Name, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// pdBlocked starts f while another client's transaction is open, and
// checks that f is still waiting a moment later in transaction mode (the
// transaction holds the pool's only connection), and that it does not wait
// in session mode (f has a connection of its own). The returned function
// waits for f's error.
func pdBlocked(t *testing.T, m poolMode, what string, f func() error) func() error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	if !m.tx {
		select {
		case err := <-done:
			return func() error { return err }
		case <-time.After(10 * time.Second):
			t.Errorf("%s waited for another session's transaction", what)
			return func() error { return fmt.Errorf("%s: waited for another session's transaction", what) }
		}
	}
	select {
	case err := <-done:
		t.Errorf("%s finished (%v) while another client's transaction held the pool's only connection", what, err)
		return func() error { return err }
	case <-time.After(300 * time.Millisecond):
	}
	return func() error {
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%s: still waiting 10s after the transaction ended", what)
		}
	}
}

func TestPoolDriverPgx(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
			t.Run(mode.String(), func(t *testing.T) {
				p := startProxy(t, m.config(1))
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				a := pgxConnect(t, p, tenantA, mode)
				b := pgxConnect(t, p, tenantB, mode)

				// A prepares and executes; B prepares the same text, and another.
				tn, names, err := pdProbeRow(ctx, a, pdProbe, 0)
				pdWant(t, "A's first probe", tenantA, tn, names, err)
				tn, names, err = pdProbeRow(ctx, b, pdProbe, 0)
				pdWant(t, "B's probe, same text", tenantB, tn, names, err)
				id, n, err := pdCount(ctx, b, tenantB.ID)
				pdWantCount(t, "B counting its own projects", tenantB, id, n, 3, err)
				id, n, err = pdCount(ctx, b, tenantA.ID)
				pdWantCount(t, "B counting A's projects", tenantB, id, n, 0, err)
				// A executes again after B used the connection.
				tn, names, err = pdProbeRow(ctx, a, pdProbe, 0)
				pdWant(t, "A's probe after B", tenantA, tn, names, err)
				id, n, err = pdCount(ctx, a, tenantA.ID)
				pdWantCount(t, "A counting its own projects", tenantA, id, n, 3, err)
				id, n, err = pdCount(ctx, a, tenantB.ID)
				pdWantCount(t, "A counting B's projects", tenantA, id, n, 0, err)

				// Statements prepared by name: one name, a different text per client.
				if _, err := a.Prepare(ctx, "mine", pdProbe); err != nil {
					t.Fatalf("A prepares mine: %v", err)
				}
				if _, err := b.Prepare(ctx, "mine", pdCountFor); err != nil {
					t.Fatalf("B prepares mine: %v", err)
				}
				for i := 0; i < 2; i++ {
					tn, names, err = pdProbeRow(ctx, a, "mine", 0)
					pdWant(t, fmt.Sprintf("A's mine, round %d", i), tenantA, tn, names, err)
					var bTenant string
					var bCount int64
					err = b.QueryRow(ctx, "mine", tenantB.ID).Scan(&bTenant, &bCount)
					pdWantCount(t, fmt.Sprintf("B's mine, round %d", i), tenantB, bTenant, bCount, 3, err)
				}
				if err := a.Deallocate(ctx, "mine"); err != nil {
					t.Fatalf("A deallocates mine: %v", err)
				}
				err = b.QueryRow(ctx, "mine", tenantA.ID).Scan(new(string), new(int64))
				if err != nil {
					t.Errorf("B's mine after A deallocated its own: %v", err)
				}

				// A transaction of A's holds the connection; B waits for it.
				tx, err := a.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				tn, names, err = pdProbeRow(ctx, tx, pdProbe, 0)
				pdWant(t, "A's probe in a transaction", tenantA, tn, names, err)
				var bTenant, bNames string
				wait := pdBlocked(t, m, "B's probe", func() error {
					var err error
					bTenant, bNames, err = pdProbeRow(ctx, b, pdProbe, 0)
					return err
				})
				tn, names, err = pdProbeRow(ctx, tx, pdProbe, 0)
				pdWant(t, "A's second probe in the transaction", tenantA, tn, names, err)
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				pdWant(t, "B's probe after A's transaction", tenantB, bTenant, bNames, wait())

				// Both at once, in turns decided by the pool.
				var wg sync.WaitGroup
				for _, c := range []struct {
					conn *pgx.Conn
					tn   demo.Tenant
				}{{a, tenantA}, {b, tenantB}} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < 25; i++ {
							tn, names, err := pdProbeRow(ctx, c.conn, pdProbe, 0)
							pdWant(t, fmt.Sprintf("concurrent probe %d", i), c.tn, tn, names, err)
							id, n, err := pdCount(ctx, c.conn, c.tn.ID)
							pdWantCount(t, fmt.Sprintf("concurrent count %d", i), c.tn, id, n, 3, err)
						}
					}()
				}
				wg.Wait()
			})
		}

		// pgx's statement cache of two, cycled through five statements: pgx
		// closes the statements it evicts (Close messages), prepares them again
		// under the same names when they come back, and B uses the connection
		// in between every time.
		t.Run("statement cache eviction", func(t *testing.T) {
			p := startProxy(t, m.config(1))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var traced testutil.SyncBuffer
			a := pdConnectPgx(t, p, tenantA, func(c *pgx.ConnConfig) {
				c.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
				c.StatementCacheCapacity = 2
			})
			a.PgConn().Frontend().Trace(&traced, pgproto3.TracerOptions{SuppressTimestamps: true})
			b := pgxConnect(t, p, tenantB, pgx.QueryExecModeCacheStatement)
			stmt := func(k int) string {
				return fmt.Sprintf("SELECT current_setting('app.tenant_id'), coalesce(string_agg(name, ',' ORDER BY id), '') || '#%d' FROM projects WHERE length(name) > $1", k)
			}
			for round := 0; round < 3; round++ {
				for k := 0; k < 5; k++ {
					tn, names, err := pdProbeRow(ctx, a, stmt(k), 0)
					if err == nil && strings.HasSuffix(names, fmt.Sprintf("#%d", k)) {
						names = strings.TrimSuffix(names, fmt.Sprintf("#%d", k))
					} else if err == nil {
						t.Errorf("round %d statement %d: result %q is another statement's", round, k, names)
					}
					pdWant(t, fmt.Sprintf("A's statement %d, round %d", k, round), tenantA, tn, names, err)
					tn, names, err = pdProbeRow(ctx, b, pdProbe, 0)
					pdWant(t, fmt.Sprintf("B between, round %d", round), tenantB, tn, names, err)
				}
			}
			// The trace shows pgx did close and re-prepare statements.
			var closes, parses int
			for _, line := range strings.Split(traced.String(), "\n") {
				switch {
				case strings.HasPrefix(line, "F\tClose\t"):
					closes++
				case strings.HasPrefix(line, "F\tParse\t"):
					parses++
				}
			}
			// 15 executions cycling 5 statements through room for 2: every one
			// misses the cache, so 15 Parses; from the third on each evicts one,
			// and pgx closes an evicted statement before its next query: 12
			// Closes (the last eviction's is never sent).
			t.Logf("pgx sent %d Parse and %d Close messages", parses, closes)
			if parses != 15 || closes != 12 {
				t.Errorf("pgx sent %d Parse and %d Close messages; want 15 and 12\n%s", parses, closes, traced.String())
			}
		})
	})
}

func TestPoolDriverLibPQ(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		open := func(tn demo.Tenant) *sql.DB {
			db, err := sql.Open("postgres", p.connString(tn))
			if err != nil {
				t.Fatal(err)
			}
			// One client connection each, so statements stay on it.
			db.SetMaxOpenConns(1)
			db.SetMaxIdleConns(1)
			t.Cleanup(func() { db.Close() })
			return db
		}
		dbA, dbB := open(tenantA), open(tenantB)
		probe := func(q interface {
			QueryRowContext(context.Context, ...any) *sql.Row
		}) (string, string, error) {
			var tenant, names string
			err := q.QueryRowContext(ctx, 0).Scan(&tenant, &names)
			return tenant, names, err
		}

		// lib/pq names its statements 1, 2, ... per connection: A's "1" and B's
		// "1" are the same text, B's "2" another.
		stmtA, err := dbA.PrepareContext(ctx, pdProbe)
		if err != nil {
			t.Fatal(err)
		}
		defer stmtA.Close()
		stmtB, err := dbB.PrepareContext(ctx, pdProbe)
		if err != nil {
			t.Fatal(err)
		}
		defer stmtB.Close()
		countB, err := dbB.PrepareContext(ctx, pdCountFor)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			tn, names, err := probe(stmtA)
			pdWant(t, fmt.Sprintf("A's prepared statement, run %d", i), tenantA, tn, names, err)
			tn, names, err = probe(stmtB)
			pdWant(t, fmt.Sprintf("B's prepared statement, run %d", i), tenantB, tn, names, err)
			var tenant string
			var n int64
			err = countB.QueryRowContext(ctx, tenantA.ID).Scan(&tenant, &n)
			pdWantCount(t, "B counting A's projects", tenantB, tenant, n, 0, err)
		}
		// stmt.Query (rows rather than QueryRow), after B used the connection.
		rows, err := stmtA.QueryContext(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		var first []string
		for rows.Next() {
			var tenant, names string
			if err := rows.Scan(&tenant, &names); err != nil {
				t.Fatal(err)
			}
			first = append(first, tenant, names)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(first, []string{tenantA.ID, pdNames(tenantA)}) {
			t.Errorf("A's stmt.Query: %q", first)
		}
		if err := countB.Close(); err != nil {
			t.Fatalf("closing B's statement: %v", err)
		}
		// Queries with arguments use the unnamed statement, in two round trips
		// (Parse, Describe, Sync; Bind, Execute, Sync).
		for _, c := range []struct {
			db *sql.DB
			tn demo.Tenant
		}{{dbA, tenantA}, {dbB, tenantB}, {dbA, tenantA}} {
			var tenant, names string
			err := c.db.QueryRowContext(ctx, pdProbe, 0).Scan(&tenant, &names)
			pdWant(t, "a query with an argument", c.tn, tenant, names, err)
		}

		// A transaction, with B waiting for the connection until it commits.
		tx, err := dbA.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		const line = "pool-libpq-tx"
		if _, err := tx.ExecContext(ctx, "INSERT INTO copy_sink (line) VALUES ($1)", line); err != nil {
			t.Fatal(err)
		}
		var inTx string
		var inTxNames string
		if err := tx.StmtContext(ctx, stmtA).QueryRowContext(ctx, 0).Scan(&inTx, &inTxNames); err != nil {
			t.Fatal(err)
		}
		pdWant(t, "A's statement inside the transaction", tenantA, inTx, inTxNames, nil)
		var bTenant, bNames string
		wait := pdBlocked(t, m, "B's statement", func() error {
			return stmtB.QueryRowContext(ctx, 0).Scan(&bTenant, &bNames)
		})
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		pdWant(t, "B's statement after A committed", tenantB, bTenant, bNames, wait())
		var stored string
		if err := dbB.QueryRowContext(ctx, "SELECT string_agg(tenant_id::text, ',') FROM copy_sink WHERE line = $1", line).Scan(&stored); err != nil || stored != tenantA.ID {
			t.Errorf("the committed row carries tenant %q (%v), want %s", stored, err, tenantA.ID)
		}
		if _, err := dbA.ExecContext(ctx, "DELETE FROM copy_sink WHERE line = $1", line); err != nil {
			t.Fatal(err)
		}

		// Both at once: A's queries with arguments (the unnamed statement,
		// prepared in one round trip and bound in the next) and B's named
		// statement, taking turns on the connection as the pool decides.
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				var tenant, names string
				err := dbA.QueryRowContext(ctx, pdProbe, 0).Scan(&tenant, &names)
				pdWant(t, fmt.Sprintf("A's unnamed-statement query %d, concurrent with B", i), tenantA, tenant, names, err)
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				tn, names, err := probe(stmtB)
				pdWant(t, fmt.Sprintf("B's prepared statement %d, concurrent with A", i), tenantB, tn, names, err)
			}
		}()
		wg.Wait()
	})
}

// psqlTime parses psql's unaligned output of a timestamptz.
func psqlTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse("2006-01-02 15:04:05.999999-07", strings.TrimSpace(s))
	if err != nil {
		t.Fatalf("timestamp %q: %v", s, err)
	}
	return v
}

func TestPoolDriverPsql(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))

		// Several statements in one -c, and one -c after another.
		for _, tn := range []demo.Tenant{tenantA, tenantB} {
			out, err := psql(t, p, tn,
				"-c", "SELECT current_setting('app.tenant_id'); SELECT string_agg(name, ',' ORDER BY id) FROM projects",
				"-c", "SELECT count(*) FROM projects WHERE tenant_id <> current_setting('app.tenant_id')::uuid")
			want := tn.ID + "\n" + pdNames(tn) + "\n0\n"
			if err != nil || out != want {
				t.Errorf("psql as %s: %v\n%q, want %q", tn.Name, err, out, want)
			}
		}

		// Both tenants at once, each with a multi-statement transaction and
		// \copy in both directions; in transaction mode the pool of one
		// serialises the transactions.
		dir := t.TempDir()
		type result struct {
			out string
			err error
		}
		results := make([]result, 2)
		var wg sync.WaitGroup
		for i, tn := range []demo.Tenant{tenantA, tenantB} {
			prefix := "pool-psql-" + tn.Name
			csv := filepath.Join(dir, tn.Name+".csv")
			if err := os.WriteFile(csv, []byte(prefix+"-copy-1\n"+prefix+"-copy-2\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := psql(t, p, tn,
					"-c", "BEGIN",
					"-c", "SELECT now()",
					"-c", "INSERT INTO copy_sink (line) VALUES ('"+prefix+"-tx')",
					"-c", "SELECT pg_sleep(0.3)",
					"-c", "SELECT current_setting('app.tenant_id') || ' ' || count(*) FROM copy_sink WHERE line = '"+prefix+"-tx'",
					"-c", "SELECT clock_timestamp()",
					"-c", "COMMIT",
					"-c", `\copy copy_sink (line) FROM '`+csv+`' CSV`,
					"-c", `\copy (SELECT tenant_id, line FROM copy_sink WHERE line LIKE '`+prefix+`-%' ORDER BY line) TO STDOUT`,
					"-c", "DELETE FROM copy_sink WHERE line LIKE '"+prefix+"-%'")
				results[i] = result{out, err}
			}()
		}
		wg.Wait()
		var spans [2][2]time.Time
		for i, tn := range []demo.Tenant{tenantA, tenantB} {
			r := results[i]
			if r.err != nil {
				t.Errorf("psql as %s: %v\n%s", tn.Name, r.err, r.out)
				continue
			}
			prefix := "pool-psql-" + tn.Name
			lines := strings.Split(strings.TrimRight(r.out, "\n"), "\n")
			// BEGIN, now(), INSERT, pg_sleep (empty), tenant+count, clock_timestamp(), COMMIT, COPY 2, 3 rows, DELETE 3
			want := []string{"BEGIN", "", "INSERT 0 1", "", tn.ID + " 1", "", "COMMIT", "COPY 2",
				tn.ID + "\t" + prefix + "-copy-1", tn.ID + "\t" + prefix + "-copy-2", tn.ID + "\t" + prefix + "-tx", "DELETE 3"}
			if len(lines) != len(want) {
				t.Errorf("psql as %s printed %d lines, want %d:\n%s", tn.Name, len(lines), len(want), r.out)
				continue
			}
			for j, w := range want {
				if w != "" && lines[j] != w {
					t.Errorf("psql as %s, line %d: %q, want %q\n%s", tn.Name, j, lines[j], w, r.out)
				}
			}
			spans[i] = [2]time.Time{psqlTime(t, lines[1]), psqlTime(t, lines[5])}
		}
		if !t.Failed() && m.tx {
			a, b := spans[0], spans[1]
			if a[0].Before(b[1]) && b[0].Before(a[1]) {
				t.Errorf("the two transactions overlapped on a pool of one: A %v–%v, B %v–%v", a[0], a[1], b[0], b[1])
			}
		}
	})
}

// pdNodeResult is one query's outcome as pool.js prints it.
type pdNodeResult struct {
	Label   string           `json:"label"`
	Rows    []map[string]any `json:"rows"`
	Error   string           `json:"error"`
	Message string           `json:"message"`
}

// node-postgres, with named prepared statements (client.query({name, text,
// values})) used repeatedly by two clients of different tenants, one name
// with one text and one name with a text per client.
func TestPoolDriverNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: this test needs Node.js and npm (apt-get install -y nodejs npm)")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found: this test needs Node.js and npm (apt-get install -y nodejs npm)")
	}
	// Install the locked dependencies into a copy of the project.
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "pool.js", "postgresjs.mjs"} {
		b, err := os.ReadFile(filepath.Join("testdata", "node", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci (the npm registry must be reachable, or the packages in npm's cache): %v\n%s", err, out)
	}

	// Straight against PostgreSQL first (where every check must pass, the
	// tenant set as a startup option), then through pgtenant in both modes.
	cl := pgcluster.Shared()
	direct := func(tn demo.Tenant) map[string]string {
		return map[string]string{"user": demo.RLSRole, "password": demo.RLSPassword, "tenant": tn.ID, "options": "-c app.tenant_id=" + tn.ID}
	}
	t.Run("PostgreSQL", func(t *testing.T) {
		pdNodeChecks(t, ctx, node, dir, map[string]any{
			"host": cl.Host, "port": strconv.Itoa(cl.Port), "database": demo.Database, "a": direct(tenantA), "b": direct(tenantB),
		})
	})
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		pdNodeChecks(t, ctx, node, dir, map[string]any{
			"host": p.host, "port": p.port, "database": demo.Database,
			"a": map[string]string{"user": tenantA.User, "password": tenantA.Password, "tenant": tenantA.ID},
			"b": map[string]string{"user": tenantB.User, "password": tenantB.Password, "tenant": tenantB.ID},
		})
	})
}

// pdNodeChecks runs pool.js and postgresjs.mjs as the two clients of cfg.
func pdNodeChecks(t *testing.T, ctx context.Context, node, dir string, cfg map[string]any) {
	arg, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, "pool.js", string(arg))
	run.Dir = dir
	var stderr strings.Builder
	run.Stderr = &stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("node pool.js: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	var got struct {
		Results []pdNodeResult `json:"results"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("pool.js output: %v\n%s", err, out)
	}
	byLabel := map[string]pdNodeResult{}
	for _, r := range got.Results {
		byLabel[r.Label] = r
	}
	without := func(tn demo.Tenant, name string) []string {
		return slices.DeleteFunc(slices.Clone(demo.Projects[tn.ID]), func(s string) bool { return s == name })
	}
	// Each expectation: the label, the tenant, and the rows' other column.
	for _, w := range []struct {
		label  string
		tn     demo.Tenant
		column string
		values []string
	}{
		{"a get-projects 1", tenantA, "name", demo.Projects[tenantA.ID]},
		{"b get-projects 1", tenantB, "name", demo.Projects[tenantB.ID]},
		{"a get-projects 2", tenantA, "name", without(tenantA, "anvil")},
		{"b get-projects 2", tenantB, "name", without(tenantB, "monorail")},
		{"a get-projects 3", tenantA, "name", demo.Projects[tenantA.ID]},
		{"a count own", tenantA, "n", []string{"3"}},
		{"a count other", tenantA, "n", []string{"0"}},
		{"b count own", tenantB, "n", []string{"3"}},
		{"b count other", tenantB, "n", []string{"0"}},
		{"a same-name 1", tenantA, "which", []string{"a-text"}},
		{"b same-name 1", tenantB, "which", []string{"b-text"}},
		{"a same-name 2", tenantA, "which", []string{"a-text"}},
		{"b same-name 2", tenantB, "which", []string{"b-text"}},
		{"a get-projects in tx", tenantA, "name", demo.Projects[tenantA.ID]},
		{"b get-projects during a's tx", tenantB, "name", demo.Projects[tenantB.ID]},
		{"a get-projects after tx", tenantA, "name", demo.Projects[tenantA.ID]},
	} {
		r, ok := byLabel[w.label]
		switch {
		case !ok:
			t.Errorf("%s: no result from pool.js", w.label)
			continue
		case r.Error != "":
			t.Errorf("%s: error %s: %s", w.label, r.Error, r.Message)
			continue
		}
		var values []string
		for _, row := range r.Rows {
			if row["tenant"] != w.tn.ID {
				t.Errorf("%s: a row ran as tenant %v, want %s", w.label, row["tenant"], w.tn.ID)
			}
			values = append(values, fmt.Sprint(row[w.column]))
		}
		if !slices.Equal(values, w.values) {
			t.Errorf("%s: %s = %q, want %q", w.label, w.column, values, w.values)
		}
	}
	if len(got.Results) != 16 {
		t.Errorf("pool.js reported %d results, want 16:\n%s", len(got.Results), out)
	}
	pdPostgresJS(t, ctx, node, dir, string(arg))
}

// pdPostgresJS runs postgresjs.mjs (postgres.js with its default settings:
// named prepared statements, pipelined queries, sql.begin) as the two
// clients of arg, and fails the test for each check that did not pass.
func pdPostgresJS(t *testing.T, ctx context.Context, node, dir, arg string) {
	t.Helper()
	// The expected rows: each client's tenant and its projects.
	var cfg map[string]any
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
		t.Fatal(err)
	}
	for who, tn := range map[string]demo.Tenant{"a": tenantA, "b": tenantB} {
		cfg[who].(map[string]any)["names"] = pdNames(tn)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, "postgresjs.mjs", string(b))
	run.Dir = dir
	var stderr strings.Builder
	run.Stderr = &stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("node postgresjs.mjs: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	var got struct {
		Results []struct {
			Label  string `json:"label"`
			OK     bool   `json:"ok"`
			Detail string `json:"detail"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("postgresjs.mjs output: %v\n%s", err, out)
	}
	if len(got.Results) != 4 {
		t.Errorf("postgresjs.mjs reported %d results, want 4:\n%s", len(got.Results), out)
	}
	for _, r := range got.Results {
		if !r.OK {
			t.Errorf("postgres.js %s: %s", r.Label, r.Detail)
		}
	}
}

// A JDBC-shaped flow (pgjdbc with prepareThreshold=5), reproduced on the
// raw protocol: the first four executions of a statement use the unnamed
// statement (Parse, Bind, Describe portal, Execute, Sync), the fifth
// prepares the server statement S_1 (Parse S_1, Bind S_1, Describe, Execute,
// Sync), later ones Bind S_1 alone. Two clients of different tenants do this
// with different texts under the same names, taking turns on a pool of one
// after every execution in transaction mode.
func TestPoolDriverJDBCFlow(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		type client struct {
			tn    demo.Tenant
			conn  *ppConn
			sql   string
			oid   uint32 // parameter type, as pgjdbc declares it
			param string
			cols  string
			row   string
		}
		clients := []*client{
			{tn: tenantA, sql: "SELECT current_setting('app.tenant_id') AS tenant, string_agg(name, ',' ORDER BY id) AS names FROM projects WHERE id > $1",
				oid: 20, param: "0", cols: "RowDescription tenant,names", row: "DataRow " + tenantA.ID + "|" + pdNames(tenantA)},
			{tn: tenantB, sql: "SELECT current_setting('app.tenant_id') AS tenant, count(*)::text AS n FROM projects WHERE name <> $1",
				oid: 1043, param: "monorail", cols: "RowDescription tenant,n", row: "DataRow " + tenantB.ID + "|2"},
		}
		for _, c := range clients {
			c.conn = ppHijack(t, p.pgconnect(t, c.tn))
		}
		const executions = 9
		for i := 1; i <= executions; i++ {
			for _, c := range clients {
				var msgs []pgproto3.FrontendMessage
				var want []string
				switch {
				case i < 5:
					msgs = []pgproto3.FrontendMessage{ppParse("", c.sql, c.oid), ppBind("", c.param), ppDescribePortal(""), ppExec(), ppSync()}
					want = []string{"ParseComplete", "BindComplete", c.cols, c.row, "CommandComplete SELECT 1", ppRFQ}
				case i == 5:
					msgs = []pgproto3.FrontendMessage{ppParse("S_1", c.sql, c.oid), ppBind("S_1", c.param), ppDescribePortal(""), ppExec(), ppSync()}
					want = []string{"ParseComplete", "BindComplete", c.cols, c.row, "CommandComplete SELECT 1", ppRFQ}
				default:
					msgs = []pgproto3.FrontendMessage{ppBind("S_1", c.param), ppExec(), ppSync()}
					want = []string{"BindComplete", c.row, "CommandComplete SELECT 1", ppRFQ}
				}
				got, err := c.conn.exchange(msgs, 0)
				if err != nil {
					t.Fatalf("execution %d as %s: %v (after %q)", i, c.tn.Name, err, got)
				}
				if !slices.Equal(got, want) {
					t.Errorf("execution %d as %s: %s\ngot  %q\nwant %q", i, c.tn.Name, ppSummary(msgs), got, want)
				}
			}
		}
		// pgjdbc closes the statement when it is done with it, and the next
		// statement it prepares reuses no name: S_2.
		for _, c := range clients {
			got, err := c.conn.exchange([]pgproto3.FrontendMessage{ppCloseStmt("S_1"), ppParse("S_2", c.sql, c.oid), ppBind("S_2", c.param), ppDescribePortal(""), ppExec(), ppSync()}, 0)
			want := []string{"CloseComplete", "ParseComplete", "BindComplete", c.cols, c.row, "CommandComplete SELECT 1", ppRFQ}
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("S_2 as %s: %v\ngot  %q\nwant %q", c.tn.Name, err, got, want)
			}
			got, err = c.conn.exchange([]pgproto3.FrontendMessage{ppBind("S_1", c.param), ppExec(), ppSync()}, 0)
			if want := ppFail("26000"); err != nil || !slices.Equal(got, want) {
				t.Errorf("S_1 after its Close as %s: %v\ngot  %q\nwant %q", c.tn.Name, err, got, want)
			}
		}
	})
}

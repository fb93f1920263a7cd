package e2e

// State that outlives a transaction (a WITH HOLD cursor, a temporary table,
// an SQL prepared statement, LISTEN, a session advisory lock) in both modes. In transaction mode it
// pins the client's pooled connection until the state is gone: the
// client's next transactions find it, the other tenant waits for the
// connection (a pool of one) rather than share it, and gets it back when
// the state is gone or its owner leaves.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// pinExec runs sql and returns its rows' first columns, comma-separated.
func pinExec(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var vals []string
	for _, r := range results {
		for _, row := range r.Rows {
			vals = append(vals, string(row[0]))
		}
	}
	return strings.Join(vals, ",")
}

// pinBlocked reports whether a statement of conn waits for a connection:
// it has not answered within a short while (transaction mode, a pool of
// one that another client holds pinned). The wait ends conn.
func pinBlocked(conn *pgconn.PgConn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}

func TestPoolPinning(t *testing.T) {
	first := demo.Projects[tenantA.ID][0]
	for _, tc := range []struct {
		name  string
		pin   []string // statements that leave the state, the last one's rows checked by want
		use   string   // a later transaction that needs the state
		want  string
		unpin string
	}{
		{"WITH HOLD cursor", []string{"DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT name FROM projects ORDER BY id"},
			"FETCH FIRST FROM c", first, "CLOSE c"},
		{"temporary table", []string{"CREATE TEMP TABLE scratch (x int)", "INSERT INTO scratch VALUES (40), (2)"},
			"SELECT sum(x) FROM scratch", "42", "DROP TABLE scratch"},
		{"session advisory lock", []string{"SELECT pg_advisory_lock(4242)"},
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", "1", "SELECT pg_advisory_unlock(4242)"},
		// A lone PREPARE is carried (TestPoolPreparedSQL); with other statements it pins.
		{"SQL PREPARE", []string{"PREPARE mine (int) AS SELECT current_setting('app.tenant_id') || ':' || $1; SELECT 1"},
			"EXECUTE mine (7)", tenantA.ID + ":7", "DEALLOCATE mine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachPoolMode(t, func(t *testing.T, m poolMode) {
				grantTemp(t)
				p := startProxy(t, m.config(1))
				a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
				pinExec(t, b, "SELECT 1") // B has had the connection
				for _, sql := range tc.pin {
					pinExec(t, a, sql)
				}
				if m.tx && !pinBlocked(p.pgconnect(t, tenantB)) {
					t.Fatal("B ran on the connection A's state pins")
				}
				for i := 0; i < 3; i++ {
					if got := pinExec(t, a, tc.use); got != tc.want {
						t.Fatalf("transaction %d after the pin: %s = %q, want %q", i, tc.use, got, tc.want)
					}
					if got := pinExec(t, a, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
						t.Fatalf("A's context while pinned: %q", got)
					}
				}
				pinExec(t, a, tc.unpin)
				// The state is gone: B gets the connection, with nothing of A's.
				if got := pinExec(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
					t.Fatalf("B after A's pin: %q", got)
				}
				left := pinExec(t, b, `SELECT ((SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
					+ (SELECT count(*) FROM pg_listening_channels()) + (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()))::text`)
				if left != "0" {
					t.Fatalf("B's connection holds %s temporary relations, channels or advisory locks", left)
				}
				if _, err := b.Exec(context.Background(), "FETCH c").ReadAll(); pgCode(err) != "34000" {
					t.Fatalf("FETCH c as B: %v, want 34000 (no such cursor)", err)
				}
			})
		})
	}
}

// grantTemp lets the RLS role create temporary tables for the test.
func grantTemp(t *testing.T) {
	t.Helper()
	superQuery(t, "GRANT TEMPORARY ON DATABASE "+demo.Database+" TO "+demo.RLSRole)
	t.Cleanup(func() { superQuery(t, "REVOKE TEMPORARY ON DATABASE "+demo.Database+" FROM "+demo.RLSRole) })
}

// A client that leaves while pinned takes the connection with it: the next
// client gets a connection with none of its state. Notifications reach a
// pinned listener between its transactions.
func TestPoolPinnedClientLeaves(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		grantTemp(t)
		p := startProxy(t, m.config(1))
		cfg, err := pgconn.ParseConfig(p.connString(tenantA))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 4)
		cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { got <- n.Payload }
		a, err := pgconn.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(context.Background())
		pinExec(t, a, "CREATE TEMP TABLE left_behind (x int)")
		pinExec(t, a, "LISTEN pin_left")
		pinExec(t, a, "NOTIFY pin_left, 'to myself'")
		// Through the pool's hub it comes just after the NOTIFY's answer
		// (PostgreSQL sends it just before): wait for it.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.WaitForNotification(ctx)
		cancel()
		select {
		case payload := <-got:
			if payload != "to myself" {
				t.Fatalf("notification %q", payload)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no notification")
		}
		a.Close(context.Background())
		b := p.pgconnect(t, tenantB)
		if got := pinExec(t, b, "SELECT count(*) FROM pg_class WHERE relname = 'left_behind'"); got != "0" {
			t.Fatalf("A's temporary table outlived its session: %s", got)
		}
		if got := pinExec(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("B: %q", got)
		}
	})
}

// Pinned connections are bounded: past pool.max_pinned the statement that
// would pin one more waits up to pool.wait_timeout for a pin to end, then
// is refused with 53400, naming the setting; a pinned
// client idle past pool.pinned_idle_timeout is ended. Transaction mode
// only: a session-mode client's connection is its own.
func TestPoolPinnedBounds(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		transactionPool(2)(c)
		c.Pool.MaxPinned = 1
		c.Pool.WaitTimeout = config.Duration{Duration: 300 * time.Millisecond} // the wait for a pin too
		c.Pool.PinnedIdleTimeout = config.Duration{Duration: 1500 * time.Millisecond}
		c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
	})
	a, a2, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantA2), p.pgconnect(t, tenantB)
	pinExec(t, a, "DECLARE c CURSOR WITH HOLD FOR SELECT 1")
	for _, conn := range []*pgconn.PgConn{a2, b} {
		_, err := conn.Exec(context.Background(), "SELECT pg_advisory_lock(7)").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53400" || !strings.Contains(pgErr.Message, "pool.max_pinned") {
			t.Fatalf("a second pin: %v, want 53400 naming pool.max_pinned", err)
		}
		if got := pinExec(t, conn, "SELECT 'still here'"); got != "still here" {
			t.Fatalf("after the refusal: %q", got)
		}
	}
	// A, pinned, idles past the timeout; B, idle as long, is not pinned.
	time.Sleep(2 * time.Second)
	_, err := a.Exec(context.Background(), "FETCH c").ReadAll()
	if err == nil {
		t.Fatal("the pinned client idle past pool.pinned_idle_timeout is still served")
	}
	if got := pinExec(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
		t.Fatalf("B: %q", got)
	}
	// Its pin went with it: another client may pin.
	pinExec(t, b, "DECLARE d CURSOR WITH HOLD FOR SELECT 1")
	pinExec(t, b, "CLOSE d")
}

// A pin that ends (CLOSE) with the next pinning statement already on its
// way (pipelined behind it) keeps the connection: the second cursor is
// never left on a connection another tenant gets. Transaction mode only
// (the other tenant waits for the pinned connection).
func TestPoolPinHandsOverToPipelinedPin(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	a := ppHijack(t, p.pgconnect(t, tenantA))
	b := p.pgconnect(t, tenantB)
	if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("DECLARE c1 CURSOR WITH HOLD FOR SELECT 1")}, 0); err != nil {
		t.Fatalf("%q %v", got, err)
	}
	got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("CLOSE c1"), ppQuery("DECLARE c2 CURSOR WITH HOLD FOR SELECT current_setting('app.tenant_id')")}, 0)
	if err != nil || strings.Join(got, ";") != "CommandComplete CLOSE CURSOR;ReadyForQuery I;CommandComplete DECLARE CURSOR;ReadyForQuery I" {
		t.Fatalf("pipelined CLOSE and DECLARE: %q %v", got, err)
	}
	if !pinBlocked(p.pgconnect(t, tenantB)) {
		t.Fatal("B ran on the connection while A holds cursor c2")
	}
	if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("FETCH c2"), ppQuery("CLOSE c2")}, 0); err != nil || !strings.Contains(strings.Join(got, ";"), "DataRow "+tenantA.ID) {
		t.Fatalf("A's FETCH c2: %q %v", got, err)
	}
	if _, err := b.Exec(context.Background(), "FETCH c2").ReadAll(); pgCode(err) != "34000" {
		t.Fatalf("FETCH c2 as B: %v, want 34000", err)
	}
}

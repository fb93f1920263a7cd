package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// listener is a connection to the proxy that records its notifications.
type listener struct {
	conn *pgconn.PgConn
	mu   sync.Mutex
	got  []string // channel=payload
}

func listen(t *testing.T, p *testProxy, tn demo.Tenant) *listener {
	t.Helper()
	cfg, err := pgconn.ParseConfig(p.connString(tn))
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		l.mu.Lock()
		l.got = append(l.got, n.Channel+"="+n.Payload)
		l.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if l.conn, err = pgconn.ConnectConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.conn.Close(context.Background()) })
	return l
}

// drain waits until the listener has n notifications, or a while, and
// returns them.
func (l *listener) drain(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(3*time.Second + time.Duration(n)*time.Millisecond)
	for {
		l.mu.Lock()
		got := append([]string(nil), l.got...)
		l.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			// A little longer for any that should not come.
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			_ = l.conn.WaitForNotification(ctx)
			cancel()
			l.mu.Lock()
			got = append([]string(nil), l.got...)
			l.mu.Unlock()
			return got
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_ = l.conn.WaitForNotification(ctx)
		cancel()
	}
}

func mustExec(t *testing.T, conn *pgconn.PgConn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Tenants using the same channel names never meet: each hears its own
// tenant's notifications, under the names it used, in both modes.
func TestNotificationsPerTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(4, func(c *config.Config) {
			c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
		}))
		a, b := listen(t, p, tenantA), listen(t, p, tenantB)
		for _, l := range []*listener{a, b} {
			mustExec(t, l.conn, `LISTEN jobs; LISTEN "Mixed Case"`)
		}
		a2 := p.pgconnect(t, tenantA2)
		mustExec(t, b.conn, "NOTIFY jobs, 'b1'")
		mustExec(t, a2, "NOTIFY jobs, 'a1'")
		mustExec(t, b.conn, "SELECT pg_notify('jobs', 'b2')")
		mustExec(t, a2, `SELECT pg_catalog.pg_notify('Mixed' || ' Case', 'a2'); NOTIFY "Mixed Case", 'a3'`)
		mustExec(t, a2, "BEGIN; NOTIFY jobs, 'rolled back'; ROLLBACK")
		mustExec(t, b.conn, `NOTIFY "Mixed Case", 'b3'`)
		if got, want := a.drain(t, 3), []string{"jobs=a1", "Mixed Case=a2", "Mixed Case=a3"}; strings.Join(got, ";") != strings.Join(want, ";") {
			t.Errorf("tenant A heard %q, want %q", got, want)
		}
		// B hears its own, its own session's included, as in PostgreSQL.
		if got, want := b.drain(t, 3), []string{"jobs=b1", "jobs=b2", "Mixed Case=b3"}; strings.Join(got, ";") != strings.Join(want, ";") {
			t.Errorf("tenant B heard %q, want %q", got, want)
		}
		// UNLISTEN of the client's name ends it.
		mustExec(t, a.conn, "UNLISTEN jobs")
		mustExec(t, a2, "NOTIFY jobs, 'after unlisten'")
		mustExec(t, a2, `NOTIFY "Mixed Case", 'still'`)
		if got := a.drain(t, 4); len(got) != 4 || got[3] != "Mixed Case=still" {
			t.Errorf("after UNLISTEN jobs, A heard %q", got)
		}
	})
}

// A channel name that does not fit PostgreSQL's 63 bytes with the
// tenant's scope is refused with a clear error, in both modes; one that
// fits is heard.
func TestNotificationChannelLength(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		a := listen(t, p, tenantA)
		fits := strings.Repeat("c", 46)
		mustExec(t, a.conn, "LISTEN "+fits)
		mustExec(t, a.conn, "NOTIFY "+fits+", 'x'")
		if got := a.drain(t, 1); len(got) != 1 || got[0] != fits+"=x" {
			t.Errorf("46-byte channel: heard %q", got)
		}
		ctx := context.Background()
		_, err := a.conn.Exec(ctx, "LISTEN "+fits+"c").ReadAll()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22023" || !strings.Contains(pgErr.Detail, "at most 46 bytes") {
			t.Errorf("47-byte channel: %v", err)
		}
		// The connection goes on.
		mustExec(t, a.conn, "SELECT 1")
	})
}

// A LISTEN takes effect as PostgreSQL says: not in a block that rolls
// back or past a savepoint rolled back to; UNLISTEN *, DISCARD ALL and a
// driver's reset string end them all. In transaction mode listeners hold
// no connection: here three of them and a notifier share a pool of one.
func TestNotificationsTransactional(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1, func(c *config.Config) {
			c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
		}))
		a, a2, b := listen(t, p, tenantA), listen(t, p, tenantA2), listen(t, p, tenantB)
		mustExec(t, a.conn, "LISTEN kept")
		mustExec(t, a.conn, "BEGIN; LISTEN dropped; ROLLBACK")
		mustExec(t, a.conn, "BEGIN; SAVEPOINT s; LISTEN undone; ROLLBACK TO s; LISTEN later; COMMIT")
		mustExec(t, a2.conn, "LISTEN kept; LISTEN gone; UNLISTEN *")
		mustExec(t, a2.conn, "LISTEN again")
		mustExec(t, b.conn, "LISTEN kept")
		mustExec(t, b.conn, "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
		for _, l := range []*listener{a, a2, b} {
			mustExec(t, l.conn, "SELECT 1") // whatever the client does next
		}
		n := p.pgconnect(t, tenantA)
		for _, ch := range []string{"kept", "dropped", "undone", "later", "gone", "again"} {
			mustExec(t, n, "NOTIFY "+ch+", '"+ch+"'")
		}
		nb := p.pgconnect(t, tenantB)
		mustExec(t, nb, "NOTIFY kept, 'b'")
		for _, tc := range []struct {
			l    *listener
			who  string
			want []string
		}{
			{a, "A", []string{"kept=kept", "later=later"}},
			{a2, "A2", []string{"again=again"}},
			{b, "B", nil},
		} {
			if got := tc.l.drain(t, len(tc.want)); strings.Join(got, ";") != strings.Join(tc.want, ";") {
				t.Errorf("%s heard %q, want %q", tc.who, got, tc.want)
			}
		}
		mustExec(t, a.conn, "UNLISTEN *")
		mustExec(t, n, "NOTIFY kept, 'after discard'")
		if got := a.drain(t, 3); len(got) != 2 {
			t.Errorf("after UNLISTEN *, A heard %q", got)
		}
	})
}

// Notifications come in the order they were sent, also to a client that
// runs transactions between them; a listener that does not read its
// notifications never holds up the others (in transaction mode it is
// disconnected once too many wait for it).
func TestNotificationsSlowListener(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		fast := listen(t, p, tenantA)
		mustExec(t, fast.conn, "LISTEN flood")
		slow := p.pgconnect(t, tenantA)
		mustExec(t, slow, "LISTEN flood")
		// slow never reads again: its socket and pgtenant's queue fill up.
		n := p.pgconnect(t, tenantA)
		const count = 5000 // 40 MB: more than pgtenant queues, or sockets hold
		payload := strings.Repeat("p", 7900)
		mustExec(t, n, fmt.Sprintf("SELECT pg_notify('flood', g || ':%s') FROM generate_series(1, %d) g", payload, count))
		got := fast.drain(t, count)
		if len(got) != count {
			t.Fatalf("the reading listener heard %d of %d", len(got), count)
		}
		for i, g := range got {
			if !strings.HasPrefix(g, fmt.Sprintf("flood=%d:", i+1)) {
				t.Fatalf("notification %d is %.20q: out of order", i, g)
			}
		}
		if m.tx {
			// pgtenant gives up on the slow one once a write has waited 5s.
			time.Sleep(6 * time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := slow.Exec(ctx, "SELECT 1").ReadAll()
			if err == nil {
				t.Error("the listener that read nothing is still connected")
			}
		}
	})
}

package e2e

// Red-team findings (session 6b) against transaction-mode notifications
// through the pool's hub and tenant placement. Tenant A (acme_app) is the
// attacker, tenant B (globex_app) the victim. Each test states what should
// hold and fails while the finding stands.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// rtbQuery runs sql on conn and returns its rows as strings, or the first
// error.
func rtbQuery(conn *pgconn.PgConn, sql string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, r := range res {
		if r.Err != nil {
			return out, r.Err
		}
		for _, row := range r.Rows {
			var s []string
			for _, v := range row {
				s = append(s, string(v))
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// Finding 1: with the layouts mixed as the README's example mixes them
// (tenant A on the shared tables, tenant B in a schema of its own with a
// role), A runs as the upstream login role, which the README requires to
// be a member of B's role ("GRANT globex TO app_rls"). Membership inherits
// by default, so A reads and writes B's schema by qualifying the name:
// SELECT note FROM placement_s2.placement_notes returns B's rows, as
// current_user app_rls. Nothing in pgtenant (guard, doctor, startup)
// refuses the inheriting membership or the statement.
func TestRedTeamS6bFinding1(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		place := schemaTenants(t)
		p := m.start(t, func(c *config.Config) {
			place(c)
			delete(c.Tenants, tenantA.ID) // A on the shared tables, as tenant 1111... in the README
		})
		a := p.pgconnect(t, tenantA)
		rows, err := rtbQuery(a, "SELECT current_user, note FROM placement_s2.placement_notes")
		if err == nil {
			t.Errorf("tenant A (shared tables) read tenant B's schema: %v", rows)
		} else if pgCode(err) != "42501" {
			t.Errorf("tenant A reading B's schema: %v, want 42501", err)
		}
		if _, err := rtbQuery(a, "INSERT INTO placement_s2.placement_notes VALUES ('planted by A')"); err == nil {
			t.Errorf("tenant A (shared tables) wrote into tenant B's schema")
		}
	})
}

// Finding 2: one tenant can make every other client of the pool lose its
// LISTEN. The hub is one upstream backend for the whole pool and runs the
// LISTENs of all clients one Query after another; PostgreSQL keeps a
// backend's channels in a list, so a Query of n LISTENs costs it O(n²).
// Tenant A sends one Query of 80000 LISTENs (1 MB): the hub backend is
// busy for well over 10 s, and tenant B's plain "LISTEN jobs", queued
// behind it, gets FATAL 08006 "no answer from the upstream within 10s" (its
// session ends). In session mode, and in PostgreSQL, A's LISTENs only cost
// A's own backend and B's LISTEN answers at once.
func TestRedTeamS6bFinding2(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(4))
		a := p.pgconnect(t, tenantA)
		var sb strings.Builder
		for i := range 80000 {
			fmt.Fprintf(&sb, "LISTEN c%05d;", i)
		}
		if m.tx {
			// Fixed: a transaction-mode client listens on at most 1000
			// channels (the hub serves the whole pool on one backend).
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := a.Exec(ctx, sb.String()).ReadAll(); pgCode(err) != "54000" {
				t.Fatalf("80000 LISTENs in transaction mode: %v, want 54000", err)
			}
		}
		done := make(chan struct{})
		actx, stop := context.WithTimeout(context.Background(), 60*time.Second)
		go func() {
			defer close(done)
			if m.tx {
				return
			}
			_, _ = a.Exec(actx, sb.String()).ReadAll()
		}()
		t.Cleanup(func() {
			stop() // A's statement ends before its connection is closed
			<-done
		})
		eventually(t, 30*time.Second, "a backend busy with A's LISTENs", func() bool {
			if m.tx {
				return true
			}
			rows := superQuery(t, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'LISTEN %'`)
			return rows[0][0] != "0"
		})
		b := listen(t, p, tenantB)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := b.conn.Exec(ctx, "LISTEN jobs").ReadAll(); err != nil {
			t.Fatalf("tenant B's LISTEN while tenant A listens on 80000 channels: %v", err)
		}
		nb := p.pgconnect(t, tenantB)
		mustExec(t, nb, "NOTIFY jobs, 'b'")
		if got := b.drain(t, 1); strings.Join(got, ";") != "jobs=b" {
			t.Errorf("tenant B heard %q, want jobs=b", got)
		}
	})
}

// Finding 3: in transaction mode a client whose client_encoding is not
// UTF8 misses its own notifications on non-ASCII channels. The hub's
// connection speaks UTF8, but the channel names it LISTENs on are the
// client's bytes (from the client's statement and from the readback, which
// runs in the client's encoding): a LATIN1 client's LISTEN "cafÃ©" has the
// hub listen on UTF8 "café" while the client's NOTIFY goes to UTF8
// "cafÃ©". Session mode and PostgreSQL deliver it.
func TestRedTeamS6bFinding3(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		a := listen(t, p, tenantA)
		n := p.pgconnect(t, tenantA)
		for _, c := range []*pgconn.PgConn{a.conn, n} {
			mustExec(t, c, "SET client_encoding TO 'LATIN1'")
		}
		const ch = "caf\xc3\xa9" // LATIN1 "cafÃ©"
		if m.tx {
			// Fixed: refused, saying why (the hub speaks UTF8).
			err := rtExec(a.conn, `LISTEN "`+ch+`"`)
			if pgCode(err) != "0A000" || !strings.Contains(err.Error(), "client_encoding UTF8") {
				t.Fatalf("LISTEN from a LATIN1 client in transaction mode: %v, want 0A000", err)
			}
			return
		}
		mustExec(t, a.conn, `LISTEN "`+ch+`"`)
		mustExec(t, n, `NOTIFY "`+ch+`", 'x'`)
		if got := a.drain(t, 1); strings.Join(got, ";") != ch+"=x" {
			t.Errorf("a LATIN1 client heard %q, want %q", got, ch+"=x")
		}
	})
}

// The fix of finding 1: while the upstream login role inherits from the
// tenants' roles, a session that would run as it (a tenant without a role
// of its own) is refused, saying what to change; tenants with a role are
// served. The demo's login role is NOINHERIT, as the README asks.
func TestLoginRoleInheritRefused(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		place := schemaTenants(t)
		superQuery(t, "ALTER ROLE "+demo.RLSRole+" INHERIT")
		t.Cleanup(func() { superQuery(t, "ALTER ROLE "+demo.RLSRole+" NOINHERIT") })
		p := m.start(t, func(c *config.Config) {
			place(c)
			delete(c.Tenants, tenantA.ID)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, p.connString(tenantA))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Hint, "NOINHERIT") {
			t.Fatalf("a tenant without a role while the login role inherits: %v, want FATAL 42501 naming NOINHERIT", err)
		}
		b := p.pgconnect(t, tenantB)
		if rows, err := rtbQuery(b, "SELECT note FROM placement_notes"); err != nil || len(rows) != 1 {
			t.Fatalf("tenant B (with its role): %v %v", rows, err)
		}
	})
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// dbUsersPlaced makes a db_users table, moved_users, holding one user of
// tenant C ("c_moved", password "pw") in the shared tables (upstream
// NULL), and has the proxy look users up there; C's own database
// (placementDB, upstream c_db) exists but no config places C there.
func dbUsersPlaced(t *testing.T) (demo.Tenant, func(*config.Config)) {
	t.Helper()
	placeC := databaseTenant(t)
	superExec(t, demo.Database, dbUsersSQL+`
DROP TABLE IF EXISTS moved_users;
CREATE TABLE moved_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL, upstream text);
GRANT SELECT ON moved_users TO pgtenant_lookup;`)
	t.Cleanup(func() { superExec(t, demo.Database, "DROP TABLE IF EXISTS moved_users") })
	verifier, err := auth.NewVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	superExec(t, demo.Database, fmt.Sprintf("INSERT INTO moved_users VALUES ('c_moved', '%s', '%s', NULL)", verifier, tenantC.ID))
	return demo.Tenant{Name: "c_moved", User: "c_moved", Password: "pw", ID: tenantC.ID}, func(c *config.Config) {
		placeC(c)
		delete(c.Tenants, tenantC.ID)
		c.DBUsers = &config.DBUsers{
			Connection: pgcluster.Shared().URL("pgtenant_lookup", "lookup_pw", demo.Database),
			Query:      "SELECT verifier, tenant, upstream FROM moved_users WHERE name = $1",
			CacheTTL:   config.Duration{Duration: time.Hour}, // only a re-read sees a change
		}
	}
}

// An online move of a tenant placed by its db_users rows: C's user is in
// the shared tables; C is paused, its row is changed to its own database,
// and C is resumed. The resume reads the row again (past the lookup
// cache): in transaction mode C's existing sessions run their next
// transactions in the new database; in session mode they end with 57P01;
// a login that waited during the pause, and a new one, go to the new
// database. Then the row is deleted while C
// is paused again: at the resume, C's session ends with 28000. A, not
// paused, runs all along without an error.
func TestPauseMoveDatabaseUsersTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		cUser, placed := dbUsersPlaced(t)
		p := m.start(t, pauseTimeout(20*time.Second), placed)
		c1, c2 := p.pgconnect(t, cUser), p.pgconnect(t, cUser)
		for _, c := range []*pgconn.PgConn{c1, c2} {
			if got := queryOne(t, c, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != demo.Database+" "+tenantC.ID {
				t.Fatalf("before the move: %s", got)
			}
		}
		a := p.pgconnect(t, tenantA)
		stopA := keepQuerying(a, "SELECT count(*) FROM projects")

		ctx := context.Background()
		if info := p.srv.Pause(ctx, tenantC.ID, 5*time.Second); info.InTransaction != 0 {
			t.Fatalf("pause: %+v", info)
		}
		// A login during the pause authenticates with the cached row, then waits.
		cLogin := goConnect(t, p.connString(cUser))
		eventually(t, 5*time.Second, "C's login to wait", func() bool { return pausedWaiting(p, tenantC.ID) == 1 })
		superExec(t, demo.Database, "UPDATE moved_users SET upstream = 'c_db' WHERE name = 'c_moved'")
		if info, err := p.srv.Resume(tenantC.ID); err != nil || info.Moved != 2 {
			t.Fatalf("resume: %+v %v, want 2 sessions moved", info, err)
		}
		for i, c := range []*pgconn.PgConn{c1, c2} {
			if !m.tx {
				if err := execErr(c, "SELECT 1"); pgCode(err) != "57P01" || !strings.Contains(err.Error(), "was moved while paused") {
					t.Fatalf("session-mode session %d after the move: %v, want FATAL 57P01", i, err)
				}
				continue
			}
			got := queryRows(t, c, "SELECT current_database(), current_setting('app.tenant_id'), note FROM placement_notes")
			if len(got) != 1 || !slices.Equal(got[0], []string{placementDB, tenantC.ID, "secret of C"}) {
				t.Fatalf("session %d after the move sees %v, want C's own database", i, got)
			}
		}
		l := cLogin.wait(t, 5*time.Second, "C's login")
		if l.err != nil {
			t.Fatalf("C's login during the pause: %v", l.err)
		}
		if got := queryOne(t, l.conn, "SELECT current_database()"); got != placementDB {
			t.Fatalf("C's login during the pause went to %s", got)
		}
		n := p.pgconnect(t, cUser)
		if got := queryOne(t, n, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != placementDB+" "+tenantC.ID {
			t.Fatalf("a login after the move went to %s", got)
		}

		// The user is deleted while C is paused: its sessions end at the resume.
		p.srv.Pause(ctx, tenantC.ID, 5*time.Second)
		superExec(t, demo.Database, "DELETE FROM moved_users WHERE name = 'c_moved'")
		if _, err := p.srv.Resume(tenantC.ID); err != nil {
			t.Fatal(err)
		}
		if err := execErr(n, "SELECT 1"); pgCode(err) != "28000" || !strings.Contains(err.Error(), "no longer in db_users") {
			t.Fatalf("C's session after its user was deleted: %v, want FATAL 28000", err)
		}
		if _, err := pgconn.Connect(ctx, p.connString(cUser)); pgCode(err) != "28P01" {
			t.Fatalf("a login of the deleted user: %v, want 28P01", err)
		}
		if n, errs := stopA(); len(errs) > 0 || n == 0 {
			t.Fatalf("A during C's moves: %d queries, errors %v", n, errs)
		}
		if got := queryOne(t, a, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != demo.Database+" "+tenantA.ID {
			t.Fatalf("A after C's moves: %s", got)
		}
	})
}

// A reload that removes the upstream a db_users user's row placed its
// session on, after the row was changed to the shared tables: the reload
// reads the row again for the sessions it moves. In transaction mode the
// session's next transaction runs in the shared database (by the old row
// it would have no placement left); in session mode it ends with 57P01.
func TestReloadMovesDatabaseUsersSession(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		cUser, placed := dbUsersPlaced(t)
		superExec(t, demo.Database, "UPDATE moved_users SET upstream = 'c_db' WHERE name = 'c_moved'")
		p := m.start(t, placed)
		c := p.pgconnect(t, cUser)
		if got := queryOne(t, c, "SELECT current_database()"); got != placementDB {
			t.Fatalf("before the reload: %s", got)
		}
		superExec(t, demo.Database, "UPDATE moved_users SET upstream = NULL WHERE name = 'c_moved'")
		noC := proxyConfig(t, m.config(modePoolSize, placed, func(c *config.Config) {
			c.Upstreams = slices.DeleteFunc(c.Upstreams, func(u config.Upstream) bool { return u.Name == "c_db" })
		}))
		if err := cli.Reload(p.srv, noC, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatal(err)
		}
		if !m.tx {
			if err := execErr(c, "SELECT 1"); pgCode(err) != "57P01" || !strings.Contains(err.Error(), `upstream "c_db" was removed`) {
				t.Fatalf("session-mode session after the reload: %v, want FATAL 57P01", err)
			}
		} else if got := queryOne(t, c, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != demo.Database+" "+tenantC.ID {
			t.Fatalf("the session after the reload runs in %s", got)
		}
		if got := queryOne(t, p.pgconnect(t, cUser), "SELECT current_database()"); got != demo.Database {
			t.Fatalf("a login after the reload went to %s", got)
		}
	})
}

package e2e

import (
	"context"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// superExec runs sql as superuser in database db.
func superExec(t *testing.T, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pgcluster.Shared().Exec(ctx, db, sql); err != nil {
		t.Fatalf("as superuser in %s: %v", db, err)
	}
}

// schemaTenants places tenant A in schema placement_s1 as role
// placement_r1 and B in placement_s2 as placement_r2: the same table
// name in each, each role with USAGE on its own schema only and owning
// nothing, the upstream login role a member of both (as PostgREST's
// authenticator is).
func schemaTenants(t *testing.T) func(*config.Config) {
	t.Helper()
	const drop = `
DROP SCHEMA IF EXISTS placement_s1 CASCADE; DROP SCHEMA IF EXISTS placement_s2 CASCADE;
DROP ROLE IF EXISTS placement_r1; DROP ROLE IF EXISTS placement_r2;`
	superExec(t, demo.Database, drop)
	t.Cleanup(func() { superExec(t, demo.Database, drop) })
	var setup strings.Builder
	for _, n := range []string{"1", "2"} {
		fmt.Fprintf(&setup, `
CREATE ROLE placement_r%[1]s NOLOGIN;
GRANT placement_r%[1]s TO %[2]s;
CREATE SCHEMA placement_s%[1]s;
GRANT USAGE ON SCHEMA placement_s%[1]s TO placement_r%[1]s;
CREATE TABLE placement_s%[1]s.placement_notes (note text NOT NULL);
GRANT SELECT, INSERT ON placement_s%[1]s.placement_notes TO placement_r%[1]s;
INSERT INTO placement_s%[1]s.placement_notes VALUES ('secret of s%[1]s');`, n, demo.RLSRole)
	}
	superExec(t, demo.Database, setup.String())
	return func(c *config.Config) {
		c.Tenants = map[string]config.TenantLimits{
			tenantA.ID: {Schema: "placement_s1", Role: "placement_r1"},
			tenantB.ID: {Schema: "placement_s2", Role: "placement_r2"},
		}
	}
}

// Schema per tenant: two tenants in two schemas with the same table
// names each see only their own tables and rows (in transaction mode, one
// after the other on the same pooled connections); a schema-qualified name
// of the other schema is refused by PostgreSQL (the role lacks USAGE);
// every way to change search_path or the role is refused by the guard.
func TestSchemaPlacement(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, schemaTenants(t))
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		for i := range 2 {
			if got := queryRows(t, a, "SELECT note FROM placement_notes"); !slices.Equal(flat(got), []string{"secret of s1"}) {
				t.Fatalf("round %d: A sees %v", i, got)
			}
			if got := queryRows(t, b, "SELECT note FROM placement_notes"); !slices.Equal(flat(got), []string{"secret of s2"}) {
				t.Fatalf("round %d: B sees %v", i, got)
			}
		}
		queryRows(t, a, "INSERT INTO placement_notes VALUES ('new in s1')")
		if got := queryOne(t, b, "SELECT count(*) FROM placement_notes WHERE note = 'new in s1'"); got != "0" {
			t.Fatalf("B sees A's new row: %s", got)
		}
		if got := queryRows(t, a, "SELECT current_user, current_setting('search_path'), current_setting('app.tenant_id')"); !slices.Equal(got[0], []string{"placement_r1", "placement_s1", tenantA.ID}) {
			t.Fatalf("A's context: %v", got)
		}
		for _, sql := range []string{"SELECT note FROM placement_s2.placement_notes", "INSERT INTO placement_s2.placement_notes VALUES ('x')"} {
			if err := execErr(a, sql); pgCode(err) != "42501" || !strings.Contains(err.Error(), "permission denied for schema placement_s2") {
				t.Errorf("A: %s: %v, want PostgreSQL's 42501 permission denied for schema", sql, err)
			}
		}
		for _, sql := range []string{
			"SET search_path TO placement_s2",
			"SET search_path = public",
			"SET SESSION search_path TO DEFAULT",
			"RESET search_path",
			"BEGIN; SET LOCAL search_path TO placement_s2",
			"SELECT set_config('search_path', 'placement_s2', false)",
			"SET ROLE placement_r2",
			"SET ROLE NONE",
			"RESET ROLE",
			"SET SESSION AUTHORIZATION DEFAULT",
		} {
			if err := execErr(a, sql); pgCode(err) != "42501" {
				t.Errorf("A: %s: %v, want 42501", sql, err)
			}
			if err := execErr(a, "ROLLBACK"); err != nil {
				t.Fatal(err)
			}
		}
		// RESET ALL is allowed: the context, search_path included, comes back.
		queryRows(t, a, "RESET ALL")
		if got := queryRows(t, a, "SELECT note FROM placement_notes ORDER BY note"); !slices.Equal(flat(got), []string{"new in s1", "secret of s1"}) {
			t.Fatalf("A after RESET ALL sees %v", got)
		}
		// Nor may the client name a search_path at startup.
		for _, extra := range []string{"search_path=placement_s2", "options='-c search_path=placement_s2'"} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := pgconn.Connect(ctx, p.connString(tenantB, extra))
			cancel()
			if err == nil {
				c.Close(context.Background())
			}
			if pgCode(err) != "42501" || !strings.Contains(err.Error(), `permission denied to set parameter "search_path"`) {
				t.Errorf("startup %s: %v, want FATAL 42501", extra, err)
			}
		}
	})
}

// flat is the first column of rows.
func flat(rows [][]string) []string {
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		out = append(out, r[0])
	}
	return out
}

// tenantC lives in a database of its own (databaseTenant).
var tenantC = demo.Tenant{ID: "33333333-3333-3333-3333-333333333333", Name: "initech", User: "placement_c_app", Password: "placement_c_pw"}

// placementDB is tenant C's database on the shared cluster.
const placementDB = "placement_c"

// databaseTenant creates placementDB, with a placement_notes table whose rows
// default to the session's tenant context, and places tenant C there as
// upstream "c_db" (the same login role as the default upstream's).
func databaseTenant(t *testing.T) func(*config.Config) {
	t.Helper()
	drop := "DROP DATABASE IF EXISTS " + placementDB + " WITH (FORCE)"
	superExec(t, "postgres", drop)
	superExec(t, "postgres", "CREATE DATABASE "+placementDB)
	t.Cleanup(func() { superExec(t, "postgres", drop) })
	superExec(t, placementDB, fmt.Sprintf(`
CREATE TABLE placement_notes (tenant_id uuid NOT NULL DEFAULT current_setting('app.tenant_id')::uuid, note text NOT NULL);
GRANT SELECT, INSERT ON placement_notes TO %s;
INSERT INTO placement_notes VALUES ('%s', 'secret of C');`, demo.RLSRole, tenantC.ID))
	return func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: tenantC.User, Password: tenantC.Password, Tenant: tenantC.ID})
		c.Upstreams = append(c.Upstreams, config.Upstream{Name: "c_db", URL: pgcluster.Shared().URL(demo.RLSRole, demo.RLSPassword, placementDB)})
		if c.Tenants == nil {
			c.Tenants = map[string]config.TenantLimits{}
		}
		c.Tenants[tenantC.ID] = config.TenantLimits{Upstream: "c_db"}
	}
}

// Database per tenant: tenant C, connecting with the same database name
// as everyone, is served by its own database (in transaction mode, by that
// upstream's own pool) with its tenant context asserted there; A and B go
// on in the shared tables as before. The admin views show where each
// session lives and each upstream's pool.
func TestDatabasePlacement(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, databaseTenant(t))
		a, b, c := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB), p.pgconnect(t, tenantC)
		for i := range 2 {
			if got := queryRows(t, c, "SELECT current_database(), current_setting('app.tenant_id'), note FROM placement_notes"); len(got) != 1 ||
				!slices.Equal(got[0], []string{placementDB, tenantC.ID, "secret of C"}) {
				t.Fatalf("round %d: C sees %v", i, got)
			}
			for _, x := range []struct {
				conn *pgconn.PgConn
				tn   demo.Tenant
			}{{a, tenantA}, {b, tenantB}} {
				got := queryRows(t, x.conn, "SELECT current_database(), current_setting('app.tenant_id'), count(*), count(*) FILTER (WHERE tenant_id::text <> current_setting('app.tenant_id')) FROM projects")
				if len(got) != 1 || got[0][0] != demo.Database || got[0][1] != x.tn.ID || got[0][2] == "0" || got[0][3] != "0" {
					t.Fatalf("round %d: %s sees %v", i, x.tn.Name, got)
				}
				if err := execErr(x.conn, "SELECT note FROM placement_notes"); pgCode(err) != "42P01" {
					t.Fatalf("round %d: %s reads C's table: %v", i, x.tn.Name, err)
				}
			}
		}
		queryRows(t, c, "INSERT INTO placement_notes (note) VALUES ('new of C')")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, pgcluster.Shared().SuperURL(placementDB))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if got := queryOne(t, conn, "SELECT tenant_id FROM placement_notes WHERE note = 'new of C'"); got != tenantC.ID {
			t.Fatalf("C's new row has tenant %q", got)
		}

		placed := map[string]string{}
		for _, s := range p.srv.Sessions() {
			placed[s.Tenant] = s.Upstream
		}
		if want := map[string]string{tenantA.ID: "default", tenantB.ID: "default", tenantC.ID: "c_db"}; !maps.Equal(placed, want) {
			t.Errorf("sessions' upstreams %v, want %v", placed, want)
		}
		pools := p.srv.UpstreamPools()
		if !m.tx {
			if len(pools) != 0 {
				t.Errorf("session mode has pools: %+v", pools)
			}
			return
		}
		if len(pools) != 2 || pools[0].Upstream != "default" || pools[1].Upstream != "c_db" || pools[0].Open < 1 || pools[1].Open != 1 {
			t.Errorf("pools %+v, want default with A's and B's connections and c_db with C's one", pools)
		}
	})
}

// db_users may place a user's tenant (upstream, schema), and give the
// user a role, read-only and limits, as columns of its query: a user
// whose row names schema placement_s2 sees that schema's tables only, one
// whose row names upstream c_db sees that database, a read-only one cannot
// write, and a limit from the row is asserted and protected. An upstream
// the config lacks is refused at login.
func TestDatabaseUsersPlacement(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		schemas, database := schemaTenants(t), databaseTenant(t)
		superExec(t, demo.Database, dbUsersSQL+`
DROP TABLE IF EXISTS placement_users;
CREATE TABLE placement_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL,
    upstream text, schema text, role text, read_only boolean, statement_timeout int);
GRANT SELECT ON placement_users TO pgtenant_lookup;`)
		t.Cleanup(func() { superExec(t, demo.Database, "DROP TABLE IF EXISTS placement_users") })
		verifier, err := auth.NewVerifier("pw")
		if err != nil {
			t.Fatal(err)
		}
		superExec(t, demo.Database, fmt.Sprintf(`INSERT INTO placement_users VALUES
    ('in_schema', '%[1]s', '%[2]s', NULL, 'placement_s2', 'placement_r2', NULL, 1234),
    ('in_database', '%[1]s', 'ee', 'c_db', NULL, NULL, true, NULL),
    ('nowhere', '%[1]s', 'ff', 'mars', NULL, NULL, NULL, NULL)`, verifier, tenantB.ID))
		p := m.start(t, schemas, database, func(c *config.Config) {
			c.DBUsers = &config.DBUsers{
				Connection: pgcluster.Shared().URL("pgtenant_lookup", "lookup_pw", demo.Database),
				Query:      "SELECT verifier, tenant, upstream, schema, role, read_only, statement_timeout FROM placement_users WHERE name = $1",
				Limits:     []string{"statement_timeout"},
			}
		})
		user := func(name string) demo.Tenant { return demo.Tenant{User: name, Password: "pw"} }

		s := p.pgconnect(t, user("in_schema"))
		if got := queryRows(t, s, "SELECT current_user, current_setting('app.tenant_id'), current_setting('statement_timeout'), note FROM placement_notes"); len(got) != 1 ||
			!slices.Equal(got[0], []string{"placement_r2", tenantB.ID, "1234ms", "secret of s2"}) {
			t.Fatalf("in_schema sees %v", got)
		}
		for _, sql := range []string{"SET search_path TO placement_s1", "SET statement_timeout = 0", "SELECT note FROM placement_s1.placement_notes"} {
			if err := execErr(s, sql); pgCode(err) != "42501" {
				t.Errorf("in_schema: %s: %v, want 42501", sql, err)
			}
		}

		d := p.pgconnect(t, user("in_database"))
		if got := queryRows(t, d, "SELECT current_database(), current_setting('app.tenant_id'), count(*) FROM placement_notes"); len(got) != 1 ||
			!slices.Equal(got[0], []string{placementDB, "ee", "1"}) {
			t.Fatalf("in_database sees %v", got)
		}
		if err := execErr(d, "INSERT INTO placement_notes VALUES ('"+tenantC.ID+"', 'x')"); pgCode(err) != "25006" {
			t.Errorf("read-only user's INSERT: %v, want 25006", err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, p.connString(user("nowhere")))
		if err == nil {
			c.Close(context.Background())
		}
		if pgCode(err) != "08004" || !strings.Contains(err.Error(), `upstream "mars", which the configuration does not have`) {
			t.Errorf("user placed on an unknown upstream: %v, want FATAL 08004", err)
		}
	})
}

// A reload (SIGHUP) changes placements for new sessions, while other
// tenants, in every layout, run transactions without a pause on their
// sessions and open new ones: tenant A moves from the shared tables to a
// schema, then to a database on the second cluster (an upstream the same
// reload adds), then back; C from the default upstream to a database of
// its own and back. Sessions in progress keep the placement they started
// with; no other tenant sees an error or a transaction out of place.
func TestReloadPlacement(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		// Each place holds a note naming it ("secret of <name>").
		aShared := sharedTenant(tenantA)
		aSchema := as(newPlacedTenant(t, 31, "acme_schema", layoutSchema), tenantA)
		aRemote := as(newPlacedTenant(t, 32, "acme_remote", layoutRemote), tenantA)
		cShared := as(sharedTenant(demo.Tenant{Name: "initech_shared"}), tenantC)
		cOwn := as(newPlacedTenant(t, 33, "initech_own", layoutDatabase), tenantC)
		workers := []placedTenant{sharedTenant(tenantB), newPlacedTenant(t, 34, "hooli", layoutSchema), newPlacedTenant(t, 35, "soylent", layoutRemote)}
		placeTenants(t, append([]placedTenant{aSchema, aRemote, cOwn}, workers...)...)
		setupNotes(t, append([]placedTenant{aShared, aSchema, aRemote, cShared, cOwn}, workers...))

		users := []demo.Tenant{tenantA, tenantC}
		for _, w := range workers {
			users = append(users, w.Tenant)
		}
		layoutYAML := func(a, c placedTenant) string {
			return m.yaml() + placementYAML(append([]placedTenant{a, c}, workers...)...)
		}
		rp := startBinary(t, layoutYAML(aShared, cShared), users...)
		connect := func(tn demo.Tenant) *pgconn.PgConn {
			t.Helper()
			c, err := rp.connect(tn)
			if err != nil {
				t.Fatalf("connect as %s: %v", tn.User, err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			return c
		}
		load := startPlacedLoad(t, rp, workers)
		reload := func(a, c placedTenant) {
			t.Helper()
			writeConfig(t, rp.config, "127.0.0.1:"+rp.port, layoutYAML(a, c), users...)
			if out, err := exec.Command(buildBinary(t), "reload", "--pid-file", rp.pidFile).CombinedOutput(); err != nil {
				t.Fatalf("pgtenant reload: %v\n%s", err, out)
			}
			// A session that started before the reload applied (SIGHUP is
			// asynchronous) may be ended by it (session mode, its upstream
			// removed): not yet.
			eventually(t, 5*time.Second, "A's and C's new sessions to go to their new places", func() bool {
				return newSessionPlacedAt(rp, tenantA, a) && newSessionPlacedAt(rp, tenantC, c)
			})
			load.progressed(t)
		}
		oldA, oldC := connect(tenantA), connect(tenantC)
		if err := placedAt(t, oldC, cShared); err != "" {
			t.Fatal(err)
		}

		reload(aSchema, cOwn)
		if err := placedAt(t, oldA, aShared); err != "" {
			t.Fatalf("A's session from before the reload: %s", err)
		}
		if err := placedAt(t, oldC, cShared); err != "" {
			t.Fatalf("C's session from before the reload: %s", err)
		}
		reload(aRemote, cOwn)
		if got := queryOne(t, connect(tenantA), "SELECT inet_server_port()"); got != fmt.Sprint(second(t).Port) {
			t.Fatalf("A on the second cluster is served by port %s, want %d", got, second(t).Port)
		}
		reload(aShared, cShared)
		if err := placedAt(t, oldA, aShared); err != "" {
			t.Fatalf("A's session from before the reloads: %s", err)
		}
		load.stop(t)
	})
}

// as is pt's place, with tenant tn in it (pt's name stays: its note).
func as(pt placedTenant, tn demo.Tenant) placedTenant {
	pt.Tenant = demo.Tenant{ID: tn.ID, Name: pt.Name, User: tn.User, Password: tn.Password}
	return pt
}

// placedAt says how conn's next transaction is not in pt's place: its
// tenant, database, role and note ("" when it is).
// newSessionPlacedAt reports whether a new session of tn runs where pt
// is; a failure to connect or query is a no.
func newSessionPlacedAt(rp *runningProxy, tn demo.Tenant, pt placedTenant) bool {
	conn, err := rp.connect(tn)
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, "SELECT "+whereSQL+", (SELECT string_agg(note, ',') FROM pl_notes)").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 2 {
		return false
	}
	row := res[0].Rows[0]
	return string(row[0]) == pt.ID+" "+pt.db+" "+pt.runsAs() && string(row[1]) == "secret of "+pt.Name
}

func placedAt(t *testing.T, conn *pgconn.PgConn, pt placedTenant) string {
	t.Helper()
	want := []string{pt.ID + " " + pt.db + " " + pt.runsAs(), "secret of " + pt.Name}
	got := queryRows(t, conn, "SELECT "+whereSQL+", (SELECT string_agg(note, ',') FROM pl_notes)")
	if len(got) == 1 && slices.Equal(got[0], want) {
		return ""
	}
	return fmt.Sprintf("runs at %q, want %q", got, want)
}

// placedLoad is tenants running transactions without a pause, each on a
// session of its own, and every fifth one on a new session, checking that
// every transaction runs in the tenant's place.
type placedLoad struct {
	done     chan struct{}
	wg       sync.WaitGroup
	sessions []atomic.Int64 // new sessions checked, per tenant
	txns     atomic.Int64
	failures atomic.Int64
}

func startPlacedLoad(t *testing.T, rp *runningProxy, tenants []placedTenant) *placedLoad {
	l := &placedLoad{done: make(chan struct{}), sessions: make([]atomic.Int64, len(tenants))}
	for i, pt := range tenants {
		l.wg.Go(func() { l.run(t, rp, pt, &l.sessions[i]) })
	}
	t.Cleanup(func() { l.stop(t) })
	return l
}

func (l *placedLoad) run(t *testing.T, rp *runningProxy, pt placedTenant, sessions *atomic.Int64) {
	fail := func(format string, args ...any) {
		l.failures.Add(1)
		t.Errorf("%s (%s): %s", pt.Name, pt.layout, fmt.Sprintf(format, args...))
	}
	own, err := rp.connect(pt.Tenant)
	if err != nil {
		fail("connect: %v", err)
		return
	}
	defer own.Close(context.Background())
	want := []string{pt.ID + " " + pt.db + " " + pt.runsAs(), "secret of " + pt.Name}
	check := func(conn *pgconn.PgConn) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := conn.Exec(ctx, "BEGIN; SELECT "+whereSQL+", (SELECT string_agg(note, ',') FROM pl_notes); COMMIT").ReadAll()
		if err == nil && len(res) == 3 && len(res[1].Rows) == 1 {
			got := []string{string(res[1].Rows[0][0]), string(res[1].Rows[0][1])}
			if !slices.Equal(got, want) {
				fail("a transaction runs at %q, want %q", got, want)
				return false
			}
			l.txns.Add(1)
			return true
		}
		fail("a transaction: %v", err)
		return false
	}
	for i := 0; ; i++ {
		select {
		case <-l.done:
			return
		default:
		}
		if i%5 != 4 {
			if !check(own) {
				return
			}
			continue
		}
		conn, err := rp.connect(pt.Tenant)
		if err != nil {
			fail("a new session: %v", err)
			return
		}
		ok := check(conn)
		conn.Close(context.Background())
		if !ok {
			return
		}
		sessions.Add(1)
	}
}

// progressed waits until every tenant of the load has checked two new
// sessions more, so that each reload is followed by sessions that started
// under it.
func (l *placedLoad) progressed(t *testing.T) {
	t.Helper()
	from := make([]int64, len(l.sessions))
	for i := range l.sessions {
		from[i] = l.sessions[i].Load()
	}
	eventually(t, 10*time.Second, "the load's new sessions", func() bool {
		for i := range l.sessions {
			if l.sessions[i].Load() < from[i]+2 {
				return l.failures.Load() != 0
			}
		}
		return true
	})
	if l.failures.Load() != 0 {
		t.FailNow()
	}
}

// stop ends the load (idempotent) and reports what it ran.
func (l *placedLoad) stop(t *testing.T) {
	select {
	case <-l.done:
		return
	default:
	}
	close(l.done)
	l.wg.Wait()
	t.Logf("load: %d transactions, %d failures", l.txns.Load(), l.failures.Load())
}

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// The two-cluster placement fixture: tenants in every layout at once, on
// the shared cluster and on a second one, placed from the config or from
// db_users. Tests put their own tables in each tenant's place.

// secondCluster is a second PostgreSQL cluster, for tenants whose database
// lives on another server. It starts on the first test that needs it (a
// start costs seconds) and RunMain stops it after the tests. Its login
// role is the shared cluster's (demo.RLSRole, NOINHERIT), as a fleet's
// would be.
var secondCluster = pgcluster.NewLazy(pgcluster.Options{}, func(c *pgcluster.Cluster) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Exec(ctx, "postgres", fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT",
		demo.RLSRole, demo.RLSPassword))
})

// second returns the second cluster, started if need be.
func second(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	c, err := secondCluster.Get()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// layout is how a tenant of the fixture is isolated.
type layout string

const (
	layoutShared   layout = "shared"   // shared tables with RLS, in demo.Database
	layoutSchema   layout = "schema"   // a schema and role of its own, in demo.Database
	layoutDatabase layout = "database" // a database of its own on the shared cluster
	layoutRemote   layout = "remote"   // a database of its own on the second cluster
)

// placedTenant is a tenant of the fixture and where it lives.
type placedTenant struct {
	demo.Tenant
	layout  layout
	cluster *pgcluster.Cluster
	db      string // its database on cluster
	schema  string // layoutSchema: its schema
	role    string // layoutSchema: its role
}

// upstream is the name of the tenant's upstream: its database's, or the
// default one.
func (pt placedTenant) upstream() string {
	if pt.db == demo.Database {
		return config.DefaultUpstream
	}
	return pt.db
}

// runsAs is the role the tenant's sessions run as.
func (pt placedTenant) runsAs() string {
	if pt.role != "" {
		return pt.role
	}
	return demo.RLSRole
}

// qualify is table's name in the tenant's schema (or public).
func (pt placedTenant) qualify(table string) string {
	if pt.schema != "" {
		return pt.schema + "." + table
	}
	return "public." + table
}

// exec runs sql as superuser in the tenant's database, with search_path
// set to its schema when it has one (so unqualified names land there).
func (pt placedTenant) exec(t testing.TB, sql string) {
	t.Helper()
	if pt.schema != "" {
		sql = "SET search_path TO " + pt.schema + ";\n" + sql
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pt.cluster.Exec(ctx, pt.db, sql); err != nil {
		t.Fatalf("as superuser in %s: %v", pt.db, err)
	}
}

// query runs one query as superuser in the tenant's database.
func (pt placedTenant) query(t *testing.T, sql string) [][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, pt.cluster.SuperURL(pt.db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return queryRows(t, conn, sql)
}

// newPlacedTenant is tenant n (1, 2, ...) of the fixture, named name, in
// layout: its user is pl_<name>, its schema pl_s<n> and role pl_r<n>, or
// its database pl_<name>.
func newPlacedTenant(t testing.TB, n int, name string, l layout) placedTenant {
	pt := placedTenant{
		Tenant:  demo.Tenant{ID: fmt.Sprintf("00000000-0000-4000-8000-%012d", n), Name: name, User: "pl_" + name, Password: "pw_" + name},
		layout:  l,
		cluster: pgcluster.Shared(),
		db:      demo.Database,
	}
	switch l {
	case layoutSchema:
		pt.schema, pt.role = fmt.Sprintf("pl_s%d", n), fmt.Sprintf("pl_r%d", n)
	case layoutDatabase:
		pt.db = "pl_" + name
	case layoutRemote:
		pt.db, pt.cluster = "pl_"+name, second(t)
	}
	return pt
}

// sharedTenant is a demo tenant (A or B) of the fixture: shared tables.
func sharedTenant(tn demo.Tenant) placedTenant {
	return placedTenant{Tenant: tn, layout: layoutShared, cluster: pgcluster.Shared(), db: demo.Database}
}

// placeTenants creates each tenant's place and drops it when the test
// ends: a schema tenant's role (NOLOGIN, owning nothing, the login role a
// member of it) with USAGE on its schema only, a database tenant's
// database. Shared tenants need nothing.
func placeTenants(t *testing.T, tenants ...placedTenant) {
	t.Helper()
	for _, pt := range tenants {
		drop := ""
		switch pt.layout {
		case layoutSchema:
			drop = fmt.Sprintf("DROP SCHEMA IF EXISTS %[1]s CASCADE; DROP ROLE IF EXISTS %[2]s", pt.schema, pt.role)
			superExec(t, demo.Database, drop)
			superExec(t, demo.Database, fmt.Sprintf(`CREATE ROLE %[2]s NOLOGIN; GRANT %[2]s TO %[3]s;
CREATE SCHEMA %[1]s; GRANT USAGE ON SCHEMA %[1]s TO %[2]s`, pt.schema, pt.role, demo.RLSRole))
		case layoutDatabase, layoutRemote:
			drop = "DROP DATABASE IF EXISTS " + pt.db + " WITH (FORCE)"
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			for _, sql := range []string{drop, "CREATE DATABASE " + pt.db} {
				if err := pt.cluster.Exec(ctx, "postgres", sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			cancel()
		default:
			continue
		}
		t.Cleanup(func() {
			db := "postgres"
			if pt.layout == layoutSchema {
				db = demo.Database
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := pt.cluster.Exec(ctx, db, drop); err != nil {
				t.Errorf("%s: %v", drop, err)
			}
		})
	}
}

// placementUpstreams are the upstreams the tenants' databases need.
func placementUpstreams(tenants []placedTenant) []config.Upstream {
	var ups []config.Upstream
	for _, pt := range tenants {
		if pt.upstream() != config.DefaultUpstream {
			ups = append(ups, config.Upstream{Name: pt.upstream(), URL: pt.cluster.URL(demo.RLSRole, demo.RLSPassword, pt.db)})
		}
	}
	return ups
}

// placement is the tenant's placement as a tenants entry.
func (pt placedTenant) placement() config.TenantLimits {
	l := config.TenantLimits{Schema: pt.schema, Role: pt.role}
	if pt.upstream() != config.DefaultUpstream {
		l.Upstream = pt.upstream()
	}
	return l
}

// placedInConfig configures the tenants as users, their databases as
// upstreams and their placements as tenants entries.
func placedInConfig(tenants ...placedTenant) func(*config.Config) {
	return func(c *config.Config) {
		c.Upstreams = append(c.Upstreams, placementUpstreams(tenants)...)
		if c.Tenants == nil {
			c.Tenants = map[string]config.TenantLimits{}
		}
		for _, pt := range tenants {
			// The demo tenants are users already (proxyConfig).
			if !slices.ContainsFunc(c.Users, func(u config.User) bool { return u.Name == pt.User }) {
				c.Users = append(c.Users, config.User{Name: pt.User, Password: pt.Password, Tenant: pt.ID})
			}
			c.Tenants[pt.ID] = pt.placement()
		}
	}
}

// placedInDBUsers makes db_users the only source of users: a row per
// tenant naming its upstream, schema and role (NULL for the default
// upstream and shared tables). The config lists the upstreams only.
func placedInDBUsers(t *testing.T, tenants ...placedTenant) func(*config.Config) {
	t.Helper()
	verifier, err := auth.NewVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	null := func(s string) string {
		if s == "" || s == config.DefaultUpstream {
			return "NULL"
		}
		return "'" + s + "'"
	}
	var rows []string
	for _, pt := range tenants {
		// The password is the same for every row: the verifier is costly to make.
		rows = append(rows, fmt.Sprintf("('%s', '%s', '%s', %s, %s, %s)", pt.User, verifier, pt.ID, null(pt.upstream()), null(pt.schema), null(pt.role)))
	}
	superExec(t, demo.Database, dbUsersSQL+`
DROP TABLE IF EXISTS pl_users;
CREATE TABLE pl_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL, upstream text, schema text, role text);
GRANT SELECT ON pl_users TO pgtenant_lookup;
INSERT INTO pl_users VALUES `+strings.Join(rows, ",\n  "))
	t.Cleanup(func() { superExec(t, demo.Database, "DROP TABLE IF EXISTS pl_users") })
	return func(c *config.Config) {
		c.Users = nil
		c.Upstreams = append(c.Upstreams, placementUpstreams(tenants)...)
		c.DBUsers = &config.DBUsers{
			Connection: pgcluster.Shared().URL("pgtenant_lookup", "lookup_pw", demo.Database),
			Query:      "SELECT verifier, tenant, upstream, schema, role FROM pl_users WHERE name = $1",
		}
	}
}

// dbUsersPassword is every db_users row's password (placedInDBUsers).
const dbUsersPassword = "pw"

// placementSources are where placements come from, for tests that run
// with each: the config's tenants entries, or db_users rows.
var placementSources = []struct {
	name string
	// place configures the tenants; login is the credentials they use.
	place func(t *testing.T, tenants ...placedTenant) func(*config.Config)
	login func(pt placedTenant) demo.Tenant
}{
	{"config", func(_ *testing.T, tenants ...placedTenant) func(*config.Config) { return placedInConfig(tenants...) },
		func(pt placedTenant) demo.Tenant { return pt.Tenant }},
	{"db_users", placedInDBUsers,
		func(pt placedTenant) demo.Tenant { tn := pt.Tenant; tn.Password = dbUsersPassword; return tn }},
}

// placementYAML is the tenants' upstreams and placements as config lines,
// for the pgtenant binary.
func placementYAML(tenants ...placedTenant) string {
	var b strings.Builder
	if ups := placementUpstreams(tenants); len(ups) > 0 {
		b.WriteString("upstreams:\n")
		for _, u := range ups {
			fmt.Fprintf(&b, "  - {name: %s, url: %q}\n", u.Name, u.URL)
		}
	}
	b.WriteString("tenants:\n")
	for _, pt := range tenants {
		p := pt.placement()
		fmt.Fprintf(&b, "  %q: {upstream: %q, schema: %q, role: %q}\n", pt.ID, p.Upstream, p.Schema, p.Role)
	}
	return b.String()
}

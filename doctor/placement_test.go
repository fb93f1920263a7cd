package doctor

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

const (
	tenant1 = "11111111-1111-1111-1111-111111111111"
	tenant2 = "22222222-2222-2222-2222-222222222222"
	tenant3 = "33333333-3333-3333-3333-333333333333"
	tenant4 = "44444444-4444-4444-4444-444444444444"
	tenant5 = "55555555-5555-5555-5555-555555555555"
)

func TestTargets(t *testing.T) {
	tests := []struct {
		desc    string
		cfg     config.Config
		tenants []string // from users
		placed  []Tenant // from db_users rows
		want    []string // "upstream/kind/tenant ids"
	}{
		{desc: "upstream only", want: []string{"default/shared tables/"}},
		{desc: "users in shared tables", tenants: []string{tenant1, tenant2},
			want: []string{"default/shared tables/" + tenant1 + "," + tenant2}},
		{
			desc: "all three placements",
			cfg: config.Config{
				Upstreams: []config.Upstream{{Name: "eu", URL: "postgres://eu/db"}, {Name: "spare", URL: "postgres://spare/db"}},
				Tenants: map[string]config.TenantLimits{
					tenant3: {Schema: "s3", Role: "r3"},
					tenant4: {Upstream: "eu"},
					tenant5: {Upstream: "eu", Schema: "s5", Role: "r5"},
				},
			},
			tenants: []string{tenant1, tenant4},
			want: []string{
				"default/shared tables/" + tenant1,
				"default/schema per tenant/" + tenant3,
				"eu/database per tenant/" + tenant4,
				"eu/schema per tenant/" + tenant5,
				"spare/database per tenant/",
			},
		},
		{
			desc: "only schemas on the default upstream",
			cfg:  config.Config{Tenants: map[string]config.TenantLimits{tenant3: {Schema: "s3", Role: "r3"}}},
			want: []string{"default/schema per tenant/" + tenant3},
		},
		{
			desc: "db_users: unknown tenants share the default upstream's tables",
			cfg:  config.Config{DBUsers: &config.DBUsers{}, Tenants: map[string]config.TenantLimits{tenant3: {Schema: "s3", Role: "r3"}}},
			want: []string{"default/shared tables/", "default/schema per tenant/" + tenant3},
		},
		{
			desc:   "db_users rows place tenants over the config",
			cfg:    config.Config{DBUsers: &config.DBUsers{}, Upstreams: []config.Upstream{{Name: "eu", URL: "postgres://eu/db"}}},
			placed: []Tenant{{ID: tenant4, Upstream: "eu"}, {ID: tenant5, Schema: "s5", Role: "r5"}, {ID: tenant1}},
			want:   []string{"default/shared tables/" + tenant1, "default/schema per tenant/" + tenant5, "eu/database per tenant/" + tenant4},
		},
		{
			desc: "several tenants on another upstream share its tables",
			cfg: config.Config{
				Upstreams: []config.Upstream{{Name: "eu", URL: "postgres://eu/db"}},
				Tenants:   map[string]config.TenantLimits{tenant4: {Upstream: "eu"}, tenant5: {Upstream: "eu"}},
			},
			tenants: []string{tenant1},
			want:    []string{"default/shared tables/" + tenant1, "eu/shared tables/" + tenant4 + "," + tenant5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Upstream = "postgres://db/app"
			var tenants []Tenant
			for i, id := range tt.tenants {
				tenants = append(tenants, Tenant{ID: id, Source: fmt.Sprintf("users[%d]", i)})
			}
			tenants = append(tenants, tt.placed...)
			var got []string
			for _, tg := range Targets(&cfg, tenants) {
				var ids []string
				for _, tn := range tg.Tenants {
					ids = append(ids, tn.ID)
				}
				for _, s := range tg.Schemas {
					ids = append(ids, s.ID)
				}
				got = append(got, tg.Upstream+"/"+tg.Kind+"/"+strings.Join(ids, ","))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// The demo's three placements, configured as `pgtenant demo` configures
// them, are clean.
func TestDemoPlacementsAreClean(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	cfg := &config.Config{
		Upstream:  c.URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		Upstreams: []config.Upstream{{Name: demo.UpstreamD, URL: c.URL(demo.RLSRole, demo.RLSPassword, demo.DatabaseD)}},
		Tenants: map[string]config.TenantLimits{
			demo.TenantC.ID: {Schema: demo.SchemaC, Role: demo.RoleC},
			demo.TenantD.ID: {Upstream: demo.UpstreamD},
		},
	}
	users := []Tenant{{ID: demo.TenantA.ID}, {ID: demo.TenantB.ID}, {ID: demo.TenantC.ID}, {ID: demo.TenantD.ID}}
	targets := Targets(cfg, users)
	if len(targets) != 3 {
		t.Fatalf("%d targets, want 3: %+v", len(targets), targets)
	}
	reports, err := Check(testutil.Context(t), targets, 10*time.Second, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reports {
		t.Log(r.Target.Label())
		if len(r.Findings) != 0 {
			t.Errorf("%s:\n%s", r.Target.Label(), dump(r.Findings))
		}
	}
}

// placementSchema is a database with all three placements. Run in the
// default upstream's database: %[1]s is the database, %[2]s the login
// role; the tenant roles are %[2]s_r1 and %[2]s_r2, in schemas s1 and s2,
// and the login role is a NOINHERIT member of both.
const placementSchema = `
CREATE ROLE %[2]s LOGIN PASSWORD 'pw' NOSUPERUSER NOBYPASSRLS NOINHERIT;` + itemsSchema + `
CREATE ROLE %[2]s_r1 NOLOGIN;
CREATE ROLE %[2]s_r2 NOLOGIN;
GRANT %[2]s_r1, %[2]s_r2 TO %[2]s;
CREATE SCHEMA s1;
CREATE SCHEMA s2;
GRANT USAGE ON SCHEMA s1 TO %[2]s_r1;
GRANT USAGE ON SCHEMA s2 TO %[2]s_r2;
CREATE TABLE s1.notes (note text NOT NULL);
CREATE TABLE s2.notes (note text NOT NULL);
GRANT SELECT, INSERT ON s1.notes TO %[2]s_r1;
GRANT SELECT, INSERT ON s2.notes TO %[2]s_r2;
INSERT INTO s1.notes VALUES ('of tenant 3');
INSERT INTO s2.notes VALUES ('of tenant 4');
`

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// Each placement's problems are reported under it: a config with tenants
// in shared tables (tenant 1), in schemas s1 and s2 (tenants 3 and 4, as
// roles r1 and r2) and in a database of its own (tenant 5, upstream "d"),
// broken one way at a time.
func TestPlacementProblems(t *testing.T) {
	testutil.NoLeaks(t)
	tests := []struct {
		name string
		// sql runs in the default upstream's database, sqlD in tenant 5's,
		// after the set-up; {login}, {r1} and {r2} are the roles.
		sql, sqlD string
		config    func(t *testing.T, c *config.Config)
		// want: "upstream/kind/check/object/problem substring".
		want []string
	}{
		{name: "clean"},
		{
			name: "usage_on_other_schema",
			sql:  `GRANT USAGE ON SCHEMA s2 TO {r1};`,
			want: []string{"default/schema per tenant/schema-access/s2/is tenant " + tenant4 + "'s, but tenant " + tenant3 + "'s role {r1} has USAGE"},
		},
		{
			name: "usage_through_public",
			sql:  `GRANT USAGE ON SCHEMA s1 TO PUBLIC;`,
			want: []string{
				"default/schema per tenant/schema-access/s1/the login role {login} has USAGE on it",
				"default/schema per tenant/schema-access/s1/is tenant " + tenant3 + "'s, but tenant " + tenant4 + "'s role {r2} has USAGE",
			},
		},
		{
			name: "create_on_other_schema",
			sql:  `GRANT CREATE ON SCHEMA s1 TO {r2};`,
			want: []string{"default/schema per tenant/schema-access/s1/has CREATE"},
		},
		{
			name: "no_usage_on_own_schema",
			sql:  `REVOKE USAGE ON SCHEMA s2 FROM {r2};`,
			want: []string{"default/schema per tenant/schema-access/s2/role {r2} has no USAGE on it"},
		},
		{
			name: "tenant_role_owns_table",
			sql:  `ALTER TABLE s1.notes OWNER TO {r1};`,
			want: []string{"default/schema per tenant/ownership/role {r1}/owns table s1.notes"},
		},
		{
			name: "tenant_role_owns_schema_and_function",
			sql: `ALTER SCHEMA s2 OWNER TO {r2};
				CREATE FUNCTION s2.f(int) RETURNS int LANGUAGE sql AS 'SELECT 1';
				ALTER FUNCTION s2.f(int) OWNER TO {r2};`,
			want: []string{"default/schema per tenant/ownership/role {r2}/owns function s2.f(integer), schema s2"},
		},
		{
			name: "inheriting_login_role",
			sql:  `ALTER ROLE {login} INHERIT;`,
			want: []string{"default/schema per tenant/login-role/role {login}/inherits the privileges of {r1}, {r2}"},
		},
		{
			name: "login_role_not_member",
			sql:  `REVOKE {r2} FROM {login};`,
			want: []string{"default/schema per tenant/login-role/role {login}/is not a member of {r2}"},
		},
		{
			name: "tenant_role_bypassrls",
			sql:  `ALTER ROLE {r1} BYPASSRLS;`,
			// The login role of the other placements can SET ROLE to it.
			want: []string{
				"default/shared tables/role/role {login}/SET ROLE {r1} escapes row-level security",
				"default/schema per tenant/tenant-role/role {r1}/has BYPASSRLS",
				"d/database per tenant/role/role {login}/SET ROLE {r1} escapes row-level security",
			},
		},
		{
			name: "missing_role_and_schema",
			config: func(_ *testing.T, c *config.Config) {
				c.Tenants[tenant4] = config.TenantLimits{Schema: "s9", Role: "no_such_role"}
			},
			want: []string{
				`default/schema per tenant/tenant-role/role "no_such_role"/does not exist`,
				`default/schema per tenant/schema-access/schema "s9"/does not exist`,
			},
		},
		{
			name: "shared_schema",
			config: func(_ *testing.T, c *config.Config) {
				c.Tenants[tenant4] = config.TenantLimits{Schema: "s1", Role: c.Tenants[tenant4].Role}
			},
			want: []string{
				"default/schema per tenant/schema-access/s1/is the placement of tenants " + tenant3 + " and " + tenant4,
				"default/schema per tenant/schema-access/s1/role {r2} has no USAGE on it",
			},
		},
		{
			name: "database_placement_without_rls",
			sqlD: `ALTER TABLE items DISABLE ROW LEVEL SECURITY;`,
			want: []string{"d/database per tenant/rls/public.items/row-level security is not enabled"},
		},
		{
			name: "shared_tables_not_forced",
			sql:  `ALTER TABLE items NO FORCE ROW LEVEL SECURITY;`,
			want: []string{"default/shared tables/rls/public.items/not forced"},
		},
		{
			name: "unreachable_upstream",
			config: func(t *testing.T, c *config.Config) {
				c.Upstreams = append(c.Upstreams, config.Upstream{Name: "gone", URL: fmt.Sprintf("postgres://x:y@127.0.0.1:%d/app?sslmode=disable", closedPort(t))})
				c.Tenants[tenant2] = config.TenantLimits{Upstream: "gone"}
			},
			want: []string{"gone/database per tenant/reachable/upstream gone/cannot be reached"},
		},
	}
	c := pgcluster.Shared()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testutil.Context(t)
			db, login := "pl_"+tt.name, "pl_"+tt.name
			dbD := db + "_d"
			repl := strings.NewReplacer("{login}", login, "{r1}", login+"_r1", "{r2}", login+"_r2")
			resetPlacement(ctx, t, c, login, db, dbD)
			if err := c.Exec(ctx, db, fmt.Sprintf(placementSchema, db, login)+repl.Replace(tt.sql)); err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, dbD, fmt.Sprintf(itemsSchema, dbD, login)+fmt.Sprintf("GRANT CONNECT ON DATABASE %s TO %s;", dbD, login)+tt.sqlD); err != nil {
				t.Fatal(err)
			}
			cfg := &config.Config{
				Upstream:  c.URL(login, "pw", db),
				Upstreams: []config.Upstream{{Name: "d", URL: c.URL(login, "pw", dbD)}},
				Tenants: map[string]config.TenantLimits{
					tenant3: {Schema: "s1", Role: login + "_r1"},
					tenant4: {Schema: "s2", Role: login + "_r2"},
					tenant5: {Upstream: "d"},
				},
			}
			if tt.config != nil {
				tt.config(t, cfg)
			}
			reports, err := Check(ctx, Targets(cfg, []Tenant{{ID: tenant1, Source: "users[0]"}}), 5*time.Second, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var findings []Finding
			for _, r := range reports {
				for _, f := range r.Findings {
					if f.Upstream != r.Target.Upstream || f.Placement != r.Target.Kind {
						t.Errorf("finding %+v in the report of %s", f, r.Target.Label())
					}
					got = append(got, strings.Join([]string{f.Upstream, f.Placement, f.Check, f.Object}, "/"))
					findings = append(findings, f)
				}
			}
			var want []string
			for _, w := range tt.want {
				parts := strings.SplitN(repl.Replace(w), "/", 5)
				want = append(want, strings.Join(parts[:4], "/"))
			}
			// Objects of existing schemas come quoted by quote_ident.
			if !slices.Equal(got, fixObjects(want)) {
				t.Fatalf("got  %q\nwant %q\n%s", got, fixObjects(want), dump(findings))
			}
			for i, w := range tt.want {
				if sub := strings.SplitN(repl.Replace(w), "/", 5)[4]; !strings.Contains(findings[i].Problem, sub) {
					t.Errorf("%s: problem %q does not contain %q", got[i], findings[i].Problem, sub)
				}
				if findings[i].Fix == "" {
					t.Errorf("%s: no fix", got[i])
				}
			}
			if !t.Failed() && len(findings) > 0 {
				t.Logf("\n%s", dump(findings))
			}
		})
	}
}

// fixObjects writes a bare schema name in want ("s1") as the object it
// is reported as ("schema s1").
func fixObjects(want []string) []string {
	out := slices.Clone(want)
	for i, w := range out {
		parts := strings.Split(w, "/")
		if parts[2] == CheckSchemaAccess && !strings.HasPrefix(parts[3], "schema ") {
			parts[3] = "schema " + parts[3]
		}
		out[i] = strings.Join(parts, "/")
	}
	return out
}

// resetPlacement drops what an earlier run left (go test -count=N reuses
// the cluster) and creates the two databases.
func resetPlacement(ctx context.Context, t *testing.T, c *pgcluster.Cluster, login, db, dbD string) {
	t.Helper()
	for _, d := range []string{db, dbD} {
		if err := c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+d+" WITH (FORCE)"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Exec(ctx, "postgres", fmt.Sprintf(`DO $$
		DECLARE r name;
		BEGIN
			FOR r IN SELECT rolname FROM pg_roles WHERE rolname = '%[1]s' OR rolname LIKE '%[1]s\_r_' ORDER BY rolname DESC LOOP
				EXECUTE format('DROP ROLE %%I', r);
			END LOOP;
		END $$`, login)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{db, dbD} {
		if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+d); err != nil {
			t.Fatal(err)
		}
	}
}

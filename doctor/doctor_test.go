package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

func TestMain(m *testing.M) {
	pgcluster.RunMain(m, pgcluster.Options{}, func(c *pgcluster.Cluster) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := demo.Setup(ctx, c); err != nil {
			return err
		}
		return demo.SetupPlacements(ctx, c)
	})
}

func connect(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(testutil.Context(t), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestDemoSchemaIsClean(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	conn := connect(t, c.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	findings, err := Run(testutil.Context(t), conn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(findings) != 0 {
		t.Fatalf("want no findings for the demo schema, got:\n%s", dump(findings))
	}
	// The connection is still usable and idle: every probe was rolled back.
	if st := conn.TxStatus(); st != 'I' {
		t.Fatalf("transaction status %q after Run", st)
	}
	// A second run on the same session (the setting's placeholder now
	// exists, empty) finds nothing either.
	if findings, err := Run(testutil.Context(t), conn, Options{}); err != nil || len(findings) != 0 {
		t.Fatalf("second run: %v\n%s", err, dump(findings))
	}
}

func TestSuperuserConnectionIsReported(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	conn := connect(t, c.SuperURL(demo.Database))
	findings, err := Run(testutil.Context(t), conn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"role/role postgres"}
	if got := keys(findings); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v\n%s", got, want, dump(findings))
	}
}

// baseSchema is a clean database: one RLS table with a forced, fail-closed
// policy and an index, rows of two tenants, and a role with SELECT only.
// %[1]s is the database, %[2]s the role.
const baseSchema = `
CREATE ROLE %[2]s LOGIN PASSWORD 'pw' NOSUPERUSER NOBYPASSRLS;` + itemsSchema

// itemsSchema is baseSchema without the role.
const itemsSchema = `
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE %[1]s FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO %[2]s;
CREATE TABLE items (
    id        serial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    name      text NOT NULL
);
CREATE INDEX items_tenant_id_idx ON items (tenant_id);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
ALTER TABLE items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON items USING (tenant_id = current_setting('app.tenant_id')::uuid);
GRANT SELECT ON items TO %[2]s;
CREATE TABLE lookup (code text PRIMARY KEY);
GRANT SELECT ON lookup TO %[2]s;
INSERT INTO lookup VALUES ('a'), ('b');
INSERT INTO items (tenant_id, name) VALUES
    ('11111111-1111-1111-1111-111111111111', 'a1'),
    ('11111111-1111-1111-1111-111111111111', 'a2'),
    ('22222222-2222-2222-2222-222222222222', 'b1');
`

func TestBadSchemas(t *testing.T) {
	testutil.NoLeaks(t)
	tests := []struct {
		name string
		// sql runs after baseSchema; %[1]s is the database, %[2]s the role.
		sql  string
		opts Options
		// want holds "check/object" keys, or "check/object/problem substring".
		want []string
	}{
		{name: "clean"},
		{
			name: "rls_disabled",
			sql: `CREATE TABLE orders (id int, tenant_id uuid);
				CREATE INDEX ON orders (tenant_id);
				GRANT SELECT ON orders TO %[2]s;`,
			want: []string{"rls/public.orders/row-level security is not enabled"},
		},
		{
			name: "rls_not_forced",
			sql:  `ALTER TABLE items NO FORCE ROW LEVEL SECURITY;`,
			want: []string{"rls/public.items/not forced"},
		},
		{
			name: "bypassrls",
			sql:  `ALTER ROLE %[2]s BYPASSRLS;`,
			want: []string{"role/role doc_bypassrls/BYPASSRLS"},
		},
		{
			name: "superuser",
			sql:  `ALTER ROLE %[2]s SUPERUSER;`,
			want: []string{"role/role doc_superuser/superuser"},
		},
		{
			name: "member_of_bypassrls_role",
			sql: `CREATE ROLE doc_member_of_bypassrls_role_priv NOLOGIN BYPASSRLS;
				GRANT doc_member_of_bypassrls_role_priv TO %[2]s;`,
			want: []string{"role/role doc_member_of_bypassrls_role/SET ROLE doc_member_of_bypassrls_role_priv"},
		},
		{
			name: "owns_table",
			sql:  `ALTER TABLE items OWNER TO %[2]s;`,
			want: []string{"role/public.items/owned by doc_owns_table"},
		},
		{
			name: "member_of_owner",
			sql: `CREATE ROLE doc_member_of_owner_owner NOLOGIN;
				ALTER TABLE items OWNER TO doc_member_of_owner_owner;
				GRANT doc_member_of_owner_owner TO %[2]s;`,
			want: []string{"role/public.items/owned by doc_member_of_owner_owner"},
		},
		{
			name: "create_on_schema",
			sql: `CREATE SCHEMA scratch;
				GRANT USAGE, CREATE ON SCHEMA scratch TO %[2]s;`,
			want: []string{"privileges/schema scratch/CREATE"},
		},
		{
			name: "create_on_public_via_public",
			sql:  `GRANT CREATE ON SCHEMA public TO PUBLIC;`,
			want: []string{"privileges/schema public/CREATE"},
		},
		{
			name: "temp_on_database",
			sql:  `GRANT TEMPORARY ON DATABASE %[1]s TO %[2]s;`,
			want: []string{"privileges/database doc_temp_on_database/TEMP"},
		},
		{
			name: "security_definer",
			sql: `CREATE FUNCTION peek(t uuid) RETURNS bigint LANGUAGE sql SECURITY DEFINER
					AS 'SELECT count(*) FROM items WHERE tenant_id = t';
				CREATE FUNCTION current_tenant() RETURNS uuid LANGUAGE sql SECURITY DEFINER
					AS $$SELECT current_setting('app.tenant_id')::uuid$$;
				CREATE FUNCTION invoker() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM items';
				CREATE FUNCTION locked() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM items';
				REVOKE EXECUTE ON FUNCTION locked() FROM PUBLIC;`,
			opts: Options{AllowedDefinerFunctions: []string{"public.current_tenant()", "no_such_function(int)"}},
			want: []string{"security-definer/public.peek(t uuid)/SECURITY DEFINER"},
		},
		{
			name: "views",
			sql: `CREATE VIEW all_items AS SELECT * FROM items;
				CREATE VIEW my_items WITH (security_invoker = true) AS SELECT * FROM items;
				CREATE VIEW over_invoker AS SELECT * FROM my_items;
				CREATE VIEW hidden AS SELECT * FROM items;
				CREATE VIEW codes AS SELECT * FROM lookup;
				CREATE MATERIALIZED VIEW items_mv AS SELECT * FROM items;
				GRANT SELECT ON all_items, my_items, over_invoker, codes, items_mv TO %[2]s;`,
			want: []string{
				"views/public.all_items/without security_invoker",
				"views/public.items_mv/materialized view",
				"views/public.over_invoker/public.items",
			},
		},
		{
			name: "leaks_when_missing",
			sql: `DROP POLICY tenant_isolation ON items;
				CREATE POLICY tenant_isolation ON items USING (
					tenant_id::text = current_setting('app.tenant_id', true)
					OR current_setting('app.tenant_id', true) IS NULL);`,
			want: []string{"fail-closed/public.items/is never set ("},
		},
		{
			name: "leaks_when_empty",
			sql: `DROP POLICY tenant_isolation ON items;
				CREATE POLICY tenant_isolation ON items USING (
					tenant_id::text = current_setting('app.tenant_id', true)
					OR current_setting('app.tenant_id', true) = '');`,
			want: []string{"fail-closed/public.items/is empty ("},
		},
		{
			name: "leaks_always",
			sql:  `CREATE POLICY everything ON items USING (true);`,
			want: []string{"fail-closed/public.items/never set, empty or a tenant id that owns no rows"},
		},
		{
			name: "setting_preset_for_role",
			sql:  `ALTER ROLE %[2]s IN DATABASE %[1]s SET app.tenant_id = '11111111-1111-1111-1111-111111111111';`,
			want: []string{"fail-closed/setting app.tenant_id/already has the value"},
		},
		{
			name: "missing_index",
			sql:  `DROP INDEX items_tenant_id_idx;`,
			want: []string{"index/public.items/leading column"},
		},
		{
			name: "index_not_leading",
			sql: `DROP INDEX items_tenant_id_idx;
				CREATE INDEX ON items (name, tenant_id);`,
			want: []string{"index/public.items/leading column"},
		},
		{
			name: "custom_setting_and_integer_column",
			sql: `CREATE TABLE accounts (id serial, org_id int NOT NULL);
				CREATE INDEX ON accounts (org_id);
				ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
				ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
				CREATE POLICY org ON accounts USING (org_id = coalesce(nullif(current_setting('myapp.org', true), '')::int, org_id));
				GRANT SELECT ON accounts TO %[2]s;
				INSERT INTO accounts (org_id) VALUES (1), (2);`,
			opts: Options{TenantSetting: "myapp.org", TenantColumn: "org_id"},
			want: []string{"fail-closed/public.accounts/myapp.org is never set or empty ("},
		},
		{
			name: "tenant_ids_valid",
			opts: Options{Tenants: []Tenant{{ID: "11111111-1111-1111-1111-111111111111", Source: "users[0]"}}},
		},
		{
			name: "tenant_id_not_uuid",
			opts: Options{Tenants: []Tenant{
				{ID: "11111111-1111-1111-1111-111111111111", Source: `users[0] ("a")`},
				{ID: "acme", Source: `users[1] ("b")`},
			}},
			want: []string{`tenant-type/tenant 'acme' (users[1] ("b"))/is not a valid uuid (invalid input syntax for type uuid: "acme"), but policy tenant_isolation on public.items casts app.tenant_id to uuid`},
		},
		{
			name: "uuid_cast_through_nullif",
			sql: `CREATE TABLE orders (id int, tenant_id uuid);
				CREATE INDEX ON orders (tenant_id);
				ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
				ALTER TABLE orders FORCE ROW LEVEL SECURITY;
				CREATE POLICY own ON orders USING (tenant_id = nullif(current_setting('APP.TENANT_ID', true), '')::uuid)
					WITH CHECK (tenant_id = pg_catalog.current_setting('app.tenant_id')::uuid);
				GRANT SELECT ON orders TO %[2]s;`,
			opts: Options{Tenants: []Tenant{{ID: "acme", Source: "db_users"}}},
			want: []string{"tenant-type/tenant 'acme' (db_users)/policies tenant_isolation on public.items, own on public.orders cast app.tenant_id to uuid: every query of this tenant on public.items, public.orders fails"},
		},
		{
			name: "tenant_id_not_integer",
			sql: `CREATE TABLE accounts (id serial, org_id int NOT NULL);
				CREATE INDEX ON accounts (org_id);
				ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
				ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
				CREATE POLICY org ON accounts USING (org_id = current_setting('myapp.org')::int);
				GRANT SELECT ON accounts TO %[2]s;
				INSERT INTO accounts (org_id) VALUES (1), (2);`,
			opts: Options{TenantSetting: "myapp.org", TenantColumn: "org_id", Tenants: []Tenant{
				{ID: "1", Source: "users[0]"},
				{ID: "acme", Source: "users[1]"},
				{ID: "99999999999", Source: "users[2]"},
				// A uuid is fine: items casts app.tenant_id, not myapp.org.
				{ID: "11111111-1111-1111-1111-111111111111", Source: "users[3]"},
			}},
			want: []string{
				`tenant-type/tenant '11111111-1111-1111-1111-111111111111' (users[3])/is not a valid integer`,
				`tenant-type/tenant '99999999999' (users[2])/out of range for type integer`,
				`tenant-type/tenant 'acme' (users[1])/is not a valid integer (invalid input syntax for type integer: "acme"), but policy org on public.accounts casts myapp.org to integer`,
			},
		},
		{
			name: "several_problems",
			sql: `ALTER TABLE items DISABLE ROW LEVEL SECURITY;
				DROP INDEX items_tenant_id_idx;
				GRANT TEMPORARY ON DATABASE %[1]s TO %[2]s;`,
			want: []string{
				"rls/public.items/not enabled",
				"privileges/database doc_several_problems",
				"index/public.items",
			},
		},
	}
	c := pgcluster.Shared()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testutil.Context(t)
			db, role := "doc_"+tt.name, "doc_"+tt.name
			// Start afresh (go test -count=N reuses the cluster): the
			// database, the role and the test's helper roles (role_*).
			if err := c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, "postgres", fmt.Sprintf(`DO $$
				DECLARE r name;
				BEGIN
					FOR r IN SELECT rolname FROM pg_roles WHERE rolname = '%[1]s' OR rolname LIKE '%[1]s\_%%' ORDER BY rolname DESC LOOP
						EXECUTE format('DROP ROLE %%I', r);
					END LOOP;
				END $$`, role)); err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, db, fmt.Sprintf(baseSchema+tt.sql, db, role)); err != nil {
				t.Fatal(err)
			}
			conn := connect(t, c.URL(role, "pw", db))
			findings, err := Run(ctx, conn, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var wantKeys []string
			for _, w := range tt.want {
				parts := strings.SplitN(w, "/", 3)
				wantKeys = append(wantKeys, parts[0]+"/"+parts[1])
			}
			if got := keys(findings); !slices.Equal(got, wantKeys) {
				t.Fatalf("got %v, want %v\n%s", got, wantKeys, dump(findings))
			}
			for i, w := range tt.want {
				f := findings[i]
				if parts := strings.SplitN(w, "/", 3); len(parts) == 3 && !strings.Contains(f.Problem, parts[2]) {
					t.Errorf("%s %s: problem %q does not contain %q", f.Check, f.Object, f.Problem, parts[2])
				}
				if f.Fix == "" {
					t.Errorf("%s %s: no fix", f.Check, f.Object)
				}
			}
			if !t.Failed() {
				t.Logf("\n%s", dump(findings))
			}
		})
	}
}

// keys are the findings' "check/object", in report order.
func keys(findings []Finding) []string {
	var out []string
	for _, f := range findings {
		out = append(out, f.Check+"/"+f.Object)
	}
	return out
}

func dump(findings []Finding) string {
	var b strings.Builder
	for _, f := range findings {
		fmt.Fprintf(&b, "  [%s] %s: %s\n      fix: %s\n", f.Check, f.Object, f.Problem, f.Fix)
	}
	return b.String()
}

func TestTextArray(t *testing.T) {
	got := textArray([]string{`a`, `b"c`, `d\e`, ``})
	want := `{"a","b\"c","d\\e",""}`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

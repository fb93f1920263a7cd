package doctor

import (
	"slices"
	"strings"
	"testing"
)

func TestCastTypes(t *testing.T) {
	tests := []struct {
		desc string
		expr string // as pg_get_expr prints it, or as written
		want []string
	}{
		{"pg_get_expr uuid", "(tenant_id = (current_setting('app.tenant_id'::text))::uuid)", []string{"uuid"}},
		{"pg_get_expr integer", "(org_id = (current_setting('app.tenant_id'::text))::integer)", []string{"int"}},
		{"missing_ok", "(tenant_id = (current_setting('app.tenant_id'::text, true))::uuid)", []string{"uuid"}},
		{"qualified function", "tenant_id = pg_catalog.current_setting('app.tenant_id')::bigint", []string{"bigint"}},
		{"setting names ignore case", "tenant_id = current_setting('App.Tenant_ID')::uuid", []string{"uuid"}},
		{"nullif", "(tenant_id = (NULLIF(current_setting('app.tenant_id'::text, true), ''::text))::uuid)", []string{"uuid"}},
		{"coalesce", "org_id = coalesce(current_setting('app.tenant_id', true), '0')::int", []string{"int"}},
		{"through text", "tenant_id = current_setting('app.tenant_id')::text::uuid", []string{"uuid", "text"}},
		{"typmod", "code = current_setting('app.tenant_id')::varchar(8)", []string{"varchar(8)"}},
		{"CAST syntax", "tenant_id = CAST(current_setting('app.tenant_id') AS uuid)", []string{"uuid"}},
		{"two casts", "a = current_setting('app.tenant_id')::uuid OR b = current_setting('app.tenant_id')::int", []string{"uuid", "int"}},
		{"other setting", "tenant_id = current_setting('app.user_id')::uuid", nil},
		{"no cast", "tenant = current_setting('app.tenant_id')", nil},
		{"cast of something else", "tenant_id = lower(current_setting('app.tenant_id'))::uuid", nil},
		{"a function of the setting", "tenant_id = (SELECT pgtenant.current_tenant())", nil},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := castTypes(tt.expr, "app.tenant_id")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("castTypes(%q) = %q, want %q", tt.expr, got, tt.want)
			}
		})
	}
}

func TestSampleSQL(t *testing.T) {
	tests := []struct {
		desc  string
		query string
		want  string // the SQL, or the start of the error
	}{
		{"typical", "SELECT verifier, tenant::text FROM pgtenant_users WHERE name = $1",
			"SELECT verifier, tenant::text FROM pgtenant_users LIMIT 20"},
		{"more conditions and a limit", "SELECT v, t FROM u WHERE name = $1 AND NOT disabled LIMIT 1",
			"SELECT v, t FROM u LIMIT 20"},
		{"join", "SELECT u.v, o.tenant FROM u JOIN orgs o ON o.id = u.org WHERE u.name = $1",
			"SELECT u.v, o.tenant FROM u JOIN orgs o ON o.id = u.org LIMIT 20"},
		{"function", "SELECT * FROM lookup_user($1)", "error: db_users.query uses $1 outside"},
		{"no FROM", "SELECT 'x', 'y' WHERE $1 = 'a'", "error: db_users.query is not a plain SELECT"},
		{"union", "SELECT v, t FROM a WHERE n = $1 UNION SELECT v, t FROM b WHERE n = $1", "error: db_users.query is not a plain SELECT"},
		{"two statements", "SELECT 1; SELECT 2", "error: db_users.query is not one statement"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := sampleSQL(tt.query, 20)
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("sampleSQL(%q) = %q, want %q", tt.query, got, tt.want)
			}
		})
	}
}

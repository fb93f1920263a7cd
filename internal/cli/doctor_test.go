package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgtenant/pgtenant/doctor"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// badDatabase has one table with a tenant column and no row-level security
// and no index on it.
const badDatabase = "doctor_bad"

func TestMain(m *testing.M) {
	pgcluster.RunMain(m, pgcluster.Options{}, func(c *pgcluster.Cluster) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := demo.Setup(ctx, c); err != nil {
			return err
		}
		if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+badDatabase); err != nil {
			return err
		}
		return c.Exec(ctx, badDatabase, fmt.Sprintf(`
REVOKE TEMPORARY ON DATABASE %s FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO %s;
CREATE TABLE orders (id int, tenant_id uuid);
GRANT SELECT ON orders TO %[2]s;`, badDatabase, demo.RLSRole))
	})
}

func TestDoctor(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	c := pgcluster.Shared()
	clean := c.URL(demo.RLSRole, demo.RLSPassword, demo.Database)
	bad := c.URL(demo.RLSRole, demo.RLSPassword, badDatabase)

	configFile := filepath.Join(t.TempDir(), "pgtenant.yaml")
	cfg := fmt.Sprintf("upstream: %q\ntenant_setting: app.tenant_id\nusers:\n  - {name: u, password: p, tenant: %s}\n", bad, demo.TenantA.ID)
	if err := os.WriteFile(configFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	// Tenant ids the demo's uuid policies refuse: one in users, one in db_users.
	setupTenantTypes(t)
	tenantsFile := filepath.Join(t.TempDir(), "tenants.yaml")
	tenantsCfg := fmt.Sprintf("upstream: %q\nusers:\n  - {name: a, password: p, tenant: %s}\n  - {name: acme_app, password: p, tenant: acme}\n"+
		"db_users: {connection: %q, query: 'SELECT verifier, tenant FROM cli_text_users WHERE name = $1'}\n",
		clean, demo.TenantA.ID, c.URL("cli_lookup", "cli_lookup_pw", demo.Database))
	if err := os.WriteFile(tenantsFile, []byte(tenantsCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// An upstream nothing listens on, with tenant B placed there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := fmt.Sprintf("postgres://x:y@%s/app?sslmode=disable", ln.Addr())
	ln.Close()
	placementsFile := filepath.Join(t.TempDir(), "placements.yaml")
	placementsCfg := fmt.Sprintf("upstream: %q\nupstreams: [{name: gone, url: %q}]\ntenants: {%s: {upstream: gone}}\nusers:\n  - {name: a, password: p, tenant: %s}\n",
		clean, gone, demo.TenantB.ID, demo.TenantA.ID)
	if err := os.WriteFile(placementsFile, []byte(placementsCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The same placement, from a db_users row's upstream column.
	rowsFile := filepath.Join(t.TempDir(), "rows.yaml")
	rowsCfg := fmt.Sprintf("upstream: %q\nupstreams: [{name: gone, url: %q}]\nusers:\n  - {name: a, password: p, tenant: %s}\n"+
		"db_users: {connection: %q, query: 'SELECT verifier, tenant, upstream FROM cli_placed_users WHERE name = $1'}\n",
		clean, gone, demo.TenantA.ID, c.URL("cli_lookup", "cli_lookup_pw", demo.Database))
	if err := os.WriteFile(rowsFile, []byte(rowsCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc   string
		args   []string
		code   int
		stdout []string // substrings
		stderr string
	}{
		{"tenant ids", []string{"--config", tenantsFile}, 1, []string{
			"tenant-type:\n",
			`tenant 'acme' (users[1] ("acme_app")): is not a valid uuid (invalid input syntax for type uuid: "acme"), but policies tenant_isolation on public.projects, tenant_isolation on public.tenants cast app.tenant_id to uuid`,
			"tenant 'globex' (db_users): is not a valid uuid",
			"2 problems found",
		}, ""},
		{"clean", []string{"--upstream", clean}, 0, []string{"no problems found"}, ""},
		{"bad", []string{"--upstream", bad}, 1, []string{"upstream default, shared tables:\n  rls:\n    public.orders: ", "index:\n    public.orders: ", "fix: CREATE INDEX ON public.orders (tenant_id);", "2 problems found"}, ""},
		{"config", []string{"--config", configFile}, 1, []string{"public.orders", "2 problems found"}, ""},
		{"upstream overrides config", []string{"--config", configFile, "--upstream", clean}, 0, []string{"no problems found"}, ""},
		{"other tenant column", []string{"--upstream", bad, "--tenant-column", "org_id"}, 0, []string{"no problems found"}, ""},
		{"no upstream", nil, 2, nil, "--upstream or --config is required"},
		{"extra argument", []string{"--upstream", clean, "extra"}, 2, nil, `unexpected argument "extra"`},
		{"bad flag", []string{"--frobnicate"}, 2, nil, "flag provided but not defined"},
		{"bad conn string", []string{"--upstream", "postgres://%zz"}, 2, nil, "pgtenant doctor: upstream:"},
		{"wrong password", []string{"--upstream", c.URL(demo.RLSRole, "wrong", demo.Database)}, 1, []string{
			"upstream default, shared tables:\n  reachable:\n    upstream default: cannot be reached (", "password authentication failed", "1 problem found"}, ""},
		{"placements", []string{"--config", placementsFile}, 1, []string{
			"upstream default, shared tables (tenant " + demo.TenantA.ID + "):\n  no problems\n",
			"upstream gone, database per tenant (tenant " + demo.TenantB.ID + "):\n  reachable:\n    upstream gone: cannot be reached (",
			"1 problem found"}, ""},
		{"placements from db_users rows", []string{"--config", rowsFile}, 1, []string{
			"upstream default, shared tables (tenant " + demo.TenantA.ID + "):\n  no problems\n",
			"upstream gone, database per tenant (tenant " + demo.TenantB.ID + "):\n  reachable:\n    upstream gone: cannot be reached (",
			"1 problem found"}, ""},
		{"missing config", []string{"--config", "/nonexistent/pgtenant.yaml"}, 2, nil, "nonexistent"},
		{"help", []string{"--help"}, 0, []string{"usage: pgtenant doctor"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(append([]string{"doctor"}, tt.args...), strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout does not contain %q:\n%s", s, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr does not contain %q:\n%s", tt.stderr, stderr.String())
			}
			if tt.code != 2 && stderr.Len() != 0 {
				t.Errorf("unexpected stderr: %s", stderr.String())
			}
		})
	}
}

func TestDoctorJSON(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	c := pgcluster.Shared()

	var stdout, stderr bytes.Buffer
	if code := Main([]string{"doctor", "--json", "--upstream", c.URL(demo.RLSRole, demo.RLSPassword, demo.Database)}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("clean: exit %d: %s%s", code, stdout.String(), stderr.String())
	}
	if got := strings.TrimSpace(stdout.String()); got != "[]" {
		t.Fatalf("clean: got %q, want []", got)
	}

	stdout.Reset()
	if code := Main([]string{"doctor", "--json", "--upstream", c.URL(demo.RLSRole, demo.RLSPassword, badDatabase)}, strings.NewReader(""), &stdout, &stderr); code != 1 {
		t.Fatalf("bad: exit %d: %s%s", code, stdout.String(), stderr.String())
	}
	var findings []doctor.Finding
	if err := json.Unmarshal(stdout.Bytes(), &findings); err != nil {
		t.Fatalf("%v:\n%s", err, stdout.String())
	}
	var got []string
	for _, f := range findings {
		got = append(got, f.Check+" "+f.Object)
		if f.Problem == "" || f.Fix == "" {
			t.Errorf("finding without problem or fix: %+v", f)
		}
	}
	want := []string{"rls public.orders", "index public.orders"}
	if f := findings[0]; f.Upstream != "default" || f.Placement != doctor.PlacementShared {
		t.Errorf("finding of upstream %q placement %q", f.Upstream, f.Placement)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v\n%s", got, want, stdout.String())
	}
	// The keys are the documented ones.
	var raw []map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for k := range raw[0] {
		if k != "check" && k != "object" && k != "problem" && k != "fix" && k != "upstream" && k != "placement" {
			t.Errorf("unexpected JSON key %q", k)
		}
	}
}

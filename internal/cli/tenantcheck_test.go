package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// intDatabase has a policy that casts its tenant setting, myapp.org, to
// integer (the demo's cast app.tenant_id to uuid).
const intDatabase = "cli_int"

// setupTenantTypes creates intDatabase afresh and a db_users table whose
// tenants are text, one of them not a uuid.
func setupTenantTypes(t *testing.T) {
	t.Helper()
	c := pgcluster.Shared()
	ctx := testutil.Context(t)
	verifier, err := auth.NewVerifier("pw")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct{ db, sql string }{
		{"postgres", "DROP DATABASE IF EXISTS " + intDatabase + " WITH (FORCE)"},
		{"postgres", "CREATE DATABASE " + intDatabase},
		{intDatabase, fmt.Sprintf(`
GRANT CONNECT ON DATABASE %s TO %s;
GRANT USAGE ON SCHEMA public TO %[2]s;
CREATE TABLE accounts (id serial, org_id int NOT NULL);
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY org ON accounts USING (org_id = current_setting('myapp.org')::int);
GRANT SELECT ON accounts TO %[2]s;`, intDatabase, demo.RLSRole)},
		{demo.Database, startupLookupSQL + fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS cli_text_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL);
GRANT SELECT ON cli_text_users TO cli_lookup;
TRUNCATE cli_text_users;
INSERT INTO cli_text_users VALUES ('ok', '%[1]s', '%[2]s'), ('bad', '%[1]s', 'globex');
CREATE TABLE IF NOT EXISTS cli_placed_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL, upstream text);
GRANT SELECT ON cli_placed_users TO cli_lookup;
TRUNCATE cli_placed_users;
INSERT INTO cli_placed_users VALUES ('b', '%[1]s', '%[3]s', 'gone');`, verifier, demo.TenantA.ID, demo.TenantB.ID)},
	}
	for _, s := range steps {
		if err := c.Exec(ctx, s.db, s.sql); err != nil {
			t.Fatal(err)
		}
	}
}

// warning is the part of a tenant-type warning a test compares.
type warning struct{ Tenant, Users, Type string }

// tenantWarnings parses JSON log lines and returns the tenant-type
// warnings, and fails the test if one does not name its policies.
func tenantWarnings(t *testing.T, logs string) []warning {
	t.Helper()
	var out []warning
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || !strings.HasPrefix(fmt.Sprint(rec["msg"]), "tenant id is not a valid value") {
			continue
		}
		if rec["level"] != "WARN" || !strings.Contains(fmt.Sprint(rec["policies"]), " on public.") || rec["err"] == "" {
			t.Errorf("warning without its level, policies or error: %s", sc.Text())
		}
		out = append(out, warning{fmt.Sprint(rec["tenant"]), fmt.Sprint(rec["users"]), fmt.Sprint(rec["type"])})
	}
	return out
}

func TestTenantTypeWarnings(t *testing.T) {
	testutil.NoLeaks(t)
	setupTenantTypes(t)
	c := pgcluster.Shared()
	demoUpstream := c.URL(demo.RLSRole, demo.RLSPassword, demo.Database)
	dbUsers := &config.DBUsers{
		Connection: c.URL("cli_lookup", "cli_lookup_pw", demo.Database),
		Query:      "SELECT verifier, tenant FROM cli_text_users WHERE name = $1",
	}
	user := func(name, tenant string) config.User { return config.User{Name: name, Password: "pw", Tenant: tenant} }
	tests := []struct {
		desc     string
		upstream string
		setting  string
		users    []config.User
		dbUsers  *config.DBUsers
		want     []warning
	}{
		{
			desc: "uuid policies, valid tenants", upstream: demoUpstream,
			users: []config.User{user("a", demo.TenantA.ID), user("b", demo.TenantB.ID)},
		},
		{
			desc: "uuid policies, a name as tenant", upstream: demoUpstream,
			users: []config.User{user("a", demo.TenantA.ID), user("acme_app", "acme"), user("acme_bi", "acme")},
			want:  []warning{{"acme", `users[1] ("acme_app"), users[2] ("acme_bi")`, "uuid"}},
		},
		{
			desc: "integer policy", upstream: c.URL(demo.RLSRole, demo.RLSPassword, intDatabase), setting: "myapp.org",
			users: []config.User{user("a", "7"), user("b", "acme"), user("c", demo.TenantA.ID)},
			want: []warning{
				{"acme", `users[1] ("b")`, "integer"},
				{demo.TenantA.ID, `users[2] ("c")`, "integer"},
			},
		},
		{
			desc: "db_users sample", upstream: demoUpstream, dbUsers: dbUsers,
			want: []warning{{"globex", "db_users", "uuid"}},
		},
		{
			desc: "upstream down: a warning, no stop", upstream: "postgres://app_rls@127.0.0.1:1/app",
			users: []config.User{user("a", "acme")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := &config.Config{Listen: "127.0.0.1:0", Upstream: tt.upstream, TenantSetting: tt.setting,
				ConnectTimeout: config.Duration{Duration: 5 * time.Second}, LogLevel: "info", LogFormat: "json",
				Users: tt.users, DBUsers: tt.dbUsers}
			if cfg.TenantSetting == "" {
				cfg.TenantSetting = config.DefaultTenantSetting
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			warnTenantTypes(context.Background(), cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
			got := tenantWarnings(t, logs.String())
			if !slices.Equal(got, tt.want) {
				t.Fatalf("warnings %v, want %v\n%s", got, tt.want, logs.String())
			}
			if strings.Contains(tt.upstream, ":1/") && !strings.Contains(logs.String(), "could not check tenant ids against the policies") {
				t.Fatalf("no warning that the check could not run:\n%s", logs.String())
			}
		})
	}
}

// pgtenant --config warns at startup, and keeps running.
func TestStartupWarnsAboutTenantTypes(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	doc := fmt.Sprintf("listen: 127.0.0.1:0\nlog_format: json\nupstream: %q\nusers:\n  - {name: acme_app, password: pw, tenant: acme}\n",
		c.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	stderr := &testutil.SyncBuffer{}
	code := make(chan int, 1)
	go func() { code <- Main([]string{"--config", path}, strings.NewReader(""), &stdout, stderr) }()
	// SIGTERM only once serve is listening for it: "pgtenant listening"
	// is logged after signal.Notify.
	deadline := time.Now().Add(30 * time.Second)
	for !(strings.Contains(stderr.String(), "pgtenant listening") && len(tenantWarnings(t, stderr.String())) > 0) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning within 30s:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != 0 {
		t.Fatalf("exit %d:\n%s", c, stderr.String())
	}
	want := []warning{{"acme", `users[0] ("acme_app")`, "uuid"}}
	if got := tenantWarnings(t, stderr.String()); !slices.Equal(got, want) {
		t.Fatalf("warnings %v, want %v\n%s", got, want, stderr.String())
	}
}

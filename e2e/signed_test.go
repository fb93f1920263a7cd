package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/signedctx"
)

const signedTableSQL = `
CREATE TABLE IF NOT EXISTS signed_projects (tenant_id uuid NOT NULL, name text NOT NULL);
ALTER TABLE signed_projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE signed_projects FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS signed_isolation ON signed_projects;
CREATE POLICY signed_isolation ON signed_projects USING (tenant_id = (SELECT pgtenant.current_tenant()));
GRANT SELECT, INSERT ON signed_projects TO app_rls;
TRUNCATE signed_projects;
INSERT INTO signed_projects VALUES
  ('11111111-1111-1111-1111-111111111111', 'acme secret 1'),
  ('11111111-1111-1111-1111-111111111111', 'acme secret 2'),
  ('22222222-2222-2222-2222-222222222222', 'globex secret');
`

// With the signed context, a forged tenant id sees nothing, even for a client
// whose statements skip the guard.
func TestSignedContextRefusesForgery(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		key := strings.Repeat("5a", 32)
		keyBytes, err := signedctx.ParseKey(key)
		if err != nil {
			t.Fatal(err)
		}
		c := pgcluster.Shared()
		ctx := context.Background()
		if err := c.Exec(ctx, demo.Database, signedctx.SQL(demo.RLSRole, keyBytes, "app.tenant_id", "app.tenant_sig")); err != nil {
			t.Fatal(err)
		}
		if err := c.Exec(ctx, demo.Database, signedTableSQL); err != nil {
			t.Fatal(err)
		}
		// Tenant B forges the tenant id: in session mode with the guard off for
		// it (as if a statement slipped past the guard); in transaction mode,
		// which requires the guard, through a function that sets it, of which
		// the guard sees only the call (README, threat model).
		forge := "SET app.tenant_id = '" + tenantA.ID + "'"
		off := false
		p := m.start(t, func(cfg *config.Config) {
			cfg.SignedContext = &config.SignedContext{Key: key}
			for i := range cfg.Users {
				if cfg.Users[i].Name == tenantB.User && !m.tx {
					cfg.Users[i].Guard = &off
				}
			}
		})
		if m.tx {
			if err := c.Exec(ctx, demo.Database, `CREATE OR REPLACE FUNCTION signed_forge(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.tenant_id', t, false) $$`); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Exec(context.Background(), demo.Database, `DROP FUNCTION IF EXISTS signed_forge(text)`) })
			forge = "SELECT signed_forge('" + tenantA.ID + "')"
		}

		a := p.pgconnect(t, tenantA)
		if got := queryRows(t, a, "SELECT name FROM signed_projects ORDER BY name"); len(got) != 2 || got[0][0] != "acme secret 1" {
			t.Fatalf("tenant A through pgtenant sees %v, want its 2 rows", got)
		}
		// The signature setting is protected by the guard like the tenant setting.
		if _, err := a.Exec(ctx, "SET app.tenant_sig = 'x'").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("setting the signature: %v, want 42501", err)
		}

		b := p.pgconnect(t, tenantB)
		if got := queryRows(t, b, "SELECT name FROM signed_projects"); len(got) != 1 || got[0][0] != "globex secret" {
			t.Fatalf("tenant B sees %v", got)
		}
		rows := queryRows(t, b, forge+"; SELECT current_setting('app.tenant_id'), count(*) FROM signed_projects")
		if got := rows[len(rows)-1]; got[0] != tenantA.ID || got[1] != "0" {
			t.Fatalf("forged tenant id: %v, want the forged id set and 0 rows", rows)
		}

		// Straight to PostgreSQL with a forged id and a made-up signature: nothing.
		direct := directConnect(t, tenantA.ID)
		if n := queryOne(t, direct, "SET app.tenant_sig = '"+strings.Repeat("0", 64)+"'; SELECT count(*) FROM signed_projects"); n != "0" {
			t.Fatalf("forged signature sees %s rows", n)
		}
		// The tenant role cannot read the key.
		if _, err := direct.Exec(ctx, "SELECT * FROM pgtenant.signing_key").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("reading the key as the tenant role: %v, want 42501", err)
		}
	})
}

// Package demo installs the example schema of the README: a shared-schema,
// row-level-security database with two tenants. It is used by
// `pgtenant demo` and by end-to-end tests.
package demo

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

const (
	// Database is the upstream database holding the tenants' data.
	Database = "app"
	// RLSRole is the non-owner, non-superuser login role the proxy connects
	// as, so that row-level security applies to every query it forwards.
	RLSRole = "app_rls"
	// RLSPassword is RLSRole's password.
	RLSPassword = "app_rls_pw"
	// TenantSetting is the custom setting the RLS policies read.
	TenantSetting = "app.tenant_id"
)

// Tenant is one demo tenant. User and Password are the credentials a client
// presents to the proxy; they are not PostgreSQL roles.
type Tenant struct{ ID, Name, User, Password string }

var (
	TenantA = Tenant{ID: "11111111-1111-1111-1111-111111111111", Name: "acme", User: "acme_app", Password: "acme_pw"}
	TenantB = Tenant{ID: "22222222-2222-2222-2222-222222222222", Name: "globex", User: "globex_app", Password: "globex_pw"}
)

// Projects holds each demo tenant's project names, in insertion (id) order.
var Projects = map[string][]string{
	TenantA.ID: {"rocket sled", "anvil", "giant magnet"},
	TenantB.ID: {"hammock district", "doomsday device", "monorail"},
}

// Schema is the DDL run in Database, exposed so the README and demo output
// can show exactly what is installed. It is safe to run more than once.
const Schema = `
CREATE TABLE IF NOT EXISTS tenants (
    id   uuid PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id        serial PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants(id),
    name      text NOT NULL
);
CREATE INDEX IF NOT EXISTS projects_tenant_id_idx ON projects (tenant_id);

-- FORCE makes the policies bind the table owner too; only superusers and
-- BYPASSRLS roles escape them. A policy's USING also serves as WITH CHECK,
-- so writing another tenant's rows is refused as well.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON tenants;
CREATE POLICY tenant_isolation ON tenants USING (id = current_setting('app.tenant_id')::uuid);

ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON projects;
CREATE POLICY tenant_isolation ON projects USING (tenant_id = current_setting('app.tenant_id')::uuid);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_rls') THEN
        CREATE ROLE app_rls;
    END IF;
END
$$;
ALTER ROLE app_rls LOGIN PASSWORD 'app_rls_pw' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;

GRANT CONNECT ON DATABASE app TO app_rls;
GRANT USAGE ON SCHEMA public TO app_rls;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, projects TO app_rls;
GRANT USAGE ON SEQUENCE projects_id_seq TO app_rls;
-- Tenants must not be able to create objects that escape the policies.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE app FROM PUBLIC;
`

// Setup creates Database, the schema, RLSRole and the demo data in c. It is
// idempotent: running it again on the same cluster changes nothing.
func Setup(ctx context.Context, c *pgcluster.Cluster) error {
	// CREATE DATABASE cannot share an (implicit) transaction with anything.
	err := c.Exec(ctx, "postgres", "CREATE DATABASE "+Database+" OWNER "+pgcluster.SuperUser)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database
		return fmt.Errorf("demo: create database: %w", err)
	}
	if err := c.Exec(ctx, Database, Schema+seedSQL()); err != nil {
		return fmt.Errorf("demo: schema: %w", err)
	}
	return nil
}

// seedSQL inserts the demo rows unless present. The superuser bypasses RLS,
// so no tenant setting is needed here.
func seedSQL() string {
	var b strings.Builder
	for _, t := range []Tenant{TenantA, TenantB} {
		fmt.Fprintf(&b, "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING;\n",
			quote(t.ID), quote(t.Name))
		for _, p := range Projects[t.ID] {
			fmt.Fprintf(&b, "INSERT INTO projects (tenant_id, name) SELECT %[1]s, %[2]s WHERE NOT EXISTS (SELECT FROM projects WHERE tenant_id = %[1]s AND name = %[2]s);\n",
				quote(t.ID), quote(p))
		}
	}
	return b.String()
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Package demo installs the example schema of the README: a shared-schema,
// row-level-security database with two tenants (Setup), and beside it a
// tenant in a schema of its own and one in a database of its own
// (SetupPlacements). It is used by `pgtenant demo` and by tests.
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
	TenantC.ID: {"tps reports", "red stapler", "jump to conclusions mat"},
	TenantD.ID: {"t-virus", "the hive", "red queen"},
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

GRANT USAGE ON SCHEMA public TO app_rls;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, projects TO app_rls;
GRANT USAGE ON SEQUENCE projects_id_seq TO app_rls;
-- Tenants must not be able to create objects that escape the policies.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO app_rls', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
`

// Setup creates Database, the schema, RLSRole and the demo data in c. It is
// idempotent: running it again on the same cluster changes nothing.
func Setup(ctx context.Context, c *pgcluster.Cluster) error {
	if err := createDatabase(ctx, c, Database); err != nil {
		return err
	}
	if err := c.Exec(ctx, Database, Schema+seedSQL(TenantA, TenantB)); err != nil {
		return fmt.Errorf("demo: schema: %w", err)
	}
	return nil
}

// The demo's other placements (SetupPlacements): TenantC lives in a schema
// of its own in Database, as a role of its own; TenantD in a database of
// its own on the same cluster, pgtenant's upstream UpstreamD.
var (
	TenantC = Tenant{ID: "33333333-3333-3333-3333-333333333333", Name: "initech", User: "initech_app", Password: "initech_pw"}
	TenantD = Tenant{ID: "44444444-4444-4444-4444-444444444444", Name: "umbrella", User: "umbrella_app", Password: "umbrella_pw"}
)

const (
	SchemaC   = "tenant_initech" // TenantC's schema in Database
	RoleC     = "initech"        // TenantC's role, which RLSRole SETs ROLE to
	DatabaseD = "app_umbrella"   // TenantD's database
	UpstreamD = "umbrella"       // DatabaseD's upstream name in the demo's config
)

// SchemaPlacementSQL is the DDL of TenantC's schema, run in Database: the
// same projects table without a tenant column (the schema is the tenant),
// a role that reaches this schema only and owns nothing, and RLSRole a
// member of it. RLSRole is NOINHERIT (Schema), so the sessions that run as
// it, the shared tables' tenants, do not get the role's privileges.
const SchemaPlacementSQL = `
CREATE SCHEMA IF NOT EXISTS tenant_initech;
CREATE TABLE IF NOT EXISTS tenant_initech.projects (
    id   serial PRIMARY KEY,
    name text NOT NULL
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'initech') THEN
        CREATE ROLE initech;
    END IF;
END
$$;
ALTER ROLE initech NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
GRANT USAGE ON SCHEMA tenant_initech TO initech;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_initech.projects TO initech;
GRANT USAGE ON SEQUENCE tenant_initech.projects_id_seq TO initech;
GRANT initech TO app_rls;
`

// SetupPlacements installs TenantC's schema (after Setup) and TenantD's
// database, with the same Schema as Database, and their demo data. It is
// idempotent.
func SetupPlacements(ctx context.Context, c *pgcluster.Cluster) error {
	var seed strings.Builder
	for _, p := range Projects[TenantC.ID] {
		fmt.Fprintf(&seed, "INSERT INTO tenant_initech.projects (name) SELECT %[1]s WHERE NOT EXISTS (SELECT FROM tenant_initech.projects WHERE name = %[1]s);\n", quote(p))
	}
	if err := c.Exec(ctx, Database, SchemaPlacementSQL+seed.String()); err != nil {
		return fmt.Errorf("demo: %s's schema: %w", TenantC.Name, err)
	}
	if err := createDatabase(ctx, c, DatabaseD); err != nil {
		return err
	}
	if err := c.Exec(ctx, DatabaseD, Schema+seedSQL(TenantD)); err != nil {
		return fmt.Errorf("demo: %s's database: %w", TenantD.Name, err)
	}
	return nil
}

// createDatabase creates db, owned by the superuser, unless it exists.
func createDatabase(ctx context.Context, c *pgcluster.Cluster, db string) error {
	// CREATE DATABASE cannot share an (implicit) transaction with anything.
	err := c.Exec(ctx, "postgres", "CREATE DATABASE "+db+" OWNER "+pgcluster.SuperUser)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database
		return fmt.Errorf("demo: create database %s: %w", db, err)
	}
	return nil
}

// seedSQL inserts the tenants' demo rows unless present. The superuser
// bypasses RLS, so no tenant setting is needed here.
func seedSQL(tenants ...Tenant) string {
	var b strings.Builder
	for _, t := range tenants {
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

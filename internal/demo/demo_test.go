package demo

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	pgcluster.RunMain(m, pgcluster.Options{}, func(c *pgcluster.Cluster) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := Setup(ctx, c); err != nil {
			return err
		}
		return SetupPlacements(ctx, c)
	})
}

// connectRLS connects as the proxy's role, optionally as a tenant.
func connectRLS(ctx context.Context, t *testing.T, tenantID string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, pgcluster.Shared().URL(RLSRole, RLSPassword, Database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if tenantID != "" {
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", TenantSetting, tenantID); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

func projectNames(ctx context.Context, t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, _ := conn.Query(ctx, "SELECT name FROM projects ORDER BY id")
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func wantCode(t *testing.T, err error, code, what string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Errorf("%s: want SQLSTATE %s, got %v", what, code, err)
	}
}

func TestTenantSeesOnlyOwnRows(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	for _, tn := range []Tenant{TenantA, TenantB} {
		conn := connectRLS(ctx, t, tn.ID)
		if got := projectNames(ctx, t, conn); !slices.Equal(got, Projects[tn.ID]) {
			t.Errorf("%s sees projects %q, want %q", tn.Name, got, Projects[tn.ID])
		}
		rows, _ := conn.Query(ctx, "SELECT name FROM tenants")
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(names, []string{tn.Name}) {
			t.Errorf("%s sees tenants %q", tn.Name, names)
		}
		conn.Close(ctx)
	}
}

func TestWritesAreConfined(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	conn := connectRLS(ctx, t, TenantA.ID)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	// Own tenant: allowed (also proves sequence USAGE is granted).
	if _, err := tx.Exec(ctx, "INSERT INTO projects (tenant_id, name) VALUES ($1, 'tmp')", TenantA.ID); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	_, err = conn.Exec(ctx, "INSERT INTO projects (tenant_id, name) VALUES ($1, 'stolen')", TenantB.ID)
	wantCode(t, err, "42501", "insert for another tenant")

	// Other tenants' rows are invisible, so updates and deletes touch nothing.
	tag, err := conn.Exec(ctx, "UPDATE projects SET name = 'pwned' WHERE tenant_id = $1", TenantB.ID)
	if err != nil || tag.RowsAffected() != 0 {
		t.Errorf("update of B's rows as A: %v, %d rows", err, tag.RowsAffected())
	}
	// Moving an own row to another tenant violates the policy's check.
	_, err = conn.Exec(ctx, "UPDATE projects SET tenant_id = $1 WHERE name = 'anvil'", TenantB.ID)
	wantCode(t, err, "42501", "reassign row to another tenant")
	tag, err = conn.Exec(ctx, "DELETE FROM projects WHERE tenant_id = $1", TenantB.ID)
	if err != nil || tag.RowsAffected() != 0 {
		t.Errorf("delete of B's rows as A: %v, %d rows", err, tag.RowsAffected())
	}
}

func TestNoTenantSettingErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	conn := connectRLS(ctx, t, "")
	_, err := conn.Exec(ctx, "SELECT * FROM projects")
	wantCode(t, err, "42704", "select without app.tenant_id") // undefined_object
	_, err = conn.Exec(ctx, "SELECT * FROM tenants")
	wantCode(t, err, "42704", "select tenants without app.tenant_id")
}

func TestRoleCannotEscape(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	conn := connectRLS(ctx, t, TenantA.ID)

	_, err := conn.Exec(ctx, "CREATE TABLE mine (x int)")
	wantCode(t, err, "42501", "CREATE TABLE")
	_, err = conn.Exec(ctx, "CREATE TEMP TABLE mine (x int)")
	wantCode(t, err, "42501", "CREATE TEMP TABLE")
	_, err = conn.Exec(ctx, "ALTER TABLE projects DISABLE ROW LEVEL SECURITY")
	wantCode(t, err, "42501", "disable RLS")
	_, err = conn.Exec(ctx, "SET row_security = off; SELECT * FROM projects")
	wantCode(t, err, "42501", "row_security=off")

	var super, bypass, owner bool
	err = conn.QueryRow(ctx, `SELECT rolsuper, rolbypassrls,
		(SELECT tableowner = current_user FROM pg_tables WHERE schemaname = 'public' AND tablename = 'projects')
		FROM pg_roles WHERE rolname = current_user`).Scan(&super, &bypass, &owner)
	if err != nil {
		t.Fatal(err)
	}
	if super || bypass || owner {
		t.Errorf("app_rls: superuser=%v bypassrls=%v owner=%v", super, bypass, owner)
	}
}

func TestSetupIdempotent(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	if err := Setup(ctx, pgcluster.Shared()); err != nil {
		t.Fatal(err)
	}
	conn := connectRLS(ctx, t, TenantB.ID)
	if got := projectNames(ctx, t, conn); !slices.Equal(got, Projects[TenantB.ID]) {
		t.Errorf("after second Setup: %q", got)
	}
}

// The other placements, as pgtenant runs their sessions: tenant C as its
// role with search_path on its schema sees its projects, and neither the
// shared tables nor (as the login role) its schema; tenant D's database
// holds its rows only. SetupPlacements run again changes nothing.
func TestPlacements(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	if err := SetupPlacements(ctx, pgcluster.Shared()); err != nil {
		t.Fatal(err)
	}
	c := connectRLS(ctx, t, TenantC.ID)
	if _, err := c.Exec(ctx, "SELECT count(*) FROM "+SchemaC+".projects"); err == nil {
		t.Error("the login role reads tenant C's schema")
	} else {
		wantCode(t, err, "42501", "login role on C's schema")
	}
	if _, err := c.Exec(ctx, "SET search_path = "+SchemaC+"; SET ROLE "+RoleC); err != nil {
		t.Fatal(err)
	}
	if got := projectNames(ctx, t, c); !slices.Equal(got, Projects[TenantC.ID]) {
		t.Errorf("C sees %q", got)
	}
	_, err := c.Exec(ctx, "SELECT * FROM public.projects")
	wantCode(t, err, "42501", "C on the shared tables")

	d, err := pgx.Connect(ctx, pgcluster.Shared().URL(RLSRole, RLSPassword, DatabaseD))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Exec(ctx, "SELECT set_config($1, $2, false)", TenantSetting, TenantD.ID); err != nil {
		t.Fatal(err)
	}
	if got := projectNames(ctx, t, d); !slices.Equal(got, Projects[TenantD.ID]) {
		t.Errorf("D sees %q", got)
	}
	// As the superuser, whom no policy binds: D's rows are all there is.
	super, err := pgx.Connect(ctx, pgcluster.Shared().SuperURL(DatabaseD))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	var all int
	if err := super.QueryRow(ctx, "SELECT count(*) FROM projects").Scan(&all); err != nil || all != len(Projects[TenantD.ID]) {
		t.Errorf("D's database holds %d projects (%v), want only D's %d", all, err, len(Projects[TenantD.ID]))
	}
}

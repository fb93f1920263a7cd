package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// isolationTenants are tenants in every layout at once: the demo's two in
// the shared tables, two with a schema each, one with a database on the
// shared cluster and two with a database each on the second cluster.
func isolationTenants(t *testing.T) []placedTenant {
	return []placedTenant{
		sharedTenant(tenantA), sharedTenant(tenantB),
		newPlacedTenant(t, 1, "umbrella", layoutSchema), newPlacedTenant(t, 2, "hooli", layoutSchema),
		newPlacedTenant(t, 3, "initech", layoutDatabase),
		newPlacedTenant(t, 4, "vandelay", layoutRemote), newPlacedTenant(t, 5, "soylent", layoutRemote),
	}
}

// notesSQL is the pl_notes table every tenant has, under the same name in
// each place: its rows default to the session's tenant.
const notesSQL = `CREATE TABLE pl_notes (tenant_id uuid NOT NULL DEFAULT current_setting('app.tenant_id')::uuid, note text NOT NULL);
GRANT SELECT, INSERT, DELETE ON pl_notes TO %s;
`

// setupNotes gives every tenant a pl_notes with its secret: in the shared
// tables one table for all, under row-level security; elsewhere one of
// its own. Statistics are gathered, so that pg_stats has values to leak.
func setupNotes(t *testing.T, tenants []placedTenant) {
	t.Helper()
	var shared strings.Builder
	fmt.Fprintf(&shared, "DROP TABLE IF EXISTS pl_notes;\n"+notesSQL+`ALTER TABLE pl_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE pl_notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON pl_notes USING (tenant_id = current_setting('app.tenant_id')::uuid);
`, demo.RLSRole)
	for _, pt := range tenants {
		secret := fmt.Sprintf("INSERT INTO pl_notes VALUES ('%s', 'secret of %s');\n", pt.ID, pt.Name)
		if pt.layout == layoutShared {
			shared.WriteString(secret)
			continue
		}
		pt.exec(t, fmt.Sprintf(notesSQL, pt.runsAs())+secret+"ANALYZE pl_notes")
	}
	superExec(t, demo.Database, shared.String()+"ANALYZE pl_notes, projects, tenants")
	t.Cleanup(func() { superExec(t, demo.Database, "DROP TABLE IF EXISTS pl_notes") })
}

// Tenants in every layout at once, on two clusters, placed from the
// config and from db_users, in both pool modes (in transaction mode, the
// shared and schema tenants take turns on the default upstream's pooled
// connections): each sees exactly its own data and nothing of the
// others', neither by unqualified names, nor by another schema's name
// (PostgreSQL: 42501 permission denied for schema), nor by another
// database's (0A000 cross-database references), nor through the
// statistics; the catalog shows other schemas' names, not their rows.
// Rows each writes land in its own place, with its tenant.
func TestPlacementIsolation(t *testing.T) {
	tenants := isolationTenants(t)
	placeTenants(t, tenants...)
	setupNotes(t, tenants)
	for _, src := range placementSources {
		t.Run(src.name, func(t *testing.T) {
			place := src.place(t, tenants...)
			eachPoolMode(t, func(t *testing.T, m poolMode) {
				p := m.start(t, place)
				conns := make([]*pgconn.PgConn, len(tenants))
				for i, pt := range tenants {
					conns[i] = p.pgconnect(t, src.login(pt))
				}
				for round := range 2 {
					for i, x := range tenants {
						notes := []string{"secret of " + x.Name}
						if round == 1 {
							notes = slices.Insert(notes, 0, "new of "+x.Name)
						}
						checkPlacedContext(t, conns[i], x)
						checkOwnNotes(t, conns[i], x, notes...)
						for _, y := range tenants {
							if y.ID != x.ID {
								checkUnreachable(t, conns[i], x, y)
							}
						}
						checkCatalog(t, conns[i], x)
					}
					if round == 0 {
						for i, x := range tenants {
							queryRows(t, conns[i], "INSERT INTO pl_notes (note) VALUES ('new of "+x.Name+"')")
						}
					}
				}
				for i, x := range tenants {
					checkStored(t, x, tenants)
					queryRows(t, conns[i], "BEGIN; DELETE FROM pl_notes WHERE note LIKE 'new of %'; COMMIT")
				}
			})
		})
	}
}

// notes is the schema-qualified name of the tenant's pl_notes.
func (pt placedTenant) notes() string { return pt.qualify("pl_notes") }

// checkPlacedContext checks where x's session runs: its tenant, database,
// role and, in a schema, search_path.
func checkPlacedContext(t *testing.T, conn *pgconn.PgConn, x placedTenant) {
	t.Helper()
	got := queryRows(t, conn, "SELECT current_setting('app.tenant_id'), current_database(), current_user, current_setting('search_path')")[0]
	want := []string{x.ID, x.db, x.runsAs(), `"$user", public`}
	if x.schema != "" {
		want[3] = x.schema
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s (%s) runs as %q, want %q", x.Name, x.layout, got, want)
	}
}

// checkOwnNotes checks that x sees exactly notes, all its own, and for a
// demo tenant its own demo rows.
func checkOwnNotes(t *testing.T, conn *pgconn.PgConn, x placedTenant, notes ...string) {
	t.Helper()
	var got []string
	for _, r := range queryRows(t, conn, "SELECT tenant_id, note FROM pl_notes ORDER BY note") {
		if r[0] != x.ID {
			t.Errorf("%s (%s) sees a row of tenant %s: %q", x.Name, x.layout, r[0], r[1])
		}
		got = append(got, r[1])
	}
	if !slices.Equal(got, notes) {
		t.Fatalf("%s (%s) sees notes %q, want %q", x.Name, x.layout, got, notes)
	}
	if x.layout != layoutShared {
		return
	}
	if got := flat(queryRows(t, conn, "SELECT name FROM projects ORDER BY id")); !slices.Equal(got, demo.Projects[x.ID]) {
		t.Fatalf("%s sees projects %q, want %q", x.Name, got, demo.Projects[x.ID])
	}
	if got := flat(queryRows(t, conn, "SELECT name FROM tenants")); !slices.Equal(got, []string{x.Name}) {
		t.Fatalf("%s sees tenants %q", x.Name, got)
	}
}

// checkUnreachable checks that x cannot read y's notes by naming them:
// another database's names are refused by PostgreSQL (0A000); in the same
// database, another schema is refused by the lack of USAGE and the shared
// table by the lack of privilege (42501), or, between two shared tenants,
// shows x's own rows only (RLS).
func checkUnreachable(t *testing.T, conn *pgconn.PgConn, x, y placedTenant) {
	t.Helper()
	qualified := y.notes()
	names := []string{y.db + "." + qualified}
	sameDB := x.cluster == y.cluster && x.db == y.db
	if sameDB {
		names = append(names, qualified)
	}
	for _, name := range names {
		sql := "SELECT tenant_id, note FROM " + name
		err := execErr(conn, sql)
		var code, msg string
		switch {
		case !sameDB:
			code, msg = "0A000", "cross-database references are not implemented"
		case y.schema != "":
			code, msg = "42501", "permission denied for schema "+y.schema
		case x.schema != "":
			code, msg = "42501", "permission denied for table pl_notes"
		default: // both in the shared tables
			if err != nil {
				t.Errorf("%s: %s: %v", x.Name, sql, err)
			}
			for _, r := range queryRows(t, conn, sql) {
				if r[0] != x.ID {
					t.Errorf("%s (%s) reads %s's row %q by %s", x.Name, x.layout, y.Name, r[1], name)
				}
			}
			continue
		}
		if pgCode(err) != code || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s (%s): %s (%s's, %s): %v, want PostgreSQL's %s %s", x.Name, x.layout, sql, y.Name, y.layout, err, code, msg)
		}
	}
}

// checkCatalog checks what x learns from the catalog: the names of the
// schemas of its database (PostgreSQL shows them to everyone), and
// statistics (most common values, histograms) of its own tables only:
// pg_stats hides tables the role may not read and those under RLS.
func checkCatalog(t *testing.T, conn *pgconn.PgConn, x placedTenant) {
	t.Helper()
	schemas, stats := "pl_s1,pl_s2", ""
	switch x.layout {
	case layoutSchema:
		stats = x.schema + ".pl_notes"
	case layoutDatabase, layoutRemote:
		schemas, stats = "", "public.pl_notes"
	}
	got := queryRows(t, conn, `SELECT
  (SELECT coalesce(string_agg(nspname, ',' ORDER BY nspname), '') FROM pg_namespace WHERE nspname LIKE 'pl\_s%'),
  (SELECT coalesce(string_agg(DISTINCT schemaname || '.' || tablename, ','), '') FROM pg_stats WHERE tablename IN ('pl_notes', 'projects', 'tenants'))`)[0]
	if got[0] != schemas || got[1] != stats {
		t.Errorf("%s (%s): schemas %q and statistics of %q, want %q and %q", x.Name, x.layout, got[0], got[1], schemas, stats)
	}
}

// checkStored checks, as superuser, that every note in x's place was
// written by a tenant of that place, under its own tenant id.
func checkStored(t *testing.T, x placedTenant, tenants []placedTenant) {
	t.Helper()
	owner := map[string]placedTenant{}
	for _, pt := range tenants {
		owner[pt.Name] = pt
	}
	for _, r := range x.query(t, "SELECT tenant_id, note FROM "+x.notes()) {
		_, name, _ := strings.Cut(r[1], " of ")
		o := owner[name]
		if r[0] != o.ID || o.layout != x.layout || o.db != x.db || o.schema != x.schema {
			t.Errorf("%s's place (%s) holds %q of tenant %s", x.Name, x.layout, r[1], r[0])
		}
	}
}

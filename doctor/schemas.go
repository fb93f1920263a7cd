package doctor

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Schema per tenant. A tenant placed in a schema runs as its own role:
// pgtenant sets search_path to the schema and SETs ROLE to the role at
// every transaction start. search_path alone isolates nothing (a
// schema-qualified name bypasses it); what keeps tenants apart is that each
// role reaches its own schema and no other, and owns nothing it could
// re-grant. The login role must be a member of each tenant role (to SET
// ROLE to it) without inheriting its privileges, or the sessions that run
// as the login role itself would have them all.

// RunSchemas inspects the schema placements of tenants on the database
// conn is connected to, as the upstream's login role. conn must be idle.
// For each tenant it probes, as the tenant's role (SET LOCAL ROLE in a
// transaction it rolls back), which of the placements' schemas the role
// reaches; it also reads what the role owns and its attributes, and the
// login role's attributes and memberships. Findings are sorted as Run's.
func RunSchemas(ctx context.Context, conn *pgconn.PgConn, tenants []SchemaTenant) ([]Finding, error) {
	if st := conn.TxStatus(); st != 'I' {
		return nil, fmt.Errorf("doctor: connection is not idle (transaction status %q)", st)
	}
	d := &doctor{conn: conn}
	if err := d.loadRole(ctx); err != nil {
		return nil, fmt.Errorf("doctor: %w", err)
	}
	s := &schemaDoctor{doctor: d, tenants: tenants}
	steps := []func(context.Context) error{s.checkLogin, s.loadPlacements, s.checkSharedSchemas}
	for i := range tenants {
		steps = append(steps, func(ctx context.Context) error { return s.checkTenant(ctx, i) })
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, fmt.Errorf("doctor: %w", err)
		}
	}
	return d.sorted(), nil
}

type schemaDoctor struct {
	*doctor
	tenants  []SchemaTenant
	inherits bool // the login role has the privileges of other roles

	roles   []*tenantRole // per tenant; nil: the role does not exist
	schemas []*schema     // per tenant; nil: the schema does not exist
}

type tenantRole struct {
	oid, name     string // name: quote_ident
	super, bypass bool
	member        bool // the login role may SET ROLE to it
}

type schema struct {
	oid, name string // name: quote_ident
	// loginUsage: the login role itself has USAGE on it.
	loginUsage bool
}

// checkLogin: the login role is no superuser and inherits no role's
// privileges.
func (s *schemaDoctor) checkLogin(ctx context.Context) error {
	obj := "role " + s.role
	if s.super {
		s.add(CheckLoginRole, obj,
			"is a superuser: the session user of every tenant's session can do anything, and tenants without a role of their own run as it",
			fmt.Sprintf("connect pgtenant as a dedicated login role: CREATE ROLE app_rls LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT; or ALTER ROLE %s NOSUPERUSER;", s.role))
		return nil // a superuser has every privilege; the rest would be noise
	}
	rows, err := s.query(ctx, `SELECT string_agg(quote_ident(rolname), ', ' ORDER BY rolname) FROM pg_roles
		WHERE rolname <> current_user AND pg_has_role(oid, 'USAGE')`)
	if err != nil {
		return fmt.Errorf("reading the login role's memberships: %w", err)
	}
	if roles := str(rows[0][0]); roles != "" {
		s.inherits = true
		s.add(CheckLoginRole, obj,
			fmt.Sprintf("inherits the privileges of %s: sessions that run as it (tenants without a role of their own) have every tenant role's privileges, and pgtenant refuses them while it does", roles),
			fmt.Sprintf("ALTER ROLE %s NOINHERIT; (it can still SET ROLE to the tenants' roles)", s.role))
	}
	return nil
}

// loadPlacements reads each tenant's role and schema.
func (s *schemaDoctor) loadPlacements(ctx context.Context) error {
	s.roles = make([]*tenantRole, len(s.tenants))
	s.schemas = make([]*schema, len(s.tenants))
	for i, t := range s.tenants {
		rows, err := s.query(ctx, `SELECT oid::text, quote_ident(rolname), rolsuper, rolbypassrls, pg_has_role(oid, 'MEMBER')
			FROM pg_roles WHERE rolname = $1`, t.Role)
		if err != nil {
			return fmt.Errorf("reading role %s: %w", t.Role, err)
		}
		if len(rows) == 1 {
			r := rows[0]
			s.roles[i] = &tenantRole{oid: str(r[0]), name: str(r[1]), super: boolean(r[2]), bypass: boolean(r[3]), member: boolean(r[4])}
		}
		rows, err = s.query(ctx, `SELECT oid::text, quote_ident(nspname), has_schema_privilege(oid, 'USAGE')
			FROM pg_namespace WHERE nspname = $1`, t.Schema)
		if err != nil {
			return fmt.Errorf("reading schema %s: %w", t.Schema, err)
		}
		if len(rows) == 1 {
			r := rows[0]
			s.schemas[i] = &schema{oid: str(r[0]), name: str(r[1]), loginUsage: boolean(r[2])}
		}
	}
	return nil
}

// checkSharedSchemas: two tenants placed in one schema share its tables.
func (s *schemaDoctor) checkSharedSchemas(context.Context) error {
	first := map[string]int{}
	for i, t := range s.tenants {
		j, dup := first[t.Schema]
		if !dup {
			first[t.Schema] = i
			continue
		}
		name := quoteIdent(t.Schema)
		if s.schemas[i] != nil {
			name = s.schemas[i].name
		}
		s.add(CheckSchemaAccess, "schema "+name,
			fmt.Sprintf("is the placement of tenants %s and %s: they share its tables", s.tenants[j].ID, t.ID),
			fmt.Sprintf("give tenant %s a schema (and role) of its own in tenants[%q]", t.ID, t.ID))
	}
	return nil
}

// checkTenant checks tenant i's role, its schema and what it reaches.
func (s *schemaDoctor) checkTenant(ctx context.Context, i int) error {
	t, role, own := s.tenants[i], s.roles[i], s.schemas[i]
	if own == nil {
		s.add(CheckSchemaAccess, "schema "+quoteIdent(t.Schema),
			fmt.Sprintf("does not exist: tenant %s's queries find none of its tables", t.ID),
			fmt.Sprintf("CREATE SCHEMA %s; GRANT USAGE ON SCHEMA %[1]s TO %s; (or correct tenants[%q].schema)", quoteIdent(t.Schema), quoteIdent(t.Role), t.ID))
	} else if own.loginUsage && !s.super && !s.inherits {
		s.add(CheckSchemaAccess, "schema "+own.name,
			fmt.Sprintf("the login role %s has USAGE on it: sessions that run as the login role (tenants without a role of their own) reach tenant %s's tables by schema-qualified names", s.role, t.ID),
			fmt.Sprintf("REVOKE ALL ON SCHEMA %s FROM PUBLIC, %s;", own.name, s.role))
	}
	if role == nil {
		s.add(CheckTenantRole, "role "+quoteIdent(t.Role),
			fmt.Sprintf("does not exist: every transaction of tenant %s fails at SET ROLE", t.ID),
			fmt.Sprintf("CREATE ROLE %s NOLOGIN; GRANT %[1]s TO %s; (or correct tenants[%q].role)", quoteIdent(t.Role), s.role, t.ID))
		return nil
	}
	obj := "role " + role.name
	if role.super {
		s.add(CheckTenantRole, obj, fmt.Sprintf("is a superuser: tenant %s's sessions can read and change every tenant's data", t.ID),
			fmt.Sprintf("ALTER ROLE %s NOSUPERUSER;", role.name))
	}
	if role.bypass {
		s.add(CheckTenantRole, obj, fmt.Sprintf("has BYPASSRLS: no row-level security policy binds tenant %s's sessions", t.ID),
			fmt.Sprintf("ALTER ROLE %s NOBYPASSRLS;", role.name))
	}
	if !role.member {
		s.add(CheckLoginRole, "role "+s.role,
			fmt.Sprintf("is not a member of %s: SET ROLE %[1]s fails, and with it every transaction of tenant %s", role.name, t.ID),
			fmt.Sprintf("GRANT %s TO %s;", role.name, s.role))
	} else if err := s.probeSchemas(ctx, i); err != nil {
		return err
	}
	return s.checkOwnership(ctx, i)
}

// probeSchemas checks, as tenant i's role, that it reaches its own schema
// and no other tenant's.
func (s *schemaDoctor) probeSchemas(ctx context.Context, i int) (err error) {
	t, role := s.tenants[i], s.roles[i]
	var oids []string
	for _, sc := range s.schemas {
		if sc != nil {
			oids = append(oids, sc.oid)
		}
	}
	if len(oids) == 0 {
		return nil
	}
	// SET LOCAL ROLE, as pgtenant's SET ROLE, makes current_user the
	// tenant's role: the privilege functions then answer for it, PUBLIC's
	// grants and inherited ones included. The transaction is rolled back.
	if _, err := s.conn.Exec(ctx, "BEGIN; SET LOCAL ROLE "+role.name).ReadAll(); err != nil {
		_, _ = s.conn.Exec(ctx, "ROLLBACK").ReadAll()
		return fmt.Errorf("SET ROLE %s: %w", role.name, err)
	}
	defer func() {
		if _, rerr := s.conn.Exec(ctx, "ROLLBACK").ReadAll(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	rows, err := s.query(ctx, `SELECT oid::text, has_schema_privilege(oid, 'USAGE'), has_schema_privilege(oid, 'CREATE')
		FROM pg_namespace WHERE oid = ANY ($1::text[]::oid[])`, oids)
	if err != nil {
		return fmt.Errorf("probing the schemas as %s: %w", role.name, err)
	}
	usage, create := map[string]bool{}, map[string]bool{}
	for _, r := range rows {
		usage[str(r[0])], create[str(r[0])] = boolean(r[1]), boolean(r[2])
	}
	if own := s.schemas[i]; own != nil && !usage[own.oid] {
		s.add(CheckSchemaAccess, "schema "+own.name,
			fmt.Sprintf("tenant %s's role %s has no USAGE on it: every query of the tenant on its tables fails", t.ID, role.name),
			fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;", own.name, role.name))
	}
	reported := map[string]bool{}
	for j, other := range s.schemas {
		if other == nil || s.tenants[j].Schema == t.Schema || reported[other.oid] {
			continue
		}
		reported[other.oid] = true
		var what []string
		if usage[other.oid] {
			what = append(what, "USAGE (it reads the tenant's tables by schema-qualified names, as far as table grants allow)")
		}
		if create[other.oid] {
			what = append(what, "CREATE (it can put tables and functions where the tenant's search_path finds them)")
		}
		if len(what) == 0 {
			continue
		}
		s.add(CheckSchemaAccess, "schema "+other.name,
			fmt.Sprintf("is tenant %s's, but tenant %s's role %s has %s", s.tenants[j].ID, t.ID, role.name, strings.Join(what, " and ")),
			fmt.Sprintf("REVOKE ALL ON SCHEMA %s FROM PUBLIC, %s; (and from any role %[2]s is a member of)", other.name, role.name))
	}
	return nil
}

// checkOwnership: a tenant role owns nothing. An owner alters, drops and
// grants its objects at will (GRANT to another tenant's role, a SECURITY
// DEFINER function, DISABLE ROW LEVEL SECURITY), none of which the guard
// sees.
func (s *schemaDoctor) checkOwnership(ctx context.Context, i int) error {
	t, role := s.tenants[i], s.roles[i]
	rows, err := s.query(ctx, `
SELECT kind || ' ' || name FROM (
    SELECT 'schema' AS kind, quote_ident(nspname) AS name FROM pg_namespace WHERE nspowner = $1::oid
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                          WHEN 'f' THEN 'foreign table' WHEN 'c' THEN 'type' ELSE 'table' END,
           format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relowner = $1::oid AND c.relkind NOT IN ('i', 'I', 't')
      AND n.nspname !~ '^pg_temp_' AND n.nspname !~ '^pg_toast_temp_'
    UNION ALL
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
           format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proowner = $1::oid AND n.nspname !~ '^pg_temp_'
    UNION ALL
    SELECT 'database', quote_ident(datname) FROM pg_database WHERE datdba = $1::oid
) o ORDER BY 1`, role.oid)
	if err != nil {
		return fmt.Errorf("reading what %s owns: %w", role.name, err)
	}
	if len(rows) == 0 {
		return nil
	}
	var owned []string
	for _, r := range rows[:min(len(rows), 5)] {
		owned = append(owned, str(r[0]))
	}
	if len(rows) > 5 {
		owned = append(owned, fmt.Sprintf("and %d more", len(rows)-5))
	}
	s.add(CheckOwnership, "role "+role.name,
		fmt.Sprintf("owns %s: tenant %s's sessions run as it, and an owner alters, drops and grants its objects at will (to another tenant's role too), which no guard sees",
			strings.Join(owned, ", "), t.ID),
		fmt.Sprintf("REASSIGN OWNED BY %s TO <a role pgtenant does not connect as>; (in database %s; a database it owns: ALTER DATABASE ... OWNER TO)", role.name, s.db))
	return nil
}

// quoteIdent quotes name as an SQL identifier, always: for names of
// objects that do not exist (those that do are quoted by quote_ident).
func quoteIdent(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

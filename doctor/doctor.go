// Package doctor inspects an upstream PostgreSQL database, connected as the
// RLS role pgtenant uses, and reports everything that would break tenant
// isolation: tables without (forced) row-level security, a role that
// escapes the policies, privileges to create objects, SECURITY DEFINER
// functions, views that read RLS tables with their owner's rights, policies
// that do not fail closed, tenant ids the policies' casts refuse, and
// tenant columns without an index.
package doctor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults for Options fields left empty.
const (
	DefaultTenantSetting = "app.tenant_id"
	DefaultTenantColumn  = "tenant_id"
)

// Checks, in the order findings are reported.
const (
	CheckRLS             = "rls"
	CheckRole            = "role"
	CheckPrivileges      = "privileges"
	CheckSecurityDefiner = "security-definer"
	CheckViews           = "views"
	CheckFailClosed      = "fail-closed"
	CheckTenantType      = "tenant-type"
	CheckIndex           = "index"

	// Per placement (see placement.go and schemas.go).
	CheckReachable    = "reachable"
	CheckLoginRole    = "login-role"
	CheckTenantRole   = "tenant-role"
	CheckSchemaAccess = "schema-access"
	CheckOwnership    = "ownership"
)

// Checks lists every check in report order.
var Checks = []string{
	CheckReachable, CheckRLS, CheckRole, CheckPrivileges, CheckSecurityDefiner, CheckViews, CheckFailClosed, CheckTenantType, CheckIndex,
	CheckLoginRole, CheckTenantRole, CheckSchemaAccess, CheckOwnership,
}

// Options configures Run.
type Options struct {
	// TenantSetting is the custom setting the policies read; default "app.tenant_id".
	TenantSetting string
	// TenantColumn names the tenant column: a table "has a tenant column"
	// when it has a column of this name. Default "tenant_id".
	TenantColumn string
	// AllowedDefinerFunctions are regprocedure texts (e.g.
	// "pgtenant.current_tenant()") of SECURITY DEFINER functions not to
	// report. Names that do not resolve are ignored.
	AllowedDefinerFunctions []string
	// Tenants are the tenant ids pgtenant will assert (from the config's
	// users and a sample of db_users): each is cast to every type the
	// policies cast the tenant setting to.
	Tenants []Tenant
}

// Finding is one problem with one object.
type Finding struct {
	Check   string `json:"check"`
	Object  string `json:"object"`
	Problem string `json:"problem"`
	Fix     string `json:"fix"`
	// Upstream and Placement say where it was found (set by Check): the
	// upstream's name and the placement's kind.
	Upstream  string `json:"upstream,omitempty"`
	Placement string `json:"placement,omitempty"`
}

// Run inspects the database conn is connected to. conn must be connected as
// the RLS role, be idle, and should be fresh: the fail-closed check needs
// a session in which the tenant setting has never been set. Run leaves the
// setting's placeholder defined (empty) in the session.
//
// The findings are sorted by check (in the order of Checks), then object.
// An error is returned only when the inspection itself fails (a catalog
// query errors, the connection breaks); errors raised by the probed
// policies are results, not failures.
func Run(ctx context.Context, conn *pgconn.PgConn, opts Options) ([]Finding, error) {
	if opts.TenantSetting == "" {
		opts.TenantSetting = DefaultTenantSetting
	}
	if opts.TenantColumn == "" {
		opts.TenantColumn = DefaultTenantColumn
	}
	if st := conn.TxStatus(); st != 'I' {
		return nil, fmt.Errorf("doctor: connection is not idle (transaction status %q)", st)
	}
	d := &doctor{conn: conn, opts: opts}
	if err := d.loadRole(ctx); err != nil {
		return nil, fmt.Errorf("doctor: %w", err)
	}
	// The fail-closed probes come first: the "never set" probe is only
	// meaningful before anything in this session has set the setting.
	steps := []func(context.Context) error{
		d.loadTables,
		d.checkFailClosed,
		d.checkRLS,
		d.checkRole,
		d.checkPrivileges,
		d.checkSecurityDefiner,
		d.checkViews,
		d.checkTenantType,
		d.checkIndex,
	}
	if d.super {
		// A superuser has every privilege and membership and bypasses every
		// policy: report that, and the checks that do not depend on the role.
		steps = []func(context.Context) error{d.loadTables, d.checkRLS, d.checkRole, d.checkTenantType, d.checkIndex}
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, fmt.Errorf("doctor: %w", err)
		}
	}
	return d.sorted(), nil
}

// sorted returns the findings sorted by check (in the order of Checks),
// then object; never nil.
func (d *doctor) sorted() []Finding {
	order := func(check string) int { return slices.Index(Checks, check) }
	slices.SortStableFunc(d.findings, func(a, b Finding) int {
		if c := order(a.Check) - order(b.Check); c != 0 {
			return c
		}
		return strings.Compare(a.Object, b.Object)
	})
	if d.findings == nil {
		d.findings = []Finding{}
	}
	return d.findings
}

type doctor struct {
	conn     *pgconn.PgConn
	opts     Options
	findings []Finding

	role   string // quote_ident(current_user)
	db     string // quote_ident(current_database())
	super  bool
	bypass bool
	tables []table
}

type table struct {
	oid        string
	name       string // schema-qualified, quoted as needed
	hasColumn  bool   // has the tenant column
	column     string // quote_ident of the tenant column
	columnType string // format_type of the tenant column
	rls        bool
	force      bool
	owner      string // quote_ident of the owner
	owned      bool   // the role is (a member of) the owner
	canSelect  bool
	indexed    bool // an index leads with the tenant column
	hasPolicy  bool
}

func (d *doctor) add(check, object, problem, fix string) {
	d.findings = append(d.findings, Finding{Check: check, Object: object, Problem: problem, Fix: fix})
}

// query runs one statement with text parameters (nil is NULL) and returns
// its rows as text; a NULL value is nil.
func (d *doctor) query(ctx context.Context, sql string, args ...any) ([][]*string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case nil:
		case string:
			params[i] = []byte(v)
		case []string:
			params[i] = []byte(textArray(v))
		default:
			return nil, fmt.Errorf("query parameter %d: unsupported type %T", i+1, a)
		}
	}
	res := d.conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	rows := make([][]*string, len(res.Rows))
	for i, r := range res.Rows {
		rows[i] = make([]*string, len(r))
		for j, v := range r {
			if v != nil {
				s := string(v)
				rows[i][j] = &s
			}
		}
	}
	return rows, nil
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func boolean(p *string) bool { return p != nil && *p == "t" }

func (d *doctor) loadRole(ctx context.Context) error {
	rows, err := d.query(ctx, `SELECT quote_ident(current_user), rolsuper, rolbypassrls, quote_ident(current_database())
		FROM pg_roles WHERE rolname = current_user`)
	if err != nil {
		return fmt.Errorf("reading the role: %w", err)
	}
	if len(rows) != 1 {
		return errors.New("reading the role: current_user not found in pg_roles")
	}
	r := rows[0]
	d.role, d.super, d.bypass, d.db = str(r[0]), boolean(r[1]), boolean(r[2]), str(r[3])
	return nil
}

// excludedSchemas is the SQL condition on n.nspname for user objects.
const excludedSchemas = `n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
	AND n.nspname !~ '^pg_temp_' AND n.nspname !~ '^pg_toast_temp_'`

func (d *doctor) loadTables(ctx context.Context) error {
	rows, err := d.query(ctx, `
SELECT c.oid::text,
       format('%I.%I', n.nspname, c.relname),
       a.attnum IS NOT NULL,
       quote_ident(a.attname),
       format_type(a.atttypid, a.atttypmod),
       c.relrowsecurity,
       c.relforcerowsecurity,
       quote_ident(pg_get_userbyid(c.relowner)),
       pg_has_role(c.relowner, 'MEMBER'),
       has_any_column_privilege(c.oid, 'SELECT'),
       EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum),
       EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND `+excludedSchemas+`
ORDER BY 2`, d.opts.TenantColumn)
	if err != nil {
		return fmt.Errorf("reading the tables: %w", err)
	}
	for _, r := range rows {
		d.tables = append(d.tables, table{
			oid: str(r[0]), name: str(r[1]), hasColumn: boolean(r[2]), column: str(r[3]), columnType: str(r[4]),
			rls: boolean(r[5]), force: boolean(r[6]), owner: str(r[7]), owned: boolean(r[8]),
			canSelect: boolean(r[9]), indexed: boolean(r[10]), hasPolicy: boolean(r[11]),
		})
	}
	return nil
}

// checkRLS: tables with the tenant column whose row-level security is off
// or does not bind the owner.
func (d *doctor) checkRLS(context.Context) error {
	for _, t := range d.tables {
		if !t.hasColumn {
			continue
		}
		switch {
		case !t.rls:
			fix := fmt.Sprintf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY; ALTER TABLE %[1]s FORCE ROW LEVEL SECURITY;", t.name)
			if !t.hasPolicy {
				fix += " " + d.policySQL("CREATE POLICY tenant_isolation ON", t)
			}
			d.add(CheckRLS, t.name,
				fmt.Sprintf("has a %s column but row-level security is not enabled: every tenant sees every row", d.opts.TenantColumn),
				fix)
		case !t.force:
			d.add(CheckRLS, t.name,
				fmt.Sprintf("row-level security is enabled but not forced: the owner (%s) and its members bypass the policies", t.owner),
				fmt.Sprintf("ALTER TABLE %s FORCE ROW LEVEL SECURITY;", t.name))
		}
	}
	return nil
}

// policySQL is "<prefix> <table> USING (<column> = current_setting('<setting>')::<type>);".
func (d *doctor) policySQL(prefix string, t table) string {
	return fmt.Sprintf("%s %s USING (%s = current_setting(%s)::%s);", prefix, t.name, t.column, quoteLiteral(d.opts.TenantSetting), t.columnType)
}

// checkRole: a role that bypasses row-level security, can become one that
// does, or owns the tables it should be confined by.
func (d *doctor) checkRole(ctx context.Context) error {
	obj := "role " + d.role
	if d.super {
		d.add(CheckRole, obj, "is a superuser: row-level security never applies to it (fail-closed probes skipped)",
			fmt.Sprintf("connect pgtenant as a dedicated login role: CREATE ROLE app_rls LOGIN NOSUPERUSER NOBYPASSRLS; or ALTER ROLE %s NOSUPERUSER;", d.role))
		// A superuser has every privilege and membership; the rest would be noise.
		return nil
	}
	if d.bypass {
		d.add(CheckRole, obj, "has BYPASSRLS: row-level security never applies to it (fail-closed probes skipped)",
			fmt.Sprintf("ALTER ROLE %s NOBYPASSRLS;", d.role))
	}
	rows, err := d.query(ctx, `SELECT quote_ident(rolname), rolsuper FROM pg_roles
		WHERE (rolsuper OR rolbypassrls) AND rolname <> current_user AND pg_has_role(oid, 'MEMBER')
		ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("reading role memberships: %w", err)
	}
	for _, r := range rows {
		what := "BYPASSRLS"
		if boolean(r[1]) {
			what = "superuser"
		}
		d.add(CheckRole, obj,
			fmt.Sprintf("is a member of %s (%s): SET ROLE %[1]s escapes row-level security", str(r[0]), what),
			fmt.Sprintf("REVOKE %s FROM %s;", str(r[0]), d.role))
	}
	for _, t := range d.tables {
		if !t.owned || !(t.hasColumn || t.rls) {
			continue
		}
		problem := fmt.Sprintf("is owned by %s, which is this role or one it is a member of: the owner can disable or drop the policies (and is not bound by them unless they are forced)", t.owner)
		fix := fmt.Sprintf("ALTER TABLE %s OWNER TO <a role pgtenant does not connect as>;", t.name)
		if t.owner != d.role {
			fix = fmt.Sprintf("REVOKE %s FROM %s; or ALTER TABLE %s OWNER TO <a role pgtenant does not connect as>;", t.owner, d.role, t.name)
		}
		d.add(CheckRole, t.name, problem, fix)
	}
	return nil
}

// checkPrivileges: the role can create objects (in a schema, or temporary
// ones), which are shared by every tenant and escape the policies.
func (d *doctor) checkPrivileges(ctx context.Context) error {
	rows, err := d.query(ctx, `SELECT quote_ident(n.nspname), pg_has_role(n.nspowner, 'MEMBER')
		FROM pg_namespace n
		WHERE has_schema_privilege(n.oid, 'CREATE') AND n.nspname !~ '^pg_temp_' AND n.nspname !~ '^pg_toast_temp_'
		ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("reading schema privileges: %w", err)
	}
	for _, r := range rows {
		s := str(r[0])
		fix := fmt.Sprintf("REVOKE CREATE ON SCHEMA %s FROM PUBLIC, %s;", s, d.role)
		if boolean(r[1]) {
			fix = fmt.Sprintf("ALTER SCHEMA %s OWNER TO <a role pgtenant does not connect as>; REVOKE CREATE ON SCHEMA %[1]s FROM PUBLIC, %s;", s, d.role)
		}
		d.add(CheckPrivileges, "schema "+s,
			"the role has CREATE on the schema: tenants can create tables, views and functions that every tenant shares and no policy covers",
			fix)
	}
	rows, err = d.query(ctx, `SELECT quote_ident(datname), pg_has_role(datdba, 'MEMBER')
		FROM pg_database WHERE datname = current_database() AND has_database_privilege(oid, 'TEMP')`)
	if err != nil {
		return fmt.Errorf("reading database privileges: %w", err)
	}
	for _, r := range rows {
		db := str(r[0])
		fix := fmt.Sprintf("REVOKE TEMPORARY ON DATABASE %s FROM PUBLIC, %s;", db, d.role)
		if boolean(r[1]) {
			fix = fmt.Sprintf("ALTER DATABASE %s OWNER TO <a role pgtenant does not connect as>; %s", db, fix)
		}
		d.add(CheckPrivileges, "database "+db,
			"the role has TEMP on the database: tenants can create temporary tables and functions that no policy covers and that shadow real objects in pg_temp",
			fix)
	}
	return nil
}

// checkSecurityDefiner: SECURITY DEFINER routines the role can execute run
// as their owner, typically outside the policies.
func (d *doctor) checkSecurityDefiner(ctx context.Context) error {
	allowed := d.opts.AllowedDefinerFunctions
	if allowed == nil {
		allowed = []string{}
	}
	rows, err := d.query(ctx, `
SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       quote_ident(pg_get_userbyid(p.proowner))
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND has_function_privilege(p.oid, 'EXECUTE')
  AND p.oid NOT IN (SELECT to_regprocedure(x)::oid FROM unnest($1::text[]) AS x WHERE to_regprocedure(x) IS NOT NULL)
ORDER BY 1`, allowed)
	if err != nil {
		return fmt.Errorf("reading SECURITY DEFINER functions: %w", err)
	}
	for _, r := range rows {
		fn, owner := str(r[0]), str(r[1])
		d.add(CheckSecurityDefiner, fn,
			fmt.Sprintf("is SECURITY DEFINER and the role can execute it: it runs as %s, whom the policies may not bind, and can return or change any tenant's rows", owner),
			fmt.Sprintf("ALTER ROUTINE %s SECURITY INVOKER; or REVOKE EXECUTE ON ROUTINE %[1]s FROM PUBLIC, %s; (or, if it enforces the tenant itself, allow it: --allow-definer %[1]s)", fn, d.role))
	}
	return nil
}

// checkViews: views that read RLS tables with their owner's rights, and
// materialized views, which hold every tenant's rows.
func (d *doctor) checkViews(ctx context.Context) error {
	rows, err := d.query(ctx, `
WITH RECURSIVE refs(view_oid, ref_oid) AS (
    SELECT DISTINCT r.ev_class, d.refobjid
    FROM pg_rewrite r
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
), reach(view_oid, rel_oid) AS (
    SELECT view_oid, ref_oid FROM refs
    UNION
    SELECT reach.view_oid, refs.ref_oid FROM reach JOIN refs ON refs.view_oid = reach.rel_oid
)
SELECT format('%I.%I', n.nspname, v.relname),
       v.relkind,
       (SELECT string_agg(DISTINCT format('%I.%I', tn.nspname, t.relname), ', ')
          FROM reach JOIN pg_class t ON t.oid = reach.rel_oid JOIN pg_namespace tn ON tn.oid = t.relnamespace
         WHERE reach.view_oid = v.oid AND t.relrowsecurity)
FROM pg_class v
JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE v.relkind IN ('v', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND has_any_column_privilege(v.oid, 'SELECT')
  AND (v.relkind = 'm' OR NOT coalesce(
        (SELECT o.option_value::bool FROM pg_options_to_table(v.reloptions) o WHERE o.option_name = 'security_invoker'), false))
  AND EXISTS (SELECT FROM reach JOIN pg_class t ON t.oid = reach.rel_oid WHERE reach.view_oid = v.oid AND t.relrowsecurity)
ORDER BY 1`)
	if err != nil {
		return fmt.Errorf("reading views: %w", err)
	}
	for _, r := range rows {
		name, kind, tables := str(r[0]), str(r[1]), str(r[2])
		if kind == "m" {
			d.add(CheckViews, name,
				fmt.Sprintf("is a materialized view over row-level-security tables (%s) that the role can read: it stores every tenant's rows and cannot have policies", tables),
				fmt.Sprintf("REVOKE SELECT ON %s FROM PUBLIC, %s; and use a view WITH (security_invoker = true) or a table with row-level security instead", name, d.role))
			continue
		}
		d.add(CheckViews, name,
			fmt.Sprintf("is a view over row-level-security tables (%s) without security_invoker: it reads them with its owner's rights, which the policies may not bind", tables),
			fmt.Sprintf("ALTER VIEW %s SET (security_invoker = true);", name))
	}
	return nil
}

// checkIndex: a tenant column that no index leads with makes every query
// filter a sequential scan.
func (d *doctor) checkIndex(context.Context) error {
	for _, t := range d.tables {
		if t.hasColumn && !t.indexed {
			d.add(CheckIndex, t.name,
				fmt.Sprintf("no index has %s as its leading column: every policy-filtered query scans the whole table", t.column),
				fmt.Sprintf("CREATE INDEX ON %s (%s);", t.name, t.column))
		}
	}
	return nil
}

// checkFailClosed probes, as the role, whether each RLS table with the
// tenant column returns rows when the setting is missing, empty, or a
// tenant id that owns no rows. Each probe runs in its own transaction,
// rolled back; an error raised by a probe (e.g. current_setting of a
// missing setting, or an empty string cast to uuid) counts as failing
// closed.
func (d *doctor) checkFailClosed(ctx context.Context) error {
	if d.super || d.bypass {
		return nil // reported by checkRole; every probe would see every row
	}
	var probed []table
	for _, t := range d.tables {
		if t.hasColumn && t.rls && t.canSelect {
			probed = append(probed, t)
		}
	}
	rows, err := d.query(ctx, "SELECT current_setting($1, true)", d.opts.TenantSetting)
	if err != nil {
		return fmt.Errorf("reading %s: %w", d.opts.TenantSetting, err)
	}
	preset := str(rows[0][0])
	if preset != "" {
		d.add(CheckFailClosed, "setting "+d.opts.TenantSetting,
			fmt.Sprintf("already has the value %s when the role connects (ALTER ROLE/DATABASE ... SET, or the connection string): a session that does not set the tenant gets this one (the never-set probe was skipped)", quoteLiteral(preset)),
			fmt.Sprintf("remove the default (see pg_db_role_setting): ALTER ROLE %s IN DATABASE %s RESET %s; ALTER ROLE %[1]s RESET %[3]s; ALTER DATABASE %[2]s RESET %[3]s; and any -c %[3]s in the connection string's options", d.role, d.db, d.opts.TenantSetting))
	}
	if len(probed) == 0 {
		return nil
	}
	leaks := make([][]string, len(probed))
	type probe struct {
		what  string
		value func(t table) *string
	}
	empty := ""
	probes := []probe{
		{"never set", func(table) *string { return nil }},
		{"empty", func(table) *string { return &empty }},
		{"a tenant id that owns no rows", func(t table) *string { v := randomTenant(t.columnType); return &v }},
	}
	if preset != "" {
		probes = probes[1:]
	}
	// Probe by probe, not table by table: the never-set probe must run on
	// every table before the first SET LOCAL leaves a placeholder behind.
	for _, p := range probes {
		for i, t := range probed {
			leaked, err := d.probe(ctx, t, p.value(t))
			if err != nil {
				return fmt.Errorf("probing %s with %s %s: %w", t.name, d.opts.TenantSetting, p.what, err)
			}
			if leaked {
				leaks[i] = append(leaks[i], p.what)
			}
		}
	}
	for i, t := range probed {
		if len(leaks[i]) == 0 {
			continue
		}
		policies, err := d.query(ctx, `SELECT quote_ident(polname) FROM pg_policy
			WHERE polrelid = $1::oid AND polpermissive AND polcmd IN ('r', '*') ORDER BY 1`, t.oid)
		if err != nil {
			return fmt.Errorf("reading the policies of %s: %w", t.name, err)
		}
		var fix []string
		for _, p := range policies {
			fix = append(fix, d.policySQL("ALTER POLICY "+str(p[0])+" ON", t))
		}
		if len(fix) == 0 {
			fix = append(fix, d.policySQL("CREATE POLICY tenant_isolation ON", t))
		}
		d.add(CheckFailClosed, t.name,
			fmt.Sprintf("the policies return rows when %s is %s (e.g. an OR current_setting(..., true) IS NULL or = '' escape hatch): a session without a tenant sees other tenants' rows",
				d.opts.TenantSetting, orList(leaks[i])),
			"compare the tenant column to current_setting without a fallback, so that a missing or empty setting raises an error: "+strings.Join(fix, " "))
	}
	return nil
}

// probe reports whether t returns a row to the role with the setting set
// to *value (locally) or, when value is nil, left as it is.
func (d *doctor) probe(ctx context.Context, t table, value *string) (leaked bool, err error) {
	if _, err := d.conn.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		return false, err
	}
	defer func() {
		if _, rerr := d.conn.Exec(ctx, "ROLLBACK").ReadAll(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if value != nil {
		if _, err := d.query(ctx, "SELECT set_config($1, $2, true)", d.opts.TenantSetting, *value); err != nil {
			return false, err
		}
	}
	rows, err := d.query(ctx, "SELECT 1 FROM "+t.name+" LIMIT 1")
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !d.conn.IsClosed() && ctx.Err() == nil && pgErr.Code != "57014" { // not query_canceled
			return false, nil // the policy raised an error: fails closed
		}
		return false, err
	}
	return len(rows) > 0, nil
}

// randomTenant returns a random tenant id of the column's type that owns no
// rows (with overwhelming probability): a UUID, or a large negative number
// for integer columns.
func randomTenant(columnType string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	switch columnType {
	case "integer", "bigint", "numeric":
		n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		return fmt.Sprintf("-%d", 1_000_000_000+n%1_000_000_000)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// orList joins ss as "a, b or c".
func orList(ss []string) string {
	if len(ss) < 2 {
		return strings.Join(ss, "")
	}
	return strings.Join(ss[:len(ss)-1], ", ") + " or " + ss[len(ss)-1]
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// textArray encodes ss as a PostgreSQL text[] literal.
func textArray(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, r := range s {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

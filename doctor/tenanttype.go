package doctor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Tenant is a tenant id pgtenant will assert, and where it comes from
// (e.g. `users[0] ("acme_app")`), for the tenant-type check.
type Tenant struct {
	ID     string
	Source string
	// Upstream, Schema and Role place the tenant over the config's
	// placement, as a db_users row's columns do.
	Upstream, Schema, Role string
}

// TenantCast is a policy that casts the tenant setting to a type, e.g.
// current_setting('app.tenant_id')::uuid: a tenant id that is no valid
// value of the type makes every query on the table fail.
type TenantCast struct {
	Table  string // schema-qualified, quoted as needed
	Policy string // quoted as needed
	Type   string // as PostgreSQL names it: "uuid", "integer"
	// typeSQL is the cast's target as SQL, deparsed from the policy.
	typeSQL string
}

// Mismatch is a tenant id that the casts to one type refuse.
type Mismatch struct {
	Tenant Tenant
	Type   string
	Casts  []TenantCast // the policies casting to Type
	Err    string       // PostgreSQL's message, e.g. invalid input syntax for type uuid: "acme"
}

// TenantCasts reads every policy of the database and returns those that
// cast setting to a type. The expressions are parsed, not matched as
// text, so that nullif, coalesce and the way pg_get_expr prints a cast
// do not hide one.
func TenantCasts(ctx context.Context, conn *pgconn.PgConn, setting string) ([]TenantCast, error) {
	d := &doctor{conn: conn}
	rows, err := d.query(ctx, `
SELECT format('%I.%I', n.nspname, c.relname), quote_ident(p.polname),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p
JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("reading the policies: %w", err)
	}
	var casts []TenantCast
	names := map[string]string{} // typeSQL -> PostgreSQL's name
	for _, r := range rows {
		var types []string
		for _, expr := range r[2:] {
			if expr == nil {
				continue
			}
			found, err := castTypes(*expr, setting)
			if err != nil {
				return nil, fmt.Errorf("policy %s on %s: %w", str(r[1]), str(r[0]), err)
			}
			for _, t := range found {
				if !slices.Contains(types, t) {
					types = append(types, t)
				}
			}
		}
		for _, t := range types {
			name, ok := names[t]
			if !ok {
				rows, err := d.query(ctx, "SELECT pg_typeof(NULL::"+t+")::text")
				if err != nil {
					return nil, fmt.Errorf("naming type %s: %w", t, err)
				}
				name = str(rows[0][0])
				names[t] = name
			}
			casts = append(casts, TenantCast{Table: str(r[0]), Policy: str(r[1]), Type: name, typeSQL: t})
		}
	}
	return casts, nil
}

// CheckTenants casts every tenant id to every type in casts, each in a
// statement of its own, and returns the ids a type refuses.
func CheckTenants(ctx context.Context, conn *pgconn.PgConn, casts []TenantCast, tenants []Tenant) ([]Mismatch, error) {
	d := &doctor{conn: conn}
	var types []string
	byType := map[string][]TenantCast{}
	for _, c := range casts {
		if _, ok := byType[c.typeSQL]; !ok {
			types = append(types, c.typeSQL)
		}
		byType[c.typeSQL] = append(byType[c.typeSQL], c)
	}
	var out []Mismatch
	for _, tn := range tenants {
		for _, t := range types {
			_, err := d.query(ctx, "SELECT $1::text::"+t, tn.ID)
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				continue
			case errors.As(err, &pgErr) && !conn.IsClosed() && ctx.Err() == nil && pgErr.Code != "57014": // not query_canceled
				out = append(out, Mismatch{Tenant: tn, Type: byType[t][0].Type, Casts: byType[t], Err: pgErr.Message})
			default:
				return nil, fmt.Errorf("casting tenant %s to %s: %w", quoteLiteral(tn.ID), t, err)
			}
		}
	}
	return out, nil
}

// checkTenantType: configured tenant ids the policies' casts refuse.
func (d *doctor) checkTenantType(ctx context.Context) error {
	if len(d.opts.Tenants) == 0 {
		return nil
	}
	casts, err := TenantCasts(ctx, d.conn, d.opts.TenantSetting)
	if err != nil {
		return err
	}
	mismatches, err := CheckTenants(ctx, d.conn, casts, d.opts.Tenants)
	if err != nil {
		return err
	}
	for _, m := range mismatches {
		d.add(CheckTenantType, fmt.Sprintf("tenant %s (%s)", quoteLiteral(m.Tenant.ID), m.Tenant.Source),
			fmt.Sprintf("is not a valid %s (%s), but %s: every query of this tenant on %s fails",
				m.Type, m.Err, m.Policies(d.opts.TenantSetting), m.Tables()),
			fmt.Sprintf("give the tenant a %s id in the config (or the users table), or change the policies' cast to the type of the tenant ids", m.Type))
	}
	return nil
}

// Policies says which policies cast the setting: "policy p on t casts
// app.tenant_id to uuid" or "policies p on t, q on u cast ...".
func (m Mismatch) Policies(setting string) string {
	var list []string
	for _, c := range m.Casts {
		list = append(list, c.Policy+" on "+c.Table)
	}
	if len(list) == 1 {
		return fmt.Sprintf("policy %s casts %s to %s", list[0], setting, m.Type)
	}
	return fmt.Sprintf("policies %s cast %s to %s", strings.Join(list, ", "), setting, m.Type)
}

// Tables lists the tables of the casts, each once.
func (m Mismatch) Tables() string {
	var list []string
	for _, c := range m.Casts {
		if !slices.Contains(list, c.Table) {
			list = append(list, c.Table)
		}
	}
	return strings.Join(list, ", ")
}

// castTypes parses a policy expression and returns, as SQL, the types it
// casts current_setting('<setting>') to.
func castTypes(expr, setting string) ([]string, error) {
	tree, err := pg_query.Parse("SELECT " + expr)
	if err != nil {
		return nil, fmt.Errorf("parsing %q: %w", expr, err)
	}
	var types []string
	var walkErr error
	for _, s := range tree.Stmts {
		walkNodes(s.Stmt.ProtoReflect(), func(m protoreflect.Message) {
			tc, ok := m.Interface().(*pg_query.TypeCast)
			if !ok || !readsSetting(tc.Arg, setting) {
				return
			}
			t, err := typeSQL(tc.TypeName, tree.Version)
			if err != nil {
				walkErr = err
				return
			}
			if !slices.Contains(types, t) {
				types = append(types, t)
			}
		})
	}
	return types, walkErr
}

// readsSetting reports whether n's value is current_setting('<setting>')'s,
// passed through the usual wrappers: nullif of an empty string, coalesce, and
// another cast (x::text::uuid).
func readsSetting(n *pg_query.Node, setting string) bool {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_FuncCall:
		return isCurrentSetting(v.FuncCall, setting)
	case *pg_query.Node_AExpr:
		return v.AExpr.Kind == pg_query.A_Expr_Kind_AEXPR_NULLIF && readsSetting(v.AExpr.Lexpr, setting)
	case *pg_query.Node_CoalesceExpr:
		return slices.ContainsFunc(v.CoalesceExpr.Args, func(a *pg_query.Node) bool { return readsSetting(a, setting) })
	case *pg_query.Node_TypeCast:
		return readsSetting(v.TypeCast.Arg, setting)
	}
	return false
}

// isCurrentSetting: [pg_catalog.]current_setting('<setting>'[, missing_ok]).
func isCurrentSetting(f *pg_query.FuncCall, setting string) bool {
	var name []string
	for _, p := range f.Funcname {
		name = append(name, p.GetString_().GetSval())
	}
	if !slices.Equal(name, []string{"current_setting"}) && !slices.Equal(name, []string{"pg_catalog", "current_setting"}) {
		return false
	}
	if len(f.Args) == 0 {
		return false
	}
	arg := f.Args[0]
	if tc := arg.GetTypeCast(); tc != nil { // pg_get_expr prints 'app.tenant_id'::text
		arg = tc.Arg
	}
	c := arg.GetAConst()
	// Custom setting names are case-insensitive.
	return c != nil && c.GetSval() != nil && strings.EqualFold(c.GetSval().GetSval(), setting)
}

// typeSQL deparses a type name: SELECT NULL::<type>, less the SELECT NULL::.
func typeSQL(tn *pg_query.TypeName, version int32) (string, error) {
	const prefix = "SELECT NULL::"
	null := &pg_query.Node{Node: &pg_query.Node_AConst{AConst: &pg_query.A_Const{Isnull: true}}}
	cast := &pg_query.Node{Node: &pg_query.Node_TypeCast{TypeCast: &pg_query.TypeCast{Arg: null, TypeName: tn}}}
	sel := &pg_query.SelectStmt{TargetList: []*pg_query.Node{pg_query.MakeResTargetNodeWithVal(cast, 0)}}
	sql, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: sel}}}}})
	if err != nil {
		return "", fmt.Errorf("deparsing a type name: %w", err)
	}
	if !strings.HasPrefix(sql, prefix) {
		return "", fmt.Errorf("deparsing a type name: unexpected %q", sql)
	}
	return strings.TrimPrefix(sql, prefix), nil
}

// SampleTenants runs a db_users query without its WHERE clause (the $1
// lookup), limited to limit rows, on conn (the lookup role's connection),
// and returns the distinct tenants of its second column, each with the
// placement its row's upstream, schema and role columns give (the first
// row of a tenant's wins). A query that is not a plain SELECT, or uses $1
// elsewhere, cannot be sampled.
func SampleTenants(ctx context.Context, conn *pgconn.PgConn, query string, limit int) ([]Tenant, error) {
	sql, err := sampleSQL(query, limit)
	if err != nil {
		return nil, err
	}
	res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("sampling db_users: %w", res.Err)
	}
	column := map[string]int{}
	for i, fd := range res.FieldDescriptions {
		column[fd.Name] = i
	}
	value := func(r [][]byte, name string) string {
		if i, ok := column[name]; ok && i < len(r) {
			return string(r[i])
		}
		return ""
	}
	var out []Tenant
	for _, r := range res.Rows {
		if len(r) < 2 || r[1] == nil {
			continue
		}
		id := string(r[1])
		if slices.ContainsFunc(out, func(t Tenant) bool { return t.ID == id }) {
			continue
		}
		out = append(out, Tenant{ID: id, Source: "db_users", Upstream: value(r, "upstream"), Schema: value(r, "schema"), Role: value(r, "role")})
	}
	return out, nil
}

// sampleSQL rewrites a db_users query into one that lists users.
func sampleSQL(query string, limit int) (string, error) {
	tree, err := pg_query.Parse(query)
	if err != nil {
		return "", fmt.Errorf("parsing db_users.query: %w", err)
	}
	if len(tree.Stmts) != 1 {
		return "", errors.New("db_users.query is not one statement")
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	if sel == nil || sel.Op != pg_query.SetOperation_SETOP_NONE || len(sel.FromClause) == 0 {
		return "", errors.New("db_users.query is not a plain SELECT ... FROM ... WHERE: its users cannot be listed")
	}
	sel.WhereClause = nil
	sel.LimitCount = pg_query.MakeAConstIntNode(int64(limit), 0)
	sel.LimitOffset = nil
	sel.LimitOption = pg_query.LimitOption_LIMIT_OPTION_COUNT
	params := false
	walkNodes(sel.ProtoReflect(), func(m protoreflect.Message) {
		if _, ok := m.Interface().(*pg_query.ParamRef); ok {
			params = true
		}
	})
	if params {
		return "", errors.New("db_users.query uses $1 outside its WHERE clause: its users cannot be listed")
	}
	return pg_query.Deparse(tree)
}

// walkNodes calls visit for m and every message below it.
func walkNodes(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			list := v.List()
			for i := range list.Len() {
				walkNodes(list.Get(i).Message(), visit)
			}
			return true
		}
		walkNodes(v.Message(), visit)
		return true
	})
}

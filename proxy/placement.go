package proxy

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/guard"
)

// Tenant placement (config/placement.go): each tenant's sessions go to
// the upstream its placement names (in transaction mode, that upstream's
// own pool), and a tenant placed in a schema gets search_path and its role
// asserted with the context, both protected by the guard.

// upstream is one database tenants are placed on.
type upstream struct {
	name    string
	url     string
	config  *pgconn.Config // dials through directConn
	poolCfg config.Pool
	pool    *txPool // transaction mode's connections; nil when no user is in that mode
	roles   roleCheck
}

// newUpstream parses an upstream's connection string.
func newUpstream(u config.Upstream) (*upstream, error) {
	cfg, err := pgconn.ParseConfig(u.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", u.Name, err)
	}
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newDirectConn(conn), nil
	}
	return &upstream{name: u.Name, url: u.URL, config: cfg, poolCfg: u.Effective}, nil
}

// placement is where a session's tenant lives, resolved at login.
type placement struct {
	up     *upstream
	schema string // "": search_path is the client's
	role   string // the role SET with the context; "" for none
}

// placementOf resolves ident's placement: its tenant's in the config,
// with what the identity source says (db_users columns) over it. The
// identity's own role and the placement's must agree. A schema without a
// role is refused: search_path alone does not isolate.
func (rt *runtime) placementOf(ident auth.Identity) (placement, error) {
	p := rt.cfg.Placement(ident.Tenant)
	if ident.Upstream != "" {
		p.Upstream = ident.Upstream
	}
	if ident.Schema != "" {
		p.Schema = ident.Schema
	}
	role := p.Role
	switch {
	case ident.Role != "" && role != "" && ident.Role != role:
		return placement{}, &pgconn.PgError{Severity: severityFatal, Code: codeInsufficientPrivilege,
			Message: fmt.Sprintf("role %q of user %q differs from the role %q of tenant %q's placement", ident.Role, ident.User, role, ident.Tenant),
			Hint:    "The operator must give the user no role of its own, or the placement's."}
	case ident.Role != "":
		role = ident.Role
	}
	if owner, ok := rt.schemaRoles[role]; ok && owner != ident.Tenant {
		// A token's role claim or a db_users row naming another tenant's
		// schema role (the config refuses users[].role doing so).
		return placement{}, &pgconn.PgError{Severity: severityFatal, Code: codeInsufficientPrivilege,
			Message: fmt.Sprintf("role %q of user %q is another tenant's: a tenant placed in a schema is isolated by its role", role, ident.User),
			Hint:    "The identity source must give the user no role, or a role of its own tenant."}
	}
	if p.Schema != "" && role == "" {
		return placement{}, &pgconn.PgError{Severity: severityFatal, Code: codeInsufficientPrivilege,
			Message: fmt.Sprintf("tenant %q is placed in schema %q without a role", ident.Tenant, p.Schema),
			Detail:  "search_path alone does not isolate a tenant: pgtenant refuses the session.",
			Hint:    "The operator must give the tenant's placement a role with USAGE on its schema only."}
	}
	up := rt.upstreams[p.Upstream]
	if up == nil {
		return placement{}, fatalf(codeConnectionRejected, "tenant %q is placed on upstream %q, which the configuration does not have", ident.Tenant, p.Upstream)
	}
	return placement{up: up, schema: p.Schema, role: role}, nil
}

// checkStartup refuses a startup search_path for a tenant placed in a
// schema: pgtenant sets it.
func (pl placement) checkStartup(params map[string]string) error {
	if _, ok := params["search_path"]; ok && pl.schema != "" {
		return &pgconn.PgError{Severity: severityFatal, Code: codeInsufficientPrivilege,
			Message: `permission denied to set parameter "search_path"`,
			Detail:  "pgtenant sets search_path to the tenant's schema; a client may not set it."}
	}
	return nil
}

// placementSettings are the settings a placement adds to the context:
// search_path, then the role (last of all).
func (pl placement) settings() []setting {
	var out []setting
	if pl.schema != "" {
		// Quoted, so that the schema's name is taken as written.
		out = append(out, setting{name: "search_path", value: quoteIdent(pl.schema)})
	}
	if pl.role != "" {
		out = append(out, setting{name: "role", value: pl.role})
	}
	return out
}

// guards are a runtime's statement guards, one per kind of session.
type guards struct {
	// By [pooled][readOnly][schema]: sessions in transaction mode, read-only
	// ones, and those of tenants placed in a schema (search_path protected).
	g [2][2][2]*guard.Guard
}

func newGuards(cfg *config.Config) *guards {
	gs := &guards{}
	for pooled := range 2 {
		if pooled == 1 && !cfg.UsesTransactionPool() {
			continue
		}
		for readOnly := range 2 {
			for schema := range 2 {
				extra := cfg.ProtectedSettings()
				if schema == 1 {
					extra = append(extra, "search_path")
				}
				gs.g[pooled][readOnly][schema] = guard.New(guard.Policy{TenantSetting: cfg.TenantSetting, ExtraSettings: extra,
					Pooled: pooled == 1, ReadOnly: readOnly == 1})
			}
		}
	}
	return gs
}

// pick returns the guard of a session.
func (gs *guards) pick(pooled, readOnly bool, pl placement) *guard.Guard {
	return gs.g[b2i(pooled)][b2i(readOnly)][b2i(pl.schema != "")]
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// adoptUpstreams gives rt its upstreams, each with its transaction pool
// when some user is in that mode: the old runtime's pool where the URL and
// the pool settings are unchanged, else a new one. A replaced pool is
// retired once rt is in use (retire.go).
func (s *Server) adoptUpstreams(rt, old *runtime) error {
	rt.upstreams = map[string]*upstream{}
	for _, u := range rt.cfg.AllUpstreams() {
		up, err := newUpstream(u)
		if err != nil {
			return err
		}
		rt.upstreams[u.Name] = up
	}
	rt.defaultUp = rt.upstreams[config.DefaultUpstream]
	rt.upstreamConfig, rt.database = rt.defaultUp.config, rt.defaultUp.config.Database
	if !rt.cfg.UsesTransactionPool() {
		return nil
	}
	for _, up := range rt.upstreams {
		if old != nil {
			if o := old.upstreams[up.name]; o != nil && o.pool != nil && o.url == up.url && reflect.DeepEqual(o.poolCfg, up.poolCfg) {
				up.pool = o.pool
				continue
			}
		}
		cfg := up.config
		up.pool = newTxPool(up.name, up.poolCfg, func(ctx context.Context) (*serverConn, error) { return rt.dialPooled(ctx, cfg) }, s.observer)
		up.pool.loop = s.loopFor
		up.pool.log = s.log.With("upstream", up.name)
		s.mu.Lock()
		s.pools = append(s.pools, up.pool)
		s.mu.Unlock()
	}
	rt.pool = rt.defaultUp.pool
	return nil
}

// Roles. A session with a role of its own (its placement's, its user's,
// its token's) runs as that role; one without runs as the upstream login
// role. That role is a member of the tenants' roles (it SETs ROLE to them),
// and a member inherits the privileges of its roles unless it is NOINHERIT:
// a tenant without a role would then read and write the schemas of the
// tenants with one. Such sessions are refused while the login role
// inherits from roles.

// roleCheckEvery bounds how long a check of the login role stands.
const roleCheckEvery = time.Minute

// roleCheck is an upstream's last check of its login role; mu guards it.
type roleCheck struct {
	mu      sync.Mutex
	checked time.Time
	err     error
}

// rolesInUse reports whether any session may run as a role of its own.
func rolesInUse(cfg *config.Config) bool {
	if cfg.JWT != nil && cfg.JWT.RoleClaim != "" || cfg.DBUsers != nil {
		return true
	}
	for _, u := range cfg.Users {
		if u.Role != "" {
			return true
		}
	}
	for _, t := range cfg.Tenants {
		if t.Role != "" {
			return true
		}
	}
	return false
}

// checkLoginRole refuses a session without a role of its own on up while
// the login role inherits the privileges of roles it is a member of.
func (rt *runtime) checkLoginRole(ctx context.Context, pl placement) error {
	if pl.role != "" || !rt.rolesInUse {
		return nil
	}
	rc := &pl.up.roles
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if time.Since(rc.checked) < roleCheckEvery {
		return rc.err
	}
	ctx, cancel := context.WithTimeout(ctx, rt.cfg.ConnectTimeout.Duration)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, pl.up.config)
	if err != nil {
		return upstreamConnectError(ctx, err, rt.cfg.ConnectTimeout.Duration)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, `SELECT r.rolname, pg_catalog.string_agg(g.rolname, ', ' ORDER BY g.rolname)
		FROM pg_catalog.pg_roles r JOIN pg_catalog.pg_auth_members m ON m.member OPERATOR(pg_catalog.=) r.oid
		JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid
		WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER AND r.rolinherit GROUP BY r.rolname`).ReadAll()
	if err != nil {
		return fatalf(codeConnectionFailure, "pgtenant could not check the upstream role: %v", err)
	}
	rc.checked, rc.err = time.Now(), nil
	if len(res) == 1 && len(res[0].Rows) == 1 {
		login, roles := string(res[0].Rows[0][0]), string(res[0].Rows[0][1])
		rc.err = &pgconn.PgError{Severity: severityFatal, Code: codeInsufficientPrivilege,
			Message: fmt.Sprintf("the upstream role %q inherits the privileges of %s: a tenant without a role of its own would have them", login, roles),
			Detail:  "pgtenant refuses sessions that would run as the upstream role while it inherits from other roles.",
			Hint:    fmt.Sprintf("The operator must make it NOINHERIT (ALTER ROLE %s NOINHERIT): it can still SET ROLE to the tenants' roles.", login)}
	}
	return rc.err
}

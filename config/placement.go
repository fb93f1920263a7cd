package config

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Tenant placement: where a tenant's data lives. Every tenant has one: the
// upstream its sessions connect to (the default one, from upstream: and
// pool:, unless tenants[id].upstream names another), and optionally the
// schema its search_path is set to and the role its sessions run as.
// Clients always connect with the default upstream's database name;
// where their tenant lives is pgtenant's business.

// DefaultUpstream names the upstream of the top-level upstream: and pool:.
const DefaultUpstream = "default"

// Upstream is one more database (or cluster) tenants can be placed on.
type Upstream struct {
	Name string `yaml:"name"`
	// URL is a libpq URL or keyword/value string, as upstream:.
	URL string `yaml:"url"`
	// Pool sizes the upstream's own transaction pool; a field left out is
	// the top-level pool's.
	Pool UpstreamPool `yaml:"pool"`
	// Effective is Pool over the top-level pool, defaults applied (Validate).
	Effective Pool `yaml:"-"`
	// ContextScope overrides the top-level context_scope for this upstream
	// (a Citus cluster among plain PostgreSQL databases).
	ContextScope string `yaml:"context_scope"`
}

// UpstreamPool is the part of Pool that is per upstream: the pool mode is
// per user, and the per-tenant caps are in tenants.
type UpstreamPool struct {
	Size                  int      `yaml:"size"`
	MinIdle               int      `yaml:"min_idle"`
	MaxWaiting            int      `yaml:"max_waiting"`
	WaitTimeout           Duration `yaml:"wait_timeout"`
	IdleTimeout           Duration `yaml:"idle_timeout"`
	MaxLifetime           Duration `yaml:"max_lifetime"`
	HealthCheckAfter      Duration `yaml:"health_check_after"`
	MaxPreparedStatements int      `yaml:"max_prepared_statements"`
	MaxPinned             int      `yaml:"max_pinned"`
	TenantMaxPinned       int      `yaml:"tenant_max_pinned"`
	PinnedIdleTimeout     Duration `yaml:"pinned_idle_timeout"`
}

// Placement is where one tenant lives.
type Placement struct {
	Upstream string // an upstream's name; DefaultUpstream unless placed elsewhere
	Schema   string // "": the role's own search_path (shared tables)
	Role     string // "": the upstream login role, or the user's own role
}

// Placement returns tenant's placement from its tenants entry.
func (c *Config) Placement(tenant string) Placement {
	p := Placement{Upstream: DefaultUpstream}
	if l, ok := c.Tenants[tenant]; ok {
		p.Schema, p.Role = l.Schema, l.Role
		if l.Upstream != "" {
			p.Upstream = l.Upstream
		}
	}
	return p
}

// AllUpstreams returns the default upstream first, then upstreams, each
// with its effective pool settings (after Validate).
func (c *Config) AllUpstreams() []Upstream {
	out := []Upstream{{Name: DefaultUpstream, URL: c.Upstream, Effective: c.Pool}}
	return append(out, c.Upstreams...)
}

// HasUpstream reports whether name is the default upstream or one of upstreams.
func (c *Config) HasUpstream(name string) bool {
	return name == DefaultUpstream || slices.ContainsFunc(c.Upstreams, func(u Upstream) bool { return u.Name == name })
}

// upstreamNameRE keeps names usable as metric labels and in log lines.
var upstreamNameRE = regexp.MustCompile(`^[a-z0-9_][a-z0-9_-]{0,62}$`)

// validateUpstreams checks upstreams and computes their effective pools
// from the top-level pool as the file wrote it (so that, say, max_pinned
// still defaults to half of the upstream's own size). Runs before
// validatePool applies the top-level defaults; idempotent.
func (c *Config) validateUpstreams(add func(field, format string, args ...any)) {
	if !c.poolWrittenSet {
		c.poolWritten, c.poolWrittenSet = c.Pool, true
	}
	seen := map[string]int{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		field := fmt.Sprintf("upstreams[%d]", i)
		switch {
		case u.Name == DefaultUpstream:
			add(field+".name", "%q is the top-level upstream's name; pick another", DefaultUpstream)
		case !upstreamNameRE.MatchString(u.Name):
			add(field+".name", "%q must be 1 to 63 lowercase letters, digits, '_' or '-' (it becomes a metric label)", u.Name)
		default:
			if j, dup := seen[u.Name]; dup {
				add(field+".name", "%q is already upstreams[%d]'s name; names must be unique", u.Name, j)
			}
			seen[u.Name] = i
		}
		if strings.TrimSpace(u.URL) == "" {
			add(field+".url", "must be set to the PostgreSQL connection string, e.g. \"postgres://pgtenant@db2:5432/app_acme\"")
		} else if _, err := pgconn.ParseConfig(u.URL); err != nil {
			add(field+".url", "%v", err)
		}
		if !validContextScope(u.ContextScope) {
			add(field+".context_scope", "%q is not one of %s", u.ContextScope, strings.Join(contextScopes, ", "))
		}
		u.Effective = overlayPool(c.poolWritten, u.Pool)
		u.Effective.applyDefaults()
		checkPoolNumbers(field+".pool", u.Effective, add)
	}
}

// overlayPool is base with the fields over sets (non-zero) replaced.
func overlayPool(base Pool, over UpstreamPool) Pool {
	b := reflect.ValueOf(&base).Elem()
	o := reflect.ValueOf(over)
	for i := range o.NumField() {
		if f := o.Field(i); !f.IsZero() {
			b.FieldByName(o.Type().Field(i).Name).Set(f)
		}
	}
	return base
}

// SchemaRoles maps the role of each tenant placed in a schema to that
// tenant. A schema tenant is isolated by its role (USAGE on its schema
// only): no other tenant may run as it.
func (c *Config) SchemaRoles() map[string]string {
	roles := map[string]string{}
	for _, tenant := range slices.Sorted(maps.Keys(c.Tenants)) {
		if l := c.Tenants[tenant]; l.Schema != "" && l.Role != "" {
			if _, taken := roles[l.Role]; !taken {
				roles[l.Role] = tenant
			}
		}
	}
	return roles
}

// validatePlacements checks the placement keys of tenants; tenant_defaults
// may not have any (a placement is one tenant's).
func (c *Config) validatePlacements(add func(field, format string, args ...any)) {
	d := c.TenantDefaults
	for key, v := range map[string]string{"upstream": d.Upstream, "schema": d.Schema, "role": d.Role} {
		if v != "" {
			add("tenant_defaults."+key, "a placement is per tenant: set %s in tenants[id]", key)
		}
	}
	names := []string{DefaultUpstream}
	for _, u := range c.Upstreams {
		names = append(names, u.Name)
	}
	roles := map[string]string{} // tenant -> placement role
	schemaRoles := c.SchemaRoles()
	for _, tenant := range slices.Sorted(maps.Keys(c.Tenants)) {
		l := c.Tenants[tenant]
		field := fmt.Sprintf("tenants[%q]", tenant)
		if l.Upstream != "" && !c.HasUpstream(l.Upstream) {
			add(field+".upstream", "%q is not an upstream: name one of %s (\"default\" is the top-level upstream)", l.Upstream, strings.Join(names, ", "))
		}
		if l.Schema != "" {
			switch {
			case hasControl(l.Schema):
				add(field+".schema", "must not contain control characters")
			case strings.HasPrefix(strings.ToLower(l.Schema), "pg_"):
				add(field+".schema", "%q: names beginning with pg_ are PostgreSQL's", l.Schema)
			case l.Role == "":
				add(field+".schema", "needs a role: search_path alone does not isolate a tenant (schema-qualified names bypass it); name the tenant's role, which has USAGE on this schema only")
			}
		}
		if hasControl(l.Role) {
			add(field+".role", "must not contain control characters")
		}
		if owner := schemaRoles[l.Role]; l.Role != "" && owner != "" && owner != tenant {
			add(field+".role", "%q is the role of tenant %q, placed in schema %q, which that role isolates: give each tenant placed in a schema a role of its own", l.Role, owner, c.Tenants[owner].Schema)
		}
		roles[tenant] = l.Role
	}
	for i, u := range c.Users {
		switch r := roles[u.Tenant]; {
		case r != "" && u.Role != "" && u.Role != r:
			add(UserField(i, u.Name), "role: %q differs from the role of its tenant's placement (tenants[%q].role %q); leave one out", u.Role, u.Tenant, r)
		case u.Role != "" && schemaRoles[u.Role] != "" && schemaRoles[u.Role] != u.Tenant:
			add(UserField(i, u.Name), "role: %q is the role of tenant %q, placed in schema %q: a user of tenant %q would reach that tenant's tables", u.Role, schemaRoles[u.Role], c.Tenants[schemaRoles[u.Role]].Schema, u.Tenant)
		}
	}
}

// checkPoolNumbers refuses negative sizes and durations in p, naming them
// under prefix.
func checkPoolNumbers(prefix string, p Pool, add func(field, format string, args ...any)) {
	for name, n := range map[string]int{
		"size": p.Size, "min_idle": p.MinIdle, "max_waiting": p.MaxWaiting, "max_prepared_statements": p.MaxPreparedStatements,
		"max_pinned": p.MaxPinned, "tenant_max_pinned": p.TenantMaxPinned,
	} {
		if n < 0 {
			add(prefix+"."+name, "must not be negative")
		}
	}
	for name, d := range map[string]Duration{
		"wait_timeout": p.WaitTimeout, "idle_timeout": p.IdleTimeout, "max_lifetime": p.MaxLifetime,
		"health_check_after": p.HealthCheckAfter, "pinned_idle_timeout": p.PinnedIdleTimeout,
	} {
		if d.Duration < 0 {
			add(prefix+"."+name, "must not be negative")
		}
	}
	if p.MinIdle > p.Size {
		add(prefix+".min_idle", "%d exceeds the pool's size %d", p.MinIdle, p.Size)
	}
}

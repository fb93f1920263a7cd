package config

import (
	"strings"
	"testing"
	"time"
)

func TestPlacement(t *testing.T) {
	const two = "upstreams:\n  - {name: eu, url: \"postgres://pgtenant@db2:5432/app_eu\", pool: {size: 4}}\n"
	tests := []struct {
		desc   string
		yaml   string // appended to minimal
		tenant string
		want   Placement
		err    string
	}{
		{desc: "no placement: the default upstream", tenant: "acme", want: Placement{Upstream: DefaultUpstream}},
		{
			desc:   "another upstream",
			yaml:   two + "tenants: {acme: {upstream: eu}}\n",
			tenant: "acme", want: Placement{Upstream: "eu"},
		},
		{
			desc:   "a schema and its role on the default upstream",
			yaml:   "tenants: {acme: {schema: tenant_acme, role: acme_role, statement_timeout: 1s}}\n",
			tenant: "acme", want: Placement{Upstream: DefaultUpstream, Schema: "tenant_acme", Role: "acme_role"},
		},
		{
			desc:   "another tenant is not placed",
			yaml:   two + "tenants: {acme: {upstream: eu, schema: s, role: r}}\n",
			tenant: "globex", want: Placement{Upstream: DefaultUpstream},
		},
		{
			desc: "unknown upstream", yaml: two + "tenants: {acme: {upstream: us}}\n",
			err: `tenants["acme"].upstream: "us" is not an upstream: name one of default, eu`,
		},
		{desc: "schema without a role", yaml: "tenants: {acme: {schema: s}}\n", err: `tenants["acme"].schema: needs a role: search_path alone does not isolate`},
		{desc: "pg_ schema", yaml: "tenants: {acme: {schema: pg_catalog, role: r}}\n", err: `tenants["acme"].schema: "pg_catalog": names beginning with pg_ are PostgreSQL's`},
		{desc: "placement in the defaults", yaml: "tenant_defaults: {schema: s}\n", err: "tenant_defaults.schema: a placement is per tenant"},
		{desc: "upstream named default", yaml: "upstreams: [{name: default, url: \"postgres://x@h/d\"}]\n", err: `upstreams[0].name: "default" is the top-level upstream's name`},
		{desc: "upstream name with a space", yaml: "upstreams: [{name: \"e u\", url: \"postgres://x@h/d\"}]\n", err: `upstreams[0].name: "e u" must be 1 to 63 lowercase letters`},
		{
			desc: "duplicate upstream names",
			yaml: "upstreams: [{name: eu, url: \"postgres://x@h/d\"}, {name: eu, url: \"postgres://x@h/e\"}]\n",
			err:  `upstreams[1].name: "eu" is already upstreams[0]'s name`,
		},
		{desc: "upstream without a url", yaml: "upstreams: [{name: eu}]\n", err: "upstreams[0].url: must be set"},
		{desc: "upstream with a bad url", yaml: "upstreams: [{name: eu, url: \"postgres://x@h:notaport/d\"}]\n", err: "upstreams[0].url: "},
		{desc: "pool mode per upstream", yaml: "upstreams: [{name: eu, url: \"postgres://x@h/d\", pool: {mode: transaction}}]\n", err: `unknown key "mode" in upstreams[0].pool`},
		{desc: "negative pool size", yaml: "upstreams: [{name: eu, url: \"postgres://x@h/d\", pool: {size: -1}}]\n", err: "upstreams[0].pool.size: must not be negative"},
		{
			desc: "a user's role contradicting its tenant's placement role",
			yaml: "    role: other\ntenants: {acme: {schema: s, role: r}}\n",
			err:  `users[0] ("alice"): role: "other" differs from the role of its tenant's placement (tenants["acme"].role "r")`,
		},
		{
			desc: "another tenant's schema role as a tenant's role",
			yaml: "tenants: {acme: {role: r}, globex: {schema: s, role: r}}\n",
			err:  `tenants["acme"].role: "r" is the role of tenant "globex", placed in schema "s"`,
		},
		{
			desc: "two schema tenants with one role",
			yaml: "tenants: {acme: {schema: s1, role: r}, globex: {schema: s2, role: r}}\n",
			err:  `tenants["globex"].role: "r" is the role of tenant "acme", placed in schema "s1"`,
		},
		{
			desc: "a user's role that is another tenant's schema role",
			yaml: "    role: r\ntenants: {globex: {schema: s, role: r}}\n",
			err:  `users[0] ("alice"): role: "r" is the role of tenant "globex", placed in schema "s": a user of tenant "acme" would reach that tenant's tables`,
		},
		{
			desc:   "tenants in shared tables sharing a role",
			yaml:   "tenants: {acme: {role: app_user}, globex: {role: app_user}}\n",
			tenant: "globex", want: Placement{Upstream: DefaultUpstream, Role: "app_user"},
		},
		{
			desc:   "a user's role equal to the placement's",
			yaml:   "    role: r\ntenants: {acme: {schema: s, role: r}}\n",
			tenant: "acme", want: Placement{Upstream: DefaultUpstream, Schema: "s", Role: "r"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse([]byte(minimal + tt.yaml))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse: %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := c.Placement(tt.tenant); got != tt.want {
				t.Errorf("Placement(%q) = %+v, want %+v", tt.tenant, got, tt.want)
			}
		})
	}
}

// An upstream's pool inherits what it leaves out from the top-level pool
// as written: defaults derived from the size follow its own size.
func TestUpstreamPool(t *testing.T) {
	c, err := Parse([]byte(minimal + "pool: {size: 10, wait_timeout: 2s, tenant_max_pinned: 3}\n" +
		"upstreams:\n  - {name: eu, url: \"postgres://x@h/d\", pool: {size: 4, idle_timeout: 1m}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	all := c.AllUpstreams()
	if len(all) != 2 || all[0].Name != DefaultUpstream || all[0].URL != c.Upstream || all[1].Name != "eu" {
		t.Fatalf("AllUpstreams = %+v", all)
	}
	if d := all[0].Effective; d.Size != 10 || d.MaxPinned != 5 || d.TenantMaxConnections != 10 {
		t.Errorf("default pool = %+v", d)
	}
	eu := all[1].Effective
	want := Pool{Mode: PoolModeSession, Size: 4, WaitTimeout: Duration{2 * time.Second}, IdleTimeout: Duration{time.Minute},
		MaxLifetime: Duration{DefaultPoolMaxLifetime}, HealthCheckAfter: Duration{DefaultPoolHealthCheckAfter},
		MaxPreparedStatements: DefaultMaxPreparedStatements, TenantMaxConnections: 4, MaxPinned: 2, TenantMaxPinned: 3,
		PinnedIdleTimeout: Duration{DefaultPinnedIdleTimeout}}
	if eu.Mode != want.Mode || eu.Size != want.Size || eu.WaitTimeout != want.WaitTimeout || eu.IdleTimeout != want.IdleTimeout ||
		eu.MaxLifetime != want.MaxLifetime || eu.HealthCheckAfter != want.HealthCheckAfter || eu.MaxPreparedStatements != want.MaxPreparedStatements ||
		eu.TenantMaxConnections != want.TenantMaxConnections || eu.MaxPinned != want.MaxPinned || eu.TenantMaxPinned != want.TenantMaxPinned ||
		eu.PinnedIdleTimeout != want.PinnedIdleTimeout {
		t.Errorf("eu pool = %+v\nwant       %+v", eu, want)
	}
	// Validate again (configs built in code are): nothing changes.
	if err := c.Validate(); err != nil || c.AllUpstreams()[1].Effective.Size != 4 || c.AllUpstreams()[1].Effective.MaxPinned != 2 {
		t.Errorf("after a second Validate: %v, %+v", err, c.AllUpstreams()[1].Effective)
	}
}

package proxy

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

func TestPlacementOf(t *testing.T) {
	cfg := &config.Config{Tenants: map[string]config.TenantLimits{
		"s": {Schema: "tenant_s", Role: "s_role"},
		"d": {Upstream: "eu"},
	}}
	def, eu := &upstream{name: config.DefaultUpstream}, &upstream{name: "eu"}
	rt := &runtime{cfg: cfg, upstreams: map[string]*upstream{def.name: def, eu.name: eu}}
	tests := []struct {
		desc     string
		ident    auth.Identity
		up       *upstream
		settings []setting
		code     string
	}{
		{desc: "shared tables", ident: auth.Identity{Tenant: "x"}, up: def},
		{desc: "a user's role", ident: auth.Identity{Tenant: "x", Role: "bi"}, up: def, settings: []setting{{name: "role", value: "bi"}}},
		{desc: "schema and role", ident: auth.Identity{Tenant: "s"}, up: def,
			settings: []setting{{name: "search_path", value: `"tenant_s"`}, {name: "role", value: "s_role"}}},
		{desc: "the same role from the user", ident: auth.Identity{Tenant: "s", Role: "s_role"}, up: def,
			settings: []setting{{name: "search_path", value: `"tenant_s"`}, {name: "role", value: "s_role"}}},
		{desc: "another role from the user", ident: auth.Identity{Tenant: "s", Role: "other"}, code: codeInsufficientPrivilege},
		{desc: "own database", ident: auth.Identity{Tenant: "d"}, up: eu},
		{desc: "db_users places it", ident: auth.Identity{Tenant: "x", Upstream: "eu", Schema: `We"ird`, Role: "r"}, up: eu,
			settings: []setting{{name: "search_path", value: `"We""ird"`}, {name: "role", value: "r"}}},
		{desc: "db_users schema without a role", ident: auth.Identity{Tenant: "x", Schema: "a"}, code: codeInsufficientPrivilege},
		{desc: "unknown upstream", ident: auth.Identity{Tenant: "x", Upstream: "mars"}, code: codeConnectionRejected},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			pl, err := rt.placementOf(tt.ident)
			if tt.code != "" {
				pgErr, ok := err.(*pgconn.PgError)
				if !ok || pgErr.Code != tt.code || pgErr.Severity != severityFatal {
					t.Fatalf("err = %v, want FATAL %s", err, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pl.up != tt.up {
				t.Errorf("upstream %q, want %q", pl.up.name, tt.up.name)
			}
			got := pl.settings()
			if len(got) != len(tt.settings) {
				t.Fatalf("settings %v, want %v", got, tt.settings)
			}
			for i := range got {
				if got[i] != tt.settings[i] {
					t.Errorf("settings %v, want %v", got, tt.settings)
				}
			}
		})
	}
}

// The schema is set as the one identifier it is, case and quotes kept.
func TestSchemaSetStatement(t *testing.T) {
	pl := placement{schema: `We"ird`, role: "r"}
	if got, want := setStatement(pl.settings()[0]), `SET search_path TO "We""ird"`; got != want {
		t.Errorf("%s, want %s", got, want)
	}
}

package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

// strandedIn: a session stays where a reload left its upstream's pool
// (transaction mode) or URL (session mode) as they were, or where the new
// configuration places its tenant anyway; otherwise it is to leave, with
// an error naming the upstream and what became of it.
func TestStrandedIn(t *testing.T) {
	oldPool, newPool := &txPool{}, &txPool{}
	up := func(name, url string, pool *txPool) *upstream { return &upstream{name: name, url: url, pool: pool} }
	runtimeOf := func(tenants map[string]config.TenantLimits, ups ...*upstream) *runtime {
		rt := &runtime{cfg: &config.Config{Tenants: tenants}, upstreams: map[string]*upstream{}}
		for _, u := range ups {
			rt.upstreams[u.name] = u
		}
		return rt
	}
	onEU := map[string]config.TenantLimits{"t": {Upstream: "eu"}}
	tests := []struct {
		desc   string
		pooled bool
		on     *upstream
		rt     *runtime
		want   string // "" to stay, else part of the error
	}{
		{"tx: pool kept", true, up("eu", "u1", oldPool), runtimeOf(onEU, up("default", "d", nil), up("eu", "u1", oldPool)), ""},
		{"tx: pool replaced", true, up("eu", "u1", oldPool), runtimeOf(onEU, up("default", "d", nil), up("eu", "u1", newPool)), `upstream "eu" was changed`},
		{"tx: upstream removed", true, up("eu", "u1", oldPool), runtimeOf(nil, up("default", "d", newPool)), `upstream "eu" was removed`},
		{"tx: no pool any more", true, up("eu", "u1", oldPool), runtimeOf(onEU, up("default", "d", nil), up("eu", "u1", nil)), `upstream "eu" was changed`},
		{"session: URL kept, pool changed", false, up("eu", "u1", oldPool), runtimeOf(onEU, up("default", "d", nil), up("eu", "u1", newPool)), ""},
		{"session: URL changed", false, up("eu", "u1", nil), runtimeOf(onEU, up("default", "d", nil), up("eu", "u2", nil)), `upstream "eu" was changed`},
		{"session: removed, tenant now on the same URL", false, up("eu", "u1", nil), runtimeOf(nil, up("default", "u1", nil)), ""},
		{"session: removed", false, up("eu", "u1", nil), runtimeOf(nil, up("default", "d", nil)), `upstream "eu" was removed`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := &relay{}
			r.up = sessionBinding{r}
			if tt.pooled {
				r.up = leaseBinding{r}
			}
			ss := &session{ident: auth.Identity{Tenant: "t"}, pl: placement{up: tt.on}, relay: r}
			err := ss.strandedIn(tt.rt)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("stranded: %v", err)
			case tt.want != "" && (err == nil || err.Code != codeAdminShutdown || !strings.Contains(err.Message, tt.want)):
				t.Fatalf("got %v, want 57P01 with %q", err, tt.want)
			}
		})
	}
}

// Readiness: ready unless shutting down or the upstream asked about (the
// default one when none is) is down; the text's first line says which.
func TestReadiness(t *testing.T) {
	down := errors.New("connection refused")
	ups := func(defaultErr, euErr error) []UpstreamReadiness {
		return []UpstreamReadiness{{Upstream: "default", Err: defaultErr}, {Upstream: "eu", Err: euErr}}
	}
	tests := []struct {
		desc  string
		rd    Readiness
		ready bool
		first string
	}{
		{"all up", Readiness{Upstreams: ups(nil, nil)}, true, "ok"},
		{"another upstream down", Readiness{Upstreams: ups(nil, down)}, true, "ok"},
		{"default down", Readiness{Upstreams: ups(down, nil)}, false, "upstream default unreachable"},
		{"asked about one that is down", Readiness{Asked: "eu", Upstreams: ups(nil, down)[1:]}, false, "upstream eu unreachable"},
		{"asked about one that is up", Readiness{Asked: "eu", Upstreams: ups(down, nil)[1:]}, true, "ok"},
		{"asked about an unknown one", Readiness{Asked: "mars", Unknown: true}, false, `no upstream named "mars" in the configuration`},
		{"shutting down", Readiness{ShuttingDown: true, Upstreams: ups(nil, nil)}, false, "shutting down"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := tt.rd.Ready(); got != tt.ready {
				t.Errorf("Ready() = %v, want %v", got, tt.ready)
			}
			lines := strings.Split(strings.TrimSpace(tt.rd.String()), "\n")
			if lines[0] != tt.first || len(lines) != 1+len(tt.rd.Upstreams) {
				t.Errorf("text %q, want first line %q and a line per upstream", tt.rd.String(), tt.first)
			}
		})
	}
}

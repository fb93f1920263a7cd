package config

import (
	"strings"
	"testing"
)

func TestContextScope(t *testing.T) {
	eu := "upstreams:\n  - {name: eu, url: \"postgres://x@h/d\"%s}\n"
	tests := []struct {
		desc, yaml   string
		err          string
		defaultScope string
		euScope      string
	}{
		{desc: "unset: session everywhere", yaml: strings.Replace(eu, "%s", "", 1),
			defaultScope: ContextScopeSession, euScope: ContextScopeSession},
		{desc: "top level", yaml: "context_scope: transaction\n" + strings.Replace(eu, "%s", "", 1),
			defaultScope: ContextScopeTransaction, euScope: ContextScopeTransaction},
		{desc: "one upstream (a Citus cluster)", yaml: strings.Replace(eu, "%s", ", context_scope: transaction", 1),
			defaultScope: ContextScopeSession, euScope: ContextScopeTransaction},
		{desc: "an upstream back to session", yaml: "context_scope: transaction\n" + strings.Replace(eu, "%s", ", context_scope: session", 1),
			defaultScope: ContextScopeTransaction, euScope: ContextScopeSession},
		{desc: "unknown top level", yaml: "context_scope: statement\n", err: `context_scope: "statement" is not one of session, transaction`},
		{desc: "unknown per upstream", yaml: strings.Replace(eu, "%s", ", context_scope: local", 1), err: `upstreams[0].context_scope: "local" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse([]byte(minimal + tt.yaml))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ContextScopeOf(DefaultUpstream); got != tt.defaultScope {
				t.Errorf("default upstream: %s, want %s", got, tt.defaultScope)
			}
			if got := c.ContextScopeOf("eu"); got != tt.euScope {
				t.Errorf("eu: %s, want %s", got, tt.euScope)
			}
		})
	}
}

package config

import "slices"

// Context scopes: how long the tenant context set upstream lasts.
const (
	// ContextScopeSession sets it at session level (SET), asserted again at
	// every transaction start: it stays on the upstream connection between
	// transactions.
	ContextScopeSession = "session"
	// ContextScopeTransaction sets it with SET LOCAL in every transaction:
	// between transactions the upstream connection's value is empty. For
	// upstreams that carry only transaction-local settings to other nodes
	// (Citus with citus.propagate_set_commands = 'local').
	ContextScopeTransaction = "transaction"
)

var contextScopes = []string{ContextScopeSession, ContextScopeTransaction}

// validContextScope reports whether s is a context scope or unset ("").
func validContextScope(s string) bool { return s == "" || slices.Contains(contextScopes, s) }

// ContextScopeOf is the context scope of the upstream named upstream: its
// own context_scope, else the top-level one, else session.
func (c *Config) ContextScopeOf(upstream string) string {
	for _, u := range c.Upstreams {
		if u.Name == upstream && u.ContextScope != "" {
			return u.ContextScope
		}
	}
	if c.ContextScope != "" {
		return c.ContextScope
	}
	return ContextScopeSession
}

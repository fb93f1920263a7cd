package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Pool modes.
const (
	PoolModeSession     = "session"     // one upstream connection per client, for its whole session
	PoolModeTransaction = "transaction" // an upstream connection per transaction, shared by all clients
)

// Pool defaults, applied where the file leaves a field out (zero).
const (
	DefaultPoolSize              = 20
	DefaultPoolWaitTimeout       = 5 * time.Second
	DefaultPoolIdleTimeout       = 10 * time.Minute
	DefaultPoolMaxLifetime       = time.Hour
	DefaultPoolHealthCheckAfter  = 30 * time.Second
	DefaultMaxPreparedStatements = 200
	// DefaultMaxPreparedBytes is limits.max_prepared_bytes unless set.
	DefaultMaxPreparedBytes  = 64 << 20
	DefaultPinnedIdleTimeout = 5 * time.Minute
)

// Pool configures how client sessions share upstream connections.
type Pool struct {
	// Mode is the default pool mode: "session" (default) or "transaction".
	// users[].pool_mode overrides it per user.
	Mode string `yaml:"mode"`
	// Size bounds the upstream connections shared in transaction mode.
	Size int `yaml:"size"`
	// MinIdle connections are kept open even when nobody needs them.
	MinIdle int `yaml:"min_idle"`
	// MaxWaiting bounds the clients waiting for a connection; one more is
	// refused with 53300. Zero: no bound.
	MaxWaiting int `yaml:"max_waiting"`
	// WaitTimeout is how long a client waits for a connection before its
	// session ends with 57014.
	WaitTimeout Duration `yaml:"wait_timeout"`
	// IdleTimeout closes a pooled connection unused this long (above MinIdle).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxLifetime closes a pooled connection this old when it is released.
	MaxLifetime Duration `yaml:"max_lifetime"`
	// HealthCheckAfter: a connection idle longer than this is checked with an
	// empty query before it is handed out.
	HealthCheckAfter Duration `yaml:"health_check_after"`
	// MaxPreparedStatements bounds the statements pgtenant keeps prepared on
	// each upstream connection for its clients.
	MaxPreparedStatements int `yaml:"max_prepared_statements"`
	// TenantMaxConnections caps the upstream connections one tenant may hold
	// at once (default: Size), so that one tenant cannot starve the others.
	TenantMaxConnections int `yaml:"tenant_max_connections"`
	// Tenants overrides TenantMaxConnections per tenant.
	Tenants map[string]PoolTenant `yaml:"tenants"`
	// MaxPinned bounds the pooled connections pinned to one client each
	// (it holds a WITH HOLD cursor, a temporary table, a LISTEN or a
	// session advisory lock): default half of Size, at least one. A
	// statement that would pin one more is refused with 53400.
	MaxPinned int `yaml:"max_pinned"`
	// TenantMaxPinned bounds the pinned connections of one tenant (default
	// MaxPinned); they count against its TenantMaxConnections too.
	TenantMaxPinned int `yaml:"tenant_max_pinned"`
	// PinnedIdleTimeout ends a session that holds a pinned connection and
	// sends nothing for this long outside a transaction (default 5m).
	PinnedIdleTimeout Duration `yaml:"pinned_idle_timeout"`
}

// PoolTenant is a per-tenant pool override.
type PoolTenant struct {
	MaxConnections int `yaml:"max_connections"`
}

// TenantCap returns how many pooled connections tenant may hold at once.
func (p Pool) TenantCap(tenant string) int {
	if t, ok := p.Tenants[tenant]; ok && t.MaxConnections > 0 {
		return t.MaxConnections
	}
	return p.TenantMaxConnections
}

// PoolModeFor returns the pool mode of a user: its own pool_mode, else the default.
func (c *Config) PoolModeFor(user string) string {
	for _, u := range c.Users {
		if u.Name == user && u.PoolMode != "" {
			return u.PoolMode
		}
	}
	return c.Pool.Mode
}

// UsesTransactionPool reports whether any user may run in transaction mode.
func (c *Config) UsesTransactionPool() bool {
	if c.Pool.Mode == PoolModeTransaction {
		return true
	}
	return slices.ContainsFunc(c.Users, func(u User) bool { return u.PoolMode == PoolModeTransaction })
}

var validPoolModes = []string{PoolModeSession, PoolModeTransaction}

func (p *Pool) applyDefaults() {
	if p.Mode == "" {
		p.Mode = PoolModeSession
	}
	if p.Size == 0 {
		p.Size = DefaultPoolSize
	}
	if p.WaitTimeout.Duration == 0 {
		p.WaitTimeout.Duration = DefaultPoolWaitTimeout
	}
	if p.IdleTimeout.Duration == 0 {
		p.IdleTimeout.Duration = DefaultPoolIdleTimeout
	}
	if p.MaxLifetime.Duration == 0 {
		p.MaxLifetime.Duration = DefaultPoolMaxLifetime
	}
	if p.HealthCheckAfter.Duration == 0 {
		p.HealthCheckAfter.Duration = DefaultPoolHealthCheckAfter
	}
	if p.MaxPreparedStatements == 0 {
		p.MaxPreparedStatements = DefaultMaxPreparedStatements
	}
	if p.TenantMaxConnections == 0 {
		p.TenantMaxConnections = p.Size
	}
	if p.MaxPinned == 0 {
		p.MaxPinned = max(1, p.Size/2)
	}
	if p.TenantMaxPinned == 0 {
		p.TenantMaxPinned = p.MaxPinned
	}
	if p.PinnedIdleTimeout.Duration == 0 {
		p.PinnedIdleTimeout.Duration = DefaultPinnedIdleTimeout
	}
}

func (c *Config) validatePool(add func(field, format string, args ...any)) {
	p := &c.Pool
	p.applyDefaults()
	if !slices.Contains(validPoolModes, p.Mode) {
		add("pool.mode", "%q is not one of %s", p.Mode, strings.Join(validPoolModes, ", "))
	}
	positive := func(field string, n int) {
		if n < 0 {
			add(field, "must not be negative")
		}
	}
	positive("pool.size", p.Size)
	positive("pool.min_idle", p.MinIdle)
	positive("pool.max_waiting", p.MaxWaiting)
	positive("pool.max_prepared_statements", p.MaxPreparedStatements)
	positive("pool.tenant_max_connections", p.TenantMaxConnections)
	positive("pool.max_pinned", p.MaxPinned)
	positive("pool.tenant_max_pinned", p.TenantMaxPinned)
	if p.MinIdle > p.Size {
		add("pool.min_idle", "%d exceeds pool.size %d", p.MinIdle, p.Size)
	}
	for name, d := range map[string]time.Duration{
		"pool.wait_timeout": p.WaitTimeout.Duration, "pool.idle_timeout": p.IdleTimeout.Duration,
		"pool.max_lifetime": p.MaxLifetime.Duration, "pool.health_check_after": p.HealthCheckAfter.Duration,
		"pool.pinned_idle_timeout": p.PinnedIdleTimeout.Duration,
	} {
		if d < 0 {
			add(name, "must not be negative")
		}
	}
	for tenant, t := range p.Tenants {
		if t.MaxConnections <= 0 {
			add(fmt.Sprintf("pool.tenants[%q].max_connections", tenant), "must be greater than zero")
		}
	}
	for i, u := range c.Users {
		field := UserField(i, u.Name)
		if u.PoolMode != "" && !slices.Contains(validPoolModes, u.PoolMode) {
			add(field, "pool_mode: %q is not one of %s", u.PoolMode, strings.Join(validPoolModes, ", "))
		}
		if c.PoolModeFor(u.Name) == PoolModeTransaction && !u.GuardEnabled() {
			// In transaction mode the guard is what keeps session state (temp
			// tables, WITH HOLD cursors, LISTEN, session SETs) off shared connections.
			add(field, "guard: must be on for a user in transaction pool mode: the guard keeps session state off shared connections")
		}
	}
}

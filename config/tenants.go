package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// TenantLimits is what the config says about one tenant (tenants) or about
// every tenant (tenant_defaults). A field left out falls back to
// tenant_defaults, then to no limit; a duration of 0 means no limit.
type TenantLimits struct {
	// MaxConnections caps the pooled upstream connections the tenant holds
	// at once in transaction mode (was pool.tenant_max_connections and
	// pool.tenants[].max_connections).
	MaxConnections int `yaml:"max_connections"`
	// StatementTimeout, LockTimeout and IdleInTransactionSessionTimeout
	// are PostgreSQL's settings, asserted with the tenant context at every
	// transaction start; the guard refuses clients' changes to them.
	StatementTimeout                *Duration `yaml:"statement_timeout"`
	LockTimeout                     *Duration `yaml:"lock_timeout"`
	IdleInTransactionSessionTimeout *Duration `yaml:"idle_in_transaction_session_timeout"`
	// MaxTransactionDuration ends a session whose transaction stays open
	// longer (FATAL 25P04), enforced by pgtenant.
	MaxTransactionDuration *Duration `yaml:"max_transaction_duration"`
	// TransactionsPerSecond bounds the rate at which the tenant's sessions
	// start transactions (a token bucket shared by all of them); 0: none.
	TransactionsPerSecond *float64 `yaml:"transactions_per_second"`
	// RateLimitBurst is the bucket's size (default 1).
	RateLimitBurst *int `yaml:"rate_limit_burst"`
	// RateLimitWait bounds how long a transaction start waits for its
	// token; past it the session ends with 53400 (default 5s).
	RateLimitWait *Duration `yaml:"rate_limit_wait"`

	// The tenant's placement (tenants only; see placement.go): the upstream
	// its sessions use (default: the top-level one), the schema its
	// search_path is set to, and the role its sessions SET ROLE to.
	Upstream string `yaml:"upstream"`
	Schema   string `yaml:"schema"`
	Role     string `yaml:"role"`
}

// Default rate-limit settings.
const (
	DefaultRateLimitBurst = 1
	DefaultRateLimitWait  = 5 * time.Second
)

// TenantPolicy is a tenant's limits with the defaults applied.
type TenantPolicy struct {
	MaxConnections                  int
	StatementTimeout                time.Duration
	LockTimeout                     time.Duration
	IdleInTransactionSessionTimeout time.Duration
	MaxTransactionDuration          time.Duration
	TransactionsPerSecond           float64
	RateLimitBurst                  int
	RateLimitWait                   time.Duration
}

// LimitSettings are the PostgreSQL settings a tenant's limits assert; the
// guard protects each one that any tenant (or any identity source) sets.
var LimitSettings = []string{"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"}

// Settings returns the PostgreSQL settings p asserts, as name and value in
// milliseconds, in LimitSettings order; a zero limit is not asserted.
func (p TenantPolicy) Settings() [][2]string {
	var out [][2]string
	for i, d := range []time.Duration{p.StatementTimeout, p.LockTimeout, p.IdleInTransactionSessionTimeout} {
		if d > 0 {
			out = append(out, [2]string{LimitSettings[i], fmt.Sprint(max(1, d.Milliseconds()))})
		}
	}
	return out
}

// TenantPolicy returns tenant's limits: its own entry in tenants, over
// tenant_defaults.
func (c *Config) TenantPolicy(tenant string) TenantPolicy {
	p := TenantPolicy{MaxConnections: c.Pool.TenantCap(tenant), RateLimitBurst: DefaultRateLimitBurst, RateLimitWait: DefaultRateLimitWait}
	for _, l := range []*TenantLimits{&c.TenantDefaults, ptrTo(c.Tenants, tenant)} {
		if l == nil {
			continue
		}
		setDuration(&p.StatementTimeout, l.StatementTimeout)
		setDuration(&p.LockTimeout, l.LockTimeout)
		setDuration(&p.IdleInTransactionSessionTimeout, l.IdleInTransactionSessionTimeout)
		setDuration(&p.MaxTransactionDuration, l.MaxTransactionDuration)
		setDuration(&p.RateLimitWait, l.RateLimitWait)
		if l.TransactionsPerSecond != nil {
			p.TransactionsPerSecond = *l.TransactionsPerSecond
		}
		if l.RateLimitBurst != nil {
			p.RateLimitBurst = *l.RateLimitBurst
		}
	}
	return p
}

func ptrTo(m map[string]TenantLimits, k string) *TenantLimits {
	if l, ok := m[k]; ok {
		return &l
	}
	return nil
}

func setDuration(dst *time.Duration, d *Duration) {
	if d != nil {
		*dst = d.Duration
	}
}

// ProtectedLimitSettings are the LimitSettings some tenant's limits (or an
// identity source: jwt.limit_claims, db_users.limits) assert: clients may not change them.
func (c *Config) ProtectedLimitSettings() []string {
	set := map[string]bool{}
	all := append([]TenantLimits{c.TenantDefaults}, slices.Collect(maps.Values(c.Tenants))...)
	for _, l := range all {
		for i, d := range []*Duration{l.StatementTimeout, l.LockTimeout, l.IdleInTransactionSessionTimeout} {
			if d != nil && d.Duration > 0 {
				set[LimitSettings[i]] = true
			}
		}
	}
	if c.JWT != nil {
		for name := range c.JWT.LimitClaims {
			if slices.Contains(LimitSettings, name) {
				set[name] = true
			}
		}
	}
	if c.DBUsers != nil {
		for _, name := range c.DBUsers.Limits {
			if slices.Contains(LimitSettings, name) {
				set[name] = true
			}
		}
	}
	var out []string
	for _, name := range LimitSettings {
		if set[name] {
			out = append(out, name)
		}
	}
	return out
}

// deprecatedTenantCaps notes the old per-tenant cap keys (before defaults
// are applied, so only what the file says counts) and refuses a cap given
// both ways with different values.
func (c *Config) deprecatedTenantCaps() error {
	var errs []error
	p := &c.Pool
	if p.TenantMaxConnections != 0 {
		c.Deprecations = append(c.Deprecations, "pool.tenant_max_connections is deprecated: use tenant_defaults.max_connections")
		if d := c.TenantDefaults.MaxConnections; d != 0 && d != p.TenantMaxConnections {
			errs = append(errs, fmt.Errorf("tenant_defaults.max_connections: %d contradicts pool.tenant_max_connections %d; remove the deprecated key", d, p.TenantMaxConnections))
		}
	}
	for _, tenant := range slices.Sorted(maps.Keys(p.Tenants)) {
		c.Deprecations = append(c.Deprecations, fmt.Sprintf("pool.tenants[%q] is deprecated: use tenants[%q].max_connections", tenant, tenant))
		if l, ok := c.Tenants[tenant]; ok && l.MaxConnections != 0 && l.MaxConnections != p.Tenants[tenant].MaxConnections {
			errs = append(errs, fmt.Errorf("tenants[%q].max_connections: %d contradicts pool.tenants[%q].max_connections %d; remove the deprecated key",
				tenant, l.MaxConnections, tenant, p.Tenants[tenant].MaxConnections))
		}
	}
	return errors.Join(errs...)
}

// migrateTenantCaps makes the tenants section the one place for per-tenant
// connection caps: the pool reads the merged values (the old keys are
// aliases). Idempotent, as Validate may run more than once.
func (c *Config) migrateTenantCaps() {
	p := &c.Pool
	if c.TenantDefaults.MaxConnections != 0 {
		p.TenantMaxConnections = c.TenantDefaults.MaxConnections
	}
	for tenant, l := range c.Tenants {
		if l.MaxConnections == 0 {
			continue
		}
		if p.Tenants == nil {
			p.Tenants = map[string]PoolTenant{}
		}
		p.Tenants[tenant] = PoolTenant{MaxConnections: l.MaxConnections}
	}
}

// validateTenants checks tenant_defaults and tenants.
func (c *Config) validateTenants(add func(field, format string, args ...any)) {
	check := func(field string, l TenantLimits) {
		if l.MaxConnections < 0 {
			add(field+".max_connections", "must not be negative")
		}
		for name, d := range map[string]*Duration{
			"statement_timeout": l.StatementTimeout, "lock_timeout": l.LockTimeout,
			"idle_in_transaction_session_timeout": l.IdleInTransactionSessionTimeout,
			"max_transaction_duration":            l.MaxTransactionDuration, "rate_limit_wait": l.RateLimitWait,
		} {
			switch {
			case d == nil:
			case d.Duration < 0:
				add(field+"."+name, "must not be negative (0 means no limit)")
			case d.Duration > 0 && d.Duration < time.Millisecond && name != "rate_limit_wait" && name != "max_transaction_duration":
				add(field+"."+name, "%s is below PostgreSQL's unit of 1ms", d.Duration)
			case d.Duration > time.Duration(1<<31-1)*time.Millisecond && name != "rate_limit_wait" && name != "max_transaction_duration":
				add(field+"."+name, "%s exceeds PostgreSQL's maximum of 2147483647ms", d.Duration)
			}
		}
		if r := l.TransactionsPerSecond; r != nil && *r < 0 {
			add(field+".transactions_per_second", "must not be negative (0 means no limit)")
		}
		if b := l.RateLimitBurst; b != nil && *b < 1 {
			add(field+".rate_limit_burst", "must be at least 1")
		}
	}
	check("tenant_defaults", c.TenantDefaults)
	for _, tenant := range slices.Sorted(maps.Keys(c.Tenants)) {
		check(fmt.Sprintf("tenants[%q]", tenant), c.Tenants[tenant])
	}
}

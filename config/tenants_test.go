package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTenantPolicy(t *testing.T) {
	tests := []struct {
		desc      string
		yaml      string // appended to minimal
		tenant    string
		want      TenantPolicy
		protected []string
		deprec    int // deprecation notes
		err       string
	}{
		{
			desc: "nothing configured", tenant: "acme",
			want: TenantPolicy{MaxConnections: DefaultPoolSize, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},
		},
		{
			desc:   "defaults apply to every tenant",
			yaml:   "tenant_defaults: {statement_timeout: 30s, lock_timeout: 5s, max_connections: 4, transactions_per_second: 50}\n",
			tenant: "acme",
			want: TenantPolicy{MaxConnections: 4, StatementTimeout: 30 * time.Second, LockTimeout: 5 * time.Second,
				TransactionsPerSecond: 50, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},
			protected: []string{"lock_timeout", "statement_timeout"},
		},
		{
			desc: "a tenant's own values win, 0 lifts a default",
			yaml: "tenant_defaults: {statement_timeout: 30s, idle_in_transaction_session_timeout: 1m}\n" +
				"tenants:\n  acme: {statement_timeout: 2s, idle_in_transaction_session_timeout: 0s, max_transaction_duration: 1m, rate_limit_burst: 5, rate_limit_wait: 100ms, max_connections: 2}\n",
			tenant: "acme",
			want: TenantPolicy{MaxConnections: 2, StatementTimeout: 2 * time.Second, MaxTransactionDuration: time.Minute,
				RateLimitBurst: 5, RateLimitWait: 100 * time.Millisecond},
			protected: []string{"idle_in_transaction_session_timeout", "statement_timeout"},
		},
		{
			desc:   "another tenant keeps the defaults",
			yaml:   "tenant_defaults: {statement_timeout: 30s}\ntenants:\n  acme: {statement_timeout: 2s}\n",
			tenant: "globex",
			want:   TenantPolicy{MaxConnections: DefaultPoolSize, StatementTimeout: 30 * time.Second, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},

			protected: []string{"statement_timeout"},
		},
		{
			desc:   "old keys are aliases, with a deprecation note each",
			yaml:   "pool: {tenant_max_connections: 7, tenants: {acme: {max_connections: 3}}}\n",
			tenant: "acme",
			want:   TenantPolicy{MaxConnections: 3, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},
			deprec: 2,
		},
		{
			desc:   "old default cap",
			yaml:   "pool: {tenant_max_connections: 7}\n",
			tenant: "globex",
			want:   TenantPolicy{MaxConnections: 7, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},
			deprec: 1,
		},
		{
			desc:   "old and new keys agreeing",
			yaml:   "pool: {tenants: {acme: {max_connections: 3}}}\ntenants: {acme: {max_connections: 3}}\n",
			tenant: "acme",
			want:   TenantPolicy{MaxConnections: 3, RateLimitBurst: 1, RateLimitWait: DefaultRateLimitWait},
			deprec: 1,
		},
		{
			desc: "old and new keys disagreeing",
			yaml: "pool: {tenants: {acme: {max_connections: 3}}}\ntenants: {acme: {max_connections: 4}}\n",
			err:  `tenants["acme"].max_connections: 4 contradicts pool.tenants["acme"].max_connections 3`,
		},
		{
			desc: "old and new default caps disagreeing",
			yaml: "pool: {tenant_max_connections: 3}\ntenant_defaults: {max_connections: 4}\n",
			err:  "tenant_defaults.max_connections: 4 contradicts pool.tenant_max_connections 3",
		},
		{desc: "negative timeout", yaml: "tenants: {acme: {lock_timeout: -1s}}\n", err: `tenants["acme"].lock_timeout: must not be negative`},
		{desc: "below a millisecond", yaml: "tenant_defaults: {statement_timeout: 10us}\n", err: "tenant_defaults.statement_timeout: 10µs is below PostgreSQL's unit of 1ms"},
		{desc: "above PostgreSQL's maximum", yaml: "tenant_defaults: {statement_timeout: 1000h}\n", err: "exceeds PostgreSQL's maximum"},
		{desc: "negative rate", yaml: "tenant_defaults: {transactions_per_second: -1}\n", err: "tenant_defaults.transactions_per_second: must not be negative"},
		{desc: "zero burst", yaml: "tenant_defaults: {rate_limit_burst: 0}\n", err: "tenant_defaults.rate_limit_burst: must be at least 1"},
		{desc: "unknown key", yaml: "tenants: {acme: {statement_timeot: 1s}}\n", err: `unknown key "statement_timeot" in tenants.acme (did you mean "statement_timeout"?)`},
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
			if got := c.TenantPolicy(tt.tenant); got != tt.want {
				t.Errorf("TenantPolicy(%q) = %+v, want %+v", tt.tenant, got, tt.want)
			}
			if got := c.ProtectedLimitSettings(); !slices.Equal(sorted(got), tt.protected) {
				t.Errorf("ProtectedLimitSettings = %v, want %v", got, tt.protected)
			}
			if len(c.Deprecations) != tt.deprec {
				t.Errorf("Deprecations = %q, want %d", c.Deprecations, tt.deprec)
			}
			// Validate again (configs built in code are): nothing changes.
			if err := c.Validate(); err != nil || c.TenantPolicy(tt.tenant) != tt.want {
				t.Errorf("after a second Validate: %v, %+v", err, c.TenantPolicy(tt.tenant))
			}
		})
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	if len(s) == 0 {
		return nil
	}
	return s
}

func TestTenantPolicySettings(t *testing.T) {
	p := TenantPolicy{StatementTimeout: 1500 * time.Millisecond, IdleInTransactionSessionTimeout: time.Minute}
	want := [][2]string{{"statement_timeout", "1500"}, {"idle_in_transaction_session_timeout", "60000"}}
	if got := p.Settings(); !slices.Equal(got, want) {
		t.Errorf("Settings = %v, want %v", got, want)
	}
}

func TestUserRoleAndReadOnly(t *testing.T) {
	c, err := Parse([]byte(minimal + "    role: bi_reader\n    read_only: true\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if u := c.Users[0]; u.Role != "bi_reader" || !u.ReadOnly {
		t.Errorf("user = %+v", u)
	}
	_, err = Parse([]byte(minimal + "    read_only: true\n    guard: false\n"))
	if err == nil || !strings.Contains(err.Error(), "read_only: needs the guard") {
		t.Errorf("read_only without the guard: %v", err)
	}
	_, err = Parse([]byte(minimal + "jwt: {hmac_secret: 0123456789abcdef0123456789abcdef, limit_claims: {work_mem: wm}}\n"))
	if err == nil || !strings.Contains(err.Error(), `jwt.limit_claims: "work_mem" is not one of`) {
		t.Errorf("limit claim of another setting: %v", err)
	}
}

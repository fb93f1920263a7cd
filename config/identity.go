package config

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"
)

// Auth says how clients authenticate.
type Auth struct {
	// Methods picks the method by login user name: the first rule whose
	// pattern (path.Match syntax, e.g. "analyst_*") matches wins. With no
	// rules, every user authenticates with SCRAM.
	Methods []MethodRule `yaml:"methods"`
	// Timeout closes a connection that has not finished authenticating
	// (PostgreSQL's authentication_timeout). Default 30s.
	Timeout Duration `yaml:"timeout"`
	// CleartextOnLoopback lets JWT users send their token on a plaintext
	// connection from a loopback address. Off: JWT requires TLS.
	CleartextOnLoopback bool `yaml:"cleartext_on_loopback"`
	// Throttle slows down repeated failed logins per client address and user.
	Throttle Throttle `yaml:"throttle"`
}

// MethodRule maps user names to an authentication method.
type MethodRule struct {
	Users  string `yaml:"users"`  // pattern, path.Match syntax
	Method string `yaml:"method"` // "scram" or "jwt"
}

// Authentication methods.
const (
	MethodSCRAM = "scram"
	MethodJWT   = "jwt"
)

// Throttle configures the back-off after failed logins.
type Throttle struct {
	Initial Duration `yaml:"initial"` // first back-off, default 250ms; doubles per failure
	Max     Duration `yaml:"max"`     // cap, default 30s
}

// JWT configures tokens presented as the password.
type JWT struct {
	// Key sources; each has an explicit algorithm allow-list, so "none" and
	// HMAC-with-a-public-key confusion cannot happen.
	HMACSecret     string    `yaml:"hmac_secret"`     // raw secret (use ${ENV})
	HMACAlgorithms []string  `yaml:"hmac_algorithms"` // default [HS256]
	PublicKeys     []JWTKey  `yaml:"public_keys"`
	JWKS           []JWKSURL `yaml:"jwks"`

	Issuer   string   `yaml:"issuer"`   // required with jwks
	Audience string   `yaml:"audience"` // required with jwks
	Leeway   Duration `yaml:"leeway"`   // for exp/nbf/iat, default 30s
	MaxAge   Duration `yaml:"max_age"`  // maximum token age from iat; 0: no limit

	// TenantClaim is the claim holding the tenant: a top-level name
	// ("tenant_id", "https://example.com/tenant_id") or a dotted path into
	// nested objects ("org.id"). Default "tenant_id".
	TenantClaim string `yaml:"tenant_claim"`
	// UserClaim, when set, must equal the login user name ("sub", "email").
	UserClaim string `yaml:"user_claim"`
	// Settings are asserted with the tenant at every transaction start:
	// setting name -> claim path. Non-scalar claims are set as JSON.
	Settings map[string]string `yaml:"settings"`
	// ClaimsSetting, when set, carries the whole claim set as JSON
	// (PostgREST's request.jwt.claims).
	ClaimsSetting string `yaml:"claims_setting"`
	// RoleClaim names a claim whose value pgtenant SETs ROLE to at every
	// transaction start; only roles in AllowedRoles are accepted.
	RoleClaim    string   `yaml:"role_claim"`
	AllowedRoles []string `yaml:"allowed_roles"`
	// LimitClaims lets tokens set the tenant's limits (opt-in): limit
	// setting (statement_timeout, lock_timeout,
	// idle_in_transaction_session_timeout) -> claim path. A claim is a
	// number of milliseconds or a duration string ("30s"); it replaces
	// the tenant's configured value.
	LimitClaims map[string]string `yaml:"limit_claims"`
	// ReadOnlyClaim names a boolean claim: true makes the session read-only
	// (as users[].read_only).
	ReadOnlyClaim string `yaml:"read_only_claim"`
}

// JWTKey is a PEM public key file (RSA, ECDSA or Ed25519).
type JWTKey struct {
	File       string   `yaml:"file"`
	Algorithms []string `yaml:"algorithms"`
}

// JWKSURL is a JSON Web Key Set endpoint, cached and refreshed.
type JWKSURL struct {
	URL             string   `yaml:"url"`
	Algorithms      []string `yaml:"algorithms"`
	RefreshInterval Duration `yaml:"refresh_interval"` // default 1h
	// RefreshRateLimit is the least time between two fetches caused by
	// tokens naming a kid the set lacks. A login with such a token waits for
	// the next fetch, so this is also how long a newly published key can be
	// delayed, however many made-up kids arrive meanwhile.
	RefreshRateLimit Duration `yaml:"refresh_rate_limit"` // default DefaultJWKSRefreshRateLimit, at most MaxJWKSRefreshRateLimit
}

const (
	// DefaultJWKSRefreshRateLimit is JWKSURL.RefreshRateLimit's default.
	DefaultJWKSRefreshRateLimit = 5 * time.Second
	// MaxJWKSRefreshRateLimit bounds how long a login may wait for a fetch.
	MaxJWKSRefreshRateLimit = 30 * time.Second
)

// DBUsers looks users up in the database, like PgBouncer's auth_query.
type DBUsers struct {
	// Connection is the lookup role's connection string (a role that may
	// read the users table, not the tenant role).
	Connection string `yaml:"connection"`
	// Query takes the user name as $1 and returns one row: a SCRAM verifier
	// and the tenant.
	Query       string   `yaml:"query"`
	CacheTTL    Duration `yaml:"cache_ttl"`    // default 60s
	NegativeTTL Duration `yaml:"negative_ttl"` // caching of unknown names, default 10s
	// Limits lets the query return these limit settings (statement_timeout,
	// lock_timeout, idle_in_transaction_session_timeout) as columns of
	// those names (opt-in, as jwt.limit_claims): the guard then protects
	// them for every client.
	Limits []string `yaml:"limits"`
}

var (
	hmacAlgorithms   = []string{"HS256", "HS384", "HS512"}
	publicAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

func (c *Config) applyIdentityDefaults() {
	if c.Limits.MaxMessageSize == 0 {
		c.Limits.MaxMessageSize = 1 << 30
	}
	if c.Limits.MaxPreparedBytes == 0 {
		c.Limits.MaxPreparedBytes = DefaultMaxPreparedBytes
	}
	if c.MetricsTenantLabels == 0 {
		c.MetricsTenantLabels = 100
	}
	if c.ShutdownTimeout.Duration == 0 {
		c.ShutdownTimeout.Duration = 30 * time.Second
	}
	if c.PauseTimeout.Duration == 0 {
		c.PauseTimeout.Duration = 30 * time.Second
	}
	if c.Auth.Timeout.Duration == 0 {
		c.Auth.Timeout.Duration = 30 * time.Second
	}
	if c.Auth.Throttle.Initial.Duration == 0 {
		c.Auth.Throttle.Initial.Duration = 250 * time.Millisecond
	}
	if c.Auth.Throttle.Max.Duration == 0 {
		c.Auth.Throttle.Max.Duration = 30 * time.Second
	}
	if j := c.JWT; j != nil {
		if j.HMACSecret != "" && len(j.HMACAlgorithms) == 0 {
			j.HMACAlgorithms = []string{"HS256"}
		}
		if j.Leeway.Duration == 0 {
			j.Leeway.Duration = 30 * time.Second
		}
		if j.TenantClaim == "" {
			j.TenantClaim = "tenant_id"
		}
		for i := range j.JWKS {
			if j.JWKS[i].RefreshInterval.Duration == 0 {
				j.JWKS[i].RefreshInterval.Duration = time.Hour
			}
			if j.JWKS[i].RefreshRateLimit.Duration == 0 {
				j.JWKS[i].RefreshRateLimit.Duration = DefaultJWKSRefreshRateLimit
			}
		}
	}
	if d := c.DBUsers; d != nil {
		if d.CacheTTL.Duration == 0 {
			d.CacheTTL.Duration = time.Minute
		}
		if d.NegativeTTL.Duration == 0 {
			d.NegativeTTL.Duration = 10 * time.Second
		}
	}
}

// MethodFor returns the authentication method for a login user name.
func (c *Config) MethodFor(user string) string {
	for _, r := range c.Auth.Methods {
		if ok, _ := path.Match(r.Users, user); ok {
			return r.Method
		}
	}
	return MethodSCRAM
}

// ProtectedSettings are the settings pgtenant asserts besides the tenant
// setting; clients may not change them.
func (c *Config) ProtectedSettings() []string {
	var out []string
	if s := c.SignatureSetting(); s != "" {
		out = append(out, s)
	}
	if j := c.JWT; j != nil {
		for name := range j.Settings {
			out = append(out, name)
		}
		if j.ClaimsSetting != "" {
			out = append(out, j.ClaimsSetting)
		}
	}
	out = append(out, c.ProtectedLimitSettings()...)
	slices.Sort(out)
	return out
}

func (c *Config) validateIdentity(add func(field, format string, args ...any)) {
	for i, r := range c.Auth.Methods {
		field := fmt.Sprintf("auth.methods[%d]", i)
		if _, err := path.Match(r.Users, ""); err != nil || r.Users == "" {
			add(field+".users", "%q is not a valid pattern (path.Match syntax, e.g. \"analyst_*\")", r.Users)
		}
		switch r.Method {
		case MethodSCRAM:
		case MethodJWT:
			if c.JWT == nil {
				add(field+".method", "jwt needs a jwt section")
			}
		default:
			add(field+".method", "%q is not one of scram, jwt", r.Method)
		}
	}
	if c.Limits.MaxClients < 0 || c.Limits.MaxClientsPerTenant < 0 || c.Limits.IdleTimeout.Duration < 0 || c.Limits.IdleInTransactionTimeout.Duration < 0 {
		add("limits", "values must not be negative (0 means no limit)")
	}
	if c.Limits.MaxPreparedBytes < 0 {
		add("limits.max_prepared_bytes", "must not be negative")
	}
	if c.Limits.MaxMessageSize < 0 || c.Limits.MaxMessageSize > 1<<30 {
		add("limits.max_message_size", "must be between 1 and 1073741824 bytes")
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			add("admin_listen", "%q is not host:port", c.AdminListen)
		}
	}
	if c.Auth.Timeout.Duration < 0 {
		add("auth.timeout", "must be positive")
	}
	if c.Auth.Throttle.Max.Duration < c.Auth.Throttle.Initial.Duration {
		add("auth.throttle.max", "must be at least auth.throttle.initial")
	}
	if j := c.JWT; j != nil {
		if j.HMACSecret == "" && len(j.PublicKeys) == 0 && len(j.JWKS) == 0 {
			add("jwt", "needs at least one key source: hmac_secret, public_keys or jwks")
		}
		if j.HMACSecret != "" && len(j.HMACSecret) < 32 {
			add("jwt.hmac_secret", "is %d bytes; use at least 32", len(j.HMACSecret))
		}
		for _, a := range j.HMACAlgorithms {
			if !slices.Contains(hmacAlgorithms, a) {
				add("jwt.hmac_algorithms", "%q is not one of %s", a, strings.Join(hmacAlgorithms, ", "))
			}
		}
		for i, k := range j.PublicKeys {
			field := fmt.Sprintf("jwt.public_keys[%d]", i)
			if k.File == "" {
				add(field+".file", "must name a PEM public key file")
			}
			checkPublicAlgorithms(add, field+".algorithms", k.Algorithms)
		}
		for i, k := range j.JWKS {
			field := fmt.Sprintf("jwt.jwks[%d]", i)
			if u, err := url.Parse(k.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				add(field+".url", "%q is not an http(s) URL", k.URL)
			}
			checkPublicAlgorithms(add, field+".algorithms", k.Algorithms)
			if d := k.RefreshRateLimit.Duration; d < 0 || d > MaxJWKSRefreshRateLimit {
				add(field+".refresh_rate_limit", "%s is not between 0 and %s: a login naming a new key waits up to this long for the next fetch", d, MaxJWKSRefreshRateLimit)
			}
		}
		if len(j.JWKS) > 0 && (j.Issuer == "" || j.Audience == "") {
			add("jwt", "issuer and audience are required when a jwks URL is used")
		}
		if j.TenantClaim == "" {
			add("jwt.tenant_claim", "must not be empty")
		}
		for name, claim := range j.Settings {
			if !tenantSettingRE.MatchString(name) {
				add("jwt.settings", "%q is not a custom setting name (it must contain a dot)", name)
			}
			if name == c.TenantSetting {
				add("jwt.settings", "%q is the tenant setting; it comes from tenant_claim", name)
			}
			if claim == "" {
				add("jwt.settings", "%q: the claim must not be empty", name)
			}
		}
		if j.ClaimsSetting != "" && !tenantSettingRE.MatchString(j.ClaimsSetting) {
			add("jwt.claims_setting", "%q is not a custom setting name", j.ClaimsSetting)
		}
		for name, claim := range j.LimitClaims {
			if !slices.Contains(LimitSettings, name) {
				add("jwt.limit_claims", "%q is not one of %s", name, strings.Join(LimitSettings, ", "))
			}
			if claim == "" {
				add("jwt.limit_claims", "%q: the claim must not be empty", name)
			}
		}
		if j.RoleClaim != "" && len(j.AllowedRoles) == 0 {
			add("jwt.allowed_roles", "must list the roles role_claim may name")
		}
	}
	if d := c.DBUsers; d != nil {
		if d.Connection == "" {
			add("db_users.connection", "must be the lookup role's connection string")
		}
		if !strings.Contains(d.Query, "$1") {
			add("db_users.query", "must take the user name as $1")
		}
		for _, name := range d.Limits {
			if !slices.Contains(LimitSettings, name) {
				add("db_users.limits", "%q is not one of %s", name, strings.Join(LimitSettings, ", "))
			}
		}
	}
}

func checkPublicAlgorithms(add func(field, format string, args ...any), field string, algs []string) {
	if len(algs) == 0 {
		add(field, "must list the accepted algorithms, e.g. [RS256]")
	}
	for _, a := range algs {
		if !slices.Contains(publicAlgorithms, a) {
			add(field, "%q is not one of %s", a, strings.Join(publicAlgorithms, ", "))
		}
	}
}

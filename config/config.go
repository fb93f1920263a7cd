// Package config loads and validates the pgtenant YAML configuration.
package config

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/signedctx"
	"gopkg.in/yaml.v3"
)

// Defaults applied to fields the file leaves out.
const (
	DefaultListen         = "127.0.0.1:6432"
	DefaultTenantSetting  = "app.tenant_id"
	DefaultConnectTimeout = 10 * time.Second
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "text"
	DefaultTLSMode        = TLSModeAllow
)

// TLS modes.
const (
	TLSModeAllow   = "allow"   // TLS offered, plaintext accepted
	TLSModeRequire = "require" // plaintext refused
)

// Config is the whole pgtenant configuration.
type Config struct {
	Listen        string `yaml:"listen"`         // default "127.0.0.1:6432"
	TLS           *TLS   `yaml:"tls"`            // optional
	Upstream      string `yaml:"upstream"`       // required; libpq URL or keyword/value string
	TenantSetting string `yaml:"tenant_setting"` // default "app.tenant_id"
	// ContextScope says how the tenant context is set upstream: "session"
	// (default; a session-level SET) or "transaction" (SET LOCAL in every
	// transaction, for upstreams such as Citus that carry only
	// transaction-local settings to their workers). See contextscope.go.
	ContextScope   string   `yaml:"context_scope"`
	ConnectTimeout Duration `yaml:"connect_timeout"` // default 10s; upstream connect timeout
	LogLevel       string   `yaml:"log_level"`       // debug|info|warn|error, default info
	LogFormat      string   `yaml:"log_format"`      // text|json, default text
	Users          []User   `yaml:"users"`
	// Limits protect the proxy and the upstream from clients.
	Limits Limits `yaml:"limits"`
	// EventLoop (Linux; default true) drives transaction-mode clients over
	// plain TCP, and pooled connections, from an event loop over sockets
	// pgtenant takes out of Go's network poller, instead of a goroutine
	// each; false keeps goroutines (see README, What it costs).
	EventLoop *bool `yaml:"event_loop"`
	// ReusePort sets SO_REUSEPORT on the listener, so that a new pgtenant
	// can start on the same address while the old one drains.
	ReusePort bool `yaml:"reuse_port"`
	// PeerID and Peers make this process one of several replicas serving
	// one address: cancel requests reach the replica that issued the key
	// (see peers.go). Absent: a single pgtenant.
	PeerID int    `yaml:"peer_id"`
	Peers  []Peer `yaml:"peers"`
	// AdminListen, when set, serves /metrics (Prometheus), /healthz, /readyz
	// and /status (live sessions, JSON) on this address.
	AdminListen string `yaml:"admin_listen"`
	// MetricsTenantLabels bounds per-tenant metric labels (default 100); the
	// other tenants are counted together as "other".
	MetricsTenantLabels int `yaml:"metrics_tenant_labels"`
	// ShutdownTimeout is how long SIGTERM lets transactions in progress
	// finish before their sessions are ended, and a reload those on an
	// upstream it removed or changed. Default 30s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// PauseTimeout bounds how long a paused tenant's new transaction (or
	// login) waits for the tenant to be resumed. Default 30s.
	PauseTimeout Duration `yaml:"pause_timeout"`
	// SignedContext, when set, makes pgtenant assert an HMAC of the tenant
	// next to it, for policies that verify it (see signedctx).
	SignedContext *SignedContext `yaml:"signed_context"`

	Auth    Auth     `yaml:"auth"`
	JWT     *JWT     `yaml:"jwt"`
	DBUsers *DBUsers `yaml:"db_users"`

	// Pool says how clients share upstream connections (see pool.go).
	Pool Pool `yaml:"pool"`

	// Audit, when set, logs every tenant's statements (see audit.go).
	Audit *Audit `yaml:"audit"`

	// TenantDefaults and Tenants are the per-tenant section: limits and
	// caps for every tenant, and per tenant id (see tenants.go).
	TenantDefaults TenantLimits            `yaml:"tenant_defaults"`
	Tenants        map[string]TenantLimits `yaml:"tenants"`

	// Upstreams are more databases tenants can be placed on
	// (tenants[id].upstream; see placement.go).
	Upstreams []Upstream `yaml:"upstreams"`
	// poolWritten is Pool as written, before defaults: what upstreams'
	// pools inherit.
	poolWritten    Pool
	poolWrittenSet bool

	// Deprecations lists the deprecated keys the file uses, for a warning
	// at startup and reload.
	Deprecations []string `yaml:"-"`
}

// Limits bound what clients may use; zero means no limit.
type Limits struct {
	MaxClients          int `yaml:"max_clients"`            // client connections in all
	MaxClientsPerTenant int `yaml:"max_clients_per_tenant"` // sessions per tenant
	MaxMessageSize      int `yaml:"max_message_size"`       // bytes in one protocol message (default 1 GiB, PostgreSQL's own bound)
	// MaxPreparedBytes bounds what pgtenant keeps of one transaction-mode
	// client's prepared statements (their texts, to prepare them again on
	// other connections): default 64 MiB. Past it the session ends (54000):
	// all tenants share pgtenant's memory.
	MaxPreparedBytes int `yaml:"max_prepared_bytes"`
	// IdleTimeout ends a session that sends nothing for this long outside a
	// transaction; IdleInTransactionTimeout, inside one (its transaction
	// rolls back).
	IdleTimeout              Duration `yaml:"idle_timeout"`
	IdleInTransactionTimeout Duration `yaml:"idle_in_transaction_timeout"`
	// UpstreamTimeout ends a session whose upstream sends nothing for this
	// long while a reply is owed (a stalled network path or server).
	UpstreamTimeout Duration `yaml:"upstream_timeout"`
}

// SignedContext configures the signed tenant context.
type SignedContext struct {
	Key     string `yaml:"key"`     // hex, at least 32 bytes; use ${ENV}
	Setting string `yaml:"setting"` // default: the tenant setting's prefix + "tenant_sig"
}

// UsesEventLoop reports whether event_loop is on (the default).
func (c *Config) UsesEventLoop() bool { return c.EventLoop == nil || *c.EventLoop }

// SignatureSetting returns the setting that carries the signature.
func (c *Config) SignatureSetting() string {
	if c.SignedContext == nil {
		return ""
	}
	if c.SignedContext.Setting != "" {
		return c.SignedContext.Setting
	}
	prefix, _, _ := strings.Cut(c.TenantSetting, ".")
	return prefix + ".tenant_sig"
}

// TLS configures TLS for client connections.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	Mode     string `yaml:"mode"` // "allow" (default) or "require"
}

// User is one client login and the tenant it is mapped to.
type User struct {
	Name     string `yaml:"name"`
	Password string `yaml:"password"` // SCRAM-SHA-256 verifier, or plaintext (development only)
	Tenant   string `yaml:"tenant"`
	// Guard turns the statement guard off for this user when false: only for
	// trusted applications, never for SQL typed by people. Default true.
	Guard *bool `yaml:"guard"`
	// PoolMode overrides pool.mode for this user: "session" or "transaction".
	PoolMode string `yaml:"pool_mode"`
	// Role, when set, is the upstream role pgtenant SETs ROLE to at every
	// transaction start (the upstream login role must be a member of it).
	Role string `yaml:"role"`
	// ReadOnly asserts default_transaction_read_only = on with the
	// context, and the guard refuses every way to turn it off.
	ReadOnly bool `yaml:"read_only"`
}

// GuardEnabled reports whether the statement guard checks this user's SQL.
func (u User) GuardEnabled() bool { return u.Guard == nil || *u.Guard }

// Duration is a time.Duration written in YAML as a Go duration string ("10s", "1m").
type Duration struct{ time.Duration }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(value *yaml.Node) error {
	if value.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration must be a string such as \"10s\"", value.Line)
	}
	v, err := time.ParseDuration(value.Value)
	if err != nil {
		// A bare number is the usual mistake; say which unit form is wanted.
		return fmt.Errorf("line %d: invalid duration %q: use a number with a unit, e.g. \"10s\" or \"1m\"", value.Line, value.Value)
	}
	d.Duration = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) {
	return d.String(), nil
}

// Load reads the file at path and parses it.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return c, nil
}

// Parse expands ${ENV} references, decodes strictly, applies defaults and validates.
func Parse(data []byte) (*Config, error) {
	expanded, err := expandEnv(data)
	if err != nil {
		return nil, err
	}

	// Defaults are set before decoding so that an explicit value in the file,
	// even an invalid one like "connect_timeout: 0s", is kept and then reported.
	c := &Config{
		Listen:         DefaultListen,
		TenantSetting:  DefaultTenantSetting,
		ConnectTimeout: Duration{DefaultConnectTimeout},
		LogLevel:       DefaultLogLevel,
		LogFormat:      DefaultLogFormat,
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(expanded, &doc); err == nil {
		if err := unknownKeys(&doc); err != nil {
			return nil, fmt.Errorf("decoding YAML: %w", err)
		}
	} // else the decoder below reports the syntax error
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true) // a backstop: unknownKeys has reported every unknown key
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decoding YAML: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		// A second "---" document would otherwise be silently ignored.
		return nil, errors.New("decoding YAML: the file must contain exactly one YAML document (remove the extra \"---\" section)")
	}
	if c.TLS != nil && c.TLS.Mode == "" {
		c.TLS.Mode = DefaultTLSMode
	}
	if err := c.deprecatedTenantCaps(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandEnv replaces ${NAME} with the environment value and $$ with $. Any other
// '$' is kept as-is, because SCRAM verifiers contain '$' (SCRAM-SHA-256$4096:...).
func expandEnv(data []byte) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(len(data))
	line := 1
	for i := 0; i < len(data); i++ {
		ch := data[i]
		if ch == '\n' {
			line++
		}
		if ch != '$' || i+1 >= len(data) {
			out.WriteByte(ch)
			continue
		}
		switch data[i+1] {
		case '$':
			out.WriteByte('$')
			i++
		case '{':
			end := bytes.IndexByte(data[i+2:], '}')
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated \"${\": close it with \"}\", or write \"$${\" for a literal", line)
			}
			name := string(data[i+2 : i+2+end])
			if !envNameRE.MatchString(name) {
				return nil, fmt.Errorf("line %d: invalid environment variable name %q in \"${%s}\": use letters, digits and underscores", line, name, name)
			}
			val, ok := os.LookupEnv(name)
			if !ok {
				return nil, fmt.Errorf("line %d: environment variable %s is not set: set it, or write \"$${%s}\" for a literal", line, name, name)
			}
			out.WriteString(val)
			i += 2 + end
		default:
			out.WriteByte(ch)
		}
	}
	return out.Bytes(), nil
}

var tenantSettingRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+$`)

var (
	validLogLevels  = []string{"debug", "info", "warn", "error"}
	validLogFormats = []string{"text", "json"}
	validTLSModes   = []string{TLSModeAllow, TLSModeRequire}
)

// Validate checks every field and returns all problems joined, each naming its field.
func (c *Config) Validate() error {
	c.applyIdentityDefaults() // zero means unset for these; also for configs built in code
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	if err := validateHostPort(c.Listen); err != nil {
		add("listen", "%v; write host:port, e.g. %q", err, DefaultListen)
	}

	if strings.TrimSpace(c.Upstream) == "" {
		add("upstream", "must be set to the PostgreSQL connection string, e.g. \"postgres://pgtenant@db:5432/app\"")
	} else if _, err := pgconn.ParseConfig(c.Upstream); err != nil {
		add("upstream", "%v", err)
	}

	if !tenantSettingRE.MatchString(c.TenantSetting) {
		add("tenant_setting", "%q is not a custom setting name: it must contain a dot and use lowercase letters, digits and underscores, e.g. %q", c.TenantSetting, DefaultTenantSetting)
	}

	if !validContextScope(c.ContextScope) {
		add("context_scope", "%q is not one of %s", c.ContextScope, strings.Join(contextScopes, ", "))
	}

	if c.ConnectTimeout.Duration <= 0 {
		add("connect_timeout", "must be greater than zero, e.g. \"10s\"")
	}
	if c.PauseTimeout.Duration < 0 {
		add("pause_timeout", "must be greater than zero, e.g. \"30s\"")
	}

	if !slices.Contains(validLogLevels, c.LogLevel) {
		add("log_level", "%q is not one of %s", c.LogLevel, strings.Join(validLogLevels, ", "))
	}
	if !slices.Contains(validLogFormats, c.LogFormat) {
		add("log_format", "%q is not one of %s", c.LogFormat, strings.Join(validLogFormats, ", "))
	}

	if c.TLS != nil {
		errs = append(errs, c.TLS.validate()...)
	}

	if sc := c.SignedContext; sc != nil {
		if _, err := signedctx.ParseKey(sc.Key); err != nil {
			add("signed_context.key", "%v", err)
		}
		sig := c.SignatureSetting()
		prefix, _, _ := strings.Cut(c.TenantSetting, ".")
		switch {
		case !tenantSettingRE.MatchString(sig):
			add("signed_context.setting", "%q is not a custom setting name", sig)
		case !strings.HasPrefix(sig, prefix+"."):
			add("signed_context.setting", "%q must share the tenant setting's prefix %q, so that the guard protects it", sig, prefix+".")
		case sig == c.TenantSetting:
			add("signed_context.setting", "must differ from tenant_setting")
		}
	}

	c.validateLoginWays(add)
	c.validateIdentity(add)
	c.migrateTenantCaps()
	c.validateUpstreams(add)
	c.validatePool(add)
	c.validatePlacements(add)
	c.validateAudit(add)
	c.validateTenants(add)
	c.validatePeers(add)
	seen := make(map[string]int, len(c.Users))
	for i, u := range c.Users {
		field := UserField(i, u.Name)
		switch {
		case u.Name == "":
			add(field, "name: must not be empty")
		case hasControl(u.Name):
			add(field, "name: must not contain control characters")
		default:
			if j, dup := seen[u.Name]; dup {
				add(field, "name: already used by users[%d]; user names must be unique", j)
			} else {
				seen[u.Name] = i
			}
		}
		if u.Password == "" {
			add(field, "password: must not be empty; use a SCRAM-SHA-256 verifier from `pgtenant passwd` (plaintext only for development)")
		}
		if u.Role != "" && hasControl(u.Role) {
			add(field, "role: must not contain control characters")
		}
		if u.ReadOnly && !u.GuardEnabled() {
			add(field, "read_only: needs the guard: without it the user could turn read-only off")
		}
		switch {
		case u.Tenant == "":
			add(field, "tenant: must not be empty")
		case hasControl(u.Tenant):
			// The tenant ends up in a setting value sent upstream; refusing control
			// characters (NUL above all) keeps that simple and safe.
			add(field, "tenant: must not contain control characters")
		}
	}
	return errors.Join(errs...)
}

// validateLoginWays refuses a config with which nobody could log in. Users
// matching no auth.methods rule use SCRAM, which needs users or db_users;
// jwt alone lets in only the users a rule sends to it.
func (c *Config) validateLoginWays(add func(field, format string, args ...any)) {
	if len(c.Users) > 0 || c.DBUsers != nil {
		return
	}
	if c.JWT == nil {
		add("users", "nobody can log in: list at least one user (name, password, tenant), or add a db_users or jwt section")
		return
	}
	for _, r := range c.Auth.Methods {
		if r.Method == MethodJWT {
			return
		}
	}
	add("auth.methods", "nobody can log in: there are no users and no db_users, and no rule sends users to jwt (users matching no rule use SCRAM); add one, e.g. auth: {methods: [{users: \"*\", method: jwt}]}")
}

func (t *TLS) validate() []error {
	var errs []error
	if t.CertFile == "" {
		errs = append(errs, errors.New("tls.cert_file: must be set to a PEM certificate file when tls is configured"))
	}
	if t.KeyFile == "" {
		errs = append(errs, errors.New("tls.key_file: must be set to a PEM private key file when tls is configured"))
	}
	if !slices.Contains(validTLSModes, t.Mode) {
		errs = append(errs, fmt.Errorf("tls.mode: %q is not one of %s", t.Mode, strings.Join(validTLSModes, ", ")))
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return errs
	}
	// Read each file separately so that the error names the file at fault.
	certPEM, err := os.ReadFile(t.CertFile)
	if err != nil {
		errs = append(errs, fmt.Errorf("tls.cert_file: %w", err))
	}
	keyPEM, err := os.ReadFile(t.KeyFile)
	if err != nil {
		errs = append(errs, fmt.Errorf("tls.key_file: %w", err))
	}
	if certPEM != nil && keyPEM != nil {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			errs = append(errs, fmt.Errorf("tls: cannot load cert_file %s with key_file %s: %w", t.CertFile, t.KeyFile, err))
		}
	}
	return errs
}

// UpstreamDatabase returns the database name in the upstream connection string,
// or "" if it does not parse.
func (c *Config) UpstreamDatabase() string {
	pc, err := pgconn.ParseConfig(c.Upstream)
	if err != nil {
		return ""
	}
	return pc.Database
}

func validateHostPort(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q must be a number from 0 to 65535", port)
	}
	return nil
}

// UserField names users[i] in messages, with the user's name when it has
// one that can be printed: users[3] ("alice").
func UserField(i int, name string) string {
	if name == "" || hasControl(name) {
		return fmt.Sprintf("users[%d]", i)
	}
	return fmt.Sprintf("users[%d] (%q)", i, name)
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}

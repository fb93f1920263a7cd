package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgtenant/pgtenant/internal/testcert"
)

const minimal = `
upstream: postgres://pgtenant@db.example:5432/appdb
users:
  - name: alice
    password: secret
    tenant: acme
`

func TestParseMinimalDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := Config{
		Listen:         DefaultListen,
		Upstream:       "postgres://pgtenant@db.example:5432/appdb",
		TenantSetting:  DefaultTenantSetting,
		ConnectTimeout: Duration{10 * time.Second},
		LogLevel:       "info",
		LogFormat:      "text",
		Users:          []User{{Name: "alice", Password: "secret", Tenant: "acme"}},
	}
	if c.TLS != nil {
		t.Errorf("TLS = %+v, want nil", c.TLS)
	}
	if c.Listen != want.Listen || c.Upstream != want.Upstream || c.TenantSetting != want.TenantSetting ||
		c.ConnectTimeout != want.ConnectTimeout || c.LogLevel != want.LogLevel || c.LogFormat != want.LogFormat ||
		len(c.Users) != 1 || c.Users[0] != want.Users[0] {
		t.Errorf("Parse = %+v, want %+v", *c, want)
	}
	if got := c.UpstreamDatabase(); got != "appdb" {
		t.Errorf("UpstreamDatabase = %q, want appdb", got)
	}
}

func TestUpstreamDatabaseKeywordValue(t *testing.T) {
	c := &Config{Upstream: "host=db port=5432 dbname=tenants user=x"}
	if got := c.UpstreamDatabase(); got != "tenants" {
		t.Errorf("UpstreamDatabase = %q, want tenants", got)
	}
}

func TestParseFull(t *testing.T) {
	cert, key := writeKeyPair(t)
	doc := `
listen: "0.0.0.0:7000"
tls:
  cert_file: ` + cert + `
  key_file: ` + key + `
upstream: host=db dbname=app user=proxy
tenant_setting: myapp.tenant
connect_timeout: 1m30s
pause_timeout: 2m
log_level: debug
log_format: json
users:
  - {name: a, password: p, tenant: t1}
  - {name: b, password: p, tenant: t2}
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.TLS == nil || c.TLS.Mode != TLSModeAllow {
		t.Errorf("TLS = %+v, want mode allow by default", c.TLS)
	}
	if c.ConnectTimeout.Duration != 90*time.Second {
		t.Errorf("ConnectTimeout = %v", c.ConnectTimeout)
	}
	if c.PauseTimeout.Duration != 2*time.Minute {
		t.Errorf("PauseTimeout = %v", c.PauseTimeout)
	}
	if c.Listen != "0.0.0.0:7000" || c.TenantSetting != "myapp.tenant" || c.LogLevel != "debug" || c.LogFormat != "json" {
		t.Errorf("unexpected config %+v", *c)
	}
}

func TestParseErrors(t *testing.T) {
	cert, key := writeKeyPair(t)
	otherCert, _ := writeKeyPair(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	t.Setenv("PGTENANT_TEST_PW", "from-env")

	users := "users:\n  - {name: a, password: p, tenant: t}\n"
	up := "upstream: postgres://u@h/db\n"

	tests := []struct {
		name string
		doc  string
		want []string // substrings that must all appear in the error
	}{
		{"unknown key names line", up + "listn: x\n" + users, []string{"line 2", "listn"}},
		{"unknown nested key", up + "users:\n  - {name: a, password: p, tenant: t, rol: r}\n", []string{"line 3", "rol", "did you mean \"role\""}},
		{"unset env var", up + "users:\n  - {name: a, password: ${PGTENANT_TEST_UNSET_VAR}, tenant: t}\n", []string{"line 3", "PGTENANT_TEST_UNSET_VAR", "not set"}},
		{"unterminated env", up + users + "log_level: ${PGTENANT\n", []string{"line 4", "unterminated"}},
		{"bad env name", up + "users:\n  - {name: a, password: ${1X}, tenant: t}\n", []string{"invalid environment variable name"}},
		{"two documents", up + users + "---\nlisten: x\n", []string{"exactly one YAML document"}},
		{"empty file", "", []string{"upstream: must be set", "users: nobody can log in"}},
		{"listen not host:port", up + "listen: localhost\n" + users, []string{"listen:", "host:port"}},
		{"listen bad port", up + "listen: localhost:http\n" + users, []string{"listen:", "port"}},
		{"listen empty", up + "listen: ''\n" + users, []string{"listen: must not be empty"}},
		{"upstream missing", users, []string{"upstream: must be set"}},
		{"upstream unparsable", "upstream: 'postgres://u@h:notaport/db'\n" + users, []string{"upstream:", "cannot parse"}},
		{"tenant_setting without dot", up + "tenant_setting: tenant_id\n" + users, []string{"tenant_setting:", "must contain a dot", "app.tenant_id"}},
		{"tenant_setting uppercase", up + "tenant_setting: App.Tenant\n" + users, []string{"tenant_setting:"}},
		{"tenant_setting empty part", up + "tenant_setting: app..tenant\n" + users, []string{"tenant_setting:"}},
		{"connect_timeout zero", up + "connect_timeout: 0s\n" + users, []string{"connect_timeout: must be greater than zero"}},
		{"connect_timeout negative", up + "connect_timeout: -1s\n" + users, []string{"connect_timeout:"}},
		{"pause_timeout negative", up + "pause_timeout: -1s\n" + users, []string{"pause_timeout: must be greater than zero"}},
		{"connect_timeout no unit", up + "connect_timeout: 10\n" + users, []string{"line 2", "invalid duration", "10s"}},
		{"connect_timeout mapping", up + "connect_timeout: {a: 1}\n" + users, []string{"line 2", "duration"}},
		{"log_level", up + "log_level: verbose\n" + users, []string{"log_level:", "verbose"}},
		{"log_format", up + "log_format: xml\n" + users, []string{"log_format:", "xml"}},
		{"tls no files", up + "tls: {mode: allow}\n" + users, []string{"tls.cert_file: must be set", "tls.key_file: must be set"}},
		{"tls bad mode", up + "tls: {cert_file: " + cert + ", key_file: " + key + ", mode: prefer}\n" + users, []string{"tls.mode:", "prefer"}},
		{"tls missing cert file", up + "tls: {cert_file: " + missing + ", key_file: " + key + "}\n" + users, []string{"tls.cert_file:", missing}},
		{"tls missing key file", up + "tls: {cert_file: " + cert + ", key_file: " + missing + "}\n" + users, []string{"tls.key_file:", missing}},
		{"tls mismatched pair", up + "tls: {cert_file: " + otherCert + ", key_file: " + key + "}\n" + users, []string{"tls:", otherCert, key}},
		{"no users", up, []string{"users: nobody can log in", "db_users or jwt"}},
		{"jwt without a rule sending users to it", up + "jwt: {hmac_secret: " + strings.Repeat("k", 32) + "}\n", []string{"auth.methods: nobody can log in", `{users: "*", method: jwt}`}},
		{"jwt with only scram rules", up + "auth: {methods: [{users: '*', method: scram}]}\njwt: {hmac_secret: " + strings.Repeat("k", 32) + "}\n", []string{"auth.methods: nobody can log in"}},
		{"empty user name", up + "users:\n  - {name: '', password: p, tenant: t}\n", []string{"users[0]: name: must not be empty"}},
		{"duplicate user", up + "users:\n  - {name: a, password: p, tenant: t}\n  - {name: a, password: p, tenant: u}\n", []string{`users[1] ("a"): name: already used by users[0]`, "unique"}},
		{"empty password", up + "users:\n  - {name: a, password: '', tenant: t}\n", []string{`users[0] ("a"): password: must not be empty`, "pgtenant passwd"}},
		{"empty tenant", up + "users:\n  - {name: a, password: p, tenant: t}\n  - {name: b, password: p, tenant: ''}\n", []string{`users[1] ("b"): tenant: must not be empty`}},
		{"tenant with NUL", up + "users:\n  - {name: a, password: p, tenant: \"t\\0x\"}\n", []string{`users[0] ("a"): tenant: must not contain control characters`}},
		{"tenant with newline", up + "users:\n  - {name: a, password: p, tenant: \"t\\nx\"}\n", []string{`users[0] ("a"): tenant: must not contain control characters`}},
		{"name with control", up + "users:\n  - {name: \"a\\tb\", password: p, tenant: t}\n", []string{"users[0]: name: must not contain control characters"}},
		{"several problems reported together", "log_level: loud\n", []string{"upstream:", "log_level:", "users:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("PGTENANT_TEST_UPSTREAM", "postgres://u@h/envdb")
	t.Setenv("PGTENANT_TEST_PW", "s3cret")
	t.Setenv("PGTENANT_TEST_EMPTY", "")
	doc := `
upstream: ${PGTENANT_TEST_UPSTREAM}
users:
  - name: a${PGTENANT_TEST_EMPTY}
    password: "${PGTENANT_TEST_PW}$$x"
    tenant: "$${NOT_EXPANDED}"
  - name: v
    password: SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5
    tenant: t
`
	c, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	tests := []struct{ field, got, want string }{
		{"upstream", c.Upstream, "postgres://u@h/envdb"},
		{"name (empty var)", c.Users[0].Name, "a"},
		{"password ($$)", c.Users[0].Password, "s3cret$x"},
		{"tenant ($${)", c.Users[0].Tenant, "${NOT_EXPANDED}"},
		{"verifier keeps lone $", c.Users[1].Password, "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.field, tt.got, tt.want)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"10s", 10 * time.Second, false},
		{"1m", time.Minute, false},
		{"1h2m3s", time.Hour + 2*time.Minute + 3*time.Second, false},
		{"250ms", 250 * time.Millisecond, false},
		{"10", 0, true},
		{"soon", 0, true},
		{"''", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var v struct {
				D Duration `yaml:"d"`
			}
			err := yaml.Unmarshal([]byte("d: "+tt.in), &v)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && v.D.Duration != tt.want {
				t.Errorf("got %v, want %v", v.D.Duration, tt.want)
			}
		})
	}

	out, err := yaml.Marshal(struct {
		D Duration `yaml:"d"`
	}{Duration{90 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "d: 1m30s" {
		t.Errorf("Marshal = %q, want %q", got, "d: 1m30s")
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	if err := os.WriteFile(path, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := os.WriteFile(path, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Load error %v should name the file", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
}

// writeKeyPair writes a fresh self-signed certificate and key, returning their paths.
func writeKeyPair(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := testcert.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// A deployment needs some way in, but not a users list.
func TestLoginWays(t *testing.T) {
	up := "upstream: postgres://u@h/db\n"
	jwt := "jwt: {hmac_secret: " + strings.Repeat("k", 32) + "}\n"
	toJWT := "auth: {methods: [{users: '*@*', method: jwt}]}\n"
	dbUsers := "db_users: {connection: 'postgres://l@h/db', query: 'SELECT v, t FROM u WHERE n = $1'}\n"
	tests := []struct {
		desc string
		doc  string
		want string // "" when valid
	}{
		{"users", up + "users: [{name: a, password: p, tenant: t}]\n", ""},
		{"jwt only", up + jwt + toJWT, ""},
		{"db_users only", up + dbUsers, ""},
		{"db_users and jwt without a rule", up + dbUsers + jwt, ""},
		{"nothing", up, "users: nobody can log in"},
		{"empty users list", up + "users: []\n", "users: nobody can log in"},
		{"jwt without a rule", up + jwt, "auth.methods: nobody can log in"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

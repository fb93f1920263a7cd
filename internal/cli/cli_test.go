package cli

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

func TestMainCommands(t *testing.T) {
	badConfig := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("listen: 127.0.0.1:6432\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badVerifier := filepath.Join(t.TempDir(), "verifier.yaml")
	if err := os.WriteFile(badVerifier, []byte("upstream: postgres://u@127.0.0.1/db\nusers:\n  - {name: alice, password: 'SCRAM-SHA-256$4096:zz', tenant: t}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	typo := filepath.Join(t.TempDir(), "typo.yaml")
	if err := os.WriteFile(typo, []byte("upstream: postgres://u@127.0.0.1/db\ntenant_settings: app.x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"bad verifier names the file, the user and the fix", []string{"--config", badVerifier}, 1, "", "pgtenant: config file " + badVerifier + `: users[0] ("alice"): password: SCRAM verifier`},
		{"bad verifier says to run passwd", []string{"--config", badVerifier}, 1, "", "make a new verifier with `pgtenant passwd`"},
		{"unknown key in operator terms", []string{"--config", typo}, 1, "", `line 2: unknown key "tenant_settings" (did you mean "tenant_setting"?)`},
		{"status with nothing listening", []string{"status", "--admin", closedAddr(t)}, 1, "", "set admin_listen in the running pgtenant's config"},
		{"status names --admin", []string{"status", "--admin", closedAddr(t)}, 1, "", "or pass --admin"},
		{"version", []string{"--version"}, 0, "pgtenant " + Version, ""},
		{"help", []string{"--help"}, 0, "pgtenant passwd", ""},
		{"no config", nil, 2, "", "--config is required"},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"missing file", []string{"--config", "/nonexistent/pgtenant.yaml"}, 1, "", "nonexistent"},
		{"unknown key names its line", []string{"--config", badConfig}, 1, "", "line 2"},
		{"demo usage", []string{"demo", "extra"}, 2, "", "usage: pgtenant demo"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("stdout %q stderr %q, want %q / %q", stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
		})
	}
}

func TestPasswdPrintsAVerifier(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main([]string{"passwd"}, strings.NewReader("s3cret\n"), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	v := strings.TrimSpace(stdout.String())
	if !auth.IsVerifier(v) {
		t.Fatalf("not a verifier: %q", v)
	}
	if _, err := auth.ParseVerifier(v); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v, "s3cret") {
		t.Fatal("verifier contains the password")
	}
	stdout.Reset()
	if code := Main([]string{"passwd"}, strings.NewReader("\n"), &stdout, &stderr); code != 1 {
		t.Fatalf("empty password: exit %d", code)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// passwd reads a password only when asked to: help and flag mistakes are
// answered before anything is read.
func TestPasswdFlags(t *testing.T) {
	tests := []struct {
		desc   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"help", []string{"--help"}, 0, "usage: pgtenant passwd", ""},
		{"short help", []string{"-h"}, 0, "usage: pgtenant passwd", ""},
		{"unknown flag", []string{"--rounds", "10000"}, 2, "", "flag provided but not defined: -rounds"},
		{"argument", []string{"s3cret"}, 2, "", `unexpected argument "s3cret"`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			stdin := strings.NewReader("s3cret\n")
			var stdout, stderr bytes.Buffer
			code := Main(append([]string{"passwd"}, tt.args...), stdin, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("stdout %q stderr %q, want %q / %q", stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
			if stdin.Len() != len("s3cret\n") || strings.Contains(stdout.String(), "SCRAM-SHA-256$") {
				t.Fatalf("the password was read (stdout %q)", stdout.String())
			}
		})
	}
}

// The demo's config file is one the real loader takes, with the demo's
// upstream (password included), admin address and tenants.
func TestDemoConfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	cluster := &pgcluster.Cluster{Host: "127.0.0.1", Port: 54321}
	if err := writeDemoConfig(path, "127.0.0.1:6432", "127.0.0.1:9187", cluster); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:6432" || cfg.AdminListen != "127.0.0.1:9187" || cfg.Upstream != cluster.URL(demo.RLSRole, demo.RLSPassword, demo.Database) {
		t.Fatalf("listen %q, admin_listen %q, upstream %q", cfg.Listen, cfg.AdminListen, cfg.Upstream)
	}
	for i, tn := range []demo.Tenant{demo.TenantA, demo.TenantB} {
		u := cfg.Users[i]
		if u.Name != tn.User || u.Tenant != tn.ID || !auth.IsVerifier(u.Password) {
			t.Fatalf("user %d: %+v", i, u)
		}
	}
}

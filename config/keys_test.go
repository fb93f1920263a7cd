package config

import (
	"strings"
	"testing"
)

func TestUnknownKeyMessages(t *testing.T) {
	up := "upstream: postgres://u@h/db\n"
	users := "users:\n  - {name: a, password: p, tenant: t}\n"
	tests := []struct {
		desc string
		doc  string
		want string // the whole message for the key
		not  string // must not appear
	}{
		{"close top-level key", up + users + "tenant_settings: app.x\n", `line 4: unknown key "tenant_settings" (did you mean "tenant_setting"?)`, "config.Config"},
		{"transposed letters", up + "usres:\n  - {name: a, password: p, tenant: t}\n", `line 2: unknown key "usres" (did you mean "users"?)`, ""},
		{"case", up + users + "Listen: 127.0.0.1:1\n", `line 4: unknown key "Listen" (did you mean "listen"?)`, ""},
		{"nothing close", up + users + "frobnicate: 1\n", `line 4: unknown key "frobnicate"`, "did you mean"},
		{"nested section", up + users + "jwt:\n  hmac_secrt: x\n", `line 5: unknown key "hmac_secrt" in jwt (did you mean "hmac_secret"?)`, "config.JWT"},
		{"in a list", up + "users:\n  - {name: a, password: p, tenant: t, tenants: u}\n", `line 3: unknown key "tenants" in users[0] (did you mean "tenant"?)`, "config.User"},
		{"list in a section", up + users + "jwt:\n  jwks:\n    - {url: 'https://x/', algoritms: [RS256]}\n", `line 6: unknown key "algoritms" in jwt.jwks[0] (did you mean "algorithms"?)`, ""},
		{"deeper section", up + users + "auth:\n  throttle: {inital: 1s}\n", `line 5: unknown key "inital" in auth.throttle (did you mean "initial"?)`, ""},
		{"map value", up + users + "pool:\n  tenants:\n    acme: {max_connection: 2}\n", `line 6: unknown key "max_connection" in pool.tenants.acme (did you mean "max_connections"?)`, ""},
		{"merged mapping", up + users + "x: &d {mode: require}\ntls:\n  <<: *d\n  cert_fil: c\n", `line 7: unknown key "cert_fil" in tls (did you mean "cert_file"?)`, `"<<"`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("error %q contains %q", err, tt.not)
			}
		})
	}
}

func TestClosest(t *testing.T) {
	known := []string{"listen", "tenant_setting", "users", "upstream", "log_level", "log_format"}
	tests := []struct{ in, want string }{
		{"tenant_settings", "tenant_setting"},
		{"lisen", "listen"},
		{"usres", "users"},
		{"log_levl", "log_level"},
		{"upstream_url", "upstream"},
		{"password", ""},
		{"tenant", ""},
		{"x", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := closest(tt.in, known); got != tt.want {
			t.Errorf("closest(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

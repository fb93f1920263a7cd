package config

import (
	"strings"
	"testing"
	"time"
)

func TestJWKSRefreshRateLimit(t *testing.T) {
	doc := func(limit string) string {
		s := "upstream: postgres://u@h/db\nusers:\n  - {name: a, password: p, tenant: t}\n" +
			"jwt:\n  issuer: https://idp.example/\n  audience: pgtenant\n  jwks:\n    - url: https://idp.example/jwks.json\n      algorithms: [RS256]\n"
		if limit != "" {
			s += "      refresh_rate_limit: " + limit + "\n"
		}
		return s
	}
	tests := []struct {
		name, limit string
		want        time.Duration
		wantErr     string
	}{
		{name: "default", want: DefaultJWKSRefreshRateLimit},
		{name: "short", limit: "500ms", want: 500 * time.Millisecond},
		{name: "the longest", limit: "30s", want: MaxJWKSRefreshRateLimit},
		{name: "the old default, a minute", limit: "1m", wantErr: "jwt.jwks[0].refresh_rate_limit: 1m0s is not between 0 and 30s"},
		{name: "negative", limit: "-1s", wantErr: "jwt.jwks[0].refresh_rate_limit: -1s is not between 0 and 30s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(doc(tt.limit)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.JWT.JWKS[0].RefreshRateLimit.Duration; got != tt.want {
				t.Errorf("refresh_rate_limit = %v, want %v", got, tt.want)
			}
		})
	}
}

package signedctx

import (
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{strings.Repeat("ab", 32), ""},
		{" " + strings.Repeat("AB", 40) + "\n", ""},
		{strings.Repeat("ab", 31), "at least 32"},
		{"not hex", "hex-encoded"},
	}
	for _, tt := range tests {
		_, err := ParseKey(tt.in)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ParseKey(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

// RFC 4231 test case 2 pins Sign to standard HMAC-SHA256.
func TestSignIsHMACSHA256(t *testing.T) {
	got := Sign([]byte("Jefe"), "what do ya want for nothing?")
	if want := "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestSQLQuotes(t *testing.T) {
	sql := SQL(`odd"role`, make([]byte, 32), "app.tenant_id", "app.tenant_sig")
	for _, want := range []string{`"odd""role"`, "current_setting('app.tenant_id', true)", "decode('" + strings.Repeat("00", 32) + "', 'hex')"} {
		if !strings.Contains(sql, want) {
			t.Errorf("SQL lacks %s", want)
		}
	}
}

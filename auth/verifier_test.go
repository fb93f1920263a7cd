package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// referenceKeys computes StoredKey and ServerKey straight from RFC 5802, as an
// independent check on what xdg-go/scram derives.
func referenceKeys(t *testing.T, password string, salt []byte, iters int) (storedKey, serverKey []byte) {
	t.Helper()
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	sum := sha256.Sum256(clientKey)
	return sum[:], mac(salted, "Server Key")
}

func TestVerifierRoundTrip(t *testing.T) {
	tests := []struct {
		name, password, prepped string
	}{
		{"ascii", "correct horse battery staple", "correct horse battery staple"},
		{"empty-ish punctuation", "$$,=:", "$$,=:"},
		{"SASLprep maps NBSP to space", "pa\u00a0ss", "pa ss"},
		{"SASLprep drops soft hyphen", "pa\u00adss", "pass"},
		{"SASLprep failure falls back to raw", "pa\x01ss", "pa\x01ss"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewVerifier(tt.password)
			if err != nil {
				t.Fatalf("NewVerifier: %v", err)
			}
			if !IsVerifier(v) {
				t.Fatalf("IsVerifier(%q) = false", v)
			}
			creds, err := ParseVerifier(v)
			if err != nil {
				t.Fatalf("ParseVerifier(%q): %v", v, err)
			}
			if creds.Iters != 4096 || len(creds.Salt) != 16 {
				t.Errorf("iters=%d salt len=%d, want 4096 and 16", creds.Iters, len(creds.Salt))
			}
			stored, server := referenceKeys(t, tt.prepped, []byte(creds.Salt), creds.Iters)
			if !bytes.Equal(creds.StoredKey, stored) || !bytes.Equal(creds.ServerKey, server) {
				t.Errorf("keys do not match the RFC 5802 derivation of %q", tt.prepped)
			}
			if got := formatVerifier(creds); got != v {
				t.Errorf("formatVerifier = %q, want %q", got, v)
			}
		})
	}

	a, _ := NewVerifier("same")
	b, _ := NewVerifier("same")
	if a == b {
		t.Error("two verifiers for the same password share a salt")
	}
}

func TestParseVerifierErrors(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	short := base64.StdEncoding.EncodeToString(make([]byte, 31))
	salt := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	good := "SCRAM-SHA-256$4096:" + salt + "$" + key + ":" + key
	if _, err := ParseVerifier(good); err != nil {
		t.Fatalf("ParseVerifier(good): %v", err)
	}

	tests := []struct {
		name, in, want string
	}{
		{"plaintext", "hunter2", "must start with"},
		{"md5", "md5" + strings.Repeat("0", 32), "must start with"},
		{"lowercase prefix", strings.ToLower(good[:14]) + good[14:], "must start with"},
		{"no key part", "SCRAM-SHA-256$4096:" + salt, "want SCRAM-SHA-256$"},
		{"extra part", good + "$x", "want SCRAM-SHA-256$"},
		{"no iteration colon", "SCRAM-SHA-256$4096" + salt + "$" + key + ":" + key, "iterations and salt"},
		{"no key colon", "SCRAM-SHA-256$4096:" + salt + "$" + key + key, "StoredKey and ServerKey"},
		{"zero iterations", "SCRAM-SHA-256$0:" + salt + "$" + key + ":" + key, "iteration count"},
		{"negative iterations", "SCRAM-SHA-256$-1:" + salt + "$" + key + ":" + key, "iteration count"},
		{"signed iterations", "SCRAM-SHA-256$+4096:" + salt + "$" + key + ":" + key, "iteration count"},
		{"empty iterations", "SCRAM-SHA-256$:" + salt + "$" + key + ":" + key, "iteration count"},
		{"huge iterations", "SCRAM-SHA-256$99999999999999999999:" + salt + "$" + key + ":" + key, "iteration count"},
		{"empty salt", "SCRAM-SHA-256$4096:$" + key + ":" + key, "salt"},
		{"bad salt", "SCRAM-SHA-256$4096:!!!$" + key + ":" + key, "salt"},
		{"bad stored key", "SCRAM-SHA-256$4096:" + salt + "$%%%:" + key, "StoredKey is not valid base64"},
		{"short server key", "SCRAM-SHA-256$4096:" + salt + "$" + key + ":" + short, "ServerKey must be 32 bytes, got 31"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseVerifier(tt.in)
			if err == nil {
				t.Fatalf("ParseVerifier(%q) succeeded", tt.in)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if strings.Contains(err.Error(), key) {
				t.Errorf("error %q echoes key material", err)
			}
		})
	}
}

func TestIsVerifier(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"SCRAM-SHA-256$4096:abc$def:ghi", true},
		{"SCRAM-SHA-256$", true},
		{"SCRAM-SHA-256", false},
		{"scram-sha-256$4096:abc$def:ghi", false},
		{"password", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := IsVerifier(tt.in); got != tt.want {
			t.Errorf("IsVerifier(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

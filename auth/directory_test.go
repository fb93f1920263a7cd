package auth

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

func TestNewStaticDirectory(t *testing.T) {
	v, err := NewVerifier("v-pass")
	if err != nil {
		t.Fatal(err)
	}
	dir, plain, err := NewStaticDirectory([]config.User{
		{Name: "alice", Password: v, Tenant: "acme"},
		{Name: "bob", Password: "b-pass", Tenant: "globex"},
		{Name: "carol", Password: "c-pass", Tenant: "initech"},
	})
	if err != nil {
		t.Fatalf("NewStaticDirectory: %v", err)
	}
	if !slices.Equal(plain, []string{"bob", "carol"}) {
		t.Errorf("plaintextUsers = %v, want [bob carol]", plain)
	}

	tests := []struct {
		user, password, tenant string
		found                  bool
	}{
		{"alice", "v-pass", "acme", true},
		{"bob", "b-pass", "globex", true},
		{"carol", "c-pass", "initech", true},
		{"dave", "", "", false},
		{"Alice", "", "", false}, // names are case-sensitive, as in PostgreSQL
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			e, ok := dir.Lookup(tt.user)
			if ok != tt.found {
				t.Fatalf("Lookup found=%v, want %v", ok, tt.found)
			}
			if !ok {
				return
			}
			if e.Tenant != tt.tenant {
				t.Errorf("Tenant = %q, want %q", e.Tenant, tt.tenant)
			}
			stored, server := referenceKeys(t, tt.password, []byte(e.Credentials.Salt), e.Credentials.Iters)
			if !bytes.Equal(stored, e.Credentials.StoredKey) || !bytes.Equal(server, e.Credentials.ServerKey) {
				t.Error("credentials do not match the password")
			}
		})
	}
}

func TestNewStaticDirectoryErrors(t *testing.T) {
	tests := []struct {
		name  string
		users []config.User
		want  string
	}{
		{"empty name", []config.User{{Name: "", Password: "p", Tenant: "t"}}, "users[0]: empty user name"},
		{"duplicate", []config.User{{Name: "a", Password: "p", Tenant: "t"}, {Name: "a", Password: "q", Tenant: "u"}}, `users[1] ("a"): duplicate`},
		{"empty password", []config.User{{Name: "a", Tenant: "t"}}, `users[0] ("a"): empty password`},
		{"broken verifier", []config.User{{Name: "a", Password: "SCRAM-SHA-256$4096:zz", Tenant: "t"}}, `users[0] ("a"): password: SCRAM verifier`},
		{"broken verifier says what to do", []config.User{{Name: "a", Password: "SCRAM-SHA-256$4096:zz", Tenant: "t"}}, "pgtenant passwd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := NewStaticDirectory(tt.users)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// With no users the directory is empty, not an error: a jwt or db_users
// deployment has no users list.
func TestNewStaticDirectoryEmpty(t *testing.T) {
	for _, users := range [][]config.User{nil, {}} {
		dir, _, err := NewStaticDirectory(users)
		if err != nil {
			t.Fatalf("NewStaticDirectory(%v): %v", users, err)
		}
		if _, ok := dir.Lookup("anyone"); ok {
			t.Fatal("an empty directory found a user")
		}
	}
}

func TestMethodName(t *testing.T) {
	tests := []struct{ in, want string }{
		{config.MethodSCRAM, MethodSCRAMSHA256},
		{config.MethodJWT, MethodJWT},
		{"cert", "cert"},
	}
	for _, tt := range tests {
		if got := MethodName(tt.in); got != tt.want {
			t.Errorf("MethodName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

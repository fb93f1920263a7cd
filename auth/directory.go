package auth

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/xdg-go/scram"
)

// MethodSCRAMSHA256 is the Identity.Method for SCRAM-SHA-256 (with or without channel binding).
const MethodSCRAMSHA256 = "scram-sha-256"

// MethodName is the Identity.Method a login with a configured method
// (config.MethodSCRAM, config.MethodJWT) ends with, so that a failed login is
// named like a successful one (PostgreSQL's log_connections says
// method=scram-sha-256 too). An unknown method is returned as it is.
func MethodName(configured string) string {
	switch configured {
	case config.MethodSCRAM:
		return MethodSCRAMSHA256
	case config.MethodJWT:
		return MethodJWT
	}
	return configured
}

// Identity is an authenticated client.
type Identity struct {
	User   string
	Tenant string
	Method string // "scram-sha-256" or "jwt"

	// Settings are asserted together with the tenant at every transaction
	// start (from JWT claims).
	Settings []Setting
	// Role, when set, is SET ROLE'd at every transaction start (from a JWT
	// claim, checked against the allow-list).
	Role string
	// ReadOnly asserts default_transaction_read_only = on with the context
	// (users[].read_only, a JWT's read-only claim); the guard keeps it on.
	ReadOnly bool
	// Limits are limit settings (statement_timeout, ...) from the identity
	// source, where the operator allows it (jwt.limit_claims): they replace
	// the tenant's configured values. Milliseconds.
	Limits []Setting
	// Expires, when set, is when the session's credential expires: no
	// transaction may start after it.
	Expires time.Time
	// Upstream and Schema, when set, place the tenant's session there
	// instead of where the config's tenants section says (db_users).
	Upstream, Schema string
}

// Setting is one custom setting and its value.
type Setting struct{ Name, Value string }

// ConnInfo is what authentication may need to know about the client's
// connection.
type ConnInfo struct {
	TLS        *tls.ConnectionState // nil on a plaintext connection
	Loopback   bool                 // the client connected from a loopback address
	RemoteAddr string               // for throttling and logs
}

// Entry is what the directory knows about one user.
type Entry struct {
	Credentials scram.StoredCredentials
	Tenant      string
	Role        string // upstream role, SET at every transaction start; "" for none
	ReadOnly    bool
	// From db_users only: the tenant's placement (over the config's), and
	// limit settings (milliseconds) replacing the tenant's.
	Upstream, Schema string
	Limits           []Setting
}

// Directory looks users up by name.
type Directory interface {
	Lookup(user string) (Entry, bool)
}

type staticDirectory map[string]Entry

func (d staticDirectory) Lookup(user string) (Entry, bool) {
	e, ok := d[user]
	return e, ok
}

// NewStaticDirectory builds the directory from config users; it may be
// empty (jwt or db_users then answer for everyone). Plaintext passwords are
// turned into verifiers at load time; each such user's name is returned in
// plaintextUsers so main can log a warning (development only).
func NewStaticDirectory(users []config.User) (dir Directory, plaintextUsers []string, err error) {
	d := make(staticDirectory, len(users))
	for i, u := range users {
		field := config.UserField(i, u.Name)
		if u.Name == "" {
			return nil, nil, fmt.Errorf("%s: empty user name", field)
		}
		if _, dup := d[u.Name]; dup {
			return nil, nil, fmt.Errorf("%s: duplicate user name", field)
		}
		if u.Password == "" {
			return nil, nil, fmt.Errorf("%s: empty password", field)
		}
		var creds scram.StoredCredentials
		if IsVerifier(u.Password) {
			creds, err = ParseVerifier(u.Password)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: password: %w; make a new verifier with `pgtenant passwd`", field, err)
			}
		} else {
			v, err := NewVerifier(u.Password)
			if err == nil {
				creds, err = ParseVerifier(v)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s: deriving verifier from plaintext password: %w", field, err)
			}
			plaintextUsers = append(plaintextUsers, u.Name)
		}
		d[u.Name] = Entry{Credentials: creds, Tenant: u.Tenant, Role: u.Role, ReadOnly: u.ReadOnly}
	}
	return d, plaintextUsers, nil
}

package auth

import (
	"errors"
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

// TestDBDirectoryRefresh: Refresh queries past the cache and replaces the
// cached entry, so a later Lookup answers with the new row without a query.
func TestDBDirectoryRefresh(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	v := testVerifier(t)
	f.set("alice", v, "t1")
	wantLookup(t, d, "alice", true, "t1")
	f.set("alice", v, "t2") // the row changes; the cache still says t1
	wantLookup(t, d, "alice", true, "t1")

	e, found, err := d.Refresh("alice")
	if err != nil || !found || e.Tenant != "t2" {
		t.Fatalf("Refresh = %q, %v, %v; want t2, true, nil", e.Tenant, found, err)
	}
	wantLookup(t, d, "alice", true, "t2")
	if n := f.callsFor("alice"); n != 2 {
		t.Fatalf("queries = %d, want 2 (the first lookup, the refresh)", n)
	}

	f.del("alice")
	if _, found, err := d.Refresh("alice"); err != nil || found {
		t.Fatalf("Refresh of a deleted row = %v, %v; want not found, nil", found, err)
	}
	wantLookup(t, d, "alice", false, "")

	// A failed query: unknown, and the cached entry goes (logins ask again).
	f.set("alice", v, "t1")
	wantLookup(t, d, "alice", false, "") // the negative entry
	f.setErr(errors.New("connection refused"))
	if _, _, err := d.Refresh("alice"); err == nil {
		t.Fatal("Refresh with the database down: no error")
	}
	f.setErr(nil)
	wantLookup(t, d, "alice", true, "t1")
}

// TestAuthenticatorRefresh: which identities Refresh reads again, and how
// it answers for a changed, deleted or moved user.
func TestAuthenticatorRefresh(t *testing.T) {
	static, _, err := NewStaticDirectory([]config.User{{Name: "cfg", Password: testVerifier(t), Tenant: "t1", Role: "r0"}})
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	a := NewAuthenticator(Chain(static, d))
	v := testVerifier(t)
	for _, tt := range []struct {
		desc    string
		ident   Identity
		row     *dbRow // nil: no row
		dbErr   error
		want    Identity
		wantErr error
	}{
		{desc: "placement changed", ident: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256, Upstream: "a"},
			row:  &dbRow{verifier: v, tenant: "t1", found: true, extra: map[string]string{"upstream": "b", "schema": "s", "role": "r"}},
			want: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256, Upstream: "b", Schema: "s", Role: "r"}},
		{desc: "placement cleared", ident: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256, Upstream: "a", Schema: "s", Role: "r"},
			row:  &dbRow{verifier: v, tenant: "t1", found: true},
			want: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256}},
		{desc: "row deleted", ident: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256},
			wantErr: ErrUserGone},
		{desc: "tenant changed", ident: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256},
			row: &dbRow{verifier: v, tenant: "t2", found: true}, wantErr: ErrTenantChanged},
		{desc: "database down", ident: Identity{User: "u", Tenant: "t1", Method: MethodSCRAMSHA256},
			row: &dbRow{verifier: v, tenant: "t1", found: true}, dbErr: errors.New("down"), wantErr: errAny},
		{desc: "config user: as it is", ident: Identity{User: "cfg", Tenant: "t1", Method: MethodSCRAMSHA256, Role: "r0"},
			want: Identity{User: "cfg", Tenant: "t1", Method: MethodSCRAMSHA256, Role: "r0"}},
		{desc: "JWT: as it is", ident: Identity{User: "u", Tenant: "t1", Method: MethodJWT, Upstream: "a"},
			want: Identity{User: "u", Tenant: "t1", Method: MethodJWT, Upstream: "a"}},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			f.del("u")
			if tt.row != nil {
				f.mu.Lock()
				f.rows["u"] = *tt.row
				f.mu.Unlock()
			}
			f.setErr(tt.dbErr)
			got, err := a.Refresh(tt.ident)
			switch {
			case tt.wantErr == errAny && err == nil, tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			case tt.wantErr == nil && (got.User != tt.want.User || got.Tenant != tt.want.Tenant || got.Method != tt.want.Method ||
				got.Upstream != tt.want.Upstream || got.Schema != tt.want.Schema || got.Role != tt.want.Role):
				t.Fatalf("identity = %+v, want %+v", got, tt.want)
			}
		})
	}
}

var errAny = errors.New("any error")

package auth

import (
	"errors"
	"fmt"
)

// Refresher is a Directory that can read a user's entry again, past any
// cache (DBDirectory). Refresh's error means the answer is unknown.
type Refresher interface {
	Directory
	Refresh(user string) (Entry, bool, error)
}

// ErrUserGone and ErrTenantChanged are Authenticator.Refresh's answers for
// a user the directory no longer has, or now places in another tenant.
var (
	ErrUserGone      = errors.New("the user is no longer in db_users")
	ErrTenantChanged = errors.New("the user's db_users row names another tenant")
)

// Refresh reads again, past the directory's cache, what the directory
// says of an authenticated user, for a session that moves (a resume, a
// reload's move): ident with the placement of the user's entry now
// (Upstream, Schema, Role). Only entries from a Refresher (db_users)
// are read again; an identity from a JWT, or from the config's users, is
// returned as it is (a reload, not a resume, changes those). Errors:
// ErrUserGone, ErrTenantChanged (wrapped), or the directory's when it
// could not answer.
func (a *Authenticator) Refresh(ident Identity) (Identity, error) {
	if ident.Method != MethodSCRAMSHA256 {
		return ident, nil
	}
	e, found, fresh, err := refreshEntry(a.dir, ident.User)
	switch {
	case err != nil:
		return ident, err
	case !fresh:
		return ident, nil
	case !found:
		return ident, ErrUserGone
	case e.Tenant != ident.Tenant:
		return ident, fmt.Errorf("%w (%q)", ErrTenantChanged, e.Tenant)
	}
	ident.Upstream, ident.Schema, ident.Role = e.Upstream, e.Schema, e.Role
	return ident, nil
}

// refreshEntry finds user as a login would, reading Refreshers afresh.
// fresh reports whether the answer came from a Refresher (or, for no
// answer, whether one was asked).
func refreshEntry(dir Directory, user string) (e Entry, found, fresh bool, err error) {
	switch d := dir.(type) {
	case chain:
		for _, c := range d {
			var f bool
			e, found, f, err = refreshEntry(c, user)
			fresh = fresh || f
			if err != nil || found {
				return e, found, f, err
			}
		}
		return Entry{}, false, fresh, nil
	case Refresher:
		e, found, err = d.Refresh(user)
		return e, found, true, err
	}
	e, found = dir.Lookup(user)
	return e, found, false, nil
}

package proxy

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
)

// A placement from db_users columns is in the session's identity, as its
// login read the user's row. The moves re-read it: a resume, for the
// paused tenant's sessions and the logins that waited for it, and a
// reload, for the sessions left on a retired upstream. Each reads every
// user's row once, past the directory's cache (which then holds the
// fresh row for new logins), and places the sessions by it: one whose
// placement changed moves as a configuration change moves it; one whose
// user is gone from db_users, or now of another tenant, ends (28000), as
// does one whose row could not be read (57P01): where it belongs is then
// unknown. Only these moves read again: the hot path does not.

// identityRefresher is an Authenticator that can read a user's directory
// entry again (auth.Authenticator.Refresh).
type identityRefresher interface {
	Refresh(ident auth.Identity) (auth.Identity, error)
}

// userTenant keys a re-read: the user, and the tenant its sessions
// logged in to.
type userTenant struct{ user, tenant string }

// freshIdentity is what a re-read said of one user: its identity now, or
// why its sessions end.
type freshIdentity struct {
	ident auth.Identity
	end   *pgconn.PgError
}

// refreshIdentities reads again, once per user and tenant, the entries
// of idents. Not under s.mu: it queries the database.
func refreshIdentities(rt *runtime, idents []auth.Identity) map[userTenant]freshIdentity {
	r, ok := rt.auth.(identityRefresher)
	if !ok || len(idents) == 0 {
		return nil
	}
	out := make(map[userTenant]freshIdentity)
	for _, id := range idents {
		k := userTenant{id.User, id.Tenant}
		if _, done := out[k]; !done {
			out[k] = refreshIdentity(r, id)
		}
	}
	return out
}

func refreshIdentity(r identityRefresher, id auth.Identity) freshIdentity {
	fresh, err := r.Refresh(id)
	switch {
	case err == nil:
		return freshIdentity{ident: fresh}
	case errors.Is(err, auth.ErrUserGone), errors.Is(err, auth.ErrTenantChanged):
		return freshIdentity{end: &pgconn.PgError{Severity: severityFatal, Code: codeInvalidAuthorization,
			Message: "terminating connection: user \"" + id.User + "\" of tenant \"" + id.Tenant + "\" was changed in db_users: " + err.Error(),
			Detail:  "A resume or a reload read the user's db_users row again to place the session.",
			Hint:    "Connect again: a new login uses the user's row as it is now."}}
	}
	return freshIdentity{end: &pgconn.PgError{Severity: severityFatal, Code: codeAdminShutdown,
		Message: "terminating connection due to administrator command: the db_users row of user \"" + id.User + "\" could not be read again to place the session",
		Detail:  err.Error(),
		Hint:    "Connect again once the db_users database answers."}}
}

// identsLocked returns the identities of the sessions match selects.
// Caller holds s.mu.
func (s *Server) identsLocked(match func(*session) bool) []auth.Identity {
	var out []auth.Identity
	for ss := range s.sessions {
		if match(ss) {
			out = append(out, ss.ident)
		}
	}
	return out
}

// refreshedBy gives ss the placement its user's re-read row says, or the
// reason it ends. Caller holds s.mu.
func (ss *session) refreshedBy(fresh map[userTenant]freshIdentity) {
	f, ok := fresh[userTenant{ss.ident.User, ss.ident.Tenant}]
	switch {
	case !ok:
	case f.end != nil:
		ss.gone = f.end
	default:
		ss.ident.Upstream, ss.ident.Schema, ss.ident.Role = f.ident.Upstream, f.ident.Schema, f.ident.Role
	}
}

// placementIn resolves where rt places ss: its error ends the session.
// Caller holds s.mu.
func (ss *session) placementIn(rt *runtime) (placement, error) {
	if ss.gone != nil {
		return placement{}, ss.gone
	}
	return rt.placementOf(ss.ident)
}

// refreshLogin gives a login that waited for its tenant's resume (p) the
// placement the resume read for its user, or reads it now if the resume
// did not (the user had no session then).
func refreshLogin(rt *runtime, p *tenantPause, ident *auth.Identity) error {
	r, ok := rt.auth.(identityRefresher)
	if !ok {
		return nil
	}
	f, ok := p.fresh[userTenant{ident.User, ident.Tenant}]
	if !ok {
		f = refreshIdentity(r, *ident)
	}
	if f.end != nil {
		return f.end
	}
	ident.Upstream, ident.Schema, ident.Role = f.ident.Upstream, f.ident.Schema, f.ident.Role
	return nil
}

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
)

// Pausing a tenant: the switch an online tenant move uses. While a tenant
// is paused, each of its sessions' next unit that may start a transaction
// waits before it takes a pooled connection, and each of its logins waits
// before it is placed; transactions in progress go on. Resume lets them
// go, each on the tenant's placement as the configuration then says: a
// reload made while the tenant was paused applies to its existing sessions
// too. A transaction-mode session moves to the new placement's pool at its
// next unit (unless it holds state there: a pinned connection, LISTEN); a
// session-mode session, whose upstream connection is on the old placement,
// is ended (57P01) at its next idle point.
//
// The hot path, at a unit's start: loads of relay.hold and relay.busy;
// busy is stored at most twice per batch of client messages (set at its
// first unit, cleared when the request side waits for the client again),
// so that a pause sees a session that has let a unit through but not yet
// sent it.

// tenantPause is one pause of a tenant, from Pause to Resume.
type tenantPause struct {
	tenant  string
	since   time.Time
	resumed chan struct{} // closed by Resume
	waiting atomic.Int64  // units and logins waiting for the resume
	// fresh: the db_users rows the resume read again (refresh.go), set
	// before resumed is closed.
	fresh map[userTenant]freshIdentity
}

// movedHold is the hold of a session whose tenant was resumed on another
// placement: its next unit moves it (session.move) first.
var movedHold = &tenantPause{resumed: make(chan struct{})}

// PauseInfo describes a paused tenant, for an admin view.
type PauseInfo struct {
	Tenant string    `json:"tenant"`
	Since  time.Time `json:"since"`
	// Waiting counts the tenant's units and logins waiting for the resume.
	Waiting int64 `json:"waiting"`
	// InTransaction counts the tenant's sessions that may still run a
	// transaction begun before the pause: a move must wait for zero.
	InTransaction int `json:"in_transaction"`
	// Moved counts, at a resume, the sessions whose placement changed.
	Moved int `json:"moved,omitempty"`
}

// ErrNotPaused is Resume's answer for a tenant that is not paused.
var ErrNotPaused = errors.New("tenant is not paused")

// pauseInfoLocked describes p. Caller holds s.mu.
func (s *Server) pauseInfoLocked(p *tenantPause) PauseInfo {
	info := PauseInfo{Tenant: p.tenant, Since: p.since, Waiting: p.waiting.Load()}
	for ss := range s.sessions {
		if ss.ident.Tenant == p.tenant && !ss.relay.quietForPause() {
			info.InTransaction++
		}
	}
	return info
}

// Pause holds tenant's new transactions and logins until Resume (pausing a
// paused tenant changes nothing). With wait > 0 it returns once none of
// the tenant's sessions is in a transaction, or when wait has passed or
// ctx is done: InTransaction then says how many still are.
func (s *Server) Pause(ctx context.Context, tenant string, wait time.Duration) PauseInfo {
	s.mu.Lock()
	p := s.paused[tenant]
	if p == nil {
		p = &tenantPause{tenant: tenant, since: time.Now(), resumed: make(chan struct{})}
		s.paused[tenant] = p
		for ss := range s.sessions {
			if ss.ident.Tenant == tenant {
				ss.relay.hold.Store(p)
			}
		}
		s.log.Info("tenant paused", "tenant", tenant)
	}
	info := s.pauseInfoLocked(p)
	s.mu.Unlock()
	if wait <= 0 || info.InTransaction == 0 {
		return info
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			return info
		case <-ctx.Done():
			return info
		case <-tick.C:
		}
		s.mu.Lock()
		if s.paused[tenant] != p {
			s.mu.Unlock()
			return info // resumed meanwhile
		}
		info = s.pauseInfoLocked(p)
		s.mu.Unlock()
		if info.InTransaction == 0 {
			return info
		}
	}
}

// Resume lets a paused tenant's waiting units and logins go on, on the
// tenant's placement in the configuration as it is now, and in its
// users' db_users rows as they are now (read again, refresh.go).
func (s *Server) Resume(tenant string) (PauseInfo, error) {
	s.mu.Lock()
	if s.paused[tenant] == nil {
		s.mu.Unlock()
		return PauseInfo{Tenant: tenant}, ErrNotPaused
	}
	idents := s.identsLocked(func(ss *session) bool { return ss.ident.Tenant == tenant })
	s.mu.Unlock()
	// Outside s.mu: it queries. The tenant's units and logins still wait.
	fresh := refreshIdentities(s.rt.Load(), idents)
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.paused[tenant]
	if p == nil {
		return PauseInfo{Tenant: tenant}, ErrNotPaused // resumed meanwhile
	}
	rt := s.rt.Load()
	info := s.pauseInfoLocked(p)
	delete(s.paused, tenant)
	s.resumes++
	p.fresh = fresh
	for ss := range s.sessions {
		if ss.ident.Tenant != tenant {
			continue
		}
		ss.refreshedBy(fresh)
		if !ss.placedAsIn(rt) {
			info.Moved++
			ss.relay.hold.Store(movedHold)
			ss.relay.up.resumedElsewhere(ss)
			continue
		}
		ss.relay.hold.Store(nil)
	}
	// The holds are set before the waiters wake: none goes on unmoved.
	close(p.resumed)
	s.log.Info("tenant resumed", "tenant", tenant, "paused_for", time.Since(p.since).Round(time.Millisecond), "waiting", info.Waiting, "moved_sessions", info.Moved)
	return info, nil
}

// Paused describes the paused tenants, in tenant order.
func (s *Server) Paused() []PauseInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PauseInfo, 0, len(s.paused))
	for _, p := range s.paused {
		out = append(out, s.pauseInfoLocked(p))
	}
	slices.SortFunc(out, func(a, b PauseInfo) int { return strings.Compare(a.Tenant, b.Tenant) })
	return out
}

// PauseCounts reports the paused tenants and what waits for them, for metrics.
func (s *Server) PauseCounts() (tenants, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.paused {
		waiting += int(p.waiting.Load())
	}
	return len(s.paused), waiting
}

// pauseOfLocked returns tenant's pause, if it is paused, and the count of
// resumes so far. Caller holds s.mu.
func (s *Server) pauseOfLocked(tenant string) (*tenantPause, uint64) {
	return s.paused[tenant], s.resumes
}

// awaitLogin holds a login of tenant while the tenant is paused, and
// returns the runtime to place it with and the count of resumes then. The
// runtime is the current one, loaded after the count: a resume that
// moved the tenant either came before (and so did its reload) or is
// counted after (addSession then checks the placement). It gives up with
// FATAL 57P03 after pause_timeout.
func (s *Server) awaitLogin(rt *runtime, ident *auth.Identity, client net.Conn) (*runtime, uint64, error) {
	tenant := ident.Tenant
	s.mu.Lock()
	p, gen := s.pauseOfLocked(tenant)
	s.mu.Unlock()
	if p == nil {
		return s.rt.Load(), gen, nil
	}
	timeout := rt.cfg.PauseTimeout.Duration
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var waited *tenantPause
	for p != nil {
		waited = p
		p.waiting.Add(1)
		err := waitResume(p, deadline.C, s.drained, s.stop, goroutineWaiter{client})
		p.waiting.Add(-1)
		if errors.Is(err, errPauseTimeout) {
			return nil, 0, &pgconn.PgError{Severity: severityFatal, Code: codeCannotConnectNow,
				Message: fmt.Sprintf("tenant %q is paused: it was not resumed within pause_timeout (%s)", tenant, timeout),
				Detail:  "An operator paused the tenant (pgtenant pause), for a move or maintenance.",
				Hint:    "Connect again later."}
		}
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return nil, 0, fatalf(codeCannotConnectNow, "the database system is shutting down")
			}
			return nil, 0, err
		}
		s.mu.Lock()
		p, gen = s.pauseOfLocked(tenant)
		s.mu.Unlock()
	}
	// Authenticated before the resume: placed by the user's row as the
	// resume read it.
	if waited != nil {
		if err := refreshLogin(s.rt.Load(), waited, ident); err != nil {
			return nil, 0, err
		}
	}
	return s.rt.Load(), gen, nil
}

var errPauseTimeout = errors.New("pause_timeout passed")

// waitResume waits for p's resume. It gives up with errPauseTimeout when
// timeout fires, and with io.ErrUnexpectedEOF when done (the session's
// reply side, or the server's drain for a login) or stop (the server's
// close) closes or the client hangs up.
func waitResume(p *tenantPause, timeout <-chan time.Time, done, stop <-chan struct{}, w waiter) error {
	w.blocking(blockOnResume)
	defer w.resumed(blockOnResume)
	tick := time.NewTicker(hangUpCheck)
	defer tick.Stop()
	for {
		select {
		case <-p.resumed:
			return nil
		case <-timeout:
			return errPauseTimeout
		case <-done:
			return io.ErrUnexpectedEOF
		case <-stop:
			return io.ErrUnexpectedEOF
		case <-tick.C:
			if w.clientGone() {
				return io.ErrUnexpectedEOF
			}
		}
	}
}

// quietForPause reports whether the session runs nothing that began
// before its tenant was paused: no unit let through, nothing owed by the
// upstream, outside a transaction block. busy is read first: a unit sets
// it before it reads hold, and it stays set until the request side waits
// for the client again, by when the unit is pending.
func (r *relay) quietForPause() bool {
	return !r.busy.Load() && r.ledger.pending.Load() == 0 && byte(r.txStatus.Load()) == 'I'
}

// waitPaused holds the unit about to start while the session's tenant is
// paused (hold is set). A unit inside a transaction block goes on: what
// is in progress finishes. After a resume that moved the tenant, the
// session moves first.
func (r *relay) waitPaused() error {
	// The exact transaction state first, with everything sent answered and
	// the settings read back: then, in transaction mode, the lease is given
	// back unless the connection is pinned.
	if r.carryTouched() {
		if err := r.readBack(); err != nil {
			return err
		}
	}
	if err := r.flushUpstream(); err != nil {
		return err
	}
	if err := r.waitDrained(); err != nil {
		return err
	}
	if err := r.takeReadback(); err != nil {
		return err
	}
	if !r.mayNeedAssertion() {
		return nil // inside a transaction block
	}
	var deadline *time.Timer
	defer func() {
		if deadline != nil {
			deadline.Stop()
		}
	}()
	for {
		p := r.hold.Load()
		switch {
		case p == nil:
			return nil
		case p == movedHold:
			// The move lets go of the hold once the session is where the
			// configuration places it (a reload meanwhile: again).
			if err := r.sess.move(); err != nil {
				return err
			}
			continue
		}
		if deadline == nil {
			deadline = time.NewTimer(r.pauseTimeout)
		}
		r.busy.Store(false)
		p.waiting.Add(1)
		err := waitResume(p, deadline.C, r.done, r.stop, r.waits)
		p.waiting.Add(-1)
		r.busy.Store(true)
		if errors.Is(err, errPauseTimeout) {
			return &pgconn.PgError{Severity: severityFatal, Code: codeQueryCanceled,
				Message: fmt.Sprintf("canceling statement: tenant %q is paused and was not resumed within pause_timeout (%s)", r.tenant, r.pauseTimeout),
				Detail:  "An operator paused the tenant (pgtenant pause), for a move or maintenance; the statement was not run.",
				Hint:    "Connect again and retry later."}
		}
		if err != nil {
			return err
		}
	}
}

// movedError ends a session whose tenant was resumed on another placement
// than the session's.
func movedError(tenant string, from, to placement) *pgconn.PgError {
	return &pgconn.PgError{Severity: severityFatal, Code: codeAdminShutdown,
		Message: fmt.Sprintf("terminating connection due to administrator command: tenant %q was moved while paused", tenant),
		Detail:  fmt.Sprintf("The session was on %s; the tenant is now on %s.", from, to),
		Hint:    "Connect again: the new session goes to the tenant's new placement."}
}

// String names a placement in messages.
func (pl placement) String() string {
	s := fmt.Sprintf("upstream %q", pl.up.name)
	if pl.schema != "" {
		s += fmt.Sprintf(" (schema %q, role %q)", pl.schema, pl.role)
	}
	return s
}

// sameSchemaRole reports whether pl and o, both on an upstream, have the
// same schema and role: a session stays where it is if its binding's
// upstream is the same too (samePlace).
func sameSchemaRole(pl, o placement) bool {
	return pl.schema == o.schema && pl.role == o.role && pl.up != nil && o.up != nil
}

// placedAsIn reports whether rt places ss's tenant where ss is. Caller
// holds s.mu.
func (ss *session) placedAsIn(rt *runtime) bool {
	pl, err := ss.placementIn(rt)
	return err == nil && ss.relay.up.samePlace(ss.pl, pl)
}

// endMoved ends a session-mode session whose tenant was resumed on another
// placement: now if it is idle, else at the end of its transaction. Its
// next unit cannot start meanwhile (hold is movedHold). Caller holds s.mu.
func (ss *session) endMoved() {
	r := ss.relay
	pl, err := ss.placementIn(ss.s.rt.Load())
	switch {
	case ss.gone != nil:
		r.endReason.Store(ss.gone)
	case err != nil:
		pl = placement{up: &upstream{name: "(none)"}}
		fallthrough
	default:
		r.endReason.Store(movedError(ss.ident.Tenant, ss.pl, pl))
	}
	r.draining.Store(true)
	if r.quietForPause() {
		ss.upstream.Close()
	}
}

// move puts the session on its tenant's placement in the current runtime,
// after a resume or a reload that retired its pool or upstream
// (retire.go): a transaction-mode session moves to the new placement's
// pool; a session-mode one, whose upstream connection is on the old
// placement, is ended (57P01). Then, placed as the configuration says, it
// lets go of movedHold (unless paused again meanwhile). Request side,
// outside a transaction.
func (ss *session) move() error {
	s := ss.s
	rt := s.rt.Load()
	// Under s.mu: a resume or a reload may be re-reading the identity.
	s.mu.Lock()
	ident := ss.ident
	pl, err := ss.placementIn(rt)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	r := ss.relay
	moved := false
	if !r.up.samePlace(ss.pl, pl) {
		if err := r.up.moveTo(ss, rt, ident, pl); err != nil {
			if errors.Is(err, errCannotMove) {
				return ss.moveError(pl)
			}
			return err
		}
		moved = true
		s.log.Info("session moved", "conn", ss.id, "tenant", ss.ident.Tenant, "from", ss.pl.up.name, "to", pl.up.name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if moved {
		ss.pl, ss.stranded = pl, nil
	}
	if ss.placedAsIn(s.rt.Load()) {
		r.hold.CompareAndSwap(movedHold, nil)
	}
	return nil
}

// moveError ends a session that cannot move to pl: left on a retired
// upstream, or its tenant moved while paused.
func (ss *session) moveError(pl placement) error {
	ss.s.mu.Lock()
	e := ss.stranded
	ss.s.mu.Unlock()
	if e != nil {
		return e
	}
	return movedError(ss.ident.Tenant, ss.pl, pl)
}

var errCannotMove = errors.New("the session holds state on its old placement")

// movePooled makes a transaction-mode relay's next transactions go to pl:
// its pool, its context settings (search_path, role), its guard. The
// client's own settings (startup parameters, carried SETs) go along. Not
// for a session holding a connection (pinned) or listening for
// notifications: that state is on the old placement.
func (r *relay) movePooled(rt *runtime, ident auth.Identity, pl placement) error {
	// Under leaseMu: the reply side of the last lease reads the pool
	// (pinned idle timeout) under it.
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	if r.sc != nil || r.listen.hub != nil || r.carry != nil && r.carry.sent {
		return errCannotMove
	}
	tenantCtx := rt.contextSettings(ident, pl)
	own := make([]setting, 0, r.pctx.own+len(tenantCtx))
	for _, st := range r.pctx.settings[:r.pctx.own] {
		if !slices.ContainsFunc(tenantCtx, func(c setting) bool { return strings.EqualFold(c.name, st.name) }) {
			own = append(own, st)
		}
	}
	settings := append(own, tenantCtx...)
	pc := pl.up.pool.takeContext(settings, len(own))
	r.pool.dropContext(r.pctx.key)
	r.pool, r.pctx, r.assertion = pl.up.pool, pc, &pc.assertion
	r.context = settings[len(own):]
	r.carryRules = rt.carryRules
	if r.guard != nil {
		r.guard = rt.guards.pick(true, ident.ReadOnly, pl)
	}
	return nil
}

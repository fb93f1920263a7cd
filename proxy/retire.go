package proxy

import (
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

// A reload that removes an upstream, or changes its URL or its pool
// settings, retires what the sessions there use: in transaction mode the
// upstream's pool (no new session takes it; its idle connections close at
// once, and so does each one its sessions release from then on), in
// session mode the sessions' own upstream connections. The sessions still
// there are handled as a resume handles those of a tenant moved while
// paused (pause.go):
//
//   - a transaction-mode session moves at its next transaction to where a
//     new session of its user goes now (the new pool, context and guard),
//     its own settings carried along, as PgBouncer reconnects its server
//     connections as they are released;
//   - one holding state on its old connection (a pinned connection,
//     LISTEN), and every session-mode session, is ended with FATAL 57P01
//     at its next point outside a transaction block (at once if idle).
//
// As in a drain, a transaction in progress on the old placement gets
// shutdown_timeout to finish; past it, its session is ended (57P01) and
// the server rolls the transaction back. A retired pool closes, its
// connections and notification hub with it, once nothing uses it.

// retireTick is how often a retirement looks at what is left.
const retireTick = 20 * time.Millisecond

// retirement is what one reload retired.
type retirement struct {
	pools []*txPool
	// sessions are those still on a retired pool or upstream that have
	// not yet been seen between transactions.
	sessions []*session
}

// retire retires what rt no longer has of old, after rt has become the
// runtime: the pools it did not adopt, and the sessions left on them or
// on upstreams whose URL changed or that are gone.
func (s *Server) retire(old, rt *runtime) {
	kept := map[*txPool]bool{}
	for _, up := range rt.upstreams {
		if up.pool != nil {
			kept[up.pool] = true
		}
	}
	ret := &retirement{}
	// The sessions to move are placed by their users' db_users rows as
	// they are now (refresh.go), read outside s.mu.
	s.mu.Lock()
	idents := s.identsLocked(func(ss *session) bool { return ss.strandedIn(rt) != nil })
	s.mu.Unlock()
	fresh := refreshIdentities(rt, idents)
	s.mu.Lock()
	// Under s.mu: a login takes a pool under it too (Server.place).
	for _, up := range old.upstreams {
		if up.pool != nil && !kept[up.pool] {
			up.pool.retire()
			ret.pools = append(ret.pools, up.pool)
		}
	}
	for ss := range s.sessions {
		if ss.strandedIn(rt) == nil {
			continue
		}
		ss.refreshedBy(fresh)
		if e := ss.strandedIn(rt); e != nil {
			ss.strand(e)
			ret.sessions = append(ret.sessions, ss)
		}
	}
	closed := s.closed
	if !closed && (len(ret.pools) > 0 || len(ret.sessions) > 0) {
		s.retiring.Add(1)
	}
	s.mu.Unlock()
	if closed || len(ret.pools) == 0 && len(ret.sessions) == 0 {
		return
	}
	names := make([]string, 0, len(ret.pools))
	for _, p := range ret.pools {
		names = append(names, p.name)
	}
	s.log.Info("reload: draining what changed or removed upstreams served", "pools", names, "sessions", len(ret.sessions))
	go func() {
		defer s.retiring.Done()
		s.drainRetired(ret, rt.cfg.ShutdownTimeout.Duration)
	}()
}

// drainRetired waits for the sessions of ret to move or end, ending those
// that cannot move when they are between transactions and, after
// timeout, all that are left; then it closes ret's pools as each becomes
// unused.
func (s *Server) drainRetired(ret *retirement, timeout time.Duration) {
	tick := time.NewTicker(retireTick)
	defer tick.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-s.stop:
			return // Close closes the pools
		case <-deadline.C:
			for _, ss := range ret.sessions {
				if e := s.strandedErr(ss); e != nil {
					s.log.Info("reload: ending a session still on a retired upstream after shutdown_timeout", "conn", ss.id, "tenant", ss.ident.Tenant, "upstream", ss.pl.up.name)
					ss.endStranded(e)
				}
			}
		case <-tick.C:
		}
		ret.sessions = slices.DeleteFunc(ret.sessions, s.leftRetired)
		if len(ret.sessions) > 0 {
			continue
		}
		ret.pools = slices.DeleteFunc(ret.pools, func(p *txPool) bool {
			if !p.unused() {
				return false
			}
			s.closeRetired(p)
			return true
		})
		if len(ret.pools) == 0 {
			return
		}
	}
}

// leftRetired reports whether ss needs no more watching: it has ended or
// moved, or it is between transactions and will move at its next one (its
// hold makes it). One that cannot move (its pinned connection or its
// notifications are on the old pool) is ended then.
func (s *Server) leftRetired(ss *session) bool {
	e := s.strandedErr(ss)
	if e == nil {
		return true
	}
	return ss.relay.up.leftRetired(ss, e)
}

// strandedErr is why ss is to leave its retired placement; nil once it
// has moved or ended.
func (s *Server) strandedErr(ss *session) *pgconn.PgError {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, live := s.sessions[ss]; !live {
		return nil
	}
	return ss.stranded
}

// closeRetired closes a retired pool nothing uses any more.
func (s *Server) closeRetired(p *txPool) {
	s.mu.Lock()
	s.pools = slices.DeleteFunc(s.pools, func(q *txPool) bool { return q == p })
	s.mu.Unlock()
	p.close()
	s.log.Info("reload: a replaced pool closed, its sessions moved or ended", "upstream", p.name)
}

// strandedIn returns why ss cannot stay where it is under rt: its
// upstream is gone, or (session mode) its URL or (transaction mode) its
// pool changed, and rt does not place its tenant where it is either. nil
// when it may stay. Caller holds s.mu.
func (ss *session) strandedIn(rt *runtime) *pgconn.PgError {
	up := ss.pl.up
	cur := rt.upstreams[up.name]
	if cur != nil && ss.relay.up.keeps(up, cur) {
		return nil
	}
	if ss.placedAsIn(rt) {
		return nil
	}
	return retiredError(up.name, cur == nil)
}

// strand marks ss as left on a retired placement: its next unit moves it
// (or, unable to, ends it with e); a session-mode session, whose upstream
// connection is on the old placement, ends at its next idle point. A
// paused tenant's session keeps waiting: the resume moves it. Caller holds
// s.mu.
func (ss *session) strand(e *pgconn.PgError) {
	ss.stranded = e
	ss.relay.hold.CompareAndSwap(nil, movedHold)
	ss.relay.up.strand(ss, e)
}

// endStranded ends ss now with e, a transaction in progress included (its
// upstream connection is closed: the server rolls it back).
func (ss *session) endStranded(e *pgconn.PgError) {
	r := ss.relay
	r.endReason.Store(e)
	r.draining.Store(true)
	r.up.endStranded(ss, e)
}

// retiredError ends a session left on an upstream a reload removed or
// changed.
func retiredError(upstream string, removed bool) *pgconn.PgError {
	what := "changed"
	if removed {
		what = "removed"
	}
	return &pgconn.PgError{Severity: severityFatal, Code: codeAdminShutdown,
		Message: fmt.Sprintf("terminating connection due to administrator command: upstream %q was %s by a configuration reload", upstream, what),
		Detail:  "The session's state is on its old upstream connection (session mode, a pinned connection, LISTEN) and cannot move.",
		Hint:    "Connect again: the new session goes where the configuration now places it."}
}

// place resolves ident's placement for a login. A transaction-mode login
// counts on its pool until it is a session (addSession), so that a reload
// retiring the pool meanwhile keeps it open for it; a pool already retired
// is not taken: the login is placed by the runtime that reload made.
func (s *Server) place(rt *runtime, ident auth.Identity, user string) (*runtime, placement, bool, error) {
	for {
		pl, err := rt.placementOf(ident)
		if err != nil {
			return rt, placement{}, false, err
		}
		if rt.pool == nil || rt.cfg.PoolModeFor(user) != config.PoolModeTransaction {
			return rt, pl, false, nil
		}
		p := pl.up.pool
		s.mu.Lock()
		p.mu.Lock()
		taken := !p.retired && !p.closed
		p.mu.Unlock()
		if taken {
			p.entering.Add(1)
		}
		s.mu.Unlock()
		if taken {
			return rt, pl, true, nil
		}
		rt = s.rt.Load()
	}
}

package proxy

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Pinning, in transaction mode. A WITH HOLD cursor, a temporary table, a
// LISTEN or a session advisory lock outlives the transaction that made it,
// on the connection that made it: the client's next statements must find
// it, and nobody else may. A statement that may leave one (guard.Verdict.Pins)
// pins the client's pooled connection: the lease goes on past the end of
// the transaction, as in session mode. While pinned, the settings readback
// (carried.go) also counts what is left; when a readback outside a
// transaction block finds nothing, the lease ends as usual. A client that
// leaves while pinned takes the connection with it (closed: its state dies
// with the backend).
//
// Bounded: pool.max_pinned connections in all, pool.tenant_max_pinned per
// tenant (also counted against its connection cap: a pinned connection is
// held), and pool.pinned_idle_timeout for a pinned client idle outside a
// transaction.

// pinStateSQL counts what would keep a connection pinned, as the readback's
// row with an empty name.
const pinStateSQL = " UNION ALL SELECT '', ((SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)" +
	" OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class" +
	" WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())" +
	" OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements" +
	" WHERE from_sql AND NOT pg_catalog.starts_with(name, 'pgtenant_'))" +
	" OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks" +
	" WHERE locktype OPERATOR(pg_catalog.=) 'advisory' AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()))::pg_catalog.text"

// pinFor pins the client's pooled connection for reason before a statement
// that may need it is sent, or returns the error that refuses the
// statement when a cap is reached. Request side.
//
// Only the reply side ends a pin, at the answer to a readback, and the
// request side takes that answer before a unit's first message
// (takeReadback): so what pinned says here holds until the statement runs.
func (r *relay) pinFor(reason string) *pgconn.PgError {
	if r.pinned.Load() {
		return nil
	}
	if err := r.pool.waitPin(r.done, r.waits, r.tenant); err != nil {
		return err
	}
	r.leaseMu.Lock()
	r.pin = reason
	r.pinned.Store(true)
	r.leaseMu.Unlock()
	r.carrying().touched = true // read back after every unit, to learn when it ends
	r.obs.Pinned(reason, 1)
	return nil
}

// pinRoom returns the error that refuses a statement that would pin the
// connection when it runs, if a cap is reached now.
func (r *relay) pinRoom() *pgconn.PgError {
	if r.pinned.Load() {
		return nil
	}
	if err := r.pool.waitPin(r.done, r.waits, r.tenant); err != nil {
		return err
	}
	r.pool.unpin(r.tenant)
	return nil
}

// pinForBind pins the connection for a Bind of a statement that may pin it
// (reason "": it may not). Past a cap, which the statement's Parse did not
// meet, the session ends: the Bind cannot fail on its own.
func (r *relay) pinForBind(reason string) error {
	if reason == "" {
		return nil
	}
	if err := r.pinFor(reason); err != nil {
		e := *err
		e.Severity = severityFatal
		return &e
	}
	return nil
}

// unpinLocked ends the pin. Caller holds leaseMu.
func (r *relay) unpinLocked() {
	if r.pin == "" {
		return
	}
	r.pool.unpin(r.tenant)
	r.obs.Pinned(r.pin, -1)
	r.pin = ""
	r.pinned.Store(false)
}

// waitPin counts one more pinned connection for tenant, waiting up to
// pool.wait_timeout while a cap is reached (a pin may end at any
// transaction's end, as a connection may be released).
func (p *txPool) waitPin(cancel <-chan struct{}, wt waiter, tenant string) *pgconn.PgError {
	var timer *time.Timer
	for {
		p.mu.Lock()
		err := p.tryPinLocked(tenant)
		freed := p.pinFreed
		p.mu.Unlock()
		if err == nil {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(p.cfg.WaitTimeout.Duration)
			defer timer.Stop()
		}
		wt.blocking(blockOnPin)
		select {
		case <-freed:
		case <-timer.C:
			wt.resumed(blockOnPin)
			return err
		case <-cancel:
			wt.resumed(blockOnPin)
			return err
		}
		wt.resumed(blockOnPin)
	}
}

// tryPinLocked counts one more pinned connection for tenant, unless a cap
// is reached. Caller holds p.mu.
func (p *txPool) tryPinLocked(tenant string) *pgconn.PgError {
	switch {
	case p.pinned >= p.cfg.MaxPinned:
		return pinCapError("clients", "pool.max_pinned", p.cfg.MaxPinned)
	case p.tenantPinned[tenant] >= p.cfg.TenantMaxPinned:
		return pinCapError("this tenant's clients", "pool.tenant_max_pinned", p.cfg.TenantMaxPinned)
	}
	p.pinned++
	if p.tenantPinned == nil {
		p.tenantPinned = map[string]int{}
	}
	p.tenantPinned[tenant]++
	return nil
}

// pinCapError refuses a pin past a cap: setting, at n, bounds the pins of whose.
func pinCapError(whose, setting string, n int) *pgconn.PgError {
	return &pgconn.PgError{Severity: severityError, Code: codeConfigurationLimit,
		Message: "pgtenant: too many pooled connections pinned to " + whose + " (" + setting + " is " + strconv.Itoa(n) + ")",
		Detail:  "A WITH HOLD cursor, a temporary table, an SQL prepared statement, LISTEN or a session advisory lock keeps a pooled connection for one client until it is gone.",
		Hint:    "Raise " + setting + ", close what holds the other connections, or use pool_mode: session for this client."}
}

func (p *txPool) unpin(tenant string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pinned--
	if p.tenantPinned[tenant]--; p.tenantPinned[tenant] <= 0 {
		delete(p.tenantPinned, tenant)
	}
	// Wake whoever waits for a pin.
	close(p.pinFreed)
	p.pinFreed = make(chan struct{})
}

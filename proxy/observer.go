package proxy

import "time"

// Observer receives what operators want counted. Calls happen on the
// connection path (never per message: at most per transaction start), so an
// implementation must be cheap and safe for concurrent use.
type Observer interface {
	// ConnState reports a client connection entering a state: "startup"
	// (accepted, authenticating), "active" (a session), "closed".
	ConnState(from, to string)
	// Auth reports an authentication: method "scram-sha-256" or "jwt" (or
	// "none" when refused before a method was chosen), outcome "ok" or
	// "failed", and for failures a short reason (the SQLSTATE).
	Auth(method, outcome, reason string)
	// UpstreamConnect reports a connection attempt to the named upstream
	// (a name from the configuration) and its latency.
	UpstreamConnect(upstream string, d time.Duration, err error)
	// Transaction reports a unit that started outside a transaction block
	// (an assertion was made) for tenant.
	Transaction(tenant string)
	// Refusal reports a statement the guard refused for tenant.
	Refusal(tenant string)
	// Statements reports n more statements (Query and Execute messages)
	// from tenant; the relay reports them in batches, at transaction starts
	// and at the session's end.
	Statements(tenant string, n int64)
	// Error reports an ErrorResponse relayed to a client of tenant.
	Error(tenant string)
	// PoolWait reports a transaction-mode client of tenant that had to wait
	// for a pooled connection of the named upstream.
	PoolWait(upstream, tenant string)
	// SessionEnd reports the bytes a session relayed each way.
	SessionEnd(tenant string, fromClient, toClient int64)
	// Pinned reports a pooled connection pinned to one client (delta 1,
	// with the reason: "WITH HOLD cursor", "temporary table", "SQL
	// prepared statement", "session advisory lock") or unpinned (delta -1).
	Pinned(reason string, delta int)
	// RateLimitWait reports a transaction start of tenant under its rate
	// limit: how long it waited for its turn, or, refused, how long it
	// would have.
	RateLimitWait(tenant string, wait time.Duration, refused bool)
	// Panic reports a bug caught in one session (where: "client", the
	// request side; "upstream", the reply side): that session ended and its
	// upstream connection was closed, and the proxy went on.
	Panic(where string)
}

// SessionInfo describes a live session for an admin view.
type SessionInfo struct {
	ID          uint64    `json:"id"`
	User        string    `json:"user"`
	Tenant      string    `json:"tenant"`
	Upstream    string    `json:"upstream"` // the upstream its tenant is placed on
	Remote      string    `json:"remote"`
	UpstreamPID uint32    `json:"upstream_pid"`
	Started     time.Time `json:"started"`
	TxStatus    string    `json:"tx_status"` // I, T or E as last reported by the upstream
	Assertions  int64     `json:"assertions"`
	Refusals    int64     `json:"refusals"`
	// Retired: a reload removed or changed its upstream; it moves at its
	// next transaction or ends (see Reload).
	Retired bool `json:"retired,omitempty"`
}

// PoolStat describes one upstream's transaction pool for an admin view.
type PoolStat struct {
	Upstream string `json:"upstream"`
	Open     int    `json:"open"` // idle or held
	Idle     int    `json:"idle"`
	Waiting  int    `json:"waiting"` // clients waiting for a connection
	// Retired: a reload replaced this pool; it serves the transactions of
	// the sessions still on it until they move or end (then it closes).
	Retired bool `json:"retired,omitempty"`
}

// UpstreamStat is one upstream's state for metrics: the sessions placed on
// it (both modes, those on a pool a reload replaced included).
type UpstreamStat struct {
	Upstream string `json:"upstream"`
	Sessions int    `json:"sessions"`
}

type nopObserver struct{}

func (nopObserver) ConnState(string, string)                     {}
func (nopObserver) Auth(string, string, string)                  {}
func (nopObserver) UpstreamConnect(string, time.Duration, error) {}
func (nopObserver) Transaction(string)                           {}
func (nopObserver) Refusal(string)                               {}
func (nopObserver) Statements(string, int64)                     {}
func (nopObserver) Error(string)                                 {}
func (nopObserver) SessionEnd(string, int64, int64)              {}
func (nopObserver) PoolWait(string, string)                      {}
func (nopObserver) Panic(string)                                 {}
func (nopObserver) Pinned(string, int)                           {}

func (nopObserver) RateLimitWait(string, time.Duration, bool) {}

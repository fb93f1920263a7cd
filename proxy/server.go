// Package proxy is pgtenant's connection path: it accepts client connections,
// authenticates them, connects each to the upstream as the RLS role, and
// relays the session while asserting the client's tenant at every
// transaction start.
package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/signedctx"
	"github.com/pgtenant/pgtenant/throttle"
)

// Authenticator proves who a client is and which tenant it belongs to.
type Authenticator interface {
	Authenticate(be *pgproto3.Backend, user string, conn auth.ConnInfo) (auth.Identity, error)
}

// Server is a pgtenant listener and its sessions.
type Server struct {
	log     *slog.Logger
	cancels *cancelRegistry
	rt      atomic.Pointer[runtime] // what new sessions use; swapped by Reload
	obs     atomic.Pointer[Observer]
	knobs   knobsHolder

	audit atomic.Pointer[Auditor] // nil: the audit log is off
	// auditDropBase counts the events dropped by auditors replaced since.
	auditDropBase atomic.Uint64

	nextConnID atomic.Uint64
	clients    atomic.Int64 // client connections past the startup packet
	mu         sync.Mutex
	perTenant  map[string]int // sessions per tenant
	listeners  map[net.Listener]struct{}
	// peerListeners take cancel requests forwarded by other replicas
	// (peers.go); a drain leaves them open, Close closes them.
	peerListeners map[net.Listener]struct{}
	conns         map[net.Conn]struct{}
	sessions      map[*session]struct{}
	pools         []*txPool      // the transaction pools open (retired ones until they close), closed by Close
	retiring      sync.WaitGroup // reloads' drains of what they retired (retire.go)
	closed        bool
	draining      bool
	onClose       []func()
	wg            sync.WaitGroup
	parker        *parker    // made with the first client it may park; nil until then
	loop          *eventLoop // made with the first client it may drive; nil until then
	// Paused tenants (pause.go), and the count of resumes so far.
	paused  map[string]*tenantPause
	resumes uint64
	stop    chan struct{} // closed by Close: waits for a resume end
	drained chan struct{} // closed by Shutdown: logins waiting for a resume end
}

// runtime is everything a session takes from the configuration. A session
// keeps the runtime it started with; a reload affects new sessions only.
type runtime struct {
	cfg            *config.Config
	auth           Authenticator
	tlsConfig      *tls.Config
	requireTLS     bool
	upstreamConfig *pgconn.Config // the default upstream's
	database       string         // the default upstream's: the one clients name
	policy         startupPolicy
	guards         *guards
	upstreams      map[string]*upstream // by name (placement.go)
	defaultUp      *upstream
	pool           *txPool         // the default upstream's transaction-mode connections
	unguarded      map[string]bool // users whose SQL the guard does not check
	protected      []string        // the settings a context may set, for any identity
	carryRules     *carryRules     // what transaction-mode clients' carried settings leave out
	signingKey     []byte          // signed tenant context; nil when off
	throttle       throttle.Service
	// startupTimeout bounds the time from accept to the end of
	// authentication (PostgreSQL's authentication_timeout).
	startupTimeout time.Duration

	limiters *rateLimiters // per-tenant transaction rate limits
	// rolesInUse: some session may run as a role of its own (placement.go).
	rolesInUse bool
	// schemaRoles are the roles of the tenants placed in a schema, each
	// with its tenant: no other tenant's session may run as one.
	schemaRoles map[string]string
	// scopes are the tenants' channel scopes (channels.go), made once.
	scopes scopeCache
}

// New prepares a server from a validated config.
func New(cfg *config.Config, authn Authenticator, log *slog.Logger) (*Server, error) {
	s := &Server{
		log:           log,
		cancels:       newCancelRegistry(uint32(cfg.PeerID)),
		listeners:     make(map[net.Listener]struct{}),
		peerListeners: make(map[net.Listener]struct{}),
		conns:         make(map[net.Conn]struct{}),
		sessions:      make(map[*session]struct{}),
		perTenant:     make(map[string]int),
		paused:        make(map[string]*tenantPause),
		stop:          make(chan struct{}),
		drained:       make(chan struct{}),
	}
	rt, err := newRuntime(cfg, authn, nil, log)
	if err != nil {
		return nil, err
	}
	if err := s.adoptUpstreams(rt, nil); err != nil {
		return nil, err
	}
	s.rt.Store(rt)
	return s, nil
}

// Reload makes new sessions use cfg and authn; sessions in progress go on
// with what they started with. The listen address cannot change this way.
func (s *Server) Reload(cfg *config.Config, authn Authenticator) error {
	old := s.rt.Load()
	if cfg.Listen != old.cfg.Listen {
		s.log.Warn("listen address changes need a restart; keeping the old one", "listen", old.cfg.Listen, "configured", cfg.Listen)
	}
	oldSelf, _ := old.cfg.Self()
	if self, _ := cfg.Self(); cfg.PeerID != old.cfg.PeerID || self != oldSelf {
		s.log.Warn("peer_id and this replica's peer address change with a restart only; keeping the old ones", "peer_id", old.cfg.PeerID, "configured", cfg.PeerID)
	}
	rt, err := newRuntime(cfg, authn, old, s.log)
	if err != nil {
		return err
	}
	if err := s.adoptUpstreams(rt, old); err != nil {
		return err
	}
	s.rt.Store(rt)
	s.log.Info("configuration reloaded", "users", len(cfg.Users))
	s.retire(old, rt)
	return nil
}

func newRuntime(cfg *config.Config, authn Authenticator, old *runtime, log *slog.Logger) (*runtime, error) {
	rt := &runtime{
		rolesInUse:     rolesInUse(cfg),
		schemaRoles:    cfg.SchemaRoles(),
		cfg:            cfg,
		auth:           authn,
		policy:         newStartupPolicy(cfg.TenantSetting).protect(cfg.ProtectedLimitSettings()),
		guards:         newGuards(cfg),
		unguarded:      make(map[string]bool),
		protected:      append([]string{cfg.TenantSetting, "role"}, cfg.ProtectedSettings()...),
		startupTimeout: cfg.Auth.Timeout.Duration,
	}
	rt.carryRules = newCarryRules(rt.protected, rt.policy)
	// Token buckets survive a reload: a reload must not hand out a burst.
	rt.limiters = newRateLimiters(old)
	// The back-off state survives a reload unless its settings changed.
	if old != nil && old.cfg.Auth.Throttle == cfg.Auth.Throttle {
		rt.throttle = old.throttle
	} else {
		rt.throttle = throttle.New(cfg.Auth.Throttle.Initial.Duration, cfg.Auth.Throttle.Max.Duration)
	}
	for _, u := range cfg.Users {
		if !u.GuardEnabled() {
			rt.unguarded[u.Name] = true
			log.Warn("statement guard is OFF for this user: its SQL can change its own tenant context", "user", u.Name)
		}
	}
	if cfg.SignedContext != nil {
		var err error
		if rt.signingKey, err = signedctx.ParseKey(cfg.SignedContext.Key); err != nil {
			return nil, fmt.Errorf("signed_context.key: %w", err)
		}
	}
	if cfg.TLS != nil {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		rt.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		rt.requireTLS = cfg.TLS.Mode == config.TLSModeRequire
	}
	return rt, nil
}

// ListenAndServe listens on the configured address (and peer address) and
// serves until Close.
func (s *Server) ListenAndServe() error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	pln, err := s.ListenPeers()
	if err != nil {
		ln.Close()
		return err
	}
	if pln != nil {
		go func() { _ = s.ServePeers(pln) }()
	}
	return s.Serve(ln)
}

// Listen opens the configured listener (with SO_REUSEPORT when configured).
func (s *Server) Listen() (net.Listener, error) {
	cfg := s.rt.Load().cfg
	return listen(cfg.Listen, cfg.ReusePort)
}

// listen opens a TCP listener on address. With reusePort another process
// can bind the same address: a new pgtenant while this one drains, or the
// other replicas of a set.
func listen(address string, reusePort bool) (net.Listener, error) {
	var lc net.ListenConfig
	if reusePort {
		// The kernel spreads new connections over every socket bound.
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var sockErr error
			if err := c.Control(func(fd uintptr) {
				sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return sockErr
		}
	}
	return lc.Listen(context.Background(), "tcp", address)
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("pgtenant: server closed")

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(ln, s.listeners, func(conn net.Conn) {
		conn = newDirectConn(conn)
		if !s.track(conn) {
			conn.Close()
			return
		}
		s.wg.Add(1)
		go s.serveConn(conn) // which calls connDone when the connection ends
	})
}

// serve accepts connections on ln, kept in set while it serves, and hands
// each to accepted until Close.
func (s *Server) serve(ln net.Listener, set map[net.Listener]struct{}, accepted func(net.Conn)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	set[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(set, ln)
		s.mu.Unlock()
	}()

	var delay time.Duration // backoff while accepting fails for want of resources
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if !acceptRetryable(err) {
				return err
			}
			// As PostgreSQL's postmaster: out of file descriptors (or
			// memory), the connection waits in the backlog until a client
			// leaves; the listener stays.
			if delay == 0 {
				s.log.Warn("cannot accept new connections; retrying (raise the open-files limit, or limits.max_clients)", "err", err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		accepted(conn)
	}
}

// acceptRetryable reports whether a failed Accept may succeed later: a
// timeout, too many open files, or memory or buffers short for a while.
func acceptRetryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// connDone is the end of a client connection that Serve counted.
func (s *Server) connDone(c net.Conn) {
	s.untrack(c)
	s.wg.Done()
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops the listeners, closes every client connection (their upstream
// connections close with them) and waits for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		close(s.stop)
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for ln := range s.peerListeners {
		ln.Close()
	}
	pk, lp := s.parker, s.loop
	s.mu.Unlock()
	if pk != nil {
		pk.close() // parked clients get their goroutines back, to see the close
	}
	if lp != nil {
		lp.close()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.retiring.Wait() // they end at s.stop, leaving their pools to this
	s.mu.Lock()
	onClose := s.onClose
	s.onClose = nil
	pools := s.pools
	s.pools = nil
	s.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
	for _, f := range onClose {
		f()
	}
	return nil
}

// Shutdown drains the server: it stops accepting, ends idle sessions with
// FATAL 57P01 (as PostgreSQL's administrator shutdown), lets sessions in a
// transaction finish it, and when ctx is done ends the rest the same way.
// Then it closes like Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.draining {
		close(s.drained)
	}
	s.draining = true
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	s.log.Info("draining", "sessions", len(sessions))
	for _, ss := range sessions {
		ss.drain()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for ss := range s.sessions {
			ss.terminate()
		}
		s.mu.Unlock()
		s.log.Warn("drain timeout: terminating the remaining sessions")
	}
	s.Close()
	<-done
	return err
}

// admitTenant counts a session for tenant unless that would pass limit (0: none).
func (s *Server) admitTenant(tenant string, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit > 0 && s.perTenant[tenant] >= limit {
		return false
	}
	s.perTenant[tenant]++
	return true
}

func (s *Server) releaseTenant(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perTenant[tenant] <= 1 {
		delete(s.perTenant, tenant)
		return
	}
	s.perTenant[tenant]--
}

// parkerFor returns the server's parker, starting it if need be; nil when
// the server is closed or the system has none.
func (s *Server) parkerFor() *parker {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parker == nil && !s.closed {
		s.parker = newParker(s.takeIdle, resumeParked)
	}
	return s.parker
}

// loopFor returns the server's event loop, starting it if need be; nil
// when clients are not driven by one.
func (s *Server) loopFor() *eventLoop {
	if !eventLoopSupported || !s.rt.Load().cfg.UsesEventLoop() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loop == nil && !s.closed {
		s.loop = newEventLoop()
	}
	return s.loop
}

// EventLoopHandOvers reports whether the server's event loop runs, and how
// many times it handed itself to another goroutine because a client's
// step had to wait (a statement that pins, a paused tenant, a full
// socket): for the tests and diagnostics.
func (s *Server) EventLoopHandOvers() (running bool, handOvers int64) {
	s.mu.Lock()
	l := s.loop
	s.mu.Unlock()
	if l == nil {
		return false, 0
	}
	return true, l.handOvers.Load()
}

// takeIdle is the parker's sweep: it hands over the clients that have
// waited since before idleSince.
func (s *Server) takeIdle(idleSince time.Time) {
	since := idleSince.UnixNano()
	s.mu.Lock()
	relays := make([]*relay, 0, len(s.sessions))
	for ss := range s.sessions {
		if r := ss.relay; r != nil && r.parker != nil {
			relays = append(relays, r)
		}
	}
	s.mu.Unlock()
	for _, r := range relays {
		r.takeIfIdle(since)
	}
}

func (s *Server) addSession(ss *session) {
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	rt := s.rt.Load()
	if p := s.paused[ss.ident.Tenant]; p != nil {
		ss.relay.hold.Store(p)
	} else if s.resumes != ss.resumes && !ss.placedAsIn(rt) {
		// Placed before a resume that moved its tenant.
		ss.relay.hold.Store(movedHold)
	}
	if e := ss.strandedIn(rt); e != nil {
		// Placed before a reload that retired its pool or upstream.
		ss.strand(e)
	}
	if ss.entered != nil {
		ss.entered.entering.Add(-1) // a session now, which the reload saw or strand did
		ss.entered = nil
	}
	draining := s.draining
	s.mu.Unlock()
	if draining {
		ss.drain()
	}
}

func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// SetObserver makes o receive the server's events (metrics).
func (s *Server) SetObserver(o Observer) { s.obs.Store(&o) }

func (s *Server) observer() Observer {
	if o := s.obs.Load(); o != nil {
		return *o
	}
	return nopObserver{}
}

// Sessions describes the live sessions, for an admin view.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionInfo, 0, len(s.sessions))
	for ss := range s.sessions {
		out = append(out, SessionInfo{
			ID: ss.id, User: ss.ident.User, Tenant: ss.ident.Tenant, Upstream: ss.pl.up.name, Remote: ss.client.RemoteAddr().String(),
			UpstreamPID: ss.upstreamPID, Started: time.Unix(0, ss.started), TxStatus: string(rune(ss.relay.txStatus.Load())),
			Assertions: ss.relay.stats.assertions.Load(), Refusals: ss.relay.stats.refusals.Load(),
			Retired: ss.stranded != nil,
		})
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// PoolStats reports the transaction pools' upstream connections (open, of
// them idle) and the clients waiting for one, summed over the upstreams
// new sessions use; zeros without a pool.
func (s *Server) PoolStats() (open, idle, waiting int) {
	for _, up := range s.rt.Load().upstreams {
		if up.pool != nil {
			o, i, w := up.pool.stats()
			open, idle, waiting = open+o, idle+i, waiting+w
		}
	}
	return open, idle, waiting
}

// UpstreamPools reports each transaction pool: those of the upstreams new
// sessions use, in name order (the default first), then those a reload
// replaced and that still serve sessions (Retired); none without a pool.
func (s *Server) UpstreamPools() []PoolStat {
	s.mu.Lock()
	pools := slices.Clone(s.pools)
	s.mu.Unlock()
	current := map[*txPool]bool{}
	for _, up := range s.rt.Load().upstreams {
		if up.pool != nil {
			current[up.pool] = true
		}
	}
	out := make([]PoolStat, 0, len(pools))
	for _, p := range pools {
		st := PoolStat{Upstream: p.name, Retired: !current[p]}
		st.Open, st.Idle, st.Waiting = p.stats()
		out = append(out, st)
	}
	slices.SortStableFunc(out, func(a, b PoolStat) int {
		return cmp.Or(cmp.Compare(b2i(a.Retired), b2i(b.Retired)), compareUpstreams(a.Upstream, b.Upstream))
	})
	return out
}

// compareUpstreams orders upstream names: the default first, then by name.
func compareUpstreams(a, b string) int {
	return cmp.Or(-cmp.Compare(b2i(a == config.DefaultUpstream), b2i(b == config.DefaultUpstream)), cmp.Compare(a, b))
}

// UpstreamSessions counts the sessions on each upstream: every configured
// upstream (zero included), and the names of upstreams a reload removed
// while sessions are still on them.
func (s *Server) UpstreamSessions() []UpstreamStat {
	counts := map[string]int{}
	for name := range s.rt.Load().upstreams {
		counts[name] = 0
	}
	s.mu.Lock()
	for ss := range s.sessions {
		counts[ss.pl.up.name]++
	}
	s.mu.Unlock()
	out := make([]UpstreamStat, 0, len(counts))
	for name, n := range counts {
		out = append(out, UpstreamStat{Upstream: name, Sessions: n})
	}
	slices.SortFunc(out, func(a, b UpstreamStat) int { return compareUpstreams(a.Upstream, b.Upstream) })
	return out
}

// OnClose registers f to run when Close has ended every session (closing
// the JWKS refresh, the user lookup connection, ...).
func (s *Server) OnClose(f func()) {
	s.mu.Lock()
	s.onClose = append(s.onClose, f)
	s.mu.Unlock()
}

// contextSettings are the settings asserted for an identity: the tenant,
// its signature, the settings from its claims, its limits, read-only, and
// its placement's search_path and role last.
//
// With context_scope: transaction the first three, what policies read, are
// local (SET LOCAL per transaction). The others stay session-level on
// purpose: a statement after a COMMIT in the middle of a string runs in a
// transaction pgtenant cannot assert, and there it must still be read-only,
// time-limited, in the tenant's schema and role; only the context is gone,
// which the policies refuse.
func (rt *runtime) contextSettings(ident auth.Identity, pl placement) []setting {
	upName := config.DefaultUpstream
	if pl.up != nil {
		upName = pl.up.name
	}
	local := rt.cfg.ContextScopeOf(upName) == config.ContextScopeTransaction
	settings := []setting{{name: rt.cfg.TenantSetting, value: ident.Tenant, local: local}}
	if rt.signingKey != nil {
		settings = append(settings, setting{name: rt.cfg.SignatureSetting(), value: signedctx.Sign(rt.signingKey, ident.Tenant), local: local})
	}
	for _, st := range ident.Settings {
		settings = append(settings, setting{name: st.Name, value: st.Value, local: local})
	}
	settings = append(settings, limitSettings(rt.cfg.TenantPolicy(ident.Tenant), ident.Limits)...)
	if ident.ReadOnly {
		settings = append(settings, setting{name: "default_transaction_read_only", value: "on"})
	}
	return append(settings, pl.settings()...)
}

// handleCancel forwards a CancelRequest whose key pgtenant issued: to the
// upstream, or to the replica that issued it (peers.go). Unknown keys are
// ignored silently, as PostgreSQL does.
func (s *Server) handleCancel(cr *pgproto3.CancelRequest, log *slog.Logger, fromPeer bool) {
	if s.routeCancel(cr, log, fromPeer) {
		return
	}
	t, ok := s.cancels.lookup(cr.ProcessID, cr.SecretKey)
	if !ok {
		log.Debug("cancel request with unknown key ignored")
		return
	}
	if t.pooled != nil {
		pid, sent, err := t.pooled.cancelPooled(s.rt.Load().cfg.ConnectTimeout.Duration)
		switch {
		case err != nil:
			log.Warn("forwarding cancel request failed", "err", err)
		case sent:
			log.Info("cancel request forwarded", "upstream_pid", pid)
		default:
			log.Debug("cancel request for a client between transactions ignored")
		}
		return
	}
	if err := t.send(context.Background(), s.rt.Load().cfg.ConnectTimeout.Duration); err != nil {
		log.Warn("forwarding cancel request failed", "err", err)
		return
	}
	log.Info("cancel request forwarded", "upstream_pid", t.pid)
}

package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

// serveConn runs one client connection from the first byte to the close.
func (s *Server) serveConn(conn net.Conn) {
	id := s.nextConnID.Add(1)
	log := s.log.With("conn", id, "remote", conn.RemoteAddr().String())
	rt := s.rt.Load()
	obs := s.observer()
	obs.ConnState("", "startup")

	// TLS, authentication and the upstream connect run on a goroutine of
	// their own: the deep stack they grow goes with it, and the goroutine
	// that then waits for the client (for hours, in transaction mode with
	// nothing else held) stays small.
	established := make(chan *session, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				logPanic(log, "login", p)
				s.observer().Panic("login")
				conn.Close()
				established <- nil
			}
		}()
		established <- s.establish(conn, id, rt, log)
	}()
	sess := <-established
	if sess == nil {
		obs.ConnState("startup", "closed")
		s.connDone(conn)
		return
	}
	sess.id = id
	sess.relay.startAudit(s.auditor(), sess.user, id)
	obs.ConnState("startup", "active")
	s.addSession(sess)
	sess.run()
}

// establish reads the startup packet, authenticates the client and starts
// its session. On failure it tells the client, closes the connection and
// returns nil.
func (s *Server) establish(conn net.Conn, id uint64, rt *runtime, log *slog.Logger) *session {
	_ = conn.SetDeadline(time.Now().Add(rt.startupTimeout))
	st, err := readStartup(conn, rt.tlsConfig)
	if err != nil {
		// st.conn is the TLS connection when the error came after the upgrade.
		s.refuse(st.conn, err, log)
		st.conn.Close()
		return nil
	}
	if st.cancel != nil {
		s.handleCancel(st.cancel, log, false)
		st.conn.Close()
		return nil
	}
	if n := s.clients.Add(1); rt.cfg.Limits.MaxClients > 0 && n > int64(rt.cfg.Limits.MaxClients) {
		s.clients.Add(-1)
		s.refuse(st.conn, fatalf(codeTooManyConnections, "sorry, too many clients already"), log)
		st.conn.Close()
		return nil
	}
	// From the pools that transaction mode gives them back to (an idle
	// client keeps neither): a burst of logins then reuses a few buffers
	// rather than leave two per login in the pools until the GC.
	cw := writerPool.Get().(*bufio.Writer)
	cw.Reset(st.conn)
	cr := readerPool.Get().(*bufio.Reader)
	cr.Reset(st.conn)
	sess, err := s.startSession(rt, st, cr, cw, log)
	if err != nil {
		s.auditLoginFailed(id, st, err)
		s.refuse(cw, err, log)
		s.clients.Add(-1)
		st.conn.Close()
		return nil
	}
	_ = st.conn.SetDeadline(time.Time{})
	return sess
}

// refuse reports err to the client as an ErrorResponse and logs it.
func (s *Server) refuse(w io.Writer, err error, log *slog.Logger) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Not a protocol-level refusal (EOF, reset, TLS failure): nobody to tell.
		log.Debug("connection ended during startup", "err", err)
		return
	}
	log.Info("connection refused", "sqlstate", pgErr.Code, "reason", pgErr.Message)
	buf, encErr := errorResponse(pgErr).Encode(nil)
	if encErr != nil {
		return
	}
	_, _ = w.Write(buf)
	if bw, ok := w.(*bufio.Writer); ok {
		_ = bw.Flush()
	}
}

// session is an authenticated client with its upstream connection.
type session struct {
	s        *Server
	user     string // from the startup packet
	client   net.Conn
	upstream net.Conn
	relay    *relay
	key      cancelKey

	id    uint64
	ident auth.Identity
	pl    placement // where it is (pl.up.name: the upstream's name); changed only by move, under s.mu
	// stranded: a reload retired its pool or upstream, and why it is to
	// leave (retire.go); nil once it has moved. Under s.mu.
	stranded *pgconn.PgError
	// gone: a re-read of its user's db_users row (refresh.go) found the
	// user gone or moved to another tenant, or failed; it ends at its
	// move. Under s.mu.
	gone *pgconn.PgError
	// entered is the pool its login counted on (Server.place), until
	// addSession.
	entered     *txPool
	resumes     uint64 // Server.resumes when its login checked for a pause
	upstreamPID uint32
	started     int64 // UnixNano: a time.Time is 16 bytes more per client
}

// startSession authenticates the client, resolves its tenant, connects
// upstream and sends the client what a PostgreSQL server sends after
// authentication.
func (s *Server) startSession(rt *runtime, st *startup, cr *bufio.Reader, cw *bufio.Writer, log *slog.Logger) (sess *session, err error) {
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return nil, fatalf(codeCannotConnectNow, "the database system is shutting down")
	}
	if rt.requireTLS && st.tls == nil {
		return nil, fatalf(codeInvalidAuthorization, "pgtenant requires TLS: connect with sslmode=require or stronger")
	}
	if st.minor > 0 || len(st.pqOpts) > 0 {
		// As PostgreSQL: name the newest minor version we speak and the
		// protocol options we do not know, then carry on in 3.0.
		msg := &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.pqOpts}
		if err := writeMessages(cw, msg); err != nil {
			return nil, err
		}
	}
	user := st.params["user"]
	if user == "" {
		return nil, fatalf(codeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	database := st.params["database"]
	if database == "" {
		database = user
	}
	log = log.With("user", user)
	params, pgErr := rt.policy.upstreamParams(st.params)
	if pgErr != nil {
		return nil, pgErr
	}

	// pgproto3 reads ahead; give it exactly one message at a time so that no
	// byte meant for the relay is left in its buffer.
	be := pgproto3.NewBackend(&messageReader{r: cr}, st.conn)
	// A JWT may be large; PostgreSQL accepts authentication tokens up to this size too.
	be.SetMaxBodyLen(maxAuthMessageLen)
	remote := st.conn.RemoteAddr().String()
	if err := rt.throttle.LoginCheck(remote, user); err != nil {
		return nil, err
	}
	// One name for the method whatever the outcome, so that failures and
	// successes add up under the same label.
	method := auth.MethodName(rt.cfg.MethodFor(user))
	ident, err := rt.auth.Authenticate(be, user, auth.ConnInfo{TLS: st.tls, Loopback: auth.IsLoopback(st.conn.RemoteAddr()), RemoteAddr: remote})
	var authErr *pgconn.PgError
	if err == nil || errors.As(err, &authErr) {
		// Only a finished exchange counts; a client that hangs up does not,
		// nor does a refusal that could not have been a guess (a correctly
		// signed token that expired): it neither counts nor resets.
		if err == nil || auth.CouldBeGuess(err) {
			rt.throttle.ReportAttempt(remote, user, err == nil)
		}
		if err == nil {
			s.observer().Auth(method, "ok", "")
		} else {
			s.observer().Auth(method, "failed", authErr.Code)
		}
	}
	if err != nil {
		return nil, err
	}
	log = log.With("tenant", ident.Tenant)
	if !s.admitTenant(ident.Tenant, rt.cfg.Limits.MaxClientsPerTenant) {
		return nil, fatalf(codeTooManyConnections, "too many connections for tenant %q", ident.Tenant)
	}
	defer func() {
		if err != nil {
			s.releaseTenant(ident.Tenant)
		}
	}()
	// A paused tenant's login waits before it is placed: where it goes is
	// the placement at the resume.
	rt, resumes, err := s.awaitLogin(rt, &ident, st.conn)
	if err != nil {
		return nil, err
	}
	rt, pl, pooled, err := s.place(rt, ident, user)
	if err != nil {
		return nil, err
	}
	if pooled {
		defer func() {
			if sess == nil {
				pl.up.pool.entering.Add(-1) // no session after all (an error, or a panic)
			}
		}()
	}
	// Checked after authentication, as PostgreSQL does, so that an
	// unauthenticated client learns nothing about the database.
	if database != rt.database {
		return nil, fatalf(codeInvalidCatalogName, "database %q does not exist", database)
	}
	if err := pl.checkStartup(params); err != nil {
		return nil, err
	}
	if err := rt.checkLoginRole(context.Background(), pl); err != nil {
		log.Warn("session refused", "err", err)
		return nil, err
	}
	if pl.up != rt.defaultUp {
		log = log.With("upstream", pl.up.name)
	}

	if pooled {
		ss, err := s.startPooledSession(rt, pl, st, cr, cw, ident, params, log)
		if ss != nil {
			ss.resumes = resumes
			ss.entered = pl.up.pool
		}
		return ss, err
	}
	a := newAssertion(rt.contextSettings(ident, pl))
	start := time.Now()
	hc, err := rt.connectUpstream(context.Background(), pl.up.config, params, a)
	s.observer().UpstreamConnect(pl.up.name, time.Since(start), err)
	if err != nil {
		log.Warn("upstream connection failed", "err", err)
		return nil, err
	}
	g := rt.guards.pick(false, ident.ReadOnly, pl)
	if rt.unguarded[ident.User] {
		g = nil
	}
	if g != nil {
		if err := checkUpstreamLexing(hc.ParameterStatuses); err != nil {
			hc.Conn.Close()
			return nil, err
		}
	}
	if !s.track(hc.Conn) {
		hc.Conn.Close()
		return nil, fatalf(codeAdminShutdown, "terminating connection due to administrator command")
	}
	addr := hc.Conn.RemoteAddr()
	key := s.cancels.register(cancelTarget{network: addr.Network(), address: addr.String(), pid: hc.PID, secret: hc.SecretKey})

	if err := writeSessionStart(cw, hc.ParameterStatuses, key); err != nil {
		s.cancels.unregister(key)
		hc.Conn.Close()
		s.untrack(hc.Conn)
		return nil, err
	}
	log.Info("session started", "upstream_pid", hc.PID, "connect_ms", time.Since(start).Milliseconds(), "guard", g != nil)
	rl := newRelay(st.conn, cr, cw, hc.Conn, &a, g, ident.Expires)
	s.configureRelay(rt, rl, ident)
	rl.watchTransactions(rt.cfg.TenantPolicy(ident.Tenant).MaxTransactionDuration, cancelTarget{network: addr.Network(), address: addr.String(), pid: hc.PID, secret: hc.SecretKey})
	ss := &session{
		s:        s,
		user:     st.params["user"],
		client:   st.conn,
		upstream: hc.Conn,
		relay:    rl,
		key:      key,

		ident:       ident,
		pl:          pl,
		resumes:     resumes,
		upstreamPID: hc.PID,
		started:     time.Now().UnixNano(),
	}
	rl.sess = ss
	return ss, nil
}

// configureRelay gives a session's relay its user, tenant, observer and limits.
func (s *Server) configureRelay(rt *runtime, rl *relay, ident auth.Identity) {
	rl.obs, rl.user, rl.tenant = s.observer(), ident.User, ident.Tenant
	rl.pauseTimeout, rl.stop = rt.cfg.PauseTimeout.Duration, s.stop
	if rl.guard != nil {
		rl.notifyScope = rt.scopes.get(rt.cfg, ident.Tenant)
	}
	if tp := rt.cfg.TenantPolicy(ident.Tenant); tp.TransactionsPerSecond > 0 {
		rl.rate = &rateLimit{bucket: rt.limiters.bucket(ident.Tenant), rate: tp.TransactionsPerSecond, burst: tp.RateLimitBurst, maxWait: tp.RateLimitWait}
	}
	lim := rt.cfg.Limits
	rl.maxMessage, rl.maxPrepared = lim.MaxMessageSize, lim.MaxPreparedBytes
	rl.idleTimeout, rl.idleInTxTimeout = lim.IdleTimeout.Duration, lim.IdleInTransactionTimeout.Duration
	rl.setUpstreamTimeout(lim.UpstreamTimeout.Duration)
}

// writeSessionStart sends what PostgreSQL sends after authentication:
// the parameter statuses, the cancel key, ReadyForQuery. Written straight
// into the client's buffer: a login leaves no garbage here but the names'
// slice (what a burst of logins leaves between two collections is what
// fragments the heap that the idle clients then stay in).
func writeSessionStart(cw *bufio.Writer, statuses map[string]string, key cancelKey) error {
	names := make([]string, 0, len(statuses))
	for name := range statuses {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := statuses[name]
		writeHeader(cw, 'S', len(name)+1+len(value)+1)
		_, _ = cw.WriteString(name)
		_ = cw.WriteByte(0)
		_, _ = cw.WriteString(value)
		_ = cw.WriteByte(0)
	}
	writeHeader(cw, 'K', 8) // BackendKeyData
	writeUint32(cw, key.pid)
	writeUint32(cw, key.secret)
	writeHeader(cw, 'Z', 1) // ReadyForQuery
	_ = cw.WriteByte('I')
	return cw.Flush()
}

// writeHeader writes a message's type and length, for a body of n bytes.
func writeHeader(w *bufio.Writer, typ byte, n int) {
	_ = w.WriteByte(typ)
	writeUint32(w, uint32(4+n))
}

// writeUint32 writes v big-endian, a byte at a time: a slice of it passed
// to Write would escape to the heap.
func writeUint32(w *bufio.Writer, v uint32) {
	_ = w.WriteByte(byte(v >> 24))
	_ = w.WriteByte(byte(v >> 16))
	_ = w.WriteByte(byte(v >> 8))
	_ = w.WriteByte(byte(v))
}

// startPooledSession starts a transaction-mode session: no upstream
// connection of its own. The client's startup parameters become settings
// asserted with the tenant at every transaction start; one round trip on a
// pooled connection checks that they apply and learns the parameter
// statuses to report.
func (s *Server) startPooledSession(rt *runtime, pl placement, st *startup, cr *bufio.Reader, cw *bufio.Writer, ident auth.Identity, params map[string]string, log *slog.Logger) (*session, error) {
	if strings.Contains(strings.ToLower(params["search_path"]), "pg_temp") {
		// pg_temp first in the path would make plain CREATE TABLE create
		// temporary tables, which outlive the transaction on a shared connection.
		return nil, &pgconn.PgError{Severity: severityFatal, Code: codeFeatureNotSupported,
			Message: "search_path naming pg_temp is not supported in transaction pool mode",
			Hint:    "Leave pg_temp out of search_path, or use pool_mode: session."}
	}
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)
	settings := make([]setting, 0, len(names))
	for _, name := range names {
		settings = append(settings, setting{name: name, value: params[name]})
	}
	// The tenant's settings last, the role at the very end.
	settings = append(settings, rt.contextSettings(ident, pl)...)
	pool := pl.up.pool
	pc := pool.takeContext(settings, len(names))
	if pc.own == len(names) && len(pc.settings) == len(settings) {
		// The same settings (the same key), made by the first client of
		// the context: an idle client keeps no copy of its own.
		settings = pc.settings
	}
	a := &pc.assertion
	g := rt.guards.pick(true, ident.ReadOnly, pl)
	rl := newRelay(st.conn, cr, cw, nil, a, g, ident.Expires)
	rl.pooledState = pooledState{
		pool:       pool,
		pctx:       pc,
		startup:    settings[:len(names)],
		context:    settings[len(names):],
		carryRules: rt.carryRules,
	}
	rl.up = leaseBinding{rl}
	started := false
	defer func() {
		if !started {
			pool.dropContext(pc.key)
		}
	}()

	// The parameter statuses to report depend on the startup parameters
	// only: learned once per distinct set, so that logging in does not need
	// a pooled connection (the pool may be busy with long transactions).
	start := time.Now()
	paramsKey := setStatements(settings[:len(names)])
	merged, ok := pool.cachedStatuses(paramsKey)
	if !ok {
		var err error
		if merged, err = pool.learnStatuses(ident.Tenant, pc, a.standalone, rt.cfg.ConnectTimeout.Duration); err != nil {
			return nil, err
		}
		pool.cacheStatuses(paramsKey, merged)
	}
	key := s.cancels.register(cancelTarget{pid: randomPID(), pooled: rl})
	if err := writeSessionStart(cw, merged, key); err != nil {
		s.cancels.unregister(key)
		return nil, err
	}
	// Until its first transaction the client needs no write buffer.
	writerPool.Put(cw)
	rl.cw = nil
	log.Info("session started", "pool_mode", config.PoolModeTransaction, "startup_ms", time.Since(start).Milliseconds())
	s.configureRelay(rt, rl, ident)
	rl.clientEncoding.Store(encodingValue(merged["client_encoding"]))
	rl.watchTransactions(rt.cfg.TenantPolicy(ident.Tenant).MaxTransactionDuration, cancelTarget{})
	if lim := rt.cfg.Limits; lim.IdleTimeout.Duration == 0 && lim.IdleInTransactionTimeout.Duration == 0 {
		// Idle timeouts are read deadlines: a parked client has no read.
		if fd := connFD(st.conn); fd >= 0 {
			rl.parkFD = fd
			if l := s.loopFor(); l != nil {
				rl.useLoop(l)
			} else if pk := s.parkerFor(); pk != nil {
				rl.parker = pk
			}
		}
	}
	started = true // session.close drops the context
	ss := &session{s: s, user: st.params["user"], client: st.conn, relay: rl, key: key, ident: ident, pl: pl, started: time.Now().UnixNano()}
	rl.sess = ss
	return ss, nil
}

// ended cleans up once the session is over. In transaction mode the
// session may outlive the goroutine that served its login (parker):
// whichever goroutine ends it calls ended. A method, not a closure kept
// with the session: an idle client should cost little.
func (ss *session) ended() {
	s := ss.s
	s.removeSession(ss)
	ss.close()
	s.clients.Add(-1)
	ss.client.Close()
	ss.relay.obs.ConnState("active", "closed")
	conn := ss.client // the connection Serve accepted, under any TLS
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	s.connDone(conn)
}

// run relays until either side ends, then tears both down. A client that goes
// away closes the upstream connection, so an open transaction rolls back.
// Whichever side ends first reports to the client, once.
func (ss *session) run() { ss.relay.up.run(ss) }

// resumeParked is how the parker gives a client back (a function, not a
// closure per session: an idle client should cost little).
func resumeParked(r *relay) { r.sess.resume() }

// resume goes on with a session that the parker held, on a new goroutine.
func (ss *session) resume() {
	r := ss.relay
	if r.relayWork == nil {
		r.takeWork()
	}
	err := r.parkReader(true)
	if err == nil {
		// Into the read buffer, so that the relay loop does not wait again.
		_, err = r.cr.Peek(1)
	}
	switch {
	case err == nil:
		err = ss.catchPanic("client", r.clientToUpstream)
	case err != errParked:
		err = r.idleError(err)
	}
	ss.endPooled(err)
}

// endPooled ends the session when its request side has ended with reqErr,
// unless it has only left for the parker.
func (ss *session) endPooled(reqErr error) {
	r := ss.relay
	if reqErr == errParked {
		// Parked, it needs no relayWork: given back before the parker can
		// resume it on another goroutine. An event loop's client may go back
		// to its loop in the middle of a group or a transaction: it gives it
		// back only when it holds nothing (loopRest).
		if r.evLoop() == nil {
			r.putWork()
		} else {
			r.loopRest()
		}
		if r.parker.park(r) {
			return
		}
		// Not parked (ending, or the system refused): go on here, and do
		// not try again.
		r.noPark.Store(true)
		ss.resume()
		return
	}
	r.endPoolWait()
	if r.parker != nil {
		// Out of the parker's or the loop's set before the socket closes:
		// a closed descriptor leaves epoll without an event, and its number
		// may be another client's next.
		r.parker.unpark(r)
	}
	first := !r.closing.Swap(true)
	// Whoever writes to the client now (finish, or failResponse) must not
	// wait long for a client that does not read.
	_ = ss.client.SetWriteDeadline(time.Now().Add(time.Second))
	if r.stopPooled(!errors.Is(reqErr, errClientTerminated)) || !first {
		// Not first: failResponse is ending the session and may still be
		// writing to the client; it closes done when it is through.
		<-r.done
	}
	var respErr error
	select {
	case <-r.done:
		respErr = r.respErr
	default:
	}
	ss.finish(reqErr, respErr, first)
	ss.ended()
}

// finish reports the request side's error to the client if it ended the
// session, and logs and counts the session's end. Both sides are done.
func (ss *session) finish(reqErr, respErr error, first bool) {
	r := ss.relay
	var pgErr *pgconn.PgError
	r.clientWriter() // a transaction-mode client may have none
	if first && errors.As(reqErr, &pgErr) {
		// The reply side has returned: the client writer is ours now.
		_ = ss.client.SetWriteDeadline(time.Now().Add(time.Second))
		_ = r.writeClient(errorResponse(pgErr))
		_ = r.cw.Flush()
	}
	clientEnd, upstreamEnd := endCauses(reqErr, respErr, first, r.sawFatal, r.draining.Load())
	// The attributes of the login's logger, built again rather than kept:
	// an idle client should cost little.
	ss.s.log.Info("session ended", "conn", ss.id, "remote", ss.client.RemoteAddr().String(), "user", ss.user, "tenant", ss.ident.Tenant,
		"client", clientEnd, "upstream", upstreamEnd,
		"assertions", r.stats.assertions.Load(), "refusals", r.stats.refusals.Load(),
		"bytes_from_client", r.stats.fromClient, "bytes_to_client", r.stats.toClient)
	ss.s.observer().Statements(ss.ident.Tenant, r.stats.statements)
	ss.s.observer().SessionEnd(ss.ident.Tenant, r.stats.fromClient, r.stats.toClient)
}

// reportEnd tells the client why the reply side ended the session.
func (r *relay) reportEnd(err error) {
	var pgErr *pgconn.PgError
	switch {
	case r.panicked.Load():
		_ = r.writeClient(errorResponse(errPanic))
	case errors.As(err, &pgErr):
		_ = r.writeClient(errorResponse(pgErr))
	case r.draining.Load():
		_ = r.writeClient(errorResponse(fatalf(codeAdminShutdown, "terminating connection due to administrator command")))
	case errors.Is(err, errUpstreamLost) && !r.sawFatal:
		// The upstream said nothing (a FATAL it sent was forwarded already).
		_ = r.writeClient(errorResponse(fatalf(codeConnectionFailure, "pgtenant: the upstream server closed the connection unexpectedly")))
	}
}

// drain ends the session at its next moment outside a transaction block:
// now if it is idle, else when the upstream reports idle again.
func (ss *session) drain() {
	r := ss.relay
	r.draining.Store(true)
	r.up.drain(ss)
}

// terminate ends the session now, with FATAL 57P01.
func (ss *session) terminate() {
	r := ss.relay
	r.draining.Store(true)
	r.up.terminate(ss)
}

func (ss *session) close() {
	if ss.relay != nil {
		ss.relay.stopWatch()
	}
	ss.s.releaseTenant(ss.ident.Tenant)
	ss.s.cancels.unregister(ss.key)
	if ss.relay != nil {
		ss.relay.up.close(ss)
		return
	}
	ss.upstream.Close()
	ss.s.untrack(ss.upstream)
}

func writeMessages(w *bufio.Writer, msgs ...pgproto3.BackendMessage) error {
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	if _, err := w.Write(buf); err != nil {
		return err
	}
	return w.Flush()
}

// messageReader hands out one protocol message at a time from r, never
// reading past its end.
type messageReader struct {
	r    *bufio.Reader
	left int
}

func (m *messageReader) Read(p []byte) (int, error) {
	if m.left == 0 {
		_, size, err := readHeader(m.r)
		if err != nil {
			return 0, err
		}
		m.left = size
	}
	if len(p) > m.left {
		p = p[:m.left]
	}
	n, err := m.r.Read(p)
	m.left -= n
	return n, err
}

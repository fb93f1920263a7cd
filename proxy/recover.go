package proxy

import (
	"log/slog"
	"runtime/debug"
	"sync/atomic"
)

// A bug in one session must end that session, never the process: every
// goroutine that runs a session's code (its request side, its reply side,
// a pooled connection's reader, the login) recovers a panic, logs it with
// its stack, counts it, and closes what the session held upstream, which is
// never given back to a pool: its state is unknown.

// errPanic is what the client of a session that hit a bug is told.
var errPanic = fatalf(codeInternalError, "pgtenant: internal error; this session was ended (the proxy logged the details)")

// TestingKnobs are hooks a test sets to reach paths that correct input
// cannot (a bug, a panic). Nil fields do nothing.
type TestingKnobs struct {
	// OnStatement sees the text of each Query and Parse the guard reads,
	// on the session's request side.
	OnStatement func(text []byte)
	// OnReply sees the type of each message from the upstream, on the
	// session's reply side.
	OnReply func(typ byte)
}

// SetTestingKnobs installs knobs for sessions started from now on.
func (s *Server) SetTestingKnobs(k *TestingKnobs) { s.knobs.Store(k) }

// testingKnobs returns the server's knobs; nil outside tests (and for a
// relay without a session, in the package's own tests).
func (r *relay) testingKnobs() *TestingKnobs {
	if r.sess == nil {
		return nil
	}
	return r.sess.s.knobs.Load()
}

// knobsHolder is where the server keeps its knobs.
type knobsHolder = atomic.Pointer[TestingKnobs]

// catchPanic runs f, one side of ss, and turns a panic in it into errPanic
// after cutting the session's upstream.
func (ss *session) catchPanic(where string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			logPanic(ss.s.log, where, p, "conn", ss.id, "tenant", ss.ident.Tenant)
			ss.s.observer().Panic(where)
			ss.relay.panicked.Store(true)
			ss.relay.cutUpstream()
			err = errPanic
		}
	}()
	return f()
}

// cutUpstream closes the upstream connection the relay uses, so that the
// other side ends too and nothing the session left half done reaches anyone.
func (r *relay) cutUpstream() { r.up.cut() }

func logPanic(log *slog.Logger, where string, p any, attrs ...any) {
	attrs = append(attrs, "where", where, "panic", p, "stack", string(debug.Stack()))
	log.Error("pgtenant bug: a session panicked and was ended", attrs...)
}

package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// connectUpstream opens the upstream connection for one client session with
// pgconn (TLS, SCRAM, md5 and the other libpq options come from it), asserts
// the tenant once in a round trip of its own, so that the committed session
// value is the client's tenant before the client sends anything, and then
// takes over the raw connection for relaying.
func (rt *runtime) connectUpstream(ctx context.Context, up *pgconn.Config, params map[string]string, a assertion) (*pgconn.HijackedConn, error) {
	return rt.dialUpstream(ctx, up, params, func(ctx context.Context, conn *pgconn.PgConn) error {
		if _, err := conn.Exec(ctx, a.statements).ReadAll(); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				return assertionFailed(pgErr)
			}
			return fatalf(codeConnectionFailure, "pgtenant could not assert the tenant context on the upstream: %v", err)
		}
		return nil
	})
}

// dialUpstream connects to up with params as startup parameters, runs
// setup (if any) on the new connection, and hijacks it.
func (rt *runtime) dialUpstream(ctx context.Context, up *pgconn.Config, params map[string]string, setup func(context.Context, *pgconn.PgConn) error) (*pgconn.HijackedConn, error) {
	cfg := up.Copy()
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	timeout := rt.cfg.ConnectTimeout.Duration
	cfg.ConnectTimeout = timeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, upstreamConnectError(ctx, err, timeout)
	}
	if setup != nil {
		if err := setup(ctx, conn); err != nil {
			conn.Close(context.Background())
			return nil, err
		}
	}
	// pgconn may be reading in the background (it starts a reader when a
	// write is slow): stop that, or it would take bytes meant for the relay.
	if err := conn.SyncConn(ctx); err != nil {
		conn.Close(context.Background())
		return nil, upstreamConnectError(ctx, err, timeout)
	}
	hc, err := conn.Hijack()
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("hijack upstream connection: %w", err)
	}
	// pgconn may have left a deadline from its context watcher.
	_ = hc.Conn.SetDeadline(time.Time{})
	return hc, nil
}

// upstreamConnectError names the cause in an 08xxx error, as a client expects
// from a server it cannot reach.
func upstreamConnectError(ctx context.Context, err error, timeout time.Duration) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		return &pgconn.PgError{
			Severity: severityFatal,
			Code:     codeConnectionRejected,
			Message:  "upstream server rejected the connection: " + pgErr.Message,
			Detail:   "upstream SQLSTATE " + pgErr.Code,
		}
	case ctx.Err() != nil || pgconn.Timeout(err):
		return fatalf(codeUnableToConnect, "could not connect to the upstream server within %s", timeout)
	default:
		return fatalf(codeUnableToConnect, "could not connect to the upstream server: %v", unwrapConnectError(err))
	}
}

func unwrapConnectError(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) && ce.Unwrap() != nil {
		return ce.Unwrap()
	}
	return err
}

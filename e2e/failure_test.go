package e2e

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/testcert"
)

func connectErr(t *testing.T, connString string) *pgconn.PgError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, connString)
	if err == nil {
		conn.Close(context.Background())
		t.Fatalf("connect %q succeeded, want an error", connString)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("connect error %v is not a PostgreSQL error", err)
	}
	return pgErr
}

func TestLoginFailures(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		wrong := tenantA
		wrong.Password = "not-the-password"
		unknown := demo.Tenant{User: "nobody", Password: "whatever"}

		tests := []struct {
			desc     string
			conn     string
			code     string
			message  string
			severity string
		}{
			{"wrong password", p.connString(wrong), "28P01", `password authentication failed for user "acme_app"`, "FATAL"},
			{"unknown user looks the same", p.connString(unknown), "28P01", `password authentication failed for user "nobody"`, "FATAL"},
			{"wrong database", p.connString(tenantA) + " dbname=other", "3D000", `database "other" does not exist`, "FATAL"},
			{"tenant setting as startup parameter", p.connString(tenantA) + " app.tenant_id=" + tenantB.ID, "42501", `permission denied to set parameter "app.tenant_id"`, "FATAL"},
			{"tenant setting in options", p.connString(tenantA) + " options='-c app.tenant_id=" + tenantB.ID + "'", "42501", `permission denied to set parameter "app.tenant_id"`, "FATAL"},
			{"setting under the tenant prefix", p.connString(tenantA) + " options='-c APP.other=x'", "42501", `permission denied to set parameter "APP.other"`, "FATAL"},
			{"role in options", p.connString(tenantA) + " options=--role=postgres", "42501", `permission denied to set parameter "role"`, "FATAL"},
			{"session_authorization", p.connString(tenantA) + " session_authorization=postgres", "42501", `permission denied to set parameter "session_authorization"`, "FATAL"},
			{"row_security off", p.connString(tenantA) + " options='-c row_security=off'", "42501", `permission denied to set parameter "row_security"`, "FATAL"},
		}
		for _, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) {
				e := connectErr(t, tt.conn)
				if e.Code != tt.code || e.Message != tt.message || e.Severity != tt.severity {
					t.Fatalf("got %s %s %q, want %s %s %q", e.Severity, e.Code, e.Message, tt.severity, tt.code, tt.message)
				}
			})
		}
		// Harmless startup parameters reach the upstream.
		conn := p.pgconnect(t, tenantA, "application_name=e2e_app", "options='-c search_path=public -c statement_timeout=12345'")
		if got := queryOne(t, conn, "SELECT current_setting('application_name') || ' ' || current_setting('statement_timeout')"); got != "e2e_app 12345ms" {
			t.Fatalf("forwarded parameters: %q", got)
		}
	})
}

func TestUpstreamUnavailable(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		t.Run("refused", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close() // nothing listens there now
			p := m.start(t, func(c *config.Config) { c.Upstream = "postgres://app_rls:x@" + addr + "/app?sslmode=disable" })
			start := time.Now()
			e := connectErr(t, p.connString(tenantA))
			if !strings.HasPrefix(e.Code, "08") || e.Severity != "FATAL" || !strings.Contains(e.Message, "connection refused") {
				t.Fatalf("got %s %s %q, want FATAL 08xxx naming the refusal", e.Severity, e.Code, e.Message)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %s", time.Since(start))
			}
		})
		t.Run("stalled", func(t *testing.T) {
			// A server that accepts and never answers: the connect timeout fires.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
				}
			}()
			p := m.start(t, func(c *config.Config) {
				c.Upstream = "postgres://app_rls:x@" + ln.Addr().String() + "/app?sslmode=disable"
				c.ConnectTimeout = config.Duration{Duration: 300 * time.Millisecond}
			})
			start := time.Now()
			e := connectErr(t, p.connString(tenantA))
			if e.Code != "08001" || !strings.Contains(e.Message, "within 300ms") {
				t.Fatalf("got %s %q, want 08001 naming the timeout", e.Code, e.Message)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %s for a 300ms timeout", d)
			}
		})
		t.Run("rejected", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) { c.Upstream = strings.Replace(c.Upstream, demo.RLSPassword, "wrong", 1) })
			e := connectErr(t, p.connString(tenantA))
			if e.Code != "08004" || !strings.Contains(e.Message, "password authentication failed") {
				t.Fatalf("got %s %q, want 08004 with the upstream's reason", e.Code, e.Message)
			}
		})
	})
}

// An upstream backend terminated mid-query: the client gets the server's
// FATAL and the connection ends, without hanging.
func TestUpstreamKilledMidQuery(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		conn := p.pgconnect(t, tenantA)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(context.Background(), "SELECT pg_sleep(60) /* e2e-killed */").ReadAll()
			done <- err
		}()
		eventually(t, 5*time.Second, "the query to start", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%e2e-killed%' AND state = 'active' AND pid <> pg_backend_pid()")[0][0] == "1"
		})
		superQuery(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%e2e-killed%' AND pid <> pg_backend_pid()")
		select {
		case err := <-done:
			if pgCode(err) != "57P01" {
				t.Fatalf("got %v, want the upstream's FATAL 57P01", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("client hangs after its upstream backend died")
		}
		if !conn.IsClosed() {
			// pgconn closes on FATAL; a further query must fail, not hang.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
				t.Fatal("query on a dead session succeeded")
			}
		}
	})
}

// A client that vanishes mid-transaction: the upstream connection is closed,
// so the transaction rolls back and its locks are released.
func TestClientKilledMidTransaction(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		conn := p.pgconnect(t, tenantA, "application_name=e2e_vanish")
		queryRows(t, conn, "BEGIN")
		queryRows(t, conn, "UPDATE projects SET name = 'vanished' WHERE name = 'anvil'")
		hc, err := conn.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		// An abrupt close, as when the client process is killed.
		if tcp, ok := hc.Conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		hc.Conn.Close()
		eventually(t, 5*time.Second, "the upstream session to end", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'e2e_vanish'")[0][0] == "0"
		})
		if n := superQuery(t, "SELECT count(*) FROM projects WHERE name = 'vanished'")[0][0]; n != "0" {
			t.Fatal("the vanished client's update was committed")
		}
	})
}

// If the tenant context cannot be asserted, the client's statement does not
// run: a simple Query ends the session with a FATAL; an extended group gets an
// error in place of its results. Session mode only: it breaks the assertion
// with SQL PREPARE, which transaction mode refuses
// (TestPoolAssertionFailureDiscardsConnection is its counterpart there).
func TestAssertionFailureRunsNothing(t *testing.T) {
	p := startProxy(t, nil)

	// A statement under the proxy's own name makes every later assertion fail.
	simple := p.pgconnect(t, tenantA)
	queryRows(t, simple, "PREPARE pgtenant_assert AS SELECT 1")
	_, err := simple.Exec(context.Background(), "INSERT INTO copy_sink (line) VALUES ('must-not-run-simple')").ReadAll()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "could not assert the tenant context") {
		t.Fatalf("simple query after a failed assertion: %v, want FATAL naming the assertion", err)
	}

	extended := p.pgconnect(t, tenantA)
	queryRows(t, extended, "PREPARE pgtenant_assert AS SELECT 1")
	_, err = extended.ExecParams(context.Background(), "INSERT INTO copy_sink (line) VALUES ($1)", [][]byte{[]byte("must-not-run-extended")}, nil, nil, nil).Close()
	if !errors.As(err, &pgErr) || pgErr.Severity != "ERROR" || pgErr.Code != "42P05" || !strings.Contains(pgErr.Message, "could not assert the tenant context") {
		t.Fatalf("extended query after a failed assertion: %v, want ERROR 42P05 naming the assertion", err)
	}
	if n := superQuery(t, "SELECT count(*) FROM copy_sink WHERE line LIKE 'must-not-run-%'")[0][0]; n != "0" {
		t.Fatalf("%s statements ran without a tenant context", n)
	}
	// The extended-protocol session stays usable for transaction control.
	if extended.TxStatus() != 'I' {
		t.Fatalf("status %c after the refused group", extended.TxStatus())
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and returns the paths.
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := testcert.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTLS(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		certFile, keyFile := writeCert(t)
		p := m.start(t, func(c *config.Config) {
			c.TLS = &config.TLS{CertFile: certFile, KeyFile: keyFile, Mode: "require"}
		})
		// verify-full checks the certificate and the host name; channel binding
		// (SCRAM-SHA-256-PLUS) ties the password exchange to this TLS session.
		for _, extra := range []string{"sslmode=verify-full sslrootcert=" + certFile, "sslmode=verify-full channel_binding=require sslrootcert=" + certFile} {
			conn := p.pgconnect(t, tenantA, extra)
			if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
				t.Fatalf("over TLS (%s): %q", extra, got)
			}
		}
		// require mode refuses plaintext before authentication.
		e := connectErr(t, p.connString(tenantA))
		if e.Code != "28000" || !strings.Contains(e.Message, "TLS") {
			t.Fatalf("plaintext in require mode: %s %q", e.Code, e.Message)
		}
		// psql over TLS.
		out, err := psql(t, p, tenantA, "-c", "SELECT current_setting('app.tenant_id')")
		if err == nil {
			t.Fatalf("psql with sslmode=disable must be refused, got %q", out)
		}
	})
}

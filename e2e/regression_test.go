package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

// countedStep is a batch of messages and the number of ReadyForQuery to read
// (given explicitly where the server ignores a Sync).
type countedStep struct {
	msgs []pgproto3.FrontendMessage
	rfq  int
}

func traceCounted(t *testing.T, conn *pgconn.PgConn, steps []countedStep) []string {
	t.Helper()
	hc, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	fe := hc.Frontend
	var out []string
	for i, step := range steps {
		for _, m := range step.msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			return append(out, fmt.Sprintf("%d: send: %v", i, err))
		}
		_ = hc.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for want := step.rfq; want > 0; {
			msg, err := fe.Receive()
			if err != nil {
				return append(out, fmt.Sprintf("%d: receive: %v", i, err))
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				want--
			}
			out = append(out, fmt.Sprintf("%d: %s", i, describe(msg)))
		}
	}
	return out
}

func sameAsDirect(t *testing.T, p *testProxy, steps []countedStep) {
	t.Helper()
	direct := traceCounted(t, directConnect(t, tenantA.ID), steps)
	proxied := traceCounted(t, p.pgconnect(t, tenantA), steps)
	if strings.Join(direct, "\n") != strings.Join(proxied, "\n") {
		t.Fatalf("message sequences differ\n--- direct\n%s\n--- through pgtenant\n%s", strings.Join(direct, "\n"), strings.Join(proxied, "\n"))
	}
}

func parseBindExecute(sql string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{}}
}

func msgs(groups ...[]pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
	var out []pgproto3.FrontendMessage
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

func list(m ...pgproto3.FrontendMessage) []pgproto3.FrontendMessage { return m }

const currentTenant = "SELECT current_setting('app.tenant_id')"

// Regression tests for protocol corners found in review; each compares the
// messages a client gets with what PostgreSQL sends directly.
func TestProtocolCorners(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		copyLibpqStyle := msgs(parseBindExecute("COPY copy_sink (line) FROM STDIN"),
			list(&pgproto3.Sync{}, &pgproto3.CopyData{Data: []byte("corner-1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}))
		cleanup := countedStep{list(q("DELETE FROM copy_sink WHERE line LIKE 'corner-%'")), 1}

		tests := []struct {
			desc  string
			steps []countedStep
		}{
			{"extended COPY FROM STDIN with a Sync before the data (libpq)", []countedStep{
				{copyLibpqStyle, 1},
				{list(q(currentTenant)), 1},
				{list(q("BEGIN"), q("SELECT 1"), q("COMMIT")), 3},
				cleanup,
			}},
			{"VACUUM after an extended COPY", []countedStep{
				{copyLibpqStyle, 1},
				{list(q("VACUUM copy_sink")), 1},
				cleanup,
			}},
			{"two Syncs before the copy data", []countedStep{
				{msgs(parseBindExecute("COPY copy_sink (line) FROM STDIN"),
					list(&pgproto3.Sync{}, &pgproto3.Sync{}, &pgproto3.CopyData{Data: []byte("corner-2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})), 1},
				{list(q(currentTenant)), 1},
				cleanup,
			}},
			{"Sync during a simple COPY FROM STDIN", []countedStep{
				{list(q("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte("corner-3\n")}, &pgproto3.Sync{}, &pgproto3.CopyDone{}), 1},
				{list(q(currentTenant)), 1},
				cleanup,
			}},
			{"CopyFail in an extended COPY", []countedStep{
				{msgs(parseBindExecute("COPY copy_sink (line) FROM STDIN"),
					list(&pgproto3.Sync{}, &pgproto3.CopyData{Data: []byte("corner-4\n")}, &pgproto3.CopyFail{Message: "changed my mind"}, &pgproto3.Sync{})), 1},
				{list(q(currentTenant)), 1},
			}},
			{"pipelined simple queries after a failed block", []countedStep{
				{list(q("BEGIN; SELECT 1/0"), q("SELECT 1"), q("ROLLBACK")), 3},
				{list(q(currentTenant)), 1},
			}},
			{"pipelined VACUUM after a failed block", []countedStep{
				{list(q("BEGIN; SELECT 1/0"), q("VACUUM projects"), q("ROLLBACK")), 3},
				{list(q(currentTenant)), 1},
			}},
			{"pipelined extended ROLLBACK after a failed block", []countedStep{
				{msgs(parseBindExecute("BEGIN"), list(&pgproto3.Sync{}), parseBindExecute("SELECT 1/0"), list(&pgproto3.Sync{}),
					parseBindExecute("ROLLBACK"), list(&pgproto3.Sync{}), parseBindExecute(currentTenant), list(&pgproto3.Sync{})), 4},
			}},
			{"empty and comment-only queries", []countedStep{
				{list(q("")), 1},
				{list(q("-- nothing")), 1},
				{list(q(";")), 1},
			}},
		}
		if !m.tx { // transaction mode refuses SET idle_session_timeout: it would act on the idle pooled connection
			tests = append(tests, struct {
				desc  string
				steps []countedStep
			}{"idle_session_timeout ends the session with one FATAL", []countedStep{
				{list(q("SET idle_session_timeout = '300ms'")), 1},
				{nil, 1},
			}})
		}
		for _, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) { sameAsDirect(t, p, tt.steps) })
		}
	})
}

// A FATAL decided on the request side reaches the client. Session mode
// only: it breaks the assertion with SQL PREPARE, which transaction mode
// refuses.
func TestStandaloneAssertionFailureReported(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.pgconnect(t, tenantA)
	queryRows(t, conn, "PREPARE pgtenant_assert AS SELECT 1")
	_, err := conn.Exec(context.Background(), "VACUUM projects").ReadAll()
	if pgCode(err) != "42P05" || !strings.Contains(err.Error(), "could not assert the tenant context") {
		t.Fatalf("VACUUM after a failed standalone assertion: %v", err)
	}
}

// An error during startup on a TLS connection is sent inside TLS.
func TestTLSStartupError(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		certFile, keyFile := writeCert(t)
		p := m.start(t, func(c *config.Config) { c.TLS = &config.TLS{CertFile: certFile, KeyFile: keyFile, Mode: "require"} })
		conn := rawDial(t, p)
		send(t, conn, &pgproto3.SSLRequest{})
		if b := readByte(t, conn); b != 'S' {
			t.Fatalf("SSLRequest answer %q, want S", b)
		}
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) // the certificate is not the point here
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		// Protocol 4.0, which nobody speaks.
		if _, err := tc.Write([]byte{0, 0, 0, 8, 0, 4, 0, 0}); err != nil {
			t.Fatal(err)
		}
		msg, err := pgproto3.NewFrontend(tc, tc).Receive()
		if err != nil {
			t.Fatalf("reading the refusal over TLS: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "0A000" {
			t.Fatalf("got %#v, want FATAL 0A000", msg)
		}
	})
}

package e2e

// Helpers of relay_findings_test.go: raw sessions through pgtenant and
// straight to PostgreSQL, a step runner that records
// what PostgreSQL answers and requires the same through pgtenant within a
// deadline, and checks that a client that hung up left no upstream behind.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// relayReplyWithin bounds the wait for a reply PostgreSQL gives at once:
// longer means pgtenant is wedged.
const relayReplyWithin = 5 * time.Second

// relayReleaseWithin bounds the time a hung-up client's upstream may stay.
const relayReleaseWithin = 2 * time.Second

// relayLine marks the rows the tests copy into copy_sink.
const relayLine = "relay-findings"

// relayCleanCopySink removes the test's copied rows when it ends.
func relayCleanCopySink(t *testing.T) {
	t.Cleanup(func() { superQuery(t, "DELETE FROM copy_sink WHERE line LIKE '"+relayLine+"%'") })
}

// relayDirect is a raw session straight to PostgreSQL as the tenant role
// with tn's context set.
func relayDirect(t *testing.T, tn demo.Tenant) *ppConn {
	t.Helper()
	return ppHijack(t, directConnect(t, tn.ID))
}

// relayProxied is a raw session through pgtenant as tn, with application
// name app (so that its upstream backend can be found in session mode); no
// statement has been sent on it yet.
func relayProxied(t *testing.T, p *testProxy, tn demo.Tenant, app string) *ppConn {
	t.Helper()
	return ppHijack(t, p.pgconnect(t, tn, "application_name="+app))
}

// relayDescribe describes a reply for comparison: its type and, for errors,
// severity and SQLSTATE (texts name statements, which pgtenant renames).
func relayDescribe(msg pgproto3.BackendMessage) string {
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return "ErrorResponse " + e.Severity + " " + e.Code
	}
	return strings.TrimPrefix(describe(msg), "*pgproto3.")
}

// relayStep is what a client sends at once: msgs, written in pieces of
// chunk bytes with a short pause between them when chunk > 0.
type relayStep struct {
	msgs  []pgproto3.FrontendMessage
	chunk int
	pause time.Duration // before the step is sent
}

func relayAt(msgs ...pgproto3.FrontendMessage) relayStep { return relayStep{msgs: msgs} }

// relayEncode encodes msgs into one buffer.
func relayEncode(t *testing.T, msgs []pgproto3.FrontendMessage) []byte {
	t.Helper()
	return badEncode(t, msgs...)
}

// relayWrite writes b to c, in pieces of chunk bytes 3 ms apart when chunk > 0.
func relayWrite(c *ppConn, b []byte, chunk int) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(relayReplyWithin))
	defer func() { _ = c.conn.SetWriteDeadline(time.Time{}) }()
	if chunk <= 0 {
		_, err := c.conn.Write(b)
		return err
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := c.conn.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		time.Sleep(3 * time.Millisecond)
	}
	return nil
}

// relayReceive reads one reply before deadline, skipping ParameterStatus and
// NoticeResponse (not what these tests are about).
func relayReceive(c *ppConn, deadline time.Time) (pgproto3.BackendMessage, error) {
	_ = c.conn.SetReadDeadline(deadline)
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			return nil, err
		}
		switch msg.(type) {
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		}
		return msg, nil
	}
}

func relayIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// relayRecord runs the steps on PostgreSQL directly and returns each step's
// replies: everything that arrives until the server has been quiet for a
// while after the step. When the server closes the connection, the step's
// replies end with relayClosed and the steps after it are not run.
func relayRecord(t *testing.T, c *ppConn, steps []relayStep) [][]string {
	t.Helper()
	const quiet = 400 * time.Millisecond
	var out [][]string
	for i, s := range steps {
		time.Sleep(s.pause)
		if err := relayWrite(c, relayEncode(t, s.msgs), s.chunk); err != nil {
			t.Fatalf("PostgreSQL, step %d: send: %v", i, err)
		}
		var got []string
		for {
			msg, err := relayReceive(c, time.Now().Add(quiet))
			if relayIsTimeout(err) {
				break
			}
			if err != nil {
				// PostgreSQL ended the session (after a FATAL): so must pgtenant.
				out = append(out, append(got, relayClosed))
				return out
			}
			got = append(got, relayDescribe(msg))
		}
		out = append(out, got)
	}
	return out
}

// relayClosed stands for the server closing the connection.
const relayClosed = "connection closed"

// relayReplay runs the steps through pgtenant and reads for each as many
// replies as PostgreSQL gave, within relayReplyWithin. It returns the
// replies and, when they fall short, why.
func relayReplay(t *testing.T, c *ppConn, steps []relayStep, want [][]string) ([][]string, string) {
	t.Helper()
	var out [][]string
	for i, s := range steps[:len(want)] {
		time.Sleep(s.pause)
		if err := relayWrite(c, relayEncode(t, s.msgs), s.chunk); err != nil {
			out = append(out, nil)
			return out, fmt.Sprintf("step %d: send: %v", i, err)
		}
		var got []string
		deadline := time.Now().Add(relayReplyWithin)
		for len(got) < len(want[i]) {
			msg, err := relayReceive(c, deadline)
			if err != nil {
				if relayIsTimeout(err) {
					out = append(out, got)
					return out, fmt.Sprintf("WEDGE: step %d: no further reply within %s", i, relayReplyWithin)
				}
				out = append(out, append(got, relayClosed))
				if want[i][len(want[i])-1] == relayClosed {
					return out, "" // closed, as PostgreSQL closes it
				}
				return out, fmt.Sprintf("step %d: receive: %v", i, err)
			}
			got = append(got, relayDescribe(msg))
		}
		out = append(out, got)
	}
	return out, ""
}

// relaySameAsPostgres runs steps as tn straight to PostgreSQL and then
// through p, and fails unless pgtenant answers every step with the same
// messages (types, row values, tags, error severities and SQLSTATEs), in
// time. A final query checks that the session is still in step.
func relaySameAsPostgres(t *testing.T, p *testProxy, tn demo.Tenant, app string, steps []relayStep) {
	t.Helper()
	steps = append(steps[:len(steps):len(steps)], relayAt(ppQuery("SELECT current_setting('app.tenant_id') AS tenant, 'still in step' AS check")))
	want := relayRecord(t, relayDirect(t, tn), steps)
	got, failure := relayReplay(t, relayProxied(t, p, tn, app), steps, want)
	same := failure == "" && len(got) == len(want)
	for i := 0; same && i < len(want); i++ {
		same = strings.Join(got[i], "\n") == strings.Join(want[i], "\n")
	}
	if same {
		return
	}
	var b strings.Builder
	for i, s := range steps[:len(want)] {
		var g []string
		if i < len(got) {
			g = got[i]
		}
		mark := "  "
		if strings.Join(g, "\n") != strings.Join(want[i], "\n") {
			mark = "!!"
		}
		fmt.Fprintf(&b, "%s step %d sends: %s\n", mark, i, ppSummary(s.msgs))
		fmt.Fprintf(&b, "     PostgreSQL: %s\n", strings.Join(want[i], "; "))
		fmt.Fprintf(&b, "     pgtenant:   %s\n", strings.Join(g, "; "))
		if i >= len(got) {
			break
		}
	}
	if failure == "" {
		failure = "replies differ"
	}
	t.Errorf("%s: pgtenant does not answer as PostgreSQL does (steps marked !!)\n%s", failure, b.String())
}

// relayNow is the upstream's clock, to tell the backends opened from then on.
func relayNow(t *testing.T) string {
	t.Helper()
	return superQuery(t, "SELECT now()::text")[0][0]
}

// relayBackendsSince counts the tenant role's backends opened since.
func relayBackendsSince(t *testing.T, since string) int {
	t.Helper()
	rows := superQuery(t, "SELECT count(*)::text FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend' AND backend_start >= '"+since+"'::timestamptz")
	var n int
	fmt.Sscan(rows[0][0], &n)
	return n
}

// relayHangUpReleases starts a proxy in mode m, logs tenant A in as app,
// runs a transaction, sends b, hangs up half a second later, and fails
// unless the upstream is released (relayWantReleased; what names the case).
func relayHangUpReleases(t *testing.T, m poolMode, app string, b []byte, what string) {
	t.Helper()
	since := relayNow(t)
	p := m.start(t)
	c := relayProxied(t, p, tenantA, app)
	// A transaction first: the state that matters is the one b leaves, not
	// the session's first message.
	if got, err := c.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT 1")}, 0); err != nil {
		t.Fatalf("warm-up: %q %v", got, err)
	}
	if err := relayWrite(c, b, 0); err != nil {
		t.Fatalf("send: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	c.conn.Close()
	relayWantReleased(t, p, m, app, since, modePoolSize, what)
}

// relayWantReleased fails unless the upstream of a client that has just hung
// up is released within relayReleaseWithin: in session mode its backend
// (found by application name) is gone; in transaction mode the pool of
// poolSize serves poolSize concurrent transactions of tenant B, and no more
// than poolSize backends opened since (the proxy's start) remain: a
// connection taken out of the pool must not stay open upstream.
func relayWantReleased(t *testing.T, p *testProxy, m poolMode, app, since string, poolSize int, what string) {
	t.Helper()
	start := time.Now()
	if !m.tx {
		for badUpstreamBackends(t, app) != 0 {
			if time.Since(start) > relayReleaseWithin {
				t.Errorf("%s: the upstream backend of the client that hung up is still open after %s: %v",
					what, relayReleaseWithin, superQuery(t, "SELECT state, coalesce(query, '') FROM pg_stat_activity WHERE application_name = '"+app+"'"))
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		return
	}
	// Log the others in first: logging in is not what is measured.
	conns := make([]*pgconn.PgConn, poolSize)
	for i := range conns {
		conns[i] = p.pgconnect(t, tenantB)
	}
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, poolSize)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), relayReleaseWithin)
			defer cancel()
			// Each holds a pooled connection until all have one.
			_, errs[i] = c.Exec(ctx, "BEGIN; SELECT current_setting('app.tenant_id')").ReadAll()
		}()
	}
	wg.Wait()
	held := 0
	for _, err := range errs {
		if err == nil {
			held++
		}
	}
	if held < poolSize {
		t.Errorf("%s: after the client hung up, only %d of %d concurrent transactions of another tenant got a pooled connection within %s (%v): the pool lost a connection",
			what, held, poolSize, relayReleaseWithin, errs)
	} else {
		for n := relayBackendsSince(t, since); n > poolSize; n = relayBackendsSince(t, since) {
			if time.Since(start) > 2*relayReleaseWithin {
				t.Errorf("%s: %d upstream backends of this proxy still open %s after the client hung up, for a pool of %d: %v", what, n, time.Since(start).Round(time.Millisecond), poolSize,
					superQuery(t, "SELECT state, coalesce(query, '') FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend' AND backend_start >= '"+since+"'::timestamptz"))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, c := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = c.Exec(ctx, "ROLLBACK").ReadAll()
		cancel()
		c.Close(context.Background())
	}
	t.Logf("%s: released check took %s", what, time.Since(start).Round(time.Millisecond))
}

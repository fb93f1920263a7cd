package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A session's end is logged with what ended it: a client that sends
// Terminate or hangs up is a normal disconnect, not an upstream failure; the
// upstream is reported only when it actually failed.
func TestSessionEndLogged(t *testing.T) {
	tests := []struct {
		name string
		// end ends the session, which is inside a transaction block.
		end      func(t *testing.T, conn *pgconn.PgConn, app string)
		client   []string // any of these
		upstream string
	}{{
		name:     "terminate",
		end:      func(t *testing.T, conn *pgconn.PgConn, _ string) { conn.Close(context.Background()) },
		client:   []string{"client=terminated"},
		upstream: "upstream=ok",
	}, {
		name: "hang-up",
		end: func(t *testing.T, conn *pgconn.PgConn, _ string) {
			hj, err := conn.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			hj.Conn.Close()
		},
		client:   []string{"client=disconnected"},
		upstream: "upstream=ok",
	}, {
		name: "upstream killed",
		end: func(t *testing.T, conn *pgconn.PgConn, app string) {
			superQuery(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '"+app+"'")
			if _, err := conn.Exec(context.Background(), "SELECT 1").ReadAll(); pgCode(err) != "57P01" {
				t.Fatalf("after pg_terminate_backend: %v", err)
			}
		},
		// The client, told by the FATAL, may hang up before pgtenant
		// reads the upstream's close.
		client:   []string{"client=ok", "client=disconnected"},
		upstream: `upstream="upstream connection lost"`,
	}}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := m.start(t)
				app := "e2e_end_" + strings.ReplaceAll(tt.name, " ", "_") + "_" + m.name
				conn := p.pgconnect(t, tenantA, "application_name="+app)
				// A transaction block holds the pooled connection, so that
				// the upstream can be killed under the session.
				queryRows(t, conn, "BEGIN")
				queryRows(t, conn, "SELECT 1")
				tt.end(t, conn, app)
				var line string
				eventually(t, 10*time.Second, "the session's end in the log", func() bool {
					line = sessionEndLine(p.logs.String())
					return line != ""
				})
				if !slices.ContainsFunc(tt.client, func(c string) bool { return strings.Contains(line, " "+c+" ") }) ||
					!strings.Contains(line, " "+tt.upstream+" ") {
					t.Fatalf("want %s and %s in\n%s", strings.Join(tt.client, " or "), tt.upstream, line)
				}
			})
		}
	})
}

// sessionEndLine is the last "session ended" line of the log, or "".
func sessionEndLine(logs string) string {
	lines := strings.Split(logs, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], `msg="session ended"`) {
			return lines[i]
		}
	}
	return ""
}

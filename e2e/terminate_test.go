package e2e

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// A Terminate in an extended-protocol group with no Sync yet: the client
// gets what PostgreSQL flushed before it read the Terminate, an error at
// once with everything before it, other replies only after a Flush, and
// nothing of the rest. In transaction mode too, where the pooled
// connection is not the client's to terminate (differential fuzzer seed
// 5070552822950131863: the error was lost).
func TestTerminateInGroup(t *testing.T) {
	const closed = "receive error: unexpected EOF"
	terminate := &pgproto3.Terminate{}
	tests := []struct {
		name string
		msgs []pgproto3.FrontendMessage
		want []string
	}{{
		name: "error of an Execute",
		msgs: []pgproto3.FrontendMessage{ppQuery("END"), ppExecPortal(""), terminate},
		want: []string{"CommandComplete COMMIT", ppRFQ, "ErrorResponse 34000", closed},
	}, {
		name: "error flushes the replies before it",
		msgs: []pgproto3.FrontendMessage{ppParse("", ppWho), ppBind(""), ppExec(), ppParse("s2", ppMissing), terminate},
		want: []string{"ParseComplete", "BindComplete", ppWhoRow(tenantA), "CommandComplete SELECT 1", "ErrorResponse 42P01", closed},
	}, {
		name: "no error, no Flush",
		msgs: []pgproto3.FrontendMessage{ppParse("", ppWho), ppBind(""), ppExec(), terminate},
		want: []string{closed},
	}, {
		name: "replies up to a Flush",
		msgs: []pgproto3.FrontendMessage{ppParse("", ppWho), ppBind(""), ppFlush(), ppExec(), terminate},
		want: []string{"ParseComplete", "BindComplete", closed},
	}, {
		name: "error after a Sync group",
		msgs: []pgproto3.FrontendMessage{ppParse("", ppWho), ppBind(""), ppExec(), ppSync(), ppBind("s3"), terminate},
		want: []string{"ParseComplete", "BindComplete", ppWhoRow(tenantA), "CommandComplete SELECT 1", ppRFQ, "ErrorResponse 26000", closed},
	}}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				// Read until the connection closes.
				ppScenario(t, p, []demo.Tenant{tenantA}, []ppStep{{msgs: tt.msgs, read: 100, want: tt.want}})
				// The connection held mid-group was closed, not given to
				// the next client.
				if got := queryOne(t, p.pgconnect(t, tenantA), "SELECT txid_current_if_assigned() IS NULL"); got != "t" {
					t.Errorf("the next client found a transaction in progress")
				}
			})
		}
	})
}

package e2e

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestZZScratchSetLocal(t *testing.T) {
	c := ppHijack(t, directConnect(t, ""))
	for _, m := range []pgproto3.FrontendMessage{ppParse("x", "SET LOCAL app.tenant_id TO 'abc'"), ppBind("x"), ppExec(), ppQuery("SELECT 1")} {
		c.fe.Send(m)
	}
	c.fe.Flush()
	_ = c.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", describe(msg))
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
}

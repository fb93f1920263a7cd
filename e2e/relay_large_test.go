package e2e

// Messages larger than pgtenant's 8 KiB read buffers, in both directions,
// since the relay's request and reply sides became a core that takes one
// message as bytes and a driver that reads the sockets: the driver hands
// the core a message whole, or only the head of one it streams.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestRelayHugeDescribeHeaderOnly: a client that announces a Describe (or
// Close) larger than the guard's 64 MiB and sends only its header does not
// crash its session in pgtenant (the request side indexed the byte after the
// header, which had not come). When it hangs up, its upstream goes.
func TestRelayHugeDescribeHeaderOnly(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, typ := range []byte{'D', 'C'} {
			t.Run(string(typ), func(t *testing.T) {
				since := relayNow(t)
				p := m.start(t)
				app := fmt.Sprintf("relay_huge_header_%d", i)
				c := relayProxied(t, p, tenantA, app)
				if got, err := c.exchange([]pgproto3.FrontendMessage{ppQuery("SELECT 1")}, 0); err != nil {
					t.Fatalf("warm-up: %q %v", got, err)
				}
				if err := relayWrite(c, badHeader(typ, 70<<20), 0); err != nil {
					t.Fatalf("send: %v", err)
				}
				time.Sleep(500 * time.Millisecond)
				if strings.Contains(p.logs.String(), "pgtenant bug") {
					t.Errorf("a %q of 70 MiB announced, its header sent: pgtenant panicked:\n%s", typ, p.logs.String())
				}
				c.conn.Close()
				relayWantReleased(t, p, m, app, since, modePoolSize, fmt.Sprintf("hung up after the header of a 70 MiB %q", typ))
			})
		}
	})
}

package e2e

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// Red team, session 7.

// A peers entry whose address reaches a replica's listen address (here
// "localhost:<listen port>", which the config cannot tell from the listen
// address "127.0.0.1:<port>") instead of that replica's peer address: a
// cancel for that peer id is forwarded to the listen address, taken there
// as a client's cancel, and forwarded again. Each hop used to forward it
// anew, for ever (one unauthenticated CancelRequest, an endless chain of
// connections); a replica that gets back a key it is still forwarding now
// drops it: at most one forward per replica.
func TestRedTeamS7CancelForwardLoop(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		noLeaks(t)
		shared := reusePortListen(t, "127.0.0.1:0")
		own := reusePortListen(t, "127.0.0.1:0")
		_, port, _ := net.SplitHostPort(shared.Addr().String())
		cfg := proxyConfig(t, m.config(modePoolSize, func(c *config.Config) {
			c.Listen, c.ReusePort, c.PeerID = shared.Addr().String(), true, 1
			c.ConnectTimeout = config.Duration{Duration: time.Second}
			c.Peers = []config.Peer{{ID: 1, Address: own.Addr().String()}, {ID: 2, Address: "localhost:" + port}}
		}))
		logs := &testutil.SyncBuffer{}
		tw := &testWriter{t: t}
		srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(io.MultiWriter(tw, logs), &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := srv.Listen()
		if err != nil {
			t.Fatal(err)
		}
		pln, err := srv.ListenPeers()
		if err != nil {
			t.Fatal(err)
		}
		shared.Close()
		own.Close()
		done := make(chan struct{}, 2)
		go func() { _ = srv.Serve(ln); done <- struct{}{} }()
		go func() { _ = srv.ServePeers(pln); done <- struct{}{} }()
		t.Cleanup(func() {
			srv.Close()
			<-done
			<-done
			tw.done.Store(true)
		})

		sendCancel(t, ln.Addr().String(), 2<<22|12345, []byte{1, 2, 3, 4})
		time.Sleep(time.Second)
		forwards := strings.Count(logs.String(), "cancel request forwarded to its replica") +
			strings.Count(logs.String(), "forwarding cancel request to its replica failed")
		if forwards > 1 {
			t.Fatalf("one cancel request was forwarded %d times (a loop through the listen address)", forwards)
		}
		if !strings.Contains(logs.String(), "came back") {
			t.Errorf("the loop was not reported")
		}
	})
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/testutil"
	"github.com/pgtenant/pgtenant/proxy"
)

// replica is one of a set of pgtenant servers sharing one address.
type replica struct {
	id     int
	srv    *proxy.Server
	shared string // the address every replica serves (SO_REUSEPORT)
	own    string // an address only this replica serves: the test's way to reach it
	peer   string // its peer address, for cancels forwarded by the others
	logs   *testutil.SyncBuffer
}

// reusePortListen binds address with SO_REUSEPORT, as pgtenant's reuse_port
// does: a placeholder that fixes a port the replicas then bind too.
func reusePortListen(t *testing.T, address string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var sockErr error
		if err := c.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return sockErr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", address)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// startReplicas starts n pgtenant servers in the mode with the same config
// but their peer_id: one listen address with reuse_port, and a peers list
// with a peer address each. Each also serves an address of its own, so that
// a test can pick the replica a connection reaches.
func startReplicas(t *testing.T, m poolMode, n int) []*replica {
	t.Helper()
	noLeaks(t)
	// Placeholders with SO_REUSEPORT fix the ports; the replicas bind them
	// too (Listen, ListenPeers), then the placeholders close.
	placeholders := []net.Listener{reusePortListen(t, "127.0.0.1:0")}
	shared := placeholders[0].Addr().String()
	var peers []config.Peer
	for i := 1; i <= n; i++ {
		ln := reusePortListen(t, "127.0.0.1:0")
		placeholders = append(placeholders, ln)
		peers = append(peers, config.Peer{ID: i, Address: ln.Addr().String()})
	}
	var reps []*replica
	for i := 1; i <= n; i++ {
		cfg := proxyConfig(t, m.config(modePoolSize, func(c *config.Config) {
			c.Listen, c.ReusePort, c.PeerID, c.Peers = shared, true, i, peers
		}))
		rep := &replica{id: i, shared: shared, peer: peers[i-1].Address, logs: &testutil.SyncBuffer{}}
		tw := &testWriter{t: t}
		log := slog.New(slog.NewTextHandler(io.MultiWriter(tw, rep.logs), &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", i)
		srv, err := cli.NewServer(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		rep.srv = srv
		ln, err := srv.Listen()
		if err != nil {
			t.Fatal(err)
		}
		pln, err := srv.ListenPeers()
		if err != nil || pln == nil {
			t.Fatalf("ListenPeers: %v, %v", pln, err)
		}
		own, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rep.own = own.Addr().String()
		done := make(chan struct{}, 3)
		go func() { _ = srv.Serve(ln); done <- struct{}{} }()
		go func() { _ = srv.Serve(own); done <- struct{}{} }()
		go func() { _ = srv.ServePeers(pln); done <- struct{}{} }()
		t.Cleanup(func() {
			closed := make(chan struct{})
			go func() {
				srv.Close()
				for range 3 {
					<-done
				}
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Errorf("HANG: replica %d did not close within 10s", i)
			}
			tw.done.Store(true)
		})
		reps = append(reps, rep)
	}
	for _, ln := range placeholders {
		ln.Close()
	}
	return reps
}

// connect opens a session as tenantA at address.
func (r *replica) connect(t *testing.T, address string) *pgconn.PgConn {
	t.Helper()
	host, port, _ := net.SplitHostPort(address)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable", host, port, tenantA.User, tenantA.Password))
	if err != nil {
		t.Fatalf("connect to %s: %v", address, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// sendCancel sends a CancelRequest to address on a connection of its own
// and waits for the close: by then the receiver has acted on it, forwarded
// it included. Like PostgreSQL, pgtenant answers nothing.
func sendCancel(t *testing.T, address string, pid uint32, secret []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", address, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(conn); err != nil || len(got) != 0 {
		t.Fatalf("answer to a cancel request: %q, %v; want none and a close", got, err)
	}
}

// longQuery starts SELECT pg_sleep(30) on conn, tagged with tag, and waits
// until it runs upstream; its result comes on the channel.
func longQuery(t *testing.T, conn *pgconn.PgConn, tag string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(30) /* "+tag+" */").ReadAll()
		done <- err
	}()
	eventually(t, 5*time.Second, "the query to start", func() bool {
		return running(t, tag)
	})
	return done
}

func running(t *testing.T, tag string) bool {
	return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%"+tag+" */%' AND pid <> pg_backend_pid()")[0][0] == "1"
}

// wantCancelled waits for the query's 57014.
func wantCancelled(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if pgCode(err) != "57014" {
			t.Fatalf("cancelled query: %v, want 57014", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancel did not stop the query")
	}
}

// wantRunning checks that a cancel just sent stopped nothing.
func wantRunning(t *testing.T, done <-chan error, tag string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("the query ended: %v; the cancel should have been dropped", err)
	case <-time.After(300 * time.Millisecond):
	}
	if !running(t, tag) {
		t.Fatal("the query no longer runs upstream")
	}
}

// Three replicas on one port (reuse_port): a CancelRequest that reaches
// another replica than the session's is forwarded to the session's replica
// and cancels the query; keys that are not real are dropped, and a cancel
// forwarded to the wrong replica is not forwarded again.
func TestReplicasCancel(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		reps := startReplicas(t, m, 3)

		t.Run("a cancel on each other replica", func(t *testing.T) {
			for _, on := range reps {
				conn := on.connect(t, on.own)
				if got := conn.PID() >> 22; got != uint32(on.id) {
					t.Fatalf("replica %d's key carries peer id %d", on.id, got)
				}
				if !m.tx {
					// The low bits are still the backend's pid.
					if got := queryOne(t, conn, "SELECT pg_backend_pid()"); got != fmt.Sprint(conn.PID()&(1<<22-1)) {
						t.Fatalf("pg_backend_pid() = %s, key pid %#x", got, conn.PID())
					}
				}
				for _, to := range reps {
					if to == on {
						continue
					}
					tag := fmt.Sprintf("e2e-replica-%d-to-%d", on.id, to.id)
					done := longQuery(t, conn, tag)
					before := strings.Count(to.logs.String(), "cancel request forwarded to its replica")
					sendCancel(t, to.own, conn.PID(), conn.SecretKey())
					wantCancelled(t, done)
					if after := strings.Count(to.logs.String(), "cancel request forwarded to its replica"); after != before+1 {
						t.Fatalf("replica %d forwarded %d cancels, want 1", to.id, after-before)
					}
				}
				if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
					t.Fatalf("after the cancels: %q", got)
				}
			}
		})

		t.Run("through the shared address, wherever it lands", func(t *testing.T) {
			for i := range 6 {
				conn := reps[0].connect(t, reps[0].shared)
				tag := fmt.Sprintf("e2e-replica-shared-%d", i)
				done := longQuery(t, conn, tag)
				// pgconn dials the address the session is on: the shared one.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := conn.CancelRequest(ctx)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				wantCancelled(t, done)
				conn.Close(context.Background())
			}
		})

		t.Run("keys that are not real are dropped", func(t *testing.T) {
			on, other := reps[0], reps[1]
			conn := on.connect(t, on.own)
			tag := "e2e-replica-bogus"
			done := longQuery(t, conn, tag)
			wrong := append([]byte(nil), conn.SecretKey()...)
			wrong[0] ^= 0xff
			// The right replica, a wrong secret: forwarded, then not found.
			sendCancel(t, other.own, conn.PID(), wrong)
			sendCancel(t, on.own, conn.PID(), wrong)
			wantRunning(t, done, tag)
			// The right secret under a peer id no replica has: dropped
			// where it lands, and never reaches the upstream.
			unknown := uint32(77)<<22 | conn.PID()&(1<<22-1)
			before := strings.Count(other.logs.String(), "cancel request for an unknown peer id ignored")
			sendCancel(t, other.own, unknown, conn.SecretKey())
			sendCancel(t, on.own, unknown, conn.SecretKey())
			wantRunning(t, done, tag)
			if after := strings.Count(other.logs.String(), "cancel request for an unknown peer id ignored"); after != before+1 {
				t.Fatalf("replica %d logged %d cancels for an unknown peer id, want 1", other.id, after-before)
			}
			// The real key, sent to another replica's peer address (as a
			// replica with a wrong peers list would): not forwarded again.
			sendCancel(t, other.peer, conn.PID(), conn.SecretKey())
			wantRunning(t, done, tag)
			if !strings.Contains(other.logs.String(), "cancel request forwarded for another replica's key dropped") {
				t.Fatalf("replica %d did not report the misrouted cancel", other.id)
			}
			// The real key on its own replica's peer address works.
			sendCancel(t, on.peer, conn.PID(), conn.SecretKey())
			wantCancelled(t, done)
		})

		t.Run("the peer address takes cancel requests only", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			host, port, _ := net.SplitHostPort(reps[2].peer)
			_, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable", host, port, tenantA.User, tenantA.Password))
			if pgCode(err) != "08004" || !strings.Contains(err.Error(), "takes only cancel requests") {
				t.Fatalf("a session on the peer address: %v, want 08004", err)
			}
		})
	})
}

// The binary: three pgtenant processes with the same config file but their
// peer_id, on one port with reuse_port. Cancels sent the usual way (to the
// address the session is on) cancel, whichever process the kernel hands
// them to.
func TestReplicasBinary(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		placeholders := []net.Listener{reusePortListen(t, "127.0.0.1:0")}
		shared := placeholders[0].Addr().String()
		peers := "peers:\n"
		for i := 1; i <= 3; i++ {
			ln := reusePortListen(t, "127.0.0.1:0")
			placeholders = append(placeholders, ln)
			peers += fmt.Sprintf("  - {id: %d, address: %q}\n", i, ln.Addr().String())
		}
		var procs []*runningProxy
		for i := 1; i <= 3; i++ {
			p := startBinaryAt(t, shared, m.yaml()+"reuse_port: true\n"+peers+fmt.Sprintf("peer_id: %d\n", i), tenantA)
			if !strings.Contains(p.logs.String(), "listening for cancel requests from its peers") {
				t.Fatalf("replica %d does not listen on its peer address:\n%s", i, p.logs.String())
			}
			procs = append(procs, p)
		}
		for _, ln := range placeholders {
			ln.Close()
		}
		forwarded := 0
		for i := range 6 {
			conn, err := procs[0].connect(tenantA)
			if err != nil {
				t.Fatal(err)
			}
			tag := fmt.Sprintf("e2e-replica-binary-%d", i)
			done := longQuery(t, conn, tag)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = conn.CancelRequest(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			wantCancelled(t, done)
			conn.Close(context.Background())
		}
		for _, p := range procs {
			forwarded += strings.Count(p.logs.String(), "cancel request forwarded to its replica")
		}
		t.Logf("%d of 6 cancels reached another process than their session's and were forwarded", forwarded)
	})
}

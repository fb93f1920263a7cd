package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// runningProxy is the pgtenant binary running with a config file.
type runningProxy struct {
	cmd     *exec.Cmd
	config  string
	extra   string // config lines besides the users (the pool mode, ...)
	pidFile string
	port    string
	done    chan error
	logs    *testutil.SyncBuffer
}

// writeConfig writes a config for the users, with the lines in extra
// (log_level: debug unless extra sets it).
func writeConfig(t *testing.T, path, listen, extra string, users ...demo.Tenant) {
	t.Helper()
	c := pgcluster.Shared()
	var b strings.Builder
	level := "log_level: debug\n"
	if strings.Contains(extra, "log_level:") {
		level = "" // extra has its own
	}
	fmt.Fprintf(&b, "listen: %s\nupstream: %s\nshutdown_timeout: 3s\n%s%susers:\n", listen, c.URL(demo.RLSRole, demo.RLSPassword, demo.Database), level, extra)
	for _, u := range users {
		fmt.Fprintf(&b, "  - {name: %s, password: %s, tenant: %s}\n", u.User, u.Password, u.ID)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startBinary runs pgtenant with a config for the users and the lines in
// extra (a poolMode's yaml, ...).
func startBinary(t *testing.T, extra string, users ...demo.Tenant) *runningProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return startBinaryAt(t, addr, extra, users...)
}

func startBinaryAt(t *testing.T, addr, extra string, users ...demo.Tenant) *runningProxy {
	t.Helper()
	return startBinaryWrapped(t, addr, extra, nil, users...)
}

// startBinaryWrapped runs pgtenant under the command wrap (prlimit ...), if any.
func startBinaryWrapped(t *testing.T, addr, extra string, wrap []string, users ...demo.Tenant) *runningProxy {
	t.Helper()
	bin := buildBinary(t)
	dir := t.TempDir()
	rp := &runningProxy{config: filepath.Join(dir, "pgtenant.yaml"), pidFile: filepath.Join(dir, "pgtenant.pid"), done: make(chan error, 1), logs: &testutil.SyncBuffer{}, extra: extra}
	_, rp.port, _ = net.SplitHostPort(addr)
	writeConfig(t, rp.config, addr, extra, users...)
	args := append(wrap[:len(wrap):len(wrap)], bin, "--config", rp.config, "--pid-file", rp.pidFile)
	rp.cmd = exec.Command(args[0], args[1:]...)
	rp.cmd.Stderr = rp.logs
	if err := rp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { rp.done <- rp.cmd.Wait() }()
	t.Cleanup(func() {
		_ = rp.cmd.Process.Kill()
		<-rp.done
		if t.Failed() {
			t.Logf("pgtenant log:\n%s", rp.logs.String())
		}
	})
	eventually(t, 10*time.Second, "pgtenant to listen", func() bool {
		return strings.Contains(rp.logs.String(), "pgtenant listening")
	})
	return rp
}

func (rp *runningProxy) connect(tn demo.Tenant) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=app sslmode=disable", rp.port, tn.User, tn.Password))
}

// `pgtenant reload` (SIGHUP) re-reads the config: a new user works, sessions
// in progress go on, and an invalid config is refused with the reason while
// the running one stays.
func TestReload(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		rp := startBinary(t, m.yaml(), tenantA)
		old, err := rp.connect(tenantA)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close(context.Background())
		if _, err := rp.connect(tenantB); pgCode(err) != "28P01" {
			t.Fatalf("tenant B before the reload: %v", err)
		}
		reload := func() {
			t.Helper()
			out, err := exec.Command(buildBinary(t), "reload", "--pid-file", rp.pidFile).CombinedOutput()
			if err != nil {
				t.Fatalf("pgtenant reload: %v\n%s", err, out)
			}
		}
		writeConfig(t, rp.config, "127.0.0.1:"+rp.port, rp.extra, tenantA, tenantB)
		reload()
		eventually(t, 5*time.Second, "tenant B to log in after the reload", func() bool {
			c, err := rp.connect(tenantB)
			if err == nil {
				c.Close(context.Background())
			}
			return err == nil
		})
		if got := queryOne(t, old, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("session from before the reload: %q", got)
		}

		if err := os.WriteFile(rp.config, []byte("listen: 127.0.0.1:"+rp.port+"\nbogus_key: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		reload()
		eventually(t, 5*time.Second, "the refusal in the log", func() bool {
			return strings.Contains(rp.logs.String(), "reload refused") && strings.Contains(rp.logs.String(), "bogus_key")
		})
		c, err := rp.connect(tenantB)
		if err != nil {
			t.Fatalf("after a refused reload the running config must stay: %v", err)
		}
		c.Close(context.Background())
	})
}

// SIGTERM drains: no new connections, idle sessions end with FATAL 57P01, a
// transaction in progress finishes and then its session ends too.
func TestDrainOnSIGTERM(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		rp := startBinary(t, m.yaml(), tenantA, tenantB)
		idle, err := rp.connect(tenantA)
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close(context.Background())
		busy, err := rp.connect(tenantB)
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close(context.Background())
		queryRows(t, busy, "BEGIN")
		queryRows(t, busy, "INSERT INTO copy_sink (line) VALUES ('drain-test')")

		if err := rp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the idle session to be ended", func() bool { return idle.IsClosed() || pingFails(idle) })
		if _, err := rp.connect(tenantA); err == nil {
			t.Fatal("a new connection was accepted while draining")
		}
		// The transaction in progress still works and commits.
		if got := queryOne(t, busy, "SELECT count(*) FROM copy_sink WHERE line = 'drain-test'"); got != "1" {
			t.Fatalf("inside the draining transaction: %s", got)
		}
		_, err = busy.Exec(context.Background(), "COMMIT").ReadAll()
		if err != nil && pgCode(err) != "57P01" {
			t.Fatalf("COMMIT while draining: %v", err)
		}
		select {
		case err := <-rp.done:
			rp.done <- err
			if err != nil {
				t.Fatalf("pgtenant exit: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("pgtenant did not exit after the last transaction")
		}
		if n := superQuery(t, "SELECT count(*) FROM copy_sink WHERE line = 'drain-test'")[0][0]; n != "1" {
			t.Fatal("the transaction that was in progress at SIGTERM did not commit")
		}
		superQuery(t, "DELETE FROM copy_sink WHERE line = 'drain-test'")
	})
}

// pingFails reports whether a query on conn fails with the administrator
// shutdown error (or any error: the session is gone).
func pingFails(conn *pgconn.PgConn) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, "SELECT 1").ReadAll()
	return err != nil
}

// The admin endpoint: Prometheus metrics, health, readiness, and the session
// list that `pgtenant status` prints.
func TestAdminEndpoints(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		admin := ln.Addr().String()
		ln.Close()
		rp := startBinary(t, m.yaml()+"admin_listen: "+admin+"\n", tenantA)
		conn, err := rp.connect(tenantA)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		queryRows(t, conn, "SELECT 1")
		if _, err := conn.Exec(context.Background(), "SET app.tenant_id = 'x'").ReadAll(); pgCode(err) != "42501" {
			t.Fatal(err)
		}
		get := func(path string) (int, string) {
			t.Helper()
			resp, err := http.Get("http://" + admin + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(body)
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := get(path); code != 200 {
				t.Fatalf("%s: %d %s", path, code, body)
			}
		}
		_, body := get("/metrics")
		wants := []string{
			`pgtenant_client_connections{state="active"} 1`,
			`pgtenant_authentications_total{method="scram-sha-256",outcome="ok",reason=""} 1`,
			`pgtenant_transactions_total{tenant="` + tenantA.ID + `"}`,
			`pgtenant_guard_refusals_total{tenant="` + tenantA.ID + `"} 1`,
			`pgtenant_upstream_connects_total{outcome="ok",upstream="default"} 1`,
			`pgtenant_upstream_connect_duration_seconds_count{upstream="default"} 1`,
			`pgtenant_upstream_sessions{upstream="default"} 1`,
			`pgtenant_statements_total{tenant="` + tenantA.ID + `"} 2`,
			`pgtenant_errors_total{tenant="` + tenantA.ID + `"} 1`,
		}
		if m.tx {
			// The one pooled connection, idle between the client's transactions.
			wants = append(wants, `pgtenant_pool_connections{state="idle",upstream="default"} 1`)
		}
		for _, want := range wants {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		out, err := exec.Command(buildBinary(t), "status", "--admin", admin).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tenantA.ID) || !strings.Contains(string(out), "1 sessions") {
			t.Fatalf("pgtenant status: %v\n%s", err, out)
		}
	})
}

// A zero-downtime restart: with reuse_port, a new pgtenant binds the same
// address while the old one still runs; SIGTERM drains the old one and the
// new one serves.
func TestRestartWithReusePort(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		extra := m.yaml() + "reuse_port: true\n"
		old := startBinary(t, extra, tenantA)
		oldSession, err := old.connect(tenantA)
		if err != nil {
			t.Fatal(err)
		}
		defer oldSession.Close(context.Background())
		queryRows(t, oldSession, "BEGIN")
		successor := startBinaryAt(t, "127.0.0.1:"+old.port, extra, tenantA)
		if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// The old instance lets the open transaction finish, then exits.
		queryRows(t, oldSession, "SELECT 1")
		_, _ = oldSession.Exec(context.Background(), "COMMIT").ReadAll()
		select {
		case err := <-old.done:
			old.done <- err
		case <-time.After(5 * time.Second):
			t.Fatal("the old instance did not exit")
		}
		conn, err := successor.connect(tenantA)
		if err != nil {
			t.Fatalf("the successor does not serve the address: %v", err)
		}
		defer conn.Close(context.Background())
		if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("through the successor: %q", got)
		}
	})
}

// Out of file descriptors, pgtenant keeps its listener, as PostgreSQL's
// postmaster does: connections past the limit wait in the backlog, and once
// clients leave new ones log in (on the code before, Accept's EMFILE ended
// Serve and the process).
func TestAcceptOutOfFiles(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		rp := startBinaryWrapped(t, addr, m.yaml(), []string{"prlimit", "--nofile=48:48"}, tenantA)
		var (
			mu     sync.Mutex
			opened []*pgconn.PgConn
			wg     sync.WaitGroup
		)
		for range 60 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				c, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=app sslmode=disable", rp.port, tenantA.User, tenantA.Password))
				if err == nil {
					mu.Lock()
					opened = append(opened, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(opened) == 0 || len(opened) == 60 {
			t.Fatalf("%d of 60 clients logged in with 48 open files: the limit was not reached", len(opened))
		}
		if !strings.Contains(rp.logs.String(), "cannot accept new connections") {
			t.Errorf("no warning about accepting in the log")
		}
		for _, c := range opened {
			c.Close(context.Background())
		}
		eventually(t, 10*time.Second, "a new client to log in once the others left", func() bool {
			c, err := rp.connect(tenantA)
			if err != nil {
				return false
			}
			defer c.Close(context.Background())
			return queryOne(t, c, "SELECT current_setting('app.tenant_id')") == tenantA.ID
		})
		select {
		case err := <-rp.done:
			t.Fatalf("pgtenant exited: %v", err)
		default:
		}
	})
}

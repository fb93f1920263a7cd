package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// contextScope is pgtenant's context_scope; "" leaves it out (session).
var contextScope = flag.String("context-scope", "", "pgtenant's context_scope: session or transaction (default: left out, session)")

// eventLoop is pgtenant's event_loop; "" leaves it out (on).
var eventLoop = flag.String("event-loop", "", "pgtenant's event_loop: true or false (default: left out, true)")

// errNoPool means this pgtenant's config has no pool section yet, so
// transaction mode cannot be asked for.
var errNoPool = errors.New("this pgtenant's config has no pool section (transaction pooling not available)")

// pgtenantYAML is the proxy's config, written as YAML text (what users write)
// rather than built from config structs, so that this file does not depend
// on the Go names of new config fields. The benchmark user is tenant-mapped,
// with the statement guard on (the default). Its password is plaintext,
// which pgtenant allows for development: it derives the SCRAM verifier at
// load time, so logins cost the same as with a stored verifier.
func pgtenantYAML(c *pgcluster.Cluster, listen, mode string, poolSize int, logLevel string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %q\n", listen)
	if *contextScope != "" {
		fmt.Fprintf(&b, "context_scope: %s\n", *contextScope)
	}
	if *eventLoop != "" {
		fmt.Fprintf(&b, "event_loop: %s\n", *eventLoop)
	}
	fmt.Fprintf(&b, "upstream: %q\n", c.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	fmt.Fprintf(&b, "tenant_setting: %q\n", demo.TenantSetting)
	fmt.Fprintf(&b, "log_level: %s\n", logLevel)
	fmt.Fprintf(&b, "users:\n  - name: %q\n    password: %q\n    tenant: %q\n", demo.TenantA.User, demo.TenantA.Password, demo.TenantA.ID)
	switch {
	case poolSectionSupported():
		fmt.Fprintf(&b, "pool:\n  mode: %s\n  size: %d\n", mode, poolSize)
	case mode != "session":
		return "", errNoPool
	}
	// Without a pool section pgtenant runs in session mode, its only mode.
	return b.String(), nil
}

// poolSectionSupported reports whether config accepts the pool section
// (it decodes strictly, so an unknown section is an error).
func poolSectionSupported() bool {
	_, err := config.Parse([]byte("upstream: postgres://u@127.0.0.1/db\nusers: [{name: u, password: p, tenant: t}]\npool:\n  mode: transaction\n  size: 10\n"))
	return err == nil
}

// inProcess is a pgtenant proxy running inside this process (as guardbench
// runs it): no process boundary, but the same code path as the binary.
type inProcess struct {
	port  int
	close func() error
}

func startInProcess(c *pgcluster.Cluster, mode string, poolSize int) (*inProcess, error) {
	// The listen address is not used: Serve gets our own listener.
	text, err := pgtenantYAML(c, "127.0.0.1:0", mode, poolSize, "error")
	if err != nil {
		return nil, err
	}
	cfg, err := config.Parse([]byte(text))
	if err != nil {
		return nil, err
	}
	// Logging is discarded: the only expected message is the warning about
	// the plaintext password.
	srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return nil, err
	}
	go func() { _ = srv.Serve(ln) }()
	return &inProcess{port: ln.Addr().(*net.TCPAddr).Port, close: srv.Close}, nil
}

// binary is the pgtenant program running as a child process, for the memory
// check: an in-process proxy's RSS would include the benchmark's own.
type binary struct {
	port int
	dir  string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// buildPgtenant builds the pgtenant command of this module into dir.
func buildPgtenant(ctx context.Context, dir string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		return "", errors.New("not inside the pgtenant module (run from the repository)")
	}
	bin := filepath.Join(dir, "pgtenant")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build pgtenant: %v\n%s", err, out)
	}
	return bin, nil
}

// startBinary runs the pgtenant binary with a config in dir and waits until
// a tenant login through it works.
func startBinary(ctx context.Context, c *pgcluster.Cluster, bin, dir, mode string, poolSize int) (*binary, error) {
	return startBinaryOn(ctx, c, bin, dir, mode, poolSize, 0, "")
}

// startBinaryOn is startBinary on port (0: a free one), with the config
// lines extra.
func startBinaryOn(ctx context.Context, c *pgcluster.Cluster, bin, dir, mode string, poolSize, port int, extra string) (*binary, error) {
	p := &binary{dir: dir, log: filepath.Join(dir, "pgtenant.log"), done: make(chan struct{}), port: port}
	var err error
	if p.port == 0 {
		if p.port, err = benchutil.FreePort(); err != nil {
			return nil, err
		}
	}
	text, err := pgtenantYAML(c, "127.0.0.1:"+strconv.Itoa(p.port), mode, poolSize, "warn")
	if err != nil {
		return nil, err
	}
	text += extra
	cfgPath := filepath.Join(dir, "pgtenant.yaml")
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, "--config", cfgPath)
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	p.cmd.SysProcAttr = benchutil.ChildAttr(nil)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgtenant: %w", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	if err := benchutil.WaitLogin(ctx, p.port, demo.TenantA.User, demo.TenantA.Password, p.done); err != nil {
		p.stop()
		return nil, fmt.Errorf("pgtenant binary did not come up: %w\nlog:\n%s", err, benchutil.TailFile(p.log, 20))
	}
	return p, nil
}

func (p *binary) pid() int { return p.cmd.Process.Pid }

// stop ends the proxy: SIGTERM drains (no client is left by then), SIGKILL
// after 5s. It is idempotent; the directory belongs to the caller.
func (p *binary) stop() {
	if p.cmd != nil {
		benchutil.StopProcess(p.cmd.Process, p.done, syscall.SIGTERM)
		p.cmd = nil
	}
}

// upstreamConns counts RLSRole's server connections: the proxies' upstream
// connections and any direct clients.
func upstreamConns(ctx context.Context, c *pgcluster.Cluster) (int, error) {
	s, err := benchutil.QueryValue(ctx, c, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"'")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/idlecheck"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// More idle clients than one process can hold. Where the open-files hard
// limit cannot be raised (this machine: 20,000, no CAP_SYS_RESOURCE even
// as root), one pgtenant process holds fewer than 20,000 clients, and so
// does one client process. Past perProcess clients the check runs
// ceil(n/perProcess) pgtenant replicas on one port (reuse_port, as
// README's Replicas section sets them up) and as many client processes,
// each from its own loopback address (one address has about 28,000
// ephemeral ports), and reports the replicas' summed RSS.
const perProcess = 15000

// idleChildEnv carries a client process's task: "port count source-ip".
const idleChildEnv = "COMPARE_IDLE_CHILD"

// idleManyCheck measures o.idle idle transaction-mode clients over replicas.
func idleManyCheck(ctx context.Context, c *pgcluster.Cluster, o options, bin, dir string) (idleResult, error) {
	n := o.idle
	procs := (n + perProcess - 1) / perProcess
	r := idleResult{Target: fmt.Sprintf("pgtenant (%d replicas)", procs), Mode: o.idleMode, N: n}
	port, err := benchutil.FreePort()
	if err != nil {
		return r, err
	}
	var replicas []*binary
	defer func() {
		for _, p := range replicas {
			p.stop()
		}
	}()
	for i := range procs {
		d := filepath.Join(dir, "replica-"+strconv.Itoa(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return r, err
		}
		p, err := startBinaryOn(ctx, c, bin, d, o.idleMode, o.poolSize, port, "reuse_port: true\n")
		if err != nil {
			return r, err
		}
		replicas = append(replicas, p)
	}
	total := func() (int64, error) {
		var sum int64
		for _, p := range replicas {
			b, err := idlecheck.RSS(p.pid())
			if err != nil {
				return 0, err
			}
			sum += b
		}
		return sum, nil
	}
	what := fmt.Sprintf("%d clients from %d processes to %d pgtenant replicas", n, procs, procs)
	return measureIdleWith(ctx, c, r, what, total, 60*time.Second, func() (func(), error) {
		return startIdleChildren(ctx, port, n, procs)
	})
}

// startIdleChildren runs procs client processes holding n clients in all
// and returns once every one is logged in; stop ends them.
func startIdleChildren(ctx context.Context, port, n, procs int) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return func() {}, err
	}
	var cmds []*exec.Cmd
	stop = func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	errs := make(chan error, procs)
	for i := range procs {
		count := n / procs
		if i < n%procs {
			count++
		}
		cmd := exec.CommandContext(ctx, self)
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %d 127.0.%d.%d", idleChildEnv, port, count, 1+i/250, 2+i%250))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = benchutil.ChildAttr(nil)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return stop, err
		}
		if err := cmd.Start(); err != nil {
			return stop, err
		}
		cmds = append(cmds, cmd)
		go func() {
			line, err := bufio.NewReader(out).ReadString('\n')
			switch {
			case err != nil:
				errs <- fmt.Errorf("client process: %w", err)
			case line != "ready\n":
				errs <- fmt.Errorf("client process: %s", strings.TrimSpace(line))
			default:
				errs <- nil
			}
		}()
	}
	for range procs {
		if err := <-errs; err != nil {
			return stop, err
		}
	}
	return stop, nil
}

// runIdleChild is a client process: it logs in its clients from its own
// source address, says "ready" and holds them until killed.
func runIdleChild(spec string) int {
	var port, count int
	var src string
	if _, err := fmt.Sscanf(spec, "%d %d %s", &port, &count, &src); err != nil {
		fmt.Printf("bad %s %q: %v\n", idleChildEnv, spec, err)
		return 2
	}
	if err := raiseNoFile(uint64(count) + 256); err != nil {
		fmt.Println(err)
		return 1
	}
	cfg, err := pgconn.ParseConfig(benchutil.ConnString(port, demo.TenantA.User, demo.TenantA.Password))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 60 * time.Second}
	cfg.DialFunc = dialer.DialContext
	conns, err := idlecheck.Hold(cfg, count, 25)
	if err != nil {
		fmt.Printf("after %d clients: %v\n", len(conns), err)
		return 1
	}
	fmt.Println("ready")
	select {} // until killed
}

//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// target is one thing pgbench runs against.
type target struct {
	label string
	port  int
	pid   int    // the proxy process measured; 0 for direct
	note  string // e.g. the relay's GOMAXPROCS
}

// result is one pgbench run.
type result struct {
	round     int
	protocol  string
	clients   int
	target    string
	tps       float64
	latencyMS float64
	cpuPerTx  float64 // µs
	csPerTx   float64 // context switches of all the proxy's threads
	sysPerTx  float64 // system calls (the perf pass only)
	err       string
}

// meta describes the run for the report.
type meta struct {
	started   time.Time
	elapsed   time.Duration
	args      []string
	cpus      int
	load      string
	pg        string
	pgbouncer string
	targets   []*target
}

func run(ctx context.Context, o options) error {
	m := &meta{started: time.Now(), args: os.Args[1:], cpus: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	bouncerBin, err := benchutil.FindPgBouncer(ctx)
	if err != nil {
		return err
	}
	if m.pgbouncer, _, err = benchutil.PgBouncerVersion(bouncerBin); err != nil {
		return err
	}
	if o.syscalls {
		if _, err := exec.LookPath("perf"); err != nil {
			return errors.New("perf not found for the system-call pass: install it (apt-get install linux-perf) or run with -syscalls=false")
		}
	}
	maxClients := 0
	for _, c := range o.clients {
		maxClients = max(maxClients, c)
	}
	fmt.Fprintln(os.Stderr, "starting PostgreSQL, loading pgbench scale 10...")
	c, err := pgcluster.Start(ctx, pgcluster.Options{ExtraConf: []string{
		"max_connections = " + strconv.Itoa(100+2*maxClients),
		"shared_buffers = 256MB", // pgbench_accounts at scale 10 in memory
	}})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := benchutil.SetupPgbench(ctx, c); err != nil {
		return err
	}
	if err := c.Exec(ctx, demo.Database, "VACUUM ANALYZE"); err != nil {
		return err
	}
	if m.pg, err = benchutil.QueryValue(ctx, c, "postgres", "SHOW server_version"); err != nil {
		return err
	}
	secret, err := benchutil.QueryValue(ctx, c, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = '"+demo.RLSRole+"'")
	if err != nil {
		return err
	}

	m.targets = []*target{{label: "direct", port: c.Port}}
	b, err := benchutil.StartPgBouncer(ctx, c, benchutil.BouncerConf{Bin: bouncerBin, Mode: "session", PoolSize: maxClients + 6, MaxClients: 1000, Secret: secret})
	if err != nil {
		return err
	}
	defer b.Stop()
	m.targets = append(m.targets, &target{label: "pgbouncer", port: b.Port, pid: b.Pid(), note: "session mode, SCRAM"})
	upstream := net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	for _, r := range o.relays {
		p, err := startRelay(r, upstream)
		if err != nil {
			return err
		}
		defer p.stop()
		if err := benchutil.WaitLogin(ctx, p.port, demo.RLSRole, demo.RLSPassword, p.done); err != nil {
			return fmt.Errorf("relay %s: %w\n%s", r.label(), err, p.stderr)
		}
		m.targets = append(m.targets, &target{label: r.label(), port: p.port, pid: p.pid(), note: fmt.Sprintf("GOMAXPROCS %d", p.gomaxprocs)})
	}

	results, err := benchmark(ctx, o, m.targets)
	if err != nil {
		return err
	}
	var sys []result
	if o.syscalls {
		if sys, err = syscallPass(ctx, o, m.targets); err != nil {
			return err
		}
	}
	m.elapsed = time.Since(m.started).Round(time.Second)
	text := report(m, o, results, sys)
	fmt.Println(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	for _, r := range append(results, sys...) {
		if r.err != "" {
			return fmt.Errorf("some pgbench runs failed, e.g. %s c=%d %s: %s", r.protocol, r.clients, r.target, r.err)
		}
	}
	return nil
}

// benchmark runs every (protocol, clients) cell against every target, round
// after round, the targets' order rotating each round.
func benchmark(ctx context.Context, o options, targets []*target) ([]result, error) {
	total := o.rounds * len(o.protocols) * len(o.clients) * len(targets)
	fmt.Fprintf(os.Stderr, "%d pgbench runs of %s: about %s\n", total, o.duration, (time.Duration(total) * (o.duration + 400*time.Millisecond)).Round(time.Second))
	var results []result
	for r := 0; r < o.rounds; r++ {
		order := append(append([]*target{}, targets[r%len(targets):]...), targets[:r%len(targets)]...)
		for _, proto := range o.protocols {
			for _, clients := range o.clients {
				for _, t := range order {
					res := measure(ctx, t, proto, clients, o.duration)
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					res.round = r + 1
					results = append(results, res)
					status := fmt.Sprintf("%8.0f tps %7.3f ms", res.tps, res.latencyMS)
					if t.pid != 0 {
						status += fmt.Sprintf(" %6.1f µs CPU/tx %5.2f cs/tx", res.cpuPerTx, res.csPerTx)
					}
					if res.err != "" {
						status = "FAILED: " + res.err
					}
					fmt.Fprintf(os.Stderr, "[%3d/%d] round %d %-8s c=%-3d %-20s %s\n", len(results), total, r+1, proto, clients, t.label, status)
				}
			}
		}
	}
	return results, nil
}

// measure runs pgbench once against t, reading the proxy's CPU time and
// context switches before and after.
func measure(ctx context.Context, t *target, proto string, clients int, d time.Duration) result {
	res := result{protocol: proto, clients: clients, target: t.label}
	fail := func(err error) result {
		res.err = strings.Join(strings.Fields(err.Error()), " ")
		return res
	}
	var cpu0, cpu1 time.Duration
	var cs0, cs1 int64
	var err error
	if t.pid != 0 {
		if cpu0, err = benchutil.ProcessCPU(t.pid); err != nil {
			return fail(err)
		}
		if cs0, err = ctxSwitches(t.pid); err != nil {
			return fail(err)
		}
	}
	tps, lat, txs, err := benchutil.Pgbench(ctx, t.port, demo.RLSRole, demo.RLSPassword, proto, clients, d)
	if err != nil {
		return fail(err)
	}
	res.tps, res.latencyMS = tps, lat
	if t.pid != 0 && txs > 0 {
		if cpu1, err = benchutil.ProcessCPU(t.pid); err != nil {
			return fail(err)
		}
		if cs1, err = ctxSwitches(t.pid); err != nil {
			return fail(err)
		}
		res.cpuPerTx = float64((cpu1 - cpu0).Microseconds()) / float64(txs)
		res.csPerTx = float64(cs1-cs0) / float64(txs)
	}
	return res
}

// syscallPass runs each cell once more per proxy with `perf stat` counting
// the proxy's system calls (the raw_syscalls:sys_enter tracepoint, all its
// threads). Kept apart from the timed rounds: the tracepoint slows every
// system call a little.
func syscallPass(ctx context.Context, o options, targets []*target) ([]result, error) {
	var out []result
	for _, proto := range o.protocols {
		for _, clients := range o.clients {
			for _, t := range targets {
				if t.pid == 0 {
					continue
				}
				res := result{protocol: proto, clients: clients, target: t.label}
				n, txs, err := countSyscalls(ctx, t, proto, clients, o.sysDuration)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if err != nil {
					res.err = strings.Join(strings.Fields(err.Error()), " ")
				} else {
					res.sysPerTx = float64(n) / float64(txs)
				}
				fmt.Fprintf(os.Stderr, "syscalls %-8s c=%-3d %-20s %6.2f/tx %s\n", proto, clients, t.label, res.sysPerTx, res.err)
				out = append(out, res)
			}
		}
	}
	return out, nil
}

func countSyscalls(ctx context.Context, t *target, proto string, clients int, d time.Duration) (int64, int64, error) {
	var stderr bytes.Buffer
	perf := exec.Command("perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", strconv.Itoa(t.pid))
	perf.Stderr = &stderr
	if err := perf.Start(); err != nil {
		return 0, 0, err
	}
	time.Sleep(300 * time.Millisecond) // attached before pgbench connects
	_, _, txs, err := benchutil.Pgbench(ctx, t.port, demo.RLSRole, demo.RLSPassword, proto, clients, d)
	_ = perf.Process.Signal(syscall.SIGINT)
	_ = perf.Wait()
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 2 && f[2] == "raw_syscalls:sys_enter" {
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("perf stat: %q: %w", line, err)
			}
			if txs == 0 {
				return 0, 0, errors.New("no transactions")
			}
			return n, txs, nil
		}
	}
	return 0, 0, fmt.Errorf("no count in perf stat output: %s", benchutil.TailLines(stderr.String(), 5))
}

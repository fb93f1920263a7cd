package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// target is one thing pgbench runs against.
type target struct {
	name     string // "direct", "pgbouncer" or "pgtenant"
	mode     string // pool mode; "" for direct, which has none
	port     int
	user     string
	password string
	skip     map[string]string // protocol (or "*") -> why its cells are not run
	pid      int               // the proxy's process, whose CPU time is measured; 0 for direct
	logTail  func() string     // for failures: the end of the target's log, if it has one
}

func (t *target) label() string {
	if t.mode == "" {
		return t.name
	}
	return t.name + "/" + t.mode
}

// cpu returns the proxy process's CPU time so far (0 for direct).
func (t *target) cpu() (time.Duration, error) {
	if t.pid == 0 {
		return 0, nil
	}
	return benchutil.ProcessCPU(t.pid)
}

// cpuPerTx returns the proxy's CPU time since before, in µs per
// transaction of txs (0 for direct). It includes the logins pgbench makes
// at its start (SCRAM in both proxies), a small share over a run of seconds.
func (t *target) cpuPerTx(before time.Duration, txs int64) (float64, error) {
	if t.pid == 0 || txs == 0 {
		return 0, nil
	}
	after, err := t.cpu()
	if err != nil {
		return 0, err
	}
	return float64((after - before).Microseconds()) / float64(txs), nil
}

func (t *target) skipReason(protocol string) string {
	if r := t.skip["*"]; r != "" {
		return r
	}
	return t.skip[protocol]
}

// result is one pgbench run; a failed run has Err set and no numbers.
type result struct {
	Round     int
	Seq       int // position in the whole run, for spotting drift
	Mode      string
	Protocol  string
	Clients   int
	Target    string
	TPS       float64
	LatencyMS float64
	CPUPerTx  float64 // the proxy process's CPU time per transaction, µs; 0 for direct
	Err       string
}

// meta describes the run for the report.
type meta struct {
	Started   time.Time
	Elapsed   time.Duration
	Opts      options
	PG        string
	PgBouncer string
	Pgtenant  string
	CPUs      int
	Notes     []string
	Idle      []idleResult
}

// Sizing of the pools. Session mode needs a server connection per client,
// so PgBouncer's pool must exceed the largest -clients; 70 covers the
// default 64 (larger -clients raise it).
const (
	sessionPoolSize = 70
	maxConnections  = 300 // PostgreSQL's; raised for a session-mode idle check
)

func run(ctx context.Context, o options) error {
	m := &meta{Started: time.Now(), Opts: o, Pgtenant: cli.Version, CPUs: runtime.NumCPU()}
	var (
		pgtenantBin, binDir string
		err                 error
	)
	if o.idle > 0 {
		// Client sockets of the idle check, and the proxies' (they inherit it).
		if err := raiseNoFile(uint64(min(o.idle, perProcess)) + 1024); err != nil {
			return err
		}
		// Built first, so that a broken build fails now rather than after
		// the benchmark.
		if binDir, err = os.MkdirTemp("", "compare-pgtenant-"); err != nil {
			return err
		}
		defer os.RemoveAll(binDir)
		fmt.Fprintln(os.Stderr, "building the pgtenant binary for the idle check...")
		if pgtenantBin, err = buildPgtenant(ctx, binDir); err != nil {
			return err
		}
	}
	bouncerBin, err := benchutil.FindPgBouncer(ctx)
	if err != nil {
		return err
	}
	var bouncerPrepared bool
	if m.PgBouncer, bouncerPrepared, err = benchutil.PgBouncerVersion(bouncerBin); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "PgBouncer %s at %s\n", m.PgBouncer, bouncerBin)
	// Proxies, pgbench and PostgreSQL share the machine; anything else
	// running makes the numbers noise, so say so in the results.
	if load, err := loadAverage(); err == nil && load > float64(m.CPUs)/2 {
		m.Notes = append(m.Notes, fmt.Sprintf("load average was %.1f on %d CPUs before the run: other work was running, expect noisy numbers", load, m.CPUs))
		fmt.Fprintln(os.Stderr, "NOTE:", m.Notes[len(m.Notes)-1])
	}
	sessionPool := max(sessionPoolSize, slices.Max(o.clients)+6)

	// One cluster for all targets. Direct clients, two PgBouncers' pools and
	// two proxies' upstream connections are open at the same time; a
	// session-mode idle check holds one upstream connection per client.
	maxConn := maxConnections + 2*slices.Max(o.clients)
	if o.idle > 0 && o.idleMode == "session" {
		maxConn += o.idle
	}
	fmt.Fprintln(os.Stderr, "starting PostgreSQL, loading pgbench scale 10...")
	c, err := pgcluster.Start(ctx, pgcluster.Options{ExtraConf: []string{
		"max_connections = " + strconv.Itoa(maxConn),
		// pgbench_accounts at scale 10 is ~130 MB: keep it all in shared
		// buffers so that every target reads from memory alike.
		"shared_buffers = 256MB",
	}})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := setupData(ctx, c); err != nil {
		return err
	}
	if m.PG, err = benchutil.QueryValue(ctx, c, "postgres", "SHOW server_version"); err != nil {
		return err
	}
	secret, err := benchutil.QueryValue(ctx, c, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = '"+demo.RLSRole+"'")
	if err != nil {
		return fmt.Errorf("reading %s's SCRAM verifier for PgBouncer: %w", demo.RLSRole, err)
	}
	bc := benchutil.BouncerConf{Bin: bouncerBin, Secret: secret, Prepared: bouncerPrepared, MaxClients: max(1000, o.idle+100)}

	// Proxies are stopped before the idle check, which counts upstream
	// connections, and on every return.
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		closers = nil
	}
	defer closeAll()

	targets := []*target{{name: "direct", port: c.Port, user: demo.RLSRole, password: demo.RLSPassword}}
	for _, mode := range o.modes {
		bc := bc
		bc.Mode, bc.PoolSize = mode, o.poolSize
		if mode == "session" {
			bc.PoolSize = sessionPool
		}
		b, err := benchutil.StartPgBouncer(ctx, c, bc)
		if err != nil {
			return err
		}
		closers = append(closers, b.Stop)
		bt := &target{name: "pgbouncer", mode: mode, port: b.Port, user: demo.RLSRole, password: demo.RLSPassword, skip: map[string]string{}, pid: b.Pid(),
			logTail: func() string { return benchutil.TailFile(b.Log, 10) }}
		if mode == "transaction" && !bouncerPrepared {
			bt.skip["prepared"] = fmt.Sprintf("PgBouncer %s has no prepared-statement support; prepared protocol runs skipped for pgbouncer transaction mode", m.PgBouncer)
		}

		// pgtenant runs in this process, which does nothing else while
		// pgbench runs.
		pt := &target{name: "pgtenant", mode: mode, user: demo.TenantA.User, password: demo.TenantA.Password, skip: map[string]string{}, pid: os.Getpid()}
		p, err := startInProcess(c, mode, o.poolSize)
		switch {
		case errors.Is(err, errNoPool):
			pt.skip["*"] = "pgtenant " + mode + " mode skipped: " + err.Error()
		case err != nil:
			return fmt.Errorf("pgtenant (%s mode): %w", mode, err)
		default:
			closers = append(closers, func() { _ = p.close() })
			pt.port = p.port
			if mode == "transaction" {
				if note := checkPooling(ctx, c, p.port, o.poolSize); note != "" {
					m.Notes = append(m.Notes, note)
					fmt.Fprintln(os.Stderr, "NOTE:", note)
				}
			}
		}
		targets = append(targets, bt, pt)
	}
	if len(o.only) > 0 {
		// Profiling one target: leave the others out.
		targets = slices.DeleteFunc(targets, func(t *target) bool { return !slices.Contains(o.only, t.name) })
	}
	for _, t := range targets {
		for _, reason := range uniqueValues(t.skip) {
			m.Notes = append(m.Notes, reason)
			fmt.Fprintln(os.Stderr, "NOTE:", reason)
		}
	}

	results, err := benchmark(ctx, o, targets)
	if err != nil {
		return err
	}
	closeAll()

	// A failed idle check is reported, but the benchmark's results are
	// written all the same.
	var idleErr error
	if o.idle > 0 {
		if m.Idle, idleErr = idleCheck(ctx, c, o, pgtenantBin, binDir, bc, sessionPool); idleErr != nil {
			if ctx.Err() != nil {
				return idleErr
			}
			idleErr = fmt.Errorf("idle check: %w", idleErr)
			m.Notes = append(m.Notes, strings.Join(strings.Fields(idleErr.Error()), " "))
		}
	}
	m.Elapsed = time.Since(m.Started).Round(time.Second)

	table := report(m, results)
	fmt.Println(table)
	if err := writeOutputs(o.out, table, results, m); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s/results.md, results.csv, results.svg\n", o.out)
	if n := countFailed(results); n > 0 {
		return errors.Join(idleErr, fmt.Errorf("%d pgbench run(s) failed; see the error column of %s/results.csv", n, o.out))
	}
	return idleErr
}

// setupData installs the demo schema and pgbench's tables as guardbench does
// (see benchutil.SetupPgbench), then vacuums and analyzes them.
func setupData(ctx context.Context, c *pgcluster.Cluster) error {
	if err := benchutil.SetupPgbench(ctx, c); err != nil {
		return err
	}
	return c.Exec(ctx, demo.Database, "VACUUM ANALYZE")
}

// benchmark runs every (protocol, clients) cell against every target, round
// after round. Within a round the targets' order rotates, so that no target
// always runs first (on a cold cache) or last. A failed run is recorded and
// the benchmark goes on.
func benchmark(ctx context.Context, o options, targets []*target) ([]result, error) {
	perRound := 0
	for _, p := range o.protocols {
		for _, t := range targets {
			if t.skipReason(p) == "" {
				perRound += len(o.clients)
			}
		}
	}
	total := perRound * o.rounds
	fmt.Fprintf(os.Stderr, "%d pgbench runs of %s: about %s\n", total, o.duration, (time.Duration(total) * (o.duration + 300*time.Millisecond)).Round(time.Second))

	var results []result
	for r := 0; r < o.rounds; r++ {
		order := append(append([]*target{}, targets[r%len(targets):]...), targets[:r%len(targets)]...)
		for _, proto := range o.protocols {
			for _, clients := range o.clients {
				for _, t := range order {
					if t.skipReason(proto) != "" {
						continue
					}
					cpu, err := t.cpu()
					var tps, lat float64
					var txs int64
					if err == nil {
						tps, lat, txs, err = benchutil.Pgbench(ctx, t.port, t.user, t.password, proto, clients, o.duration)
					}
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					var perTx float64
					if err == nil {
						perTx, err = t.cpuPerTx(cpu, txs)
					}
					res := result{Round: r + 1, Seq: len(results) + 1, Mode: t.mode, Protocol: proto, Clients: clients, Target: t.name, TPS: tps, LatencyMS: lat, CPUPerTx: perTx}
					status := fmt.Sprintf("%9.0f tps %8.3f ms", tps, lat)
					if perTx > 0 {
						status += fmt.Sprintf(" %6.1f µs CPU/tx", perTx)
					}
					if err != nil {
						res.Err = strings.Join(strings.Fields(err.Error()), " ")
						status = "FAILED: " + err.Error()
						if t.logTail != nil {
							status += "\n" + t.label() + " log:\n" + t.logTail()
						}
					}
					results = append(results, res)
					fmt.Fprintf(os.Stderr, "[%3d/%d] round %d %-8s c=%-3d %-21s %s\n", res.Seq, total, r+1, proto, clients, t.label(), status)
				}
			}
		}
	}
	return results, nil
}

// checkPooling opens more idle clients than the pool has connections and
// says so when pgtenant opened an upstream connection for each: then
// "transaction" rows measure session behaviour.
func checkPooling(ctx context.Context, c *pgcluster.Cluster, port, poolSize int) string {
	before, err := upstreamConns(ctx, c)
	if err != nil {
		return "pooling check failed: " + err.Error()
	}
	n := poolSize + 10
	conns, err := openClients(ctx, benchutil.ConnString(port, demo.TenantA.User, demo.TenantA.Password), n, 10, false)
	defer closeClients(conns)
	if err != nil {
		return "pooling check failed: " + err.Error()
	}
	after, err := upstreamConns(ctx, c)
	if err != nil {
		return "pooling check failed: " + err.Error()
	}
	if after-before > poolSize {
		return fmt.Sprintf("pgtenant in transaction mode opened %d upstream connections for %d idle clients (pool.size %d): this build does not pool yet, its transaction rows measure session behaviour", after-before, n, poolSize)
	}
	return ""
}

// raiseNoFile lifts RLIMIT_NOFILE to at least n; children inherit it.
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("raising the open-files limit to %d for -idle (now %d, hard %d): %w; lower -idle or raise ulimit -n", n, lim.Cur, lim.Max, err)
	}
	return nil
}

func countFailed(rs []result) int {
	n := 0
	for _, r := range rs {
		if r.Err != "" {
			n++
		}
	}
	return n
}

// uniqueValues returns m's distinct values in a stable order.
func uniqueValues(m map[string]string) []string {
	var out []string
	for _, k := range []string{"*", "simple", "extended", "prepared"} {
		if v := m[k]; v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// loadAverage returns the 1-minute load average.
func loadAverage() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

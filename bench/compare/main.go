// Command compare benchmarks PostgreSQL directly, through PgBouncer and
// through pgtenant in the same run, on the same throwaway cluster, and writes
// a markdown table, the raw results (CSV) and an SVG chart for the README.
//
//	go run ./bench/compare                       # full matrix, ~12 minutes
//	go run ./bench/compare -quick -clients 1,8 -protocols simple -modes session -idle 200
//	go run ./bench/compare -only pgtenant -protocols simple -clients 1 -quick -idle 100000
//
// Every cell is `pgbench -n -S` (one primary-key SELECT on pgbench_accounts
// per transaction). pgbench's tables have no row-level security, so the same
// unmodified script is valid for all three targets: PgBouncer does not set
// app.tenant_id, pgtenant does (per transaction, with the guard on, for a
// tenant-mapped user, as users run it); what the table shows is the cost of
// that work plus the proxy hop.
//
// Targets are interleaved within a round and their order rotates each round,
// so that slow drift of the machine (thermal, noisy neighbours) spreads over
// all of them; the table reports medians over rounds.
//
// Afterwards, unless -idle 0, it measures what an idle client costs: it runs
// the pgtenant binary (a separate process, so that its RSS is its own) and
// PgBouncer, opens -idle authenticated connections to each and reports the
// growth of the process's resident memory per connection.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
)

// options are the command-line settings.
type options struct {
	rounds    int
	duration  time.Duration
	clients   []int
	protocols []string
	modes     []string
	poolSize  int
	out       string
	idle      int
	idleMode  string
	only      []string // targets to run; all when empty
}

func main() {
	if spec := os.Getenv(idleChildEnv); spec != "" {
		os.Exit(runIdleChild(spec)) // a client process of idleManyCheck
	}
	rounds := flag.Int("rounds", 3, "interleaved rounds; the table shows medians over rounds")
	duration := flag.Duration("duration", 5*time.Second, "pgbench run length per cell, round and target (whole seconds)")
	clients := flag.String("clients", "1,8,64", "comma-separated pgbench client counts")
	protocols := flag.String("protocols", "simple,extended,prepared", "comma-separated pgbench -M protocols: simple, extended, prepared")
	modes := flag.String("modes", "session,transaction", "comma-separated pool modes for PgBouncer and pgtenant: session, transaction")
	poolSize := flag.Int("pool-size", 10, "upstream connections in transaction mode (PgBouncer default_pool_size, pgtenant pool.size)")
	out := flag.String("out", "bench/results", "directory for results.md, results.csv and results.svg")
	quick := flag.Bool("quick", false, "smoke run: 1 round of 2s (unless -rounds or -duration are given)")
	idle := flag.Int("idle", 10000, "idle client connections for the memory check; 0 skips it")
	idleMode := flag.String("idle-mode", "transaction", "pool mode of the memory check: transaction or session")
	only := flag.String("only", "", "comma-separated targets to run (direct, pgbouncer, pgtenant); default all")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (which runs pgtenant in-process) to this file")
	flag.Parse()

	o := options{rounds: *rounds, duration: *duration, poolSize: *poolSize, out: *out, idle: *idle, idleMode: *idleMode}
	if *quick {
		// Explicit flags win over -quick, so `-quick -rounds 2` does what it says.
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["rounds"] {
			o.rounds = 1
		}
		if !set["duration"] {
			o.duration = 2 * time.Second
		}
	}
	var err error
	if o.clients, err = benchutil.ParseInts(*clients, 1); err != nil {
		fatal(fmt.Errorf("-clients: %w", err))
	}
	if o.protocols, err = benchutil.ParseList(*protocols, "simple", "extended", "prepared"); err != nil {
		fatal(fmt.Errorf("-protocols: %w", err))
	}
	if o.modes, err = benchutil.ParseList(*modes, "session", "transaction"); err != nil {
		fatal(fmt.Errorf("-modes: %w", err))
	}
	if *only != "" {
		if o.only, err = benchutil.ParseList(*only, "direct", "pgbouncer", "pgtenant"); err != nil {
			fatal(fmt.Errorf("-only: %w", err))
		}
	}
	if _, err := benchutil.ParseList(o.idleMode, "session", "transaction"); err != nil {
		fatal(fmt.Errorf("-idle-mode: %w", err))
	}
	switch {
	case o.rounds < 1:
		fatal(errors.New("-rounds must be at least 1"))
	case o.duration < time.Second:
		fatal(errors.New("-duration must be at least 1s (pgbench -T takes whole seconds)"))
	case o.poolSize < 1:
		fatal(errors.New("-pool-size must be at least 1"))
	case o.idle < 0:
		fatal(errors.New("-idle must not be negative"))
	case o.idle > perProcess && o.idleMode != "transaction":
		fatal(fmt.Errorf("-idle over %d runs replicas, in transaction mode only (session mode would hold an upstream connection per client)", perProcess))
	}

	// Ctrl-C and SIGTERM cancel ctx: running pgbench processes are killed and
	// run returns through its deferred cleanups (proxies, PgBouncer, the
	// cluster, temp dirs).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	err = run(ctx, o)
	interrupted := ctx.Err() != nil // before stop(), which cancels ctx too
	stop()
	if err != nil {
		if interrupted {
			err = fmt.Errorf("interrupted (%v)", err)
		}
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "compare:", err)
	os.Exit(1)
}

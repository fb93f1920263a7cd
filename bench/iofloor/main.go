//go:build linux

// Command iofloor measures the CPU per transaction of minimal transparent
// byte relays between pgbench and PostgreSQL, one I/O model each, next to
// PgBouncer in session mode and direct PostgreSQL: the floor under what any
// Go proxy built on that model can cost, whatever its own logic.
//
//	go run ./bench/iofloor                                  # ~12 minutes
//	go run ./bench/iofloor -rounds 1 -duration 2s -clients 1 -protocols simple -relays epoll-block
//
// The relays (see README, "I/O floor") open one upstream connection per
// client and copy bytes both ways, the startup and SCRAM exchange included,
// so pgbench logs in to PostgreSQL through them as if directly:
//
//   - goroutine-net: two goroutines per connection, Read/Write on net.Conn.
//   - goroutine-raw: the same, reading and writing with raw non-blocking
//     system calls through syscall.RawConn (as proxy/directconn_linux.go).
//   - epoll-block, epoll-raw, epoll-poller: one level-triggered epoll event
//     loop; it blocks in epoll_wait on a locked thread (through the
//     runtime's syscall entry, or as a raw syscall), or parks on Go's poller
//     until the epoll fd is readable and then calls epoll_wait(0).
//   - epoll-rawreg: epoll-raw over sockets that Go's network poller holds
//     too, with one goroutine waiting on it (an Accept): the runtime's own
//     epoll_wait then wakes for every event as well.
//
// Each relay runs in a process of its own (this binary, re-executed), so its
// CPU time (utime + stime of /proc/<pid>/stat) is its alone; -procs runs each
// with the given GOMAXPROCS values (0: Go's default, the CPU count).
// Targets are interleaved within a round, their order rotating each round;
// the tables show medians over rounds. A last pass, with perf attached,
// counts system calls per transaction (-syscalls=false skips it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
)

// options are the command-line settings.
type options struct {
	rounds      int
	duration    time.Duration
	clients     []int
	protocols   []string
	relays      []relay
	syscalls    bool
	sysDuration time.Duration
	out         string
}

func main() {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	rounds := flag.Int("rounds", 3, "interleaved rounds; the tables show medians over rounds")
	duration := flag.Duration("duration", 4*time.Second, "pgbench run length per cell, round and target (whole seconds)")
	clients := flag.String("clients", "1,8", "comma-separated pgbench client counts")
	protocols := flag.String("protocols", "simple,extended", "comma-separated pgbench -M protocols: simple, extended, prepared")
	kinds := flag.String("relays", strings.Join(relayKinds, ","), "comma-separated relays to run: "+strings.Join(relayKinds, ", "))
	procs := flag.String("procs", "0,1", "comma-separated GOMAXPROCS values to run each relay with; 0 is Go's default (the CPU count)")
	syscalls := flag.Bool("syscalls", true, "after the rounds, one pass with `perf stat` attached to each proxy counting system calls per transaction")
	sysDuration := flag.Duration("syscalls-duration", 2*time.Second, "pgbench run length of the system-call pass")
	out := flag.String("out", "", "also write the report (markdown) to this file")
	flag.Parse()

	o := options{rounds: *rounds, duration: *duration, syscalls: *syscalls, sysDuration: *sysDuration, out: *out}
	var err error
	if o.clients, err = benchutil.ParseInts(*clients, 1); err != nil {
		fatal(fmt.Errorf("-clients: %w", err))
	}
	if o.protocols, err = benchutil.ParseList(*protocols, "simple", "extended", "prepared"); err != nil {
		fatal(fmt.Errorf("-protocols: %w", err))
	}
	ks, err := benchutil.ParseList(*kinds, relayKinds...)
	if err != nil {
		fatal(fmt.Errorf("-relays: %w", err))
	}
	ps, err := benchutil.ParseInts(*procs, 0)
	if err != nil {
		fatal(fmt.Errorf("-procs: %w", err))
	}
	for _, k := range ks {
		for _, p := range ps {
			o.relays = append(o.relays, relay{kind: k, procs: p})
		}
	}
	switch {
	case o.rounds < 1:
		fatal(errors.New("-rounds must be at least 1"))
	case o.duration < time.Second || o.sysDuration < time.Second:
		fatal(errors.New("-duration and -syscalls-duration must be at least 1s (pgbench -T takes whole seconds)"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "iofloor:", err)
	os.Exit(1)
}

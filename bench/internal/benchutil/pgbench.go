package benchutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/pgtenant/pgtenant/internal/demo"
)

var (
	tpsRE     = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	latencyRE = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	txRE      = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	// processedNoneRE matches a run that ended before any transaction did.
	processedNoneRE = regexp.MustCompile(`(?m)^number of transactions actually processed: 0$`)
)

// Pgbench runs select-only pgbench against 127.0.0.1:port and returns its
// TPS (without connection time), average latency in milliseconds and the
// transactions it completed. Each run opens fresh connections, so nothing
// carries over between targets.
func Pgbench(ctx context.Context, port int, user, password, protocol string, clients int, duration time.Duration) (tps, latencyMS float64, txs int64, err error) {
	cmd := exec.CommandContext(ctx, "pgbench", "-n", "-S",
		"-M", protocol,
		"-c", strconv.Itoa(clients),
		"-j", strconv.Itoa(min(clients, 2)), // two client threads: the machine is shared with the servers
		"-T", strconv.Itoa(int(duration.Round(time.Second).Seconds())),
		"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user, demo.Database)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return 0, 0, 0, ctx.Err()
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pgbench: %v\n%s", err, TailLines(string(out), 10))
	}
	if processedNoneRE.Match(out) {
		// pgbench's -T clock includes connecting; logging 64 clients in
		// (a backend fork and SCRAM each) can take a short run's whole time
		// on a busy machine.
		return 0, 0, 0, fmt.Errorf("pgbench completed no transaction in %s: connecting %d clients probably took the whole run; use a longer -duration", duration, clients)
	}
	m := tpsRE.FindSubmatch(out)
	l := latencyRE.FindSubmatch(out)
	n := txRE.FindSubmatch(out)
	if m == nil || l == nil || n == nil {
		return 0, 0, 0, fmt.Errorf("no tps, latency or transaction count in pgbench output:\n%s", out)
	}
	if tps, err = strconv.ParseFloat(string(m[1]), 64); err != nil {
		return 0, 0, 0, err
	}
	if latencyMS, err = strconv.ParseFloat(string(l[1]), 64); err != nil {
		return 0, 0, 0, err
	}
	txs, err = strconv.ParseInt(string(n[1]), 10, 64)
	return tps, latencyMS, txs, err
}

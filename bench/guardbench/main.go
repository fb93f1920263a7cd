// Command guardbench measures what the statement guard costs: it starts a
// throwaway PostgreSQL with pgbench's tables, two pgtenant proxies in front
// of it (guard on, guard off for the same tenant), and runs pgbench
// select-only with the simple protocol against both, interleaved, several
// rounds, and prints the median TPS of each and their ratio.
//
//	go run ./bench/guardbench -rounds 5 -duration 10s -clients 8
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds")
	duration := flag.Duration("duration", 10*time.Second, "pgbench run length per round and target")
	clients := flag.Int("clients", 8, "pgbench clients")
	protocol := flag.String("protocol", "simple", "pgbench -M: simple, extended or prepared")
	flag.Parse()
	if err := run(*rounds, *duration, *clients, *protocol); err != nil {
		fmt.Fprintln(os.Stderr, "guardbench:", err)
		os.Exit(1)
	}
}

func run(rounds int, duration time.Duration, clients int, protocol string) error {
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := benchutil.SetupPgbench(ctx, c); err != nil {
		return err
	}

	guardOn, err := startProxy(c, true)
	if err != nil {
		return err
	}
	guardOff, err := startProxy(c, false)
	if err != nil {
		return err
	}
	targets := []struct {
		name string
		port int
		user string
		pw   string
	}{
		{"direct", c.Port, demo.RLSRole, demo.RLSPassword},
		{"pgtenant guard off", guardOff, demo.TenantA.User, demo.TenantA.Password},
		{"pgtenant guard on", guardOn, demo.TenantA.User, demo.TenantA.Password},
	}
	results := make([][]float64, len(targets))
	for r := 0; r < rounds; r++ {
		for i, t := range targets {
			tps, err := pgbench(t.port, t.user, t.pw, clients, duration, protocol)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			results[i] = append(results[i], tps)
			fmt.Fprintf(os.Stderr, "round %d %-20s %8.0f tps\n", r+1, t.name, tps)
		}
	}
	fmt.Printf("pgbench -S -M %s -c %d, %d rounds of %s, medians:\n", protocol, clients, rounds, duration)
	med := make([]float64, len(targets))
	for i, t := range targets {
		med[i] = benchutil.Median(results[i])
		fmt.Printf("  %-20s %8.0f tps\n", t.name, med[i])
	}
	fmt.Printf("guard on / guard off: %.3f (guard overhead %.1f%%)\n", med[2]/med[1], 100*(1-med[2]/med[1]))
	fmt.Printf("guard on / direct:    %.3f\n", med[2]/med[0])
	return nil
}

func startProxy(c *pgcluster.Cluster, guard bool) (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	cfg := &config.Config{
		Listen:         ln.Addr().String(),
		Upstream:       c.URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		TenantSetting:  "app.tenant_id",
		ConnectTimeout: config.Duration{Duration: 10 * time.Second},
		LogLevel:       "error",
		LogFormat:      "text",
		Users:          []config.User{{Name: demo.TenantA.User, Password: demo.TenantA.Password, Tenant: demo.TenantA.ID, Guard: &guard}},
	}
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return 0, err
	}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func pgbench(port int, user, password string, clients int, duration time.Duration, protocol string) (float64, error) {
	cmd := exec.Command("pgbench", "-n", "-S", "-M", protocol, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(duration.Seconds())), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user, demo.Database)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps in pgbench output:\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

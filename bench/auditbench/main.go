// Command auditbench measures what the audit log costs: it starts a
// throwaway PostgreSQL with pgbench's tables, two pgtenant proxies in front
// of it (audit log off, audit log on writing to a file, every statement
// sampled), and runs pgbench select-only against both, interleaved, several
// rounds, for each protocol asked: simple (each statement's text differs by
// its literal, so each is fingerprinted anew) and prepared (one text,
// cached). It prints the median TPS of each and their ratio.
//
//	go run ./bench/auditbench -rounds 3 -duration 10s -clients 8 -protocols simple,prepared
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
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

func main() {
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	duration := flag.Duration("duration", 10*time.Second, "pgbench run length per round and target")
	clients := flag.Int("clients", 8, "pgbench clients")
	protocols := flag.String("protocols", "simple,prepared", "pgbench -M values, comma-separated")
	flag.Parse()
	if err := run(*rounds, *duration, *clients, strings.Split(*protocols, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "auditbench:", err)
		os.Exit(1)
	}
}

func run(rounds int, duration time.Duration, clients int, protocols []string) error {
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := benchutil.SetupPgbench(ctx, c); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "auditbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	auditPath := filepath.Join(dir, "audit.jsonl")
	off, err := startProxy(c, nil)
	if err != nil {
		return err
	}
	on, err := startProxy(c, &config.Audit{Output: auditPath})
	if err != nil {
		return err
	}
	targets := []struct {
		name string
		port int
	}{{"audit off", off}, {"audit on", on}}
	for _, protocol := range protocols {
		results := make([][]float64, len(targets))
		for r := 0; r < rounds; r++ {
			for i, t := range targets {
				tps, err := pgbench(t.port, clients, duration, protocol)
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				results[i] = append(results[i], tps)
				fmt.Fprintf(os.Stderr, "%s round %d %-10s %8.0f tps\n", protocol, r+1, t.name, tps)
			}
		}
		fmt.Printf("pgbench -S -M %s -c %d, %d interleaved rounds of %s, medians: audit off %.0f tps, audit on %.0f tps, on/off %.3f\n",
			protocol, clients, rounds, duration, benchutil.Median(results[0]), benchutil.Median(results[1]),
			benchutil.Median(results[1])/benchutil.Median(results[0]))
	}
	if fi, err := os.Stat(auditPath); err == nil {
		fmt.Printf("audit log written: %d bytes\n", fi.Size())
	}
	return nil
}

func startProxy(c *pgcluster.Cluster, audit *config.Audit) (int, error) {
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
		Users:          []config.User{{Name: demo.TenantA.User, Password: demo.TenantA.Password, Tenant: demo.TenantA.ID}},
		Audit:          audit,
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

func pgbench(port, clients int, duration time.Duration, protocol string) (float64, error) {
	cmd := exec.Command("pgbench", "-n", "-S", "-M", protocol, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(duration.Seconds())), "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", demo.TenantA.User, demo.Database)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+demo.TenantA.Password)
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

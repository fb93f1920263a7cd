package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// runDemo starts a throwaway PostgreSQL with the README's schema and two
// tenants, puts the proxy in front of it and waits for Ctrl-C.
func runDemo(args []string, stdout, stderr io.Writer) int {
	listen := "127.0.0.1:6432"
	if len(args) == 2 && args[0] == "--listen" {
		listen = args[1]
	} else if len(args) != 0 {
		fmt.Fprintln(stderr, "usage: pgtenant demo [--listen host:port]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(stdout, "Starting a throwaway PostgreSQL...")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	defer func() {
		cluster.Stop()
		fmt.Fprintln(stdout, "Stopped PostgreSQL and removed", cluster.Dir)
	}()
	if err := demo.Setup(ctx, cluster); err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: setting up the demo schema: %v\n", err)
		return 1
	}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		// Port taken (a real pgtenant or PgBouncer?): take any free one.
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
			return 1
		}
	}
	cfg := &config.Config{
		Listen:         ln.Addr().String(),
		Upstream:       cluster.URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		TenantSetting:  "app.tenant_id",
		ConnectTimeout: config.Duration{Duration: 10 * time.Second},
		LogLevel:       "info",
		LogFormat:      "text",
	}
	for _, t := range []demo.Tenant{demo.TenantA, demo.TenantB} {
		v, err := auth.NewVerifier(t.Password)
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
			return 1
		}
		cfg.Users = append(cfg.Users, config.User{Name: t.User, Password: v, Tenant: t.ID})
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := NewServer(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	host, port, _ := net.SplitHostPort(ln.Addr().String())
	fmt.Fprintf(stdout, `
pgtenant is listening on %s, in front of PostgreSQL on 127.0.0.1:%d (database %q, role %q, row-level security forced).

Each tenant sees only its own projects. Paste one of these into another terminal:

`, ln.Addr(), cluster.Port, demo.Database, demo.RLSRole)
	for _, t := range []demo.Tenant{demo.TenantA, demo.TenantB} {
		fmt.Fprintf(stdout, "  # tenant %s (%s)\n  PGPASSWORD=%s psql \"host=%s port=%s user=%s dbname=%s\" -c 'SELECT * FROM projects'\n\n",
			t.Name, t.ID, t.Password, host, port, t.User, demo.Database)
	}
	fmt.Fprintf(stdout, "Drop the -c option for an interactive session. Inserting a row for the other tenant is refused by the policy.\nPress Ctrl-C to stop and clean up.\n")
	<-ctx.Done()
	fmt.Fprintln(stdout, "\nShutting down...")
	return 0
}

package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// demoAdminListen is where the demo serves the admin endpoints unless the
// port is taken: the default of `pgtenant status --admin`.
const demoAdminListen = "127.0.0.1:9187"

// runDemo starts a throwaway PostgreSQL with the README's schema, two
// tenants in its shared tables, one in a schema of its own and one in a
// database of its own, writes a config for it and runs the proxy from that
// config, as `pgtenant --config` would, until Ctrl-C drains it.
func runDemo(args []string, stdout, stderr io.Writer) int {
	listen := "127.0.0.1:6432"
	if len(args) == 2 && args[0] == "--listen" {
		listen = args[1]
	} else if len(args) != 0 {
		fmt.Fprintln(stderr, "usage: pgtenant demo [--listen host:port]")
		return 2
	}
	// Until the proxy serves, a signal cancels the start-up.
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
	if err := demo.SetupPlacements(ctx, cluster); err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: setting up the demo placements: %v\n", err)
		return 1
	}

	// Port taken (a real pgtenant or PgBouncer?): any free one will do.
	ln, err := listenOrAny(listen)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	defer ln.Close()
	adminLn, err := listenOrAny(demoAdminListen)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	defer adminLn.Close()

	configPath := filepath.Join(cluster.Dir, "pgtenant.yaml")
	pidFile := filepath.Join(cluster.Dir, "pgtenant.pid")
	if err := writeDemoConfig(configPath, ln.Addr().String(), adminLn.Addr().String(), cluster); err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	// Read back by the real loader: what the demo runs is what the file says.
	cfg, err := config.Load(configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	log := newLogger(cfg, stderr)
	srv, err := NewServer(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	stopAdmin, err := startAdmin(cfg, srv, log, adminLn)
	if err != nil {
		srv.Close()
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}
	defer stopAdmin()
	if err := writePIDFile(pidFile); err != nil {
		srv.Close()
		fmt.Fprintf(stderr, "pgtenant demo: %v\n", err)
		return 1
	}

	// From here on a signal drains, as for `pgtenant --config`. serve's
	// channel is registered before the start-up one is looked at and
	// stopped, so no signal is lost in between.
	signals := notifySignals()
	defer signal.Stop(signals)
	if ctx.Err() != nil {
		srv.Close()
		return 0
	}
	stop()
	printDemoHelp(stdout, cfg, cluster.Port, configPath, pidFile)
	return serve(srv, ln, cfg, configPath, log, signals)
}

// listenOrAny listens on addr, or on any free loopback port if that fails.
func listenOrAny(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// demoTenants are the demo's tenants, each with the placement the help
// describes it by.
var demoTenants = []struct {
	demo.Tenant
	placement string
}{
	{demo.TenantA, fmt.Sprintf("shared tables in database %s, row-level security forced", demo.Database)},
	{demo.TenantB, fmt.Sprintf("shared tables in database %s, row-level security forced", demo.Database)},
	{demo.TenantC, fmt.Sprintf("its own schema %s in database %s, as role %s", demo.SchemaC, demo.Database, demo.RoleC)},
	{demo.TenantD, fmt.Sprintf("its own database %s (upstream %s), row-level security forced", demo.DatabaseD, demo.UpstreamD)},
}

// writeDemoConfig writes the demo's config file: the upstream URL with the
// RLS role's password, tenant D's database as another upstream, the
// placements of tenants C and D, the demo tenants as users (with SCRAM
// verifiers, their passwords in comments) and the admin endpoints.
func writeDemoConfig(path, listen, admin string, cluster *pgcluster.Cluster) error {
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by pgtenant demo; removed with its directory when the demo stops.
# Edit it and run pgtenant reload (see the demo's output) to try a reload.
listen: %s
upstream: %q   # the default upstream: tenants not placed elsewhere
tenant_setting: %s
admin_listen: %s   # /metrics /healthz /readyz /status
shutdown_timeout: 10s   # how long Ctrl-C waits for open transactions
log_level: info
upstreams:
  - name: %s
    url: %q
tenants:   # placements; a tenant not listed lives in the default upstream's shared tables
  %s: {schema: %s, role: %s}   # %s: its own schema
  %s: {upstream: %s}   # %s: its own database
users:
`, listen, cluster.URL(demo.RLSRole, demo.RLSPassword, demo.Database), demo.TenantSetting, admin,
		demo.UpstreamD, cluster.URL(demo.RLSRole, demo.RLSPassword, demo.DatabaseD),
		demo.TenantC.ID, demo.SchemaC, demo.RoleC, demo.TenantC.Name,
		demo.TenantD.ID, demo.UpstreamD, demo.TenantD.Name)
	for _, t := range demoTenants {
		v, err := auth.NewVerifier(t.Password)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "  - name: %s\n    password: %q   # %s, from pgtenant passwd\n    tenant: %s   # %s\n",
			t.User, v, t.Password, t.ID, t.Name)
	}
	// The file holds the upstream password.
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("writing the demo config: %w", err)
	}
	return nil
}

// printDemoHelp prints what to try: psql per tenant, then the operations.
func printDemoHelp(w io.Writer, cfg *config.Config, upstreamPort int, configPath, pidFile string) {
	host, port, _ := net.SplitHostPort(cfg.Listen)
	fmt.Fprintf(w, `
pgtenant is listening on %s, in front of PostgreSQL on 127.0.0.1:%d (role %q, password %q).

Four tenants in the three placements, behind one connection string (database %q):
each sees only its own projects. Paste one of these into another terminal:

`, cfg.Listen, upstreamPort, demo.RLSRole, demo.RLSPassword, demo.Database)
	for _, t := range demoTenants {
		fmt.Fprintf(w, "  # tenant %s (%s): %s\n  PGPASSWORD=%s psql \"host=%s port=%s user=%s dbname=%s\" -c 'SELECT * FROM projects'\n\n",
			t.Name, t.ID, t.placement, t.Password, host, port, t.User, demo.Database)
	}
	fmt.Fprintf(w, `Drop the -c option for an interactive session. Inserting a row for another tenant is refused
by the policy; naming another tenant's schema (SELECT * FROM %[4]s.projects, as acme) by PostgreSQL.

The proxy runs from %[1]s. Operations to try (from the source tree, "go run ." in place of "pgtenant"):

  pgtenant doctor --config %[1]s
  pgtenant status --admin %[2]s
  curl -s http://%[2]s/metrics | grep '^pgtenant_'
  pgtenant reload --pid-file %[3]s

Press Ctrl-C to drain (sessions end with FATAL 57P01, as on SIGTERM), stop and clean up.
`, configPath, cfg.AdminListen, pidFile, demo.SchemaC)
}

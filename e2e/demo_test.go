package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// The README's first command: `pgtenant demo` starts everything, prints psql
// lines that work as printed, one per tenant in each of the three
// placements, writes a config that the operations commands it prints
// (doctor, status, /metrics, reload) work with, and on Ctrl-C drains as
// SIGTERM does (a connected client gets FATAL 57P01) and cleans up. The
// demo runs in session mode (its config has no pool); the test edits the
// config to transaction mode before the reload it runs and checks each
// tenant's placement again through the pools.
func TestDemoCommand(t *testing.T) {
	noLeaks(t)
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.SyncBuffer{}
	cmd.Stderr = io.MultiWriter(&testWriter{t: t}, logs)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	defer func() {
		_ = cmd.Process.Kill()
		for range lines {
		}
		_ = cmd.Wait()
	}()

	var psqlLines, commands []string
	var listen, removed string
	for line := range lines {
		t.Log("demo: " + line)
		if rest, ok := strings.CutPrefix(line, "pgtenant is listening on "); ok {
			listen, _, _ = strings.Cut(rest, ",")
		}
		if strings.Contains(line, "PGPASSWORD=") {
			psqlLines = append(psqlLines, strings.TrimSpace(line))
		}
		if strings.HasPrefix(line, "  pgtenant ") || strings.HasPrefix(line, "  curl ") {
			commands = append(commands, strings.TrimSpace(line))
		}
		if strings.HasPrefix(line, "Press Ctrl-C") {
			break
		}
	}
	demoTenants := []demo.Tenant{demo.TenantA, demo.TenantB, demo.TenantC, demo.TenantD}
	if len(psqlLines) != len(demoTenants) {
		t.Fatalf("demo printed %d psql lines, want %d", len(psqlLines), len(demoTenants))
	}
	for i, line := range psqlLines {
		tn := demoTenants[i]
		out, err := exec.CommandContext(ctx, "bash", "-c", line+" -X -A -t").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		// id|tenant_id|name in shared tables and the tenant's database,
		// id|name in its schema.
		var names []string
		for _, r := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Split(r, "|")
			if len(f) == 3 && f[1] != tn.ID {
				t.Fatalf("tenant %s saw a row of another tenant: %s", tn.Name, r)
			}
			names = append(names, f[len(f)-1])
		}
		if !slices.Equal(names, demo.Projects[tn.ID]) {
			t.Fatalf("%s: tenant %s sees projects %q, want %q", line, tn.Name, names, demo.Projects[tn.ID])
		}
	}
	demoPlacements(ctx, t, listen)

	// A client that stays connected: status lists it, and Ctrl-C must tell
	// it why its session ends.
	pc, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", tenantA.User, tenantA.Password, listen, demo.Database))
	if err != nil {
		t.Fatalf("connecting to the demo on %q: %v", listen, err)
	}
	client := ppHijack(t, pc)
	demoOperations(ctx, t, bin, commands, logs)

	// The same through the transaction pool: the demo's config switched to
	// transaction mode by a reload (demoOperations).
	demoPlacements(ctx, t, listen)
	metrics := httpGet(t, "http://"+demoAdmin(commands)+"/metrics")
	for _, up := range []string{"default", demo.UpstreamD} {
		if want := fmt.Sprintf(`pgtenant_pool_connections{state="idle",upstream=%q} 1`, up); !strings.Contains(metrics, want) {
			t.Errorf("after the reload to transaction mode, the metrics lack %s:\n%s", want, metrics)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = client.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	msg, err := client.fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Severity != "FATAL" || e.Code != "57P01" {
		t.Fatalf("a connected client at Ctrl-C got %#v (%v), want FATAL 57P01", msg, err)
	}
	for line := range lines {
		t.Log("demo: " + line)
		if dir, ok := strings.CutPrefix(line, "Stopped PostgreSQL and removed "); ok {
			removed = dir
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("demo exit: %v", err)
	}
	if removed == "" {
		t.Fatal("demo did not report cleaning up")
	}
	if _, err := os.Stat(removed); !os.IsNotExist(err) {
		t.Fatalf("demo left %s behind (%v)", removed, err)
	}
	if line := sessionEndLine(logs.String()); !strings.Contains(line, `upstream="server shutting down"`) {
		t.Fatalf("the drained session's end is logged as\n%s", line)
	}
}

// demoOperations runs the operations commands the demo printed, as printed
// (with the binary under test for "pgtenant"), while one client of tenant A
// is connected.
func demoOperations(ctx context.Context, t *testing.T, bin string, commands []string, logs *testutil.SyncBuffer) {
	t.Helper()
	if len(commands) != 4 {
		t.Fatalf("demo printed %d operations commands, want 4: %q", len(commands), commands)
	}
	run := func(line string) string {
		t.Helper()
		args := strings.Fields(line)
		out, err := exec.CommandContext(ctx, bin, args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		return string(out)
	}
	doctorLine, statusLine, curlLine, reloadLine := commands[0], commands[1], commands[2], commands[3]

	// The config is one the real loader takes, for the demo's upstream and
	// admin address, and doctor finds the demo's isolation sound.
	configPath, ok := strings.CutPrefix(doctorLine, "pgtenant doctor --config ")
	if !ok {
		t.Fatalf("not a doctor command: %s", doctorLine)
	}
	cfg, err := config.Load(configPath)
	if err != nil {
		t.Fatalf("the demo's config: %v", err)
	}
	admin, _ := strings.CutPrefix(statusLine, "pgtenant status --admin ")
	if cfg.AdminListen != admin || len(cfg.Users) != 4 || !strings.Contains(cfg.Upstream, demo.RLSPassword) {
		t.Fatalf("the demo's config: admin_listen %q (status uses %q), %d users, upstream %q", cfg.AdminListen, admin, len(cfg.Users), cfg.Upstream)
	}
	wantPlacements := map[string]config.Placement{
		demo.TenantA.ID: {Upstream: config.DefaultUpstream},
		demo.TenantB.ID: {Upstream: config.DefaultUpstream},
		demo.TenantC.ID: {Upstream: config.DefaultUpstream, Schema: demo.SchemaC, Role: demo.RoleC},
		demo.TenantD.ID: {Upstream: demo.UpstreamD},
	}
	for id, want := range wantPlacements {
		if got := cfg.Placement(id); got != want {
			t.Errorf("the demo's config places %s at %+v, want %+v", id, got, want)
		}
	}
	// doctor checks each placement and finds nothing (exit status 0: run
	// fails otherwise).
	out := run(doctorLine)
	for _, want := range []string{
		"upstream default, shared tables (tenant " + demo.TenantA.ID + ", tenant " + demo.TenantB.ID + "):\n  no problems\n",
		"upstream default, schema per tenant (tenant " + demo.TenantC.ID + " in schema " + demo.SchemaC + " as role " + demo.RoleC + "):\n  no problems\n",
		"upstream " + demo.UpstreamD + ", database per tenant (tenant " + demo.TenantD.ID + "):\n  no problems\n",
		"\nno problems found\n",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("%s: output lacks %q:\n%s", doctorLine, want, out)
		}
	}
	if out := run(statusLine); !strings.Contains(out, tenantA.ID) || !strings.Contains(out, "1 sessions") {
		t.Fatalf("%s:\n%s", statusLine, out)
	}

	// curl may be missing: the URL is fetched here.
	if body := httpGet(t, strings.Fields(curlLine)[2]); !strings.Contains(body, `pgtenant_client_connections{state="active"} 1`) {
		t.Fatalf("%s:\n%s", curlLine, body)
	}

	// To transaction mode: the reload brings a pool per upstream.
	f, err := os.OpenFile(configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("pool: {mode: transaction}\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	run(reloadLine)
	eventually(t, 10*time.Second, "the demo to reload its config", func() bool {
		return strings.Contains(logs.String(), "configuration reloaded")
	})
}

// demoPlacements logs in as each demo tenant through the running demo
// (listening on listen): each is where its placement says (database,
// role), sees its own projects only, and reaches none of the others' data
// by naming it.
func demoPlacements(ctx context.Context, t *testing.T, listen string) {
	t.Helper()
	initech := demo.SchemaC + ".projects"
	for _, x := range []struct {
		tn       demo.Tenant
		db, user string
		other    string // another placement's table
		code     string // what naming it gets
	}{
		{demo.TenantA, demo.Database, demo.RLSRole, initech, "42501"}, // permission denied for schema
		{demo.TenantB, demo.Database, demo.RLSRole, initech, "42501"},
		{demo.TenantC, demo.Database, demo.RoleC, "public.projects", "42501"}, // permission denied for table
		{demo.TenantD, demo.DatabaseD, demo.RLSRole, initech, "42P01"},        // not in its database
	} {
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", x.tn.User, x.tn.Password, listen, demo.Database))
		if err != nil {
			t.Fatalf("%s: %v", x.tn.Name, err)
		}
		got := queryRows(t, conn, "SELECT current_database(), current_user, current_setting('app.tenant_id'), string_agg(name, ',' ORDER BY id) FROM projects")
		want := []string{x.db, x.user, x.tn.ID, strings.Join(demo.Projects[x.tn.ID], ",")}
		if len(got) != 1 || !slices.Equal(got[0], want) {
			t.Errorf("%s sees %q, want %q", x.tn.Name, got, want)
		}
		if err := execErr(conn, "SELECT count(*) FROM "+x.other); pgCode(err) != x.code {
			t.Errorf("%s: SELECT from %s: %v, want SQLSTATE %s", x.tn.Name, x.other, err, x.code)
		}
		conn.Close(ctx)
	}
}

// httpGet returns the body of a 200 answer to a GET of url.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%s", url, resp.Status, err, body)
	}
	return string(body)
}

// demoAdmin is the admin address of the demo's status command.
func demoAdmin(commands []string) string {
	for _, c := range commands {
		if a, ok := strings.CutPrefix(c, "pgtenant status --admin "); ok {
			return a
		}
	}
	return ""
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// buildBinary builds the pgtenant command once for the package.
func buildBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgtenant-e2e-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "pgtenant")
		build := exec.Command("go", "build", "-o", binaryPath, ".")
		build.Dir = ".."
		if out, err := build.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

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
// lines that work as printed, writes a config that the operations commands
// it prints (doctor, status, /metrics, reload) work with, and on Ctrl-C
// drains as SIGTERM does (a connected client gets FATAL 57P01) and cleans up.
// The demo runs in session mode only: its config has no pool.
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
	if len(psqlLines) != 2 {
		t.Fatalf("demo printed %d psql lines, want 2", len(psqlLines))
	}
	want := []string{"acme", "globex"}
	for i, line := range psqlLines {
		out, err := exec.CommandContext(ctx, "bash", "-c", line+" -X -A -t").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		rows := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(rows) != 3 {
			t.Fatalf("%s: got %d rows, want 3:\n%s", line, len(rows), out)
		}
		for _, r := range rows {
			if !strings.Contains(r, tenantIDFor(want[i])) {
				t.Fatalf("tenant %s saw a row of another tenant: %s", want[i], r)
			}
		}
	}

	// A client that stays connected: status lists it, and Ctrl-C must tell
	// it why its session ends.
	pc, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", tenantA.User, tenantA.Password, listen, demo.Database))
	if err != nil {
		t.Fatalf("connecting to the demo on %q: %v", listen, err)
	}
	client := ppHijack(t, pc)
	demoOperations(ctx, t, bin, commands, logs)

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
	if cfg.AdminListen != admin || len(cfg.Users) != 2 || !strings.Contains(cfg.Upstream, demo.RLSPassword) {
		t.Fatalf("the demo's config: admin_listen %q (status uses %q), %d users, upstream %q", cfg.AdminListen, admin, len(cfg.Users), cfg.Upstream)
	}
	if out := run(doctorLine); !strings.Contains(out, "no problems found") {
		t.Fatalf("%s:\n%s", doctorLine, out)
	}
	if out := run(statusLine); !strings.Contains(out, tenantA.ID) || !strings.Contains(out, "1 sessions") {
		t.Fatalf("%s:\n%s", statusLine, out)
	}

	// curl may be missing: the URL is fetched here.
	url := strings.Fields(curlLine)[2]
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("%s: %v", curlLine, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `pgtenant_client_connections{state="active"} 1`) {
		t.Fatalf("%s: %s %v\n%s", curlLine, resp.Status, err, body)
	}

	run(reloadLine)
	eventually(t, 10*time.Second, "the demo to reload its config", func() bool {
		return strings.Contains(logs.String(), "configuration reloaded")
	})
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

func tenantIDFor(name string) string {
	if name == tenantA.Name {
		return tenantA.ID
	}
	return tenantB.ID
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The README's first command: `pgtenant demo` starts everything, prints psql
// lines that work as printed, and cleans up on Ctrl-C.
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
	cmd.Stderr = &testWriter{t: t}
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

	var psqlLines []string
	var removed string
	for line := range lines {
		t.Log("demo: " + line)
		if strings.Contains(line, "PGPASSWORD=") {
			psqlLines = append(psqlLines, strings.TrimSpace(line))
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

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
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

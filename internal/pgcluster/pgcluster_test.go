package pgcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgtenant/pgtenant/internal/testutil"
)

const helperEnv = "PGCLUSTER_TEST_HELPER"

func TestMain(m *testing.M) {
	// The crash test re-executes this binary as the process that owns a
	// cluster and then gets killed.
	if os.Getenv(helperEnv) == "1" {
		helperMain()
		return
	}
	RunMain(m, Options{LogStatements: true}, func(c *Cluster) error {
		return c.Exec(context.Background(), "postgres", "CREATE TABLE setup_marker (x int)")
	})
}

func helperMain() {
	c, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Printf("READY %s %d\n", c.Dir, c.Port)
	select {} // wait to be killed
}

func queryOne(ctx context.Context, t *testing.T, url, sql string) string {
	t.Helper()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatalf("%s: %v", sql, res.Err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		t.Fatalf("%s: want one value, got %v", sql, res.Rows)
	}
	return string(res.Rows[0][0])
}

func TestShared(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	c := Shared()
	if got := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT count(*) FROM setup_marker"); got != "0" {
		t.Fatalf("setup did not run: %s", got)
	}
	if err := c.Exec(ctx, "postgres", "SELECT 'logged-' || 'marker'"); err != nil {
		t.Fatal(err)
	}
	log, err := c.LogContents()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log, "statement: SELECT 'logged-' || 'marker'") {
		t.Fatalf("LogStatements: statement not in log:\n%s", log)
	}
}

func TestLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	c, err := Start(ctx, Options{ExtraConf: []string{"application_name = 'from_extra_conf'"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()

	if c.Host != "127.0.0.1" || c.Port <= 0 {
		t.Fatalf("bad address %s:%d", c.Host, c.Port)
	}
	if got := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT current_setting('application_name')"); got != "from_extra_conf" {
		t.Errorf("ExtraConf not applied: application_name = %q", got)
	}
	if got := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT current_setting('listen_addresses')"); got != "127.0.0.1" {
		t.Errorf("listen_addresses = %q", got)
	}

	// Multi-statement Exec, and URL escaping of awkward credentials.
	const pw = "p@ss:w/rd %?#&"
	err = c.Exec(ctx, "postgres", `CREATE ROLE "we ird" LOGIN PASSWORD 'p@ss:w/rd %?#&';
		CREATE DATABASE "my db"`)
	if err == nil {
		t.Fatal("CREATE DATABASE in a multi-statement Exec should fail (implicit transaction)")
	}
	if err := c.Exec(ctx, "postgres", `CREATE ROLE "we ird" LOGIN PASSWORD 'p@ss:w/rd %?#&'; SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "postgres", `CREATE DATABASE "my db" OWNER "we ird"`); err != nil {
		t.Fatal(err)
	}
	if got := queryOne(ctx, t, c.URL("we ird", pw, "my db"), "SELECT current_user || '/' || current_database()"); got != "we ird/my db" {
		t.Errorf("got %q", got)
	}

	// TCP requires the password.
	if _, err := pgconn.Connect(ctx, c.URL(SuperUser, "wrong", "postgres")); err == nil {
		t.Error("connect with wrong password succeeded")
	}
	if err := c.Exec(ctx, "postgres", "SELECT nonsense_column"); err == nil {
		t.Error("Exec of bad SQL returned nil")
	} else {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42703" {
			t.Errorf("want undefined_column PgError, got %v", err)
		}
	}

	// Restart keeps data and port.
	if err := c.Exec(ctx, "postgres", "CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	port := c.Port
	if err := c.StopServerOnly(); err != nil {
		t.Fatal(err)
	}
	if err := c.StopServerOnly(); err != nil {
		t.Fatalf("second StopServerOnly: %v", err)
	}
	if _, err := pgconn.Connect(ctx, c.SuperURL("postgres")); err == nil {
		t.Fatal("connect succeeded while server stopped")
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("data dir gone after StopServerOnly: %v", err)
	}
	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer(ctx); err == nil {
		t.Error("StartServer on a running server should fail")
	}
	if c.Port != port {
		t.Errorf("port changed %d -> %d", port, c.Port)
	}
	if got := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT x FROM survives"); got != "42" {
		t.Errorf("after restart got %q", got)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT x FROM survives"); got != "42" {
		t.Errorf("after Restart got %q", got)
	}

	// Stop removes everything and is idempotent.
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("Dir still there after Stop: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.StartServer(ctx); err == nil {
		t.Error("StartServer after Stop should fail")
	}
	if _, err := net.DialTimeout("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), time.Second); err == nil {
		t.Error("port still accepting after Stop")
	}
}

func TestStartFailureCleansUp(t *testing.T) {
	defer goleak.VerifyNone(t)
	var dir string
	opts := Options{ExtraConf: []string{"no_such_setting = 1"}}
	opts.created = func(d string) {
		dir = d
		// Another test package starting a cluster at the same moment: its
		// directory must not count as this start's leftover.
		other, err := os.MkdirTemp(filepath.Dir(d), dirPrefix)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { os.RemoveAll(other) })
	}
	_, err := Start(testutil.Context(t), opts)
	if err == nil {
		t.Fatal("Start with a bad setting succeeded")
	}
	if !strings.Contains(err.Error(), "no_such_setting") {
		t.Errorf("error lacks the server log: %v", err)
	}
	if dir == "" {
		t.Fatal("Start did not report the directory it created")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s left behind (%v)", dir, err)
	}
}

// TestServerDiesWithOwner checks the crash guarantee: killing the process
// that started a cluster shuts the server down, and the next Start removes
// the directory it left.
func TestServerDiesWithOwner(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signal is Linux-only")
	}
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper: %v", err)
	}
	var dir string
	var port int
	if _, err := fmt.Sscanf(line, "READY %s %d", &dir, &port); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("helper said %q", line)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err != nil {
		t.Fatalf("helper's server not reachable: %v", err)
	} else {
		conn.Close()
	}

	_ = cmd.Process.Kill() // SIGKILL: no chance to clean up
	_ = cmd.Wait()

	pidFile := filepath.Join(dir, "data", "postmaster.pid")
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, statErr := os.Stat(pidFile)
		conn, dialErr := net.DialTimeout("tcp", addr, time.Second)
		if dialErr == nil {
			conn.Close()
		}
		if dialErr != nil && os.IsNotExist(statErr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server outlived its owner (dial err %v, postmaster.pid stat %v)", dialErr, statErr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	sweepStale(filepath.Dir(dir))
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		_ = os.RemoveAll(dir)
		t.Fatalf("stale dir not swept: %v", err)
	}
}

func TestMissingBinaries(t *testing.T) {
	if err := MissingBinariesError(); err != nil {
		t.Fatalf("binaries should be found here: %v", err)
	}
	t.Setenv(BinDirEnv, t.TempDir())
	err := MissingBinariesError()
	if !errors.Is(err, ErrMissingBinaries) {
		t.Fatalf("want ErrMissingBinaries, got %v", err)
	}
	if !strings.Contains(err.Error(), "apt-get install -y postgresql") {
		t.Errorf("no install hint in %q", err)
	}
	if _, err := Start(context.Background(), Options{}); !errors.Is(err, ErrMissingBinaries) {
		t.Errorf("Start: want ErrMissingBinaries, got %v", err)
	}
}

func TestURL(t *testing.T) {
	c := &Cluster{Host: "127.0.0.1", Port: 5999}
	got := c.URL("u", "a b@c:/%?", "d/b ?")
	ucfg, err := pgconn.ParseConfig(got)
	if err != nil {
		t.Fatalf("URL %q does not parse: %v", got, err)
	}
	if ucfg.User != "u" || ucfg.Password != "a b@c:/%?" || ucfg.Database != "d/b ?" || ucfg.Port != 5999 || ucfg.TLSConfig != nil {
		t.Errorf("URL %q parsed as user=%q pw=%q db=%q port=%d", got, ucfg.User, ucfg.Password, ucfg.Database, ucfg.Port)
	}
	cfg, err := pgconn.ParseConfig(c.SuperURL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != SuperUser || cfg.Password != SuperPassword || cfg.Database != "postgres" || cfg.TLSConfig != nil {
		t.Errorf("SuperURL parsed as %+v", cfg)
	}
}

func TestDirVersion(t *testing.T) {
	for in, want := range map[string]int{
		"/usr/lib/postgresql/15/bin": 15,
		"/usr/pgsql-16/bin":          16,
		"/usr/local/pgsql/bin":       0,
	} {
		if got := dirVersion(in); got != want {
			t.Errorf("dirVersion(%q) = %d, want %d", in, got, want)
		}
	}
}

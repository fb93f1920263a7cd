// Package pgcluster starts throwaway PostgreSQL clusters for tests and for
// `pgtenant demo`.
//
// Each cluster lives in its own temporary directory (data directory, unix
// socket and server log) and listens on 127.0.0.1 on a free port. The
// postgres process is a direct child of the calling process and is started
// with a parent-death signal, so a test binary that crashes, panics, times
// out or is killed takes its server down with it (SIGQUIT, i.e. immediate
// shutdown). Directories left behind by such runs are swept by the next Start.
//
// PostgreSQL refuses to run as root; when the caller is root the server runs
// as the OS user "postgres".
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// SuperUser is the bootstrap superuser created by initdb.
	SuperUser = "postgres"
	// SuperPassword is SuperUser's password; TCP connections require it.
	SuperPassword = "pgcluster-super-pw"

	// defaultStartTimeout bounds startup when ctx has no deadline, so a
	// wedged server cannot hang a test run.
	defaultStartTimeout = 60 * time.Second
	// stopTimeout is how long a signalled server gets before SIGKILL.
	stopTimeout = 30 * time.Second

	dirPrefix = "pgcluster-"
	ownerFile = "owner.pid"
)

// Options configures a cluster.
type Options struct {
	// LogStatements sets log_statement=all so tests can read what ran upstream.
	LogStatements bool
	// ExtraConf holds extra "name = value" lines for postgresql.conf; they
	// come last, so they override the harness defaults.
	ExtraConf []string

	// created, when set, is told the directory Start made, before anything
	// can fail: a test can then check that exactly that one is removed,
	// whatever other processes create next to it.
	created func(dir string)
}

// Cluster is a running (or stopped) throwaway PostgreSQL cluster.
type Cluster struct {
	Dir     string // temp dir holding data dir, socket and log; removed by Stop
	Host    string // "127.0.0.1"
	Port    int    // TCP port picked by the harness
	LogFile string // server log (postgres stderr)

	binDir string
	cred   *syscall.Credential // nil unless the server must run as another user

	mu      sync.Mutex
	cmd     *exec.Cmd // running postmaster, nil when stopped
	removed bool
}

// Start creates and starts a new cluster. On failure everything is cleaned up
// and the error includes the tail of the server log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	base := tempBase(cred != nil)
	sweepStale(base)
	dir, err := os.MkdirTemp(base, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if opts.created != nil {
		opts.created(dir)
	}
	c := &Cluster{
		Dir:     dir,
		Host:    "127.0.0.1",
		LogFile: filepath.Join(dir, "server.log"),
		binDir:  bin,
		cred:    cred,
	}
	fail := func(err error) (*Cluster, error) {
		_ = c.Stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return fail(fmt.Errorf("pgcluster: %w", err))
	}
	if err := c.chown(dir); err != nil {
		return fail(err)
	}
	if err := c.initdb(ctx); err != nil {
		return fail(err)
	}
	// Appending an include once lets each start attempt rewrite our settings
	// (the port changes when a picked port turns out to be taken).
	if err := appendFile(filepath.Join(c.dataDir(), "postgresql.conf"), "\ninclude 'pgcluster.conf'\n"); err != nil {
		return fail(err)
	}
	// Another process can grab the port between picking and binding; retry
	// with a fresh port in that case only.
	for attempt := 0; ; attempt++ {
		if c.Port, err = freePort(); err != nil {
			return fail(err)
		}
		if err := c.writeConf(opts); err != nil {
			return fail(err)
		}
		err = c.StartServer(ctx)
		if err == nil {
			return c, nil
		}
		if attempt >= 2 || !strings.Contains(err.Error(), "Address already in use") {
			return fail(err)
		}
	}
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

func (c *Cluster) initdb(ctx context.Context) error {
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(SuperPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	defer os.Remove(pwfile)
	if err := c.chown(pwfile); err != nil {
		return err
	}
	// TCP needs a password (the proxy's auth paths are what tests exercise);
	// the unix socket sits in a 0700 dir, so trust there only serves
	// debugging with psql -h <Dir>. --no-sync: the cluster is disposable.
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir(),
		"-U", SuperUser,
		"--pwfile", pwfile,
		"--auth-host=scram-sha-256",
		"--auth-local=trust",
		"-E", "UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	c.prepare(cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgcluster: initdb: %w\n%s", err, tail(string(out), 30))
	}
	return nil
}

func (c *Cluster) writeConf(opts Options) error {
	lines := []string{
		"listen_addresses = '127.0.0.1'",
		"port = " + strconv.Itoa(c.Port),
		"unix_socket_directories = '" + c.Dir + "'",
		"logging_collector = off",
		"log_line_prefix = '%m [%p] %q%u@%d '",
		// Skipping fsync makes DDL and shutdown much faster. Commits are
		// still written to the OS before returning (synchronous_commit
		// stays on), so data survives StopServerOnly's immediate shutdown.
		"fsync = off",
		"full_page_writes = off",
		"shared_buffers = 32MB",
	}
	if opts.LogStatements {
		lines = append(lines, "log_statement = 'all'")
	}
	lines = append(lines, opts.ExtraConf...)
	p := filepath.Join(c.dataDir(), "pgcluster.conf")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.chown(p)
}

// StartServer starts the server of an existing cluster on its port, e.g.
// after StopServerOnly, and waits until it accepts connections.
func (c *Cluster) StartServer(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("pgcluster: cluster was stopped and removed")
	}
	if c.cmd != nil {
		return errors.New("pgcluster: server already running")
	}
	logf, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	// Only this start's output matters for the error message.
	var logStart int64
	if fi, err := logf.Stat(); err == nil {
		logStart = fi.Size()
	}
	if err := c.chown(c.LogFile); err != nil {
		logf.Close()
		return err
	}
	// Not CommandContext: ctx bounds startup only, not the server's life.
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), "-D", c.dataDir())
	c.prepare(cmd)
	// An *os.File needs no copying goroutine, which keeps goleak quiet in
	// tests that share the cluster.
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group: a terminal ^C must not shut the server down behind
	// the test's back; dieWithParent covers the test process ending instead.
	cmd.SysProcAttr.Setpgid = true
	dieWithParent(cmd.SysProcAttr)
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	c.cmd = cmd
	if err := c.waitReady(ctx); err != nil {
		_ = c.stopLocked(syscall.SIGQUIT)
		return fmt.Errorf("%w\nserver log:\n%s", err, c.logTailFrom(logStart))
	}
	return nil
}

// waitReady polls with real connections (not pg_isready) because "accepting
// connections" must include authentication working for SuperUser.
func (c *Cluster) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	cfg, err := pgconn.ParseConfig(c.SuperURL("postgres"))
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	cfg.ConnectTimeout = time.Second
	var lastErr error
	for {
		if exited(c.cmd.Process.Pid) {
			return fmt.Errorf("pgcluster: postgres exited during startup")
		}
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err == nil {
			return conn.Close(ctx)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgcluster: server not ready: %w (last error: %v)", ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StopServerOnly stops the server abruptly (immediate shutdown, like
// `pg_ctl stop -m immediate`) but keeps the data directory, so fault tests
// can simulate an upstream outage and then call StartServer.
func (c *Cluster) StopServerOnly() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(syscall.SIGQUIT)
}

// Restart is StopServerOnly followed by StartServer.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.StopServerOnly(); err != nil {
		return err
	}
	return c.StartServer(ctx)
}

// Stop stops the server and removes Dir. It is idempotent.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.stopLocked(syscall.SIGQUIT)
	if !c.removed {
		if rerr := os.RemoveAll(c.Dir); rerr != nil && err == nil {
			err = fmt.Errorf("pgcluster: %w", rerr)
		}
		c.removed = true
	}
	return err
}

// stopLocked signals the postmaster and reaps it. Immediate shutdown is
// what `pg_ctl stop -m immediate` sends; it is plenty for disposable data
// and the next start just runs a short crash recovery.
func (c *Cluster) stopLocked(sig syscall.Signal) error {
	cmd := c.cmd
	if cmd == nil {
		return nil
	}
	c.cmd = nil
	// ErrProcessDone just means it died on its own; Wait still reaps it.
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = cmd.Process.Kill()
	}
	done := make(chan struct{})
	go func() {
		// The exit status after a shutdown signal is not interesting.
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("pgcluster: postgres did not stop within %s; killed", stopTimeout)
	}
}

// URL returns a connection URL for the cluster over TCP.
func (c *Cluster) URL(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// SuperURL returns a URL connecting as SuperUser.
func (c *Cluster) SuperURL(database string) string {
	return c.URL(SuperUser, SuperPassword, database)
}

// Exec runs sql (possibly several statements, simple protocol) as SuperUser
// in database. Note that several statements run in one implicit
// transaction, so e.g. CREATE DATABASE must be sent on its own.
func (c *Cluster) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgconn.Connect(ctx, c.SuperURL(database))
	if err != nil {
		return fmt.Errorf("pgcluster: connect: %w", err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

// LogContents returns the whole server log.
func (c *Cluster) LogContents() (string, error) {
	b, err := os.ReadFile(c.LogFile)
	return string(b), err
}

func (c *Cluster) logTailFrom(off int64) string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return "(no server log: " + err.Error() + ")"
	}
	if off > 0 && off <= int64(len(b)) {
		b = b[off:]
	}
	return tail(string(b), 40)
}

// prepare sets the environment and, when running as root, the credentials
// shared by every server-side command.
func (c *Cluster) prepare(cmd *exec.Cmd) {
	cmd.Dir = c.Dir // the server user may not be able to read the caller's cwd
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if c.cred != nil {
		cmd.SysProcAttr.Credential = c.cred
	}
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// serverEnv drops PG* variables (PGDATA, PGPORT, ... would silently change
// what the server or initdb does) and pins the C locale so log messages are
// in English for tests that grep them.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// serverCredential returns the credentials of OS user "postgres" when we are
// root (postgres refuses to run as root), nil otherwise.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: running as root needs an OS user \"postgres\" to run the server as (apt-get install -y postgresql creates it, or: useradd --system postgres): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// tempBase picks the parent of cluster dirs. When the server runs as another
// user it must be able to traverse every ancestor; a private $TMPDIR would
// break that, so fall back to /tmp.
func tempBase(otherUser bool) string {
	base := os.TempDir()
	if !otherUser {
		return base
	}
	for d := base; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// sweepStale removes cluster dirs whose owning process is gone (it crashed
// before Stop could run). Dirs whose postmaster still runs are left alone.
func sweepStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, dirPrefix+"*"))
	for _, d := range dirs {
		if !pidFileDead(filepath.Join(d, ownerFile)) {
			continue
		}
		pm := filepath.Join(d, "data", "postmaster.pid")
		if _, err := os.Stat(pm); err == nil && !pidFileDead(pm) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

// pidFileDead reports whether the file's first line is the pid of a process
// that no longer exists. Unreadable or malformed files count as alive, so
// that nothing foreign is deleted.
func pidFileDead(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// freePort asks the kernel for an unused loopback port. It can be taken
// again before postgres binds it; Start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: pick port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

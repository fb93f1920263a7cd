package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// pgbouncerPath is where Debian's package installs the binary.
const pgbouncerPath = "/usr/sbin/pgbouncer"

// findPgBouncer returns the PgBouncer binary, installing Debian's package
// when it is missing (the benchmark runs as root in the dev container).
func findPgBouncer(ctx context.Context) (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if _, err := os.Stat(pgbouncerPath); err == nil {
		return pgbouncerPath, nil
	}
	fmt.Fprintln(os.Stderr, "pgbouncer not found; running apt-get install -y pgbouncer")
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "pgbouncer")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	out, err := install()
	if err != nil {
		// A fresh container often has no package lists yet.
		if upd, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("pgbouncer is not installed and apt-get update failed: %v\n%s", uerr, tailLines(string(upd), 20))
		}
		out, err = install()
	}
	if err != nil {
		return "", fmt.Errorf("pgbouncer is not installed and `apt-get install -y pgbouncer` failed (install it by hand, e.g. apt-get install pgbouncer or brew install pgbouncer): %v\n%s", err, tailLines(string(out), 20))
	}
	if _, err := os.Stat(pgbouncerPath); err != nil {
		return "", fmt.Errorf("apt-get installed pgbouncer but %s is missing", pgbouncerPath)
	}
	return pgbouncerPath, nil
}

var pgbouncerVersionRE = regexp.MustCompile(`PgBouncer (\d+)\.(\d+)(?:\.(\d+))?`)

// pgbouncerVersion returns the version string ("1.18.0") and whether it can
// track prepared statements in transaction mode (max_prepared_statements,
// added in 1.21).
func pgbouncerVersion(bin string) (string, bool, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", false, fmt.Errorf("%s --version: %v\n%s", bin, err, out)
	}
	m := pgbouncerVersionRE.FindStringSubmatch(string(out))
	if m == nil {
		return "", false, fmt.Errorf("cannot read a version in `%s --version` output: %q", bin, out)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	ver := m[1] + "." + m[2]
	if m[3] != "" {
		ver += "." + m[3]
	}
	return ver, major > 1 || (major == 1 && minor >= 21), nil
}

// bouncerConf is one PgBouncer instance's settings.
type bouncerConf struct {
	bin        string
	mode       string // pool_mode: session or transaction
	poolSize   int    // default_pool_size
	maxClients int    // max_client_conn
	prepared   bool   // set max_prepared_statements (PgBouncer 1.21+)
	secret     string // RLSRole's SCRAM verifier, from pg_authid
}

// bouncer is a running PgBouncer process.
type bouncer struct {
	port int
	dir  string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// startPgBouncer runs PgBouncer in front of c in a temp dir with a generated
// pgbouncer.ini and userlist.txt, and waits until a login through it works.
//
// Authentication is SCRAM with RLSRole's verifier copied from pg_authid (what
// auth_query would read): clients are checked against it without PBKDF2 on
// PgBouncer's side, and PgBouncer logs into PostgreSQL with the client's
// proof ("SCRAM pass-through"), so no plaintext password is stored.
func startPgBouncer(ctx context.Context, c *pgcluster.Cluster, bc bouncerConf) (*bouncer, error) {
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	// PgBouncer refuses to run as root, so as root it runs as "postgres",
	// which must be able to reach the files: /tmp, not a private $TMPDIR.
	base := os.TempDir()
	if cred != nil {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "compare-pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &bouncer{dir: dir, log: filepath.Join(dir, "pgbouncer.log"), done: make(chan struct{})}
	fail := func(err error) (*bouncer, error) {
		b.stop()
		return nil, err
	}
	if b.port, err = freePort(); err != nil {
		return fail(err)
	}
	ini := []string{
		"[databases]",
		fmt.Sprintf("%s = host=%s port=%d dbname=%s", demo.Database, c.Host, c.Port, demo.Database),
		"",
		"[pgbouncer]",
		"listen_addr = 127.0.0.1",
		"listen_port = " + strconv.Itoa(b.port),
		"unix_socket_dir =", // no socket file left behind in /tmp
		"auth_type = scram-sha-256",
		"auth_file = " + filepath.Join(dir, "userlist.txt"),
		"pool_mode = " + bc.mode,
		"default_pool_size = " + strconv.Itoa(bc.poolSize),
		"max_client_conn = " + strconv.Itoa(bc.maxClients),
		// Thousands of logins in the idle check would flood the log.
		"log_connections = 0",
		"log_disconnections = 0",
		"log_pooler_errors = 1",
		"ignore_startup_parameters = extra_float_digits",
	}
	if bc.prepared {
		ini = append(ini, "max_prepared_statements = 200")
	}
	userlist := fmt.Sprintf("%q %q\n", demo.RLSRole, bc.secret)
	for name, content := range map[string]string{"pgbouncer.ini": strings.Join(ini, "\n") + "\n", "userlist.txt": userlist} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return fail(err)
		}
	}
	if cred != nil {
		for _, p := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "userlist.txt")} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return fail(err)
			}
		}
	}
	logf, err := os.Create(b.log)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	b.cmd = exec.Command(bc.bin, filepath.Join(dir, "pgbouncer.ini"))
	b.cmd.Dir = dir
	b.cmd.Stdout = logf
	b.cmd.Stderr = logf
	b.cmd.SysProcAttr = childAttr(cred)
	if err := b.cmd.Start(); err != nil {
		b.cmd = nil
		return fail(fmt.Errorf("start pgbouncer: %w", err))
	}
	go func() {
		_ = b.cmd.Wait()
		close(b.done)
	}()
	if err := waitLogin(ctx, b.port, demo.RLSRole, demo.RLSPassword, b.done); err != nil {
		return fail(fmt.Errorf("pgbouncer (%s mode) did not come up: %w\nlog:\n%s", bc.mode, err, tailFile(b.log, 20)))
	}
	return b, nil
}

// pid returns PgBouncer's process id.
func (b *bouncer) pid() int { return b.cmd.Process.Pid }

// stop ends PgBouncer (SIGTERM is its immediate shutdown) and removes its
// directory. It is idempotent.
func (b *bouncer) stop() {
	if b.cmd != nil {
		stopProcess(b.cmd.Process, b.done, syscall.SIGTERM)
		b.cmd = nil
	}
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
		b.dir = ""
	}
}

// postgresCredential returns OS user postgres's credential when we are root
// (PgBouncer refuses root), nil otherwise.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root: PgBouncer needs an OS user \"postgres\" to run as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// childAttr puts a child in its own process group (a terminal ^C reaches us,
// and we stop it in order) and has the kernel kill it if we die without
// cleaning up (SIGKILL, a crash).
func childAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}

// stopProcess signals p, waits up to 5s for done, then kills it.
func stopProcess(p *os.Process, done <-chan struct{}, sig syscall.Signal) {
	_ = p.Signal(sig)
	select {
	case <-done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = p.Kill()
	<-done
}

// errExited is returned by waitLogin when the process it waits for is gone.
var errExited = errors.New("process exited")

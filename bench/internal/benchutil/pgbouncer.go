package benchutil

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

// FindPgBouncer returns the PgBouncer binary, installing Debian's package
// when it is missing (the benchmark runs as root in the dev container).
func FindPgBouncer(ctx context.Context) (string, error) {
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
			return "", fmt.Errorf("pgbouncer is not installed and apt-get update failed: %v\n%s", uerr, TailLines(string(upd), 20))
		}
		out, err = install()
	}
	if err != nil {
		return "", fmt.Errorf("pgbouncer is not installed and `apt-get install -y pgbouncer` failed (install it by hand, e.g. apt-get install pgbouncer or brew install pgbouncer): %v\n%s", err, TailLines(string(out), 20))
	}
	if _, err := os.Stat(pgbouncerPath); err != nil {
		return "", fmt.Errorf("apt-get installed pgbouncer but %s is missing", pgbouncerPath)
	}
	return pgbouncerPath, nil
}

var pgbouncerVersionRE = regexp.MustCompile(`PgBouncer (\d+)\.(\d+)(?:\.(\d+))?`)

// PgBouncerVersion returns the version string ("1.18.0") and whether it can
// track prepared statements in transaction mode (max_prepared_statements,
// added in 1.21).
func PgBouncerVersion(bin string) (string, bool, error) {
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

// BouncerConf is one PgBouncer instance's settings.
type BouncerConf struct {
	Bin        string
	Mode       string // pool_mode: session or transaction
	PoolSize   int    // default_pool_size
	MaxClients int    // max_client_conn
	Prepared   bool   // set max_prepared_statements (PgBouncer 1.21+)
	Secret     string // RLSRole's SCRAM verifier, from pg_authid
}

// Bouncer is a running PgBouncer process.
type Bouncer struct {
	Port int
	Dir  string
	Log  string // its log file
	Cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// StartPgBouncer runs PgBouncer in front of c in a temp dir with a generated
// pgbouncer.ini and userlist.txt, and waits until a login through it works.
//
// Authentication is SCRAM with RLSRole's verifier copied from pg_authid (what
// auth_query would read): clients are checked against it without PBKDF2 on
// PgBouncer's side, and PgBouncer logs into PostgreSQL with the client's
// proof ("SCRAM pass-through"), so no plaintext password is stored.
func StartPgBouncer(ctx context.Context, c *pgcluster.Cluster, bc BouncerConf) (*Bouncer, error) {
	cred, err := PostgresCredential()
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
	b := &Bouncer{Dir: dir, Log: filepath.Join(dir, "pgbouncer.log"), done: make(chan struct{})}
	fail := func(err error) (*Bouncer, error) {
		b.Stop()
		return nil, err
	}
	if b.Port, err = FreePort(); err != nil {
		return fail(err)
	}
	ini := []string{
		"[databases]",
		fmt.Sprintf("%s = host=%s port=%d dbname=%s", demo.Database, c.Host, c.Port, demo.Database),
		"",
		"[pgbouncer]",
		"listen_addr = 127.0.0.1",
		"listen_port = " + strconv.Itoa(b.Port),
		"unix_socket_dir =", // no socket file left behind in /tmp
		"auth_type = scram-sha-256",
		"auth_file = " + filepath.Join(dir, "userlist.txt"),
		"pool_mode = " + bc.Mode,
		"default_pool_size = " + strconv.Itoa(bc.PoolSize),
		"max_client_conn = " + strconv.Itoa(bc.MaxClients),
		// Thousands of logins in the idle check would flood the log.
		"log_connections = 0",
		"log_disconnections = 0",
		"log_pooler_errors = 1",
		"ignore_startup_parameters = extra_float_digits",
	}
	if bc.Prepared {
		ini = append(ini, "max_prepared_statements = 200")
	}
	userlist := fmt.Sprintf("%q %q\n", demo.RLSRole, bc.Secret)
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
	logf, err := os.Create(b.Log)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	b.Cmd = exec.Command(bc.Bin, filepath.Join(dir, "pgbouncer.ini"))
	b.Cmd.Dir = dir
	b.Cmd.Stdout = logf
	b.Cmd.Stderr = logf
	b.Cmd.SysProcAttr = ChildAttr(cred)
	if err := b.Cmd.Start(); err != nil {
		b.Cmd = nil
		return fail(fmt.Errorf("start pgbouncer: %w", err))
	}
	go func() {
		_ = b.Cmd.Wait()
		close(b.done)
	}()
	if err := WaitLogin(ctx, b.Port, demo.RLSRole, demo.RLSPassword, b.done); err != nil {
		return fail(fmt.Errorf("pgbouncer (%s mode) did not come up: %w\nlog:\n%s", bc.Mode, err, TailFile(b.Log, 20)))
	}
	return b, nil
}

// Pid returns PgBouncer's process id.
func (b *Bouncer) Pid() int { return b.Cmd.Process.Pid }

// Stop ends PgBouncer (SIGTERM is its immediate shutdown) and removes its
// directory. It is idempotent.
func (b *Bouncer) Stop() {
	if b.Cmd != nil {
		StopProcess(b.Cmd.Process, b.done, syscall.SIGTERM)
		b.Cmd = nil
	}
	if b.Dir != "" {
		_ = os.RemoveAll(b.Dir)
		b.Dir = ""
	}
}

// PostgresCredential returns OS user postgres's credential when we are root
// (PgBouncer refuses root), nil otherwise.
func PostgresCredential() (*syscall.Credential, error) {
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

// ChildAttr puts a child in its own process group (a terminal ^C reaches us,
// and we stop it in order) and has the kernel kill it if we die without
// cleaning up (SIGKILL, a crash).
func ChildAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}

// StopProcess signals p, waits up to 5s for done, then kills it.
func StopProcess(p *os.Process, done <-chan struct{}, sig syscall.Signal) {
	_ = p.Signal(sig)
	select {
	case <-done:
		return
	case <-time.After(5 * time.Second):
	}
	_ = p.Kill()
	<-done
}

// ErrExited is returned by WaitLogin when the process it waits for is gone.
var ErrExited = errors.New("process exited")

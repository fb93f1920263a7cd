package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

const (
	database = "pgx_test"
	// role is the PostgreSQL role pgx's tests run as, directly and as
	// pgtenant's upstream; the pgtenant user has the same name and
	// password, so that tests comparing the configured user with
	// current_user see the same on both.
	role     = "pgx_app"
	password = "secret"
	tenant   = "00000000-0000-0000-0000-00000000f00d"
)

// runAll prepares pgx's source and PostgreSQL once, then runs the suite
// against each target in turn, on a database created afresh for it.
func runAll(ctx context.Context, o options, targets []target) ([]result, error) {
	dir, err := pgxSource(ctx, o)
	if err != nil {
		return nil, err
	}
	fmt.Printf("pgx source: %s\n", dir)
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return nil, err
	}
	defer func() {
		// The server log is in the cluster's directory, which Stop removes.
		if b, err := os.ReadFile(c.LogFile); err == nil {
			_ = os.WriteFile(o.outPath("postgresql.log"), b, 0o644)
		}
		_ = c.Stop()
	}()
	if err := setupRoles(ctx, c, o.superuser); err != nil {
		return nil, err
	}
	var results []result
	for _, t := range targets {
		r, err := runTarget(ctx, o, c, dir, t)
		if err != nil {
			return results, fmt.Errorf("%s: %w", t.name, err)
		}
		results = append(results, r)
		fmt.Printf("%-30s %5d passed %5d failed %5d skipped  %s\n", t.name, r.count(actPass), r.count(actFail), r.count(actSkip), r.elapsed.Round(time.Second))
	}
	return results, nil
}

// pgxSource returns a writable copy of pgx's source with its tests: -pgx
// as given, or the module cache's copy of the version in go.mod (read-only
// there, and go test writes nothing into it, but pgx's tests may).
func pgxSource(ctx context.Context, o options) (string, error) {
	if o.src != "" {
		return o.src, nil
	}
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", "github.com/jackc/pgx/v5").Output()
	if err != nil {
		return "", fmt.Errorf("go mod download github.com/jackc/pgx/v5: %w", err)
	}
	mod, ok := jsonField(out, "Dir")
	if !ok {
		return "", fmt.Errorf("go mod download gave no Dir: %s", out)
	}
	dst := o.outPath("pgx")
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	if err := copyTree(mod, dst); err != nil {
		return "", fmt.Errorf("copying %s: %w", mod, err)
	}
	return dst, nil
}

// copyTree copies a directory of regular files, writable by its owner.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, info.Mode().Perm()|0o200)
	})
}

// setupRoles creates the cluster-wide roles of pgx's testsetup that its
// tests use (the tricky user, for aclitem) and the role the tests run as.
func setupRoles(ctx context.Context, c *pgcluster.Cluster, superuser bool) error {
	attrs := "NOSUPERUSER"
	if superuser {
		attrs = "SUPERUSER"
	}
	return c.Exec(ctx, "postgres", fmt.Sprintf(`
CREATE ROLE %s LOGIN PASSWORD '%s' %s;
CREATE USER " tricky, ' } "" \\ test user " superuser password 'secret';`, role, password, attrs))
}

// setupDatabase creates the database afresh, as pgx's CI does
// (testsetup/postgresql_setup.sql: extensions, the uint64 domain), owned
// by the role the tests run as.
func setupDatabase(ctx context.Context, c *pgcluster.Cluster) error {
	if err := c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+database+" WITH (FORCE)"); err != nil {
		return err
	}
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+database+" OWNER "+role); err != nil {
		return err
	}
	return c.Exec(ctx, database, `
CREATE EXTENSION hstore;
CREATE EXTENSION ltree;
CREATE DOMAIN uint64 AS numeric(20,0);`)
}

// runTarget runs the suite against one target.
func runTarget(ctx context.Context, o options, c *pgcluster.Cluster, dir string, t target) (result, error) {
	if err := setupDatabase(ctx, c); err != nil {
		return result{}, fmt.Errorf("preparing the database: %w", err)
	}
	host, port := c.Host, fmt.Sprint(c.Port)
	if !t.direct() {
		addr, stop, err := startPgtenant(o, c, t)
		if err != nil {
			return result{}, err
		}
		defer stop()
		host, port, _ = net.SplitHostPort(addr)
	}
	conn := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", host, port, role, password, database)
	env := testEnv(map[string]string{
		"PGX_TEST_DATABASE":                   conn,
		"PGX_TEST_TCP_CONN_STRING":            conn,
		"PGX_TEST_SCRAM_PASSWORD_CONN_STRING": conn + " channel_binding=disable",
	})
	args := []string{"test", "-count=1", "-json", "-p", fmt.Sprint(o.parallel), "-timeout", o.timeout.String()}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	args = append(args, o.pkgs...)
	log, err := os.Create(o.outPath(t.logName() + ".log"))
	if err != nil {
		return result{}, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stderr = log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	r, perr := parseTestJSON(stdout, log)
	werr := cmd.Wait()
	r.target = t
	r.elapsed = time.Since(start)
	if perr != nil {
		return r, perr
	}
	// go test exits 1 when a test fails; that is what is being measured.
	var exit *exec.ExitError
	if werr != nil && !(errors.As(werr, &exit) && exit.ExitCode() == 1) {
		return r, fmt.Errorf("go test: %w", werr)
	}
	return r, nil
}

// testEnv is this process's environment without PG* variables (pgx reads
// PGHOST, PGPASSWORD... as defaults) and with the given PGX_TEST_* set.
func testEnv(set map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	for _, k := range sortedKeys(set) {
		env = append(env, k+"="+set[k])
	}
	return env
}

// startPgtenant starts pgtenant in this process, in front of the
// database, with one user (the role's name and password) for one tenant,
// and returns its address. The config is written to the log directory.
func startPgtenant(o options, c *pgcluster.Cluster, t target) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	verifier, err := auth.NewVerifier(password)
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by bench/pgxsuite for target %q.\nlisten: %s\nupstream: %q\nlog_level: info\n",
		t.name, ln.Addr(), c.URL(role, password, database))
	if t.mode == config.PoolModeTransaction {
		// pgx's tests open many connections at once (pgxpool's, stdlib's
		// sql.DB): they wait for a pooled connection rather than fail.
		fmt.Fprintf(&b, "pool: {mode: transaction, size: %d, wait_timeout: 60s}\n", o.poolSize)
	}
	fmt.Fprintf(&b, "users:\n  - name: %s\n    password: %q   # %s\n    tenant: %s\n", role, verifier, password, tenant)
	if !t.guard {
		b.WriteString("    guard: false\n")
	}
	if err := os.WriteFile(o.outPath(t.logName()+".yaml"), []byte(b.String()), 0o600); err != nil {
		ln.Close()
		return "", nil, err
	}
	cfg, err := config.Parse([]byte(b.String()))
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	logf, err := os.Create(o.outPath(t.logName() + ".pgtenant.log"))
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		ln.Close()
		logf.Close()
		return "", nil, err
	}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() {
		_ = srv.Close()
		_ = logf.Close()
	}, nil
}

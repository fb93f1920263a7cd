// Command pgxsuite runs pgx's own test suite (github.com/jackc/pgx/v5, the
// version in go.mod, from the module cache) straight against PostgreSQL, as
// the baseline, and through pgtenant, and prints what passed, failed and was
// skipped on each, with the tests that fail only through pgtenant.
//
//	go run ./bench/pgxsuite -mode session            # guard on, as users run it
//	go run ./bench/pgxsuite -mode session -guard off # pgtenant relaying only
//	go run ./bench/pgxsuite -mode transaction        # pool: {mode: transaction}
//	go run ./bench/pgxsuite -mode all -guard both    # every pgtenant target
//	go run ./bench/pgxsuite -mode transaction -no-direct -pkg ./pgconn -run 'TestConnect'
//
// It takes several minutes per target, so it is a command, not a test.
// The database is prepared as pgx's CI prepares it (testsetup/
// postgresql_setup.sql), afresh for every target; pgx's tests connect as
// PGX_TEST_DATABASE (and PGX_TEST_TCP_CONN_STRING,
// PGX_TEST_SCRAM_PASSWORD_CONN_STRING) say; the tests for TLS, md5,
// plain passwords, unix sockets, PgBouncer and CockroachDB skip themselves,
// as they do in pgx when those are unset. Logs (go test's output per target,
// pgtenant's log, the config, PostgreSQL's log) go to -out.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
)

func main() {
	mode := flag.String("mode", "session", "pgtenant's pool mode: session, transaction or all")
	guard := flag.String("guard", "on", "the guard for the pgtenant user: on, off (session mode only) or both")
	noDirect := flag.Bool("no-direct", false, "skip the baseline run straight against PostgreSQL")
	superuser := flag.Bool("superuser", true, "the role pgx's tests run as (directly, and as pgtenant's upstream) is a superuser, as in pgx's CI; false: a plain role owning the database")
	pkg := flag.String("pkg", "./...", "the pgx packages to test (go test's package arguments, space separated)")
	run := flag.String("run", "", "go test -run")
	parallel := flag.Int("p", 1, "go test -p: packages tested at once (pgx's packages share the database)")
	timeout := flag.Duration("timeout", 30*time.Minute, "go test -timeout, per target")
	poolSize := flag.Int("pool-size", 20, "pool.size in transaction mode")
	out := flag.String("out", "", "directory for the logs (default: a new one under the temporary directory)")
	src := flag.String("pgx", "", "pgx's source with its tests (default: the module cache's copy of the go.mod version, copied to a scratch directory)")
	flag.Parse()

	modes, err := benchutil.ParseList(strings.ReplaceAll(*mode, "all", "session,transaction"), "session", "transaction")
	if err != nil {
		fail(fmt.Errorf("-mode: %w", err))
	}
	guards, err := benchutil.ParseList(strings.ReplaceAll(*guard, "both", "on,off"), "on", "off")
	if err != nil {
		fail(fmt.Errorf("-guard: %w", err))
	}
	var targets []target
	if !*noDirect {
		targets = append(targets, target{name: "direct"})
	}
	for _, m := range modes {
		for _, g := range guards {
			if m == "transaction" && g == "off" {
				// The config refuses it: transaction mode needs the guard.
				fmt.Fprintln(os.Stderr, "pgxsuite: transaction mode runs with the guard only (guard: false is refused there); skipping guard off")
				continue
			}
			targets = append(targets, target{name: "pgtenant " + m + " guard " + g, mode: m, guard: g == "on"})
		}
	}
	if len(targets) == 0 {
		fail(fmt.Errorf("nothing to run"))
	}
	if *out == "" {
		if *out, err = os.MkdirTemp("", "pgxsuite-"); err != nil {
			fail(err)
		}
	} else if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	o := options{
		superuser: *superuser,
		pkgs:      strings.Fields(*pkg),
		run:       *run,
		parallel:  *parallel,
		timeout:   *timeout,
		poolSize:  *poolSize,
		out:       *out,
		src:       *src,
	}
	results, err := runAll(context.Background(), o, targets)
	if len(results) > 0 {
		printSummary(os.Stdout, results)
		fmt.Printf("\nlogs in %s\n", *out)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "pgxsuite:", err)
	os.Exit(1)
}

// target is one run of the suite: straight against PostgreSQL (mode ""),
// or through pgtenant in a pool mode with the guard on or off.
type target struct {
	name  string
	mode  string
	guard bool
}

func (t target) direct() bool { return t.mode == "" }

// logName is the target's name as a file name.
func (t target) logName() string { return strings.ReplaceAll(t.name, " ", "-") }

type options struct {
	superuser bool
	pkgs      []string
	run       string
	parallel  int
	timeout   time.Duration
	poolSize  int
	out       string
	src       string
}

// outPath is a file in the log directory.
func (o options) outPath(name string) string { return filepath.Join(o.out, name) }

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

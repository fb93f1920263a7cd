package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrMissingBinaries is wrapped by the error returned when the PostgreSQL
// server binaries cannot be found.
var ErrMissingBinaries = errors.New("pgcluster: PostgreSQL server binaries (initdb, postgres) not found")

// BinDirEnv, when set, names the directory holding initdb and postgres and
// takes precedence over PATH and the well-known install locations.
const BinDirEnv = "PGCLUSTER_BINDIR"

// serverBins are the programs the harness executes. pg_ctl is not needed:
// the harness supervises postgres itself so that it can tie the server's
// lifetime to the test process (see startServer).
var serverBins = []string{"initdb", "postgres"}

// installHint tells a developer how to get the binaries; the harness must
// fail loudly rather than skip, so the message has to be actionable.
const installHint = `install PostgreSQL server binaries:
  Debian/Ubuntu: apt-get install -y postgresql   (binaries land in /usr/lib/postgresql/<ver>/bin)
  Fedora/RHEL:   dnf install -y postgresql-server
  Alpine:        apk add postgresql
  macOS:         brew install postgresql
or put the directory containing initdb and postgres on PATH (or in $` + BinDirEnv + `)`

// MissingBinariesError returns nil when initdb and postgres can be found, and
// otherwise an error (wrapping ErrMissingBinaries) that says how to install
// them.
func MissingBinariesError() error {
	_, err := BinDir()
	return err
}

// BinDir returns the directory containing the PostgreSQL server binaries.
// It looks at $PGCLUSTER_BINDIR, then PATH, then distribution install
// locations (newest major version first), because Debian does not put
// initdb/postgres on PATH.
func BinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		if hasServerBins(d) {
			return d, nil
		}
		return "", fmt.Errorf("%w in $%s=%s\n%s", ErrMissingBinaries, BinDirEnv, d, installHint)
	}
	for _, name := range serverBins {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		// Debian symlinks into /usr/lib/postgresql/<ver>/bin; both the link's
		// directory and the target's are fine if they hold every binary.
		cands := []string{filepath.Dir(p)}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			cands = append(cands, filepath.Dir(r))
		}
		for _, d := range cands {
			if hasServerBins(d) {
				return d, nil
			}
		}
	}
	var dirs []string
	for _, pat := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"} {
		m, _ := filepath.Glob(pat)
		dirs = append(dirs, m...)
	}
	sort.SliceStable(dirs, func(i, j int) bool { return dirVersion(dirs[i]) > dirVersion(dirs[j]) })
	for _, d := range dirs {
		if hasServerBins(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w on PATH or in /usr/lib/postgresql/*/bin\n%s", ErrMissingBinaries, installHint)
}

func hasServerBins(dir string) bool {
	for _, name := range serverBins {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// dirVersion extracts the major version from paths like
// /usr/lib/postgresql/15/bin or /usr/pgsql-16/bin; 0 if there is none.
func dirVersion(dir string) int {
	for _, part := range strings.Split(dir, "/") {
		part = strings.TrimPrefix(part, "pgsql-")
		if v, err := strconv.Atoi(part); err == nil {
			return v
		}
	}
	return 0
}

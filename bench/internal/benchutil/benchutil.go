// Package benchutil holds what the benchmark commands under bench/ share:
// the pgbench data set and runner, PgBouncer, a process's CPU time, and
// helpers for starting and reaching servers.
package benchutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// SetupPgbench installs the demo schema, pgbench's tables at scale 10, and
// lets the RLS role read them: pgbench's tables have no policies, so the same
// queries are valid with or without a tenant setting.
func SetupPgbench(ctx context.Context, c *pgcluster.Cluster) error {
	if err := demo.Setup(ctx, c); err != nil {
		return err
	}
	init := exec.CommandContext(ctx, "pgbench", "-i", "-q", "-s", "10", "-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", pgcluster.SuperUser, demo.Database)
	init.Env = append(os.Environ(), "PGPASSWORD="+pgcluster.SuperPassword)
	if out, err := init.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}
	return c.Exec(ctx, demo.Database, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+demo.RLSRole)
}

// Median returns the median of xs, which it leaves unchanged.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

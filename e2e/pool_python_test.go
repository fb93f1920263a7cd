package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// pyModules are the Python drivers and ORMs of the driver matrix, as Debian
// packages them (python3-psycopg2, python3-sqlalchemy, python3-psycopg,
// python3-asyncpg, python3-django).
var pyModules = []string{"psycopg2", "sqlalchemy", "psycopg", "asyncpg", "django"}

// pyInterpreter finds a python3 that has the driver matrix's modules:
// Debian's own, which may not be the first on PATH.
func pyInterpreter(t *testing.T) string {
	t.Helper()
	probe := "import " + strings.Join(pyModules, ", ")
	var tried []string
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", probe).Run() == nil {
			return path
		}
		tried = append(tried, path)
	}
	t.Fatalf("no python3 with %s (tried %v): apt-get install -y python3-psycopg2 python3-sqlalchemy python3-psycopg python3-asyncpg python3-django (.ci/run does)",
		strings.Join(pyModules, ", "), tried)
	return ""
}

type pyResult struct {
	Check    string `json:"check"`
	OK       bool   `json:"ok"`
	Detail   string `json:"detail"`
	SQLState string `json:"sqlstate"`
}

// pyRun runs drivers.py with the clients given and returns its results by
// check.
func pyRun(t *testing.T, py string, host, port string, a, b map[string]any) map[string]pyResult {
	t.Helper()
	arg, err := json.Marshal(map[string]any{"host": host, "port": port, "database": demo.Database, "a": a, "b": b})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "testdata/python/drivers.py", string(arg))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("drivers.py: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	var got struct {
		Results []pyResult `json:"results"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("drivers.py output: %v\n%s", err, out)
	}
	byCheck := map[string]pyResult{}
	for _, r := range got.Results {
		byCheck[r.Check] = r
	}
	return byCheck
}

// The Python drivers and ORMs with their default settings, as two tenants
// taking turns (on one pooled connection in transaction mode). Every check
// first runs straight against PostgreSQL, where it must pass: a failure
// through pgtenant is then pgtenant's.
func TestPoolDriversPython(t *testing.T) {
	py := pyInterpreter(t)
	superQuery(t, "CREATE TABLE IF NOT EXISTS driver_copy (tenant text NOT NULL, n int NOT NULL); GRANT SELECT, INSERT, DELETE ON driver_copy TO "+demo.RLSRole)
	t.Cleanup(func() { superQuery(t, "DROP TABLE IF EXISTS driver_copy") })
	client := func(tn demo.Tenant, user, password string, direct bool) map[string]any {
		c := map[string]any{"user": user, "password": password, "tenant": tn.ID, "names": pdNames(tn)}
		if direct {
			c["options"] = "-c app.tenant_id=" + tn.ID
			c["tenant_setting"] = true
		}
		return c
	}
	cl := pgcluster.Shared()
	direct := pyRun(t, py, cl.Host, strconv.Itoa(cl.Port),
		client(tenantA, demo.RLSRole, demo.RLSPassword, true), client(tenantB, demo.RLSRole, demo.RLSPassword, true))
	if len(direct) == 0 {
		t.Fatal("drivers.py ran no check")
	}
	for name, r := range direct {
		if !r.OK {
			t.Fatalf("%s straight against PostgreSQL: %s", name, r.Detail)
		}
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		got := pyRun(t, py, p.host, p.port,
			client(tenantA, tenantA.User, tenantA.Password, false), client(tenantB, tenantB.User, tenantB.Password, false))
		for name := range direct {
			r, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s: not run", name)
			case !r.OK:
				t.Errorf("%s: %s", name, r.Detail)
			}
		}
	})
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// jdbcJar is PgJDBC as Debian installs it (libpostgresql-jdbc-java).
const jdbcJar = "/usr/share/java/postgresql.jar"

// jdbcRun runs Drivers.java against url and returns each check's line.
func jdbcRun(t *testing.T, java, url string, args ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, java, append([]string{"-cp", jdbcJar, "testdata/java/Drivers.java", url}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("java Drivers.java: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Split(line, "\t"); len(f) >= 2 {
			got[f[1]] = line
		}
	}
	return got
}

// PgJDBC with its default settings (DBeaver, Metabase, every Java app),
// and with autosave=conservative and readOnlyMode=always, as two tenants
// taking turns (on one pooled connection in transaction mode). Every check
// first runs straight against PostgreSQL, where it must pass.
func TestPoolDriverJDBC(t *testing.T) {
	java, err := exec.LookPath("java")
	if err != nil {
		t.Fatal("java not found: apt-get install -y default-jre-headless libpostgresql-jdbc-java (.ci/run does)")
	}
	if _, err := os.Stat(jdbcJar); err != nil {
		t.Fatalf("%v: apt-get install -y libpostgresql-jdbc-java (.ci/run does)", err)
	}
	cl := pgcluster.Shared()
	clients := func(ua, pa, ub, pb string) []string {
		return []string{ua, pa, tenantA.ID, pdNames(tenantA), ub, pb, tenantB.ID, pdNames(tenantB)}
	}
	directURL := fmt.Sprintf("jdbc:postgresql://%s:%d/%s", cl.Host, cl.Port, demo.Database)
	direct := jdbcRun(t, java, directURL, append(clients(demo.RLSRole, demo.RLSPassword, demo.RLSRole, demo.RLSPassword),
		"-c app.tenant_id="+tenantA.ID, "-c app.tenant_id="+tenantB.ID)...)
	if len(direct) == 0 {
		t.Fatal("Drivers.java ran no check")
	}
	for name, line := range direct {
		if !strings.HasPrefix(line, "ok\t") {
			t.Fatalf("%s straight against PostgreSQL: %s", name, line)
		}
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		url := fmt.Sprintf("jdbc:postgresql://%s:%s/%s", p.host, p.port, demo.Database)
		got := jdbcRun(t, java, url, clients(tenantA.User, tenantA.Password, tenantB.User, tenantB.Password)...)
		for name := range direct {
			if line := got[name]; !strings.HasPrefix(line, "ok\t") {
				t.Errorf("%s: %q", name, line)
			}
		}
	})
}

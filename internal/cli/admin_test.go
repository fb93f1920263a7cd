package cli

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/metrics"
	"github.com/pgtenant/pgtenant/proxy"
)

// pgtenant pause and resume against an admin endpoint with a fake server
// behind it: the tenant before or after the flags, --wait passed on, the
// exit codes and what they print.
func TestPauseResumeCommands(t *testing.T) {
	var got []string
	inTx := 0
	paused := map[string]bool{}
	srv := httptest.NewServer(metrics.AdminHandler(nil, metrics.Admin{
		Pause: func(_ context.Context, tenant string, wait time.Duration) proxy.PauseInfo {
			got = append(got, "pause "+tenant+" "+wait.String())
			paused[tenant] = true
			return proxy.PauseInfo{Tenant: tenant, InTransaction: inTx}
		},
		Resume: func(tenant string) (proxy.PauseInfo, error) {
			got = append(got, "resume "+tenant)
			if !paused[tenant] {
				return proxy.PauseInfo{Tenant: tenant}, proxy.ErrNotPaused
			}
			delete(paused, tenant)
			return proxy.PauseInfo{Tenant: tenant, Waiting: 4, Moved: 1}, nil
		},
	}))
	defer srv.Close()
	admin := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		desc  string
		args  []string
		inTx  int
		code  int
		out   string // in stdout, or stderr when code != 0 and out is not printed there
		calls string
	}{
		{desc: "pause", args: []string{"pause", "acme", "--admin", admin}, code: 0, out: "tenant acme paused: no transaction of it is in progress", calls: "pause acme 30s"},
		{desc: "tenant after the flags", args: []string{"pause", "--admin", admin, "--wait", "0", "a/b c"}, code: 0, out: "tenant a/b c paused", calls: "pause a/b c 0s"},
		{desc: "still in a transaction", args: []string{"pause", "acme", "--admin", admin, "--wait", "2s"}, inTx: 2, code: 1, out: "2 of its sessions are still in a transaction", calls: "pause acme 2s"},
		{desc: "resume", args: []string{"resume", "acme", "--admin", admin}, code: 0, out: "tenant acme resumed: 4 waiting went on, 1 sessions moved", calls: "resume acme"},
		{desc: "resume not paused", args: []string{"resume", "acme", "--admin", admin}, code: 1, out: `404 Not Found tenant "acme" is not paused`, calls: "resume acme"},
		{desc: "no tenant", args: []string{"resume", "--admin", admin}, code: 2, out: "usage: pgtenant resume"},
		{desc: "two tenants", args: []string{"pause", "--admin", admin, "a", "b"}, code: 2, out: "usage: pgtenant pause"},
		{desc: "resume takes no wait", args: []string{"resume", "acme", "--wait", "1s"}, code: 2, out: "flag provided but not defined: -wait"},
		{desc: "nothing listening", args: []string{"pause", "acme", "--admin", "127.0.0.1:1"}, code: 1, out: "nothing listens on 127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, inTx = nil, tt.inTx
			var stdout, stderr bytes.Buffer
			code := Main(tt.args, nil, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String()+stderr.String(), tt.out) {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q, want %q", code, tt.code, stdout.String(), stderr.String(), tt.out)
			}
			if calls := strings.Join(got, "; "); calls != tt.calls {
				t.Fatalf("calls %q, want %q", calls, tt.calls)
			}
		})
	}
}

// pgtenant status marks a session left on an upstream a reload removed or
// changed.
func TestStatusMarksDrainingSessions(t *testing.T) {
	srv := httptest.NewServer(metrics.AdminHandler(nil, metrics.Admin{
		Sessions: func() []proxy.SessionInfo {
			return []proxy.SessionInfo{
				{ID: 1, User: "alice", Tenant: "acme", Upstream: "default", TxStatus: "I"},
				{ID: 2, User: "bob", Tenant: "globex", Upstream: "eu", TxStatus: "T", Retired: true},
			}
		},
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if code := runStatus([]string{"--admin", strings.TrimPrefix(srv.URL, "http://")}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	lines := strings.Split(stdout.String(), "\n")
	if len(lines) < 3 || strings.Contains(lines[1], "draining") || !strings.Contains(lines[2], "eu (draining)") {
		t.Fatalf("status output:\n%s", stdout.String())
	}
}

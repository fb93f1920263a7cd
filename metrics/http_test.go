package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/proxy"
)

func get(t *testing.T, h http.Handler, method, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, string(body)
}

func TestHandlerHealthReady(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	var state proxy.Readiness
	var asked string
	ready := func(ctx context.Context, upstream string) proxy.Readiness {
		if ctx == nil {
			panic("no context")
		}
		asked = upstream
		rd := state
		rd.Asked = upstream
		if upstream != "" {
			rd.Upstreams = nil
			for _, u := range state.Upstreams {
				if u.Upstream == upstream {
					rd.Upstreams = append(rd.Upstreams, u)
				}
			}
			rd.Unknown = len(rd.Upstreams) == 0
		}
		return rd
	}
	h := Handler(New(Options{}), ready, nil)
	allUp := proxy.Readiness{Upstreams: []proxy.UpstreamReadiness{{Upstream: "default"}, {Upstream: "eu"}}}
	euDown := proxy.Readiness{Upstreams: []proxy.UpstreamReadiness{{Upstream: "default"}, {Upstream: "eu", Err: refused}}}
	defaultDown := proxy.Readiness{Upstreams: []proxy.UpstreamReadiness{{Upstream: "default", Err: refused}, {Upstream: "eu"}}}

	tests := []struct {
		name   string
		method string
		path   string
		state  proxy.Readiness
		code   int
		body   string // the whole text, trimmed; "" to skip
		asked  string
	}{
		{"healthz", http.MethodGet, "/healthz", allUp, 200, "ok", ""},
		{"healthz while not ready", http.MethodGet, "/healthz", defaultDown, 200, "ok", ""},
		{"readyz ok lists each upstream", http.MethodGet, "/readyz", allUp, 200, "ok\ndefault: ok\neu: ok", ""},
		{"readyz ready with another upstream down", http.MethodGet, "/readyz", euDown, 200, "ok\ndefault: ok\neu: unreachable: " + refused.Error(), ""},
		{"readyz default down", http.MethodGet, "/readyz", defaultDown, 503, "upstream default unreachable\ndefault: unreachable: " + refused.Error() + "\neu: ok", ""},
		{"readyz one upstream down", http.MethodGet, "/readyz?upstream=eu", euDown, 503, "upstream eu unreachable\neu: unreachable: " + refused.Error(), "eu"},
		{"readyz one upstream up", http.MethodGet, "/readyz?upstream=eu", defaultDown, 200, "ok\neu: ok", "eu"},
		{"readyz unknown upstream", http.MethodGet, "/readyz?upstream=mars", allUp, 404, `no upstream named "mars" in the configuration`, "mars"},
		{"readyz shutting down", http.MethodGet, "/readyz", proxy.Readiness{ShuttingDown: true, Upstreams: allUp.Upstreams}, 503, "shutting down\ndefault: ok\neu: ok", ""},
		{"head healthz", http.MethodHead, "/healthz", allUp, 200, "", ""},
		{"post rejected", http.MethodPost, "/healthz", allUp, 405, "", ""},
		{"unknown path", http.MethodGet, "/nope", allUp, 404, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, asked = tt.state, ""
			code, _, body := get(t, h, tt.method, tt.path)
			if code != tt.code {
				t.Fatalf("status %d, want %d (body %q)", code, tt.code, body)
			}
			if tt.body != "" && strings.TrimSpace(body) != tt.body {
				t.Fatalf("body %q, want %q", body, tt.body)
			}
			if asked != tt.asked {
				t.Fatalf("asked about %q, want %q", asked, tt.asked)
			}
		})
	}
}

func TestHandlerNilFuncs(t *testing.T) {
	h := Handler(nil, nil, nil)
	if code, _, _ := get(t, h, http.MethodGet, "/readyz"); code != 200 {
		t.Fatalf("readyz with nil ready: %d", code)
	}
	if code, _, _ := get(t, h, http.MethodGet, "/metrics"); code != 404 {
		t.Fatalf("metrics with nil Metrics: %d", code)
	}
	code, _, body := get(t, h, http.MethodGet, "/status")
	if code != 200 || strings.TrimSpace(body) != `{"sessions":[],"paused":[]}` {
		t.Fatalf("status: %d %q", code, body)
	}
}

func TestHandlerMetrics(t *testing.T) {
	m := New(Options{})
	m.ConnState("", StateStartup)
	m.Auth("scram-sha-256", "failed", "28P01")
	m.UpstreamConnect("default", 5*time.Millisecond, nil)
	m.Transaction("acme")
	m.Refusal("acme")
	m.SessionEnd("acme", 10, 20)
	m.ConnState(StateStartup, StateClosed)

	code, hdr, body := get(t, Handler(m, nil, nil), http.MethodGet, "/metrics")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
	for _, want := range []string{
		`pgtenant_client_connections{state="startup"} 0`,
		`pgtenant_client_connections{state="active"} 0`,
		`pgtenant_client_connections_closed_total 1`,
		`pgtenant_authentications_total{method="scram-sha-256",outcome="failed",reason="28P01"} 1`,
		`pgtenant_upstream_connects_total{outcome="ok",upstream="default"} 1`,
		`pgtenant_upstream_connect_duration_seconds_bucket{upstream="default",le="0.01"} 1`,
		`pgtenant_upstream_connect_duration_seconds_count{upstream="default"} 1`,
		`pgtenant_transactions_total{tenant="acme"} 1`,
		`pgtenant_guard_refusals_total{tenant="acme"} 1`,
		`pgtenant_bytes_total{direction="from_client",tenant="acme"} 10`,
		`pgtenant_bytes_total{direction="to_client",tenant="acme"} 20`,
		`pgtenant_sessions_total{tenant="acme"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics output lacks %q", want)
		}
	}
}

func TestHandlerStatus(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	sessions := []proxy.SessionInfo{
		{ID: 1, User: "alice", Tenant: "acme", Remote: "10.0.0.1:5000", UpstreamPID: 4242, Started: started, TxStatus: "I", Assertions: 3, Refusals: 1},
		{ID: 2, User: "bob", Tenant: "globex", Remote: "10.0.0.2:5001", UpstreamPID: 4343, Started: started, TxStatus: "T"},
	}
	h := Handler(New(Options{}), nil, func() []proxy.SessionInfo { return sessions })
	code, hdr, body := get(t, h, http.MethodGet, "/status")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	var got struct {
		Sessions []proxy.SessionInfo `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(got.Sessions) != 2 || got.Sessions[0] != sessions[0] || got.Sessions[1] != sessions[1] {
		t.Fatalf("got %+v, want %+v", got.Sessions, sessions)
	}
	for _, key := range []string{`"sessions":`, `"upstream_pid":4242`, `"tx_status":"T"`, `"tenant":"acme"`} {
		if !strings.Contains(body, key) {
			t.Errorf("body lacks %s: %s", key, body)
		}
	}

	// No sessions is an empty list, not null.
	h = Handler(New(Options{}), nil, func() []proxy.SessionInfo { return nil })
	if _, _, body := get(t, h, http.MethodGet, "/status"); strings.TrimSpace(body) != `{"sessions":[],"paused":[]}` {
		t.Fatalf("empty status %q", body)
	}
}

func TestHandlerServer(t *testing.T) {
	// End to end over a real listener, as a scraper would see it.
	srv := httptest.NewServer(Handler(New(Options{}), func(context.Context, string) proxy.Readiness {
		return proxy.Readiness{Upstreams: []proxy.UpstreamReadiness{{Upstream: "default"}}}
	}, nil))
	defer srv.Close()
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/status"} {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("%s: %d", path, res.StatusCode)
		}
	}
}

// The pause and resume endpoints: POST only, the tenant from the path,
// wait parsed, 404 for a tenant not paused, and a browser's cross-origin
// POST refused.
func TestHandlerPauseResume(t *testing.T) {
	var calls []string
	paused := map[string]bool{}
	a := Admin{
		Pause: func(_ context.Context, tenant string, wait time.Duration) proxy.PauseInfo {
			calls = append(calls, "pause "+tenant+" "+wait.String())
			paused[tenant] = true
			return proxy.PauseInfo{Tenant: tenant, InTransaction: 1}
		},
		Resume: func(tenant string) (proxy.PauseInfo, error) {
			calls = append(calls, "resume "+tenant)
			if !paused[tenant] {
				return proxy.PauseInfo{Tenant: tenant}, proxy.ErrNotPaused
			}
			delete(paused, tenant)
			return proxy.PauseInfo{Tenant: tenant, Moved: 2}, nil
		},
		Paused: func() []proxy.PauseInfo { return []proxy.PauseInfo{{Tenant: "t 1", Waiting: 3}} },
	}
	h := AdminHandler(nil, a)
	tests := []struct {
		desc, method, path string
		header             map[string]string
		code               int
		body               string // substring
		call               string // the last call made, "" for none
	}{
		{desc: "pause", method: "POST", path: "/tenants/t%201/pause", code: 200, body: `"tenant":"t 1","since":"0001-01-01T00:00:00Z","waiting":0,"in_transaction":1`, call: "pause t 1 0s"},
		{desc: "pause with wait", method: "POST", path: "/tenants/acme/pause?wait=1500ms", code: 200, call: "pause acme 1.5s"},
		{desc: "bad wait", method: "POST", path: "/tenants/acme/pause?wait=soon", code: 400, body: "not a duration"},
		{desc: "negative wait", method: "POST", path: "/tenants/acme/pause?wait=-1s", code: 400, body: "not a duration"},
		{desc: "resume", method: "POST", path: "/tenants/acme/resume", code: 200, body: `"moved":2`, call: "resume acme"},
		{desc: "resume not paused", method: "POST", path: "/tenants/acme/resume", code: 404, body: `tenant "acme" is not paused`, call: "resume acme"},
		{desc: "GET pause", method: "GET", path: "/tenants/acme/pause", code: 405},
		{desc: "cross-origin POST", method: "POST", path: "/tenants/acme/pause", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, code: 403},
		{desc: "status lists paused", method: "GET", path: "/status", code: 200, body: `"paused":[{"tenant":"t 1","since":"0001-01-01T00:00:00Z","waiting":3,"in_transaction":0}]`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			calls = nil
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(tt.method, tt.path, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			h.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Result().Body)
			if rec.Code != tt.code || !strings.Contains(string(body), tt.body) {
				t.Fatalf("%s %s: %d %q, want %d with %q", tt.method, tt.path, rec.Code, body, tt.code, tt.body)
			}
			last := ""
			if len(calls) > 0 {
				last = calls[len(calls)-1]
			}
			if last != tt.call {
				t.Fatalf("call %q, want %q", last, tt.call)
			}
		})
	}
	// Without Pause and Resume there are no such endpoints.
	if code, _, _ := get(t, Handler(nil, nil, nil), http.MethodPost, "/tenants/acme/pause"); code != 404 && code != 405 {
		t.Fatalf("read-only handler answers a pause with %d", code)
	}
}

func TestWatchPauses(t *testing.T) {
	m := New(Options{})
	tenants, waiting := 2, 5
	m.WatchPauses(func() (int, int) { return tenants, waiting })
	_, _, body := get(t, Handler(m, nil, nil), http.MethodGet, "/metrics")
	for _, want := range []string{"pgtenant_paused_tenants 2", "pgtenant_pause_waiting 5"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	tenants, waiting = 0, 0
	_, _, body = get(t, Handler(m, nil, nil), http.MethodGet, "/metrics")
	if !strings.Contains(body, "pgtenant_paused_tenants 0") {
		t.Errorf("after the resume: %s", body)
	}
}

package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/proxy"
)

func TestNewRegistersOwnRegistry(t *testing.T) {
	m := New(Options{})
	if m.Registry() == nil || m.Registry() == prometheus.DefaultRegisterer {
		t.Fatal("Registry must be a private registry")
	}
	if m.maxTenants != DefaultMaxTenantLabels {
		t.Fatalf("default budget = %d, want %d", m.maxTenants, DefaultMaxTenantLabels)
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(""), "pgtenant_transactions_total"); err != nil {
		t.Fatalf("no tenant series expected before any call: %v", err)
	}
	// Two independent instances must not collide.
	_ = New(Options{})
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "pgtenant_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestConnState(t *testing.T) {
	type want struct{ startup, active, closed float64 }
	tests := []struct {
		name  string
		moves [][2]string
		want  want
	}{
		{"new", [][2]string{{"", "startup"}}, want{1, 0, 0}},
		{"authenticated", [][2]string{{"", "startup"}, {"startup", "active"}}, want{0, 1, 0}},
		{"full life", [][2]string{{"", "startup"}, {"startup", "active"}, {"active", "closed"}}, want{0, 0, 1}},
		{"refused in startup", [][2]string{{"", "startup"}, {"startup", "closed"}}, want{0, 0, 1}},
		{"two sessions one closed", [][2]string{
			{"", "startup"}, {"", "startup"}, {"startup", "active"}, {"startup", "active"}, {"active", "closed"},
		}, want{0, 1, 1}},
		{"unknown states ignored", [][2]string{{"", "weird"}, {"weird", "other"}}, want{0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(Options{})
			for _, mv := range tt.moves {
				m.ConnState(mv[0], mv[1])
			}
			got := want{
				testutil.ToFloat64(m.connStartup),
				testutil.ToFloat64(m.connActive),
				testutil.ToFloat64(m.connClosed),
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			// The gauge only ever has the two states.
			if n := testutil.CollectAndCount(m.Registry(), "pgtenant_client_connections"); n != 2 {
				t.Fatalf("state series = %d, want 2", n)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name                    string
		calls                   [][3]string
		method, outcome, reason string
		want                    float64
		series                  int
	}{
		{"ok", [][3]string{{"scram-sha-256", "ok", ""}}, "scram-sha-256", "ok", "", 1, 1},
		{"failed twice", [][3]string{{"jwt", "failed", "28P01"}, {"jwt", "failed", "28P01"}}, "jwt", "failed", "28P01", 2, 1},
		{"mixed", [][3]string{{"jwt", "ok", ""}, {"jwt", "failed", "28000"}, {"none", "failed", "08P01"}}, "none", "failed", "08P01", 1, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(Options{})
			for _, c := range tt.calls {
				m.Auth(c[0], c[1], c[2])
			}
			if got := testutil.ToFloat64(m.auth.WithLabelValues(tt.method, tt.outcome, tt.reason)); got != tt.want {
				t.Fatalf("count = %v, want %v", got, tt.want)
			}
			if n := testutil.CollectAndCount(m.auth); n != tt.series {
				t.Fatalf("series = %d, want %d", n, tt.series)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestUpstreamConnect(t *testing.T) {
	tests := []struct {
		name                 string
		d                    time.Duration
		err                  error
		ok, timeout, failure float64
	}{
		{"ok", 3 * time.Millisecond, nil, 1, 0, 0},
		{"refused", time.Millisecond, errors.New("connection refused"), 0, 0, 1},
		{"deadline", 10 * time.Second, fmt.Errorf("dial: %w", context.DeadlineExceeded), 0, 1, 0},
		{"net timeout", 2 * time.Second, &net.OpError{Op: "dial", Err: timeoutErr{}}, 0, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(Options{})
			m.UpstreamConnect("eu", tt.d, tt.err)
			got := [3]float64{
				testutil.ToFloat64(m.upstreamConnects.WithLabelValues("eu", "ok")),
				testutil.ToFloat64(m.upstreamConnects.WithLabelValues("eu", "timeout")),
				testutil.ToFloat64(m.upstreamConnects.WithLabelValues("eu", "error")),
			}
			if want := [3]float64{tt.ok, tt.timeout, tt.failure}; got != want {
				t.Fatalf("ok/timeout/error = %v, want %v", got, want)
			}
			mfs, err := m.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, mf := range mfs {
				if mf.GetName() != "pgtenant_upstream_connect_duration_seconds" {
					continue
				}
				found = true
				if l := mf.GetMetric()[0].GetLabel(); len(l) != 1 || l[0].GetName() != "upstream" || l[0].GetValue() != "eu" {
					t.Fatalf("histogram labels %v, want upstream=eu", l)
				}
				h := mf.GetMetric()[0].GetHistogram()
				if h.GetSampleCount() != 1 || h.GetSampleSum() != tt.d.Seconds() {
					t.Fatalf("histogram count=%d sum=%v, want 1, %v", h.GetSampleCount(), h.GetSampleSum(), tt.d.Seconds())
				}
				b := h.GetBucket()
				if b[0].GetUpperBound() != 0.001 || b[len(b)-1].GetUpperBound() != 10 {
					t.Fatalf("buckets %v..%v, want 0.001..10", b[0].GetUpperBound(), b[len(b)-1].GetUpperBound())
				}
			}
			if !found {
				t.Fatal("histogram not gathered")
			}
		})
	}
}

func TestTenantCounters(t *testing.T) {
	tests := []struct {
		name   string
		do     func(m *Metrics)
		metric func(m *Metrics) prometheus.Collector
		want   float64
	}{
		{"transactions", func(m *Metrics) { m.Transaction("acme"); m.Transaction("acme"); m.Transaction("globex") },
			func(m *Metrics) prometheus.Collector { return m.transactions.WithLabelValues("acme") }, 2},
		{"refusals", func(m *Metrics) { m.Refusal("acme") },
			func(m *Metrics) prometheus.Collector { return m.refusals.WithLabelValues("acme") }, 1},
		{"sessions", func(m *Metrics) { m.SessionEnd("acme", 1, 2); m.SessionEnd("acme", 0, 0) },
			func(m *Metrics) prometheus.Collector { return m.sessions.WithLabelValues("acme") }, 2},
		{"bytes from client", func(m *Metrics) { m.SessionEnd("acme", 100, 5000); m.SessionEnd("acme", 20, 1) },
			func(m *Metrics) prometheus.Collector { return m.bytes.WithLabelValues("acme", "from_client") }, 120},
		{"bytes to client", func(m *Metrics) { m.SessionEnd("acme", 100, 5000); m.SessionEnd("acme", 20, 1) },
			func(m *Metrics) prometheus.Collector { return m.bytes.WithLabelValues("acme", "to_client") }, 5001},
		{"negative bytes ignored", func(m *Metrics) { m.SessionEnd("acme", -5, 7) },
			func(m *Metrics) prometheus.Collector { return m.bytes.WithLabelValues("acme", "from_client") }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(Options{})
			tt.do(m)
			if got := testutil.ToFloat64(tt.metric(m)); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTenantCardinalityCap(t *testing.T) {
	m := New(Options{}) // default 100
	for i := 1; i <= 100; i++ {
		m.Transaction(fmt.Sprintf("t%03d", i))
	}
	if n := testutil.CollectAndCount(m.transactions); n != 100 {
		t.Fatalf("series = %d, want 100", n)
	}
	// Tenant 101 and later go to "other"; admitted ones keep their label.
	m.Transaction("t101")
	m.Refusal("t101")
	m.SessionEnd("t101", 10, 20)
	m.Transaction("t102")
	m.Transaction("t001")
	if n := testutil.CollectAndCount(m.transactions); n != 101 {
		t.Fatalf("series = %d, want 101 (100 tenants + other)", n)
	}
	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.transactions.WithLabelValues(OtherTenant), 2},
		{m.transactions.WithLabelValues("t001"), 2},
		{m.refusals.WithLabelValues(OtherTenant), 1},
		{m.sessions.WithLabelValues(OtherTenant), 1},
		{m.bytes.WithLabelValues(OtherTenant, "from_client"), 10},
		{m.bytes.WithLabelValues(OtherTenant, "to_client"), 20},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%v: got %v, want %v", tc.c.(prometheus.Metric).Desc(), got, tc.want)
		}
	}
	// No series for tenants over the budget.
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "tenant" && (lp.GetValue() == "t101" || lp.GetValue() == "t102") {
					t.Errorf("%s: %s got its own label", mf.GetName(), lp.GetValue())
				}
			}
		}
	}
}

func TestTenantBudgetOptions(t *testing.T) {
	tests := []struct {
		max        int
		tenants    int
		wantSeries int
	}{
		{max: 1, tenants: 3, wantSeries: 2},
		{max: 5, tenants: 5, wantSeries: 5},
		{max: 5, tenants: 6, wantSeries: 6},
		{max: -1, tenants: 3, wantSeries: 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max=%d,tenants=%d", tt.max, tt.tenants), func(t *testing.T) {
			m := New(Options{MaxTenantLabels: tt.max})
			for i := range tt.tenants {
				m.Transaction(fmt.Sprint("t", i))
			}
			if n := testutil.CollectAndCount(m.transactions); n != tt.wantSeries {
				t.Fatalf("series = %d, want %d", n, tt.wantSeries)
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	const (
		workers = 16
		perW    = 500
		limit   = 10
		tenants = 25
	)
	m := New(Options{MaxTenantLabels: limit})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perW {
				tenant := fmt.Sprint("t", (w+i)%tenants)
				m.ConnState("", StateStartup)
				m.Auth("jwt", "ok", "")
				m.UpstreamConnect("default", time.Millisecond, nil)
				m.ConnState(StateStartup, StateActive)
				m.Transaction(tenant)
				m.Refusal(tenant)
				m.SessionEnd(tenant, 1, 2)
				m.ConnState(StateActive, StateClosed)
			}
		}()
	}
	// Scrape while writing.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if _, err := m.Registry().Gather(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	<-done

	const total = workers * perW
	if n := testutil.CollectAndCount(m.transactions); n != limit+1 {
		t.Fatalf("tenant series = %d, want %d", n, limit+1)
	}
	sum := func(name string) float64 {
		mfs, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		var s float64
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, mt := range mf.GetMetric() {
					s += mt.GetCounter().GetValue()
				}
			}
		}
		return s
	}
	for name, want := range map[string]float64{
		"pgtenant_transactions_total":    total,
		"pgtenant_guard_refusals_total":  total,
		"pgtenant_sessions_total":        total,
		"pgtenant_bytes_total":           3 * total,
		"pgtenant_authentications_total": total,
	} {
		if got := sum(name); got != want {
			t.Errorf("%s sum = %v, want %v", name, got, want)
		}
	}
	if g := testutil.ToFloat64(m.connStartup) + testutil.ToFloat64(m.connActive); g != 0 {
		t.Errorf("open connections = %v, want 0", g)
	}
	if c := testutil.ToFloat64(m.connClosed); c != total {
		t.Errorf("closed = %v, want %v", c, total)
	}
}

func TestTransactionNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	m := New(Options{MaxTenantLabels: 1})
	m.Transaction("acme")   // admitted
	m.Transaction("globex") // over budget: aggregated
	for _, tenant := range []string{"acme", "globex"} {
		if n := testing.AllocsPerRun(1000, func() { m.Transaction(tenant) }); n != 0 {
			t.Errorf("Transaction(%q) allocates %v per call", tenant, n)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { m.SessionEnd("acme", 10, 10); m.Refusal("acme") }); n != 0 {
		t.Errorf("SessionEnd+Refusal allocate %v per call", n)
	}
}

func BenchmarkTransactionAdmitted(b *testing.B) {
	m := New(Options{})
	m.Transaction("acme")
	b.ReportAllocs()
	for b.Loop() {
		m.Transaction("acme")
	}
}

func BenchmarkTransactionAdmittedParallel(b *testing.B) {
	m := New(Options{})
	for i := range 100 {
		m.Transaction(fmt.Sprint("t", i))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Transaction("t42")
		}
	})
}

func BenchmarkTransactionOverBudget(b *testing.B) {
	m := New(Options{MaxTenantLabels: 1})
	m.Transaction("acme")
	m.Transaction("globex")
	b.ReportAllocs()
	for b.Loop() {
		m.Transaction("initech")
	}
}

// gauges gathers m's gauges by name and label values ("name/v1/v2").
func gauges(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			name := f.GetName()
			for _, l := range mt.GetLabel() {
				name += "/" + l.GetValue()
			}
			if g := mt.GetGauge(); g != nil {
				got[name] = g.GetValue()
			}
		}
	}
	return got
}

func TestWatchPool(t *testing.T) {
	tests := []struct {
		desc  string
		pools []proxy.PoolStat
		want  map[string]float64
	}{
		{"current pools", []proxy.PoolStat{{Upstream: "default", Open: 7, Idle: 3, Waiting: 2}, {Upstream: "eu", Open: 1, Idle: 1}}, map[string]float64{
			"pgtenant_pool_connections/idle/default": 3, "pgtenant_pool_connections/active/default": 4, "pgtenant_pool_waiting_clients/default": 2,
			"pgtenant_pool_connections/idle/eu": 1, "pgtenant_pool_connections/active/eu": 0, "pgtenant_pool_waiting_clients/eu": 0,
		}},
		{"retired pools draining, two of one upstream summed", []proxy.PoolStat{
			{Upstream: "default", Open: 2, Idle: 1},
			{Upstream: "default", Open: 3, Retired: true},
			{Upstream: "default", Open: 1, Retired: true},
			{Upstream: "gone", Open: 2, Retired: true},
		}, map[string]float64{
			"pgtenant_pool_connections/idle/default": 1, "pgtenant_pool_connections/active/default": 1, "pgtenant_pool_connections/draining/default": 4,
			"pgtenant_pool_connections/draining/gone": 2,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			m := New(Options{})
			m.WatchPool(func() []proxy.PoolStat { return tt.pools })
			got := gauges(t, m)
			for name, want := range tt.want {
				if v, ok := got[name]; !ok || v != want {
					t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
				}
			}
			if _, ok := got["pgtenant_pool_connections/idle/gone"]; ok {
				t.Errorf("a removed upstream's retired pool has an idle series: %v", got)
			}
		})
	}
}

func TestWatchUpstreams(t *testing.T) {
	m := New(Options{})
	m.WatchUpstreams(func() []proxy.UpstreamStat {
		return []proxy.UpstreamStat{{Upstream: "default", Sessions: 5}, {Upstream: "eu", Sessions: 0}}
	})
	got := gauges(t, m)
	for name, want := range map[string]float64{"pgtenant_upstream_sessions/default": 5, "pgtenant_upstream_sessions/eu": 0} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

func TestPoolWaitByUpstream(t *testing.T) {
	m := New(Options{})
	m.PoolWait("eu", "acme")
	m.PoolWait("eu", "globex")
	m.PoolWait("default", "acme")
	for upstream, want := range map[string]float64{"eu": 2, "default": 1} {
		if got := testutil.ToFloat64(m.poolWaits.WithLabelValues(upstream)); got != want {
			t.Errorf("pool waits of %s = %v, want %v", upstream, got, want)
		}
	}
}

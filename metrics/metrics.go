// Package metrics exposes pgtenant's operational counters as Prometheus
// metrics. A *Metrics implements proxy.Observer; Handler serves it together
// with health, readiness and session status endpoints.
package metrics

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgtenant/pgtenant/proxy"
)

// DefaultMaxTenantLabels is the tenant label budget used when
// Options.MaxTenantLabels is zero.
const DefaultMaxTenantLabels = 100

// OtherTenant is the tenant label value under which tenants beyond the label
// budget are aggregated. A tenant actually named "other" shares its series.
const OtherTenant = "other"

// Client connection states reported through ConnState.
const (
	StateStartup = "startup"
	StateActive  = "active"
	StateClosed  = "closed"
)

// Options configures New.
type Options struct {
	// MaxTenantLabels is how many distinct tenants get their own tenant
	// label, first come first served; later tenants are counted under
	// tenant="other". Zero means DefaultMaxTenantLabels; a negative value
	// puts every tenant under "other".
	MaxTenantLabels int
}

// Metrics implements proxy.Observer with Prometheus collectors registered on
// its own registry (never the global one). All methods are safe for
// concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	connStartup prometheus.Gauge
	connActive  prometheus.Gauge
	connClosed  prometheus.Counter

	auth *prometheus.CounterVec

	upstreamConnects *prometheus.CounterVec   // by upstream, outcome
	upstreamLatency  *prometheus.HistogramVec // by upstream

	transactions *prometheus.CounterVec
	poolWaits    *prometheus.CounterVec // by upstream
	statements   *prometheus.CounterVec
	errors       *prometheus.CounterVec
	refusals     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	sessions     *prometheus.CounterVec
	panics       *prometheus.CounterVec
	pins         *prometheus.CounterVec
	pinned       prometheus.Gauge
	rateWait     *prometheus.HistogramVec
	rateRefused  *prometheus.CounterVec

	maxTenants int
	// tenants maps admitted tenants to their counters. The map is never
	// modified once published: admission copies it under mu, so readers
	// only need the atomic load and do not allocate.
	tenants atomic.Pointer[map[string]*tenantCounters]
	// other is nil until the budget is exhausted; once set, a tenant missing
	// from tenants is counted here without taking mu.
	other atomic.Pointer[tenantCounters]
	mu    sync.Mutex
}

// tenantCounters are the per-tenant children, resolved once so the hot path
// avoids WithLabelValues (which allocates).
type tenantCounters struct {
	transactions prometheus.Counter
	statements   prometheus.Counter
	errors       prometheus.Counter
	refusals     prometheus.Counter
	sessions     prometheus.Counter
	bytesFrom    prometheus.Counter
	bytesTo      prometheus.Counter
	rateWait     prometheus.Observer
	rateRefused  prometheus.Counter
}

var _ proxy.Observer = (*Metrics)(nil)

// rateWaitBuckets cover no wait to 10s (seconds).
var rateWaitBuckets = []float64{0, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// upstreamBuckets cover 1ms to 10s (seconds).
var upstreamBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New returns Metrics with all collectors, plus the Go runtime and process
// collectors, registered on a fresh registry.
func New(opts Options) *Metrics {
	limit := opts.MaxTenantLabels
	switch {
	case limit == 0:
		limit = DefaultMaxTenantLabels
	case limit < 0:
		limit = 0
	}
	m := &Metrics{reg: prometheus.NewRegistry(), maxTenants: limit}

	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgtenant_client_connections",
		Help: "Client connections by state (startup: authenticating; active: in a session).",
	}, []string{"state"})
	m.connStartup = conns.WithLabelValues(StateStartup)
	m.connActive = conns.WithLabelValues(StateActive)
	m.connClosed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgtenant_client_connections_closed_total",
		Help: "Client connections closed.",
	})

	m.auth = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_authentications_total",
		Help: "Client authentications by method, outcome and (for failures) SQLSTATE reason.",
	}, []string{"method", "outcome", "reason"})

	// Upstream labels are the names of the configuration's upstreams.
	m.upstreamConnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_upstream_connects_total",
		Help: "Upstream connection attempts by upstream and outcome (ok, timeout, error).",
	}, []string{"upstream", "outcome"})
	m.upstreamLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgtenant_upstream_connect_duration_seconds",
		Help:    "Latency of upstream connection attempts, successful or not, by upstream.",
		Buckets: upstreamBuckets,
	}, []string{"upstream"})

	m.transactions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_transactions_total",
		Help: "Units started outside a transaction block (tenant assertions made), by tenant.",
	}, []string{"tenant"})
	m.statements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_statements_total",
		Help: "Statements sent (simple Query and Execute messages), by tenant.",
	}, []string{"tenant"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_errors_total",
		Help: "ErrorResponses relayed to clients, by tenant.",
	}, []string{"tenant"})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_guard_refusals_total",
		Help: "Statements refused by the guard, by tenant.",
	}, []string{"tenant"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_bytes_total",
		Help: "Bytes relayed by ended sessions, by tenant and direction (from_client, to_client).",
	}, []string{"tenant", "direction"})
	m.poolWaits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_pool_waits_total",
		Help: "Transactions that waited for a pooled upstream connection (transaction mode), by upstream.",
	}, []string{"upstream"})
	m.sessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_sessions_total",
		Help: "Sessions ended, by tenant.",
	}, []string{"tenant"})

	m.pins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_pool_pins_total",
		Help: "Pooled connections pinned to one transaction-mode client, by the state that pinned them.",
	}, []string{"reason"})
	m.pinned = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgtenant_pool_pinned_connections",
		Help: "Pooled connections pinned to one transaction-mode client now.",
	})
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_session_panics_total",
		Help: "Bugs caught in a session (where: client, upstream); the session ended, its upstream connection was closed, the proxy went on.",
	}, []string{"where"})

	m.rateWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgtenant_rate_limit_wait_seconds",
		Help:    "Time transaction starts waited for their turn under the tenant's transactions_per_second, by tenant.",
		Buckets: rateWaitBuckets,
	}, []string{"tenant"})
	m.rateRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtenant_rate_limit_refusals_total",
		Help: "Sessions ended because a transaction start would have waited longer than the tenant's rate_limit_wait, by tenant.",
	}, []string{"tenant"})

	m.reg.MustRegister(
		conns, m.connClosed, m.auth, m.upstreamConnects, m.upstreamLatency,
		m.transactions, m.statements, m.errors, m.refusals, m.bytes, m.sessions, m.poolWaits, m.panics, m.pins, m.pinned,
		m.rateWait, m.rateRefused,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	empty := map[string]*tenantCounters{}
	m.tenants.Store(&empty)
	return m
}

// Registry returns the registry holding m's collectors. Callers may register
// more collectors on it.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) stateGauge(state string) prometheus.Gauge {
	switch state {
	case StateStartup:
		return m.connStartup
	case StateActive:
		return m.connActive
	}
	return nil
}

// ConnState moves a client connection from one state to another. from ""
// means a new connection; to "closed" counts a closed connection. States
// other than startup, active and closed are ignored, keeping the label set
// fixed.
func (m *Metrics) ConnState(from, to string) {
	if g := m.stateGauge(from); g != nil {
		g.Dec()
	}
	if g := m.stateGauge(to); g != nil {
		g.Inc()
	} else if to == StateClosed {
		m.connClosed.Inc()
	}
}

// Auth counts an authentication. reason is expected to be empty for
// successes and a SQLSTATE for failures.
func (m *Metrics) Auth(method, outcome, reason string) {
	m.auth.WithLabelValues(method, outcome, reason).Inc()
}

// UpstreamConnect counts a connection attempt to upstream and observes its
// latency. A failure whose error is a timeout (context.DeadlineExceeded or a
// net.Error reporting Timeout) is counted as "timeout", others as "error".
func (m *Metrics) UpstreamConnect(upstream string, d time.Duration, err error) {
	m.upstreamLatency.WithLabelValues(upstream).Observe(d.Seconds())
	outcome := "error"
	switch {
	case err == nil:
		outcome = "ok"
	case isTimeout(err):
		outcome = "timeout"
	}
	m.upstreamConnects.WithLabelValues(upstream, outcome).Inc()
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Transaction counts a unit for tenant. It does not allocate once tenant has
// been admitted (or the label budget is exhausted).
func (m *Metrics) Transaction(tenant string) { m.tenant(tenant).transactions.Inc() }

// Refusal counts a guard refusal for tenant.
func (m *Metrics) Refusal(tenant string) { m.tenant(tenant).refusals.Inc() }

// Statements implements proxy.Observer.
func (m *Metrics) Statements(tenant string, n int64) {
	if n > 0 {
		m.tenant(tenant).statements.Add(float64(n))
	}
}

// Error implements proxy.Observer.
func (m *Metrics) Error(tenant string) { m.tenant(tenant).errors.Inc() }

// WatchPool exports each upstream's transaction pool, read from stats at
// each scrape: pgtenant_pool_connections{upstream, state="idle"|"active"}
// for the pools new sessions use, state="draining" for the connections of
// pools a reload replaced (retired, still serving the sessions on them),
// and pgtenant_pool_waiting_clients{upstream}. Upstreams are the
// configured ones (or were, for a pool draining after a reload removed
// its upstream), so the label is bounded.
func (m *Metrics) WatchPool(stats func() []proxy.PoolStat) {
	m.reg.MustRegister(poolCollector{stats: stats})
}

// WatchUpstreams exports the sessions on each upstream, read from stats at
// each scrape: pgtenant_upstream_sessions{upstream}.
func (m *Metrics) WatchUpstreams(stats func() []proxy.UpstreamStat) {
	m.reg.MustRegister(upstreamCollector{stats: stats})
}

var (
	poolConnsDesc        = prometheus.NewDesc("pgtenant_pool_connections", "Upstream connections of the transaction pool, by upstream and state (idle, active; draining: of a pool a reload replaced).", []string{"upstream", "state"}, nil)
	poolWaitingDesc      = prometheus.NewDesc("pgtenant_pool_waiting_clients", "Clients waiting for a pooled upstream connection, by upstream.", []string{"upstream"}, nil)
	upstreamSessionsDesc = prometheus.NewDesc("pgtenant_upstream_sessions", "Client sessions placed on each upstream (both pool modes).", []string{"upstream"}, nil)
)

// poolCollector reads the pools at each scrape.
type poolCollector struct{ stats func() []proxy.PoolStat }

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolConnsDesc
	ch <- poolWaitingDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	// One series per label set: a reload may leave several retired pools
	// of one upstream draining at once.
	draining := map[string]int{}
	var names []string
	for _, p := range c.stats() {
		if p.Retired {
			if _, ok := draining[p.Upstream]; !ok {
				names = append(names, p.Upstream)
			}
			draining[p.Upstream] += p.Open
			continue
		}
		ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(p.Idle), p.Upstream, "idle")
		ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(p.Open-p.Idle), p.Upstream, "active")
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(p.Waiting), p.Upstream)
	}
	for _, name := range names {
		ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(draining[name]), name, "draining")
	}
}

// upstreamCollector reads the sessions per upstream at each scrape.
type upstreamCollector struct{ stats func() []proxy.UpstreamStat }

func (upstreamCollector) Describe(ch chan<- *prometheus.Desc) { ch <- upstreamSessionsDesc }

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.stats() {
		ch <- prometheus.MustNewConstMetric(upstreamSessionsDesc, prometheus.GaugeValue, float64(u.Sessions), u.Upstream)
	}
}

// WatchPauses exports the paused tenants and what waits for them, read
// from counts at each scrape.
func (m *Metrics) WatchPauses(counts func() (tenants, waiting int)) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgtenant_paused_tenants",
			Help: "Tenants paused (pgtenant pause) and not yet resumed.",
		}, func() float64 { n, _ := counts(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgtenant_pause_waiting",
			Help: "Transaction starts and logins of paused tenants waiting for a resume.",
		}, func() float64 { _, n := counts(); return float64(n) }),
	)
}

// WatchAudit exports dropped, the count of audit log lines dropped because
// the writer fell behind.
func (m *Metrics) WatchAudit(dropped func() float64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "pgtenant_audit_dropped_total",
		Help: "Audit log lines dropped because the writer fell behind (its buffer was full).",
	}, dropped))
}

// RateLimitWait implements proxy.Observer: the wait of an admitted
// transaction start is observed, a refusal counted.
func (m *Metrics) RateLimitWait(tenant string, wait time.Duration, refused bool) {
	c := m.tenant(tenant)
	if refused {
		c.rateRefused.Inc()
		return
	}
	c.rateWait.Observe(wait.Seconds())
}

// PoolWait implements proxy.Observer.
func (m *Metrics) PoolWait(upstream, _ string) { m.poolWaits.WithLabelValues(upstream).Inc() }

// Pinned implements proxy.Observer.
func (m *Metrics) Pinned(reason string, delta int) {
	if delta > 0 {
		m.pins.WithLabelValues(reason).Inc()
	}
	m.pinned.Add(float64(delta))
}

// Panic implements proxy.Observer.
func (m *Metrics) Panic(where string) { m.panics.WithLabelValues(where).Inc() }

// SessionEnd counts an ended session and the bytes it relayed each way.
// Negative byte counts are ignored.
func (m *Metrics) SessionEnd(tenant string, fromClient, toClient int64) {
	c := m.tenant(tenant)
	c.sessions.Inc()
	if fromClient > 0 {
		c.bytesFrom.Add(float64(fromClient))
	}
	if toClient > 0 {
		c.bytesTo.Add(float64(toClient))
	}
}

// tenant returns the counters for tenant, admitting it if the label budget
// allows and otherwise returning the "other" counters.
func (m *Metrics) tenant(tenant string) *tenantCounters {
	if c, ok := (*m.tenants.Load())[tenant]; ok {
		return c
	}
	if o := m.other.Load(); o != nil {
		return o
	}
	return m.admit(tenant)
}

func (m *Metrics) admit(tenant string) *tenantCounters {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.tenants.Load()
	if c, ok := cur[tenant]; ok {
		return c
	}
	if o := m.other.Load(); o != nil {
		return o
	}
	if len(cur) >= m.maxTenants {
		o := m.counters(OtherTenant)
		m.other.Store(o)
		return o
	}
	next := make(map[string]*tenantCounters, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	c := m.counters(tenant)
	next[tenant] = c
	m.tenants.Store(&next)
	return c
}

func (m *Metrics) counters(tenant string) *tenantCounters {
	return &tenantCounters{
		transactions: m.transactions.WithLabelValues(tenant),
		statements:   m.statements.WithLabelValues(tenant),
		errors:       m.errors.WithLabelValues(tenant),
		refusals:     m.refusals.WithLabelValues(tenant),
		sessions:     m.sessions.WithLabelValues(tenant),
		bytesFrom:    m.bytes.WithLabelValues(tenant, "from_client"),
		bytesTo:      m.bytes.WithLabelValues(tenant, "to_client"),
		rateWait:     m.rateWait.WithLabelValues(tenant),
		rateRefused:  m.rateRefused.WithLabelValues(tenant),
	}
}

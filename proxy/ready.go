package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

// Readiness (/readyz). A replica is ready when it is not shutting down and
// its default upstream, where the tenants not placed elsewhere live,
// accepts connections. Another upstream being down does not make it
// unready: that upstream is down for every replica alike, and a load
// balancer taking them all out would cut off every tenant for the sake of
// the ones placed there. Each upstream is checked and listed all the same,
// and one can be asked about alone.

// Readiness is the answer to a readiness check.
type Readiness struct {
	ShuttingDown bool
	// Asked is the upstream asked about ("" for all); Unknown says the
	// configuration has none of that name.
	Asked   string
	Unknown bool
	// Upstreams are those checked, the default first, then by name.
	Upstreams []UpstreamReadiness
}

// UpstreamReadiness is one upstream's check.
type UpstreamReadiness struct {
	Upstream string
	Err      error // nil when it accepts TCP connections
}

// Ready reports whether the check passed: not shutting down, and the
// upstream asked about, or else the default one, reachable.
func (rd Readiness) Ready() bool {
	if rd.ShuttingDown || rd.Unknown {
		return false
	}
	want := cmp.Or(rd.Asked, config.DefaultUpstream)
	for _, u := range rd.Upstreams {
		if u.Upstream == want {
			return u.Err == nil
		}
	}
	return false
}

// String is the answer's text: a first line saying ready or why not, then
// a line per upstream checked.
func (rd Readiness) String() string {
	var b strings.Builder
	switch {
	case rd.Unknown:
		fmt.Fprintf(&b, "no upstream named %q in the configuration\n", rd.Asked)
	case rd.ShuttingDown:
		b.WriteString("shutting down\n")
	case rd.Ready():
		b.WriteString("ok\n")
	default:
		want := cmp.Or(rd.Asked, config.DefaultUpstream)
		fmt.Fprintf(&b, "upstream %s unreachable\n", want)
	}
	for _, u := range rd.Upstreams {
		if u.Err != nil {
			fmt.Fprintf(&b, "%s: unreachable: %v\n", u.Upstream, u.Err)
		} else {
			fmt.Fprintf(&b, "%s: ok\n", u.Upstream)
		}
	}
	return b.String()
}

// Readiness checks, in parallel, whether each configured upstream (or
// only the one named) accepts TCP connections, within ctx and the
// configured connect_timeout.
func (s *Server) Readiness(ctx context.Context, only string) Readiness {
	rd := Readiness{Asked: only}
	s.mu.Lock()
	rd.ShuttingDown = s.draining || s.closed
	s.mu.Unlock()
	rt := s.rt.Load()
	var ups []*upstream
	for name, up := range rt.upstreams {
		if only == "" || name == only {
			ups = append(ups, up)
		}
	}
	if only != "" && len(ups) == 0 {
		rd.Unknown = true
		return rd
	}
	ctx, cancel := context.WithTimeout(ctx, rt.cfg.ConnectTimeout.Duration)
	defer cancel()
	rd.Upstreams = make([]UpstreamReadiness, len(ups))
	var wg sync.WaitGroup
	for i, up := range ups {
		wg.Go(func() { rd.Upstreams[i] = UpstreamReadiness{Upstream: up.name, Err: reachable(ctx, up.config)} })
	}
	wg.Wait()
	slices.SortFunc(rd.Upstreams, func(a, b UpstreamReadiness) int { return compareUpstreams(a.Upstream, b.Upstream) })
	return rd
}

// Ready reports whether the server accepts sessions: not shutting down,
// and the default upstream accepting TCP connections.
func (s *Server) Ready(ctx context.Context) error {
	rd := s.Readiness(ctx, config.DefaultUpstream)
	if !rd.Ready() {
		return errors.New(strings.TrimSpace(rd.String()))
	}
	return nil
}

// reachable dials the upstream's host (or, failing that, its fallbacks:
// further hosts of a multi-host URL), as TCP or a Unix socket.
func reachable(ctx context.Context, cfg *pgconn.Config) error {
	targets := append([]*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port}}, cfg.Fallbacks...)
	var firstErr error
	for _, t := range targets {
		network, addr := "tcp", net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
		if strings.HasPrefix(t.Host, "/") {
			network, addr = "unix", t.Host+"/.s.PGSQL."+strconv.Itoa(int(t.Port))
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err == nil {
			conn.Close()
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/metrics"
	"github.com/pgtenant/pgtenant/proxy"
)

// startAdmin serves metrics, health and the session list on
// cfg.AdminListen, and returns a function that stops it. ln, if not nil, is
// already listening there (the demo picks a free port before it writes the
// config).
func startAdmin(cfg *config.Config, srv *proxy.Server, log *slog.Logger, ln net.Listener) (func(), error) {
	m := metrics.New(metrics.Options{MaxTenantLabels: cfg.MetricsTenantLabels})
	srv.SetObserver(m)
	m.WatchPool(srv.UpstreamPools)
	m.WatchAudit(srv.AuditDropped)
	if cfg.AdminListen == "" {
		return func() {}, nil
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("admin_listen: %w", err)
		}
	}
	hs := &http.Server{Handler: metrics.Handler(m, srv.Ready, srv.Sessions), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	log.Info("admin endpoints listening", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz /status")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	}, nil
}

// runStatus prints the sessions of a running pgtenant from its admin
// endpoint.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", "127.0.0.1:9187", "the running pgtenant's admin_listen address")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + *addr + "/status")
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant status: %v\n", err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			fmt.Fprintf(stderr, "nothing listens on %s: set admin_listen in the running pgtenant's config (e.g. admin_listen: 127.0.0.1:9187), or pass --admin with the address it uses\n", *addr)
		}
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "pgtenant status: %s %v\n", resp.Status, err)
		return 1
	}
	if *asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var status struct {
		Sessions []proxy.SessionInfo `json:"sessions"`
	}
	if err := json.Unmarshal(body, &status); err != nil {
		fmt.Fprintf(stderr, "pgtenant status: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSER\tTENANT\tREMOTE\tUPSTREAM\tUPSTREAM PID\tSTATE\tSINCE\tASSERTIONS\tREFUSALS")
	for _, s := range status.Sessions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\n", s.ID, s.User, s.Tenant, s.Remote, s.Upstream, s.UpstreamPID,
			map[string]string{"I": "idle", "T": "in transaction", "E": "failed transaction"}[s.TxStatus],
			s.Started.Format(time.RFC3339), s.Assertions, s.Refusals)
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "%d sessions\n", len(status.Sessions))
	return 0
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
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
	m.WatchUpstreams(srv.UpstreamSessions)
	m.WatchAudit(srv.AuditDropped)
	m.WatchPauses(srv.PauseCounts)
	if cfg.AdminListen == "" {
		return func() {}, nil
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("admin_listen: %w", err)
		}
	}
	admin := metrics.Admin{Ready: srv.Readiness, Sessions: srv.Sessions, Paused: srv.Paused, Pause: srv.Pause, Resume: srv.Resume}
	hs := &http.Server{Handler: metrics.AdminHandler(m, admin), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	log.Info("admin endpoints listening", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz /status /tenants/{tenant}/pause /tenants/{tenant}/resume")
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
	var status metrics.Status
	if err := json.Unmarshal(body, &status); err != nil {
		fmt.Fprintf(stderr, "pgtenant status: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSER\tTENANT\tREMOTE\tUPSTREAM\tUPSTREAM PID\tSTATE\tSINCE\tASSERTIONS\tREFUSALS")
	for _, s := range status.Sessions {
		upstream := s.Upstream
		if s.Retired {
			upstream += " (draining)" // a reload removed or changed it
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\n", s.ID, s.User, s.Tenant, s.Remote, upstream, s.UpstreamPID,
			map[string]string{"I": "idle", "T": "in transaction", "E": "failed transaction"}[s.TxStatus],
			s.Started.Format(time.RFC3339), s.Assertions, s.Refusals)
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "%d sessions\n", len(status.Sessions))
	for _, p := range status.Paused {
		fmt.Fprintf(stdout, "paused: %s since %s, %d waiting, %d in a transaction\n", p.Tenant, p.Since.Format(time.RFC3339), p.Waiting, p.InTransaction)
	}
	return 0
}

// adminPost posts to path on a running pgtenant's admin endpoint and
// returns the answer's body; a refusal is an error with its text.
func adminPost(addr, path string, timeout time.Duration, stderr io.Writer, cmd string) ([]byte, bool) {
	client := &http.Client{Timeout: timeout}
	resp, err := client.Post("http://"+addr+path, "application/json", nil)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant %s: %v\n", cmd, err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			fmt.Fprintf(stderr, "nothing listens on %s: set admin_listen in the running pgtenant's config (e.g. admin_listen: 127.0.0.1:9187), or pass --admin with the address it uses\n", addr)
		}
		return nil, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "pgtenant %s: %s %s%v\n", cmd, resp.Status, bytes.TrimSpace(body), errOrEmpty(err))
		return nil, false
	}
	return body, true
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

// runPauseResume pauses or resumes a tenant of a running pgtenant.
func runPauseResume(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", "127.0.0.1:9187", "the running pgtenant's admin_listen address")
	var wait *time.Duration
	if cmd == "pause" {
		wait = fs.Duration("wait", 30*time.Second, "how long to wait for the tenant's transactions in progress to end (0: do not wait)")
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pgtenant %s [--admin addr] <tenant>\n", cmd)
		fs.PrintDefaults()
	}
	// The tenant may come before the flags too.
	var tenant string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		tenant, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if tenant == "" && fs.NArg() == 1 {
		tenant = fs.Arg(0)
	} else if fs.NArg() > 0 {
		tenant = ""
	}
	if tenant == "" {
		fs.Usage()
		return 2
	}
	path := "/tenants/" + url.PathEscape(tenant) + "/" + cmd
	timeout := 5 * time.Second
	if wait != nil && *wait > 0 {
		path += "?wait=" + url.QueryEscape(wait.String())
		timeout += *wait
	}
	body, ok := adminPost(*addr, path, timeout, stderr, cmd)
	if !ok {
		return 1
	}
	var info proxy.PauseInfo
	if err := json.Unmarshal(body, &info); err != nil {
		fmt.Fprintf(stderr, "pgtenant %s: %v\n", cmd, err)
		return 1
	}
	if cmd == "resume" {
		fmt.Fprintf(stdout, "tenant %s resumed: %d waiting went on, %d sessions moved to its new placement\n", info.Tenant, info.Waiting, info.Moved)
		return 0
	}
	if info.InTransaction > 0 {
		// Paused all the same; a move must not start yet.
		fmt.Fprintf(stdout, "tenant %s paused, but %d of its sessions are still in a transaction begun before the pause\n", info.Tenant, info.InTransaction)
		return 1
	}
	fmt.Fprintf(stdout, "tenant %s paused: no transaction of it is in progress\n", info.Tenant)
	return 0
}

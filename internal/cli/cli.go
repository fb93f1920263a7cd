// Package cli is pgtenant's command line: run the proxy, the demo, and the
// password verifier helper.
package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/term"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/signedctx"
)

// Version is set at build time with -ldflags "-X github.com/pgtenant/pgtenant/internal/cli.Version=...".
var Version = "0.1.0-dev"

const usage = `pgtenant: a PostgreSQL proxy that gives each tenant its own view of shared tables.

Usage:
  pgtenant --config pgtenant.yaml [--pid-file f]
                                    run the proxy; SIGHUP reloads the config, SIGTERM drains
  pgtenant reload --pid-file f      make the running proxy re-read its config
  pgtenant status [--admin addr]    list the running proxy's sessions (needs admin_listen)
  pgtenant pause <tenant> [--admin addr] [--wait 30s]
                                    hold the tenant's new transactions and logins; returns once
                                    none of its transactions is in progress (exit 1 if some still are)
  pgtenant resume <tenant> [--admin addr]
                                    let them go on, on the tenant's placement as configured now
  pgtenant demo [--listen addr]     start a throwaway PostgreSQL with two demo tenants and the
                                    proxy in front of it, run from a config it writes; prints psql
                                    lines and operations to try; Ctrl-C drains and cleans up
  pgtenant passwd                   print a SCRAM-SHA-256 verifier for a password read from
                                    stdin (or a prompt), for the users[].password config field
  pgtenant signed-context-sql --config pgtenant.yaml [--role app_rls]
                                    print the SQL that installs the signed tenant context
                                    (config signed_context) for the RLS role
  pgtenant doctor --upstream url    connect upstream as the RLS role and report what would
                                    break tenant isolation (--config, --json, --tenant-column)
  pgtenant --version                print the version
  pgtenant --help                   this text

Config (YAML):
  listen: 127.0.0.1:6432
  tls: {cert_file: server.crt, key_file: server.key, mode: require}   # optional; mode allow|require
  upstream: postgres://app_rls:${UPSTREAM_PASSWORD}@127.0.0.1:5432/app?sslmode=prefer
  tenant_setting: app.tenant_id
  users:
    - name: acme_app
      password: "SCRAM-SHA-256$4096:..."     # from pgtenant passwd
      tenant: 11111111-1111-1111-1111-111111111111
`

// Main runs the command line and returns the exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "demo":
			return runDemo(args[1:], stdout, stderr)
		case "passwd":
			return runPasswd(args[1:], stdin, stdout, stderr)
		case "doctor":
			return runDoctor(args[1:], stdout, stderr)
		case "signed-context-sql":
			return runSignedContextSQL(args[1:], stdout, stderr)
		case "reload":
			return runReload(args[1:], stderr)
		case "status":
			return runStatus(args[1:], stdout, stderr)
		case "pause", "resume":
			return runPauseResume(args[0], args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("pgtenant", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	configPath := fs.String("config", "", "path to the YAML config file")
	pidFile := fs.String("pid-file", "", "write the process id here (for pgtenant reload)")
	version := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "pgtenant %s\n", Version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgtenant: unknown command %q\n\n%s", fs.Arg(0), usage)
		return 2
	}
	if *configPath == "" {
		fmt.Fprintf(stderr, "pgtenant: --config is required\n\n%s", usage)
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant: %v\n", err)
		return 1
	}
	log := newLogger(cfg, stderr)
	raiseOpenFiles(cfg, log)
	srv, err := NewServer(cfg, log)
	if err != nil {
		// What NewServer refuses (a broken verifier, a key file) is in the file.
		fmt.Fprintf(stderr, "pgtenant: config file %s: %v\n", *configPath, err)
		return 1
	}
	stopAdmin, err := startAdmin(cfg, srv, log, nil)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant: %v\n", err)
		srv.Close()
		return 1
	}
	defer stopAdmin()
	// In the background: an upstream that is down must not delay startup.
	checkCtx, stopCheck := context.WithCancel(context.Background())
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		warnTenantTypes(checkCtx, cfg, log)
	}()
	defer func() {
		stopCheck()
		<-checked
	}()
	if *pidFile != "" {
		if err := writePIDFile(*pidFile); err != nil {
			fmt.Fprintf(stderr, "pgtenant: %v\n", err)
			srv.Close()
			return 1
		}
		defer os.Remove(*pidFile)
	}
	signals := notifySignals()
	defer signal.Stop(signals)
	ln, err := srv.Listen()
	if err != nil {
		log.Error("listen failed", "err", err)
		srv.Close()
		return 1
	}
	if err := servePeers(srv, log); err != nil {
		log.Error("listen failed on this replica's peer address", "err", err)
		ln.Close()
		srv.Close()
		return 1
	}
	return serve(srv, ln, cfg, *configPath, log, signals)
}

// servePeers takes the cancel requests other replicas forward, on this
// replica's own peer address, until the server closes; nothing without peers.
func servePeers(srv *proxy.Server, log *slog.Logger) error {
	ln, err := srv.ListenPeers()
	if err != nil || ln == nil {
		return err
	}
	log.Info("pgtenant listening for cancel requests from its peers", "addr", ln.Addr().String())
	go func() {
		if err := srv.ServePeers(ln); err != nil && !errors.Is(err, proxy.ErrServerClosed) {
			// Sessions go on; only cancels forwarded here are lost.
			log.Error("peer listener failed: cancel requests other replicas forward are lost", "err", err)
		}
	}()
	return nil
}

// notifySignals catches what serve handles: SIGHUP, SIGTERM and SIGINT.
func notifySignals() chan os.Signal {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
	return signals
}

// writePIDFile writes this process's id for `pgtenant reload`.
func writePIDFile(path string) error {
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

// serve runs the server on ln until a signal from signals (notifySignals):
// SIGHUP reloads the config, SIGTERM and SIGINT drain (a second one stops
// waiting).
func serve(srv *proxy.Server, ln net.Listener, cfg *config.Config, configPath string, log *slog.Logger, signals <-chan os.Signal) int {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("pgtenant listening", "addr", ln.Addr().String(), "version", Version)
	for {
		select {
		case err := <-errc:
			log.Error("listener failed", "err", err)
			srv.Close()
			return 1
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				reload(srv, configPath, log)
				continue
			}
			log.Info("draining: no new connections; transactions in progress may finish", "timeout", cfg.ShutdownTimeout.Duration)
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
			go func() {
				// A second signal: stop waiting.
				select {
				case <-signals:
					cancel()
				case <-ctx.Done():
				}
			}()
			_ = srv.Shutdown(ctx)
			cancel()
			log.Info("stopped")
			return 0
		}
	}
}

// reload re-reads the config; an invalid one is refused with the reason and
// the running one stays.
func reload(srv *proxy.Server, configPath string, log *slog.Logger) {
	cfg, err := config.Load(configPath)
	if err != nil {
		log.Error("reload refused: the running configuration stays", "err", err)
		return
	}
	if err := Reload(srv, cfg, log); err != nil {
		log.Error("reload refused: the running configuration stays", "err", fmt.Errorf("config file %s: %w", configPath, err))
	}
}

// Reload makes srv use cfg (a validated config), as SIGHUP does; on an
// error the running configuration stays.
func Reload(srv *proxy.Server, cfg *config.Config, log *slog.Logger) error {
	authn, closers, err := newAuthenticator(cfg, log)
	if err != nil {
		return err
	}
	if err := srv.Reload(cfg, authn); err != nil {
		for _, c := range closers {
			c()
		}
		return err
	}
	for _, c := range closers {
		srv.OnClose(c)
	}
	reloadAudit(srv, cfg.Audit, log)
	go warnTenantTypes(context.Background(), cfg, log)
	return nil
}

// NewServer builds the proxy from a validated config: the user directory,
// the authenticator and the listener's TLS.
func NewServer(cfg *config.Config, log *slog.Logger) (*proxy.Server, error) {
	authn, closers, err := newAuthenticator(cfg, log)
	if err != nil {
		return nil, err
	}
	srv, err := proxy.New(cfg, authn, log)
	if err != nil {
		for _, c := range closers {
			c()
		}
		return nil, err
	}
	for _, c := range closers {
		srv.OnClose(c)
	}
	if err := startAudit(srv, cfg.Audit, log); err != nil {
		srv.Close()
		return nil, err
	}
	return srv, nil
}

// newAuthenticator builds the user directories and the authenticator, and
// returns what must be closed when they are no longer used.
func newAuthenticator(cfg *config.Config, log *slog.Logger) (proxy.Authenticator, []func(), error) {
	dir, plaintext, err := auth.NewStaticDirectory(cfg.Users)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range plaintext {
		log.Warn("user has a plaintext password in the config; use a SCRAM verifier from `pgtenant passwd` outside development", "user", u)
	}
	for _, d := range cfg.Deprecations {
		log.Warn("deprecated config key: " + d)
	}
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	if cfg.DBUsers != nil {
		dbDir, err := auth.NewDBDirectory(cfg.DBUsers, log)
		if err != nil {
			return nil, nil, fmt.Errorf("db_users: %w", err)
		}
		closers = append(closers, dbDir.Close)
		// Users in the config come first; the database answers for the rest.
		dir = auth.Chain(dir, dbDir)
	}
	var opts []auth.Option
	if cfg.TLS != nil {
		// SCRAM-SHA-256-PLUS binds the exchange to the server certificate.
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("tls: %w", err)
		}
		opts = append(opts, auth.WithServerCertificate(cert.Leaf))
	}
	if cfg.JWT != nil {
		verifier, err := auth.NewJWTVerifier(context.Background(), cfg.JWT)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("jwt: %w", err)
		}
		closers = append(closers, verifier.Close)
		opts = append(opts, auth.WithJWT(verifier, cfg.MethodFor, cfg.Auth.CleartextOnLoopback))
	}
	return auth.NewAuthenticator(dir, opts...), closers, nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// runReload asks a running pgtenant to re-read its config (SIGHUP).
func runReload(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pidFile := fs.String("pid-file", "", "the running pgtenant's --pid-file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pidFile == "" {
		fmt.Fprintln(stderr, "pgtenant reload: --pid-file is required")
		return 2
	}
	data, err := os.ReadFile(*pidFile)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant reload: %v\n", err)
		return 1
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		fmt.Fprintf(stderr, "pgtenant reload: %s does not hold a process id\n", *pidFile)
		return 1
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		fmt.Fprintf(stderr, "pgtenant reload: signalling process %d: %v\n", pid, err)
		return 1
	}
	return 0
}

// runSignedContextSQL prints the install script for the signed context.
func runSignedContextSQL(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant signed-context-sql", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path to the YAML config file (with signed_context)")
	role := fs.String("role", "", "the RLS role pgtenant connects as (default: the upstream user)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "pgtenant signed-context-sql: --config is required")
		return 2
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant: %v\n", err)
		return 1
	}
	if cfg.SignedContext == nil {
		fmt.Fprintln(stderr, "pgtenant signed-context-sql: the config has no signed_context section")
		return 1
	}
	key, err := signedctx.ParseKey(cfg.SignedContext.Key)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant: signed_context.key: %v\n", err)
		return 1
	}
	if *role == "" {
		upstream, err := pgconn.ParseConfig(cfg.Upstream)
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant: upstream: %v\n", err)
			return 1
		}
		*role = upstream.User
	}
	fmt.Fprint(stdout, signedctx.SQL(*role, key, cfg.TenantSetting, cfg.SignatureSetting()))
	return 0
}

const passwdUsage = `usage: pgtenant passwd

Reads a password from stdin (or prompts twice on a terminal) and prints its
SCRAM-SHA-256 verifier, for the users[].password config field or db_users.
`

// runPasswd reads a password (prompting twice on a terminal) and prints its
// SCRAM-SHA-256 verifier. Flags are checked first: --help or a mistyped
// flag must not leave the user typing a password.
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below: to stdout for --help, to stderr after an error
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, passwdUsage)
			return 0
		}
		fmt.Fprint(stderr, "\n"+passwdUsage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgtenant passwd: unexpected argument %q (the password is read from stdin)\n\n%s", fs.Arg(0), passwdUsage)
		return 2
	}
	var password string
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant passwd: %v\n", err)
			return 1
		}
		fmt.Fprint(stderr, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant passwd: %v\n", err)
			return 1
		}
		if string(p1) != string(p2) {
			fmt.Fprintln(stderr, "pgtenant passwd: passwords do not match")
			return 1
		}
		password = string(p1)
	} else {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintf(stderr, "pgtenant passwd: %v\n", err)
			return 1
		}
		password = strings.TrimRight(line, "\r\n")
	}
	if password == "" {
		fmt.Fprintln(stderr, "pgtenant passwd: empty password")
		return 1
	}
	v, err := auth.NewVerifier(password)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant passwd: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, v)
	return 0
}

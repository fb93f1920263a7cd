// Command loginbench measures logins per second through pgtenant: SCRAM-SHA-256
// users from the config, and RS256 JWTs, against direct logins to PostgreSQL.
// Each login is a full connect (pgtenant authenticates the client, connects
// upstream and asserts the tenant) followed by a close.
//
//	go run ./bench/loginbench -duration 5s -workers 4
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "run length per method")
	workers := flag.Int("workers", 4, "concurrent logins")
	flag.Parse()
	if err := run(*duration, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "loginbench:", err)
		os.Exit(1)
	}
}

func run(duration time.Duration, workers int) error {
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := demo.Setup(ctx, c); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "loginbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyFile := filepath.Join(dir, "rs.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cfg := &config.Config{
		Listen: ln.Addr().String(), Upstream: c.URL(demo.RLSRole, demo.RLSPassword, demo.Database),
		TenantSetting: "app.tenant_id", ConnectTimeout: config.Duration{Duration: 10 * time.Second},
		LogLevel: "error", LogFormat: "text",
		Users: []config.User{{Name: demo.TenantA.User, Password: demo.TenantA.Password, Tenant: demo.TenantA.ID}},
		Auth: config.Auth{
			Methods:             []config.MethodRule{{Users: "*@*", Method: config.MethodJWT}},
			CleartextOnLoopback: true,
		},
		JWT: &config.JWT{PublicKeys: []config.JWTKey{{File: keyFile, Algorithms: []string{"RS256"}}}, TenantClaim: "tenant_id"},
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	host, port, _ := net.SplitHostPort(ln.Addr().String())

	token, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub": "alice@acme", "tenant_id": demo.TenantA.ID, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(key)
	if err != nil {
		return err
	}
	cases := []struct{ name, conn string }{
		{"direct (PostgreSQL SCRAM)", fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=app sslmode=disable", c.Port, demo.RLSRole, demo.RLSPassword)},
		{"pgtenant SCRAM-SHA-256", fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable", host, port, demo.TenantA.User, demo.TenantA.Password)},
		{"pgtenant RS256 JWT", fmt.Sprintf("host=%s port=%s user=alice@acme password=%s dbname=app sslmode=disable", host, port, token)},
	}
	fmt.Printf("logins per second, %d workers, %s each (connect + close):\n", workers, duration)
	for _, tc := range cases {
		n, err := logins(tc.conn, duration, workers)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		fmt.Printf("  %-28s %7.0f /s\n", tc.name, float64(n)/duration.Seconds())
	}
	return nil
}

func logins(connString string, duration time.Duration, workers int) (int64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				conn, err := pgconn.Connect(context.Background(), connString)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				_ = conn.Close(context.Background())
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, err
	}
	return n.Load(), nil
}

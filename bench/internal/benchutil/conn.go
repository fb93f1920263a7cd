package benchutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// FreePort asks the kernel for an unused loopback port. Another process may
// take it before the proxy binds it; that fails loudly and is rare enough.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ConnString is a libpq keyword/value string for demo.Database on
// 127.0.0.1:port. No TLS: none of the targets is configured for it, and it
// would only add a round trip.
func ConnString(port int, user, password string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=30",
		port, user, password, demo.Database)
}

// WaitLogin polls until user can log in on port and run a query, done is
// closed (the process died) or 15s pass.
func WaitLogin(ctx context.Context, port int, user, password string, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var last error
	for {
		select {
		case <-done:
			return ErrExited
		default:
		}
		conn, err := pgconn.Connect(ctx, ConnString(port, user, password))
		if err == nil {
			_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
			conn.Close(context.Background())
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-done:
			return ErrExited
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// QueryValue runs sql as the cluster's superuser in database and returns the
// first column of the first row as text. pgcluster.Exec returns no rows.
func QueryValue(ctx context.Context, c *pgcluster.Cluster, database, sql string) (string, error) {
	conn, err := pgconn.Connect(ctx, c.SuperURL(database))
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) == 0 || len(res.Rows[0]) == 0 {
		return "", fmt.Errorf("no rows from %q", sql)
	}
	return string(res.Rows[0][0]), nil
}

// TailFile returns the last n lines of the file at path, or the error
// reading it in parentheses.
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return TailLines(string(b), n)
}

// TailLines returns the last n lines of s.
func TailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

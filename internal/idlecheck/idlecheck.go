// Package idlecheck measures what idle clients cost a proxy process: its
// resident memory once settled, with many logged-in clients that hold only
// their sockets. bench/compare and the e2e tests share it.
package idlecheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Settle is the pause before a first reading: logins leave buffers to
// collect, and the Go runtime gives free memory back gradually.
const Settle = 2 * time.Second

// Settled waits until the memory measure gives has stopped falling (by
// less than 1% in two seconds), at most max, and returns it. Logging in
// thousands of clients takes memory that is free again afterwards, and the
// Go runtime gives free memory back to the system gradually; pgtenant also
// parks clients idle for over a second, which frees their goroutines. What
// stays is what idle clients cost.
func Settled(measure func() (int64, error), max time.Duration) (int64, error) {
	time.Sleep(Settle)
	prev, err := measure()
	if err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(max); time.Now().Before(deadline); {
		time.Sleep(2 * time.Second)
		cur, err := measure()
		if err != nil {
			return 0, err
		}
		if cur > prev*99/100 {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// RSS returns the resident set size of pid in bytes (VmRSS).
func RSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// Hold logs count clients in with cfg, parallel at a time (SCRAM costs the
// client a PBKDF2 per login, so parallelism matters), and keeps only their
// sockets. On error the ones opened so far are returned too, for closing.
func Hold(cfg *pgconn.Config, count, parallel int) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		errs  []error
		wg    sync.WaitGroup
	)
	next := make(chan struct{})
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				pc, err := pgconn.ConnectConfig(ctx, cfg)
				cancel()
				var hc *pgconn.HijackedConn
				if err == nil {
					hc, err = pc.Hijack()
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					conns = append(conns, hc.Conn)
				}
				mu.Unlock()
			}
		}()
	}
	for range count {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	return conns, errors.Join(errs...)
}

package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

func TestOpenFilesWanted(t *testing.T) {
	tests := []struct {
		desc       string
		maxClients int
		poolSize   int
		upstreams  []config.Upstream
		nrOpen     uint64
		want       uint64
	}{
		{"no bound on clients: the kernel's ceiling", 0, 10, nil, 1 << 20, 1 << 20},
		{"100,000 clients", 100000, 10, nil, 1 << 20, 200000 + openFilesReserve + 10},
		{"each upstream's pool counts", 1000, 10, []config.Upstream{{Name: "b", Effective: config.Pool{Size: 5}}}, 1 << 20, 2000 + openFilesReserve + 15},
		{"never past the ceiling", 1000000, 10, nil, 1 << 20, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			cfg := &config.Config{Upstreams: tt.upstreams}
			cfg.Limits.MaxClients = tt.maxClients
			cfg.Pool.Size = tt.poolSize
			if got := openFilesWanted(cfg, tt.nrOpen); got != tt.want {
				t.Errorf("openFilesWanted = %d, want %d", got, tt.want)
			}
		})
	}
}

// Where the hard limit may be raised (CAP_SYS_RESOURCE), it is: the
// process can hold the clients max_clients allows. Where not (this
// machine's sandbox has a hard limit of 20,000 and no CAP_SYS_RESOURCE,
// even as root), the soft limit goes up to the hard one and a warning says
// what is missing. The test process's own limit is restored afterwards.
func TestRaiseOpenFiles(t *testing.T) {
	var before syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &before) })
	canRaise := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: before.Cur, Max: before.Max + 1}) == nil
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: before.Cur / 2, Max: before.Max})

	cfg := &config.Config{}
	cfg.Limits.MaxClients = int(before.Max) // twice as many descriptors as the hard limit allows
	var logs bytes.Buffer
	raiseOpenFiles(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	var after syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	want := openFilesWanted(cfg, nrOpen(before.Max))
	switch {
	case canRaise && (after.Cur != want || after.Max != want):
		t.Errorf("privileged: limit %d/%d, want %d (log: %s)", after.Cur, after.Max, want, logs.String())
	case !canRaise && (after.Cur != before.Max || !strings.Contains(logs.String(), "below what limits.max_clients needs")):
		t.Errorf("unprivileged: limit %d (hard %d), log %s", after.Cur, before.Max, logs.String())
	}
}

package cli

import (
	"log/slog"

	"github.com/pgtenant/pgtenant/config"
)

// Every client and every upstream connection is a file descriptor, and
// 100,000 idle clients need more than the usual limit of 1,024 or 20,000
// open files. Go raises the soft limit to the hard one at start; pgtenant
// raises the hard one too where the system lets it (root, or
// CAP_SYS_RESOURCE), to what the config needs.

// openFilesReserve covers what is not a client: upstream connections of
// session-mode clients are counted with the clients; these are the pools'
// connections, the listeners, the admin server, log and config files.
const openFilesReserve = 1024

// openFilesWanted is the open-files limit cfg needs: two descriptors per
// client (its own and, in session mode, its upstream connection's) when
// limits.max_clients bounds them, else as many as the system allows
// (nrOpen, the kernel's per-process ceiling).
func openFilesWanted(cfg *config.Config, nrOpen uint64) uint64 {
	if cfg.Limits.MaxClients <= 0 {
		return nrOpen
	}
	want := 2*uint64(cfg.Limits.MaxClients) + openFilesReserve
	for _, u := range cfg.AllUpstreams() {
		want += uint64(u.Effective.Size)
	}
	return min(want, nrOpen)
}

// raiseOpenFiles lifts the process's open-files limit towards what cfg
// needs, as far as the system allows, and says what it got.
func raiseOpenFiles(cfg *config.Config, log *slog.Logger) {
	got, want, err := setOpenFilesLimit(func(nrOpen uint64) uint64 { return openFilesWanted(cfg, nrOpen) })
	switch {
	case err != nil:
		log.Warn("cannot read or raise the open-files limit", "err", err)
	case got < want && cfg.Limits.MaxClients > 0:
		log.Warn("the open-files limit is below what limits.max_clients needs: clients past it are refused when the limit is reached (raise it with ulimit -n, LimitNOFILE= in a systemd unit, or run with CAP_SYS_RESOURCE)",
			"open_files_limit", got, "wanted", want)
	default:
		log.Info("open-files limit", "open_files_limit", got)
	}
}

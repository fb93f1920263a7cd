package cli

import (
	"log/slog"

	"github.com/pgtenant/pgtenant/audit"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/proxy"
)

// startAudit opens the audit log cfg asks for (none when nil) and gives it
// to srv, which closes it when it closes.
func startAudit(srv *proxy.Server, cfg *config.Audit, log *slog.Logger) error {
	if cfg == nil {
		return nil
	}
	l, err := audit.Open(cfg, log, audit.Options{})
	if err != nil {
		return err
	}
	srv.SetAuditor(l)
	srv.OnClose(l.Close)
	log.Info("audit log on", "output", cfg.Output)
	return nil
}

// reloadAudit applies a reloaded audit section: sample rates at once, the
// output reopened (logrotate) or changed. Turned on, it applies to new
// sessions; turned off, sessions in progress stop being logged too.
func reloadAudit(srv *proxy.Server, cfg *config.Audit, log *slog.Logger) {
	cur, _ := srv.Auditor().(*audit.Log)
	switch {
	case cur == nil:
		if err := startAudit(srv, cfg, log); err != nil {
			log.Error("audit log: not started", "err", err)
		}
	case cfg == nil:
		srv.SetAuditor(nil)
		cur.Close()
		log.Info("audit log off")
	default:
		cur.Apply(cfg)
	}
}

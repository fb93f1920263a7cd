package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/doctor"
)

// dbUsersSampleSize bounds the db_users rows whose tenants are checked.
const dbUsersSampleSize = 100

// configTenants returns the config users' tenant ids, each once, with the
// users that have it.
func configTenants(cfg *config.Config) []doctor.Tenant {
	var order []string
	users := map[string][]string{}
	for i, u := range cfg.Users {
		if _, ok := users[u.Tenant]; !ok {
			order = append(order, u.Tenant)
		}
		users[u.Tenant] = append(users[u.Tenant], config.UserField(i, u.Name))
	}
	out := make([]doctor.Tenant, 0, len(order))
	for _, id := range order {
		src := users[id]
		if len(src) > 3 {
			src = append(src[:3:3], fmt.Sprintf("and %d more", len(src)-3))
		}
		out = append(out, doctor.Tenant{ID: id, Source: strings.Join(src, ", ")})
	}
	return out
}

// dbUserTenants samples the tenants of db_users through the lookup role.
func dbUserTenants(ctx context.Context, cfg *config.Config) ([]doctor.Tenant, error) {
	if cfg.DBUsers == nil {
		return nil, nil
	}
	conn, err := connect(ctx, cfg.DBUsers.Connection, cfg.ConnectTimeout.Duration)
	if err != nil {
		return nil, fmt.Errorf("db_users: %w", err)
	}
	defer conn.Close(context.Background())
	return doctor.SampleTenants(ctx, conn, cfg.DBUsers.Query, dbUsersSampleSize)
}

// connect opens a connection for a check, named so in pg_stat_activity.
func connect(ctx context.Context, connString string, timeout time.Duration) (*pgconn.PgConn, error) {
	pgcfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	if pgcfg.ConnectTimeout == 0 {
		pgcfg.ConnectTimeout = timeout
	}
	if _, ok := pgcfg.RuntimeParams["application_name"]; !ok {
		pgcfg.RuntimeParams["application_name"] = "pgtenant check"
	}
	ctx, cancel := context.WithTimeout(ctx, pgcfg.ConnectTimeout+time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, pgcfg)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	return conn, nil
}

// warnTenantTypes logs a warning for each tenant id of the config (and of
// a db_users sample) that a policy's cast of the tenant setting refuses:
// such a tenant's every query fails, which the operator should hear about
// at startup rather than from the tenant. It never stops the proxy.
func warnTenantTypes(ctx context.Context, cfg *config.Config, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout.Duration+30*time.Second)
	defer cancel()
	tenants := configTenants(cfg)
	sample, err := dbUserTenants(ctx, cfg)
	if err != nil {
		log.Warn("could not check db_users tenant ids against the policies", "err", err)
	}
	tenants = append(tenants, sample...)
	if len(tenants) == 0 {
		return
	}
	mismatches, err := checkTenantTypes(ctx, cfg, tenants)
	if err != nil {
		log.Warn("could not check tenant ids against the policies", "err", err)
		return
	}
	for _, m := range mismatches {
		log.Warn("tenant id is not a valid value of the type the policies cast the tenant setting to: every query of its sessions on these tables fails",
			"tenant", m.Tenant.ID, "users", m.Tenant.Source, "type", m.Type,
			"policies", m.Policies(cfg.TenantSetting), "err", m.Err)
	}
}

// checkTenantTypes casts tenants to the policies' types, connected upstream.
func checkTenantTypes(ctx context.Context, cfg *config.Config, tenants []doctor.Tenant) ([]doctor.Mismatch, error) {
	conn, err := connect(ctx, cfg.Upstream, cfg.ConnectTimeout.Duration)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	defer conn.Close(context.Background())
	casts, err := doctor.TenantCasts(ctx, conn, cfg.TenantSetting)
	if err != nil {
		return nil, err
	}
	return doctor.CheckTenants(ctx, conn, casts, tenants)
}

package doctor

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

// Placement kinds: how the tenants of one target are kept apart.
const (
	PlacementShared   = "shared tables"       // tenants share tables, separated by row-level security
	PlacementSchema   = "schema per tenant"   // each tenant in its own schema, as its own role
	PlacementDatabase = "database per tenant" // one tenant alone on an upstream
)

// SchemaTenant is a tenant placed in a schema of its own, as a role of its own.
type SchemaTenant struct {
	ID     string `json:"id"`
	Schema string `json:"schema"`
	Role   string `json:"role"`
}

// Target is one placement on one upstream: what Check inspects.
type Target struct {
	Upstream string // the upstream's name in the config
	URL      string // its connection string: the login role pgtenant connects as
	Kind     string // one of the Placement kinds
	// Tenants are the tenants placed here without a schema, for the
	// tenant-type check (shared tables and database placements).
	Tenants []Tenant
	// Schemas are the schema tenants (schema placements).
	Schemas []SchemaTenant
}

// Label names the target for people: its upstream, its kind and its
// tenants.
func (t Target) Label() string {
	var who []string
	for _, s := range t.Schemas {
		who = append(who, fmt.Sprintf("tenant %s in schema %s as role %s", s.ID, s.Schema, s.Role))
	}
	for _, tn := range t.Tenants {
		who = append(who, "tenant "+tn.ID)
	}
	if len(who) > 3 {
		who = append(who[:3:3], fmt.Sprintf("and %d more", len(who)-3))
	}
	label := fmt.Sprintf("upstream %s, %s", t.Upstream, t.Kind)
	if len(who) > 0 {
		label += " (" + strings.Join(who, ", ") + ")"
	}
	return label
}

// Report is what Check found for one target.
type Report struct {
	Target   Target
	Findings []Finding
}

// Targets lists the placements cfg describes, upstream by upstream in
// the config's order, the shared tables (or database) before the
// schemas. tenants are the tenant ids known besides cfg.Tenants' keys
// (the users', a db_users sample); each is placed as cfg.Placement says,
// over which a db_users row's upstream, schema and role go (as pgtenant
// places its sessions).
//
// The default upstream holds shared tables unless everything known lives
// elsewhere or in schemas: tenants pgtenant does not know in advance (from
// db_users or JWTs) live there. Another upstream holding one tenant
// without a schema is that tenant's database; holding several, shared
// tables. An upstream no tenant of the config is placed on (db_users may
// place some there) is checked as a database placement.
func Targets(cfg *config.Config, tenants []Tenant) []Target {
	byID := map[string]Tenant{}
	var ids []string
	add := func(t Tenant) {
		if _, ok := byID[t.ID]; !ok {
			ids = append(ids, t.ID)
			byID[t.ID] = t
		}
	}
	for _, t := range tenants {
		add(t)
	}
	for _, id := range slices.Sorted(maps.Keys(cfg.Tenants)) {
		add(Tenant{ID: id, Source: fmt.Sprintf("tenants[%q]", id)})
	}
	var out []Target
	for _, up := range cfg.AllUpstreams() {
		data := Target{Upstream: up.Name, URL: up.URL, Kind: PlacementDatabase}
		schemas := Target{Upstream: up.Name, URL: up.URL, Kind: PlacementSchema}
		for _, id := range ids {
			p := placementOf(cfg, byID[id])
			switch {
			case p.Upstream != up.Name:
			case p.Schema != "":
				schemas.Schemas = append(schemas.Schemas, SchemaTenant{ID: id, Schema: p.Schema, Role: p.Role})
			default:
				data.Tenants = append(data.Tenants, byID[id])
			}
		}
		isDefault := up.Name == config.DefaultUpstream
		unknownTenants := isDefault && (cfg.DBUsers != nil || cfg.JWT != nil)
		if isDefault || len(data.Tenants) > 1 {
			data.Kind = PlacementShared
		}
		if len(data.Tenants) > 0 || unknownTenants || len(schemas.Schemas) == 0 {
			out = append(out, data)
		}
		if len(schemas.Schemas) > 0 {
			out = append(out, schemas)
		}
	}
	return out
}

// placementOf is where t lives: its config placement, with what its
// db_users row says over it.
func placementOf(cfg *config.Config, t Tenant) config.Placement {
	p := cfg.Placement(t.ID)
	if t.Upstream != "" {
		p.Upstream = t.Upstream
	}
	if t.Schema != "" {
		p.Schema = t.Schema
	}
	if t.Role != "" {
		p.Role = t.Role
	}
	return p
}

// Check inspects every target, connecting to each upstream once (with
// connectTimeout, 0 for none) as its login role: an upstream it cannot
// reach is a finding of each of its targets. Shared tables and database
// placements get Run's checks, with the tenants placed there; schema
// placements get RunSchemas'. opts.Tenants is ignored: each target has its
// own. An error is returned only when an inspection itself fails.
func Check(ctx context.Context, targets []Target, connectTimeout time.Duration, opts Options) ([]Report, error) {
	reports := make([]Report, len(targets))
	conns := map[string]*pgconn.PgConn{}
	unreachable := map[string]error{}
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	for i, t := range targets {
		reports[i].Target = t
		conn, err := conns[t.Upstream], unreachable[t.Upstream]
		if conn == nil && err == nil {
			if conn, err = connectUpstream(ctx, t.URL, connectTimeout); err != nil {
				unreachable[t.Upstream] = err
			} else {
				conns[t.Upstream] = conn
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			reports[i].Findings = []Finding{{
				Upstream: t.Upstream, Placement: t.Kind,
				Check: CheckReachable, Object: "upstream " + t.Upstream,
				Problem: fmt.Sprintf("cannot be reached (%v): the %s there were not checked, and their tenants' sessions fail", err, t.Kind),
				Fix:     "check the upstream's URL in the config, that the server is up, and that its role may log in (password, pg_hba.conf)",
			}}
			continue
		}
		var findings []Finding
		if t.Kind == PlacementSchema {
			findings, err = RunSchemas(ctx, conn, t.Schemas)
		} else {
			o := opts
			o.Tenants = t.Tenants
			findings, err = Run(ctx, conn, o)
		}
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", t.Upstream, err)
		}
		for j := range findings {
			findings[j].Upstream, findings[j].Placement = t.Upstream, t.Kind
		}
		reports[i].Findings = findings
	}
	return reports, nil
}

// connectUpstream connects to url as pgtenant would, named in
// pg_stat_activity.
func connectUpstream(ctx context.Context, url string, timeout time.Duration) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = timeout
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "pgtenant doctor"
	}
	if cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout+time.Second)
		defer cancel()
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/doctor"
)

const doctorUsage = `usage: pgtenant doctor --upstream <conn string> [--config file] [--tenant-column tenant_id]
                       [--allow-definer 'schema.func(args)']... [--json]

Connects upstream as the RLS role and reports what would break tenant isolation.
With --config, every upstream and tenant placement of the config file is
checked, each reported under its own heading: shared tables and databases
per tenant for row-level security, schemas per tenant for what each tenant
role reaches and owns (--upstream overrides the default upstream); the tenant
ids of its users and of a db_users sample are checked against the types the
policies cast the tenant setting to. An upstream that cannot be reached is a
problem. Exit status: 0 no problems, 1 problems found, 2 usage error or a
check that could not run.
`

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// runDoctor runs `pgtenant doctor`.
func runDoctor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgtenant doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below: to stdout for --help, to stderr after an error
	upstream := fs.String("upstream", "", "upstream connection string (libpq URL or keyword/value), as the RLS role")
	configPath := fs.String("config", "", "pgtenant config file to take upstream and tenant_setting from")
	tenantColumn := fs.String("tenant-column", doctor.DefaultTenantColumn, "name of the tenant column")
	asJSON := fs.Bool("json", false, "print the findings as a JSON array")
	var allowed stringList
	fs.Var(&allowed, "allow-definer", "a SECURITY DEFINER function not to report, e.g. 'pgtenant.current_tenant()' (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, doctorUsage)
			return 0
		}
		fmt.Fprint(stderr, "\n"+doctorUsage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgtenant doctor: unexpected argument %q\n\n%s", fs.Arg(0), doctorUsage)
		return 2
	}
	opts := doctor.Options{TenantColumn: *tenantColumn, AllowedDefinerFunctions: allowed}
	cfg := &config.Config{ConnectTimeout: config.Duration{Duration: config.DefaultConnectTimeout}}
	var tenants []doctor.Tenant
	ctx := context.Background()
	if *configPath != "" {
		var err error
		if cfg, err = config.Load(*configPath); err != nil {
			fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
			return 2
		}
		opts.TenantSetting = cfg.TenantSetting
		tenants = configTenants(cfg)
		sample, err := dbUserTenants(ctx, cfg)
		if err != nil {
			// The other checks are still worth having.
			fmt.Fprintf(stderr, "pgtenant doctor: note: db_users tenant ids not checked: %v\n", err)
		}
		tenants = append(tenants, sample...)
	}
	if *upstream != "" {
		cfg.Upstream = *upstream
	}
	if cfg.Upstream == "" {
		fmt.Fprintf(stderr, "pgtenant doctor: --upstream or --config is required\n\n%s", doctorUsage)
		return 2
	}
	if _, err := pgconn.ParseConfig(cfg.Upstream); err != nil {
		fmt.Fprintf(stderr, "pgtenant doctor: upstream: %v\n", err)
		return 2
	}

	reports, err := doctor.Check(ctx, doctor.Targets(cfg, tenants), cfg.ConnectTimeout.Duration, opts)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
		return 2
	}
	findings := []doctor.Finding{}
	for _, r := range reports {
		findings = append(findings, r.Findings...)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
			return 2
		}
	} else {
		printReports(stdout, reports)
	}
	if len(findings) > 0 {
		return 1
	}
	return 0
}

// printReports writes a section per placement, labelled with its upstream,
// kind and tenants, and a total.
func printReports(w io.Writer, reports []doctor.Report) {
	n := 0
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s:\n", r.Target.Label())
		printFindings(w, r.Findings)
		n += len(r.Findings)
	}
	switch n {
	case 0:
		fmt.Fprintln(w, "\nno problems found")
	case 1:
		fmt.Fprintln(w, "\n1 problem found")
	default:
		fmt.Fprintf(w, "\n%d problems found\n", n)
	}
}

// printFindings writes one placement's findings grouped by check: a
// heading per check, then a line per finding with its fix on the next line.
func printFindings(w io.Writer, findings []doctor.Finding) {
	if len(findings) == 0 {
		fmt.Fprintln(w, "  no problems")
		return
	}
	for i, f := range findings {
		if i == 0 || findings[i-1].Check != f.Check {
			fmt.Fprintf(w, "  %s:\n", f.Check)
		}
		fmt.Fprintf(w, "    %s: %s\n", f.Object, f.Problem)
		if f.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
}

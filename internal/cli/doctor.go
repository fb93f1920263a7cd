package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/doctor"
)

const doctorUsage = `usage: pgtenant doctor --upstream <conn string> [--config file] [--tenant-column tenant_id]
                       [--allow-definer 'schema.func(args)']... [--json]

Connects upstream as the RLS role and reports what would break tenant isolation.
With --config, upstream and tenant_setting come from the config file (--upstream
overrides it), and the tenant ids of its users and of a db_users sample are
checked against the types the policies cast the tenant setting to. Exit status: 0 no problems, 1 problems found, 2 usage or connection error.
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
	connString := *upstream
	connectTimeout := config.DefaultConnectTimeout
	ctx := context.Background()
	if *configPath != "" {
		cfg, err := config.Load(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
			return 2
		}
		if connString == "" {
			connString = cfg.Upstream
		}
		opts.TenantSetting = cfg.TenantSetting
		connectTimeout = cfg.ConnectTimeout.Duration
		opts.Tenants = configTenants(cfg)
		sample, err := dbUserTenants(ctx, cfg)
		if err != nil {
			// The other checks are still worth having.
			fmt.Fprintf(stderr, "pgtenant doctor: note: db_users tenant ids not checked: %v\n", err)
		}
		opts.Tenants = append(opts.Tenants, sample...)
	}
	if connString == "" {
		fmt.Fprintf(stderr, "pgtenant doctor: --upstream or --config is required\n\n%s", doctorUsage)
		return 2
	}
	pgcfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant doctor: upstream: %v\n", err)
		return 2
	}
	if pgcfg.ConnectTimeout == 0 {
		pgcfg.ConnectTimeout = connectTimeout
	}
	if _, ok := pgcfg.RuntimeParams["application_name"]; !ok {
		pgcfg.RuntimeParams["application_name"] = "pgtenant doctor"
	}

	connectCtx, cancel := context.WithTimeout(ctx, pgcfg.ConnectTimeout+time.Second)
	conn, err := pgconn.ConnectConfig(connectCtx, pgcfg)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant doctor: connecting upstream: %v\n", err)
		return 2
	}
	defer conn.Close(context.Background())

	findings, err := doctor.Run(ctx, conn, opts)
	if err != nil {
		fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			fmt.Fprintf(stderr, "pgtenant doctor: %v\n", err)
			return 2
		}
	} else {
		printFindings(stdout, findings)
	}
	if len(findings) > 0 {
		return 1
	}
	return 0
}

// printFindings writes the findings grouped by check: a heading per check,
// then a line per finding with its fix on the next line.
func printFindings(w io.Writer, findings []doctor.Finding) {
	if len(findings) == 0 {
		fmt.Fprintln(w, "no problems found")
		return
	}
	for i, f := range findings {
		if i == 0 || findings[i-1].Check != f.Check {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", f.Check)
		}
		fmt.Fprintf(w, "  %s: %s\n", f.Object, f.Problem)
		if f.Fix != "" {
			fmt.Fprintf(w, "    fix: %s\n", f.Fix)
		}
	}
	noun := "problems"
	if len(findings) == 1 {
		noun = "problem"
	}
	fmt.Fprintf(w, "\n%d %s found\n", len(findings), noun)
}

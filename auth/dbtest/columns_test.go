package dbtest

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// The lookup query may return, after the verifier and the tenant, named
// columns for the tenant's placement (upstream, schema), the user's role
// and read-only, and the limits db_users.limits allows; NULL leaves one
// unset. A column it may not return fails the lookup (closed), naming it.
func TestOptionalColumns(t *testing.T) {
	testutil.NoLeaks(t)
	v := verifier(t)
	addUser(t, "carol", v, "tenant-c")
	const from = " FROM pgtenant_users WHERE name = $1"
	tests := []struct {
		desc   string
		cols   string // after "SELECT verifier, tenant"
		limits []string
		want   auth.Entry // Credentials left out
		fail   string     // in the log when the lookup fails
	}{
		{desc: "none", want: auth.Entry{Tenant: "tenant-c"}},
		{
			desc:   "placement, role, read-only and a limit",
			cols:   ", 'eu' AS upstream, 'tenant_c' AS schema, 'c_role' AS role, true AS read_only, 1500 AS statement_timeout, '2s' AS lock_timeout",
			limits: []string{"statement_timeout", "lock_timeout"},
			want: auth.Entry{Tenant: "tenant-c", Upstream: "eu", Schema: "tenant_c", Role: "c_role", ReadOnly: true,
				Limits: []auth.Setting{{Name: "statement_timeout", Value: "1500"}, {Name: "lock_timeout", Value: "2000"}}},
		},
		{
			desc: "NULL is unset", cols: ", NULL::text AS upstream, NULL::text AS role, NULL::boolean AS read_only, NULL::int AS statement_timeout",
			limits: []string{"statement_timeout"}, want: auth.Entry{Tenant: "tenant-c"},
		},
		{desc: "read_only false", cols: ", false AS read_only", want: auth.Entry{Tenant: "tenant-c"}},
		{desc: "unknown column", cols: ", 1 AS priority", fail: `query returned column \"priority\"`},
		{desc: "a limit not allowed", cols: ", 1500 AS statement_timeout", fail: "list it in db_users.limits"},
		{desc: "a column twice", cols: ", 'a' AS role, 'b' AS role", fail: `query returned column \"role\" twice`},
		{desc: "a bad limit", cols: ", 'soon' AS statement_timeout", limits: []string{"statement_timeout"}, fail: "column statement_timeout"},
		{desc: "control character", cols: ", E'r\\n' AS role", fail: "column role contains control characters"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			logs := &testutil.SyncBuffer{}
			d, err := auth.NewDBDirectory(&config.DBUsers{
				Connection: pgcluster.Shared().URL(lookupRole, lookupPassword, database),
				Query:      "SELECT verifier, tenant" + tt.cols + from,
				CacheTTL:   config.Duration{Duration: time.Minute}, NegativeTTL: config.Duration{Duration: time.Minute},
				Limits: tt.limits,
			}, slog.New(slog.NewTextHandler(logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			e, ok := d.Lookup("carol")
			if tt.fail != "" {
				if ok || !strings.Contains(logs.String(), tt.fail) {
					t.Fatalf("lookup: %v %+v, want a failure logging %q; log:\n%s", ok, e, tt.fail, logs)
				}
				return
			}
			if !ok {
				t.Fatalf("carol not found; log:\n%s", logs)
			}
			e.Credentials = tt.want.Credentials
			if fmt.Sprint(e) != fmt.Sprint(tt.want) || !slices.Equal(e.Limits, tt.want.Limits) {
				t.Errorf("entry %+v, want %+v", e, tt.want)
			}
		})
	}
}

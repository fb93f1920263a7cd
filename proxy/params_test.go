package proxy

import (
	"reflect"
	"testing"
)

func TestSplitOptions(t *testing.T) {
	tests := []struct {
		in      string
		want    []setting
		wantErr bool
	}{
		{"-c search_path=a", []setting{{name: "search_path", value: "a"}}, false},
		{"-csearch_path=a  -c work_mem=1MB", []setting{{name: "search_path", value: "a"}, {name: "work_mem", value: "1MB"}}, false},
		{"--work-mem=4MB", []setting{{name: "work_mem", value: "4MB"}}, false},
		{`-c application_name=a\ b`, []setting{{name: "application_name", value: "a b"}}, false},
		{"-c", nil, true},
		{"-B 100", nil, true},
		{"-c noequals", nil, true},
		{"", nil, false},
	}
	for _, tt := range tests {
		got, err := splitOptions(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("splitOptions(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitOptions(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestStartupPolicy(t *testing.T) {
	p := newStartupPolicy("app.tenant_id")
	tests := []struct {
		desc    string
		params  map[string]string
		want    map[string]string
		refused bool
	}{
		{"harmless forwarded", map[string]string{"user": "u", "database": "d", "application_name": "psql", "DateStyle": "ISO"},
			map[string]string{"application_name": "psql", "datestyle": "ISO"}, false},
		{"tenant setting", map[string]string{"app.tenant_id": "x"}, nil, true},
		{"tenant setting any case", map[string]string{"APP.Tenant_ID": "x"}, nil, true},
		{"under the prefix", map[string]string{"app.user_id": "x"}, nil, true},
		{"role", map[string]string{"role": "postgres"}, nil, true},
		{"session_authorization", map[string]string{"session_authorization": "postgres"}, nil, true},
		{"row_security", map[string]string{"row_security": "off"}, nil, true},
		{"options tenant", map[string]string{"options": "-c app.tenant_id=x"}, nil, true},
		{"options long form", map[string]string{"options": "--app.tenant-id=x"}, nil, true},
		{"options role", map[string]string{"options": "-crole=postgres"}, nil, true},
		{"options harmless", map[string]string{"options": "-c search_path=s"}, map[string]string{"search_path": "s"}, false},
		{"unknown refused", map[string]string{"replication": "database"}, nil, true},
		{"client_encoding UTF8", map[string]string{"client_encoding": "UTF8"}, map[string]string{"client_encoding": "UTF8"}, false},
		{"client_encoding SJIS", map[string]string{"client_encoding": "SJIS"}, nil, true},
		{"standard_conforming_strings off", map[string]string{"standard_conforming_strings": "off"}, nil, true},
		{"standard_conforming_strings off in options", map[string]string{"options": "-c standard_conforming_strings=off"}, nil, true},
	}
	for _, tt := range tests {
		got, err := p.upstreamParams(tt.params)
		if (err != nil) != tt.refused {
			t.Errorf("%s: error = %v, refused %v", tt.desc, err, tt.refused)
			continue
		}
		if err != nil {
			if err.Code != "42501" || err.Severity != "FATAL" {
				t.Errorf("%s: got %s %s, want FATAL 42501", tt.desc, err.Severity, err.Code)
			}
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.desc, got, tt.want)
		}
	}
}

func TestSetStatementOfListSettings(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"search_path", `public, pg_catalog`, `SET search_path TO "public", "pg_catalog"`},
		{"search_path", `"$user", public`, `SET search_path TO "$user", "public"`},
		{"search_path", `Public,"My ""Schema"""`, `SET search_path TO "public", "My ""Schema"""`},
		{"search_path", `user`, `SET search_path TO "user"`},
		{"search_path", `a; DROP TABLE t`, `SET search_path TO 'a; DROP TABLE t'`},
		{"search_path", `"unterminated`, `SET search_path TO '"unterminated'`},
		{"search_path", ``, `SET search_path TO ''`},
		{"search_path", `a,,b`, `SET search_path TO 'a,,b'`},
		{"work_mem", `64MB`, `SET work_mem TO '64MB'`},
		{"user.id", `42`, `SET "user"."id" TO '42'`},
		{"app.tenant_id", `a"b`, `SET "app"."tenant_id" TO 'a"b'`},
	} {
		if got := setStatement(setting{name: tc.name, value: tc.value}); got != tc.want {
			t.Errorf("%s = %q: %s, want %s", tc.name, tc.value, got, tc.want)
		}
	}
}

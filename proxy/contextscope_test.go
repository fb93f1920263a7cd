package proxy

import "testing"

// A local setting (context_scope: transaction) is SET LOCAL in a
// transaction and emptied at session level; the others are SET both ways.
func TestLocalSettingStatements(t *testing.T) {
	tests := []struct {
		desc            string
		settings        []setting
		inTx, atSession string
		local           bool
	}{
		{desc: "session scope",
			settings: []setting{{name: "app.tenant_id", value: "t1"}},
			inTx:     `SET "app"."tenant_id" TO 't1'`, atSession: `SET "app"."tenant_id" TO 't1'`},
		{desc: "transaction scope",
			settings: []setting{{name: "app.tenant_id", value: "t1", local: true}},
			inTx:     `SET LOCAL "app"."tenant_id" TO 't1'`, atSession: `SET "app"."tenant_id" TO ''`, local: true},
		{desc: "the context local, the role and search_path not",
			settings:  []setting{{name: "app.tenant_id", value: "o'k", local: true}, {name: "search_path", value: `"s"`}, {name: "role", value: "r"}},
			inTx:      `SET LOCAL "app"."tenant_id" TO 'o''k'; SET search_path TO "s"; SET role TO 'r'`,
			atSession: `SET "app"."tenant_id" TO ''; SET search_path TO "s"; SET role TO 'r'`, local: true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := setStatements(tt.settings); got != tt.inTx {
				t.Errorf("in a transaction: %s, want %s", got, tt.inTx)
			}
			if got := sessionStatements(tt.settings); got != tt.atSession {
				t.Errorf("at session level: %s, want %s", got, tt.atSession)
			}
			a := newAssertion(tt.settings)
			if a.statements != tt.atSession || a.local != tt.local {
				t.Errorf("assertion: statements %q local %v, want %q %v", a.statements, a.local, tt.atSession, tt.local)
			}
			if p, _ := newPreparedAssertion(tt.settings); p.local != tt.local {
				t.Errorf("prepared assertion: local %v, want %v", p.local, tt.local)
			}
		})
	}
}

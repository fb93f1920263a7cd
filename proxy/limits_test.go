package proxy

import (
	"slices"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	tests := []struct {
		desc  string
		rate  float64
		burst int
		at    []time.Duration // request times after t0
		want  []time.Duration // waits; -1: refused
	}{
		{desc: "one at a time, first come first served", rate: 10, burst: 1, at: []time.Duration{0, 0, 0, 0}, want: []time.Duration{0, 100 * ms, 200 * ms, -1}},
		{desc: "a burst, then the rate", rate: 10, burst: 3, at: []time.Duration{0, 0, 0, 0, 0}, want: []time.Duration{0, 0, 0, 100 * ms, 200 * ms}},
		{desc: "tokens accrue while idle, up to the burst", rate: 10, burst: 2, at: []time.Duration{0, time.Second, time.Second, time.Second}, want: []time.Duration{0, 0, 0, 100 * ms}},
		{desc: "a refusal reserves nothing", rate: 1, burst: 1, at: []time.Duration{0, 0, 900 * ms}, want: []time.Duration{0, -1, 100 * ms}},
	}
	for _, tt := range tests {
		var b tokenBucket
		for i, at := range tt.at {
			wait, ok := b.reserve(t0.Add(at), tt.rate, tt.burst, 250*ms)
			if !ok {
				wait = -1
			}
			if wait != tt.want[i] {
				t.Errorf("%s: request %d at %s: wait %s, want %s", tt.desc, i, at, wait, tt.want[i])
			}
		}
	}
}

func TestLimitSettings(t *testing.T) {
	p := config.TenantPolicy{StatementTimeout: 30 * time.Second, IdleInTransactionSessionTimeout: time.Minute}
	tests := []struct {
		desc string
		own  []auth.Setting
		want []setting
	}{
		{desc: "the tenant's", want: []setting{{name: "statement_timeout", value: "30000"}, {name: "idle_in_transaction_session_timeout", value: "60000"}}},
		{desc: "a claim replaces one, adds another, in a fixed order",
			own:  []auth.Setting{{Name: "lock_timeout", Value: "5"}, {Name: "statement_timeout", Value: "100"}},
			want: []setting{{name: "statement_timeout", value: "100"}, {name: "lock_timeout", value: "5"}, {name: "idle_in_transaction_session_timeout", value: "60000"}}},
		{desc: "a claim of 0 lifts the tenant's", own: []auth.Setting{{Name: "statement_timeout", Value: "0"}, {Name: "lock_timeout", Value: "0"}},
			want: []setting{{name: "idle_in_transaction_session_timeout", value: "60000"}}},
	}
	for _, tt := range tests {
		if got := limitSettings(p, tt.own); !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.desc, got, tt.want)
		}
	}
}

package proxy

import "testing"

func TestSamePlacement(t *testing.T) {
	pool1, pool2 := &txPool{}, &txPool{}
	a := &upstream{name: "default", url: "postgres://h/app", pool: pool1}
	aReloaded := &upstream{name: "default", url: "postgres://h/app", pool: pool1} // a reload keeps an unchanged pool
	aResized := &upstream{name: "default", url: "postgres://h/app", pool: pool2}  // a reload with new pool settings
	eu := &upstream{name: "eu", url: "postgres://h/app_eu", pool: pool2}
	tests := []struct {
		desc           string
		from, to       placement
		session, trans bool // same in session mode, in transaction mode
	}{
		{desc: "unchanged", from: placement{up: a}, to: placement{up: aReloaded}, session: true, trans: true},
		{desc: "another database", from: placement{up: a}, to: placement{up: eu}},
		{desc: "same URL, new pool", from: placement{up: a}, to: placement{up: aResized}, session: true},
		{desc: "into a schema", from: placement{up: a}, to: placement{up: a, schema: "s", role: "r"}},
		{desc: "another role", from: placement{up: a, schema: "s", role: "r"}, to: placement{up: a, schema: "s", role: "r2"}},
		{desc: "same schema", from: placement{up: a, schema: "s", role: "r"}, to: placement{up: aReloaded, schema: "s", role: "r"}, session: true, trans: true},
		{desc: "no upstream", from: placement{up: a}, to: placement{}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := (sessionBinding{}).samePlace(tt.from, tt.to); got != tt.session {
				t.Errorf("session mode: %v, want %v", got, tt.session)
			}
			if got := (leaseBinding{}).samePlace(tt.from, tt.to); got != tt.trans {
				t.Errorf("transaction mode: %v, want %v", got, tt.trans)
			}
		})
	}
}

func TestQuietForPause(t *testing.T) {
	tests := []struct {
		desc    string
		busy    bool
		pending bool
		status  byte
		quiet   bool
	}{
		{desc: "idle", status: 'I', quiet: true},
		{desc: "a unit let through, not begun yet", busy: true, status: 'I'},
		{desc: "a statement running", pending: true, status: 'I'},
		{desc: "in a transaction block", status: 'T'},
		{desc: "in a failed block", status: 'E'},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := newRelay(nil, nil, nil, nil, &assertion{}, nil, zeroTime)
			r.busy.Store(tt.busy)
			if tt.pending {
				r.ledger.begin()
			}
			r.txStatus.Store(uint32(tt.status))
			if got := r.quietForPause(); got != tt.quiet {
				t.Fatalf("quiet %v, want %v", got, tt.quiet)
			}
		})
	}
}

package proxy

import (
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

// Sessions with the same settings share one context (its encoded
// assertions), which lives as long as a session uses it.
func TestPoolContextsAreShared(t *testing.T) {
	p := newTxPool("default", config.Pool{Size: 1}, nil, func() Observer { return nopObserver{} })
	defer p.close()
	app := setting{name: "application_name", value: "psql"}
	tenant := func(id string) setting { return setting{name: "app.tenant_id", value: id} }

	a1 := p.takeContext([]setting{app, tenant("a")}, 1)
	a2 := p.takeContext([]setting{app, tenant("a")}, 1)
	b := p.takeContext([]setting{tenant("a")}, 0)
	steps := []struct {
		name string
		ok   bool
	}{
		{"same settings, same context", a1 == a2},
		{"other startup parameters, another context", b != a1},
		{"the key is the SET statements", a1.key == `SET application_name TO 'psql'; SET "app"."tenant_id" TO 'a'`},
		{"the context statements assert the tenant only", string(a1.settled.replies) == "2C3" && len(a1.assertion.replies) == 10 && a1.ctxCount == 1},
		{"two sessions counted", a1.refs == 2 && len(p.contexts) == 2},
	}
	for _, s := range steps {
		if !s.ok {
			t.Errorf("%s: %+v", s.name, a1)
		}
	}
	p.dropContext(a1.key)
	if p.contexts[a1.key] != a1 {
		t.Fatal("dropped while a session still uses it")
	}
	p.dropContext(a2.key)
	p.dropContext(b.key)
	if len(p.contexts) != 0 {
		t.Fatalf("%d contexts left after every session ended", len(p.contexts))
	}
}

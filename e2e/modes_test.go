package e2e

import (
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

// poolModes are the two ways pgtenant holds an upstream connection. Every
// behaviour that should not differ between them runs in both, as subtests.
var poolModes = []struct {
	name   string
	config func(*config.Config)
}{
	{"session", nil},
	{"transaction", transactionPool(2)},
}

// eachPoolMode runs test once per pool mode, each with its own proxy
// started with the mode's config and then mutate (which may be nil).
func eachPoolMode(t *testing.T, mutate func(*config.Config), test func(t *testing.T, p *testProxy)) {
	for _, m := range poolModes {
		t.Run(m.name, func(t *testing.T) {
			p := startProxy(t, func(c *config.Config) {
				if m.config != nil {
					m.config(c)
				}
				if mutate != nil {
					mutate(c)
				}
			})
			test(t, p)
		})
	}
}

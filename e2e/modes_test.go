package e2e

import (
	"fmt"
	"testing"

	"github.com/pgtenant/pgtenant/config"
)

// poolMode is one way pgtenant holds upstream connections.
type poolMode struct {
	name string
	tx   bool // transaction pooling; otherwise one upstream per session
}

// poolModes: every behaviour that should not differ between the modes runs
// in both, as subtests named after them (eachPoolMode). A test that runs in
// one mode only says why.
var poolModes = []poolMode{{"session", false}, {"transaction", true}}

// modePoolSize is the pool of the transaction-mode runs, unless a test
// says otherwise.
const modePoolSize = 2

// eachPoolMode runs test once per pool mode, as a subtest.
func eachPoolMode(t *testing.T, test func(t *testing.T, m poolMode)) {
	for _, m := range poolModes {
		t.Run(m.name, func(t *testing.T) { test(t, m) })
	}
}

// config returns the proxy config mutation of the mode (a pool of
// poolSize in transaction mode) followed by more.
func (m poolMode) config(poolSize int, more ...func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		if m.tx {
			transactionPool(poolSize)(c)
		}
		for _, f := range more {
			f(c)
		}
	}
}

// start starts a proxy in the mode (a pool of modePoolSize in transaction
// mode), its config changed further by more.
func (m poolMode) start(t testing.TB, more ...func(*config.Config)) *testProxy {
	t.Helper()
	return startProxy(t, m.config(modePoolSize, more...))
}

// yaml is the mode as a config file's lines, for the pgtenant binary.
func (m poolMode) yaml() string {
	if !m.tx {
		return ""
	}
	return fmt.Sprintf("pool: {mode: transaction, size: %d}\n", modePoolSize)
}

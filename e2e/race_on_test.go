//go:build race

package e2e

// raceEnabled: the race detector is on. sync.Pool then drops items at
// random, so pooled buffers are allocated again now and then.
const raceEnabled = true

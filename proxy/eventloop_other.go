//go:build !linux

package proxy

import (
	"errors"
	"sync/atomic"
)

// eventLoop drives clients on Linux only (eventloop_linux.go); elsewhere
// each client keeps a goroutine.
type eventLoop struct{ handOvers atomic.Int64 }

const eventLoopSupported = false

var errWouldBlock = errors.New("would block")

func newEventLoop() *eventLoop { return nil }

func (l *eventLoop) park(*relay) bool     { return false }
func (l *eventLoop) unpark(*relay)        {}
func (l *eventLoop) close()               {}
func (l *eventLoop) yield()               {}
func (r *relay) useLoop(*eventLoop)       {}
func (r *relay) onLoop() bool             { return false }
func (r *relay) queueForConnection() bool { return false }
func (r *relay) evLoop() *eventLoop       { return nil }
func (l *eventLoop) wake(loopItem)        {}
func (r *relay) awaitReady() bool         { return false }

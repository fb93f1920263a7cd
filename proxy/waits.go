package proxy

import (
	"net"
	"time"
)

// The request core waits in six places: for replies the upstream owes
// (await), for the reply side's end after a Terminate inside a group
// (awaitReplyEnd), for a pooled connection (leaseFor, in the pool's
// reserve), for room under the pinned caps (waitPin), for a paused
// tenant's resume (waitPaused) and for a token of the tenant's rate limit
// (waitForToken). Each blocks its caller between
// two calls to the driver's waiter, and looks whether the client has hung
// up only through it. The timeouts of the driver's own waits (reading the
// client, reading the upstream) are set through it too: the core itself
// touches no socket.
//
// Why: the goroutine driver (clientToUpstream) simply lets its goroutine
// block. An event-loop driver runs the core on its loop; in blocking it
// hands the loop to another goroutine first, so that one client's wait
// holds up no other, and the goroutine that waited finishes that client's
// message and goes away. The core is the same under both.
type waiter interface {
	// blocking is called before the caller blocks for what.
	blocking(what waitKind)
	// resumed is called once it goes on.
	resumed(what waitKind)
	// clientGone reports whether the client has hung up (polled while
	// waiting: a client that has left must not keep an upstream).
	clientGone() bool
	// clientReadDeadline ends the driver's wait for the client at t with
	// a timeout (zero: no end); upstreamReadDeadline, its wait for up.
	clientReadDeadline(t time.Time)
	upstreamReadDeadline(up net.Conn, t time.Time)
}

// waitKind names what the core waits for.
type waitKind uint8

const (
	blockOnReplies  waitKind = iota // await: replies owed by the upstream
	blockOnReplyEnd                 // awaitReplyEnd: the end of the replies after a Terminate
	blockOnPool                     // leaseFor: a pooled connection
	blockOnResume                   // waitPaused: the tenant's resume
	blockOnToken                    // waitForToken: the tenant's transaction rate
	blockOnPin                      // waitPin: room for one more pinned connection
)

// goroutineWaiter is the waiter of a relay driven by goroutines: nothing
// to hand over.
type goroutineWaiter struct{ client net.Conn }

func (goroutineWaiter) blocking(waitKind) {}
func (goroutineWaiter) resumed(waitKind)  {}

func (w goroutineWaiter) clientGone() bool { return peerClosed(w.client) }

func (w goroutineWaiter) clientReadDeadline(t time.Time) { _ = w.client.SetReadDeadline(t) }

func (goroutineWaiter) upstreamReadDeadline(up net.Conn, t time.Time) { _ = up.SetReadDeadline(t) }

// noWaiter is the pool's own (learnStatuses): no client.
type noWaiter struct{}

func (noWaiter) blocking(waitKind) {}
func (noWaiter) resumed(waitKind)  {}
func (noWaiter) clientGone() bool  { return false }

func (noWaiter) clientReadDeadline(time.Time)             {}
func (noWaiter) upstreamReadDeadline(net.Conn, time.Time) {}

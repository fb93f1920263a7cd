package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// endCauses names, for the "session ended" line, why each side of a session
// ended. The side that ended second mostly ended because pgtenant closed it
// behind the first (a client's Terminate or hang-up closes the upstream
// connection; an upstream failure closes the client's): that is no failure
// of its own and reads "ok", so that "upstream connection lost" means the
// upstream did fail. clientFirst: the request side ended first;
// upstreamFatal: the upstream sent a FATAL.
func endCauses(reqErr, respErr error, clientFirst, upstreamFatal, draining bool) (client, upstream string) {
	// A Terminate marks the session closing before it goes upstream. An
	// upstream that sent a FATAL ended the session, even if its client, told
	// so, hung up before pgtenant read the upstream's close.
	clientFirst = (clientFirst || errors.Is(reqErr, errClientTerminated)) && !upstreamFatal
	return clientEnd(reqErr, clientFirst), upstreamEnd(respErr, clientFirst, draining)
}

func clientEnd(err error, first bool) string {
	var opErr *net.OpError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errClientTerminated):
		return "terminated"
	case errors.Is(err, io.EOF),
		errors.As(err, &opErr) && opErr.Op == "read" && errors.Is(err, syscall.ECONNRESET):
		// The request side reads only the client: it hung up.
		return "disconnected"
	case !first && errors.Is(err, net.ErrClosed):
		return "ok"
	}
	return err.Error()
}

func upstreamEnd(err error, clientFirst, draining bool) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errUpstreamLost) && clientFirst:
		return "ok"
	case errors.Is(err, errUpstreamLost) && draining:
		// pgtenant closed it to end the session (drain, shutdown).
		return errDraining.Error()
	}
	return err.Error()
}

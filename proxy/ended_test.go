package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestEndCauses(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	closedWrite := &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}
	idle := fatalf(codeIdleSessionTimeout, "terminating connection due to idle-session timeout")
	for _, tc := range []struct {
		desc                        string
		reqErr, respErr             error
		clientFirst, fatal, drained bool
		client, upstream            string
	}{
		{desc: "Terminate", reqErr: errClientTerminated, respErr: errUpstreamLost, clientFirst: true, client: "terminated", upstream: "ok"},
		{desc: "Terminate, marked closing before it went upstream", reqErr: errClientTerminated, respErr: errUpstreamLost, client: "terminated", upstream: "ok"},
		{desc: "Terminate while idle in transaction mode", reqErr: errClientTerminated, clientFirst: true, client: "terminated", upstream: "ok"},
		{desc: "hang-up", reqErr: io.EOF, respErr: errUpstreamLost, clientFirst: true, client: "disconnected", upstream: "ok"},
		{desc: "a hang-up inside a message is told as it is", reqErr: fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), respErr: errUpstreamLost, clientFirst: true, client: "reading: unexpected EOF", upstream: "ok"},
		{desc: "connection reset by the client", reqErr: reset, respErr: errUpstreamLost, clientFirst: true, client: "disconnected", upstream: "ok"},
		{desc: "idle timeout", reqErr: idle, respErr: errUpstreamLost, clientFirst: true, client: idle.Error(), upstream: "ok"},
		{desc: "upstream lost", reqErr: closedWrite, respErr: errUpstreamLost, client: "ok", upstream: "upstream connection lost"},
		{desc: "upstream lost, client read closed by pgtenant", reqErr: net.ErrClosed, respErr: errUpstreamLost, client: "ok", upstream: "upstream connection lost"},
		{desc: "upstream FATAL, then the client hung up", reqErr: io.EOF, respErr: errUpstreamLost, clientFirst: true, fatal: true, client: "disconnected", upstream: "upstream connection lost"},
		{desc: "upstream out of step", reqErr: net.ErrClosed, respErr: errors.New("out of step"), client: "ok", upstream: "out of step"},
		{desc: "drained in session mode", reqErr: net.ErrClosed, respErr: errUpstreamLost, drained: true, client: "ok", upstream: "server shutting down"},
		{desc: "drained in transaction mode", reqErr: net.ErrClosed, respErr: errDraining, drained: true, client: "ok", upstream: "server shutting down"},
		{desc: "client side closed while it ended first is no consequence", reqErr: closedWrite, respErr: errUpstreamLost, clientFirst: true, client: closedWrite.Error(), upstream: "ok"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			client, upstream := endCauses(tc.reqErr, tc.respErr, tc.clientFirst, tc.fatal, tc.drained)
			if client != tc.client || upstream != tc.upstream {
				t.Fatalf("endCauses = client %q, upstream %q; want %q, %q", client, upstream, tc.client, tc.upstream)
			}
		})
	}
}

package proxy

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

// Replicas. A cancel key issued by a replica carries its peer id in the
// process id, so that any replica receiving the CancelRequest knows whose
// it is:
//
//	bit 31      0 (clients read the process id as a signed int32)
//	bits 22-30  the issuing replica's peer id, 1..config.MaxPeerID
//	bits 0-21   the upstream backend's pid in session mode (Linux pids
//	            are below 2^22, so pg_backend_pid() is these bits), random
//	            in transaction mode
//
// The 32-bit secret stays random: a key is as hard to guess as without
// peers. A replica forwards a key of another peer, unchanged, to the
// address of that peer's own entry in peers, where only CancelRequests are
// taken and none is forwarded again: a cancel crosses at most one hop,
// whatever the peers lists say.
const (
	peerShift   = 22
	peerLowMask = 1<<peerShift - 1
)

// A compile-time check that config.MaxPeerID fits bits 22-30.
const _ = uint(1<<(31-peerShift) - 1 - config.MaxPeerID)

// keyPID is the process id a replica with peer id peer hands out for a
// backend (or random) process id low.
func keyPID(peer, low uint32) uint32 { return peer<<peerShift | low&peerLowMask }

// keyPeer is the peer id a key's process id carries.
func keyPeer(pid uint32) uint32 { return pid >> peerShift }

// ListenPeers opens the address of this replica's own entry in peers
// (with SO_REUSEPORT when configured, for a restart in place); nil when
// the config has no peers.
func (s *Server) ListenPeers() (net.Listener, error) {
	cfg := s.rt.Load().cfg
	self, ok := cfg.Self()
	if !ok || s.cancels.peer == 0 {
		return nil, nil
	}
	return listen(self.Address, cfg.ReusePort)
}

// ServePeers takes the cancel requests other replicas forward on ln until
// Close. A drain leaves it open: transactions still running may be
// cancelled until they end.
func (s *Server) ServePeers(ln net.Listener) error {
	return s.serve(ln, s.peerListeners, func(conn net.Conn) {
		if !s.track(conn) {
			conn.Close()
			return
		}
		s.wg.Add(1)
		go s.servePeerConn(conn)
	})
}

// servePeerConn takes one forwarded CancelRequest; anything else is refused.
func (s *Server) servePeerConn(conn net.Conn) {
	defer s.connDone(conn)
	defer conn.Close()
	log := s.log.With("peer_conn", conn.RemoteAddr().String())
	_ = conn.SetDeadline(time.Now().Add(s.rt.Load().startupTimeout))
	st, err := readStartup(conn, nil)
	if err != nil {
		s.refuse(st.conn, err, log)
		return
	}
	if st.cancel == nil {
		s.refuse(conn, fatalf(codeConnectionRejected, "this is a pgtenant replica's peer address: it takes only cancel requests forwarded by other replicas; connect to the listen address"), log)
		return
	}
	s.handleCancel(st.cancel, log, true)
}

// cancelRoute is what a replica does with a CancelRequest.
type cancelRoute int

const (
	cancelLocal       cancelRoute = iota // its own key (or no peers): look it up
	cancelForward                        // another replica's: forward it there
	cancelMisrouted                      // another replica's, from a peer: drop
	cancelUnknownPeer                    // a peer id not in peers: drop
)

// routeOf says where a CancelRequest with process id pid goes, on the
// replica self (0: no peers) with the peers of cfg; fromPeer when it came
// on the peer address. For cancelForward, the peer to send it to.
func routeOf(self, pid uint32, fromPeer bool, cfg *config.Config) (cancelRoute, config.Peer) {
	peer := keyPeer(pid)
	switch {
	case self == 0 || peer == self:
		return cancelLocal, config.Peer{}
	case fromPeer:
		// Only a replica whose peers list disagrees with ours sends this;
		// forwarding it again could go round in circles.
		return cancelMisrouted, config.Peer{}
	}
	if p, ok := cfg.Peer(int(peer)); ok {
		return cancelForward, p
	}
	return cancelUnknownPeer, config.Peer{}
}

// routeCancel handles a CancelRequest for a key of another replica: it is
// forwarded there unless it came from a peer already. It reports whether
// the key was another replica's.
func (s *Server) routeCancel(cr *pgproto3.CancelRequest, log *slog.Logger, fromPeer bool) bool {
	cfg := s.rt.Load().cfg
	route, p := routeOf(s.cancels.peer, cr.ProcessID, fromPeer, cfg)
	if route == cancelLocal {
		return false
	}
	log = log.With("peer_id", keyPeer(cr.ProcessID))
	switch route {
	case cancelMisrouted:
		log.Warn("cancel request forwarded for another replica's key dropped: every replica needs the same peers list")
	case cancelUnknownPeer:
		log.Debug("cancel request for an unknown peer id ignored")
	case cancelForward:
		// A peers address that reaches a listen address (the shared one, a
		// load balancer's) rather than the replica's peer address brings
		// the request back here as a client's, to be forwarded again, and
		// again: while this replica forwards a key, it drops the same key.
		// A loop then ends after one forward per replica.
		k, ok := s.cancels.startForward(cr)
		if !ok {
			log.Warn("cancel request for another replica's key came back while this replica forwards it, dropped: the peers address of its replica must be that replica's own peer address, not a listen address", "address", p.Address)
			return true
		}
		defer s.cancels.endForward(k)
		// Unchanged: the key is the issuing replica's to look up.
		fwd := cancelTarget{network: "tcp", address: p.Address, pid: cr.ProcessID, secret: cr.SecretKey}
		if err := fwd.send(context.Background(), cfg.ConnectTimeout.Duration); err != nil {
			log.Warn("forwarding cancel request to its replica failed", "address", p.Address, "err", err)
			return true
		}
		log.Info("cancel request forwarded to its replica", "address", p.Address)
	}
	return true
}

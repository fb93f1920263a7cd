package config

import (
	"fmt"
	"net"
	"strconv"
)

// Replicas: several pgtenant processes serve one address (SO_REUSEPORT, or a
// TCP load balancer). A client's CancelRequest comes on a new connection,
// which may reach another replica than its session's; the cancel key names
// the replica that issued it, and the replica that receives it forwards it
// there. Every replica has the same peers list and its own peer_id.

// MaxPeerID is the largest peer id: a cancel key's process id carries it in
// 9 bits (proxy/peers.go).
const MaxPeerID = 511

// Peer is one replica: its id and the address at which it, and only it,
// takes the cancel requests other replicas forward to it.
type Peer struct {
	ID      int    `yaml:"id"`
	Address string `yaml:"address"`
}

// Peering reports whether this replica is one of several.
func (c *Config) Peering() bool { return c.PeerID != 0 }

// Self returns this replica's own entry in peers (after Validate).
func (c *Config) Self() (Peer, bool) {
	return c.Peer(c.PeerID)
}

// Peer returns the entry of peers with id.
func (c *Config) Peer(id int) (Peer, bool) {
	for _, p := range c.Peers {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}

// validatePeers checks peer_id and peers: both or neither, ids unique and
// in range, this replica's among them, and each replica reached at an
// address of its own.
func (c *Config) validatePeers(add func(field, format string, args ...any)) {
	switch {
	case len(c.Peers) == 0 && c.PeerID == 0:
		return
	case len(c.Peers) == 0:
		add("peer_id", "needs a peers list: the id and address of every replica, this one included")
		return
	case c.PeerID == 0:
		add("peer_id", "must be set when peers is: this replica's id, one of the ids in peers")
	case c.PeerID < 1 || c.PeerID > MaxPeerID:
		add("peer_id", "%d is out of range: ids go from 1 to %d", c.PeerID, MaxPeerID)
	default:
		if _, ok := c.Self(); !ok {
			add("peer_id", "%d is not the id of any entry in peers: list this replica too, with the address it takes forwarded cancel requests on", c.PeerID)
		}
	}
	ids := map[int]int{}
	addrs := map[string]int{}
	for i, p := range c.Peers {
		field := fmt.Sprintf("peers[%d]", i)
		if p.ID < 1 || p.ID > MaxPeerID {
			add(field+".id", "%d is out of range: ids go from 1 to %d", p.ID, MaxPeerID)
		} else if j, dup := ids[p.ID]; dup {
			add(field+".id", "%d is already peers[%d]'s id; ids must be unique", p.ID, j)
		} else {
			ids[p.ID] = i
		}
		if err := validatePeerAddress(p.Address); err != nil {
			add(field+".address", "%v", err)
			continue
		}
		switch j, dup := addrs[p.Address]; {
		case dup:
			add(field+".address", "%q is already peers[%d]'s address; each replica needs an address of its own", p.Address, j)
		case p.Address == c.Listen:
			add(field+".address", "%q is the listen address, which any replica may answer; give each replica an address of its own for forwarded cancel requests", p.Address)
		case onListenPort(p.Address, c.Listen):
			add(field+".address", "%q has the port of listen %q, on which every replica takes clients on every address; give each replica a port of its own for forwarded cancel requests", p.Address, c.Listen)
		default:
			addrs[p.Address] = i
		}
	}
}

// onListenPort reports whether address is on the port of a listen address
// whose host is unspecified: every replica (all have the same listen) then
// takes clients there, whatever the host.
func onListenPort(address, listen string) bool {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil || lhost != "" && !net.ParseIP(lhost).IsUnspecified() {
		return false
	}
	_, port, err := net.SplitHostPort(address)
	return err == nil && port == lport
}

// validatePeerAddress accepts a host:port other replicas can dial.
func validatePeerAddress(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port; write e.g. \"10.0.0.11:6441\"", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q must be a number from 1 to 65535", port)
	}
	return nil
}

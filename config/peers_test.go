package config

import (
	"strings"
	"testing"
)

func TestPeers(t *testing.T) {
	const three = "peers:\n  - {id: 1, address: \"10.0.0.11:6441\"}\n  - {id: 2, address: \"10.0.0.12:6441\"}\n  - {id: 3, address: \"10.0.0.13:6441\"}\n"
	tests := []struct {
		desc     string
		yaml     string // appended to minimal
		wantSelf Peer   // when err is empty
		err      string
	}{
		{desc: "no peers: a single pgtenant"},
		{desc: "three replicas, this one the second", yaml: "peer_id: 2\n" + three, wantSelf: Peer{ID: 2, Address: "10.0.0.12:6441"}},
		{desc: "the largest id", yaml: "peer_id: 511\npeers: [{id: 511, address: \"h:1\"}]\n", wantSelf: Peer{ID: 511, Address: "h:1"}},
		{desc: "peers without peer_id", yaml: three, err: "peer_id: must be set when peers is"},
		{desc: "peer_id without peers", yaml: "peer_id: 2\n", err: "peer_id: needs a peers list"},
		{desc: "peer_id not in peers", yaml: "peer_id: 4\n" + three, err: "peer_id: 4 is not the id of any entry in peers"},
		{desc: "peer_id out of range", yaml: "peer_id: 512\n" + three, err: "peer_id: 512 is out of range: ids go from 1 to 511"},
		{desc: "negative peer_id", yaml: "peer_id: -1\n" + three, err: "peer_id: -1 is out of range"},
		{desc: "peer id 0", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h:1\"}, {id: 0, address: \"h:2\"}]\n", err: "peers[1].id: 0 is out of range"},
		{desc: "peer id too large", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h:1\"}, {id: 600, address: \"h:2\"}]\n", err: "peers[1].id: 600 is out of range"},
		{
			desc: "duplicate ids", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h:1\"}, {id: 1, address: \"h:2\"}]\n",
			err: "peers[1].id: 1 is already peers[0]'s id; ids must be unique",
		},
		{
			desc: "duplicate addresses", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h:1\"}, {id: 2, address: \"h:1\"}]\n",
			err: `peers[1].address: "h:1" is already peers[0]'s address; each replica needs an address of its own`,
		},
		{
			desc: "the shared listen address as a peer's", yaml: "listen: \"0.0.0.0:6432\"\npeer_id: 1\npeers: [{id: 1, address: \"0.0.0.0:6432\"}]\n",
			err: `peers[0].address: "0.0.0.0:6432" is the listen address`,
		},
		{
			desc: "the listen port on a host, listen on every address", yaml: "listen: \"0.0.0.0:6432\"\npeer_id: 1\npeers: [{id: 1, address: \"10.0.0.11:6432\"}]\n",
			err: `peers[0].address: "10.0.0.11:6432" has the port of listen "0.0.0.0:6432"`,
		},
		{
			desc: "the listen port, listen on every IPv6 address", yaml: "listen: \"[::]:6432\"\npeer_id: 1\npeers: [{id: 1, address: \"h:6432\"}]\n",
			err: `peers[0].address: "h:6432" has the port of listen "[::]:6432"`,
		},
		{
			desc: "the listen port, listen with no host", yaml: "listen: \":6432\"\npeer_id: 1\npeers: [{id: 1, address: \"h:6432\"}]\n",
			err: `peers[0].address: "h:6432" has the port of listen ":6432"`,
		},
		{
			desc: "the listen port on another host than a listen host", yaml: "listen: \"10.0.0.5:6432\"\npeer_id: 1\npeers: [{id: 1, address: \"10.0.0.11:6432\"}]\n",
			wantSelf: Peer{ID: 1, Address: "10.0.0.11:6432"},
		},
		{desc: "address without a port", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h\"}]\n", err: `peers[0].address: "h" is not host:port`},
		{desc: "address without a host", yaml: "peer_id: 1\npeers: [{id: 1, address: \":6441\"}]\n", err: `peers[0].address: ":6441" is not host:port`},
		{desc: "port 0", yaml: "peer_id: 1\npeers: [{id: 1, address: \"h:0\"}]\n", err: `peers[0].address: port "0" must be a number from 1 to 65535`},
		{desc: "a misspelt key", yaml: "peer_id: 1\npeers: [{id: 1, addr: \"h:1\"}]\n", err: `unknown key "addr" in peers[0]`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse([]byte(minimal + tt.yaml))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse: %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			self, ok := c.Self()
			if ok != (tt.wantSelf != Peer{}) || self != tt.wantSelf || c.Peering() != ok {
				t.Errorf("Self() = %+v, %v; Peering() = %v; want %+v", self, ok, c.Peering(), tt.wantSelf)
			}
		})
	}
}

// One config file for every replica: the id from the environment.
func TestPeerIDFromEnvironment(t *testing.T) {
	t.Setenv("PGTENANT_TEST_PEER_ID", "3")
	c, err := Parse([]byte(minimal + "admin_listen: \"127.0.0.1:918${PGTENANT_TEST_PEER_ID}\"\npeer_id: ${PGTENANT_TEST_PEER_ID}\npeers: [{id: 1, address: \"h:1\"}, {id: 3, address: \"h:3\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if self, _ := c.Self(); self != (Peer{ID: 3, Address: "h:3"}) || c.AdminListen != "127.0.0.1:9183" {
		t.Fatalf("Self() = %+v, admin_listen %q", self, c.AdminListen)
	}
}

package proxy

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

func TestKeyPID(t *testing.T) {
	for _, tc := range []struct {
		desc      string
		peer, low uint32
		want      uint32
	}{
		{desc: "the first peer, a small pid", peer: 1, low: 4242, want: 1<<22 | 4242},
		{desc: "the largest pid Linux hands out", peer: 3, low: 1<<22 - 1, want: 3<<22 | (1<<22 - 1)},
		{desc: "a larger pid keeps its low bits", peer: 2, low: 1<<22 | 7, want: 2<<22 | 7},
		{desc: "a random transaction-mode pid keeps its low bits", peer: 5, low: 0x3fffffff, want: 5<<22 | (1<<22 - 1)},
		{desc: "the largest peer id leaves the sign bit clear", peer: config.MaxPeerID, low: 0xffffffff, want: 0x7fffffff},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got := keyPID(tc.peer, tc.low)
			if got != tc.want {
				t.Fatalf("keyPID(%d, %d) = %#x, want %#x", tc.peer, tc.low, got, tc.want)
			}
			if int32(got) < 0 {
				t.Fatalf("keyPID(%d, %d) = %#x is negative as an int32", tc.peer, tc.low, got)
			}
			if p := keyPeer(got); p != tc.peer {
				t.Fatalf("keyPeer(%#x) = %d, want %d", got, p, tc.peer)
			}
			if got&peerLowMask != tc.low&peerLowMask {
				t.Fatalf("low bits %#x, want %#x", got&peerLowMask, tc.low&peerLowMask)
			}
		})
	}
}

// A replica's registry puts its peer id in every key it issues and finds
// them again; without peers the process id is the target's own.
func TestRegistryPeerKeys(t *testing.T) {
	for _, tc := range []struct {
		desc    string
		peer    uint32
		target  cancelTarget
		wantPID uint32
	}{
		{desc: "no peers, session mode: the upstream pid", target: cancelTarget{pid: 4242}, wantPID: 4242},
		{desc: "peer 2, session mode: the upstream pid under the peer id", peer: 2, target: cancelTarget{pid: 4242}, wantPID: 2<<22 | 4242},
		{desc: "peer 511, transaction mode", peer: 511, target: cancelTarget{pid: 0x2abcdef1, pooled: &relay{}}, wantPID: 511<<22 | 0x2abcdef1&peerLowMask},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			reg := newCancelRegistry(tc.peer)
			seen := map[uint32]bool{}
			for range 50 {
				k := reg.register(tc.target)
				if k.pid != tc.wantPID {
					t.Fatalf("key pid %#x, want %#x", k.pid, tc.wantPID)
				}
				seen[k.secret] = true
				var secret [4]byte
				binary.BigEndian.PutUint32(secret[:], k.secret)
				got, ok := reg.lookup(k.pid, secret[:])
				// A transaction-mode target is its relay: no upstream pid.
				if !ok || tc.target.pooled == nil && got.pid != tc.target.pid || got.pooled != tc.target.pooled {
					t.Fatalf("lookup(%#x) = %+v, %v; want the target", k.pid, got, ok)
				}
				// The upstream's pid alone, without the peer bits, is no key.
				if tc.peer != 0 {
					if _, ok := reg.lookup(tc.target.pid, secret[:]); ok {
						t.Fatal("the key without its peer id was found")
					}
				}
			}
			if len(seen) < 45 {
				t.Fatalf("%d distinct secrets in 50 keys: the secret is not random", len(seen))
			}
		})
	}
}

func TestRouteOf(t *testing.T) {
	cfg := &config.Config{PeerID: 2, Peers: []config.Peer{{ID: 1, Address: "h1:6441"}, {ID: 2, Address: "h2:6441"}, {ID: 3, Address: "h3:6441"}}}
	for _, tc := range []struct {
		desc     string
		self     uint32
		pid      uint32
		fromPeer bool
		want     cancelRoute
		wantTo   string
	}{
		{desc: "no peers: every key is looked up here", self: 0, pid: 3<<22 | 10, want: cancelLocal},
		{desc: "its own key from a client", self: 2, pid: keyPID(2, 10), want: cancelLocal},
		{desc: "its own key from a peer", self: 2, pid: keyPID(2, 10), fromPeer: true, want: cancelLocal},
		{desc: "another replica's key from a client: forwarded", self: 2, pid: keyPID(3, 10), want: cancelForward, wantTo: "h3:6441"},
		{desc: "the first replica's key", self: 2, pid: keyPID(1, 99), want: cancelForward, wantTo: "h1:6441"},
		{desc: "another replica's key from a peer: never forwarded again", self: 2, pid: keyPID(3, 10), fromPeer: true, want: cancelMisrouted},
		{desc: "a peer id no replica has", self: 2, pid: keyPID(77, 10), want: cancelUnknownPeer},
		{desc: "peer id 0 (a key from a pgtenant without peers)", self: 2, pid: 4242, want: cancelUnknownPeer},
		{desc: "the sign bit set", self: 2, pid: 1<<31 | keyPID(3, 10), want: cancelUnknownPeer},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, to := routeOf(tc.self, tc.pid, tc.fromPeer, cfg)
			if got != tc.want || to.Address != tc.wantTo {
				t.Fatalf("routeOf(%d, %#x, %v) = %d, %q; want %d, %q", tc.self, tc.pid, tc.fromPeer, got, to.Address, tc.want, tc.wantTo)
			}
		})
	}
}

// A key being forwarded is refused a second forward until the first ends:
// a request that comes back through a listen address stops there.
func TestForwardInFlight(t *testing.T) {
	reg := newCancelRegistry(1)
	a := &pgproto3.CancelRequest{ProcessID: 2<<22 | 7, SecretKey: []byte{1, 2, 3, 4}}
	b := &pgproto3.CancelRequest{ProcessID: 2<<22 | 7, SecretKey: []byte{1, 2, 3, 5}}
	for _, step := range []struct {
		desc string
		cr   *pgproto3.CancelRequest
		end  bool // end the forward of the previous start instead
		want bool
	}{
		{desc: "a first forward", cr: a, want: true},
		{desc: "the same key while it is forwarded", cr: a, want: false},
		{desc: "another secret for the same pid", cr: b, want: true},
		{desc: "the first forward ends", cr: a, end: true},
		{desc: "the key again after it ended", cr: a, want: true},
	} {
		if step.end {
			reg.endForward(forwardKey(step.cr))
			continue
		}
		if _, got := reg.startForward(step.cr); got != step.want {
			t.Errorf("%s: startForward = %v, want %v", step.desc, got, step.want)
		}
	}
}

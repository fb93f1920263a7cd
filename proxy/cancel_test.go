package proxy

import (
	"encoding/binary"
	"testing"
)

// A key, in either mode, finds its target until it is unregistered; the
// transaction-mode target is the relay itself.
func TestCancelRegistryUnregister(t *testing.T) {
	r := &relay{}
	for _, tc := range []struct {
		desc   string
		target cancelTarget
	}{
		{"session mode", cancelTarget{network: "tcp", address: "127.0.0.1:5432", pid: 4242, secret: []byte{1, 2, 3, 4}}},
		{"transaction mode", cancelTarget{pid: 77, pooled: r}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			reg := newCancelRegistry(0)
			k := reg.register(tc.target)
			var secret [4]byte
			binary.BigEndian.PutUint32(secret[:], k.secret)
			got, ok := reg.lookup(k.pid, secret[:])
			if !ok || got.pooled != tc.target.pooled || got.address != tc.target.address {
				t.Fatalf("lookup = %+v, %v; want %+v", got, ok, tc.target)
			}
			reg.unregister(k)
			if _, ok := reg.targetOf(k); ok {
				t.Fatal("found after unregister")
			}
			if len(reg.targets)+len(reg.pooled) != 0 {
				t.Fatalf("%d entries left", len(reg.targets)+len(reg.pooled))
			}
		})
	}
}

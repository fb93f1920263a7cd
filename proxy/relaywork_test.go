package proxy

import (
	"testing"
	"unsafe"
)

// What an idle transaction-mode client keeps is mostly its relay and its
// session: they are sized to stay in the allocator's size classes of 768
// and 352 bytes. A field more moves one to the next class (896, 384): find
// room for it in relayWork (a parked client gives that back) or in padding.
func TestIdleClientStructSizes(t *testing.T) {
	// An object of more than 512 bytes that holds pointers carries an
	// 8-byte header in the heap.
	if got := unsafe.Sizeof(relay{}) + 8; got > 768 {
		t.Errorf("relay: %d bytes with its heap header, over the 768-byte size class", got)
	}
	if got := unsafe.Sizeof(session{}); got > 352 {
		t.Errorf("session: %d bytes, over the 352-byte size class", got)
	}
}

// A relayWork given back holds nothing of its client's but scratch
// capacity, and a relay that takes one finds it at rest.
func TestPutWorkAtRest(t *testing.T) {
	r := newRelay(nil, nil, nil, nil, &assertion{}, nil, zeroTime)
	r.in, r.inRest, r.assertDue, r.dealloc, r.pins = []byte("Q"), 3, []byte("x"), "s", "why"
	r.groupPortals = append(r.groupPortals, boundPortal{name: "p"})
	r.waitSilent = append(r.waitSilent, 7)
	r.standaloneDone.Store(true)
	r.ledger.unitFailed, r.ledger.mayCopy = true, 2
	w := r.relayWork
	r.relayWork, r.ledger.ledgerWork = nil, nil
	w.rest()
	if w.in != nil || w.inRest != 0 || w.assertDue != nil || w.dealloc != "" || w.pins != "" || len(w.groupPortals) != 0 ||
		len(w.waitSilent) != 0 || w.standaloneDone.Load() || w.ledger.unitFailed || w.ledger.mayCopy != 0 {
		t.Fatalf("given back not at rest: %+v", w)
	}
	if cap(w.groupPortals) == 0 || cap(w.waitSilent) == 0 {
		t.Fatal("scratch capacity not kept")
	}
	if gp := w.groupPortals[:1]; gp[0].name != "" {
		t.Fatal("a given-back relayWork still refers to the client's portal names")
	}

	r.takeWork()
	if r.relayWork == nil || r.ledger.ledgerWork != &r.relayWork.ledger {
		t.Fatal("takeWork: the relay and its ledger have no relayWork")
	}
	r.putWork()
	if r.relayWork != nil || r.ledger.ledgerWork != nil {
		t.Fatal("putWork: the relay kept its relayWork")
	}
}

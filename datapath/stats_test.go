// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestDropReasonNumbers: no drop reason is 0, since the programs' helpers
// return reasons negated, and every reason has a name and its own key.
func TestDropReasonNumbers(t *testing.T) {
	seen := map[DropReason]bool{}
	for _, r := range DropReasons() {
		if r == 0 || int(r) >= dropMax {
			t.Errorf("%s: number %d, want 1..%d", r, uint32(r), dropMax-1)
		}
		if seen[r] {
			t.Errorf("%s listed twice", r)
		}
		seen[r] = true
		if _, ok := dropNames[r]; !ok {
			t.Errorf("reason %d has no name", uint32(r))
		}
	}
	if len(seen) != len(dropNames) {
		t.Errorf("DropReasons lists %d reasons, dropNames names %d", len(seen), len(dropNames))
	}
}

// TestDropsReadsOldMalformed: a drops map pinned by an earlier version,
// which counted malformed packets under 0, is read with that count as
// malformed, added to the new key's; the other reasons are read as they are.
func TestDropsReadsOldMalformed(t *testing.T) {
	requireRoot(t)
	dp, err := NewEBPF(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	n, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	perCPU := func(first uint64) []uint64 {
		v := make([]uint64, n)
		v[0] = first
		return v
	}
	for k, v := range map[uint32]uint64{dropMalformedOld: 5, uint32(DropMalformed): 2, uint32(DropSpoofed): 7} {
		if err := dp.objs.Drops.Put(k, perCPU(v)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if got[DropMalformed] != 7 || got[DropSpoofed] != 7 || got[DropNotPublished] != 0 {
		t.Errorf("drops: malformed %d, spoofed %d, not_published %d; want 7, 7, 0",
			got[DropMalformed], got[DropSpoofed], got[DropNotPublished])
	}
	if _, ok := got[DropReason(dropMalformedOld)]; ok {
		t.Errorf("drops has the reserved key %d: %v", dropMalformedOld, got)
	}
}

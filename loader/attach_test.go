// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// tcxProgs lists the programs the kernel runs on ifindex at hook at.
func tcxProgs(t *testing.T, ifindex int, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	var out []ebpf.ProgramID
	for _, p := range res.Programs {
		out = append(out, p.ID)
	}
	return out
}

// TestDetachTCXHeld: Detach takes a tcx link down even while another
// process (here: another file descriptor) holds it.
func TestDetachTCXHeld(t *testing.T) {
	n := setup(t)
	prog := newCounterProg(t, newCounters(t), 1, tcActOK)
	if _, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX); err != nil {
		t.Fatal(err)
	}
	held, err := link.LoadPinnedLink(LinkPin(n.base, vethA, Egress, "nat"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	want := []ebpf.ProgramID{progID(t, prog)}
	if got := tcxProgs(t, n.idxA, ebpf.AttachTCXEgress); !slices.Equal(got, want) {
		t.Fatalf("before Detach: %v, want %v", got, want)
	}
	if err := Detach(n.base, vethA, Egress, "nat"); err != nil {
		t.Fatal(err)
	}
	if got := tcxProgs(t, n.idxA, ebpf.AttachTCXEgress); len(got) != 0 {
		t.Errorf("after Detach, held elsewhere: still runs %v", got)
	}
	if exists(LinkPin(n.base, vethA, Egress, "nat")) {
		t.Error("pin left after Detach")
	}
}

// TestAttachTCXReplacesHeld: a link pinned for vethA that runs elsewhere
// (here on lo) is detached when replaced, even while held, and the new
// link runs on vethA.
func TestAttachTCXReplacesHeld(t *testing.T) {
	n := setup(t)
	prog := newCounterProg(t, newCounters(t), 1, tcActOK)
	const lo = 1
	other, err := link.AttachTCX(link.TCXOptions{Interface: lo, Program: prog, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close() // held
	pin := LinkPin(n.base, vethA, Egress, "nat")
	if err := mkdirFor(pin); err != nil {
		t.Fatal(err)
	}
	if err := other.Pin(pin); err != nil {
		t.Fatal(err)
	}
	want := []ebpf.ProgramID{progID(t, prog)}
	if got := tcxProgs(t, lo, ebpf.AttachTCXEgress); !slices.Equal(got, want) {
		t.Fatalf("lo before: %v, want %v", got, want)
	}
	att, err := Attach(n.base, prog, "nat", vethA, n.idxA, Egress, ModeTCX)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := other.Info(); err != nil || att.LinkID == info.ID {
		t.Errorf("the link on lo was adopted (%+v, %v)", att, err)
	}
	if got := tcxProgs(t, lo, ebpf.AttachTCXEgress); len(got) != 0 {
		t.Errorf("lo still runs %v after the link was replaced", got)
	}
	if got := tcxProgs(t, n.idxA, ebpf.AttachTCXEgress); !slices.Equal(got, want) {
		t.Errorf("%s runs %v, want %v", vethA, got, want)
	}
	if err := Detach(n.base, vethA, Egress, "nat"); err != nil {
		t.Fatal(err)
	}
}

func mkdirFor(path string) error { return os.MkdirAll(filepath.Dir(path), 0o700) }

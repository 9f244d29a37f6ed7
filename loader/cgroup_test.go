// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cgroupKinds are the program kinds attached with AttachCgroup.
var cgroupKinds = []struct {
	name   string
	typ    ebpf.ProgramType
	attach ebpf.AttachType
}{
	{"cgroup_skb", ebpf.CGroupSKB, ebpf.AttachCGroupInetEgress},
	{"sock_addr", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect},
}

// newCgroupProg loads a program that lets everything through (returns 1);
// weight makes two versions distinct programs.
func newCgroupProg(t *testing.T, typ ebpf.ProgramType, at ebpf.AttachType, weight int64) *ebpf.Program {
	t.Helper()
	spec := &ebpf.ProgramSpec{
		Type:       typ,
		AttachType: at,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, int32(weight)),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	}
	if typ == ebpf.CGroupSKB {
		spec.AttachType = ebpf.AttachNone
	}
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type cgroupEnv struct {
	base   string // temporary bpffs folder
	cgroup string // temporary cgroup v2 folder
}

func newCgroupEnv(t *testing.T) cgroupEnv {
	t.Helper()
	requireRoot(t)
	base, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-loader-test-")
	if err != nil {
		t.Fatalf("temporary bpffs directory (is bpffs mounted at /sys/fs/bpf?): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	return cgroupEnv{base: base, cgroup: newCgroup(t)}
}

// newCgroup makes a throwaway cgroup v2 folder.
func newCgroup(t *testing.T) string {
	t.Helper()
	root := ""
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			root = p
			break
		}
	}
	if root == "" {
		t.Fatal("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	dir, err := os.MkdirTemp(root, "bpfnet-loader-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	return dir
}

// cgroupProgs lists the programs the kernel runs on cgroup at hook at.
func cgroupProgs(t *testing.T, cgroup string, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	var out []ebpf.ProgramID
	for _, p := range res.Programs {
		out = append(out, p.ID)
	}
	return out
}

func linkInfo(t *testing.T, l link.Link) *link.Info {
	t.Helper()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestAttachCgroup: attach fresh, adopt (same link, new program), detach
// (the kernel no longer runs it, the pin is gone), for every cgroup kind.
func TestAttachCgroup(t *testing.T) {
	for _, k := range cgroupKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newCgroupEnv(t)
			pin := SockLinkPin(e.base, "prog")
			v1 := newCgroupProg(t, k.typ, k.attach, 1)
			v2 := newCgroupProg(t, k.typ, k.attach, 2)

			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Fatalf("fresh cgroup runs %v", got)
			}
			l1, err := AttachCgroup(pin, v1, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			first := linkInfo(t, l1)
			l1.Close() // pinned: stays attached
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, []ebpf.ProgramID{progID(t, v1)}) {
				t.Fatalf("after attaching: cgroup runs %v, want [%d]", got, progID(t, v1))
			}
			if !exists(pin) {
				t.Fatalf("no pin at %s", pin)
			}

			// A second call (a restart) with a new program adopts the link.
			l2, err := AttachCgroup(pin, v2, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			second := linkInfo(t, l2)
			l2.Close()
			if second.ID != first.ID {
				t.Errorf("adopting: link id %d, want the same link %d", second.ID, first.ID)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, []ebpf.ProgramID{progID(t, v2)}) {
				t.Errorf("after adopting: cgroup runs %v, want only the new program [%d]", got, progID(t, v2))
			}

			if err := DetachPin(pin); err != nil {
				t.Fatal(err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Errorf("after detaching: cgroup still runs %v", got)
			}
			if exists(pin) {
				t.Errorf("pin %s still there after detaching", pin)
			}
			// Nothing left is not an error.
			if err := DetachPin(pin); err != nil {
				t.Errorf("detaching again: %v", err)
			}
		})
	}
}

// TestDetachCgroupHeld: a pinned cgroup link that another process (here:
// another file descriptor) holds is really detached, where unpinning alone
// leaves the program running.
func TestDetachCgroupHeld(t *testing.T) {
	for _, k := range cgroupKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newCgroupEnv(t)
			prog := newCgroupProg(t, k.typ, k.attach, 1)
			want := []ebpf.ProgramID{progID(t, prog)}

			// Positive twin: unpinning a held link does not detach it.
			unpinned := filepath.Join(e.base, "unpinned")
			l, err := AttachCgroup(unpinned, prog, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(unpinned); err != nil {
				t.Fatal(err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, want) {
				t.Fatalf("unpinned but held: cgroup runs %v, want %v", got, want)
			}
			l.Close()
			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Fatalf("unpinned and closed: cgroup still runs %v", got)
			}

			pin := ContainerLinkPin(e.base, "c1", "egress")
			l, err = AttachCgroup(pin, prog, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close() // the other holder
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, want) {
				t.Fatalf("before detaching: cgroup runs %v, want %v", got, want)
			}
			if err := DetachPin(pin); err != nil {
				t.Fatal(err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Errorf("detached while held: cgroup still runs %v", got)
			}
			if exists(pin) {
				t.Errorf("pin %s still there", pin)
			}
		})
	}
}

// TestAttachCgroupReplace: a link pinned on another cgroup (the container
// was restarted, the setting changed) is detached, even while held, and
// replaced by a new link on the right cgroup; the same goes for a pin that
// is not a link.
func TestAttachCgroupReplace(t *testing.T) {
	for _, k := range cgroupKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newCgroupEnv(t)
			other := newCgroup(t)
			prog := newCgroupProg(t, k.typ, k.attach, 1)
			want := []ebpf.ProgramID{progID(t, prog)}
			pin := SockLinkPin(e.base, "prog")

			old, err := AttachCgroup(pin, prog, other, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close() // held elsewhere
			oldID := linkInfo(t, old).ID
			if got := cgroupProgs(t, other, k.attach); !slices.Equal(got, want) {
				t.Fatalf("old cgroup runs %v, want %v", got, want)
			}

			l, err := AttachCgroup(pin, prog, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if id := linkInfo(t, l).ID; id == oldID {
				t.Errorf("link on another cgroup adopted (id %d), want a new link", id)
			}
			if got := cgroupProgs(t, other, k.attach); len(got) != 0 {
				t.Errorf("old cgroup still runs %v after the link was replaced", got)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, want) {
				t.Errorf("new cgroup runs %v, want %v", got, want)
			}
			pinned, err := link.LoadPinnedLink(pin, nil)
			if err != nil {
				t.Fatal(err)
			}
			if id := linkInfo(t, pinned).ID; id != linkInfo(t, l).ID {
				t.Errorf("pin holds link %d, want the new link %d", id, linkInfo(t, l).ID)
			}
			pinned.Close()

			// A pin that is not a link is replaced.
			if err := DetachLink(l); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("not a link", pin); err != nil {
				t.Fatal(err)
			}
			l, err = AttachCgroup(pin, prog, e.cgroup, k.attach)
			if err != nil {
				t.Fatalf("over a record: %v", err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, want) {
				t.Errorf("over a record: cgroup runs %v, want %v", got, want)
			}
			if err := DetachLink(l); err != nil {
				t.Fatal(err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Errorf("after DetachLink: cgroup still runs %v", got)
			}
			if exists(pin) {
				t.Errorf("pin %s still there after DetachLink", pin)
			}
		})
	}
}

// TestAttachCgroupUnpinned: without a pin the link goes with its file
// descriptor, and nothing is written to bpffs.
func TestAttachCgroupUnpinned(t *testing.T) {
	for _, k := range cgroupKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newCgroupEnv(t)
			prog := newCgroupProg(t, k.typ, k.attach, 1)
			l, err := AttachCgroup("", prog, e.cgroup, k.attach)
			if err != nil {
				t.Fatal(err)
			}
			if got := cgroupProgs(t, e.cgroup, k.attach); !slices.Equal(got, []ebpf.ProgramID{progID(t, prog)}) {
				t.Fatalf("cgroup runs %v", got)
			}
			l.Close()
			if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
				t.Errorf("closed: cgroup still runs %v", got)
			}
			if ents, _ := os.ReadDir(e.base); len(ents) != 0 {
				t.Errorf("bpffs folder holds %v", ents)
			}
		})
	}
}

// TestDetachTree: every link pinned under a folder is detached, held or
// not, and the folder with its records goes.
func TestDetachTree(t *testing.T) {
	e := newCgroupEnv(t)
	k := cgroupKinds[0]
	prog := newCgroupProg(t, k.typ, k.attach, 1)
	sock := cgroupKinds[1]
	sprog := newCgroupProg(t, sock.typ, sock.attach, 1)

	cl, err := AttachCgroup(ContainerLinkPin(e.base, "c1", "egress"), prog, e.cgroup, k.attach)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close() // held
	sl, err := AttachCgroup(SockLinkPin(e.base, "sock_connect4"), sprog, e.cgroup, sock.attach)
	if err != nil {
		t.Fatal(err)
	}
	sl.Close()
	if err := WriteRecord(ContainerRecordPath(e.base, "c1"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if len(cgroupProgs(t, e.cgroup, k.attach)) != 1 || len(cgroupProgs(t, e.cgroup, sock.attach)) != 1 {
		t.Fatal("programs not attached before DetachTree")
	}
	if err := DetachTree(CgroupDir(e.base)); err != nil {
		t.Fatal(err)
	}
	if got := cgroupProgs(t, e.cgroup, k.attach); len(got) != 0 {
		t.Errorf("cgroup_skb still attached: %v", got)
	}
	if got := cgroupProgs(t, e.cgroup, sock.attach); len(got) != 0 {
		t.Errorf("sock_addr still attached: %v", got)
	}
	if _, err := os.Stat(CgroupDir(e.base)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there: %v", CgroupDir(e.base), err)
	}
	if err := DetachTree(CgroupDir(e.base)); err != nil {
		t.Errorf("nothing left: %v", err)
	}
}

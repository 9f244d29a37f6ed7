// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"os"
	"testing"
)

// sockCgroup makes a throwaway child of the cgroup v2 root, so that the
// queries see only this test's programs.
func sockCgroup(t *testing.T) string {
	t.Helper()
	root, err := DefaultCgroupPath()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "bpfnet-sock-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("cgroup %s left behind: %v", dir, err)
		}
	})
	return dir
}

func startSockOn(t *testing.T, l *labDatapath, cgroup string) *Sock {
	t.Helper()
	var s *Sock
	err := l.topo.Host.Do(func() error {
		var err error
		s, err = l.dp.StartSock(SockOptions{CgroupPath: cgroup})
		return err
	})
	if err != nil {
		t.Fatalf("starting the sock programs on %s: %v", cgroup, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func attachedHooks(t *testing.T, cgroup string) int {
	t.Helper()
	n := 0
	for _, ids := range cgroupProgs(t, cgroup) {
		n += len(ids)
	}
	return n
}

// TestSockReplaceHeld: moving the sock programs to another cgroup detaches
// the links pinned on the first, even while a previous process still holds
// them (there, unpinning alone would leave them translating).
func TestSockReplaceHeld(t *testing.T) {
	l := sockLab(t)
	first, second := sockCgroup(t), sockCgroup(t)

	old := startSockOn(t, l, first) // stays open: the holder
	if n := attachedHooks(t, first); n != len(sockHooks) {
		t.Fatalf("first cgroup runs %d sock programs, want %d", n, len(sockHooks))
	}
	oldLinks := sockLinks(t, old)

	s := startSockOn(t, l, second)
	if n := attachedHooks(t, first); n != 0 {
		t.Errorf("first cgroup still runs %d sock programs after the links moved (held by the old Sock)", n)
	}
	if n := attachedHooks(t, second); n != len(sockHooks) {
		t.Errorf("second cgroup runs %d sock programs, want %d", n, len(sockHooks))
	}
	for name, sl := range sockLinks(t, s) {
		if sl.LinkID == oldLinks[name].LinkID {
			t.Errorf("%s: link %d of the first cgroup kept", name, sl.LinkID)
		}
	}

	// RemoveSockPins (bpfnet down) detaches what is pinned, held or not.
	if err := RemoveSockPins(l.pin); err != nil {
		t.Fatal(err)
	}
	if n := attachedHooks(t, second); n != 0 {
		t.Errorf("second cgroup still runs %d sock programs after RemoveSockPins (held by the Sock)", n)
	}
	if _, err := os.Stat(SockDir(l.pin)); !os.IsNotExist(err) {
		t.Errorf("%s still there after RemoveSockPins: %v", SockDir(l.pin), err)
	}
}

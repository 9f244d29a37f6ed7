// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"os"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/bpfnet/bpfnet/loader"
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

// TestSockUpgradeIPv6: the pins of a version before the IPv6 sock hooks
// (no sock_sendmsg6 link, no sock_rev6 map) are adopted: the links it
// pinned are updated in place, the missing link and map are made and
// pinned, and the host's IPv6 datagrams are translated at once.
func TestSockUpgradeIPv6(t *testing.T) {
	l, _ := sock6Lab(t)
	host := l.topo.Host
	s1 := startSock(t, l)
	links1 := sockLinks(t, s1)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	// What the older version left: its links, without sendmsg6's, and
	// its maps, without sock_rev6.
	pin := loader.SockLinkPin(l.pin, ProgSockSendmsg6)
	old, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := loader.DetachLink(old); err != nil {
		t.Fatal(err)
	}
	old.Close()
	os.Remove(pin)
	rev6 := loader.GlobalPin(l.pin, "sock_rev6")
	if err := os.Remove(rev6); err != nil {
		t.Fatal(err)
	}
	if n := len(cgroupProgs(t, s1.CgroupPath())[ProgSockSendmsg6]); n != 0 {
		t.Fatalf("sendmsg6 still has %d programs on the cgroup after its link was detached", n)
	}

	s2 := startSock(t, l)
	links2 := sockLinks(t, s2)
	for name, l1 := range links1 {
		l2 := links2[name]
		if name == ProgSockSendmsg6 {
			if l2.LinkID == l1.LinkID {
				t.Errorf("%s: link %d, which was detached, reported again", name, l2.LinkID)
			}
			continue
		}
		if l2.LinkID != l1.LinkID {
			t.Errorf("%s: link %d after the upgrade, want the pinned %d adopted", name, l2.LinkID, l1.LinkID)
		}
	}
	for _, p := range []string{pin, rev6} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s not pinned by the upgrade: %v", p, err)
		}
	}
	from, seen := udpUnconnected6(t, host, "[::1]:5353", "upgraded")
	if from.String() != "[::1]:5353" || seen != labGw6.String() {
		t.Errorf("unconnected IPv6 UDP after the upgrade: answer from %s, server saw %s", from, seen)
	}
	got, c := greeting6(t, host, "[::1]:8080", nil)
	c.Close()
	if got != labGw6.String() {
		t.Errorf("IPv6 TCP after the upgrade: server saw %s", got)
	}
}

// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cgroupAttach is link.AttachCgroup; tests may replace it.
var cgroupAttach = link.AttachCgroup

// CgroupID is the id the kernel gives the cgroup v2 folder at path (its
// inode), as a cgroup link reports it.
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// AttachCgroup attaches prog to the cgroup v2 folder cgroup at hook at
// (cgroup_skb ingress/egress or a cgroup sock_addr hook), as a BPF link.
//
// With pin "" the link is not pinned: it detaches when the returned link is
// closed. Otherwise a link pinned at pin that is on the same cgroup and
// hook is adopted: its program is replaced in place (BPF_LINK_UPDATE), so
// there is no moment without a program. A link pinned there on another
// cgroup or hook (the cgroup was made anew, or the setting changed) is
// detached, unpinned and replaced; a pin that is not a link is removed.
// A new link is pinned at pin, its folder created when missing.
//
// Closing the returned link keeps a pinned link attached; [DetachLink]
// takes it down.
func AttachCgroup(pin string, prog *ebpf.Program, cgroup string, at ebpf.AttachType) (_ link.Link, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("attaching %v to %s at %v: %w", prog, cgroup, at, err)
		}
	}()
	if prog == nil {
		return nil, errors.New("nil program")
	}
	if pin == "" {
		return cgroupAttach(link.CgroupOptions{Path: cgroup, Attach: at, Program: prog})
	}
	cgid, err := CgroupID(cgroup)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", cgroup, err)
	}
	l, _, err := attachOrAdopt(pin, prog, func(info *link.Info) bool {
		c := info.Cgroup()
		return info.Type == link.CgroupType && c != nil && c.CgroupId == cgid && ebpf.AttachType(c.AttachType) == at
	}, func() (link.Link, error) {
		return cgroupAttach(link.CgroupOptions{Path: cgroup, Attach: at, Program: prog})
	})
	return l, err
}

// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// tcxAttach is link.AttachTCX; tests replace it to simulate a kernel without
// tcx.
var tcxAttach = link.AttachTCX

func tcxAttachType(dir Direction) ebpf.AttachType {
	if dir == Egress {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

// attachTCX updates the pinned link in place or creates and pins a new one
// at the tail (attachOrAdopt). A pinned link that is stale (its interface
// was deleted or recreated: the link is defunct or on another ifindex) is
// detached and replaced.
func attachTCX(base string, prog *ebpf.Program, progName, ifname string, ifindex int, dir Direction) (Attachment, error) {
	pin := LinkPin(base, ifname, dir, progName)
	l, _, err := attachOrAdopt(pin, prog, func(info *link.Info) bool {
		// Ifindex is 0 once the device is gone (defunct link).
		tcx := info.TCX()
		return info.Type == link.TCXType && tcx != nil && int(tcx.Ifindex) == ifindex && ebpf.AttachType(tcx.AttachType) == tcxAttachType(dir)
	}, func() (link.Link, error) {
		return tcxAttach(link.TCXOptions{
			Interface: ifindex,
			Program:   prog,
			Attach:    tcxAttachType(dir),
			Anchor:    link.Tail(),
		})
	})
	if err != nil {
		removeEmptyDirs(base, ifname)
		return Attachment{}, err
	}
	defer l.Close() // pinned: stays attached
	return tcxAttachment(l, ifname, dir, progName)
}

func tcxAttachment(l link.Link, ifname string, dir Direction, progName string) (Attachment, error) {
	info, err := l.Info()
	if err != nil {
		return Attachment{}, fmt.Errorf("link info: %w", err)
	}
	att := Attachment{
		Interface: ifname,
		Direction: dir,
		Program:   progName,
		Mode:      ModeTCX,
		ProgramID: info.Program,
		LinkID:    info.ID,
	}
	if tcx := info.TCX(); tcx != nil {
		att.Ifindex = int(tcx.Ifindex)
	}
	if att.Ifindex == 0 {
		// Defunct link: the kernel no longer runs its program here.
		att.ProgramID = 0
	}
	return att, nil
}

// detachTCX detaches, unpins and closes the pinned link, if any.
func detachTCX(base, ifname string, dir Direction, progName string) error {
	pin := LinkPin(base, ifname, dir, progName)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	// Detach explicitly: unpin+close only detaches when nobody else holds
	// the link open. A defunct link reports ENOLINK, which is fine.
	if err := DetachLink(l); err != nil {
		return fmt.Errorf("link %s: %w", pin, err)
	}
	return nil
}

func listTCX(base, ifname string, dir Direction, progName string) (Attachment, error) {
	pin := LinkPin(base, ifname, dir, progName)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return Attachment{}, fmt.Errorf("loading pinned link %s: %w", pin, err)
	}
	defer l.Close()
	return tcxAttachment(l, ifname, dir, progName)
}

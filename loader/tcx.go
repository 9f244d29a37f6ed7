package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
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

// attachTCX updates the pinned link in place or creates and pins a new one.
func attachTCX(base string, prog *ebpf.Program, progName, ifname string, ifindex int, dir Direction) (Attachment, error) {
	pin := LinkPin(base, ifname, dir, progName)

	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		att, done, err := updateTCX(l, prog, pin, ifname, ifindex, dir, progName)
		if done || err != nil {
			_ = l.Close()
			return att, err
		}
		// Stale link (interface gone or recreated): take it down, as
		// every replaced link is (DetachLink), and attach afresh.
		if err := DetachLink(l); err != nil {
			return Attachment{}, fmt.Errorf("removing stale link %s: %w", pin, err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return Attachment{}, fmt.Errorf("loading pinned link %s: %w", pin, err)
	}

	l, err = tcxAttach(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    tcxAttachType(dir),
		Anchor:    link.Tail(),
	})
	if err != nil {
		return Attachment{}, err
	}
	// Closing a pinned link does not detach it; closing an unpinned one
	// does, which is what we want on the error paths below.
	defer l.Close()

	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		removeEmptyDirs(base, ifname)
		return Attachment{}, fmt.Errorf("creating %s: %w", filepath.Dir(pin), err)
	}
	if err := l.Pin(pin); err != nil {
		removeEmptyDirs(base, ifname)
		return Attachment{}, fmt.Errorf("pinning link at %s: %w", pin, err)
	}
	return tcxAttachment(l, ifname, dir, progName)
}

// updateTCX replaces the program of a pinned link. done is false (and err
// nil) when the link is stale and must be replaced by a new one.
func updateTCX(l link.Link, prog *ebpf.Program, pin, ifname string, ifindex int, dir Direction, progName string) (att Attachment, done bool, err error) {
	info, err := l.Info()
	if err != nil {
		return Attachment{}, false, fmt.Errorf("pinned link info: %w", err)
	}
	tcx := info.TCX()
	if info.Type != link.TCXType || tcx == nil {
		return Attachment{}, false, fmt.Errorf("pinned link at %s is a %v link, not tcx", pin, info.Type)
	}
	if int(tcx.Ifindex) != ifindex || ebpf.AttachType(tcx.AttachType) != tcxAttachType(dir) {
		// Ifindex is 0 once the device is gone (defunct link).
		return Attachment{}, false, nil
	}
	if err := l.Update(prog); err != nil {
		if errors.Is(err, unix.ENOLINK) {
			// Device went away between Info and Update.
			return Attachment{}, false, nil
		}
		return Attachment{}, false, fmt.Errorf("updating pinned link: %w", err)
	}
	att, err = tcxAttachment(l, ifname, dir, progName)
	return att, true, err
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

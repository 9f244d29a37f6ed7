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
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		if adopted, err := updateCgroup(l, prog, cgid, at); err != nil || adopted {
			if err != nil {
				l.Close()
				return nil, fmt.Errorf("updating the pinned link %s: %w", pin, err)
			}
			return l, nil
		}
		if err := DetachLink(l); err != nil {
			return nil, fmt.Errorf("replacing the stale link %s: %w", pin, err)
		}
	default:
		// Not a link (or unreadable, or a dangling symbolic link, which
		// reads as not there): out of the way.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return nil, fmt.Errorf("replacing %s: %w", pin, errors.Join(err, rerr))
		}
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(pin), err)
	}
	l, err = cgroupAttach(link.CgroupOptions{Path: cgroup, Attach: at, Program: prog})
	if err != nil {
		return nil, err
	}
	if err := l.Pin(pin); err != nil {
		// Not pinned yet: closing detaches.
		l.Close()
		return nil, fmt.Errorf("pinning the link at %s: %w", pin, err)
	}
	return l, nil
}

// updateCgroup replaces the program of l when l is a cgroup link on cgroup
// cgid at hook at; adopted is false (and err nil) when it is not.
func updateCgroup(l link.Link, prog *ebpf.Program, cgid uint64, at ebpf.AttachType) (adopted bool, err error) {
	info, err := l.Info()
	if err != nil {
		return false, nil
	}
	c := info.Cgroup()
	if info.Type != link.CgroupType || c == nil || c.CgroupId != cgid || ebpf.AttachType(c.AttachType) != at {
		return false, nil
	}
	if err := l.Update(prog); err != nil {
		return false, err
	}
	return true, nil
}

// DetachLink takes l down for good: it detaches it in the kernel (even if
// another process holds a file descriptor of it, or it is pinned
// elsewhere), removes its pin and closes it. Unpinning alone would leave
// the program attached for as long as anybody holds the link. A defunct
// link (its target gone) is not an error.
func DetachLink(l link.Link) error {
	var errs []error
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, link.ErrNotSupported) {
		errs = append(errs, fmt.Errorf("detaching: %w", err))
	}
	if err := l.Unpin(); err != nil {
		errs = append(errs, fmt.Errorf("unpinning: %w", err))
	}
	if err := l.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing: %w", err))
	}
	return errors.Join(errs...)
}

// DetachPin detaches the link pinned at pin, if any, and removes the pin
// (see [DetachLink]); a pin that is not a link is removed. Nothing at pin
// is not an error.
func DetachPin(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		if err := DetachLink(l); err != nil {
			return fmt.Errorf("link %s: %w", pin, err)
		}
		return nil
	}
	if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", pin, errors.Join(err, rerr))
	}
	return nil
}

// DetachTree detaches every link pinned under dir (see [DetachPin]) and
// removes dir with what else it holds (records). Removing the folder alone
// would unpin the links without detaching them: a process holding one
// would keep its program attached.
func DetachTree(dir string) error {
	var errs []error
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			// bpffs shows pins as regular files; records are symlinks.
			if err := DetachPin(p); err != nil {
				errs = append(errs, err)
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// Keep what could not be detached so that a retry finds it.
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

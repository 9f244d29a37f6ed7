// SPDX-License-Identifier: Apache-2.0

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

// attachOrAdopt is the attach-or-adopt of every link kind (tcx, cgroup_skb,
// cgroup sock_addr). A link pinned at pin for which same holds (the right
// kind, target and hook) is adopted: its program is replaced by prog in
// place (BPF_LINK_UPDATE), with no moment without a program. Any other link
// pinned there (a stale one: its target gone or another target) is taken
// down with [DetachLink], and anything else at pin is removed. Then attach
// makes a new link, which is pinned at pin, its folder created.
//
// adopted tells which happened. On error nothing new stays attached.
func attachOrAdopt(pin string, prog *ebpf.Program, same func(*link.Info) bool, attach func() (link.Link, error)) (_ link.Link, adopted bool, _ error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err == nil {
		if info, ierr := l.Info(); ierr == nil && same(info) {
			uerr := l.Update(prog)
			if uerr == nil {
				return l, true, nil
			}
			if !errors.Is(uerr, unix.ENOLINK) {
				l.Close()
				return nil, false, fmt.Errorf("updating the pinned link %s: %w", pin, uerr)
			}
			// The target went away between Info and Update: stale.
		}
		if err := DetachLink(l); err != nil {
			return nil, false, fmt.Errorf("replacing the stale link %s: %w", pin, err)
		}
	} else if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		// Not a link (or unreadable, or a dangling symbolic link, which
		// reads as not there): out of the way.
		return nil, false, fmt.Errorf("replacing %s: %w", pin, errors.Join(err, rerr))
	}
	if l, err = attach(); err != nil {
		return nil, false, err
	}
	// Folders only once attached, so that a refused attach leaves none.
	// Until it is pinned, closing the link detaches it.
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("creating %s: %w", filepath.Dir(pin), err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, false, fmt.Errorf("pinning the link at %s: %w", pin, err)
	}
	return l, false, nil
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

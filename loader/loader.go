// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// Direction is the TC hook: ingress or egress.
type Direction int

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// ParseDirection is the inverse of [Direction.String].
func ParseDirection(s string) (Direction, error) {
	switch s {
	case "ingress":
		return Ingress, nil
	case "egress":
		return Egress, nil
	}
	return 0, fmt.Errorf("unknown direction %q", s)
}

func (d Direction) valid() bool { return d == Ingress || d == Egress }

// Mode selects the attach mechanism. In an [Attachment] it is the mechanism
// actually in use: ModeTCX or ModeLegacy.
type Mode int

const (
	// ModeAuto uses tcx and falls back to clsact + cls_bpf when the kernel
	// does not support tcx.
	ModeAuto Mode = iota
	// ModeTCX uses tcx only.
	ModeTCX
	// ModeLegacy uses clsact + cls_bpf even when tcx is available.
	ModeLegacy
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeTCX:
		return "tcx"
	case ModeLegacy:
		return "legacy"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ErrInterfaceNotFound is wrapped by Attach when ifindex does not exist in
// the caller's network namespace.
var ErrInterfaceNotFound = errors.New("interface not found")

// Attachment describes one program attached by bpfnet.
type Attachment struct {
	Interface string
	// Ifindex is the interface index in the caller's namespace. List reports
	// 0 when the interface no longer exists (the attachment is stale: call
	// Forget).
	Ifindex   int
	Direction Direction
	// Program is the bpfnet program name (progName), not the kernel name.
	Program string
	// Mode is ModeTCX or ModeLegacy.
	Mode Mode
	// ProgramID is the program the kernel runs now; 0 if the attachment is
	// recorded but no longer present in the kernel.
	ProgramID ebpf.ProgramID
	// LinkID identifies the tcx link (0 for legacy attachments).
	LinkID link.ID
	// Priority and Handle locate the cls_bpf filter (0 for tcx).
	Priority uint16
	Handle   uint32
}

func (a Attachment) String() string {
	return fmt.Sprintf("%s %s %s (%s, ifindex %d, prog id %d)", a.Interface, a.Direction, a.Program, a.Mode, a.Ifindex, a.ProgramID)
}

// FilterName is the cls_bpf filter name used for prog.
func FilterName(prog string) string { return "bpfnet-" + prog }

const maxNameLen = 200

func validName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty %s name", what)
	case s == "." || s == "..":
		return fmt.Errorf("invalid %s name %q", what, s)
	case len(s) > maxNameLen:
		return fmt.Errorf("%s name %q too long", what, s)
	case strings.ContainsAny(s, "/\x00"):
		return fmt.Errorf("invalid %s name %q: contains '/' or NUL", what, s)
	}
	return nil
}

// mu serialises all operations of this process on bpffs and the TC hooks.
var mu sync.Mutex

// Attach attaches prog to interface ifindex (named ifname, in the calling
// thread's network namespace) in direction dir, under the name progName.
//
// With tcx, an existing pinned link at LinkPin is updated in place (atomic
// program swap); a stale pin (the interface was deleted or the link points
// elsewhere) is replaced. Otherwise a new link is appended at the tail and
// pinned. With the legacy mechanism the cls_bpf filter "bpfnet-<progName>" is
// created or replaced in place on a clsact qdisc and recorded.
//
// If the same progName is attached with the other mechanism, that attachment
// is removed once the new one is in place (make before break). Should that
// removal fail, the new attachment is returned together with the error.
//
// Errors wrap [ErrInterfaceNotFound] when ifindex does not exist, and
// [link.ErrNotSupported] when ModeTCX is asked of a kernel without tcx.
func Attach(base string, prog *ebpf.Program, progName string, ifname string, ifindex int, dir Direction, mode Mode) (att Attachment, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("attaching %s to %s %s: %w", progName, ifname, dir, err)
		}
	}()
	if base == "" {
		return Attachment{}, errors.New("empty base path")
	}
	if prog == nil {
		return Attachment{}, errors.New("nil program")
	}
	if err := validName("program", progName); err != nil {
		return Attachment{}, err
	}
	if err := validName("interface", ifname); err != nil {
		return Attachment{}, err
	}
	if !dir.valid() {
		return Attachment{}, fmt.Errorf("invalid direction %d", int(dir))
	}
	if ifindex <= 0 {
		return Attachment{}, fmt.Errorf("%w: invalid index %d", ErrInterfaceNotFound, ifindex)
	}

	mu.Lock()
	defer mu.Unlock()

	if err := checkInterface(ifname, ifindex); err != nil {
		return Attachment{}, err
	}

	switch mode {
	case ModeTCX, ModeAuto:
		att, err = attachTCX(base, prog, progName, ifname, ifindex, dir)
		if err == nil {
			// Drop a legacy filter for the same program, if any: the tcx
			// program runs first, so removing it leaves no gap.
			if derr := detachLegacy(base, ifname, dir, progName); derr != nil {
				return att, fmt.Errorf("attached with tcx but removing the previous cls_bpf filter: %w", derr)
			}
			return att, nil
		}
		if mode == ModeTCX || !errors.Is(err, link.ErrNotSupported) {
			return Attachment{}, err
		}
		// tcx unsupported: fall back.
	case ModeLegacy:
	default:
		return Attachment{}, fmt.Errorf("invalid mode %d", int(mode))
	}

	att, err = attachLegacy(base, prog, progName, ifname, ifindex, dir)
	if err != nil {
		return Attachment{}, err
	}
	// Drop a tcx link for the same program, if any. The filter is already
	// installed, so packets go on being processed.
	if derr := detachTCX(base, ifname, dir, progName); derr != nil {
		return att, fmt.Errorf("attached with cls_bpf but removing the previous tcx link: %w", derr)
	}
	return att, nil
}

// checkInterface verifies that ifindex exists and is called ifname.
func checkInterface(ifname string, ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return fmt.Errorf("%w: no interface with index %d in this network namespace", ErrInterfaceNotFound, ifindex)
		}
		return fmt.Errorf("looking up interface index %d: %w", ifindex, err)
	}
	if name := l.Attrs().Name; name != ifname {
		return fmt.Errorf("interface index %d is named %q, not %q", ifindex, name, ifname)
	}
	return nil
}

// Detach removes the attachment of progName on ifname/dir: the tcx link
// (detached, unpinned and closed) and/or the cls_bpf filter named
// "bpfnet-<progName>" (other filters and the clsact qdisc stay). Nothing
// attached is not an error.
func Detach(base, ifname string, dir Direction, progName string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("detaching %s from %s %s: %w", progName, ifname, dir, err)
		}
	}()
	if err := validName("program", progName); err != nil {
		return err
	}
	if err := validName("interface", ifname); err != nil {
		return err
	}
	if !dir.valid() {
		return fmt.Errorf("invalid direction %d", int(dir))
	}

	mu.Lock()
	defer mu.Unlock()

	err = errors.Join(detachTCX(base, ifname, dir, progName), detachLegacy(base, ifname, dir, progName))
	removeEmptyDirs(base, ifname)
	return err
}

// entry is one pin or record found under DevicesDir.
type entry struct {
	ifname string
	dir    Direction
	prog   string
	mode   Mode
}

// scan lists the pins and records under base. Unrecognised names are skipped.
func scan(base string) ([]entry, error) {
	devs, err := os.ReadDir(DevicesDir(base))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []entry
	for _, dev := range devs {
		if !dev.IsDir() {
			continue
		}
		ifname, err := UnescapeName(dev.Name())
		if err != nil || validName("interface", ifname) != nil {
			continue
		}
		for _, sub := range []struct {
			dir  string
			mode Mode
		}{{linksDir(base, ifname), ModeTCX}, {legacyDir(base, ifname), ModeLegacy}} {
			ents, err := os.ReadDir(sub.dir)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			for _, e := range ents {
				d, prog, err := parseEntryName(e.Name())
				if err != nil {
					continue
				}
				out = append(out, entry{ifname, d, prog, sub.mode})
			}
		}
	}
	return out, nil
}

// DetachAll detaches everything recorded under base (see Detach) and removes
// the device directories. It goes on after errors and returns them all.
func DetachAll(base string) error {
	mu.Lock()
	defer mu.Unlock()

	ents, err := scan(base)
	if err != nil {
		return fmt.Errorf("detaching all: %w", err)
	}
	var errs []error
	for _, e := range ents {
		var err error
		if e.mode == ModeTCX {
			err = detachTCX(base, e.ifname, e.dir, e.prog)
		} else {
			err = detachLegacy(base, e.ifname, e.dir, e.prog)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detaching %s from %s %s: %w", e.prog, e.ifname, e.dir, err))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(DevicesDir(base)); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", DevicesDir(base), err))
		}
	} else {
		// Keep what could not be detached so that a retry finds it.
		devs, _ := os.ReadDir(DevicesDir(base))
		for _, d := range devs {
			if ifname, err := UnescapeName(d.Name()); err == nil {
				removeEmptyDirs(base, ifname)
			}
		}
	}
	return errors.Join(errs...)
}

// List reports what bpfnet has attached, from the pins and records under
// base, with the program IDs the kernel runs now. Attachments whose
// interface has gone are reported with Ifindex 0 and ProgramID 0.
// Legacy attachments are looked up in the calling thread's namespace.
func List(base string) ([]Attachment, error) {
	mu.Lock()
	defer mu.Unlock()

	ents, err := scan(base)
	if err != nil {
		return nil, fmt.Errorf("listing attachments: %w", err)
	}
	out := make([]Attachment, 0, len(ents))
	for _, e := range ents {
		var a Attachment
		var err error
		if e.mode == ModeTCX {
			a, err = listTCX(base, e.ifname, e.dir, e.prog)
		} else {
			a, err = listLegacy(base, e.ifname, e.dir, e.prog)
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s on %s %s: %w", e.prog, e.ifname, e.dir, err)
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Interface != b.Interface {
			return a.Interface < b.Interface
		}
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Program != b.Program {
			return a.Program < b.Program
		}
		return a.Mode < b.Mode
	})
	return out, nil
}

// Forget removes the pins and records of ifname without touching the kernel.
// Call it when the interface has gone: the kernel already dropped its
// attachments. On a live interface use Detach instead: removing a link pin
// would detach the program, but a cls_bpf filter would stay, unrecorded.
func Forget(base, ifname string) error {
	if err := validName("interface", ifname); err != nil {
		return fmt.Errorf("forgetting %s: %w", ifname, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if err := os.RemoveAll(DeviceDir(base, ifname)); err != nil {
		return fmt.Errorf("forgetting %s: %w", ifname, err)
	}
	return nil
}

// removeEmptyDirs removes the device directory of ifname and its
// subdirectories if they are empty.
func removeEmptyDirs(base, ifname string) {
	_ = os.Remove(linksDir(base, ifname))
	_ = os.Remove(legacyDir(base, ifname))
	_ = os.Remove(DeviceDir(base, ifname))
}

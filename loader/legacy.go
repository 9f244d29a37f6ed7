// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// LegacyPriorityBase is the first tc filter priority used by bpfnet's
	// cls_bpf filters. Each program name on a hook takes the lowest free
	// priority in [LegacyPriorityBase, LegacyPriorityBase+LegacyPrioritySpan)
	// and keeps it, so replacing the program is done in place. The range
	// stays clear of 1 (commonly used by Cilium and by hand) and of 49152
	// and below (tc's automatic priorities count down from 0xc000).
	LegacyPriorityBase uint16 = 0x2000
	// LegacyPrioritySpan is the number of priorities reserved.
	LegacyPrioritySpan = 256
	// LegacyHandle is the cls_bpf filter handle used at each priority.
	LegacyHandle uint32 = 1
)

// legacyRecord is the content of a legacy record (the target of a symlink).
type legacyRecord struct {
	Ifindex  int    `json:"ifindex"`
	Priority uint16 `json:"priority"`
	Handle   uint32 `json:"handle"`
}

func tcParent(dir Direction) uint32 {
	if dir == Egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// linkRef is enough of a netlink.Link for the tc dump calls, which only use
// the index.
func linkRef(ifindex int) netlink.Link {
	return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
}

func readRecord(path string) (rec legacyRecord, ok bool, err error) {
	target, err := os.Readlink(path)
	if errors.Is(err, os.ErrNotExist) {
		return legacyRecord{}, false, nil
	}
	if err != nil {
		return legacyRecord{}, false, err
	}
	if err := json.Unmarshal([]byte(target), &rec); err != nil {
		return legacyRecord{}, false, fmt.Errorf("malformed record %s: %w", path, err)
	}
	return rec, true, nil
}

// writeRecord replaces the record at path atomically (symlink + rename).
func writeRecord(path string, rec legacyRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return WriteRecord(path, data)
}

// WriteRecord stores data at path in bpffs, which takes folders, pins and
// symbolic links but no regular files: as the target of a symbolic link,
// replaced atomically (a temporary link renamed over it), and not at all
// when it holds data already.
func WriteRecord(path string, data []byte) error {
	if old, err := os.Readlink(path); err == nil && old == string(data) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	// bpffs refuses '.' in names: no ".name.tmp". Scans skip this name as
	// it does not start with a direction.
	tmp := filepath.Join(dir, "tmp-"+filepath.Base(path))
	_ = os.Remove(tmp)
	if err := os.Symlink(string(data), tmp); err != nil {
		return fmt.Errorf("writing record %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing record %s: %w", path, err)
	}
	return nil
}

// retryDump repeats a netlink dump interrupted by a concurrent change.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 5 {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// tcQdisc reports whether ifindex has a clsact qdisc, or an old-style
// ingress qdisc (which only offers the ingress hook).
func tcQdisc(ifindex int) (clsact, ingress bool, err error) {
	qdiscs, err := retryDump(func() ([]netlink.Qdisc, error) { return netlink.QdiscList(linkRef(ifindex)) })
	if err != nil {
		return false, false, fmt.Errorf("listing qdiscs: %w", err)
	}
	for _, q := range qdiscs {
		switch q.(type) {
		case *netlink.Clsact:
			clsact = true
		case *netlink.Ingress:
			ingress = true
		}
	}
	return clsact, ingress, nil
}

// ensureClsact creates the clsact qdisc if missing. It never deletes or
// replaces a qdisc.
func ensureClsact(ifindex int, dir Direction) error {
	clsact, ingress, err := tcQdisc(ifindex)
	if err != nil {
		return err
	}
	switch {
	case clsact:
		return nil
	case ingress && dir == Ingress:
		// The ingress qdisc offers the same ingress hook (ffff:fff2).
		return nil
	case ingress:
		return errors.New("the interface has an ingress qdisc, not clsact: no egress hook (bpfnet does not replace qdiscs of others)")
	}
	err = netlink.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: ifindex,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}})
	if errors.Is(err, unix.EEXIST) {
		// Created concurrently by someone else.
		return nil
	}
	if err != nil {
		return fmt.Errorf("adding clsact qdisc: %w", err)
	}
	return nil
}

// listFilters dumps the filters on the clsact hook of dir; none when there
// is no clsact/ingress qdisc.
func listFilters(ifindex int, dir Direction) ([]netlink.Filter, error) {
	clsact, ingress, err := tcQdisc(ifindex)
	if err != nil {
		return nil, err
	}
	if !clsact && !(ingress && dir == Ingress) {
		return nil, nil
	}
	filters, err := retryDump(func() ([]netlink.Filter, error) { return netlink.FilterList(linkRef(ifindex), tcParent(dir)) })
	if err != nil {
		return nil, fmt.Errorf("listing %s filters: %w", dir, err)
	}
	return filters, nil
}

// findOurs returns our filter: named FilterName(prog), preferably at the
// recorded priority/handle.
func findOurs(filters []netlink.Filter, prog string, rec *legacyRecord) *netlink.BpfFilter {
	var found *netlink.BpfFilter
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Name != FilterName(prog) {
			continue
		}
		if rec != nil && bf.Priority == rec.Priority && bf.Handle == rec.Handle {
			return bf
		}
		if found == nil || bf.Priority < found.Priority {
			found = bf
		}
	}
	return found
}

func freePriority(filters []netlink.Filter) (uint16, error) {
	used := make(map[uint16]bool)
	for _, f := range filters {
		used[f.Attrs().Priority] = true
	}
	for i := range LegacyPrioritySpan {
		p := LegacyPriorityBase + uint16(i)
		if !used[p] {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free tc priority in %d..%d", LegacyPriorityBase, int(LegacyPriorityBase)+LegacyPrioritySpan-1)
}

func attachLegacy(base string, prog *ebpf.Program, progName, ifname string, ifindex int, dir Direction) (Attachment, error) {
	if err := ensureClsact(ifindex, dir); err != nil {
		return Attachment{}, err
	}
	filters, err := listFilters(ifindex, dir)
	if err != nil {
		return Attachment{}, err
	}

	recPath := LegacyRecordPath(base, ifname, dir, progName)
	var recp *legacyRecord
	if rec, ok, err := readRecord(recPath); err == nil && ok {
		recp = &rec
	}

	prio, handle := uint16(0), LegacyHandle
	if f := findOurs(filters, progName, recp); f != nil {
		// Replace in place.
		prio, handle = f.Priority, f.Handle
	} else if prio, err = freePriority(filters); err != nil {
		return Attachment{}, err
	}

	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    tcParent(dir),
			Handle:    handle,
			Priority:  prio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         FilterName(progName),
		DirectAction: true,
	}
	// RTM_NEWTFILTER with NLM_F_CREATE but not NLM_F_EXCL: cls_bpf swaps the
	// program of an existing filter atomically.
	if err := netlink.FilterReplace(filter); err != nil {
		return Attachment{}, fmt.Errorf("replacing cls_bpf filter (prio %d handle %#x): %w", prio, handle, err)
	}

	if err := writeRecord(recPath, legacyRecord{Ifindex: ifindex, Priority: prio, Handle: handle}); err != nil {
		// Without a record a restart would not find the filter: undo.
		_ = deleteFilter(ifindex, dir, filter)
		removeEmptyDirs(base, ifname)
		return Attachment{}, err
	}

	att := Attachment{
		Interface: ifname,
		Ifindex:   ifindex,
		Direction: dir,
		Program:   progName,
		Mode:      ModeLegacy,
		Priority:  prio,
		Handle:    handle,
	}
	filters, err = listFilters(ifindex, dir)
	if err != nil {
		return att, err
	}
	rec := legacyRecord{Ifindex: ifindex, Priority: prio, Handle: handle}
	if f := findOurs(filters, progName, &rec); f != nil {
		att.ProgramID = ebpf.ProgramID(f.Id)
	}
	return att, nil
}

func deleteFilter(ifindex int, dir Direction, f netlink.Filter) error {
	a := f.Attrs()
	err := netlink.FilterDel(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    tcParent(dir),
			Handle:    a.Handle,
			Priority:  a.Priority,
			Protocol:  a.Protocol,
		},
		Fd: -1,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// detachLegacy deletes the filters named FilterName(progName) on ifname/dir
// (found in the calling thread's namespace) and the record.
func detachLegacy(base, ifname string, dir Direction, progName string) error {
	l, err := netlink.LinkByName(ifname)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		// Interface gone: so is the filter.
	case err != nil:
		return fmt.Errorf("looking up %s: %w", ifname, err)
	default:
		ifindex := l.Attrs().Index
		filters, err := listFilters(ifindex, dir)
		if err != nil {
			return err
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || bf.Name != FilterName(progName) {
				continue
			}
			if err := deleteFilter(ifindex, dir, bf); err != nil {
				return fmt.Errorf("deleting cls_bpf filter %s (prio %d handle %#x): %w", bf.Name, bf.Priority, bf.Handle, err)
			}
		}
	}
	if err := os.Remove(LegacyRecordPath(base, ifname, dir, progName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing record: %w", err)
	}
	return nil
}

func listLegacy(base, ifname string, dir Direction, progName string) (Attachment, error) {
	att := Attachment{Interface: ifname, Direction: dir, Program: progName, Mode: ModeLegacy}
	rec, ok, err := readRecord(LegacyRecordPath(base, ifname, dir, progName))
	if err != nil {
		return att, err
	}
	var recp *legacyRecord
	if ok {
		att.Priority, att.Handle = rec.Priority, rec.Handle
		recp = &rec
	}
	l, err := netlink.LinkByName(ifname)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return att, nil
	}
	if err != nil {
		return att, fmt.Errorf("looking up %s: %w", ifname, err)
	}
	filters, err := listFilters(l.Attrs().Index, dir)
	if err != nil {
		return att, err
	}
	if f := findOurs(filters, progName, recp); f != nil {
		att.Ifindex = l.Attrs().Index
		att.ProgramID = ebpf.ProgramID(f.Id)
		att.Priority, att.Handle = f.Priority, f.Handle
	}
	return att, nil
}

// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// isPortType reports whether l is the kind of bridge port bpfnet manages:
// the host side of a container's veth pair.
func isPortType(l netlink.Link) bool { return l.Type() == "veth" }

// BridgePorts lists the veths enslaved to bridge, as seen through h (nil: the
// calling thread's namespace). For each, Attrs().Index is its index and
// Attrs().ParentIndex the ifindex of its peer (IFLA_LINK), which lives in the
// namespace Attrs().NetNsID refers to when that is set (-1 or 0 otherwise:
// same namespace).
func BridgePorts(h *netlink.Handle, bridge string) ([]netlink.Link, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("%s is a %s, not a bridge", bridge, br.Type())
	}
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var ports []netlink.Link
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && isPortType(l) {
			ports = append(ports, l)
		}
	}
	return ports, nil
}

// WatchLinks follows the veth ports of the named bridges in namespace h
// (netns.None(): the calling thread's namespace). It first reports the
// ports that exist already, then calls onAdd when a veth becomes a port of
// one of the bridges and onDel when it stops being one (released, deleted,
// or its bridge deleted). Callbacks run one at a time on the calling
// goroutine; either may be nil.
//
// It returns nil when ctx is done, or an error if the netlink subscription
// fails (for instance after a receive buffer overrun, ENOBUFS): the caller
// should then call it again, which reports the current ports again.
func WatchLinks(ctx context.Context, h netns.NsHandle, bridges []string, onAdd func(netlink.Link), onDel func(netlink.Link)) error {
	if onAdd == nil {
		onAdd = func(netlink.Link) {}
	}
	if onDel == nil {
		onDel = func(netlink.Link) {}
	}
	w := &watcher{
		bridges: make(map[string]bool, len(bridges)),
		masters: make(map[int]string),
		ports:   make(map[int]port),
		onAdd:   onAdd,
		onDel:   onDel,
	}
	for _, b := range bridges {
		w.bridges[b] = true
	}

	var (
		errMu   sync.Mutex
		lastErr error
	)
	resync := make(chan struct{}, 1)
	ch := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})

	// Both sockets must be opened in the same namespace: keep the thread.
	runtime.LockOSThread()
	nh, err := netlink.NewHandleAt(h)
	if err == nil {
		ns := h
		err = netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			Namespace:    &ns,
			ListExisting: true,
			ErrorCallback: func(err error) {
				if errors.Is(err, netlink.ErrDumpInterrupted) {
					select {
					case resync <- struct{}{}:
					default:
					}
					return
				}
				errMu.Lock()
				lastErr = err
				errMu.Unlock()
			},
		})
		if err != nil {
			nh.Close()
		}
	}
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("subscribing to link updates: %w", err)
	}
	w.nh = nh
	defer nh.Close()
	defer func() {
		// Closing done closes the socket; drain until the reader goroutine
		// closes ch so that it does not block forever on a send.
		close(done)
		for range ch {
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-ch:
			if !ok {
				errMu.Lock()
				err := lastErr
				errMu.Unlock()
				if ctx.Err() != nil {
					return nil
				}
				if err == nil {
					err = errors.New("subscription closed")
				}
				return fmt.Errorf("watching links: %w", err)
			}
			w.handle(u)
		case <-resync:
			if err := w.resync(); err != nil {
				return fmt.Errorf("watching links: %w", err)
			}
		}
	}
}

type port struct {
	master int
	link   netlink.Link
}

type watcher struct {
	nh      *netlink.Handle
	bridges map[string]bool // watched bridge names
	masters map[int]string  // ifindex -> bridge name ("" for non-bridges)
	ports   map[int]port    // current ports of watched bridges
	onAdd   func(netlink.Link)
	onDel   func(netlink.Link)
}

func (w *watcher) handle(u netlink.LinkUpdate) {
	if u.Link == nil || u.Family == unix.AF_BRIDGE {
		// AF_BRIDGE messages describe bridge port state; the kernel also
		// sends an AF_BRIDGE RTM_DELLINK when a port is released, which
		// does not mean the device is gone. The AF_UNSPEC messages that
		// follow carry what we need.
		return
	}
	attrs := u.Link.Attrs()
	switch u.Header.Type {
	case unix.RTM_NEWLINK:
		if u.Link.Type() == "bridge" {
			if old, ok := w.masters[attrs.Index]; ok && old != attrs.Name && (w.bridges[old] || w.bridges[attrs.Name]) {
				// A watched bridge was renamed: its ports change set.
				w.masters[attrs.Index] = attrs.Name
				_ = w.resync()
				return
			}
			w.masters[attrs.Index] = attrs.Name
		}
		w.update(u.Link)
	case unix.RTM_DELLINK:
		delete(w.masters, attrs.Index)
		if _, ok := w.ports[attrs.Index]; ok {
			delete(w.ports, attrs.Index)
			w.onDel(u.Link)
		}
	}
}

// masterName returns the bridge name of ifindex, "" if it is not a bridge.
func (w *watcher) masterName(ifindex int) string {
	if name, ok := w.masters[ifindex]; ok {
		return name
	}
	l, err := w.nh.LinkByIndex(ifindex)
	if err != nil {
		return ""
	}
	name := ""
	if l.Type() == "bridge" {
		name = l.Attrs().Name
	}
	w.masters[ifindex] = name
	return name
}

func (w *watcher) isPort(l netlink.Link) bool {
	m := l.Attrs().MasterIndex
	return isPortType(l) && m != 0 && w.bridges[w.masterName(m)]
}

func (w *watcher) update(l netlink.Link) {
	idx := l.Attrs().Index
	old, had := w.ports[idx]
	is := w.isPort(l)
	switch {
	case is && !had:
		w.ports[idx] = port{l.Attrs().MasterIndex, l}
		w.onAdd(l)
	case is && old.master != l.Attrs().MasterIndex:
		// Moved from one watched bridge to another.
		w.onDel(old.link)
		w.ports[idx] = port{l.Attrs().MasterIndex, l}
		w.onAdd(l)
	case is:
		w.ports[idx] = port{old.master, l}
	case had:
		delete(w.ports, idx)
		w.onDel(l)
	}
}

// resync compares the known ports with a fresh dump.
func (w *watcher) resync() error {
	links, err := retryDump(w.nh.LinkList)
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	clear(w.masters)
	for _, l := range links {
		if l.Type() == "bridge" {
			w.masters[l.Attrs().Index] = l.Attrs().Name
		}
	}
	seen := make(map[int]bool)
	for _, l := range links {
		seen[l.Attrs().Index] = true
		w.update(l)
	}
	for idx, p := range w.ports {
		if !seen[idx] {
			delete(w.ports, idx)
			w.onDel(p.link)
		}
	}
	return nil
}

// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/datapath"
)

// trustedOf are the trusted host interfaces of the networks of s, sorted,
// once each.
func trustedOf(s datapath.State) []string {
	var out []string
	for _, n := range s.Networks {
		out = append(out, n.Trusted()...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// watchTrusted follows the trusted host interfaces of the state applied,
// restarting when their names change: one that appears after the state
// named it (a VPN brought up later), or comes back as another interface,
// is trusted by the resync it pokes.
func (d *Daemon) watchTrusted(names []string) {
	key := strings.Join(names, ",")
	if key == d.trustedWatching {
		return
	}
	d.stopTrusted()
	d.trustedWatching = key
	if len(names) == 0 {
		d.stopTrusted = func() {}
		return
	}
	wctx, cancel := context.WithCancel(d.watchCtx)
	d.stopTrusted = cancel
	poke := func() {
		select {
		case d.linkPoke <- struct{}{}:
		default:
		}
	}
	go func() {
		for wctx.Err() == nil {
			if err := watchNamed(wctx, names, poke); err != nil && wctx.Err() == nil {
				d.log.Warn("watching trusted host interfaces", "error", err)
				time.Sleep(time.Second)
			}
		}
	}()
}

// watchNamed calls changed whenever a link named in names appears, goes
// away or gets another ifindex in the calling thread's namespace, until
// ctx is done (nil) or the subscription fails.
func watchNamed(ctx context.Context, names []string, changed func()) error {
	ch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	errc := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribing to link updates: %w", err)
	}
	defer func() {
		close(done)
		for range ch {
		}
	}()
	// What is there now, read after subscribing so that no change in
	// between is missed.
	known := map[string]int{}
	for _, name := range names {
		if l, err := netlink.LinkByName(name); err == nil {
			known[name] = l.Attrs().Index
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("watching links: %w", err)
		case u, ok := <-ch:
			if !ok {
				return errors.New("watching links: subscription closed")
			}
			if u.Link == nil || u.Family == unix.AF_BRIDGE || !slices.Contains(names, u.Link.Attrs().Name) {
				continue
			}
			name, idx := u.Link.Attrs().Name, u.Link.Attrs().Index
			switch u.Header.Type {
			case unix.RTM_NEWLINK:
				if known[name] != idx {
					known[name] = idx
					changed()
				}
			case unix.RTM_DELLINK:
				if _, ok := known[name]; ok {
					delete(known, name)
					changed()
				}
			}
		}
	}
}

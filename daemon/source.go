// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/docker"
)

// Source is where the wanted state comes from.
type Source interface {
	// State returns the state to apply now. The daemon calls it at start,
	// after each change Watch reports and on every link event of the
	// bridges, so it also reads the kernel for what changes without the
	// source saying so (a veth joining a bridge).
	State(ctx context.Context) (datapath.State, error)
	// Watch calls changed whenever the source has news, until ctx is
	// done; a source without events returns nil at once.
	Watch(ctx context.Context, changed func()) error
}

// Standalone is the state the flags of `bpfnet run` name: the bridges,
// read from the kernel each time, with the ports given.
type Standalone struct {
	Bridges    []string
	Uplinks    []string // nil: those of the default routes
	Masquerade []netip.Prefix
	Ports      []datapath.PortMapping
	// Containers names the endpoints of these addresses.
	Containers map[netip.Addr]string
	// ForeignSource are the addresses whose endpoints may send from
	// addresses not their own.
	ForeignSource []netip.Addr
	// GatewayModes are the networks' gateway modes, by bridge name
	// (--bridge NAME,gateway_mode=MODE); a bridge not listed is nat. An
	// isolated network is internal too: nothing in or out.
	GatewayModes map[string]datapath.GatewayMode
}

// State discovers the bridges and adds the names, exceptions and ports.
func (s *Standalone) State(context.Context) (datapath.State, error) {
	st, err := datapath.Discover(s.Bridges, s.Uplinks, s.Masquerade)
	if err != nil {
		return st, err
	}
	for i := range st.Endpoints {
		if n, ok := s.Containers[st.Endpoints[i].Addr]; ok {
			st.Endpoints[i].Container = n
		}
	}
	MarkForeignSources(&st, s.ForeignSource)
	for i := range st.Networks {
		n := &st.Networks[i]
		if m, ok := s.GatewayModes[n.Bridge]; ok {
			n.GatewayMode = m
			if m == datapath.GatewayIsolated {
				n.Internal, n.Masquerade = true, false
			}
		}
	}
	ports := append([]datapath.PortMapping(nil), s.Ports...)
	for i := range ports {
		for _, e := range st.Endpoints {
			if e.Addr == ports[i].ContainerIP {
				ports[i].Container = e.Container
			}
		}
	}
	st.Ports = ports
	return st, nil
}

// Watch returns at once: the flags do not change.
func (s *Standalone) Watch(context.Context, func()) error { return nil }

// MarkForeignSources sets Endpoint.AllowForeignSource on the endpoints of
// addrs and returns the addresses that name no endpoint of s.
func MarkForeignSources(s *datapath.State, addrs []netip.Addr) []netip.Addr {
	var unknown []netip.Addr
	for _, ip := range addrs {
		found := false
		for i := range s.Endpoints {
			if s.Endpoints[i].Addr == ip {
				s.Endpoints[i].AllowForeignSource, found = true, true
			}
		}
		if !found {
			unknown = append(unknown, ip)
		}
	}
	return unknown
}

// Docker is the state of a Docker Engine: its networks, containers and
// port bindings, as its last update gave them, with the uplinks and the
// veths Docker has not reported yet read from the kernel.
type Docker struct {
	Source  *docker.Source
	Uplinks []string // nil: those of the default routes

	mu   sync.Mutex
	last *datapath.State
}

// State is Docker's last word, read from the Engine API if there is none
// yet, completed with Complete.
func (d *Docker) State(ctx context.Context) (datapath.State, error) {
	d.mu.Lock()
	last := d.last
	d.mu.Unlock()
	if last == nil {
		s, err := d.Source.State(ctx)
		if err != nil {
			return s, err
		}
		d.mu.Lock()
		if d.last == nil {
			d.last = &s
		}
		last = d.last
		d.mu.Unlock()
	}
	return Complete(*last, d.Uplinks)
}

// Watch follows Docker's events until ctx is done.
func (d *Docker) Watch(ctx context.Context, changed func()) error {
	return d.Source.Watch(ctx, func(s datapath.State) {
		d.mu.Lock()
		d.last = &s
		d.mu.Unlock()
		changed()
	})
}

// Complete is a runtime's state with what the kernel knows: the uplinks
// (those of the default routes when none are given) and the veths on the
// bridges the runtime has not reported yet. It validates the result.
func Complete(s datapath.State, uplinks []string) (datapath.State, error) {
	s.Uplinks = nil
	if len(uplinks) == 0 {
		var err error
		if uplinks, err = datapath.DefaultUplinks(); err != nil {
			return s, err
		}
	}
	for _, u := range uplinks {
		s.Uplinks = append(s.Uplinks, datapath.Uplink{Name: u})
	}
	s.PendingVeths = nil
	if err := s.AddPendingVeths(); err != nil {
		return s, err
	}
	return s, s.Validate()
}

// Static is a state set by its owner, for tests and the benchmark: Set
// replaces it, and the next Reconcile applies it.
type Static struct {
	mu sync.Mutex
	s  *datapath.State
}

// Set replaces the state.
func (s *Static) Set(st datapath.State) {
	s.mu.Lock()
	s.s = &st
	s.mu.Unlock()
}

// State is the last state Set.
func (s *Static) State(context.Context) (datapath.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return datapath.State{}, fmt.Errorf("no state set")
	}
	return *s.s, nil
}

// Watch returns at once: Set is followed by Reconcile.
func (s *Static) Watch(context.Context, func()) error { return nil }

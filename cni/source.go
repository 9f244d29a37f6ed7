// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/daemon"
	"github.com/bpfnet/bpfnet/datapath"
)

// Source is the daemon's state with the CNI attachments: those kept in
// Store, added to Base's state (Docker's, when the agent follows Docker
// too; nil for none). It is a daemon.Source.
type Source struct {
	Store Store
	Base  daemon.Source
	// Uplinks are the interfaces towards the outside; nil: those of the
	// default routes.
	Uplinks []string

	mu       sync.Mutex
	watchers map[int]func()
	next     int
}

var _ daemon.Source = (*Source)(nil)

// State is Base's state with every attachment of the store that can be
// served. One that cannot (its veth is gone with its namespace, its port
// was taken meanwhile) is left out with a warning, so that one pod never
// keeps the others from being served; GC or DEL removes it.
func (s *Source) State(ctx context.Context) (datapath.State, error) {
	return s.state(ctx, nil)
}

// With is the state with a added (or replacing the attachment of its
// key), or the reason a cannot be served: its network disagrees with the
// one of the same name, its address is taken, or a host port it asks for
// is already mapped, by another pod or a Docker container. Nothing is
// written.
func (s *Source) With(ctx context.Context, a Attachment) (datapath.State, error) {
	return s.state(ctx, &a)
}

func (s *Source) state(ctx context.Context, extra *Attachment) (datapath.State, error) {
	var st datapath.State
	if s.Base != nil {
		var err error
		if st, err = s.Base.State(ctx); err != nil {
			return st, err
		}
	}
	atts, err := s.Store.List()
	if err != nil {
		return st, err
	}
	if extra != nil {
		atts = slices.DeleteFunc(atts, func(a Attachment) bool { return a.Key() == extra.Key() })
	}
	for _, a := range atts {
		if err := add(&st, a); err != nil {
			st.Warnings = append(st.Warnings, fmt.Sprintf("pod %s (%s): %v", a.Name(), a.Key(), err))
		}
	}
	st.Warnings = append(st.Warnings, st.SkipUnservablePorts()...)
	if extra != nil {
		if err := add(&st, *extra); err != nil {
			return st, err
		}
		if err := st.Validate(); err != nil {
			return st, err
		}
	}
	return daemon.Complete(st, s.Uplinks)
}

// add puts a's network, endpoint and ports into st, or changes nothing
// and says why not.
func add(st *datapath.State, a Attachment) error {
	if err := a.Check(); err != nil {
		return err
	}
	maps, err := a.Mappings()
	if err != nil {
		return err
	}
	veth, err := netlink.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", a.HostVeth, err)
	}
	br, err := netlink.LinkByName(a.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", a.Bridge, err)
	}
	if veth.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not a port of bridge %s", a.HostVeth, a.Bridge)
	}
	n := datapath.Network{Name: a.Network, Bridge: a.Bridge, Subnet: a.Subnet.Masked(), Gateway: a.Gateway, Masquerade: true}
	if a.Addr6.IsValid() {
		n.Subnet6, n.Gateway6 = a.Subnet6.Masked(), a.Gateway6
	}
	known := false
	for _, o := range st.Networks {
		switch {
		case o.Name == n.Name && o != n:
			return fmt.Errorf("network %s is %s on %s, this attachment says %s on %s", n.Name, subnets(o), o.Bridge, subnets(n), n.Bridge)
		case o.Name == n.Name:
			known = true
		case o.Bridge == n.Bridge || o.Subnet.Overlaps(n.Subnet) || (n.Subnet6.IsValid() && o.Subnet6.Overlaps(n.Subnet6)):
			return fmt.Errorf("network %s (%s on %s) overlaps network %s (%s on %s)", n.Name, subnets(n), n.Bridge, o.Name, subnets(o), o.Bridge)
		}
	}
	for _, e := range st.Endpoints {
		if e.Addr == a.Addr {
			return fmt.Errorf("address %s is %s's already", a.Addr, e.Container)
		}
		if a.Addr6.IsValid() && e.Addr6 == a.Addr6 {
			return fmt.Errorf("address %s is %s's already", a.Addr6, e.Container)
		}
		if e.HostVeth == a.HostVeth {
			return fmt.Errorf("host veth %s is %s's already", a.HostVeth, e.Container)
		}
	}
	ep := datapath.Endpoint{Container: a.Name(), ContainerID: a.ContainerID, Network: a.Network, Addr: a.Addr, Addr6: a.Addr6, HostVeth: a.HostVeth}
	if a.MAC != "" {
		if ep.MAC, err = net.ParseMAC(a.MAC); err != nil {
			return fmt.Errorf("mac %q: %w", a.MAC, err)
		}
	}
	if a.Pod != "" || a.Namespace != "" {
		ep.Labels = map[string]string{LabelPodName: a.Pod, LabelPodNamespace: a.Namespace}
	}
	if !known {
		st.Networks = append(st.Networks, n)
	}
	st.Endpoints = append(st.Endpoints, ep)
	st.Ports = append(st.Ports, maps...)
	return nil
}

// subnets are n's prefixes, as an error shows them.
func subnets(n datapath.Network) string {
	if n.Subnet6.IsValid() {
		return n.Subnet.String() + " and " + n.Subnet6.String()
	}
	return n.Subnet.String()
}

// Watch follows Base, and calls changed after each change of the
// attachments that Notify reports, until ctx is done. The server applies
// each change itself before it answers; the daemon's loop, told, keeps
// its watch of the bridges' links (a pod's bridge appears with its first
// pod) and the status record in step.
func (s *Source) Watch(ctx context.Context, changed func()) error {
	s.mu.Lock()
	if s.watchers == nil {
		s.watchers = map[int]func(){}
	}
	id := s.next
	s.next++
	s.watchers[id] = changed
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, id)
		s.mu.Unlock()
	}()
	if s.Base != nil {
		return s.Base.Watch(ctx, changed)
	}
	<-ctx.Done()
	return nil
}

// Notify tells the watchers that the attachments changed.
func (s *Source) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fn := range s.watchers {
		fn()
	}
}

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// PortPublisher is a Datapath that can publish and unpublish ports one at
// a time, without being handed the whole state: the cost is that of the
// ports given, whatever is published already. Docker publishes a
// container's ports this way on each event.
type PortPublisher interface {
	PublishPorts(ms ...PortMapping) error
	UnpublishPorts(ms ...PortMapping) error
}

var _ PortPublisher = (*EBPF)(nil)

// ErrNotApplied is returned by PublishPorts and UnpublishPorts before the
// first Apply: they change a state, so there must be one.
var ErrNotApplied = errors.New("the datapath has no state yet: Apply first")

func (d *EBPF) portKey(m PortMapping) bpfPortKey {
	k := bpfPortKey{Port: be16(m.HostPort), Proto: uint8(m.Proto)}
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		k.Addr = be32(m.HostIP)
	}
	return k
}

// portKey6 is portKey's twin for an IPv6 mapping (mappingIs6).
func (d *EBPF) portKey6(m PortMapping) bpfPort6Key {
	k := bpfPort6Key{Port: be16(m.HostPort), Proto: uint8(m.Proto)}
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		k.Addr = be128(m.HostIP)
	}
	return k
}

// mappingIs6 tells whether m is a binding of IPv6: its host address, or
// without one its container's, is IPv6 (as bindingOf reads it).
func mappingIs6(m PortMapping) bool {
	if m.HostIP.IsValid() {
		return m.HostIP.Is6()
	}
	return m.ContainerIP.Is6()
}

func checkMapping(m PortMapping) error {
	if m.Proto != TCP && m.Proto != UDP {
		return fmt.Errorf("port %s: protocol must be tcp or udp", m)
	}
	if m.HostPort == 0 || m.ContainerPort == 0 {
		return fmt.Errorf("port %s: port 0 cannot be published", m)
	}
	c := m.ContainerIP
	if !c.IsValid() || c.Is4In6() || c.Zone() != "" || (m.HostIP.IsValid() && (m.HostIP.Is4In6() || m.HostIP.Zone() != "" || m.HostIP.Is6() != c.Is6())) {
		return fmt.Errorf("port %s: the host and container addresses must be both IPv4 or both IPv6", m)
	}
	return nil
}

// checkPublish holds a mapping published next to the applied state, and
// next to the others of its call, to Validate's rules: its container is in
// one of the networks, and a host port on every address and one on a
// specific address never share a protocol and port (the same binding is
// replaced, not a collision). It costs no walk of the published ports.
func (d *EBPF) checkPublish(m PortMapping, others map[bpfPortKey]bpfPortTarget) error {
	if err := checkMapping(m); err != nil {
		return err
	}
	if mappingIs6(m) {
		return errors.New("internal: an IPv6 mapping given to checkPublish")
	}
	in := false
	for k, n := range d.applied.nets {
		if netip.PrefixFrom(addrFrom(k.Addr), int(k.Prefixlen)).Contains(m.ContainerIP) {
			if n.Flags&netFRouted != 0 {
				// A routed network maps nothing on the host; its
				// container ports come with the state (Apply).
				return fmt.Errorf("port %s: the network of %s is routed: no host port is published there", m, m.ContainerIP)
			}
			in = true
			break
		}
	}
	if !in {
		return fmt.Errorf("port %s: container address %s is in none of the networks", m, m.ContainerIP)
	}
	k := d.portKey(m)
	wild := bpfPortKey{Port: k.Port, Proto: k.Proto}
	collides := false
	if k.Addr != 0 {
		_, a := d.applied.ports[wild]
		_, b := others[wild]
		collides = a || b
	} else {
		collides = d.specificCounts()[wild] > 0
		for o := range others {
			collides = collides || (o.Addr != 0 && o.Port == k.Port && o.Proto == k.Proto)
		}
	}
	if collides {
		return fmt.Errorf("port %s: %w on another address (a port on 0.0.0.0 takes it on every address)", m, ErrPortTaken)
	}
	return nil
}

// checkPublish6 is checkPublish's twin for an IPv6 mapping. A mapping
// with an allowlist is refused: the IPv6 datapath judges no allowlist yet,
// and only Apply knows how such a mapping is closed to IPv6 (the daemon
// applies the whole state on this error).
func (d *EBPF) checkPublish6(m PortMapping, others map[bpfPort6Key]bpfPort6Target) error {
	if err := checkMapping(m); err != nil {
		return err
	}
	if len(m.Allow) > 0 {
		return fmt.Errorf("port %s: an IPv6 mapping with an allowlist is published with the whole state only", m)
	}
	in := false
	for k, n := range d.applied.nets6 {
		if netip.PrefixFrom(addr6From(k.Addr), int(k.Prefixlen)).Contains(m.ContainerIP) {
			if n.Flags&netFRouted != 0 {
				return fmt.Errorf("port %s: the IPv6 network of %s is routed: no host port is published there", m, m.ContainerIP)
			}
			in = true
			break
		}
	}
	if !in {
		return fmt.Errorf("port %s: container address %s is in none of the networks' IPv6 subnets", m, m.ContainerIP)
	}
	k := d.portKey6(m)
	wild := bpfPort6Key{Port: k.Port, Proto: k.Proto}
	collides := false
	if k.Addr != wild.Addr {
		_, a := d.applied.ports6[wild]
		_, b := others[wild]
		collides = a || b
	} else {
		collides = d.specificCounts6()[wild] > 0
		for o := range others {
			collides = collides || (o.Addr != wild.Addr && o.Port == k.Port && o.Proto == k.Proto)
		}
	}
	if collides {
		return fmt.Errorf("port %s: %w on another address (a port on [::] takes it on every IPv6 address)", m, ErrPortTaken)
	}
	return nil
}

// specificCounts6 is specificCounts' twin for the IPv6 bindings.
func (d *EBPF) specificCounts6() map[bpfPort6Key]int {
	if d.applied.specific6 == nil {
		d.applied.specific6 = map[bpfPort6Key]int{}
		for k := range d.applied.ports6 {
			if k.Addr != ([4]uint32{}) {
				d.applied.specific6[bpfPort6Key{Port: k.Port, Proto: k.Proto}]++
			}
		}
	}
	return d.applied.specific6
}

// flushBackends6 is flushBackends' twin: it drops the IPv6 flows
// translated to any of the given container addresses and ports.
func (d *EBPF) flushBackends6(gone []bpfPort6Target) (int, error) {
	type be struct {
		addr [4]uint32
		port uint16
	}
	set := map[be]bool{}
	for _, g := range gone {
		set[be{g.Addr, g.Port}] = true
	}
	return d.deleteCT6(func(k bpfCt6Key, v bpfCt6Entry) bool {
		if v.Kind != bpfCtKind(KindDNAT) && v.Kind != bpfCtKind(KindHairpin) {
			return false
		}
		if v.Flags&ctReply != 0 {
			return set[be{k.Saddr, k.Sport}]
		}
		return set[be{v.Ndaddr, v.Ndport}]
	})
}

// specificCounts counts, by protocol and port, the published bindings to a
// specific host address; built when first needed after an Apply, then
// kept up to date by PublishPorts and UnpublishPorts.
func (d *EBPF) specificCounts() map[bpfPortKey]int {
	if d.applied.specific == nil {
		d.applied.specific = map[bpfPortKey]int{}
		for k := range d.applied.ports {
			if k.Addr != 0 {
				d.applied.specific[bpfPortKey{Port: k.Port, Proto: k.Proto}]++
			}
		}
	}
	return d.applied.specific
}

// PublishPorts publishes ms next to what is published; a mapping of a host
// port that is published already replaces it, and the flows of the
// replaced container are dropped. All of ms or none is written.
func (d *EBPF) PublishPorts(ms ...PortMapping) error {
	if d.applied == nil {
		return ErrNotApplied
	}
	want := map[bpfPortKey]bpfPortTarget{}
	want6 := map[bpfPort6Key]bpfPort6Target{}
	for _, m := range ms {
		if mappingIs6(m) {
			if err := d.checkPublish6(m, want6); err != nil {
				return err
			}
			k := d.portKey6(m)
			if _, dup := want6[k]; dup {
				return fmt.Errorf("port %s: given twice", m)
			}
			want6[k] = bpfPort6Target{Addr: be128(m.ContainerIP), Port: be16(m.ContainerPort)}
			continue
		}
		if err := d.checkPublish(m, want); err != nil {
			return err
		}
		k := d.portKey(m)
		if _, dup := want[k]; dup {
			return fmt.Errorf("port %s: given twice", m)
		}
		want[k] = bpfPortTarget{Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort)}
	}
	// Lists new to the trie are written in full before a mapping names
	// them (allow.go).
	lists := d.applied.allow
	var added []uint32
	forget := func() {
		for _, id := range added {
			delete(lists.ids, allowKeyOf(lists.prefixes[id]))
			delete(lists.prefixes, id)
		}
	}
	for _, m := range ms {
		if len(m.Allow) == 0 || mappingIs6(m) {
			continue
		}
		k := d.portKey(m)
		id, isNew := lists.id(canonAllow(m.Allow), lists)
		if isNew {
			added = append(added, id)
		}
		t := want[k]
		t.AllowId = id
		want[k] = t
	}
	var undo undoLog
	for _, id := range added {
		if err := d.writeAllow(&undo, id, lists.prefixes[id]); err != nil {
			forget()
			return errors.Join(fmt.Errorf("writing allowlists: %w", err), undo.run())
		}
	}
	have := map[bpfPortKey]bpfPortTarget{}
	var gone []bpfPortTarget
	for k, v := range want {
		if old, ok := d.applied.ports[k]; ok {
			have[k] = old
			if (old.Addr != v.Addr || old.Port != v.Port) && d.hadConnections(k) {
				gone = append(gone, old)
			}
		}
	}
	if err := syncMapPart(&undo, d.objs.Published, have, want); err != nil {
		forget()
		return errors.Join(fmt.Errorf("publishing ports: %w", err), undo.run())
	}
	// The IPv6 bindings: port_conns counts no IPv6 port, so a replaced
	// one's flows are always looked for.
	have6 := map[bpfPort6Key]bpfPort6Target{}
	var gone6 []bpfPort6Target
	for k, v := range want6 {
		if old, ok := d.applied.ports6[k]; ok {
			have6[k] = old
			if old.Addr != v.Addr || old.Port != v.Port {
				gone6 = append(gone6, old)
			}
		}
	}
	if err := syncMapPart(&undo, d.objs.Published6, have6, want6); err != nil {
		forget()
		return errors.Join(fmt.Errorf("publishing IPv6 ports: %w", err), undo.run())
	}
	counts := d.specificCounts()
	for k, v := range want {
		if _, had := d.applied.ports[k]; !had && k.Addr != 0 {
			counts[bpfPortKey{Port: k.Port, Proto: k.Proto}]++
		}
		d.applied.ports[k] = v
		if v.AllowId != 0 {
			lists.refs[v.AllowId]++
		}
	}
	counts6 := d.specificCounts6()
	for k, v := range want6 {
		if _, had := d.applied.ports6[k]; !had && k.Addr != ([4]uint32{}) {
			counts6[bpfPort6Key{Port: k.Port, Proto: k.Proto}]++
		}
		d.applied.ports6[k] = v
	}
	for _, old := range have {
		if err := d.releaseAllow(old.AllowId); err != nil {
			return err
		}
	}
	if len(gone) > 0 {
		if _, err := d.flushBackends(gone); err != nil {
			return err
		}
	}
	if len(gone6) > 0 {
		if _, err := d.flushBackends6(gone6); err != nil {
			return err
		}
	}
	return nil
}

// UnpublishPorts removes the host bindings of ms (their container side is
// not looked at) and drops their flows. Unknown bindings are ignored.
func (d *EBPF) UnpublishPorts(ms ...PortMapping) error {
	if d.applied == nil {
		return ErrNotApplied
	}
	var undo undoLog
	var gone []bpfPortTarget
	var keys []bpfPortKey
	var released []uint32
	var gone6 []bpfPort6Target
	var keys6 []bpfPort6Key
	for _, m := range ms {
		if mappingIs6(m) {
			k := d.portKey6(m)
			old, ok := d.applied.ports6[k]
			if !ok {
				continue
			}
			if err := ignoreMissing(d.objs.Published6.Delete(k)); err != nil {
				return errors.Join(fmt.Errorf("unpublishing %s: %w", m, err), undo.run())
			}
			undo = append(undo, func() error { return d.objs.Published6.Put(k, old) })
			gone6 = append(gone6, old)
			keys6 = append(keys6, k)
			continue
		}
		k := d.portKey(m)
		old, ok := d.applied.ports[k]
		if !ok {
			continue
		}
		if err := ignoreMissing(d.objs.Published.Delete(k)); err != nil {
			return errors.Join(fmt.Errorf("unpublishing %s: %w", m, err), undo.run())
		}
		undo = append(undo, func() error { return d.objs.Published.Put(k, old) })
		if d.hadConnections(k) {
			gone = append(gone, old)
		}
		keys = append(keys, k)
		released = append(released, old.AllowId)
	}
	for _, id := range released {
		if err := d.releaseAllow(id); err != nil {
			return err
		}
	}
	counts := d.specificCounts()
	for _, k := range keys {
		delete(d.applied.ports, k)
		if k.Addr != 0 {
			counts[bpfPortKey{Port: k.Port, Proto: k.Proto}]--
		}
		if err := d.deletePortCounters(k); err != nil {
			return err
		}
	}
	counts6 := d.specificCounts6()
	for _, k := range keys6 {
		delete(d.applied.ports6, k)
		if k.Addr != ([4]uint32{}) {
			counts6[bpfPort6Key{Port: k.Port, Proto: k.Proto}]--
		}
	}
	if len(gone) > 0 {
		if _, err := d.flushBackends(gone); err != nil {
			return err
		}
	}
	if len(gone6) > 0 {
		if _, err := d.flushBackends6(gone6); err != nil {
			return err
		}
	}
	return nil
}

// syncMapPart writes want over the keys of have (a part of the map), with
// undo entries; keys of have missing from want are left alone.
func syncMapPart[K comparable, V comparable](undo *undoLog, m interface {
	Put(key, value any) error
	Delete(key any) error
}, have, want map[K]V) error {
	for k, v := range want {
		old, existed := have[k]
		if existed && old == v {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return err
		}
		if existed {
			*undo = append(*undo, func() error { return m.Put(k, old) })
		} else {
			*undo = append(*undo, func() error { return ignoreMissing(m.Delete(k)) })
		}
	}
	return nil
}

// hadConnections tells whether a published binding ever translated a flow:
// a binding that never did has no flows to drop, which spares a walk of
// the conntrack table. When in doubt, it says yes.
func (d *EBPF) hadConnections(k bpfPortKey) bool {
	var counts []uint64
	if err := d.objs.PortConns.Lookup(k, &counts); err != nil {
		return !errors.Is(err, ebpf.ErrKeyNotExist)
	}
	for _, n := range counts {
		if n > 0 {
			return true
		}
	}
	return false
}

// hostBinding is what identifies a published port on the host side: a
// second mapping of one binding replaces the first.
type hostBinding struct {
	proto Proto
	ip    netip.Addr
	port  uint16
}

func bindingOf(m PortMapping) hostBinding {
	ip := m.HostIP
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
		if m.ContainerIP.Is6() && !m.ContainerIP.Is4In6() {
			ip = netip.IPv6Unspecified()
		}
	}
	return hostBinding{m.Proto, ip, m.HostPort}
}

// WithPorts is ports with ms published: a mapping of a host binding that
// ports holds already replaces it. A binding given twice in ms is an
// error. ports is not changed.
func WithPorts(ports []PortMapping, ms ...PortMapping) ([]PortMapping, error) {
	seen := make(map[hostBinding]bool, len(ms))
	for _, m := range ms {
		b := bindingOf(m)
		if seen[b] {
			return nil, fmt.Errorf("port %s: given twice", m)
		}
		seen[b] = true
	}
	kept := slices.DeleteFunc(slices.Clone(ports), func(o PortMapping) bool { return seen[bindingOf(o)] })
	return append(kept, ms...), nil
}

// WithoutPorts is ports without the host bindings of ms (their container
// side is not looked at); unknown bindings are ignored. ports is not
// changed.
func WithoutPorts(ports []PortMapping, ms ...PortMapping) []PortMapping {
	gone := make(map[hostBinding]bool, len(ms))
	for _, m := range ms {
		gone[bindingOf(m)] = true
	}
	return slices.DeleteFunc(slices.Clone(ports), func(o PortMapping) bool { return gone[bindingOf(o)] })
}

// PublishedState is s with ms published as WithPorts does, validated: the
// state that a PortPublisher which renders whole states moves to. s is not
// changed.
func PublishedState(s State, ms ...PortMapping) (State, error) {
	ports, err := WithPorts(s.Ports, ms...)
	if err != nil {
		return State{}, err
	}
	s.Ports = ports
	return s, s.Validate()
}

// UnpublishedState is s without the host bindings of ms, as WithoutPorts
// does, validated. s is not changed.
func UnpublishedState(s State, ms ...PortMapping) (State, error) {
	s.Ports = WithoutPorts(s.Ports, ms...)
	return s, s.Validate()
}

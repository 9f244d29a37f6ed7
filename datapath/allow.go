// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
)

// allowLists are the source allowlists of published ports as the
// port_allow and port_allow6 tries hold them (bpf/lib/allow.h), a list's
// IPv4 prefixes in the first, its IPv6 ones in the second, under one id
// (a list without prefixes of a family lets no source of it in): one list per distinct
// content, shared by the mappings that have it, under an id that
// bpfPortTarget.AllowId names. A changed list gets a new id, written in
// full before a mapping names it and deleted after none does, so a new
// flow meets either the old list or the new one, never a part of one.
type allowLists struct {
	ids      map[string]uint32 // canonical list (allowKeyOf) -> id
	prefixes map[uint32][]netip.Prefix
	refs     map[uint32]int // mappings naming each id
}

func newAllowLists() *allowLists {
	return &allowLists{ids: map[string]uint32{}, prefixes: map[uint32][]netip.Prefix{}, refs: map[uint32]int{}}
}

func allowKeyOf(ps []netip.Prefix) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String())
		b.WriteByte(' ')
	}
	return b.String()
}

// entries are the tries' entries of every list: port_allow's, then
// port_allow6's.
func (l *allowLists) entries() (map[bpfAllowKey]uint32, map[bpfAllow6Key]uint32) {
	v4, v6 := map[bpfAllowKey]uint32{}, map[bpfAllow6Key]uint32{}
	for id, ps := range l.prefixes {
		maps.Copy(v4, allowEntries(id, ps))
		maps.Copy(v6, allowEntries6(id, ps))
	}
	return v4, v6
}

// allowEntries are the port_allow entries of list id: its IPv4 prefixes.
func allowEntries(id uint32, ps []netip.Prefix) map[bpfAllowKey]uint32 {
	out := make(map[bpfAllowKey]uint32, len(ps))
	for _, p := range ps {
		if p.Addr().Is4() {
			out[bpfAllowKey{Prefixlen: 32 + uint32(p.Bits()), List: id, Addr: be32(p.Addr())}] = 1
		}
	}
	return out
}

// allowEntries6 are the port_allow6 entries of list id: its IPv6 prefixes.
func allowEntries6(id uint32, ps []netip.Prefix) map[bpfAllow6Key]uint32 {
	out := map[bpfAllow6Key]uint32{}
	for _, p := range ps {
		if !p.Addr().Is4() {
			out[bpfAllow6Key{Prefixlen: 32 + uint32(p.Bits()), List: id, Addr: be128(p.Addr())}] = 1
		}
	}
	return out
}

// id gives the id of list ps (canonical), making one when it is new; it
// never reuses an id of taken, the lists still in the trie. added says
// whether the list is new, and so has entries to write.
func (l *allowLists) id(ps []netip.Prefix, taken *allowLists) (id uint32, added bool) {
	key := allowKeyOf(ps)
	if id, ok := l.ids[key]; ok {
		return id, false
	}
	if id, ok := taken.ids[key]; ok {
		l.ids[key], l.prefixes[id] = id, ps
		return id, true
	}
	for id = 1; ; id++ {
		_, a := l.prefixes[id]
		_, b := taken.prefixes[id]
		if !a && !b {
			break
		}
	}
	l.ids[key], l.prefixes[id] = id, ps
	return id, true
}

// readAllowLists reads the lists a previous process wrote, from the IPv4
// trie m and the IPv6 one m6 (nil when pinned by a version without it).
func readAllowLists(m, m6 *ebpf.Map) (*allowLists, error) {
	l := newAllowLists()
	if m == nil {
		return l, nil
	}
	var k bpfAllowKey
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if k.Prefixlen < 32 || k.Prefixlen > 64 {
			continue
		}
		l.prefixes[k.List] = append(l.prefixes[k.List], netip.PrefixFrom(addrFrom(k.Addr), int(k.Prefixlen-32)))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading allowlists: %w", err)
	}
	if m6 != nil {
		var k6 bpfAllow6Key
		it6 := m6.Iterate()
		for it6.Next(&k6, &v) {
			if k6.Prefixlen < 32 || k6.Prefixlen > 32+128 {
				continue
			}
			l.prefixes[k6.List] = append(l.prefixes[k6.List], netip.PrefixFrom(addr6From(k6.Addr), int(k6.Prefixlen-32)))
		}
		if err := it6.Err(); err != nil {
			return nil, fmt.Errorf("reading IPv6 allowlists: %w", err)
		}
	}
	for id, ps := range l.prefixes {
		ps = canonAllow(ps)
		l.prefixes[id] = ps
		l.ids[allowKeyOf(ps)] = id
	}
	return l, nil
}

// assignAllow gives the mappings of s their list ids: those of nat
// networks in ports and ports6 (keyed as resolve keys them), those of
// routed networks in routed and routed6 (see routedAllow). It returns the lists they
// use, reusing the ids of prev for lists it has.
func (d *EBPF) assignAllow(prev *allowLists, s State, ports, routed map[bpfPortKey]bpfPortTarget, ports6, routed6 map[bpfPort6Key]bpfPort6Target) *allowLists {
	l := newAllowLists()
	// name gives a mapping list ps, counting the use.
	name := func(ps []netip.Prefix) uint32 {
		id, _ := l.id(ps, prev)
		l.refs[id]++
		return id
	}
	for _, m := range s.Ports {
		if len(m.Allow) == 0 || isRouted(s.Networks, m) {
			continue
		}
		if is6(m.ContainerIP) || m.IsNAT64() {
			if t, ok := ports6[port6Key(m)]; ok {
				t.AllowId = name(canonAllow(m.Allow))
				ports6[port6Key(m)] = t
			}
			continue
		}
		if t, ok := ports[d.portKey(m)]; ok {
			t.AllowId = name(canonAllow(m.Allow))
			ports[d.portKey(m)] = t
		}
	}
	for k, ps := range routedAllow(s) {
		if t, ok := routed[k]; ok && len(ps) > 0 {
			t.AllowId = name(ps)
			routed[k] = t
		}
	}
	for k, ps := range routedAllow6(s) {
		if t, ok := routed6[k]; ok && len(ps) > 0 {
			t.AllowId = name(ps)
			routed6[k] = t
		}
	}
	return l
}

// isRouted tells whether m publishes a container port of a routed network
// (of its family's gateway mode).
func isRouted(nets []Network, m PortMapping) bool {
	n, ok := networkOf(nets, m.ContainerIP)
	if is6(m.ContainerIP) {
		return ok && n.GatewayModeIPv6 == GatewayRouted
	}
	return ok && n.GatewayMode == GatewayRouted
}

// is6 tells whether a is an IPv6 address (not an IPv4-mapped one).
func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

// port6Key is the published6 key of m, an IPv6 mapping of a nat network.
func port6Key(m PortMapping) bpfPort6Key {
	k := bpfPort6Key{Port: be16(m.HostPort), Proto: uint8(m.Proto)}
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		k.Addr = be128(m.HostIP)
	}
	return k
}

// routedAllow gives the allowlist of each published container port of a
// routed network (keyed as routed_ports is: container address, port and
// protocol), nil for one open to every source.
//
// On a routed network the host port of a binding is ignored: every
// binding of a container port opens that same port, at the container's
// address. Its list is therefore the union of the bindings' lists, and a
// binding without a list opens it to all: a source may open a flow
// exactly when one of the bindings would let it in, which is what the
// bindings give on a nat network, where each host port leads to the
// container port behind its own list. (Docker 28 opens the container port
// if any binding publishes it; the intersection would close a port to a
// source a binding names.)
func routedAllow(s State) map[bpfPortKey][]netip.Prefix {
	return routedAllowOf(s, false, func(m PortMapping) bpfPortKey {
		return bpfPortKey{Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}
	})
}

// routedAllow6 is routedAllow for the IPv6 container ports of routed IPv6
// networks, keyed as routed_ports6 is.
func routedAllow6(s State) map[bpfPort6Key][]netip.Prefix {
	return routedAllowOf(s, true, func(m PortMapping) bpfPort6Key {
		return bpfPort6Key{Addr: be128(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}
	})
}

// routedAllowOf is routedAllow for the mappings of one family, keyed by key.
func routedAllowOf[K comparable](s State, v6 bool, key func(PortMapping) K) map[K][]netip.Prefix {
	out := map[K][]netip.Prefix{}
	open := map[K]bool{}
	for _, m := range s.Ports {
		if !isRouted(s.Networks, m) || is6(m.ContainerIP) != v6 {
			continue
		}
		k := key(m)
		if len(m.Allow) == 0 {
			open[k] = true
		}
		out[k] = append(out[k], m.Allow...)
	}
	for k, ps := range out {
		if open[k] {
			out[k] = nil
		} else {
			out[k] = canonAllow(ps)
		}
	}
	return out
}

// syncAllowAdd writes the entries of want's lists that have lacks, into
// both tries: before the published ports name them.
func (d *EBPF) syncAllowAdd(undo *undoLog, have, want *allowLists) error {
	h4, h6 := have.entries()
	w4, w6 := want.entries()
	if err := syncMapPart(undo, d.objs.PortAllow, h4, w4); err != nil {
		return err
	}
	return syncMapPart(undo, d.objs.PortAllow6, h6, w6)
}

// writeAllow writes list id, new to the tries, into both.
func (d *EBPF) writeAllow(undo *undoLog, id uint32, ps []netip.Prefix) error {
	if err := syncMapPart(undo, d.objs.PortAllow, nil, allowEntries(id, ps)); err != nil {
		return err
	}
	return syncMapPart(undo, d.objs.PortAllow6, nil, allowEntries6(id, ps))
}

// syncAllowDelete deletes the entries of have that want has not, from
// both tries: after the published ports stopped naming them.
func (d *EBPF) syncAllowDelete(undo *undoLog, have, want *allowLists) error {
	h4, h6 := have.entries()
	w4, w6 := want.entries()
	if err := deleteMissing(undo, d.objs.PortAllow, h4, w4); err != nil {
		return err
	}
	return deleteMissing(undo, d.objs.PortAllow6, h6, w6)
}

// deleteMissing deletes from m the entries of have that want has not,
// logging how to put them back.
func deleteMissing[K comparable, V any](undo *undoLog, m *ebpf.Map, have, want map[K]V) error {
	for k, v := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := ignoreMissing(m.Delete(k)); err != nil {
			return err
		}
		*undo = append(*undo, func() error { return m.Put(k, v) })
	}
	return nil
}

// releaseAllow drops one mapping's use of list id and deletes the list from
// the trie when no mapping names it any more.
func (d *EBPF) releaseAllow(id uint32) error {
	l := d.applied.allow
	if id == 0 {
		return nil
	}
	l.refs[id]--
	if l.refs[id] > 0 {
		return nil
	}
	ps := l.prefixes[id]
	delete(l.refs, id)
	delete(l.prefixes, id)
	delete(l.ids, allowKeyOf(ps))
	for k := range allowEntries(id, ps) {
		if err := ignoreMissing(d.objs.PortAllow.Delete(k)); err != nil {
			return fmt.Errorf("deleting allowlist %d: %w", id, err)
		}
	}
	for k := range allowEntries6(id, ps) {
		if err := ignoreMissing(d.objs.PortAllow6.Delete(k)); err != nil {
			return fmt.Errorf("deleting allowlist %d: %w", id, err)
		}
	}
	return nil
}

// allowRefs counts the mappings of the port maps naming each list.
func allowRefs(maps ...map[bpfPortKey]bpfPortTarget) map[uint32]int {
	out := map[uint32]int{}
	for _, ports := range maps {
		for _, t := range ports {
			if t.AllowId != 0 {
				out[t.AllowId]++
			}
		}
	}
	return out
}

// addAllowRefs6 counts into refs the IPv6 mappings naming each list.
func addAllowRefs6(refs map[uint32]int, ports6 map[bpfPort6Key]bpfPort6Target) {
	for _, t := range ports6 {
		if t.AllowId != 0 {
			refs[t.AllowId]++
		}
	}
}

// allowOf gives a list's prefixes by id, as the pinned trie holds them.
func (d *EBPF) allowOf() (map[uint32][]netip.Prefix, error) {
	l, err := readAllowLists(d.objs.PortAllow, d.objs.PortAllow6)
	if err != nil {
		return nil, err
	}
	return l.prefixes, nil
}

// PortDenied returns the new flows refused per published port binding by
// the port's source allowlist (the drop reason port_denied, per port). A
// published container port of a routed network counts under its container
// address and port (RoutedBinding).
func (d *EBPF) PortDenied() (map[PortBinding]uint64, error) {
	if d.objs.PortDenied == nil {
		return map[PortBinding]uint64{}, nil
	}
	out, err := sumPortCounters(d.objs.PortDenied, "denied-flow counters")
	if err != nil || d.objs.PortDenied6 == nil {
		return out, err
	}
	return out, sumPort6Counters(out, d.objs.PortDenied6, "IPv6 denied-flow counters")
}

// deletePortCounters forgets the counters of a published binding.
func (d *EBPF) deletePortCounters(k bpfPortKey) error {
	err := ignoreMissing(d.objs.PortConns.Delete(k))
	if d.objs.PortDenied != nil {
		err = errors.Join(err, ignoreMissing(d.objs.PortDenied.Delete(k)))
	}
	if err != nil {
		return fmt.Errorf("dropping port counters: %w", err)
	}
	return nil
}

// deletePort6Counters forgets the counters of an IPv6 published binding.
func (d *EBPF) deletePort6Counters(k bpfPort6Key) error {
	var err error
	for _, m := range []*ebpf.Map{d.objs.PortConns6, d.objs.PortDenied6} {
		if m != nil {
			err = errors.Join(err, ignoreMissing(m.Delete(k)))
		}
	}
	if err != nil {
		return fmt.Errorf("dropping IPv6 port counters: %w", err)
	}
	return nil
}

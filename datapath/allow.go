// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
)

// allowLists are the source allowlists of published ports as the
// port_allow trie holds them (bpf/lib/allow.h): one list per distinct
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

// entries are the trie's entries of every list.
func (l *allowLists) entries() map[bpfAllowKey]uint32 {
	out := map[bpfAllowKey]uint32{}
	for id, ps := range l.prefixes {
		for k, v := range allowEntries(id, ps) {
			out[k] = v
		}
	}
	return out
}

func allowEntries(id uint32, ps []netip.Prefix) map[bpfAllowKey]uint32 {
	out := make(map[bpfAllowKey]uint32, len(ps))
	for _, p := range ps {
		out[bpfAllowKey{Prefixlen: 32 + uint32(p.Bits()), List: id, Addr: be32(p.Addr())}] = 1
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

// readAllowLists reads the lists a previous process wrote.
func readAllowLists(m *ebpf.Map) (*allowLists, error) {
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
	for id, ps := range l.prefixes {
		ps = canonAllow(ps)
		l.prefixes[id] = ps
		l.ids[allowKeyOf(ps)] = id
	}
	return l, nil
}

// assignAllow gives the mappings of s their list ids: those of nat
// networks in ports (keyed as resolve keys them), those of routed networks
// in routed (see routedAllow). It returns the lists they use, reusing the
// ids of prev for lists it has.
func (d *EBPF) assignAllow(prev *allowLists, s State, ports, routed map[bpfPortKey]bpfPortTarget) *allowLists {
	l := newAllowLists()
	for _, m := range s.Ports {
		if len(m.Allow) == 0 || isRouted(s.Networks, m) {
			continue
		}
		k := d.portKey(m)
		t, ok := ports[k]
		if !ok {
			continue
		}
		id, _ := l.id(canonAllow(m.Allow), prev)
		t.AllowId = id
		ports[k] = t
		l.refs[id]++
	}
	for k, ps := range routedAllow(s) {
		t, ok := routed[k]
		if !ok || len(ps) == 0 {
			continue
		}
		id, _ := l.id(ps, prev)
		t.AllowId = id
		routed[k] = t
		l.refs[id]++
	}
	return l
}

// isRouted tells whether m publishes a container port of a routed network.
func isRouted(nets []Network, m PortMapping) bool {
	n, ok := networkOf(nets, m.ContainerIP)
	return ok && n.GatewayMode == GatewayRouted
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
	out := map[bpfPortKey][]netip.Prefix{}
	open := map[bpfPortKey]bool{}
	for _, m := range s.Ports {
		if !isRouted(s.Networks, m) {
			continue
		}
		k := bpfPortKey{Addr: be32(m.ContainerIP), Port: be16(m.ContainerPort), Proto: uint8(m.Proto)}
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

// syncAllowAdd writes the entries of want's lists that have lacks:
// before the published ports name them.
func syncAllowAdd(undo *undoLog, m *ebpf.Map, have, want *allowLists) error {
	return syncMapPart(undo, m, have.entries(), want.entries())
}

// syncAllowDelete deletes the entries of have that want has not: after
// the published ports stopped naming them.
func syncAllowDelete(undo *undoLog, m *ebpf.Map, have, want *allowLists) error {
	w := want.entries()
	for k, v := range have.entries() {
		if _, ok := w[k]; ok {
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

// allowOf gives a list's prefixes by id, as the pinned trie holds them.
func (d *EBPF) allowOf() (map[uint32][]netip.Prefix, error) {
	l, err := readAllowLists(d.objs.PortAllow)
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
	return sumPortCounters(d.objs.PortDenied, "denied-flow counters")
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

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Flags of a connection-tracking entry (enum ct_flags in bpf/lib/maps.h):
// the hook that applies it and its direction.
const (
	ctAtFromNetdev    = bpfCtFlagsCT_AT_FROM_NETDEV
	ctAtToNetdev      = bpfCtFlagsCT_AT_TO_NETDEV
	ctAtFromContainer = bpfCtFlagsCT_AT_FROM_CONTAINER
	ctAtToContainer   = bpfCtFlagsCT_AT_TO_CONTAINER
	ctReply           = bpfCtFlagsCT_REPLY
	ctUnassured       = bpfCtFlagsCT_UNASSURED
)

// FlowKind says which translation a flow has (enum ct_kind in
// bpf/lib/maps.h).
type FlowKind uint8

const (
	KindDNAT    = FlowKind(bpfCtKindCT_DNAT)
	KindSNAT    = FlowKind(bpfCtKindCT_SNAT)
	KindHairpin = FlowKind(bpfCtKindCT_HAIRPIN)
	// KindRouted is an untranslated flow from a network without
	// masquerade, tracked so that its answers get in.
	KindRouted = FlowKind(bpfCtKindCT_ROUTED)
	// KindNAT64 is a flow of a host IPv6 port of an IPv4 container
	// (bpf/lib/nat64.h): the client's IPv6 tuple as an IPv4 one from the
	// NAT64 pool.
	KindNAT64 = FlowKind(bpfCtKindCT_NAT64)
)

func (k FlowKind) String() string {
	switch k {
	case KindDNAT:
		return "dnat"
	case KindSNAT:
		return "snat"
	case KindHairpin:
		return "hairpin"
	case KindRouted:
		return "routed"
	case KindNAT64:
		return "nat64"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Tuple is one direction of a flow.
type Tuple struct {
	Proto uint8
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

func (t Tuple) String() string { return fmt.Sprintf("%s -> %s", t.Src, t.Dst) }

// CTEntry is one direction of a tracked flow: a packet with tuple Key is
// rewritten to Translated.
type CTEntry struct {
	Kind  FlowKind
	Reply bool
	// Unassured: a published-port flow whose client has not answered the
	// container yet, held in the table of unassured flows (ct4_syn) until
	// it does.
	Unassured  bool
	Key        Tuple
	Translated Tuple
	TCPFlags   uint8
	Ifindex    uint32
	Packets    uint64
	Bytes      uint64
	// Expires is how long the entry has to live; negative when expired
	// and waiting for the garbage collector.
	Expires time.Duration
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Nano()), nil
}

func tupleOf(proto uint8, saddr, daddr uint32, sport, dport uint16) Tuple {
	return Tuple{
		Proto: proto,
		Src:   netip.AddrPortFrom(addrFrom(saddr), port16(sport)),
		Dst:   netip.AddrPortFrom(addrFrom(daddr), port16(dport)),
	}
}

// Conntrack lists every entry of the connection-tracking tables: the
// established flows of ct4, then the unassured ones of ct4_syn, then the
// IPv6 flows of ct6 and ct6_syn, then the live NAT64 flows (nat64Flows).
func (d *EBPF) Conntrack() ([]CTEntry, error) {
	out, err := readConntrack(d.ctTables()...)
	if err != nil {
		return out, err
	}
	now, err := monotonicNow()
	if err != nil {
		return out, err
	}
	for _, m := range d.ct6Tables() {
		if err := walkCT6(m, func(k bpfCt6Key, v bpfCt6Entry) { out = append(out, ct6EntryOf(k, v, now)) }); err != nil {
			return out, err
		}
	}
	nat64, err := d.nat64Flows(now)
	return append(out, nat64...), err
}

// ct6Tables are the IPv6 connection-tracking tables, ct6 first; a
// datapath pinned by a version without them has none or only ct6.
func (d *EBPF) ct6Tables() []*ebpf.Map {
	var out []*ebpf.Map
	for _, m := range []*ebpf.Map{d.objs.Ct6, d.objs.Ct6Syn} {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

func tuple6Of(proto uint8, saddr, daddr [4]uint32, sport, dport uint16) Tuple {
	return Tuple{
		Proto: proto,
		Src:   netip.AddrPortFrom(addr6From(saddr), port16(sport)),
		Dst:   netip.AddrPortFrom(addr6From(daddr), port16(dport)),
	}
}

func ct6EntryOf(k bpfCt6Key, v bpfCt6Entry, now uint64) CTEntry {
	return CTEntry{
		Kind:       FlowKind(v.Kind),
		Reply:      v.Flags&ctReply != 0,
		Unassured:  v.Flags&ctUnassured != 0,
		Key:        tuple6Of(k.Proto, k.Saddr, k.Daddr, k.Sport, k.Dport),
		Translated: tuple6Of(k.Proto, v.Nsaddr, v.Ndaddr, v.Nsport, v.Ndport),
		TCPFlags:   v.TcpSeen,
		Ifindex:    v.Ifindex,
		Packets:    v.Packets,
		Bytes:      v.Bytes,
		Expires:    time.Duration(int64(v.Expires) - int64(now)),
	}
}

// walkCT6 is walkCT for ct6 (key by key: the table of IPv6 flows is
// usually small).
func walkCT6(m *ebpf.Map, fn func(bpfCt6Key, bpfCt6Entry)) error {
	var k bpfCt6Key
	var v bpfCt6Entry
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading IPv6 conntrack: %w", err)
	}
	return nil
}

// deleteCT6 deletes the entries of ct6 and ct6_syn that match, and the
// other half of each (from the same table).
func (d *EBPF) deleteCT6(match func(bpfCt6Key, bpfCt6Entry) bool) (int, error) {
	n := 0
	for _, m := range d.ct6Tables() {
		var doomed []bpfCt6Key
		err := walkCT6(m, func(k bpfCt6Key, v bpfCt6Entry) {
			if match(k, v) {
				doomed = append(doomed, k, bpfCt6Key{Saddr: v.Ndaddr, Daddr: v.Nsaddr, Sport: v.Ndport, Dport: v.Nsport, Proto: k.Proto})
			}
		})
		if err != nil {
			return n, err
		}
		for _, k := range doomed {
			err := m.Delete(k)
			if err == nil {
				n++
			} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, fmt.Errorf("deleting IPv6 conntrack entry: %w", err)
			}
		}
	}
	return n, nil
}

// ctTables are the connection-tracking tables, ct4 first. A datapath
// pinned by a version without ct4_syn has only ct4.
func (d *EBPF) ctTables() []*ebpf.Map {
	if d.objs.Ct4Syn == nil {
		return []*ebpf.Map{d.objs.Ct4}
	}
	return []*ebpf.Map{d.objs.Ct4, d.objs.Ct4Syn}
}

func readConntrack(tables ...*ebpf.Map) ([]CTEntry, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	var out []CTEntry
	for _, m := range tables {
		if err := walkCT(m, func(k bpfCtKey, v bpfCtEntry) {
			out = append(out, ctEntryOf(k, v, now))
		}); err != nil {
			return out, err
		}
	}
	return out, nil
}

func ctEntryOf(k bpfCtKey, v bpfCtEntry, now uint64) CTEntry {
	return CTEntry{
		Kind:       FlowKind(v.Kind),
		Reply:      v.Flags&ctReply != 0,
		Unassured:  v.Flags&ctUnassured != 0,
		Key:        tupleOf(k.Proto, k.Saddr, k.Daddr, k.Sport, k.Dport),
		Translated: tupleOf(k.Proto, v.Nsaddr, v.Ndaddr, v.Nsport, v.Ndport),
		TCPFlags:   v.TcpSeen,
		Ifindex:    v.Ifindex,
		Packets:    v.Packets,
		Bytes:      v.Bytes,
		Expires:    time.Duration(int64(v.Expires) - int64(now)),
	}
}

// walkCT calls fn for every entry of the table, reading it in batches
// (several times faster than key-by-key iteration on a large table).
func walkCT(m *ebpf.Map, fn func(bpfCtKey, bpfCtEntry)) error {
	const chunk = 4096
	keys := make([]bpfCtKey, chunk)
	vals := make([]bpfCtEntry, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading conntrack: %w", err)
		}
	}
	// Kernels without batch operations on this map type.
	var k bpfCtKey
	var v bpfCtEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading conntrack: %w", err)
	}
	return nil
}

// GC deletes the expired entries of every table (ct4, ct4_syn, ct6, ct6_syn) and
// returns how many it deleted.
func (d *EBPF) GC() (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	n, err := d.deleteCT(func(k bpfCtKey, v bpfCtEntry) bool { return v.Expires < now })
	if err != nil {
		return n, err
	}
	n6, err := d.deleteCT6(func(k bpfCt6Key, v bpfCt6Entry) bool { return v.Expires < now })
	return n + n6, err
}

// CTUsage returns the number of entries and the capacity of the table of
// established flows, ct4.
func (d *EBPF) CTUsage() (entries, capacity int, err error) {
	return tableUsage(d.objs.Ct4)
}

// HalfOpenUsage returns the number of entries and the capacity of the
// table of unassured flows, ct4_syn (zero for a datapath without one).
func (d *EBPF) HalfOpenUsage() (entries, capacity int, err error) {
	if d.objs.Ct4Syn == nil {
		return 0, 0, nil
	}
	return tableUsage(d.objs.Ct4Syn)
}

// CT6Usage is CTUsage for ct6, the table of established IPv6 flows
// (zero for a datapath pinned by a version without it).
func (d *EBPF) CT6Usage() (entries, capacity int, err error) {
	return table6Usage(d.objs.Ct6)
}

// HalfOpen6Usage is HalfOpenUsage for ct6_syn, the table of unassured
// IPv6 flows (zero for a datapath pinned by a version without it).
func (d *EBPF) HalfOpen6Usage() (entries, capacity int, err error) {
	return table6Usage(d.objs.Ct6Syn)
}

func table6Usage(m *ebpf.Map) (entries, capacity int, err error) {
	if m == nil {
		return 0, 0, nil
	}
	err = walkCT6(m, func(bpfCt6Key, bpfCt6Entry) { entries++ })
	return entries, int(m.MaxEntries()), err
}

func tableUsage(m *ebpf.Map) (entries, capacity int, err error) {
	err = walkCT(m, func(bpfCtKey, bpfCtEntry) { entries++ })
	return entries, int(m.MaxEntries()), err
}

// flushBackends drops the flows translated to any of the given container
// addresses and ports, both directions.
func (d *EBPF) flushBackends(gone []bpfPortTarget) (int, error) {
	type be struct {
		addr uint32
		port uint16
	}
	set := map[be]bool{}
	for _, g := range gone {
		set[be{g.Addr, g.Port}] = true
	}
	return d.deleteCT(func(k bpfCtKey, v bpfCtEntry) bool {
		if v.Kind != bpfCtKind(KindDNAT) && v.Kind != bpfCtKind(KindHairpin) {
			return false
		}
		if v.Flags&ctReply != 0 {
			return set[be{k.Saddr, k.Sport}]
		}
		return set[be{v.Ndaddr, v.Ndport}]
	})
}

// deleteCT deletes the entries of every table that match, and the other
// half of each (which is in the same table).
func (d *EBPF) deleteCT(match func(bpfCtKey, bpfCtEntry) bool) (int, error) {
	n := 0
	for _, m := range d.ctTables() {
		k, err := deleteFrom(m, match)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func deleteFrom(m *ebpf.Map, match func(bpfCtKey, bpfCtEntry) bool) (int, error) {
	var doomed []bpfCtKey
	err := walkCT(m, func(k bpfCtKey, v bpfCtEntry) {
		if match(k, v) {
			doomed = append(doomed, k, bpfCtKey{Saddr: v.Ndaddr, Daddr: v.Nsaddr, Sport: v.Ndport, Dport: v.Nsport, Proto: k.Proto})
		}
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range doomed {
		err := m.Delete(k)
		if err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("deleting conntrack entry: %w", err)
		}
	}
	return n, nil
}

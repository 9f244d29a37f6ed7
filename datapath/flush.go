// SPDX-License-Identifier: Apache-2.0

package datapath

import "net/netip"

// FlushAddr drops every tracked flow that an address took part in, on
// either side of the translation: what a container leaves behind when it
// goes (its published-port flows, its masqueraded egress, its hairpin
// flows), so that an address given to the next container starts clean.
// It returns how many entries it deleted.
func (d *EBPF) FlushAddr(addr netip.Addr) (int, error) {
	if addr.Is6() && !addr.Is4In6() {
		a := be128(addr)
		return d.deleteCT6(func(k bpfCt6Key, v bpfCt6Entry) bool {
			return k.Saddr == a || k.Daddr == a || v.Nsaddr == a || v.Ndaddr == a
		})
	}
	a := be32(addr)
	return d.deleteCT(func(k bpfCtKey, v bpfCtEntry) bool {
		return k.Saddr == a || k.Daddr == a || v.Nsaddr == a || v.Ndaddr == a
	})
}

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// The maps hold addresses and ports in network byte order; bpf2go's Go
// mirrors read them as native integers.

func be32(a netip.Addr) uint32 {
	if !a.IsValid() {
		return 0
	}
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFrom(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func be16(p uint16) uint16 { return bits.ReverseBytes16(p) }

func port16(v uint16) uint16 { return bits.ReverseBytes16(v) }

// be128 is an IPv6 address as the maps hold it (the zero Addr: all
// zero, the `::` of a wildcard binding).
func be128(a netip.Addr) [4]uint32 {
	var out [4]uint32
	if !a.IsValid() {
		return out
	}
	b := a.As16()
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

func addr6From(v [4]uint32) netip.Addr {
	var b [16]byte
	for i, w := range v {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b)
}

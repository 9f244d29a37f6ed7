// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
)

// SendIPv4 sends IPv4 datagrams, headers included, from a raw socket
// inside the namespace (IPPROTO_RAW implies IP_HDRINCL): the kernel sends
// each as given, whatever its source address, filling in only the
// header's checksum and a zero identifier. Tests use it to forge sources.
func (n *Namespace) SendIPv4(dst netip.Addr, datagrams ...[]byte) error {
	return n.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket in namespace %s: %w", n.Name, err)
		}
		defer syscall.Close(fd)
		to := &syscall.SockaddrInet4{Addr: dst.As4()}
		for _, d := range datagrams {
			if err := syscall.Sendto(fd, d, 0, to); err != nil {
				return fmt.Errorf("sending to %s from namespace %s: %w", dst, n.Name, err)
			}
		}
		return nil
	})
}

// UDPv4 is an IPv4 UDP datagram from src:sport to dst:dport carrying
// payload, for SendIPv4. Its UDP checksum is 0 (none, which IPv4 allows).
func UDPv4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	d := make([]byte, 20+8+len(payload))
	d[0], d[8], d[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(d[2:], uint16(len(d)))
	s4, d4 := src.As4(), dst.As4()
	copy(d[12:], s4[:])
	copy(d[16:], d4[:])
	binary.BigEndian.PutUint16(d[20:], sport)
	binary.BigEndian.PutUint16(d[22:], dport)
	binary.BigEndian.PutUint16(d[24:], uint16(8+len(payload)))
	copy(d[28:], payload)
	return d
}

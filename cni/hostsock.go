// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/datapath"
)

// A pod's hostPort is translated before the host's stack sees the
// packet, so a host process that serves the same port would silently
// stop receiving what it served. Docker refuses such a port: it binds
// the host port itself before it programs the NAT (moby's
// libnetwork/drivers/bridge/port_mapping_linux.go, bindTCPOrUDP, with
// SO_REUSEADDR and, for IPv6, IPV6_V6ONLY), and the bind fails with
// EADDRINUSE. For TCP that is a listener's port, as here. For UDP,
// Docker's bind passes beside a socket that set SO_REUSEADDR too; bpfnet
// refuses every bound UDP socket's port, since its datagrams would reach
// the pod instead. The agent does not hold sockets for pods (it would have to
// hand them to its next version on an upgrade); it reads the host's
// sockets with sock_diag instead, as ss(8) does, and refuses an ADD whose
// hostPort one of them holds. Only the sockets there at the ADD are seen:
// a process that binds the port later finds it free on its side and
// receives no packet of it, as with Docker's and portmap's NAT.

// HostSocket is a socket of the host that holds a port: a TCP listener,
// or a UDP socket that is bound and not connected.
type HostSocket struct {
	Proto datapath.Proto
	Addr  netip.AddrPort
	// V6Only is IPV6_V6ONLY of an IPv6 socket: without it, one bound to
	// :: receives IPv4 too.
	V6Only bool
	UID    uint32
	Inode  uint32
}

func (s HostSocket) String() string {
	return fmt.Sprintf("%s/%s (socket inode %d of uid %d)", s.Addr, s.Proto, s.Inode, s.UID)
}

// Holds says whether s takes m's host port: a binding to every address
// of a family collides with any socket of that port in the family, one
// to an address with sockets bound to that address or to every address,
// as bind(2) judges it.
func (s HostSocket) Holds(m datapath.PortMapping) bool {
	if s.Proto != m.Proto || s.Addr.Port() != m.HostPort {
		return false
	}
	hip := m.HostIP
	if !hip.IsValid() {
		if m.ContainerIP.Is6() && !m.ContainerIP.Is4In6() {
			hip = netip.IPv6Unspecified()
		} else {
			hip = netip.IPv4Unspecified()
		}
	}
	sa := s.Addr.Addr()
	if sa.Is4In6() {
		sa = sa.Unmap()
	}
	if sa.Is6() && sa.IsUnspecified() && !s.V6Only && hip.Is4() {
		return true // a dual-stack socket on :: serves IPv4 too
	}
	if sa.Is4() != hip.Is4() {
		return false
	}
	return hip.IsUnspecified() || sa.IsUnspecified() || sa == hip
}

// HostSockets lists the TCP listeners and the unconnected UDP sockets of
// the calling thread's network namespace.
func HostSockets() ([]HostSocket, error) {
	var out []HostSocket
	for _, q := range []struct {
		proto   datapath.Proto
		ipProto uint8
		state   uint32
	}{
		{datapath.TCP, unix.IPPROTO_TCP, 1 << 10 /* TCP_LISTEN */},
		{datapath.UDP, unix.IPPROTO_UDP, 1 << 7 /* TCP_CLOSE: not connected */},
	} {
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := dumpSockets(family, q.ipProto, q.state)
			if err != nil {
				return nil, fmt.Errorf("listing the host's %s sockets: %w", q.proto, err)
			}
			for _, s := range socks {
				s.Proto = q.proto
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// diagRequest is struct inet_diag_req_v2 (linux/inet_diag.h) without a
// socket id: a dump of every socket of the family, protocol and states.
type diagRequest struct {
	family, protocol uint8
	states           uint32
}

func (r diagRequest) Len() int { return 56 }

func (r diagRequest) Serialize() []byte {
	b := make([]byte, r.Len())
	b[0], b[1] = r.family, r.protocol
	binary.NativeEndian.PutUint32(b[4:], r.states)
	return b
}

// sizeofDiagMsg is struct inet_diag_msg's size.
const sizeofDiagMsg = 72

func dumpSockets(family, protocol uint8, states uint32) ([]HostSocket, error) {
	var msgs [][]byte
	var err error
	for range 3 { // a dump that sockets changed under is asked again
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(diagRequest{family: family, protocol: protocol, states: states})
		if msgs, err = req.Execute(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]HostSocket, 0, len(msgs))
	for _, m := range msgs {
		if len(m) < sizeofDiagMsg || m[0] != family {
			return nil, fmt.Errorf("sock_diag answered a message of %d bytes, family %d", len(m), m[0])
		}
		var addr netip.Addr
		if family == unix.AF_INET {
			addr = netip.AddrFrom4([4]byte(m[8:12]))
		} else {
			addr = netip.AddrFrom16([16]byte(m[8:24]))
		}
		s := HostSocket{Addr: netip.AddrPortFrom(addr, binary.BigEndian.Uint16(m[4:6])),
			UID: binary.NativeEndian.Uint32(m[64:68]), Inode: binary.NativeEndian.Uint32(m[68:72])}
		if family == unix.AF_INET6 {
			attrs, err := nl.ParseRouteAttr(m[sizeofDiagMsg:])
			if err != nil {
				return nil, fmt.Errorf("sock_diag attributes: %w", err)
			}
			for _, a := range attrs {
				if a.Attr.Type == netlink.INET_DIAG_SKV6ONLY && len(a.Value) > 0 {
					s.V6Only = a.Value[0] != 0
				}
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// checkHostSockets refuses ms when a host socket holds one of their host
// ports, with an error that wraps datapath.ErrPortTaken.
func checkHostSockets(ms []datapath.PortMapping, socks []HostSocket) error {
	for _, m := range ms {
		for _, s := range socks {
			if s.Holds(m) {
				return fmt.Errorf("port %s: %w by a process of the host: %s is bound", m, datapath.ErrPortTaken, s)
			}
		}
	}
	return nil
}

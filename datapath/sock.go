// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/loader"
)

// Names the sock programs' links are pinned with under SockDir (kept from
// the first release, so an upgrade adopts the pinned links). The kernel's
// program names, which must differ within 15 bytes, are those of the C
// functions: getpeername's programs are sock_peername4 and sock_peername6.
const (
	ProgSockConnect4     = "sock_connect4"
	ProgSockSendmsg4     = "sock_sendmsg4"
	ProgSockRecvmsg4     = "sock_recvmsg4"
	ProgSockGetpeername4 = "sock_getpeername4"
	// IPv6 sockets: to IPv6 published ports, and to IPv4 ones through
	// mapped addresses (whose unconnected datagrams take sendmsg4).
	ProgSockConnect6     = "sock_connect6"
	ProgSockSendmsg6     = "sock_sendmsg6"
	ProgSockRecvmsg6     = "sock_recvmsg6"
	ProgSockGetpeername6 = "sock_getpeername6"
)

// sockHooks are the cgroup hooks of the sock programs, by program name.
var sockHooks = []struct {
	name   string
	attach ebpf.AttachType
}{
	{ProgSockConnect4, ebpf.AttachCGroupInet4Connect},
	{ProgSockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
	{ProgSockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
	{ProgSockGetpeername4, ebpf.AttachCgroupInet4GetPeername},
	{ProgSockConnect6, ebpf.AttachCGroupInet6Connect},
	{ProgSockSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
	{ProgSockRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
	{ProgSockGetpeername6, ebpf.AttachCgroupInet6GetPeername},
}

// SockStat is a counter of the sock programs (enum sock_stat in
// bpf/sock.c, the key of sock_stats).
type SockStat uint32

const (
	SockConnect       = SockStat(sockSockStatSOCK_ST_CONNECT)
	SockSendmsg       = SockStat(sockSockStatSOCK_ST_SENDMSG)
	SockRecvmsg       = SockStat(sockSockStatSOCK_ST_RECVMSG)
	SockGetpeername   = SockStat(sockSockStatSOCK_ST_GETPEERNAME)
	SockBoundLoopback = SockStat(sockSockStatSOCK_ST_BOUND_LO)
	sockStatMax       = int(sockSockStatSOCK_ST_MAX)
)

var sockStatNames = map[SockStat]string{
	SockConnect:       "connect",
	SockSendmsg:       "sendmsg",
	SockRecvmsg:       "recvmsg",
	SockGetpeername:   "getpeername",
	SockBoundLoopback: "bound_loopback",
}

func (s SockStat) String() string {
	if n, ok := sockStatNames[s]; ok {
		return n
	}
	return fmt.Sprintf("sock_stat_%d", uint32(s))
}

// SockDir is where the cgroup links of the sock programs are pinned
// (loader.SockLinkPin).
func SockDir(pinPath string) string { return loader.CgroupDir(pinPath) }

// SockOptions are the settings of the sock programs.
type SockOptions struct {
	// CgroupPath is the cgroup v2 folder the programs attach to; every
	// process below it is served. "" is DefaultCgroupPath().
	CgroupPath string
	// NetnsCookie is the network namespace whose sockets are translated;
	// 0 is the namespace of the calling thread (see NetnsCookie).
	NetnsCookie uint64
}

// Sock is the set of cgroup sock_addr programs that let the host's own
// processes reach published ports (what docker-proxy does for Docker).
type Sock struct {
	pinPath string
	cgroup  string
	cookie  uint64
	progs   sockPrograms
	maps    sockOwnMaps
	links   map[string]link.Link
}

// sockOwnMaps are the maps only the sock programs have; the TC datapath's
// maps they read are those of the EBPF they are started from.
type sockOwnMaps struct {
	SockRev4  *ebpf.Map `ebpf:"sock_rev4"`
	SockRev6  *ebpf.Map `ebpf:"sock_rev6"`
	SockStats *ebpf.Map `ebpf:"sock_stats"`
}

func (m *sockOwnMaps) Close() error {
	return errors.Join(m.SockRev4.Close(), m.SockRev6.Close(), m.SockStats.Close())
}

// NetnsCookie returns the cookie of the calling thread's network namespace,
// as bpf_get_netns_cookie gives it. Call it on a thread locked in the
// namespace (lab.Namespace.Do), or from a daemon in the host namespace.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket for the namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("reading the namespace cookie (SO_NETNS_COOKIE, Linux 5.14): %w", err)
	}
	return c, nil
}

// DefaultCgroupPath finds the root of the cgroup v2 hierarchy:
// /sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid
// one.
func DefaultCgroupPath() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

// SockSpec returns the sock programs' collection for the namespace of
// cookie, not loaded. With pinned false nothing is pinned.
func SockSpec(cookie uint64, pinned bool) (*ebpf.CollectionSpec, error) {
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("reading the sock object: %w", err)
	}
	if err := spec.Variables["SOCK_NETNS_COOKIE"].Set(cookie); err != nil {
		return nil, fmt.Errorf("setting the namespace cookie: %w", err)
	}
	if !pinned {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	return spec, nil
}

// StartSock loads the sock programs on the maps of d and attaches them to
// the cgroup of opts. With a pin path the links are pinned under SockDir
// and adopted by a later StartSock (updated in place: a restart never
// leaves a moment without translation), and the reverse translations are
// pinned with the datapath's state so that the sockets of a previous run
// keep them. Without a pin path the programs stay attached only as long as
// the Sock is open.
func (d *EBPF) StartSock(opts SockOptions) (_ *Sock, err error) {
	if opts.CgroupPath == "" {
		if opts.CgroupPath, err = DefaultCgroupPath(); err != nil {
			return nil, err
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(opts.CgroupPath, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("%s is not a cgroup v2 folder", opts.CgroupPath)
	}
	if opts.NetnsCookie == 0 {
		if opts.NetnsCookie, err = NetnsCookie(); err != nil {
			return nil, err
		}
	}
	pinPath := d.opts.PinPath
	spec, err := SockSpec(opts.NetnsCookie, pinPath != "")
	if err != nil {
		return nil, err
	}
	co := ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"published":   d.objs.Published,
		"host_addrs":  d.objs.HostAddrs,
		"port_conns":  d.objs.PortConns,
		"published6":  d.objs.Published6,
		"host_addrs6": d.objs.HostAddrs6,
	}}
	if pinPath != "" {
		co.Maps.PinPath = loader.GlobalsDir(pinPath)
		if err := os.MkdirAll(co.Maps.PinPath, 0o700); err != nil {
			return nil, fmt.Errorf("creating pin folder: %w", err)
		}
	}
	s := &Sock{pinPath: pinPath, cgroup: opts.CgroupPath, cookie: opts.NetnsCookie, links: map[string]link.Link{}}
	var objs struct {
		sockPrograms
		sockOwnMaps
	}
	if err := spec.LoadAndAssign(&objs, &co); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, &VerifierError{Program: "sock", Err: ve}
		}
		return nil, fmt.Errorf("loading the sock programs: %w", err)
	}
	s.progs, s.maps = objs.sockPrograms, objs.sockOwnMaps
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.attach(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sock) programs() map[string]*ebpf.Program {
	return sockProgramMap(&s.progs)
}

func sockProgramMap(p *sockPrograms) map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		ProgSockConnect4:     p.SockConnect4,
		ProgSockSendmsg4:     p.SockSendmsg4,
		ProgSockRecvmsg4:     p.SockRecvmsg4,
		ProgSockGetpeername4: p.SockPeername4,
		ProgSockConnect6:     p.SockConnect6,
		ProgSockSendmsg6:     p.SockSendmsg6,
		ProgSockRecvmsg6:     p.SockRecvmsg6,
		ProgSockGetpeername6: p.SockPeername6,
	}
}

// attach attaches each program, adopting a pinned link of the same hook on
// the same cgroup by updating its program; a pinned link elsewhere (the
// cgroup setting changed) is replaced (loader.AttachCgroup).
func (s *Sock) attach() error {
	progs := s.programs()
	for _, h := range sockHooks {
		pin := ""
		if s.pinPath != "" {
			pin = loader.SockLinkPin(s.pinPath, h.name)
		}
		l, err := loader.AttachCgroup(pin, progs[h.name], s.cgroup, h.attach)
		if err != nil {
			return fmt.Errorf("attaching %s: %w", h.name, err)
		}
		s.links[h.name] = l
	}
	return nil
}

// SockLink describes an attached sock program.
type SockLink struct {
	Program   string
	LinkID    link.ID
	ProgramID ebpf.ProgramID
	CgroupID  uint64
}

// Links reports the attached links by program name.
func (s *Sock) Links() (map[string]SockLink, error) {
	out := map[string]SockLink{}
	for name, l := range s.links {
		info, err := l.Info()
		if err != nil {
			return nil, fmt.Errorf("link of %s: %w", name, err)
		}
		sl := SockLink{Program: name, LinkID: info.ID, ProgramID: info.Program}
		if c := info.Cgroup(); c != nil {
			sl.CgroupID = c.CgroupId
		}
		out[name] = sl
	}
	return out, nil
}

// CgroupPath is the cgroup the programs are attached to.
func (s *Sock) CgroupPath() string { return s.cgroup }

// NetnsCookie is the namespace whose sockets are translated.
func (s *Sock) NetnsCookie() uint64 { return s.cookie }

// Stats reads the counters of the sock programs, summed over CPUs.
func (s *Sock) Stats() (map[SockStat]uint64, error) {
	return readSockStats(s.maps.SockStats)
}

// ReadSockStats reads the counters of the sock programs of a running
// datapath from their pinned map, for the operator commands.
func ReadSockStats(pinPath string) (map[SockStat]uint64, error) {
	m, err := ebpf.LoadPinnedMap(loader.GlobalPin(pinPath, "sock_stats"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("opening the sock counters: %w", err)
	}
	defer m.Close()
	return readSockStats(m)
}

func readSockStats(m *ebpf.Map) (map[SockStat]uint64, error) {
	sums, err := sumArray(m, sockStatMax)
	if err != nil {
		return nil, fmt.Errorf("reading sock counters: %w", err)
	}
	out := map[SockStat]uint64{}
	for i, sum := range sums {
		if _, named := sockStatNames[SockStat(i)]; named || sum > 0 {
			out[SockStat(i)] = sum
		}
	}
	return out, nil
}

// Close releases the file descriptors. Pinned links stay attached and keep
// translating; without a pin path closing detaches. A nil Sock is closed.
func (s *Sock) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	for name, l := range s.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the link of %s: %w", name, err))
		}
	}
	s.links = map[string]link.Link{}
	errs = append(errs, s.progs.Close(), s.maps.Close())
	return errors.Join(errs...)
}

// Remove detaches the programs, removes their link pins and their maps'
// pins (the datapath's maps are the datapath's to remove), and closes. A
// nil Sock has nothing to remove.
func (s *Sock) Remove() error {
	if s == nil {
		return nil
	}
	var errs []error
	for name, l := range s.links {
		if err := loader.DetachLink(l); err != nil {
			errs = append(errs, fmt.Errorf("the link of %s: %w", name, err))
		}
	}
	s.links = map[string]link.Link{}
	if s.pinPath != "" {
		errs = append(errs, RemoveSockPins(s.pinPath))
		for _, m := range []*ebpf.Map{s.maps.SockRev4, s.maps.SockRev6, s.maps.SockStats} {
			if m != nil && m.IsPinned() {
				if err := m.Unpin(); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	errs = append(errs, s.Close())
	return errors.Join(errs...)
}

// RemoveSockPins detaches the links pinned under SockDir (the sock
// programs', and the containers' cgroup_skb links below it) and removes the
// folder, for when no Sock is open (bpfnet down). Links are detached in
// the kernel, not only unpinned, so that a process still holding one does
// not keep its program attached.
func RemoveSockPins(pinPath string) error {
	return loader.DetachTree(SockDir(pinPath))
}

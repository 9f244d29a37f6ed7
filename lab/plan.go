// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"regexp"
	"strconv"
)

// Default address plan. The addresses only ever exist inside the lab's
// namespaces, so they cannot collide with the real host's networks.
const (
	defaultBridgeSubnet   = "172.30.%d.0/24"
	defaultExternalSubnet = "10.231.%d.0/24"
)

// ifNameMax is the longest interface name Linux accepts (IFNAMSIZ - 1).
const ifNameMax = 15

// prefixRe restricts prefixes to something that is safe to glob on in
// Cleanup and short enough to leave room in 15-byte link names.
var prefixRe = regexp.MustCompile(`^[a-z][a-z0-9]{2,10}$`)

// suffixRe restricts user-given name suffixes (namespaces, bridges).
var suffixRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

const base36 = "0123456789abcdefghijklmnopqrstuvwxyz"

// NewPrefix returns a fresh per-run prefix: "bn" followed by 4 random base36
// characters, e.g. "bn3k9x". It is 6 bytes long, which leaves room for
// "<prefix>-br0", "<prefix>v12" and the like within the 15-byte limit of
// Linux interface names.
func NewPrefix() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux >= 3.17; never return a
		// constant prefix silently.
		panic(fmt.Sprintf("lab: reading random bytes: %v", err))
	}
	n := binary.LittleEndian.Uint64(b[:])
	out := []byte("bn0000")
	for i := 2; i < len(out); i++ {
		out[i] = base36[n%36]
		n /= 36
	}
	return string(out)
}

// ValidPrefix reports whether p is acceptable as a topology prefix:
// 3 to 11 lowercase letters or digits, starting with a letter.
func ValidPrefix(p string) bool { return prefixRe.MatchString(p) }

// plan is the fully resolved description of a topology: every name and
// address, computed from a Config without touching the kernel.
type plan struct {
	prefix     string
	mtu        int
	host       string // namespace name
	bridges    []bridgePlan
	containers []containerPlan
	externals  []externalPlan
}

type bridgePlan struct {
	name    string
	subnet  *net.IPNet
	gateway net.IP
}

type containerPlan struct {
	ns       string
	bridge   int
	addr     net.IP
	hostVeth string
	peerTmp  string // name of the container end before it becomes eth0
}

type externalPlan struct {
	ns       string
	subnet   *net.IPNet
	addr     net.IP
	hostAddr net.IP
	uplink   string
	peerTmp  string
}

// containerIfName is the name of the container/external end of each veth
// once it sits in its own namespace, as with Docker.
const containerIfName = "eth0"

// makePlan resolves cfg (whose Prefix must already be set) into a plan and
// validates it: name lengths, subnets, address collisions.
func makePlan(cfg Config) (*plan, error) {
	p := &plan{prefix: cfg.Prefix, mtu: cfg.MTU}
	if !ValidPrefix(p.prefix) {
		return nil, fmt.Errorf("invalid prefix %q: want %s", p.prefix, prefixRe)
	}
	if cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("invalid MTU %d: want 68..65535 or 0 for the default", cfg.MTU)
	}
	p.host = p.prefix + "-host"
	nsNames := map[string]bool{p.host: true}
	linkNames := map[string]bool{}
	addLink := func(name string) error {
		if len(name) > ifNameMax {
			return fmt.Errorf("interface name %q is %d bytes, longer than the kernel limit of %d; use a shorter prefix or name", name, len(name), ifNameMax)
		}
		if linkNames[name] {
			return fmt.Errorf("interface name %q used twice", name)
		}
		linkNames[name] = true
		return nil
	}
	addNS := func(suffix, def string) (string, error) {
		if suffix == "" {
			suffix = def
		}
		if !suffixRe.MatchString(suffix) {
			return "", fmt.Errorf("invalid name %q: want lowercase letters, digits and dashes", suffix)
		}
		name := p.prefix + "-" + suffix
		if nsNames[name] {
			return "", fmt.Errorf("namespace name %q used twice", name)
		}
		nsNames[name] = true
		return name, nil
	}
	var used []*net.IPNet

	bridges := cfg.Bridges
	if len(bridges) == 0 {
		bridges = []BridgeConfig{{}}
	}
	for i, bc := range bridges {
		suffix := bc.Name
		if suffix == "" {
			suffix = "br" + strconv.Itoa(i)
		}
		if !suffixRe.MatchString(suffix) {
			return nil, fmt.Errorf("bridge %d: invalid name %q: want lowercase letters, digits and dashes", i, suffix)
		}
		b := bridgePlan{name: p.prefix + "-" + suffix}
		if err := addLink(b.name); err != nil {
			return nil, fmt.Errorf("bridge %d: %w", i, err)
		}
		subnet := bc.Subnet
		if subnet == "" {
			subnet = fmt.Sprintf(defaultBridgeSubnet, i)
		}
		var err error
		if b.subnet, err = parseSubnet(subnet); err != nil {
			return nil, fmt.Errorf("bridge %d: %w", i, err)
		}
		if err := checkOverlap(b.subnet, used); err != nil {
			return nil, fmt.Errorf("bridge %d: %w", i, err)
		}
		used = append(used, b.subnet)
		if b.gateway, err = hostAddr(b.subnet, bc.Gateway, 1); err != nil {
			return nil, fmt.Errorf("bridge %d gateway: %w", i, err)
		}
		p.bridges = append(p.bridges, b)
	}

	externals := cfg.Externals
	if len(externals) == 0 {
		externals = []ExternalConfig{{}}
	}
	for i, ec := range externals {
		e := externalPlan{
			uplink:  p.prefix + "u" + strconv.Itoa(i),
			peerTmp: p.prefix + "q" + strconv.Itoa(i),
		}
		var err error
		if e.ns, err = addNS(ec.Name, "x"+strconv.Itoa(i)); err != nil {
			return nil, fmt.Errorf("external %d: %w", i, err)
		}
		for _, n := range []string{e.uplink, e.peerTmp} {
			if err := addLink(n); err != nil {
				return nil, fmt.Errorf("external %d: %w", i, err)
			}
		}
		subnet := ec.Subnet
		if subnet == "" {
			subnet = fmt.Sprintf(defaultExternalSubnet, i)
		}
		if e.subnet, err = parseSubnet(subnet); err != nil {
			return nil, fmt.Errorf("external %d: %w", i, err)
		}
		if err := checkOverlap(e.subnet, used); err != nil {
			return nil, fmt.Errorf("external %d: %w", i, err)
		}
		used = append(used, e.subnet)
		if e.hostAddr, err = hostAddr(e.subnet, ec.HostAddr, 1); err != nil {
			return nil, fmt.Errorf("external %d host address: %w", i, err)
		}
		if e.addr, err = hostAddr(e.subnet, ec.Addr, 2); err != nil {
			return nil, fmt.Errorf("external %d address: %w", i, err)
		}
		if e.addr.Equal(e.hostAddr) {
			return nil, fmt.Errorf("external %d: address %s is also the host side address", i, e.addr)
		}
		p.externals = append(p.externals, e)
	}

	// Explicit container addresses are reserved first so that automatic
	// ones never collide with them, whatever the order in the config.
	taken := make([]map[string]bool, len(p.bridges))
	for i, b := range p.bridges {
		taken[i] = map[string]bool{b.gateway.String(): true}
	}
	p.containers = make([]containerPlan, len(cfg.Containers))
	for i, cc := range cfg.Containers {
		if cc.Bridge < 0 || cc.Bridge >= len(p.bridges) {
			return nil, fmt.Errorf("container %d: bridge index %d out of range (have %d bridges)", i, cc.Bridge, len(p.bridges))
		}
		c := containerPlan{
			bridge:   cc.Bridge,
			hostVeth: p.prefix + "v" + strconv.Itoa(i),
			peerTmp:  p.prefix + "p" + strconv.Itoa(i),
		}
		var err error
		if c.ns, err = addNS(cc.Name, "c"+strconv.Itoa(i)); err != nil {
			return nil, fmt.Errorf("container %d: %w", i, err)
		}
		for _, n := range []string{c.hostVeth, c.peerTmp} {
			if err := addLink(n); err != nil {
				return nil, fmt.Errorf("container %d: %w", i, err)
			}
		}
		if cc.Addr != "" {
			b := p.bridges[cc.Bridge]
			if c.addr, err = hostAddr(b.subnet, cc.Addr, 0); err != nil {
				return nil, fmt.Errorf("container %d: %w", i, err)
			}
			if taken[cc.Bridge][c.addr.String()] {
				return nil, fmt.Errorf("container %d: address %s already used on bridge %s", i, c.addr, b.name)
			}
			taken[cc.Bridge][c.addr.String()] = true
		}
		p.containers[i] = c
	}
	next := make([]uint32, len(p.bridges))
	for i := range next {
		next[i] = 2
	}
	for i := range p.containers {
		c := &p.containers[i]
		if c.addr != nil {
			continue
		}
		b := p.bridges[c.bridge]
		for {
			ip, err := nthAddr(b.subnet, next[c.bridge])
			if err != nil {
				return nil, fmt.Errorf("container %d: no free address left in %s: %w", i, b.subnet, err)
			}
			next[c.bridge]++
			if !taken[c.bridge][ip.String()] {
				taken[c.bridge][ip.String()] = true
				c.addr = ip
				break
			}
		}
	}
	return p, nil
}

// parseSubnet parses an IPv4 CIDR that has room for a gateway (or host
// side) and at least one more host.
func parseSubnet(s string) (*net.IPNet, error) {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		return nil, fmt.Errorf("parsing subnet %q: %w", s, err)
	}
	if ip.To4() == nil {
		return nil, fmt.Errorf("subnet %q: only IPv4 is supported", s)
	}
	if !ip.Equal(n.IP) {
		return nil, fmt.Errorf("subnet %q has host bits set (did you mean %s?)", s, n)
	}
	if ones, _ := n.Mask.Size(); ones > 30 {
		return nil, fmt.Errorf("subnet %q is too small: want /30 or larger", s)
	}
	n.IP = n.IP.To4()
	return n, nil
}

func checkOverlap(n *net.IPNet, used []*net.IPNet) error {
	for _, u := range used {
		if u.Contains(n.IP) || n.Contains(u.IP) {
			return fmt.Errorf("subnet %s overlaps %s", n, u)
		}
	}
	return nil
}

// hostAddr returns s parsed and checked to be a usable host address of n,
// or the def-th address of n when s is empty.
func hostAddr(n *net.IPNet, s string, def uint32) (net.IP, error) {
	if s == "" {
		return nthAddr(n, def)
	}
	ip := net.ParseIP(s).To4()
	if ip == nil {
		return nil, fmt.Errorf("invalid IPv4 address %q", s)
	}
	if !n.Contains(ip) {
		return nil, fmt.Errorf("address %s is outside subnet %s", ip, n)
	}
	off := binary.BigEndian.Uint32(ip) - binary.BigEndian.Uint32(n.IP)
	if off == 0 || off == hostCount(n)+1 {
		return nil, fmt.Errorf("address %s is the network or broadcast address of %s", ip, n)
	}
	return ip, nil
}

// hostCount is the number of usable host addresses in n.
func hostCount(n *net.IPNet) uint32 {
	ones, bits := n.Mask.Size()
	return 1<<(bits-ones) - 2
}

// nthAddr returns the i-th address of n (1 is the first host address).
func nthAddr(n *net.IPNet, i uint32) (net.IP, error) {
	if i == 0 || i > hostCount(n) {
		return nil, fmt.Errorf("host number %d out of range for %s", i, n)
	}
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, binary.BigEndian.Uint32(n.IP)+i)
	return ip, nil
}

// ownsLink reports whether a link name was made by a topology with this
// prefix: "<prefix>-…" (bridges) or "<prefix>" followed by one of the veth
// kind letters and a number.
func ownsLink(prefix, name string) bool {
	if len(name) <= len(prefix) || name[:len(prefix)] != prefix {
		return false
	}
	rest := name[len(prefix):]
	if rest[0] == '-' {
		return true
	}
	switch rest[0] {
	case 'v', 'p', 'u', 'q':
	default:
		return false
	}
	if len(rest) == 1 {
		return false
	}
	_, err := strconv.ParseUint(rest[1:], 10, 32)
	return err == nil
}

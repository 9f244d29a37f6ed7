// SPDX-License-Identifier: Apache-2.0

// Package rules is the plan of the firewall rules Docker installs for a
// datapath.State with --userland-proxy=false: the chains, their rules and
// the rules' order, as data. It is built once from the State, in pure Go,
// and read by the renderers datapath/iptables (Docker 20.10-28's iptables
// layout) and datapath/nftables (Docker 29's --firewall-backend=nftables
// table), so that both install the same behaviour.
//
// The plan is laid out the way Docker 29 lays out its nftables table,
// which is the most direct statement of what Docker filters: per bridge, a
// chain for packets forwarded into the bridge (ForwardIn), one for packets
// forwarded out of it (ForwardOut), one for packets routed out through it
// (PostroutingIn) and one for packets routed in from it (PostroutingOut);
// one chain of DNAT rules for the published ports (NatLocal) and the raw
// table's drops of direct access (RawPrerouting). A renderer places each
// rule by its Kind. The source allowlists of published ports, which Docker
// does not have, are planned apart (Plan.Allowlists) as the rules a Docker
// user writes by hand, and so is the host's cut-off from isolated networks
// (Plan.HostCutOff), which Docker gets from a bridge without an address.
//
// A plan is of one family: New plans IPv4, NewFamily(s, IPv6) the IPv6
// rules Docker writes with ip6tables=true (ip6tables, the ip6
// docker-bridges table) for the networks with an IPv6 subnet and the
// published ports of IPv6 container addresses. The two differ as Docker's
// do (moby's iptabler and nftabler golden files of each family): an IPv6
// DNAT leaves link-local sources alone, a port bound to ::1 has no
// remote-loopback drop (the kernel never routes ::1 from outside), and
// OUTPUT always sends local destinations to the DNAT rules.
//
// The package needs no kernel and changes nothing.
package rules

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/bpfnet/bpfnet/datapath"
)

// ChainKind names a chain of the plan.
type ChainKind string

const (
	// ForwardIn holds the filter rules of packets forwarded into a bridge.
	ForwardIn ChainKind = "filter-forward-in"
	// ForwardOut holds the filter rules of packets forwarded out of a bridge.
	ForwardOut ChainKind = "filter-forward-out"
	// PostroutingIn holds the source NAT of packets leaving through a bridge.
	PostroutingIn ChainKind = "nat-postrouting-in"
	// PostroutingOut holds the source NAT of packets that came from a bridge.
	PostroutingOut ChainKind = "nat-postrouting-out"
	// NatLocal holds the DNAT rules of the published ports, reached from
	// PREROUTING and OUTPUT for packets to a local address.
	NatLocal ChainKind = "nat-prerouting-and-output"
	// RawPrerouting holds the drops of packets that reach a container's
	// address, or a loopback-bound port, from where they should not.
	RawPrerouting ChainKind = "raw-PREROUTING"
)

// Kind says why a rule is there; renderers place rules by it.
type Kind string

const (
	KindIsolation       Kind = "ISOLATION"                // from another bridge: drop
	KindEstablished     Kind = "ESTABLISHED"              // ct state established,related: accept
	KindInternalIngress Kind = "INTERNAL NETWORK INGRESS" // internal network, from outside it: drop
	KindInternalEgress  Kind = "INTERNAL NETWORK EGRESS"  // internal network, to outside it: drop
	KindICC             Kind = "ICC"                      // between containers of one bridge: accept or drop
	KindPublished       Kind = "PUBLISHED"                // to a published container port: accept
	KindUnpublished     Kind = "UNPUBLISHED PORT DROP"    // into the bridge otherwise: drop
	KindOutgoing        Kind = "OUTGOING"                 // out of the bridge: accept
	KindMasqFromHost    Kind = "MASQUERADE FROM HOST"     // from a local address into the bridge
	KindHairpin         Kind = "MASQ TO OWN PORT"         // a container to its own published port
	KindMasquerade      Kind = "MASQUERADE"               // the subnet leaving the host
	KindDNAT            Kind = "DNAT"                     // a published port
	KindDirectAccess    Kind = "DROP DIRECT ACCESS"       // a published container's address from outside its bridge
	KindDirectTrusted   Kind = "ACCEPT DIRECT ACCESS"     // ... but from a trusted host interface (filter judges the port)
	KindRemoteLoopback  Kind = "DROP REMOTE LOOPBACK"     // a loopback-bound port from outside the host
	KindAllowlist       Kind = "PORT ALLOWLIST"           // a new flow to a published port from a source not in its list: drop
	KindHostCutOffIn    Kind = "ISOLATED FROM HOST"       // isolated: into the host from the bridge: drop
	KindHostCutOffOut   Kind = "HOST TO ISOLATED"         // isolated: from the host into the bridge: drop
	// Gateway modes (datapath.GatewayMode), as Docker 28/29 write them.
	KindICMP        Kind = "ICMP"               // routed: ICMP into the bridge, every type: accept
	KindUnprotected Kind = "UNPROTECTED"        // nat-unprotected: into the bridge otherwise: accept
	KindRoutedReply Kind = "ROUTED ESTABLISHED" // from a routed network, ct established,related: accept
)

// Verdict is what a rule does with a packet it matches.
type Verdict string

const (
	Accept     Verdict = "accept"
	Drop       Verdict = "drop"
	DNAT       Verdict = "dnat"
	Masquerade Verdict = "masquerade"
	// SNAT translates the source to the address of To (host_ipv4).
	SNAT Verdict = "snat"
)

// Match is what a rule matches; zero fields match anything. Each Not*
// flag negates the field next to it.
type Match struct {
	InIface     string
	NotInIface  bool
	OutIface    string
	NotOutIface bool
	Src         netip.Prefix
	NotSrc      bool
	Dst         netip.Prefix
	NotDst      bool
	// SrcLocal matches packets from a local address (addrtype / fib).
	SrcLocal bool
	Proto    datapath.Proto
	DPort    uint16
	// Established matches conntrack states ESTABLISHED and RELATED.
	Established bool
	// New matches the first packet of a flow (conntrack state NEW),
	// translated or not.
	New bool
	// NewDNAT matches the first packet of a flow whose destination was
	// translated (conntrack states NEW and DNAT).
	NewDNAT bool
	// OrigDst and OrigDPort match the flow's destination before DNAT
	// (conntrack --ctorigdst, --ctorigdstport; nft ct original).
	OrigDst   netip.Prefix
	OrigDPort uint16
	// SrcNotIn matches a source in none of the prefixes.
	SrcNotIn []netip.Prefix
	// ICMP matches ICMP, every type (Proto names TCP and UDP only).
	ICMP bool
}

// Rule is one rule of a chain.
type Rule struct {
	Kind    Kind
	Match   Match
	Verdict Verdict
	// To is the DNAT destination, or for SNAT the source address (its
	// port 0).
	To netip.AddrPort
	// Port is the published port the rule exists for (nil for the
	// others); several host ports to one container port share the rules
	// of the container side, which name the first.
	Port *datapath.PortMapping
	// Seq orders the rules of published ports across chains: the index
	// of Port in the state, plus one (0 for the other rules).
	Seq int
}

// Chain is a chain of the plan: its kind, its bridge (for the per-bridge
// kinds) and its rules, in order.
type Chain struct {
	Kind   ChainKind
	Bridge string
	Rules  []Rule
}

// Name is the chain's name in Docker 29's table: the kind, and for a
// per-bridge chain "__" and the bridge.
func (c *Chain) Name() string {
	if c.Bridge == "" {
		return string(c.Kind)
	}
	return string(c.Kind) + "__" + c.Bridge
}

// Family is the IP family of a plan.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Plan is what Docker installs for a State, in one family.
type Plan struct {
	Family Family
	// Networks are the state's, in order; each has its four chains.
	Networks []datapath.Network
	// Chains are NatLocal, RawPrerouting, then for each network
	// ForwardIn, ForwardOut, PostroutingIn and PostroutingOut.
	Chains []*Chain
	// LoopbackPorts is set when a port is bound to a loopback address:
	// OUTPUT then sends packets to 127.0.0.0/8 to NatLocal too.
	LoopbackPorts bool
	// Ports are the state's published ports, in order.
	Ports []datapath.PortMapping
	// Allowlists are the source allowlists of the published ports
	// (PortMapping.Allow), by protocol, host port and host address, as a Docker user writes them
	// by hand, since Docker has none: rules in DOCKER-USER (iptables) or
	// in a forward chain of one's own before Docker's (nftables) that
	// drop the first packet of a flow DNATed from the port's host port
	// whose source is not in the list. Established flows pass, and so do
	// the host's own connections, which never cross FORWARD.
	//
	// A routed network maps nothing on the host: its container ports
	// come after, one rule per container port (Match.New, no NewDNAT)
	// for a new flow from outside the bridge into it, whose list is the
	// union of its bindings' lists; a binding without a list opens the
	// port to all, and it has no rule (routedAllowRules).
	Allowlists []Rule
	// HostCutOff keeps the host off each isolated network, in filter
	// INPUT (from the bridge: KindHostCutOffIn) and OUTPUT (into it:
	// KindHostCutOffOut), the gateway's address included. Docker 28 and
	// 29 write no such rule: they give an isolated network's bridge no
	// address, so that the host has no route to it and its containers
	// none to the host. A bridge that has one (Docker 20.10's, this
	// datapath's State) needs the rules to the same effect.
	HostCutOff []Rule
}

// Chain returns the plan's chain of a kind and bridge, or nil.
func (p *Plan) Chain(kind ChainKind, bridge string) *Chain {
	for _, c := range p.Chains {
		if c.Kind == kind && c.Bridge == bridge {
			return c
		}
	}
	return nil
}

// host32 is the prefix of one address (a /32, or a /128 for IPv6).
func host32(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// linkLocal6 are the IPv6 sources Docker does not DNAT ("! -s fe80::/10",
// "ip6 saddr != fe80::/10").
var linkLocal6 = netip.MustParsePrefix("fe80::/10")

// New builds the IPv4 plan of s, which must be valid (s.Validate).
func New(s datapath.State) (*Plan, error) { return NewFamily(s, IPv4) }

// NewFamily builds the plan of s of one family. The IPv6 plan's Networks
// are the state's networks with an IPv6 subnet, seen in IPv6: each one's
// Subnet, Gateway, HostIPv4 and GatewayMode are its Subnet6, Gateway6,
// HostIPv6 and GatewayModeIPv6; its Ports are those to IPv6 container
// addresses. The IPv4 plan's Ports are those to IPv4 ones.
func NewFamily(s datapath.State, fam Family) (*Plan, error) {
	s = View(s, fam)
	p := &Plan{Family: fam, Networks: slices.Clone(s.Networks), Ports: slices.Clone(s.Ports)}
	// Docker's IPv6 OUTPUT rule has no loopback exclusion: ::1 is
	// DNATed as any local address.
	p.LoopbackPorts = fam == IPv6
	nat := &Chain{Kind: NatLocal}
	raw := &Chain{Kind: RawPrerouting}
	p.Chains = append(p.Chains, nat, raw)
	in := map[string]*Chain{}
	post := map[string]*Chain{}
	for _, n := range s.Networks {
		br := n.Bridge
		fin := &Chain{Kind: ForwardIn, Bridge: br}
		fout := &Chain{Kind: ForwardOut, Bridge: br}
		pin := &Chain{Kind: PostroutingIn, Bridge: br}
		pout := &Chain{Kind: PostroutingOut, Bridge: br}
		p.Chains = append(p.Chains, fin, fout, pin, pout)
		in[br], post[br] = fin, pin
		if !n.Internal && n.GatewayMode != datapath.GatewayRouted {
			// Networks do not reach each other (Docker's
			// DOCKER-ISOLATION-STAGE-1/2); internal networks are
			// cut off by their own rules. A routed network is
			// filtered like the outside instead ("-A
			// DOCKER-ISOLATION-STAGE-1 -o br -j RETURN"), and the
			// answers of its containers cross back ("-A
			// DOCKER-ISOLATION-STAGE-1 -i br -m conntrack --ctstate
			// RELATED,ESTABLISHED -j ACCEPT").
			for _, o := range s.Networks {
				if o.Bridge != br && !o.Internal {
					if o.GatewayMode == datapath.GatewayRouted {
						fin.Rules = append(fin.Rules, Rule{Kind: KindRoutedReply, Match: Match{InIface: o.Bridge, Established: true}, Verdict: Accept})
					}
					fin.Rules = append(fin.Rules, Rule{Kind: KindIsolation, Match: Match{InIface: o.Bridge}, Verdict: Drop})
				}
			}
		}
		fin.Rules = append(fin.Rules, Rule{Kind: KindEstablished, Match: Match{Established: true}, Verdict: Accept})
		fout.Rules = append(fout.Rules, Rule{Kind: KindEstablished, Match: Match{Established: true}, Verdict: Accept})
		if n.GatewayMode == datapath.GatewayRouted {
			// Docker 28's "-A DOCKER -o br -p icmp -j ACCEPT"
			// (setICMP), Docker 29's "ip protocol icmp accept
			// comment ICMP".
			fin.Rules = append(fin.Rules, Rule{Kind: KindICMP, Match: Match{ICMP: true}, Verdict: Accept})
		}
		icc := Accept
		if n.NoICC {
			icc = Drop
		}
		if n.GatewayMode == datapath.GatewayIsolated {
			p.HostCutOff = append(p.HostCutOff,
				Rule{Kind: KindHostCutOffIn, Match: Match{InIface: br}, Verdict: Drop},
				Rule{Kind: KindHostCutOffOut, Match: Match{OutIface: br}, Verdict: Drop})
		}
		if n.Internal {
			fin.Rules = append(fin.Rules,
				Rule{Kind: KindInternalIngress, Match: Match{InIface: br, NotInIface: true}, Verdict: Drop},
				Rule{Kind: KindICC, Verdict: icc})
			fout.Rules = append(fout.Rules, Rule{Kind: KindInternalEgress, Match: Match{OutIface: br, NotOutIface: true}, Verdict: Drop})
			continue
		}
		fin.Rules = append(fin.Rules, Rule{Kind: KindICC, Match: Match{InIface: br}, Verdict: icc})
		fout.Rules = append(fout.Rules, Rule{Kind: KindOutgoing, Verdict: Accept})
		if n.GatewayMode == datapath.GatewayRouted {
			// No NAT at all: no MASQUERADE rule of the network
			// (moby setupIPTablesInternal skips it for routed).
			continue
		}
		pin.Rules = append(pin.Rules, Rule{Kind: KindMasqFromHost, Match: Match{SrcLocal: true}, Verdict: Masquerade})
		if n.Masquerade {
			// With host_ipv4, Docker's SNAT --to-source that address
			// instead of MASQUERADE.
			masq := Rule{Kind: KindMasquerade, Match: Match{OutIface: br, NotOutIface: true, Src: n.Subnet.Masked()}, Verdict: Masquerade}
			if n.HostIPv4.IsValid() {
				masq.Verdict, masq.To = SNAT, netip.AddrPortFrom(n.HostIPv4, 0)
			}
			pout.Rules = append(pout.Rules, masq)
		}
	}

	// Several host ports may lead to one container port, and one
	// container may publish several: their container-side rules are
	// written once.
	seen := map[string]bool{}
	once := func(k string) bool {
		if seen[k] {
			return false
		}
		seen[k] = true
		return true
	}
	for i := range p.Ports {
		m := &p.Ports[i]
		seq := i + 1
		n, ok := networkOf(s.Networks, m.ContainerIP)
		if !ok {
			return nil, fmt.Errorf("port %s: container address %s is in none of the networks", m, m.ContainerIP)
		}
		if n.GatewayMode == datapath.GatewayRouted {
			// Docker maps nothing on the host for a routed network
			// (no DNAT, no MASQUERADE of the hairpin: moby
			// attemptBindHostPorts skips the mapping); the container
			// port is accepted into the bridge, as in nat mode.
			cport := fmt.Sprintf("%s:%d/%s", m.ContainerIP, m.ContainerPort, m.Proto)
			if once("in " + cport) {
				in[n.Bridge].Rules = append(in[n.Bridge].Rules, Rule{Kind: KindPublished,
					Match: Match{Dst: host32(m.ContainerIP), Proto: m.Proto, DPort: m.ContainerPort}, Verdict: Accept, Port: m, Seq: seq})
			}
			continue
		}
		if len(m.Allow) > 0 {
			p.Allowlists = append(p.Allowlists, allowRule(m, seq, fam))
		}
		if m.HostIP.IsLoopback() {
			p.LoopbackPorts = true
		}
		dnat := Rule{Kind: KindDNAT, Match: Match{Proto: m.Proto, DPort: m.HostPort}, Verdict: DNAT,
			To: netip.AddrPortFrom(m.ContainerIP, m.ContainerPort), Port: m, Seq: seq}
		if fam == IPv6 {
			dnat.Match.Src, dnat.Match.NotSrc = linkLocal6, true
		}
		if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
			dnat.Match.Dst = host32(m.HostIP)
		}
		nat.Rules = append(nat.Rules, dnat)
		cport := fmt.Sprintf("%s:%d/%s", m.ContainerIP, m.ContainerPort, m.Proto)
		if once("in " + cport) {
			fin := in[n.Bridge]
			acc := Rule{Kind: KindPublished, Match: Match{Dst: host32(m.ContainerIP), Proto: m.Proto, DPort: m.ContainerPort}, Verdict: Accept, Port: m, Seq: seq}
			if n.GatewayMode != datapath.GatewayNATUnprotected {
				// nat-unprotected accepts every port (below):
				// Docker's setPerPortIptables writes no rule.
				fin.Rules = append(fin.Rules, acc)
			}
			post[n.Bridge].Rules = append(post[n.Bridge].Rules, Rule{Kind: KindHairpin,
				Match:   Match{Src: host32(m.ContainerIP), Dst: host32(m.ContainerIP), Proto: m.Proto, DPort: m.ContainerPort},
				Verdict: Masquerade, Port: m, Seq: seq})
		}
		// Docker drops packets to a published container's address
		// that come from outside its bridge unless the network is
		// routed (here: not masqueraded), nat-unprotected (Docker 28/29
		// write no DROP DIRECT ACCESS there) or the daemon allows direct
		// routing, before any NAT. The network's trusted host
		// interfaces are accepted first, as the bridge is; the filter
		// rules then let them reach the published ports only.
		if n.Masquerade && n.GatewayMode == datapath.GatewayNAT && !s.AllowDirectRouting && once("direct "+m.ContainerIP.String()) {
			for _, name := range n.Trusted() {
				raw.Rules = append(raw.Rules, Rule{Kind: KindDirectTrusted,
					Match: Match{Dst: host32(m.ContainerIP), InIface: name}, Verdict: Accept, Port: m, Seq: seq})
			}
			raw.Rules = append(raw.Rules, Rule{Kind: KindDirectAccess,
				Match: Match{Dst: host32(m.ContainerIP), InIface: n.Bridge, NotInIface: true}, Verdict: Drop, Port: m, Seq: seq})
		}
		if m.HostIP.IsLoopback() && fam == IPv4 {
			raw.Rules = append(raw.Rules, Rule{Kind: KindRemoteLoopback,
				Match: Match{InIface: "lo", NotInIface: true, Dst: host32(m.HostIP), Proto: m.Proto, DPort: m.HostPort}, Verdict: Drop, Port: m, Seq: seq})
		}
	}
	for _, n := range s.Networks {
		if !n.Internal {
			fin := in[n.Bridge]
			if n.GatewayMode == datapath.GatewayNATUnprotected {
				// Docker 28's "-A DOCKER ! -i br -o br -j ACCEPT"
				// (setDefaultForwardRule), 29's "accept comment
				// UNPROTECTED".
				fin.Rules = append(fin.Rules, Rule{Kind: KindUnprotected, Verdict: Accept})
				continue
			}
			fin.Rules = append(fin.Rules, Rule{Kind: KindUnpublished, Verdict: Drop})
		}
	}
	// Ordered by host binding, not by the ports' order: the rules of two
	// bindings match disjoint flows, and an order that republishing a
	// port does not change lets the incremental renderers keep the other
	// rules where they are.
	slices.SortStableFunc(p.Allowlists, func(a, b Rule) int {
		x, y := a.Port, b.Port
		if x.Proto != y.Proto {
			return int(x.Proto) - int(y.Proto)
		}
		if x.HostPort != y.HostPort {
			return int(x.HostPort) - int(y.HostPort)
		}
		return a.Match.OrigDst.Addr().Compare(b.Match.OrigDst.Addr())
	})
	p.Allowlists = append(p.Allowlists, routedAllowRules(s, p.Ports)...)
	return p, nil
}

// routedAllowRules are the allowlist rules of the published container
// ports of routed networks, ordered by container address, protocol and
// port. The bindings of a container port open that one port (the host
// port is ignored), so a source may open a flow to it when one binding
// would let it in: the union of their lists, no rule when one has none.
// This is what the bindings give on a nat network, where each host port
// leads to the container port behind its own list, and what the eBPF
// datapath's routed_ports holds (datapath/allow.go, routedAllow).
func routedAllowRules(s datapath.State, ms []datapath.PortMapping) []Rule {
	type key struct {
		addr  netip.Addr
		proto datapath.Proto
		port  uint16
	}
	var order []key
	rs := map[key]*Rule{}
	open := map[key]bool{}
	for i := range ms {
		m := &ms[i]
		n, ok := networkOf(s.Networks, m.ContainerIP)
		if !ok || n.GatewayMode != datapath.GatewayRouted {
			continue
		}
		k := key{m.ContainerIP, m.Proto, m.ContainerPort}
		if len(m.Allow) == 0 {
			open[k] = true
		}
		r, ok := rs[k]
		if !ok {
			r = &Rule{Kind: KindAllowlist, Verdict: Drop, Port: m, Seq: i + 1, Match: Match{
				InIface: n.Bridge, NotInIface: true, OutIface: n.Bridge,
				Dst: host32(m.ContainerIP), Proto: m.Proto, DPort: m.ContainerPort, New: true,
			}}
			rs[k] = r
			order = append(order, k)
		}
		for _, a := range m.Allow {
			if a.Addr().Is6() == m.ContainerIP.Is6() {
				r.Match.SrcNotIn = append(r.Match.SrcNotIn, a.Masked())
			}
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		return int(a.port) - int(b.port)
	})
	var out []Rule
	for _, k := range order {
		if open[k] {
			continue
		}
		r := rs[k]
		r.Match.SrcNotIn = outermost(r.Match.SrcNotIn)
		out = append(out, *r)
	}
	return out
}

// outermost sorts ps and leaves out the prefixes another of them covers:
// a union of lists, whose anonymous nft set may hold no overlapping
// intervals.
func outermost(ps []netip.Prefix) []netip.Prefix {
	sortPrefixes(ps)
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(o netip.Prefix) bool { return o.Bits() <= p.Bits() && o.Contains(p.Addr()) }) {
			out = append(out, p)
		}
	}
	return out
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

// View is s as the plan of family fam sees it: for IPv4, s with its
// ports to IPv4 containers; for IPv6, its networks with an IPv6 subnet,
// their IPv6 fields in the place of the IPv4 ones, their endpoints'
// Addr6 as Addr, and its ports to IPv6 containers.
func View(s datapath.State, fam Family) datapath.State {
	v := s
	v.Ports = nil
	for _, m := range s.Ports {
		if m.ContainerIP.Is6() == (fam == IPv6) {
			v.Ports = append(v.Ports, m)
		}
	}
	if fam == IPv4 {
		return v
	}
	v.Networks, v.Endpoints = nil, nil
	has6 := map[string]bool{}
	for _, n := range s.Networks {
		if !n.Subnet6.IsValid() {
			continue
		}
		has6[n.Name] = true
		n.Subnet, n.Gateway, n.HostIPv4, n.GatewayMode = n.Subnet6, n.Gateway6, n.HostIPv6, n.GatewayModeIPv6
		n.Subnet6, n.Gateway6, n.HostIPv6 = netip.Prefix{}, netip.Addr{}, netip.Addr{}
		v.Networks = append(v.Networks, n)
	}
	for _, e := range s.Endpoints {
		if has6[e.Network] && e.Addr6.IsValid() {
			e.Addr, e.Addr6 = e.Addr6, netip.Addr{}
			v.Endpoints = append(v.Endpoints, e)
		}
	}
	return v
}

// allowRule is the allowlist rule of m, the seq-th port, in family fam:
// the prefixes of the other family are left out (no source of fam is in
// them), so a list of none of fam drops every new flow, failing closed.
func allowRule(m *datapath.PortMapping, seq int, fam Family) Rule {
	r := Rule{Kind: KindAllowlist, Verdict: Drop, Port: m, Seq: seq, Match: Match{
		Dst: host32(m.ContainerIP), Proto: m.Proto, DPort: m.ContainerPort,
		NewDNAT: true, OrigDPort: m.HostPort,
	}}
	if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
		r.Match.OrigDst = host32(m.HostIP)
	}
	for _, a := range m.Allow {
		if a.Addr().Is6() == (fam == IPv6) {
			r.Match.SrcNotIn = append(r.Match.SrcNotIn, a.Masked())
		}
	}
	sortPrefixes(r.Match.SrcNotIn)
	r.Match.SrcNotIn = slices.Compact(r.Match.SrcNotIn)
	return r
}

// networkOf returns the network an address belongs to.
func networkOf(nets []datapath.Network, a netip.Addr) (datapath.Network, bool) {
	i := slices.IndexFunc(nets, func(n datapath.Network) bool { return n.Subnet.Contains(a) })
	if i < 0 {
		return datapath.Network{}, false
	}
	return nets[i], true
}

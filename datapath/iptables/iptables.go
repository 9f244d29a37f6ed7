// SPDX-License-Identifier: Apache-2.0

// Package iptables is the iptables implementation of datapath.Datapath:
// the rules Docker 20.10-28 installs with --userland-proxy=false, rendered
// from the plan of package datapath/rules into chains of its own, and
// applied with iptables-restore, one table at a time; the IPv6 rules of
// dual-stack networks (Docker's ip6tables=true) go the same way through
// ip6tables-restore. It works with the nft and the legacy iptables
// backends; it needs the iptables binaries and the nat, filter and raw
// tables, and for IPv6 the ip6tables ones.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
	"github.com/bpfnet/bpfnet/datapath/rules/sysctl"
)

// Options are the settings of the iptables datapath.
type Options struct {
	// ChainPrefix starts the name of every chain the datapath creates, so
	// that it never touches anyone else's (default "BPFNET-": the chains
	// are BPFNET-DOCKER, BPFNET-DOCKER-USER, BPFNET-ISOLATION-STAGE-1 and
	// BPFNET-ISOLATION-STAGE-2). At most 11 letters, digits, '-' or '_',
	// since iptables limits chain names to 28 bytes.
	ChainPrefix string
	// Comment marks the rules the datapath puts in built-in chains
	// (-m comment --comment <Comment>); Apply and Remove recognise their
	// own rules there by it (default "bpfnet"). Two datapaths in one
	// namespace need different prefixes and comments.
	Comment string
	// Netns is the path of the network namespace to work in (such as
	// /run/netns/NAME); "" is the calling thread's namespace.
	Netns string
	// Restore and Save are the iptables-restore and iptables-save binaries
	// (default "iptables-restore" and "iptables-save", the nft backend on
	// Debian; "iptables-legacy-restore" and "iptables-legacy-save" for the
	// legacy one).
	Restore, Save string
	// Restore6 and Save6 are the ip6tables ones (default: Restore and
	// Save with "iptables" turned into "ip6tables"). Without them, a
	// state with IPv6 is refused.
	Restore6, Save6 string
}

// Iptables is the iptables implementation of Datapath: the rules Docker
// 20.10 installs with --userland-proxy=false, in chains of its own.
//
// For each state it writes the nat and filter tables with one
// `iptables-restore --noflush` run each: the run flushes and refills the
// datapath's chains and deletes and re-inserts its rules in the built-in
// chains, so each table changes atomically. When the second table fails,
// the first is put back as it was.
//
// The nat table gets:
//
//	PREROUTING  -m addrtype --dst-type LOCAL -j DOCKER
//	OUTPUT      ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
//	            (without the loopback exclusion when a port is bound to a
//	            loopback address)
//	POSTROUTING -s <subnet> ! -o <bridge> -j MASQUERADE   (masqueraded networks)
//	POSTROUTING -o <bridge> -m addrtype --src-type LOCAL -j MASQUERADE
//	POSTROUTING -s <cip>/32 -d <cip>/32 -p <proto> --dport <cport> -j MASQUERADE
//	DOCKER      [-d <hostIP>/32] -p <proto> --dport <hport> -j DNAT --to-destination <cip>:<cport>
//
// one DNAT rule per published port, ranges included. As Docker does in
// hairpin mode (no userland proxy), DOCKER has no `-i <bridge> -j RETURN`
// and the DNAT rules no `! -i <bridge>`: containers reach published ports
// through the host's addresses by the same rules.
//
// The filter table gets:
//
//	FORWARD -j DOCKER-USER
//	FORWARD -j ISOLATION-STAGE-1
//	FORWARD -o <bridge> -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//	FORWARD -o <bridge> -j DOCKER
//	FORWARD -i <bridge> ! -o <bridge> -j ACCEPT
//	FORWARD -i <bridge> -o <bridge> -j ACCEPT   (DROP with enable_icc=false)
//	DOCKER  -d <cip>/32 ! -i <bridge> -o <bridge> -p <proto> --dport <cport> -j ACCEPT
//	DOCKER  ! -i <bridge> -o <bridge> -j DROP
//	ISOLATION-STAGE-1 -i <bridge> ! -o <bridge> -j ISOLATION-STAGE-2, then RETURN
//	ISOLATION-STAGE-2 -o <bridge> -j DROP, then RETURN
//	DOCKER-USER -s <prefix> -d <cip>/32 -p <proto> --dport <cport> -m conntrack --ctstate NEW -m conntrack --ctstate DNAT [--ctorigdst <hostIP>] --ctorigdstport <hport> -j RETURN
//	DOCKER-USER -d <cip>/32 -p <proto> --dport <cport> -m conntrack --ctstate NEW -m conntrack --ctstate DNAT [--ctorigdst <hostIP>] --ctorigdstport <hport> -j DROP
//	DOCKER-USER -s <prefix> -d <cip>/32 ! -i <bridge> -o <bridge> -p <proto> --dport <cport> -m conntrack --ctstate NEW -j RETURN   (routed)
//	DOCKER-USER -d <cip>/32 ! -i <bridge> -o <bridge> -p <proto> --dport <cport> -m conntrack --ctstate NEW -j DROP                 (routed)
//	DOCKER-USER -j RETURN
//	INPUT  -i <bridge> -j DROP   (isolated)
//	OUTPUT -o <bridge> -j DROP   (isolated)
//
// The rules before DOCKER-USER's RETURN are the source allowlists of
// published ports (one RETURN per allowed prefix, then a DROP), which
// Docker does not have: what a Docker user writes in DOCKER-USER by hand
// to the same effect (rules.Plan.Allowlists). On a routed network, which
// maps nothing on the host, they judge new flows into the bridge to the
// container port, whose list is the union of its bindings' lists.
//
// INPUT's and OUTPUT's drops keep the host off an isolated network
// (rules.Plan.HostCutOff): Docker 28 gives its bridge no address, which
// this datapath's bridges have.
//
// The DROP closing DOCKER stands for the FORWARD policy DROP that Docker
// sets when it turns forwarding on, confined to traffic into the bridges
// (it is the rule Docker 28 adds), so that unpublished container ports are
// not reachable from outside whatever the host's FORWARD policy.
//
// An internal network gets neither the isolation stages nor DOCKER, but
// the two drops of Docker's internal networks at the top of ISOLATION-STAGE-1:
//
//	ISOLATION-STAGE-1 ! -s <subnet> -o <bridge> -j DROP
//	ISOLATION-STAGE-1 ! -d <subnet> -i <bridge> -j DROP
//
// The raw table gets Docker's drops of direct access, before any NAT:
//
//	PREROUTING -d <cip>/32 ! -i <bridge> -j DROP   (a masqueraded container with a published port)
//	PREROUTING -d 127.0.0.1/32 ! -i lo -p <proto> --dport <hport> -j DROP   (a port bound to loopback)
//
// Rules in built-in chains go at their top, in the order above, and carry
// the comment of Options.Comment.
//
// IPv6: the networks with an IPv6 subnet get the same rules in the
// ip6tables tables, with their IPv6 subnet and the published ports of
// IPv6 container addresses (rules.NewFamily), as Docker 28 writes them
// with ip6tables=true: the DNAT rules carry "! -s fe80::/10", OUTPUT has
// no loopback exclusion, a routed network's ICMP rule is "-p ipv6-icmp"
// and a port on ::1 has no raw drop (the kernel never routes ::1 in).
// Both families are written in one Apply, IPv4 first; a table that fails
// puts back every table written before it, of both families. Without the
// ip6tables binaries a state with IPv6 is refused.
//
// Apply also sets net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1
// for a dual-stack state) and, on the bridges of containers
// with a port bound to a loopback address, net.ipv4.conf.<bridge>.route_localnet=1
// (needed to route 127.0.0.1-sourced packets out of the bridge), which Remove
// sets back. Uplinks and HostAddrs of the State are not used: MASQUERADE
// takes the address of the interface a packet leaves by, and wildcard ports
// answer on every local address (addrtype LOCAL), as with Docker.
type Datapath struct {
	opts Options

	mu sync.Mutex
	// kernel holds the sysctls Apply set, to set them back.
	kernel *sysctl.Settings
	// applied is the last state applied (nil before the first Apply and
	// after Remove); PublishPorts and UnpublishPorts change it.
	applied *datapath.State
	// no6 says why the ip6tables binaries cannot be used (nil when they
	// can): IPv6 tables are then neither read nor written, and a state
	// with IPv6 is refused.
	no6 error
}

var _ datapath.Datapath = (*Datapath)(nil)

var (
	chainPrefixRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,10}$`)
	commentRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)
)

// Suffixes of the chains the datapath creates.
const (
	chainDocker = "DOCKER"
	chainUser   = "DOCKER-USER"
	chainIso1   = "ISOLATION-STAGE-1"
	chainIso2   = "ISOLATION-STAGE-2"
)

// New checks the options and that the binaries are there. Nothing
// is changed until Apply.
func New(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	if !chainPrefixRe.MatchString(opts.ChainPrefix) {
		return nil, fmt.Errorf("iptables chain prefix %q: want 1 to 11 letters, digits, '-' or '_'", opts.ChainPrefix)
	}
	if !commentRe.MatchString(opts.Comment) {
		return nil, fmt.Errorf("iptables comment %q: want 1 to 64 letters, digits, '_', '.', ':' or '-'", opts.Comment)
	}
	bins := []string{opts.Restore, opts.Save}
	if opts.Netns != "" {
		if _, err := os.Stat(opts.Netns); err != nil {
			return nil, fmt.Errorf("network namespace: %w", err)
		}
		bins = append(bins, "nsenter")
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("iptables datapath: %w", err)
		}
	}
	d := &Datapath{opts: opts, kernel: sysctl.New(opts.Netns)}
	_, err1 := exec.LookPath(opts.Restore6)
	_, err2 := exec.LookPath(opts.Save6)
	if err := errors.Join(err1, err2); err != nil {
		d.no6 = fmt.Errorf("iptables datapath: IPv6 needs %s and %s: %w", opts.Restore6, opts.Save6, err)
	}
	return d, nil
}

// withDefaults fills in the unset options.
func (o Options) withDefaults() Options {
	if o.ChainPrefix == "" {
		o.ChainPrefix = "BPFNET-"
	}
	if o.Comment == "" {
		o.Comment = "bpfnet"
	}
	if o.Restore == "" {
		o.Restore = "iptables-restore"
	}
	if o.Save == "" {
		o.Save = "iptables-save"
	}
	if o.Restore6 == "" {
		o.Restore6 = strings.Replace(o.Restore, "iptables", "ip6tables", 1)
	}
	if o.Save6 == "" {
		o.Save6 = strings.Replace(o.Save, "iptables", "ip6tables", 1)
	}
	return o
}

func (d *Datapath) Name() string { return "iptables" }

// PublishesIPv6 is true: the IPv6 ports go to the IPv6 tables.
func (d *Datapath) PublishesIPv6() bool { return true }

// Close does nothing: the rules stay and keep forwarding.
func (d *Datapath) Close() error { return nil }

// ipRule is a rule: its chain and its arguments, written the way
// iptables-save prints them back.
type ipRule struct {
	chain, spec string
}

// ipTable is the part of a table that belongs to the datapath.
type ipTable struct {
	name string
	// chains are the datapath's own chains.
	chains []string
	// builtin are its rules in built-in chains, in order.
	builtin []ipRule
	// rules fill its own chains, in order.
	rules []ipRule
}

func (t *ipTable) empty() bool {
	return len(t.chains) == 0 && len(t.builtin) == 0 && len(t.rules) == 0
}

var builtinChains = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// Tables in the order Apply writes them: filter first, so that a new
// port's ACCEPT is in place when its DNAT appears.
var ipTables = []string{"filter", "nat", "raw"}

// famTable names a table of one family: the IPv4 one (iptables) or the
// IPv6 one (ip6tables).
type famTable struct {
	fam   rules.Family
	table string
}

func (t famTable) String() string {
	if t.fam == rules.IPv6 {
		return "ip6 " + t.table
	}
	return t.table
}

// tableSet are the datapath's parts of every table of both families.
type tableSet map[famTable]*ipTable

// families are the families the datapath reads and writes.
func (d *Datapath) families() []rules.Family {
	if d.no6 != nil {
		return []rules.Family{rules.IPv4}
	}
	return []rules.Family{rules.IPv4, rules.IPv6}
}

// hasIPv6 tells whether s has anything for the IPv6 tables.
func hasIPv6(s datapath.State) bool {
	v := rules.View(s, rules.IPv6)
	return len(v.Networks) > 0 || len(v.Ports) > 0
}

// ownChains returns the chains the datapath creates in a table.
func (o *Options) ownChains(table string) []string {
	p := o.ChainPrefix
	switch table {
	case "nat":
		return []string{p + chainDocker}
	case "raw":
		return nil
	}
	// In name order, as iptables-save lists them.
	return []string{p + chainDocker, p + chainUser, p + chainIso1, p + chainIso2}
}

// ifaceArg checks that an interface name can be written into
// iptables-restore input as one argument; iptables checks the rest.
func ifaceArg(name string) error {
	if name == "" || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!") ||
		strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"'#\`, r) }) {
		return fmt.Errorf("interface name %q cannot be written in an iptables rule", name)
	}
	return nil
}

// tables computes the IPv4 rules for s, by table.
func (o *Options) tables(s datapath.State) (map[string]*ipTable, error) {
	return o.familyTables(s, rules.IPv4)
}

// allTables computes the rules of the families fams for s (which must be
// valid).
func (o *Options) allTables(s datapath.State, fams []rules.Family) (tableSet, error) {
	out := tableSet{}
	for _, fam := range fams {
		ts, err := o.familyTables(s, fam)
		if err != nil {
			return nil, err
		}
		for name, t := range ts {
			out[famTable{fam, name}] = t
		}
	}
	return out, nil
}

// familyTables computes the rules of one family for s: the plan of
// package rules, written in Docker's iptables (or ip6tables) layout.
func (o *Options) familyTables(s datapath.State, fam rules.Family) (map[string]*ipTable, error) {
	for _, n := range s.Networks {
		for _, name := range append([]string{n.Bridge}, n.Trusted()...) {
			if err := ifaceArg(name); err != nil {
				return nil, fmt.Errorf("network %s: %w", n.Name, err)
			}
		}
	}
	plan, err := rules.NewFamily(s, fam)
	if err != nil {
		return nil, err
	}
	icmp := "icmp"
	if fam == rules.IPv6 {
		icmp = "ipv6-icmp" // as ip6tables-save prints -p icmpv6
	}
	p := o.ChainPrefix
	docker, user, iso1, iso2 := p+chainDocker, p+chainUser, p+chainIso1, p+chainIso2
	mark := "-m comment --comment " + o.Comment
	nat := &ipTable{name: "nat", chains: o.ownChains("nat")}
	filter := &ipTable{name: "filter", chains: o.ownChains("filter")}
	raw := &ipTable{name: "raw"}

	nat.builtin = append(nat.builtin, ipRule{"PREROUTING", "-m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	if plan.LoopbackPorts {
		nat.builtin = append(nat.builtin, ipRule{"OUTPUT", "-m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	} else {
		nat.builtin = append(nat.builtin, ipRule{"OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	}
	filter.builtin = append(filter.builtin,
		ipRule{"FORWARD", mark + " -j " + user},
		ipRule{"FORWARD", mark + " -j " + iso1})
	// Rules of published ports, in the order of the state's ports.
	var hairpin, published []rules.Rule
	var isoIn, iso1Rules, iso2Rules []ipRule
	// With a routed network, every bridge's jump to DOCKER comes before
	// any bridge's ACCEPT of what leaves it, as in Docker 28's
	// DOCKER-FORWARD ("-m set --match-set docker-ext-bridges-v4 dst -j
	// DOCKER" first): another network's packet into a routed one must
	// meet its port rules. Without one, Docker 20.10's per-bridge order.
	routedNet := slices.ContainsFunc(plan.Networks, func(n datapath.Network) bool { return n.GatewayMode == datapath.GatewayRouted })
	var leaving []ipRule
	for _, n := range plan.Networks {
		br := n.Bridge
		for _, r := range plan.Chain(rules.PostroutingOut, br).Rules {
			if r.Kind == rules.KindMasquerade && r.Verdict == rules.SNAT {
				nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-s %s ! -o %s %s -j SNAT --to-source %s", r.Match.Src, br, mark, r.To.Addr())})
			} else if r.Kind == rules.KindMasquerade {
				nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-s %s ! -o %s %s -j MASQUERADE", r.Match.Src, br, mark)})
			}
		}
		for _, r := range plan.Chain(rules.PostroutingIn, br).Rules {
			switch r.Kind {
			case rules.KindMasqFromHost:
				nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-o %s -m addrtype --src-type LOCAL %s -j MASQUERADE", br, mark)})
			case rules.KindHairpin:
				hairpin = append(hairpin, r)
			}
		}
		for _, r := range plan.Chain(rules.ForwardIn, br).Rules {
			switch r.Kind {
			case rules.KindEstablished:
				if !n.Internal {
					filter.builtin = append(filter.builtin,
						ipRule{"FORWARD", fmt.Sprintf("-o %s -m conntrack --ctstate RELATED,ESTABLISHED %s -j ACCEPT", br, mark)},
						ipRule{"FORWARD", fmt.Sprintf("-o %s %s -j %s", br, mark, docker)})
				}
			case rules.KindInternalIngress:
				// IPv6: Docker's "! -i br -o br" (moby
				// setupInternalNetworkRules), so that Neighbour
				// Discovery and link-local traffic bridged between
				// the network's containers is not dropped.
				in := ""
				if fam == rules.IPv6 {
					in = "! -i " + br + " "
				}
				isoIn = append(isoIn, ipRule{iso1, fmt.Sprintf("! -s %s %s-o %s -j DROP", n.Subnet.Masked(), in, br)})
			case rules.KindPublished:
				published = append(published, r)
			case rules.KindIsolation:
				// Written below as the two isolation stages.
			}
		}
		for _, r := range plan.Chain(rules.ForwardOut, br).Rules {
			switch r.Kind {
			case rules.KindOutgoing:
				leaving = append(leaving, ipRule{"FORWARD", fmt.Sprintf("-i %s ! -o %s %s -j ACCEPT", br, br, mark)})
			case rules.KindInternalEgress:
				out := ""
				if fam == rules.IPv6 {
					out = " ! -o " + br
				}
				isoIn = append(isoIn, ipRule{iso1, fmt.Sprintf("! -d %s -i %s%s -j DROP", n.Subnet.Masked(), br, out)})
			}
		}
		for _, r := range plan.Chain(rules.ForwardIn, br).Rules {
			if r.Kind == rules.KindICC {
				leaving = append(leaving, ipRule{"FORWARD", fmt.Sprintf("-i %s -o %s %s -j %s", br, br, mark, target(r.Verdict))})
			}
		}
		if !routedNet {
			filter.builtin = append(filter.builtin, leaving...)
			leaving = nil
		}
		if !n.Internal {
			iso1Rules = append(iso1Rules, ipRule{iso1, fmt.Sprintf("-i %s ! -o %s -j %s", br, br, iso2)})
			iso2Rules = append(iso2Rules, ipRule{iso2, fmt.Sprintf("-o %s -j DROP", br)})
		}
	}
	filter.builtin = append(filter.builtin, leaving...)
	filter.rules = append(filter.rules, isoIn...)
	// A routed network: its containers' answers cross the isolation,
	// and packets into it skip it (the DOCKER chain filters them).
	for _, n := range plan.Networks {
		if n.GatewayMode == datapath.GatewayRouted && !n.Internal {
			filter.rules = append(filter.rules,
				ipRule{iso1, fmt.Sprintf("-i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", n.Bridge)},
				ipRule{iso1, fmt.Sprintf("-o %s -j RETURN", n.Bridge)})
		}
	}
	filter.rules = append(filter.rules, iso1Rules...)
	filter.rules = append(filter.rules, ipRule{iso1, "-j RETURN"})
	filter.rules = append(filter.rules, iso2Rules...)
	filter.rules = append(filter.rules, ipRule{iso2, "-j RETURN"})
	filter.rules = append(filter.rules, allowRules(user, plan.Allowlists)...)
	// INPUT's before FORWARD's and OUTPUT's after, as iptables-save
	// lists the built-in chains.
	var cutIn []ipRule
	for _, r := range plan.HostCutOff {
		switch r.Kind {
		case rules.KindHostCutOffIn:
			cutIn = append(cutIn, ipRule{"INPUT", fmt.Sprintf("-i %s %s -j DROP", r.Match.InIface, mark)})
		case rules.KindHostCutOffOut:
			filter.builtin = append(filter.builtin, ipRule{"OUTPUT", fmt.Sprintf("-o %s %s -j DROP", r.Match.OutIface, mark)})
		}
	}
	filter.builtin = append(cutIn, filter.builtin...)
	filter.rules = append(filter.rules, ipRule{user, "-j RETURN"})

	bySeq := func(a, b rules.Rule) int { return a.Seq - b.Seq }
	slices.SortStableFunc(hairpin, bySeq)
	slices.SortStableFunc(published, bySeq)
	for _, r := range hairpin {
		m := r.Port
		nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-s %s -d %s -p %s -m %s --dport %d %s -j MASQUERADE",
			r.Match.Src, r.Match.Dst, m.Proto, m.Proto, r.Match.DPort, mark)})
	}
	for _, r := range plan.Chain(rules.NatLocal, "").Rules {
		dst := ""
		if r.Match.Src.IsValid() && r.Match.NotSrc {
			// IPv6: Docker's "! -s fe80::/10".
			dst = fmt.Sprintf("! -s %s ", r.Match.Src)
		}
		if r.Match.Dst.IsValid() {
			dst += fmt.Sprintf("-d %s ", r.Match.Dst)
		}
		nat.rules = append(nat.rules, ipRule{docker, fmt.Sprintf("%s-p %s -m %s --dport %d -j DNAT --to-destination %s",
			dst, r.Match.Proto, r.Match.Proto, r.Match.DPort, r.To)})
	}
	for _, r := range published {
		n, _ := networkOf(plan.Networks, r.Match.Dst.Addr())
		filter.rules = append(filter.rules, ipRule{docker, fmt.Sprintf("-d %s ! -i %s -o %s -p %s -m %s --dport %d -j ACCEPT",
			r.Match.Dst, n.Bridge, n.Bridge, r.Match.Proto, r.Match.Proto, r.Match.DPort)})
	}
	// Each network's default, after every published port's ACCEPT:
	// DROP, or ACCEPT for nat-unprotected (setDefaultForwardRule); a
	// routed network's ICMP ACCEPT comes right before it (setICMP).
	for _, n := range plan.Networks {
		for _, r := range plan.Chain(rules.ForwardIn, n.Bridge).Rules {
			switch r.Kind {
			case rules.KindICMP:
				filter.rules = append(filter.rules, ipRule{docker, fmt.Sprintf("-o %s -p %s -j ACCEPT", n.Bridge, icmp)})
			}
		}
		for _, r := range plan.Chain(rules.ForwardIn, n.Bridge).Rules {
			switch r.Kind {
			case rules.KindUnpublished, rules.KindUnprotected:
				filter.rules = append(filter.rules, ipRule{docker, fmt.Sprintf("! -i %s -o %s -j %s", n.Bridge, n.Bridge, target(r.Verdict))})
			}
		}
	}
	for _, r := range plan.Chain(rules.RawPrerouting, "").Rules {
		switch r.Kind {
		case rules.KindDirectTrusted:
			raw.builtin = append(raw.builtin, ipRule{"PREROUTING", fmt.Sprintf("-d %s -i %s %s -j ACCEPT", r.Match.Dst, r.Match.InIface, mark)})
		case rules.KindDirectAccess:
			raw.builtin = append(raw.builtin, ipRule{"PREROUTING", fmt.Sprintf("-d %s ! -i %s %s -j DROP", r.Match.Dst, r.Match.InIface, mark)})
		case rules.KindRemoteLoopback:
			raw.builtin = append(raw.builtin, ipRule{"PREROUTING", fmt.Sprintf("-d %s ! -i %s -p %s -m %s --dport %d %s -j DROP",
				r.Match.Dst, r.Match.InIface, r.Match.Proto, r.Match.Proto, r.Match.DPort, mark)})
		}
	}
	// Chain by chain, in the order iptables-save prints them back.
	for _, t := range []*ipTable{nat, filter} {
		slices.SortStableFunc(t.rules, func(a, b ipRule) int {
			return slices.Index(t.chains, a.chain) - slices.Index(t.chains, b.chain)
		})
	}
	return map[string]*ipTable{"nat": nat, "filter": filter, "raw": raw}, nil
}

// allowRules are the source allowlists of the published ports as a
// Docker user writes them in DOCKER-USER: for each port, a RETURN per
// allowed prefix and a DROP, all matching only the first packet of a flow
// DNATed from that host port to that container port, or for a routed
// network's, of a flow from outside its bridge to that container port.
func allowRules(user string, rs []rules.Rule) []ipRule {
	var out []ipRule
	for _, r := range rs {
		m := r.Match
		var match string
		if m.NewDNAT {
			orig := ""
			if m.OrigDst.IsValid() {
				orig = "--ctorigdst " + m.OrigDst.Addr().String() + " "
			}
			match = fmt.Sprintf("-d %s -p %s -m %s --dport %d -m conntrack --ctstate NEW -m conntrack --ctstate DNAT %s--ctorigdstport %d",
				m.Dst, m.Proto, m.Proto, m.DPort, orig, m.OrigDPort)
		} else {
			match = fmt.Sprintf("-d %s ! -i %s -o %s -p %s -m %s --dport %d -m conntrack --ctstate NEW",
				m.Dst, m.InIface, m.OutIface, m.Proto, m.Proto, m.DPort)
		}
		for _, p := range m.SrcNotIn {
			out = append(out, ipRule{user, fmt.Sprintf("-s %s %s -j RETURN", p, match)})
		}
		out = append(out, ipRule{user, match + " -j DROP"})
	}
	return out
}

// target is the iptables target of a verdict without arguments.
func target(v rules.Verdict) string {
	if v == rules.Drop {
		return "DROP"
	}
	return "ACCEPT"
}

// networkOf returns the network an address belongs to.
func networkOf(nets []datapath.Network, a netip.Addr) (datapath.Network, bool) {
	i := slices.IndexFunc(nets, func(n datapath.Network) bool { return n.Subnet.Contains(a) })
	if i < 0 {
		return datapath.Network{}, false
	}
	return nets[i], true
}

// restoreInput is the iptables-restore --noflush input that turns have
// (what the table holds of the datapath now) into want. Declaring a chain
// that exists flushes it; the old rules in built-in chains are deleted by
// their exact text and the new ones inserted at the top; chains no longer
// wanted are deleted last, when nothing refers to them.
func restoreInput(want, have *ipTable) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", want.name)
	for _, c := range want.chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	var drop []string
	for _, c := range have.chains {
		if !slices.Contains(want.chains, c) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
			drop = append(drop, c)
		}
	}
	for _, r := range have.builtin {
		fmt.Fprintf(&b, "-D %s %s\n", r.chain, r.spec)
	}
	pos := map[string]int{}
	for _, r := range want.builtin {
		pos[r.chain]++
		fmt.Fprintf(&b, "-I %s %d %s\n", r.chain, pos[r.chain], r.spec)
	}
	for _, r := range want.rules {
		fmt.Fprintf(&b, "-A %s %s\n", r.chain, r.spec)
	}
	for _, c := range drop {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// parseSave extracts from iptables-save output of one table what belongs
// to the datapath: its chains with their rules, and the rules with its
// comment in built-in chains.
func (o *Options) parseSave(table, out string) *ipTable {
	t := &ipTable{name: table}
	own := o.ownChains(table)
	in := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			in = line == "*"+table
		case !in:
		case line == "COMMIT":
			in = false
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if slices.Contains(own, name) {
				t.chains = append(t.chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			if slices.Contains(own, chain) {
				t.rules = append(t.rules, ipRule{chain, spec})
			} else if slices.Contains(builtinChains[table], chain) && o.marked(spec) {
				t.builtin = append(t.builtin, ipRule{chain, spec})
			}
		}
	}
	return t
}

// marked reports whether a rule carries the datapath's comment.
func (o *Options) marked(spec string) bool {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "--comment" && (f[i+1] == o.Comment || f[i+1] == `"`+o.Comment+`"`) {
			return true
		}
	}
	return false
}

// command runs name with args in the datapath's namespace.
func (d *Datapath) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d.opts.Netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + d.opts.Netns, "--", name}, args...)...)
}

// bins are the save and restore binaries of a family.
func (o *Options) bins(fam rules.Family) (save, restore string) {
	if fam == rules.IPv6 {
		return o.Save6, o.Restore6
	}
	return o.Save, o.Restore
}

// snapshot reads what a table holds of the datapath.
func (d *Datapath) snapshot(ctx context.Context, t famTable) (*ipTable, error) {
	var stderr bytes.Buffer
	save, _ := d.opts.bins(t.fam)
	cmd := d.command(ctx, save, "-t", t.table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("reading the %s table with %s: %w: %s", t, save, err, strings.TrimSpace(stderr.String()))
	}
	return d.opts.parseSave(t.table, string(out)), nil
}

var restoreLineRe = regexp.MustCompile(`line:? (\d+)`)

// restore feeds input to iptables-restore (ip6tables-restore) --noflush
// in one run.
func (d *Datapath) restore(ctx context.Context, t famTable, input string) error {
	var stderr bytes.Buffer
	_, restore := d.opts.bins(t.fam)
	cmd := d.command(ctx, restore, "-w", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if m := restoreLineRe.FindStringSubmatch(msg); m != nil {
			if n, _ := strconv.Atoi(m[1]); n >= 1 {
				if lines := strings.Split(input, "\n"); n <= len(lines) {
					msg += fmt.Sprintf(" (input line %d: %s)", n, lines[n-1])
				}
			}
		}
		return fmt.Errorf("writing the %s table with %s: %w: %s", t, restore, err, msg)
	}
	return nil
}

// order is the order tables are written in: each family's in the order
// of ipTables, IPv4 first.
func (d *Datapath) order() []famTable {
	var out []famTable
	for _, fam := range d.families() {
		for _, table := range ipTables {
			out = append(out, famTable{fam, table})
		}
	}
	return out
}

// write brings each table from have to want, in order. When a table
// fails, those already written (of either family) are put back as they
// were.
func (d *Datapath) write(ctx context.Context, want, have tableSet) error {
	var done []famTable
	for _, t := range d.order() {
		w, h := want.get(t), have.get(t)
		if w.empty() && h.empty() {
			continue
		}
		if err := d.restore(ctx, t, restoreInput(w, h)); err != nil {
			for _, prev := range slices.Backward(done) {
				// The rollback must run even when ctx is what failed.
				if rerr := d.restore(context.Background(), prev, restoreInput(have.get(prev), want.get(prev))); rerr != nil {
					err = errors.Join(err, fmt.Errorf("putting the %s table back: %w", prev, rerr))
				}
			}
			return err
		}
		done = append(done, t)
	}
	return nil
}

// get is the set's part of table t, an empty one if it has none.
func (ts tableSet) get(t famTable) *ipTable {
	if x := ts[t]; x != nil {
		return x
	}
	return &ipTable{name: t.table}
}

func (d *Datapath) snapshots(ctx context.Context) (tableSet, error) {
	have := tableSet{}
	for _, t := range d.order() {
		x, err := d.snapshot(ctx, t)
		if err != nil {
			return nil, err
		}
		have[t] = x
	}
	return have, nil
}

// Apply replaces the datapath's rules with those of s. An invalid s
// changes nothing; a table iptables-restore rejects is left as it was, with
// iptables' message in the error.
func (d *Datapath) Apply(ctx context.Context, s datapath.State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := datapath.CheckHostIPv4In(d.opts.Netns, s); err != nil {
		return err
	}
	if d.no6 != nil && hasIPv6(s) {
		return d.no6
	}
	// The IPv6 tables are written only for a state with IPv6: Docker's
	// jumps would otherwise create ip6tables tables on a host that has
	// none. What an earlier state left there is in the snapshot, and
	// write removes it.
	fams := []rules.Family{rules.IPv4}
	if hasIPv6(s) {
		fams = d.families()
	}
	want, err := d.opts.allTables(s, fams)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	have, err := d.snapshots(ctx)
	if err != nil {
		return err
	}
	if err := d.write(ctx, want, have); err != nil {
		return err
	}
	s.Ports = slices.Clone(s.Ports)
	d.applied = &s
	return d.kernel.Apply(s)
}

// Remove deletes the datapath's rules from the built-in chains, then its
// chains, and sets back the route_localnet values Apply changed. Other
// rules and chains are left alone; ip_forward stays on.
func (d *Datapath) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx := context.Background()
	have, err := d.snapshots(ctx)
	if err != nil {
		return err
	}
	err = d.write(ctx, tableSet{}, have)
	d.applied = nil
	return errors.Join(err, d.kernel.Restore())
}

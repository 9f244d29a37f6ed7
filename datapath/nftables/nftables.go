// SPDX-License-Identifier: Apache-2.0

// Package nftables is a datapath.Datapath made of the table Docker 29
// installs with --firewall-backend=nftables and --userland-proxy=false,
// rendered from the plan of package datapath/rules: one `ip` table, verdict
// maps by bridge name that send forwarded and NATed packets to per-bridge
// chains, one chain of DNAT rules for the published ports, and the raw
// table's drops of direct access, as in moby's
// integration/network/bridge/nftablesdoc. Three base chains of its own
// hold what Docker has no rule for: the published ports' source
// allowlists (user-forward-allowlists) and the host's cut-off from
// isolated networks (user-input-isolated, user-output-isolated).
//
// The IPv6 half of dual-stack networks is an `ip6` table of the same
// name and layout, as Docker 29's `ip6 docker-bridges` (moby's nftabler
// golden files of the ip6 family): IPv6 addresses, DNAT not of fe80::/10
// sources, nat-OUTPUT without the loopback exclusion, a routed network's
// ICMP rule of ipv6-icmp. It is written in the same transaction as the
// `ip` one, and only for a state with IPv6.
//
// It needs the nft binary (package nftables) and a kernel with nf_tables,
// fib and nat expressions (for IPv6, of the ip6 family); it leaves every
// other table alone.
package nftables

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

// Options are the settings of the nftables datapath.
type Options struct {
	// Table is the name of the datapath's `ip` table (default
	// "bpfnet-bridges": Docker's layout under a name of its own, so that
	// it never replaces the docker-bridges table of a Docker on the same
	// host). Apply replaces it whole and Remove deletes it.
	Table string
	// Netns is the path of the network namespace to work in (such as
	// /run/netns/NAME); "" is the calling thread's namespace.
	Netns string
	// Nft is the nft binary (default "nft").
	Nft string
}

var tableRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)

func (o Options) withDefaults() Options {
	if o.Table == "" {
		o.Table = "bpfnet-bridges"
	}
	if o.Nft == "" {
		o.Nft = "nft"
	}
	return o
}

// Datapath is the nftables implementation of datapath.Datapath.
//
// Every Apply writes the whole table with one `nft -f -` run: the input
// creates the table, deletes it and declares it anew, which nft commits as
// one transaction, so packets see either the old table or the new one.
// The text input is used rather than netlink expressions built with
// github.com/google/nftables because it is the very syntax Docker's
// nftablesdoc documents (fib, ct, verdict maps), which keeps the
// rendering reviewable rule by rule against it, and nft checks it the same
// way. PublishPorts and UnpublishPorts change only the rules of the
// ports given, by handle, in one transaction too.
//
// Like the iptables datapath, Apply sets net.ipv4.ip_forward=1
// (net.ipv6.conf.all.forwarding=1 for a dual-stack state) and
// route_localnet on the bridges of containers with a port bound to a
// loopback address, which Remove sets back.
type Datapath struct {
	opts Options

	mu sync.Mutex
	// kernel holds the sysctls Apply set, to set them back.
	kernel *sysctl.Settings
	// applied is the last state applied (nil before the first Apply and
	// after Remove); handles are the kernel's handles of its rules, by
	// chain and rule text.
	applied *datapath.State
	handles map[ruleKey]uint64
}

var (
	_ datapath.Datapath      = (*Datapath)(nil)
	_ datapath.PortPublisher = (*Datapath)(nil)
)

// New checks the options and that nft is there. Nothing is changed until
// Apply.
func New(opts Options) (*Datapath, error) {
	opts = opts.withDefaults()
	if !tableRe.MatchString(opts.Table) {
		return nil, fmt.Errorf("nftables table %q: want a letter, then up to 63 letters, digits, '-' or '_'", opts.Table)
	}
	bins := []string{opts.Nft}
	if opts.Netns != "" {
		if _, err := os.Stat(opts.Netns); err != nil {
			return nil, fmt.Errorf("network namespace: %w", err)
		}
		bins = append(bins, "nsenter")
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("nftables datapath: %w", err)
		}
	}
	return &Datapath{opts: opts, kernel: sysctl.New(opts.Netns)}, nil
}

func (d *Datapath) Name() string { return "nftables" }

// Table is the name of the datapath's table.
func (d *Datapath) Table() string { return d.opts.Table }

// PublishesIPv6 is true: the IPv6 ports go to the IPv6 tables.
func (d *Datapath) PublishesIPv6() bool { return true }

// Close does nothing: the table stays and keeps forwarding.
func (d *Datapath) Close() error { return nil }

// chain is a chain as written: its name, its base-chain header ("" for a
// regular chain) and its rules in nft's listing syntax.
type chain struct {
	name, header string
	rules        []string
}

// ruleset is the table of a plan: its verdict maps and its chains.
type ruleset struct {
	fam    family
	maps   [][2]string // name, elements
	chains []*chain
}

// family is an nftables family, and the keyword of its addresses in a
// rule: "ip" (ip saddr) or "ip6" (ip6 saddr).
type family string

const (
	famIP  family = "ip"
	famIP6 family = "ip6"
)

func familyOf(f rules.Family) family {
	if f == rules.IPv6 {
		return famIP6
	}
	return famIP
}

// key is the name of a chain in the maps of Rules and want: the chain's
// name in the ip table, "ip6 " and its name in the ip6 one.
func (f family) key(chain string) string {
	if f == famIP6 {
		return "ip6 " + chain
	}
	return chain
}

// splitKey is key's inverse.
func splitKey(k string) (family, string) {
	if c, ok := strings.CutPrefix(k, "ip6 "); ok {
		return famIP6, c
	}
	return famIP, k
}

// The verdict maps and the per-bridge chain kinds they jump to.
var vmaps = []struct {
	name string
	kind rules.ChainKind
}{
	{"filter-forward-in-jumps", rules.ForwardIn},
	{"filter-forward-out-jumps", rules.ForwardOut},
	{"nat-postrouting-in-jumps", rules.PostroutingIn},
	{"nat-postrouting-out-jumps", rules.PostroutingOut},
}

// ifname checks that an interface name can be written in quotes.
func ifname(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"'\`, r) }) {
		return fmt.Errorf("interface name %q cannot be written in an nftables rule", name)
	}
	return nil
}

// render writes the plan as Docker 29's table of the plan's family.
func render(p *rules.Plan) (*ruleset, error) {
	rs := &ruleset{fam: familyOf(p.Family)}
	for _, n := range p.Networks {
		for _, name := range append([]string{n.Bridge}, n.Trusted()...) {
			if err := ifname(name); err != nil {
				return nil, fmt.Errorf("network %s: %w", n.Name, err)
			}
		}
	}
	for _, m := range vmaps {
		var el []string
		for _, n := range p.Networks {
			el = append(el, fmt.Sprintf("%q : jump %s__%s", n.Bridge, m.kind, n.Bridge))
		}
		rs.maps = append(rs.maps, [2]string{m.name, strings.Join(el, ", ")})
	}
	local := "fib daddr type local counter jump " + string(rules.NatLocal)
	output := string(rs.fam) + " daddr != 127.0.0.0/8 " + local
	if p.LoopbackPorts {
		output = local
	}
	rs.chains = append(rs.chains,
		&chain{"filter-FORWARD", "type filter hook forward priority filter; policy accept;",
			[]string{"oifname vmap @filter-forward-in-jumps", "iifname vmap @filter-forward-out-jumps"}},
		&chain{"nat-OUTPUT", "type nat hook output priority -100; policy accept;", []string{output}},
		&chain{"nat-POSTROUTING", "type nat hook postrouting priority srcnat; policy accept;",
			[]string{"iifname vmap @nat-postrouting-out-jumps", "oifname vmap @nat-postrouting-in-jumps"}},
		&chain{"nat-PREROUTING", "type nat hook prerouting priority dstnat; policy accept;", []string{local}})
	rs.chains = append(rs.chains, allowChain(rs.fam, p.Allowlists))
	rs.chains = append(rs.chains, cutOffChains(p.HostCutOff)...)
	for _, c := range p.Chains {
		out := &chain{name: c.Name()}
		if c.Kind == rules.RawPrerouting {
			out.header = "type filter hook prerouting priority raw; policy accept;"
		}
		for _, r := range c.Rules {
			out.rules = append(out.rules, ruleText(rs.fam, r))
		}
		rs.chains = append(rs.chains, out)
	}
	return rs, nil
}

// allowChainName is the chain of the published ports' source allowlists.
const allowChainName = "user-forward-allowlists"

// allowChain holds the source allowlists of the published ports, which
// Docker does not have, as a Docker 29 user writes them by hand: a base
// chain at the forward hook just before Docker's (priority filter - 1),
// one rule per port that drops the first packet of a flow DNATed from
// that host port whose source is in none of the prefixes, or for a
// routed network's container port (which no host port maps), of a flow
// from outside its bridge to that port. Established flows, and the host's
// own connections (which never cross forward), pass.
//
// An IPv6 port whose list has no IPv6 prefix (lists are IPv4 for now)
// has no source match: every new flow to it is dropped.
func allowChain(fam family, rs []rules.Rule) *chain {
	c := &chain{name: allowChainName, header: "type filter hook forward priority filter - 1; policy accept;"}
	ip := string(fam)
	for _, r := range rs {
		m := r.Match
		var f []string
		if m.NewDNAT {
			f = []string{ip + " daddr " + host(m.Dst), fmt.Sprintf("%s dport %d", m.Proto, m.DPort), "ct state new", "ct status dnat"}
			if m.OrigDst.IsValid() {
				f = append(f, "ct original "+ip+" daddr "+host(m.OrigDst))
			}
			f = append(f, fmt.Sprintf("ct original proto-dst %d", m.OrigDPort))
		} else {
			f = []string{fmt.Sprintf("iifname != %q oifname %q %s daddr %s %s dport %d ct state new",
				m.InIface, m.OutIface, ip, host(m.Dst), m.Proto, m.DPort)}
		}
		var el []string
		for _, p := range m.SrcNotIn {
			el = append(el, host(p))
		}
		switch len(el) {
		case 0:
		case 1:
			f = append(f, ip+" saddr != "+el[0])
		default:
			f = append(f, ip+" saddr != { "+strings.Join(el, ", ")+" }")
		}
		f = append(f, "counter", string(r.Verdict), fmt.Sprintf("comment %q", string(r.Kind)))
		c.rules = append(c.rules, strings.Join(f, " "))
	}
	return c
}

// Chains of the host's cut-off from isolated networks.
const (
	cutOffInName  = "user-input-isolated"
	cutOffOutName = "user-output-isolated"
)

// cutOffChains keep the host off the isolated networks (rules.Plan.HostCutOff),
// which Docker 29 does by giving their bridges no address: base chains
// at the input and output hooks that drop what comes from such a bridge
// to the host and what the host sends into it. They are there, empty,
// without an isolated network, so that the table's chains do not depend
// on the networks' modes.
func cutOffChains(rs []rules.Rule) []*chain {
	in := &chain{name: cutOffInName, header: "type filter hook input priority filter; policy accept;"}
	out := &chain{name: cutOffOutName, header: "type filter hook output priority filter; policy accept;"}
	for _, r := range rs {
		switch r.Kind {
		case rules.KindHostCutOffIn:
			in.rules = append(in.rules, fmt.Sprintf("iifname %q counter drop comment %q", r.Match.InIface, string(r.Kind)))
		case rules.KindHostCutOffOut:
			out.rules = append(out.rules, fmt.Sprintf("oifname %q counter drop comment %q", r.Match.OutIface, string(r.Kind)))
		}
	}
	return []*chain{in, out}
}

// host is a prefix as nft prints it: a single address without its /32.
func host(p netip.Prefix) string {
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}

// ruleText is a rule in nft's listing syntax (without counter values),
// so that a listing of the table reads back as the text written.
func ruleText(fam family, r rules.Rule) string {
	var f []string
	ip := string(fam)
	neq := func(not bool) string {
		if not {
			return "!= "
		}
		return ""
	}
	m := r.Match
	if m.InIface != "" {
		f = append(f, fmt.Sprintf("iifname %s%q", neq(m.NotInIface), m.InIface))
	}
	if m.OutIface != "" {
		f = append(f, fmt.Sprintf("oifname %s%q", neq(m.NotOutIface), m.OutIface))
	}
	if m.Src.IsValid() {
		f = append(f, ip+" saddr "+neq(m.NotSrc)+host(m.Src))
	}
	if m.Dst.IsValid() {
		f = append(f, ip+" daddr "+neq(m.NotDst)+host(m.Dst))
	}
	if m.SrcLocal {
		f = append(f, "fib saddr type local")
	}
	if m.Established {
		f = append(f, "ct state established,related")
	}
	if m.ICMP && fam == famIP6 {
		f = append(f, "meta l4proto ipv6-icmp")
	} else if m.ICMP {
		f = append(f, "ip protocol icmp")
	}
	if m.Proto != 0 {
		f = append(f, fmt.Sprintf("%s dport %d", m.Proto, m.DPort))
	}
	f = append(f, "counter")
	switch r.Verdict {
	case rules.DNAT:
		f = append(f, "dnat to "+r.To.String())
	case rules.SNAT:
		f = append(f, "snat to "+r.To.Addr().String())
	default:
		f = append(f, string(r.Verdict))
	}
	f = append(f, fmt.Sprintf("comment %q", string(r.Kind)))
	return strings.Join(f, " ")
}

// text is the table block of the ruleset.
func (rs *ruleset) text(table string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", rs.fam, table)
	for _, m := range rs.maps {
		fmt.Fprintf(&b, "\tmap %s {\n\t\ttype ifname : verdict\n", m[0])
		if m[1] != "" {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", m[1])
		}
		b.WriteString("\t}\n")
	}
	for _, c := range rs.chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if c.header != "" {
			fmt.Fprintf(&b, "\t\t%s\n", c.header)
		}
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// ruleKey names a rule by its chain (family.key) and text.
type ruleKey struct{ chain, rule string }

// command runs name with args in the datapath's namespace.
func (d *Datapath) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d.opts.Netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + d.opts.Netns, "--", name}, args...)...)
}

// nft runs `nft -e -a -f -` with input, one transaction, and returns the
// handles of the rules it added, from its echo.
func (d *Datapath) nft(ctx context.Context, input string) (map[ruleKey]uint64, error) {
	var stderr bytes.Buffer
	cmd := d.command(ctx, d.opts.Nft, "-e", "-a", "-f", "-")
	cmd.Stdin = strings.NewReader(input)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nft -f: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return d.parseHandles(string(out)), nil
}

var (
	countersRe = regexp.MustCompile(`(^| )counter packets \d+ bytes \d+`)
	handleRe   = regexp.MustCompile(` # handle (\d+)$`)
	positionRe = regexp.MustCompile(`^(?:index|position|handle) \d+ `)
)

// parseHandles reads `add rule ip TABLE CHAIN RULE # handle N` lines (nft's
// echo) into handles by chain and rule text.
func (d *Datapath) parseHandles(out string) map[ruleKey]uint64 {
	h := map[ruleKey]uint64{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		var rest string
		var ok bool
		fam := famIP
		for _, p := range []struct {
			prefix string
			fam    family
		}{
			{"add rule ip " + d.opts.Table + " ", famIP}, {"insert rule ip " + d.opts.Table + " ", famIP},
			{"add rule ip6 " + d.opts.Table + " ", famIP6}, {"insert rule ip6 " + d.opts.Table + " ", famIP6},
		} {
			if rest, ok = strings.CutPrefix(line, p.prefix); ok {
				fam = p.fam
				break
			}
		}
		if !ok {
			continue
		}
		m := handleRe.FindStringSubmatch(rest)
		if m == nil {
			continue
		}
		rest = strings.TrimSuffix(rest, m[0])
		ch, rule, _ := strings.Cut(rest, " ")
		rule = positionRe.ReplaceAllString(rule, "")
		n, _ := strconv.ParseUint(m[1], 10, 64)
		h[ruleKey{fam.key(ch), normalize(rule)}] = n
	}
	return h
}

// normalize drops the counter values of a rule as nft prints it.
func normalize(rule string) string {
	return countersRe.ReplaceAllString(strings.TrimSpace(rule), "${1}counter")
}

// Apply replaces the datapath's table with that of s. An invalid s, or a
// table nft rejects, changes nothing.
func (d *Datapath) Apply(ctx context.Context, s datapath.State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := datapath.CheckHostIPv4In(d.opts.Netns, s); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applyLocked(ctx, s)
}

// applyLocked writes the tables of s, valid, with d.mu held.
func (d *Datapath) applyLocked(ctx context.Context, s datapath.State) error {
	rss, err := renderState(s)
	if err != nil {
		return err
	}
	t := d.opts.Table
	// Both tables in one transaction; the ip6 one is only written for
	// a state with IPv6, and deleted otherwise.
	input := clearTables(t)
	for _, rs := range rss {
		input += rs.text(t)
	}
	h, err := d.nft(ctx, input)
	if err != nil {
		return err
	}
	s.Ports = slices.Clone(s.Ports)
	d.applied, d.handles = &s, h
	return d.kernel.Apply(s)
}

// clearTables is the nft input that deletes the datapath's tables of
// both families, whether they exist or not.
func clearTables(t string) string {
	return fmt.Sprintf("add table ip %s\ndelete table ip %s\nadd table ip6 %s\ndelete table ip6 %s\n", t, t, t, t)
}

// renderState renders the plans of s: the ip table, and the ip6 one
// when s has IPv6 networks or ports.
func renderState(s datapath.State) ([]*ruleset, error) {
	fams := []rules.Family{rules.IPv4}
	if hasIPv6(s) {
		fams = append(fams, rules.IPv6)
	}
	var out []*ruleset
	for _, fam := range fams {
		p, err := rules.NewFamily(s, fam)
		if err != nil {
			return nil, err
		}
		rs, err := render(p)
		if err != nil {
			return nil, err
		}
		out = append(out, rs)
	}
	return out, nil
}

// hasIPv6 tells whether s has anything for the ip6 table.
func hasIPv6(s datapath.State) bool {
	v := rules.View(s, rules.IPv6)
	return len(v.Networks) > 0 || len(v.Ports) > 0
}

// Remove deletes the datapath's tables (ip and ip6), and nothing else,
// and sets back the route_localnet values Apply changed; ip_forward
// stays on.
func (d *Datapath) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.opts.Table
	_, err := d.nft(context.Background(), clearTables(t))
	if err == nil {
		d.applied, d.handles = nil, nil
	}
	return errors.Join(err, d.kernel.Restore())
}

// Rules lists the datapath's tables as nft holds them: by chain (the ip6
// table's named "ip6 <chain>"), the rules in order, without counter
// values and handles (nil when there is no table).
func (d *Datapath) Rules(ctx context.Context) (map[string][]string, error) {
	var got map[string][]string
	for _, fam := range []family{famIP, famIP6} {
		var stderr bytes.Buffer
		cmd := d.command(ctx, d.opts.Nft, "list", "table", string(fam), d.opts.Table)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			if strings.Contains(stderr.String(), "No such file or directory") {
				continue
			}
			return nil, fmt.Errorf("nft list table %s: %w: %s", fam, err, strings.TrimSpace(stderr.String()))
		}
		if got == nil {
			got = map[string][]string{}
		}
		for c, rs := range parseListing(fam, string(out)) {
			got[c] = rs
		}
	}
	return got, nil
}

// parseListing reads the chains' rules of an `nft list table` output of
// family fam, by family.key.
func parseListing(fam family, out string) map[string][]string {
	got := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "chain "):
			cur = fam.key(strings.TrimSuffix(strings.TrimPrefix(line, "chain "), " {"))
			got[cur] = []string{}
		case line == "}":
			cur = ""
		case cur == "" || line == "" || strings.HasPrefix(line, "type "):
		default:
			got[cur] = append(got[cur], normalize(line))
		}
	}
	return got
}

// want is what Rules returns once s is applied.
func want(s datapath.State) (map[string][]string, error) {
	rss, err := renderState(s)
	if err != nil {
		return nil, err
	}
	w := map[string][]string{}
	for _, rs := range rss {
		for _, c := range rs.chains {
			w[rs.fam.key(c.name)] = append([]string{}, c.rules...)
		}
	}
	return w, nil
}

// networkOf returns the network an address belongs to.
func networkOf(nets []datapath.Network, a netip.Addr) (datapath.Network, bool) {
	i := slices.IndexFunc(nets, func(n datapath.Network) bool { return n.Subnet.Contains(a) })
	if i < 0 {
		return datapath.Network{}, false
	}
	return nets[i], true
}

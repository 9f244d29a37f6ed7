// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// IptablesOptions are the settings of the iptables datapath.
type IptablesOptions struct {
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
//	FORWARD -i <bridge> -o <bridge> -j ACCEPT
//	DOCKER  -d <cip>/32 ! -i <bridge> -o <bridge> -p <proto> --dport <cport> -j ACCEPT
//	DOCKER  ! -i <bridge> -o <bridge> -j DROP
//	ISOLATION-STAGE-1 -i <bridge> ! -o <bridge> -j ISOLATION-STAGE-2, then RETURN
//	ISOLATION-STAGE-2 -o <bridge> -j DROP, then RETURN
//	DOCKER-USER -j RETURN
//
// The DROP closing DOCKER stands for the FORWARD policy DROP that Docker
// sets when it turns forwarding on, confined to traffic into the bridges
// (it is the rule Docker 28 adds), so that unpublished container ports are
// not reachable from outside whatever the host's FORWARD policy.
//
// Rules in built-in chains go at their top, in the order above, and carry
// the comment of IptablesOptions.Comment.
//
// Apply also sets net.ipv4.ip_forward=1 and, on the bridges of containers
// with a port bound to a loopback address, net.ipv4.conf.<bridge>.route_localnet=1
// (needed to route 127.0.0.1-sourced packets out of the bridge), which Remove
// sets back. Uplinks and HostAddrs of the State are not used: MASQUERADE
// takes the address of the interface a packet leaves by, and wildcard ports
// answer on every local address (addrtype LOCAL), as with Docker.
type Iptables struct {
	opts IptablesOptions

	mu sync.Mutex
	// localnet holds, by bridge, the route_localnet value Apply found
	// before setting it to 1.
	localnet map[string]string
}

var _ Datapath = (*Iptables)(nil)

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

// NewIptables checks the options and that the binaries are there. Nothing
// is changed until Apply.
func NewIptables(opts IptablesOptions) (*Iptables, error) {
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
	return &Iptables{opts: opts, localnet: map[string]string{}}, nil
}

// withDefaults fills in the unset options.
func (o IptablesOptions) withDefaults() IptablesOptions {
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
	return o
}

func (d *Iptables) Name() string { return "iptables" }

// Close does nothing: the rules stay and keep forwarding.
func (d *Iptables) Close() error { return nil }

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
}

// Tables in the order Apply writes them: filter first, so that a new
// port's ACCEPT is in place when its DNAT appears.
var ipTables = []string{"filter", "nat"}

// ownChains returns the chains the datapath creates in a table.
func (o *IptablesOptions) ownChains(table string) []string {
	p := o.ChainPrefix
	if table == "nat" {
		return []string{p + chainDocker}
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

// tables computes the rules for s (which must be valid).
func (o *IptablesOptions) tables(s State) (map[string]*ipTable, error) {
	for _, n := range s.Networks {
		if err := ifaceArg(n.Bridge); err != nil {
			return nil, fmt.Errorf("network %s: %w", n.Name, err)
		}
	}
	p := o.ChainPrefix
	docker, user, iso1, iso2 := p+chainDocker, p+chainUser, p+chainIso1, p+chainIso2
	mark := "-m comment --comment " + o.Comment
	nat := &ipTable{name: "nat", chains: o.ownChains("nat")}
	filter := &ipTable{name: "filter", chains: o.ownChains("filter")}

	loopback := slices.ContainsFunc(s.Ports, func(m PortMapping) bool { return m.HostIP.IsLoopback() })
	nat.builtin = append(nat.builtin, ipRule{"PREROUTING", "-m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	if loopback {
		nat.builtin = append(nat.builtin, ipRule{"OUTPUT", "-m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	} else {
		nat.builtin = append(nat.builtin, ipRule{"OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL " + mark + " -j " + docker})
	}
	filter.builtin = append(filter.builtin,
		ipRule{"FORWARD", mark + " -j " + user},
		ipRule{"FORWARD", mark + " -j " + iso1})
	for _, n := range s.Networks {
		br := n.Bridge
		if n.Masquerade {
			nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-s %s ! -o %s %s -j MASQUERADE", n.Subnet.Masked(), br, mark)})
		}
		nat.builtin = append(nat.builtin, ipRule{"POSTROUTING", fmt.Sprintf("-o %s -m addrtype --src-type LOCAL %s -j MASQUERADE", br, mark)})
		filter.builtin = append(filter.builtin,
			ipRule{"FORWARD", fmt.Sprintf("-o %s -m conntrack --ctstate RELATED,ESTABLISHED %s -j ACCEPT", br, mark)},
			ipRule{"FORWARD", fmt.Sprintf("-o %s %s -j %s", br, mark, docker)},
			ipRule{"FORWARD", fmt.Sprintf("-i %s ! -o %s %s -j ACCEPT", br, br, mark)},
			ipRule{"FORWARD", fmt.Sprintf("-i %s -o %s %s -j ACCEPT", br, br, mark)})
		filter.rules = append(filter.rules, ipRule{iso1, fmt.Sprintf("-i %s ! -o %s -j %s", br, br, iso2)})
	}
	filter.rules = append(filter.rules, ipRule{iso1, "-j RETURN"})
	for _, n := range s.Networks {
		filter.rules = append(filter.rules, ipRule{iso2, fmt.Sprintf("-o %s -j DROP", n.Bridge)})
	}
	filter.rules = append(filter.rules, ipRule{iso2, "-j RETURN"}, ipRule{user, "-j RETURN"})

	// Several host ports may lead to one container port: its ACCEPT and
	// hairpin rules are written once.
	seen := map[string]bool{}
	once := func(r ipRule) bool {
		k := r.chain + " " + r.spec
		if seen[k] {
			return false
		}
		seen[k] = true
		return true
	}
	for _, m := range s.Ports {
		n, ok := networkOf(s.Networks, m.ContainerIP)
		if !ok {
			return nil, fmt.Errorf("port %s: container address %s is in none of the networks", m, m.ContainerIP)
		}
		dst := ""
		if m.HostIP.IsValid() && !m.HostIP.IsUnspecified() {
			dst = fmt.Sprintf("-d %s/32 ", m.HostIP)
		}
		nat.rules = append(nat.rules, ipRule{docker, fmt.Sprintf("%s-p %s -m %s --dport %d -j DNAT --to-destination %s:%d",
			dst, m.Proto, m.Proto, m.HostPort, m.ContainerIP, m.ContainerPort)})
		if r := (ipRule{"POSTROUTING", fmt.Sprintf("-s %s/32 -d %s/32 -p %s -m %s --dport %d %s -j MASQUERADE",
			m.ContainerIP, m.ContainerIP, m.Proto, m.Proto, m.ContainerPort, mark)}); once(r) {
			nat.builtin = append(nat.builtin, r)
		}
		if r := (ipRule{docker, fmt.Sprintf("-d %s/32 ! -i %s -o %s -p %s -m %s --dport %d -j ACCEPT",
			m.ContainerIP, n.Bridge, n.Bridge, m.Proto, m.Proto, m.ContainerPort)}); once(r) {
			filter.rules = append(filter.rules, r)
		}
	}
	for _, n := range s.Networks {
		filter.rules = append(filter.rules, ipRule{docker, fmt.Sprintf("! -i %s -o %s -j DROP", n.Bridge, n.Bridge)})
	}
	// Chain by chain, in the order iptables-save prints them back.
	for _, t := range []*ipTable{nat, filter} {
		slices.SortStableFunc(t.rules, func(a, b ipRule) int {
			return slices.Index(t.chains, a.chain) - slices.Index(t.chains, b.chain)
		})
	}
	return map[string]*ipTable{"nat": nat, "filter": filter}, nil
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
func (o *IptablesOptions) parseSave(table, out string) *ipTable {
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
func (o *IptablesOptions) marked(spec string) bool {
	f := strings.Fields(spec)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "--comment" && (f[i+1] == o.Comment || f[i+1] == `"`+o.Comment+`"`) {
			return true
		}
	}
	return false
}

// command runs name with args in the datapath's namespace.
func (d *Iptables) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d.opts.Netns == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + d.opts.Netns, "--", name}, args...)...)
}

// snapshot reads what a table holds of the datapath.
func (d *Iptables) snapshot(ctx context.Context, table string) (*ipTable, error) {
	var stderr bytes.Buffer
	cmd := d.command(ctx, d.opts.Save, "-t", table)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("reading the %s table with %s: %w: %s", table, d.opts.Save, err, strings.TrimSpace(stderr.String()))
	}
	return d.opts.parseSave(table, string(out)), nil
}

var restoreLineRe = regexp.MustCompile(`line:? (\d+)`)

// restore feeds input to iptables-restore --noflush in one run.
func (d *Iptables) restore(ctx context.Context, table, input string) error {
	var stderr bytes.Buffer
	cmd := d.command(ctx, d.opts.Restore, "-w", "--noflush")
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
		return fmt.Errorf("writing the %s table with %s: %w: %s", table, d.opts.Restore, err, msg)
	}
	return nil
}

// write brings each table from have to want, in the order of ipTables.
// When a table fails, those already written are put back as they were.
func (d *Iptables) write(ctx context.Context, want, have map[string]*ipTable) error {
	var done []string
	for _, table := range ipTables {
		w, h := want[table], have[table]
		if w.empty() && h.empty() {
			continue
		}
		if err := d.restore(ctx, table, restoreInput(w, h)); err != nil {
			for _, prev := range slices.Backward(done) {
				// The rollback must run even when ctx is what failed.
				if rerr := d.restore(context.Background(), prev, restoreInput(have[prev], want[prev])); rerr != nil {
					err = errors.Join(err, fmt.Errorf("putting the %s table back: %w", prev, rerr))
				}
			}
			return err
		}
		done = append(done, table)
	}
	return nil
}

func (d *Iptables) snapshots(ctx context.Context) (map[string]*ipTable, error) {
	have := map[string]*ipTable{}
	for _, table := range ipTables {
		t, err := d.snapshot(ctx, table)
		if err != nil {
			return nil, err
		}
		have[table] = t
	}
	return have, nil
}

// Apply replaces the datapath's rules with those of s. An invalid s
// changes nothing; a table iptables-restore rejects is left as it was, with
// iptables' message in the error.
func (d *Iptables) Apply(ctx context.Context, s State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	want, err := d.opts.tables(s)
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
	return d.sysctls(s)
}

// Remove deletes the datapath's rules from the built-in chains, then its
// chains, and sets back the route_localnet values Apply changed. Other
// rules and chains are left alone; ip_forward stays on.
func (d *Iptables) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx := context.Background()
	have, err := d.snapshots(ctx)
	if err != nil {
		return err
	}
	want := map[string]*ipTable{}
	for _, table := range ipTables {
		want[table] = &ipTable{name: table}
	}
	err = d.write(ctx, want, have)
	return errors.Join(err, d.restoreLocalnet(nil))
}

// sysctls turns forwarding on, and route_localnet on the bridges that
// serve a port bound to a loopback address (and back off on the others).
func (d *Iptables) sysctls(s State) error {
	need := map[string]bool{}
	for _, m := range s.Ports {
		if m.HostIP.IsLoopback() {
			n, _ := networkOf(s.Networks, m.ContainerIP)
			need[n.Bridge] = true
		}
	}
	err := d.inNetns(func() error {
		if err := setSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		for br := range need {
			if _, ours := d.localnet[br]; ours {
				continue
			}
			key := "net/ipv4/conf/" + br + "/route_localnet"
			old, err := getSysctl(key)
			if err != nil {
				return err
			}
			if old == "1" {
				continue
			}
			if err := setSysctl(key, "1"); err != nil {
				return err
			}
			d.localnet[br] = old
		}
		return nil
	})
	return errors.Join(err, d.restoreLocalnet(need))
}

// restoreLocalnet sets route_localnet back on the bridges Apply changed and
// keep does not name. A bridge that is gone is forgotten.
func (d *Iptables) restoreLocalnet(keep map[string]bool) error {
	return d.inNetns(func() error {
		var errs []error
		for br, old := range d.localnet {
			if keep[br] {
				continue
			}
			err := setSysctl("net/ipv4/conf/"+br+"/route_localnet", old)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			delete(d.localnet, br)
		}
		return errors.Join(errs...)
	})
}

func getSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// setSysctl writes a sysctl unless it already has the value.
func setSysctl(key, value string) error {
	if v, err := getSysctl(key); err == nil && v == value {
		return nil
	}
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// inNetns runs fn on a thread switched into the datapath's namespace
// (/proc/sys/net follows the namespace of the thread that opens a file).
// If the thread cannot be switched back it stays locked, and the runtime
// discards it when the goroutine ends.
func (d *Iptables) inNetns(fn func() error) (err error) {
	if d.opts.Netns == "" {
		return fn()
	}
	target, err := netns.GetFromPath(d.opts.Netns)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", d.opts.Netns, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening the thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", d.opts.Netns, err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("leaving network namespace %s (thread discarded): %w", d.opts.Netns, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/docker/docker/api/types/system"
	"github.com/google/nftables"

	"github.com/bpfnet/bpfnet/datapath"
)

// The start-up check: does the dockerd bpfnet follows leave NAT to it?
//
// A dockerd with iptables on installs, for the same bridges, the DNAT of
// published ports and the MASQUERADE of their subnets that bpfnet does in
// TC: both would translate the same packets (Docker's POSTROUTING
// MASQUERADE runs before bpfnet's TC egress, its DNAT after bpfnet's
// ingress), so bpfnet refuses to start next to it. What says so:
//
//   - the Engine API's /info: FirewallBackend (API 1.49, Docker 28.1+)
//     names the backend, iptables, nftables or either with "+firewalld",
//     whether or not iptables is on; Docker 29.5 adds
//     ["EnableUserlandProxy", "true"] to its Info when the proxy is on.
//     Docker 20.10 (API 1.41) reports neither. /info never says whether
//     iptables is on, so the rest is read from the host;
//   - the dockerd process (the one whose data root is /info's
//     DockerRootDir): its command line's --iptables, --ip6tables and
//     --userland-proxy, and its daemon.json (--config-file, default
//     /etc/docker/daemon.json, read through /proc/<pid>/root), with
//     Docker's defaults for what neither sets;
//   - the network namespace bpfnet runs in (the caller's thread's):
//     Docker's NAT rules there, in the nat table of both iptables backends
//     of both families, iptables and ip6tables (its DOCKER chain, and
//     MASQUERADE or SNAT in POSTROUTING from a bridge's subnet, IPv4 or
//     IPv6) and its nftables tables (ip and ip6 docker-bridges), and
//     docker-proxy processes in that namespace.
//
// A dockerd in another network namespace (as in the tests, or a second
// dockerd on the host) installs its rules there, not here: its settings
// are reported, not refused.

// ExitConfig is the exit status of a start refused because of Docker's
// configuration (EX_CONFIG of sysexits.h): the systemd unit does not
// restart bpfnet after it (RestartPreventExitStatus=78).
const ExitConfig = 78

// DefaultDaemonJSON is dockerd's configuration file when it is given no
// --config-file.
const DefaultDaemonJSON = "/etc/docker/daemon.json"

// DaemonJSON is the configuration bpfnet needs of dockerd.
const DaemonJSON = `{"iptables": false, "ip6tables": false, "userland-proxy": false}`

// Setting is one of dockerd's boolean settings and where it comes from.
type Setting struct {
	On bool `json:"on"`
	// From is where the value comes from: "--iptables=false",
	// "/etc/docker/daemon.json", or "default".
	From string `json:"from"`
}

func (s Setting) String() string {
	src := "Docker's default"
	if s.From != "default" {
		src = s.From
	}
	return fmt.Sprintf("%t (%s)", s.On, src)
}

// DaemonConfig is what a dockerd process runs with.
type DaemonConfig struct {
	PID        int    `json:"pid"`
	ConfigFile string `json:"config_file"`
	DataRoot   string `json:"data_root"`
	// OtherNetns: dockerd runs in another network namespace than the
	// caller; its rules are there, not in the caller's.
	OtherNetns    bool    `json:"other_netns,omitempty"`
	IPTables      Setting `json:"iptables"`
	IP6Tables     Setting `json:"ip6tables"`
	UserlandProxy Setting `json:"userland_proxy"`
}

// NATRule is a rule of Docker's NAT found in the caller's network
// namespace, for a network bpfnet serves.
type NATRule struct {
	// Source is iptables-nft, iptables-legacy, ip6tables-nft,
	// ip6tables-legacy or nftables.
	Source string `json:"source"`
	// Rule is the iptables-save line (in the nat table), or the nftables
	// table ("table ip docker-bridges").
	Rule string `json:"rule"`
	// Bridge is the bridge of the network it translates ("" for an
	// nftables table: all of them).
	Bridge string `json:"bridge,omitempty"`
	IPv6   bool   `json:"ipv6,omitempty"`
}

// FirewallFacts is what the check read.
type FirewallFacts struct {
	Host            string               `json:"host"`
	ServerVersion   string               `json:"server_version"`
	DockerRootDir   string               `json:"docker_root_dir"`
	FirewallBackend *system.FirewallInfo `json:"firewall_backend,omitempty"`
	// Daemon is nil when the dockerd process was not found (a remote
	// Docker, another PID namespace); DaemonErr says why.
	Daemon    *DaemonConfig `json:"daemon,omitempty"`
	DaemonErr string        `json:"daemon_error,omitempty"`
	Rules     []NATRule     `json:"rules,omitempty"`
	// Proxies are the pids of docker-proxy processes in the caller's
	// network namespace.
	Proxies []int `json:"proxies,omitempty"`
	// Errors are the rule sources that could not be read.
	Errors []string `json:"errors,omitempty"`
}

// userlandProxyInfo reports whether /info's FirewallBackend says the
// userland proxy is on (Docker 29.5+).
func (f FirewallFacts) userlandProxyInfo() bool {
	if f.FirewallBackend == nil {
		return false
	}
	for _, kv := range f.FirewallBackend.Info {
		if kv[0] == "EnableUserlandProxy" && kv[1] == "true" {
			return true
		}
	}
	return false
}

// FirewallVerdict is the check's decision: conflicts refuse the start,
// warnings are logged.
type FirewallVerdict struct {
	Conflicts []string `json:"conflicts,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// Decide judges facts.
//
// Refused (a conflict): Docker's NAT rules, IPv4 or IPv6, for a bridge
// bpfnet serves in its namespace (bpfnet translates both families), and a
// dockerd in that namespace running with iptables on, or ip6tables set on
// (it installs them with its next network or container, and again at each
// restart).
//
// Warned: the userland proxy (on in dockerd's settings or /info, or
// docker-proxy processes here). It binds the published host ports, but
// bpfnet answers them first, in TC for remote clients and in the cgroup
// connect hooks for the host's own, so it only idles, one process per
// port, except under --host-sockets=false, where it answers the host's
// clients with the client's address hidden. A dockerd not found or in
// another namespace: its settings cannot be judged, the rules are.
func Decide(f FirewallFacts) FirewallVerdict {
	var v FirewallVerdict
	for _, r := range f.Rules {
		where := r.Source
		if r.Bridge != "" {
			where += ", bridge " + r.Bridge
		}
		what := "NAT rule"
		if r.IPv6 {
			what = "IPv6 NAT rule"
		}
		v.Conflicts = append(v.Conflicts, fmt.Sprintf("Docker's %s (%s): %s", what, where, r.Rule))
	}
	d := f.Daemon
	proxy := f.userlandProxyInfo()
	switch {
	case d == nil:
		v.Warnings = append(v.Warnings, fmt.Sprintf("dockerd's settings are not checked (%s): only the rules of this network namespace are", f.DaemonErr))
	case d.OtherNetns:
		if d.IPTables.On || d.IP6Tables.On || d.UserlandProxy.On {
			v.Warnings = append(v.Warnings, fmt.Sprintf("dockerd (pid %d) runs in another network namespace, with iptables %s, ip6tables %s and userland-proxy %s: its rules and proxies are there, not in bpfnet's", d.PID, d.IPTables, d.IP6Tables, d.UserlandProxy))
		}
	default:
		if d.IPTables.On {
			v.Conflicts = append(v.Conflicts, fmt.Sprintf("dockerd (pid %d) runs with iptables %s: it installs NAT rules for every network and published port", d.PID, d.IPTables))
		}
		// ip6tables needs iptables (Docker 20.10 refuses to start with
		// ip6tables on and iptables off): Docker's default of ip6tables
		// (on since 27.0) next to iptables off is not judged a conflict,
		// only an ip6tables set on. Rules it made are refused above.
		if d.IP6Tables.On && (d.IPTables.On || d.IP6Tables.From != "default") {
			v.Conflicts = append(v.Conflicts, fmt.Sprintf("dockerd (pid %d) runs with ip6tables %s: it installs IPv6 NAT rules for every IPv6 network and published port", d.PID, d.IP6Tables))
		}
		proxy = proxy || d.UserlandProxy.On
	}
	if proxy || len(f.Proxies) > 0 {
		what := "dockerd runs docker-proxy for published ports"
		if d != nil && !d.OtherNetns && d.UserlandProxy.On {
			what = fmt.Sprintf("dockerd (pid %d) runs with userland-proxy %s", d.PID, d.UserlandProxy)
		}
		if len(f.Proxies) > 0 {
			what += fmt.Sprintf(" (%d docker-proxy processes here)", len(f.Proxies))
		}
		v.Warnings = append(v.Warnings, what+`: bpfnet answers published ports before docker-proxy does, so it idles, one process per port, but with --host-sockets=false for the host's own clients, which it serves with the client's address hidden; set "userland-proxy": false`)
	}
	if len(f.Errors) > 0 {
		v.Warnings = append(v.Warnings, "Docker's NAT rules could not all be read: "+strings.Join(f.Errors, "; "))
	}
	return v
}

// FirewallError is a start refused because Docker NATs the traffic
// bpfnet would. Its message says what to change.
type FirewallError struct {
	Facts   FirewallFacts
	Verdict FirewallVerdict
}

// ExitCode is ExitConfig.
func (e *FirewallError) ExitCode() int { return ExitConfig }

func (e *FirewallError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Docker at %s does NAT itself, on the traffic bpfnet would translate:\n", e.Facts.Host)
	for _, c := range e.Verdict.Conflicts {
		fmt.Fprintf(&b, "  - %s\n", c)
	}
	file := DefaultDaemonJSON
	if d := e.Facts.Daemon; d != nil && d.ConfigFile != "" {
		file = d.ConfigFile
	}
	fmt.Fprintf(&b, "Put this in %s (and drop any --iptables, --ip6tables or --userland-proxy flag from dockerd's command line: dockerd refuses a setting given both ways):\n", file)
	fmt.Fprintf(&b, "  %s\n", DaemonJSON)
	b.WriteString("then restart Docker (systemctl restart docker) and bpfnet.\n")
	b.WriteString("Docker leaves the rules it made before in place: rules listed above that remain after the restart are leftovers; remove them (iptables -t nat, ip6tables -t nat, nft delete table ip docker-bridges, nft delete table ip6 docker-bridges) or reboot.\n")
	b.WriteString("--ignore-docker-firewall starts bpfnet anyway (for rules of your own that look like Docker's).")
	return b.String()
}

// CheckFirewall reads what says whether the dockerd of s leaves the NAT
// of nets (the networks of its State) to bpfnet, in the calling thread's
// network namespace. Its error is Docker's /info failing; what cannot be
// read on the host is in the facts (DaemonErr, Errors).
func (s *Source) CheckFirewall(ctx context.Context, nets []datapath.Network) (FirewallFacts, error) {
	info, err := s.cli.Info(ctx)
	if err != nil {
		return FirewallFacts{}, s.wrap("info", err)
	}
	return hostFirewall{proc: "/proc"}.facts(ctx, s.host, info, nets), nil
}

// hostFirewall reads the host: /proc (a fake tree in tests) and, unless
// save is set, iptables-save and nftables of the caller's namespace.
type hostFirewall struct {
	proc string
	// save returns the iptables-save outputs by source and the nftables
	// tables ("ip docker-bridges"); nil reads the kernel.
	save func(ctx context.Context) (map[string][]byte, []string, []string)
}

func (h hostFirewall) facts(ctx context.Context, host string, info system.Info, nets []datapath.Network) FirewallFacts {
	f := FirewallFacts{Host: host, ServerVersion: info.ServerVersion, DockerRootDir: info.DockerRootDir, FirewallBackend: info.FirewallBackend}
	self := h.netnsIno("thread-self")
	d, err := h.findDockerd(info)
	if err != nil {
		f.DaemonErr = err.Error()
	} else {
		// Another namespace only when both are known to differ: a
		// namespace that cannot be read (no CAP_SYS_PTRACE) leaves
		// dockerd's settings judged, not waved through.
		theirs := h.netnsIno(strconv.Itoa(d.PID))
		d.OtherNetns = self != 0 && theirs != 0 && theirs != self
		f.Daemon = d
	}
	for _, pid := range h.pids("docker-proxy") {
		if self != 0 && h.netnsIno(strconv.Itoa(pid)) == self {
			f.Proxies = append(f.Proxies, pid)
		}
	}
	save := h.save
	if save == nil {
		save = readNAT
	}
	outs, tables, errs := save(ctx)
	f.Errors = errs
	for _, src := range []string{"iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft"} {
		f.Rules = append(f.Rules, parseNATSave(src, outs[src], nets)...)
	}
	if len(nets) > 0 {
		for _, t := range tables {
			f.Rules = append(f.Rules, NATRule{Source: "nftables", Rule: "table " + t, IPv6: strings.HasPrefix(t, "ip6 ")})
		}
	}
	return f
}

// netnsIno is the inode of /proc/<pid>/ns/net, 0 if it cannot be read.
func (h hostFirewall) netnsIno(pid string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(h.proc, pid, "ns", "net"), &st); err != nil {
		return 0
	}
	return st.Ino
}

// pids are the processes whose comm is name.
func (h hostFirewall) pids(name string) []int {
	ents, _ := os.ReadDir(h.proc)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(h.proc, e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == name {
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out
}

// findDockerd finds the dockerd process whose data root is info's
// DockerRootDir (with --userns-remap, a folder of it) and reads its
// settings.
func (h hostFirewall) findDockerd(info system.Info) (*DaemonConfig, error) {
	pids := h.pids("dockerd")
	if len(pids) == 0 {
		return nil, errors.New("no dockerd process in this PID namespace")
	}
	var errs []error
	for _, pid := range pids {
		d, err := h.readDockerd(pid, info.ServerVersion)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if info.DockerRootDir == d.DataRoot || strings.HasPrefix(info.DockerRootDir, d.DataRoot+"/") {
			return d, nil
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("no dockerd process with data root %s: %w", info.DockerRootDir, errors.Join(errs...))
	}
	return nil, fmt.Errorf("no dockerd process with data root %s among pids %v", info.DockerRootDir, pids)
}

// readDockerd reads the settings of dockerd process pid.
func (h hostFirewall) readDockerd(pid int, serverVersion string) (*DaemonConfig, error) {
	dir := filepath.Join(h.proc, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return nil, fmt.Errorf("dockerd %d: %w", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	fl, err := parseDockerdArgs(args)
	if err != nil {
		return nil, fmt.Errorf("dockerd %d: %w", pid, err)
	}
	d := &DaemonConfig{PID: pid, ConfigFile: DefaultDaemonJSON, DataRoot: "/var/lib/docker"}
	if v, ok := fl.strs["config-file"]; ok {
		d.ConfigFile = v
	}
	// The file as dockerd sees it: through its root and, for a relative
	// path, its working folder.
	path := filepath.Join(dir, "root", d.ConfigFile)
	if !filepath.IsAbs(d.ConfigFile) {
		path = filepath.Join(dir, "cwd", d.ConfigFile)
	}
	var file struct {
		IPTables      *bool  `json:"iptables"`
		IP6Tables     *bool  `json:"ip6tables"`
		UserlandProxy *bool  `json:"userland-proxy"`
		DataRoot      string `json:"data-root"`
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &file); err != nil {
			return nil, fmt.Errorf("dockerd %d: %s: %w", pid, d.ConfigFile, err)
		}
	case errors.Is(err, os.ErrNotExist) && d.ConfigFile == DefaultDaemonJSON:
		// No file: Docker's defaults.
	default:
		return nil, fmt.Errorf("dockerd %d: reading %s: %w", pid, d.ConfigFile, err)
	}
	if v, ok := fl.strs["data-root"]; ok {
		d.DataRoot = v
	} else if file.DataRoot != "" {
		d.DataRoot = file.DataRoot
	}
	d.DataRoot = filepath.Clean(d.DataRoot)
	setting := func(name string, inFile *bool, def bool) Setting {
		if v, ok := fl.bools[name]; ok {
			return Setting{On: v, From: fmt.Sprintf("--%s=%t", name, v)}
		}
		if inFile != nil {
			return Setting{On: *inFile, From: d.ConfigFile}
		}
		return Setting{On: def, From: "default"}
	}
	d.IPTables = setting("iptables", file.IPTables, true)
	d.IP6Tables = setting("ip6tables", file.IP6Tables, ip6tablesDefault(serverVersion))
	d.UserlandProxy = setting("userland-proxy", file.UserlandProxy, true)
	return d, nil
}

// ip6tablesDefault is dockerd's default of --ip6tables: on since Docker
// 27.0, off (and experimental) before.
func ip6tablesDefault(serverVersion string) bool {
	major, _, _ := strings.Cut(serverVersion, ".")
	n, err := strconv.Atoi(major)
	return err != nil || n >= 27
}

type dockerdFlags struct {
	bools map[string]bool
	strs  map[string]string
}

// parseDockerdArgs reads the flags of dockerd's command line that the
// check needs, as dockerd's flag parser (spf13/pflag) does: a boolean
// flag is --name or --name=value (--name false is not false: "false" is
// then an argument, which dockerd refuses), a string flag --name=value
// or --name value.
func parseDockerdArgs(args []string) (dockerdFlags, error) {
	fl := dockerdFlags{bools: map[string]bool{}, strs: map[string]string{}}
	boolFlags := []string{"iptables", "ip6tables", "userland-proxy"}
	strFlags := []string{"config-file", "data-root"}
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") {
			continue
		}
		switch {
		case slices.Contains(boolFlags, name):
			v := true
			if hasValue {
				var err error
				if v, err = strconv.ParseBool(value); err != nil {
					return fl, fmt.Errorf("invalid %s", a)
				}
			}
			fl.bools[name] = v
		case slices.Contains(strFlags, name):
			if !hasValue {
				if i+1 >= len(args) {
					return fl, fmt.Errorf("%s without a value", a)
				}
				i++
				value = args[i]
			}
			fl.strs[name] = value
		}
	}
	return fl, nil
}

// readNAT reads the nat table of both iptables backends, IPv4 and IPv6
// (whichever is installed; without -t, iptables-save dumps only the tables
// that exist, so reading creates none) and the names of Docker's nftables
// tables, in the calling thread's network namespace.
func readNAT(ctx context.Context) (map[string][]byte, []string, []string) {
	outs := map[string][]byte{}
	var errs []string
	for _, src := range []struct{ name, bin string }{
		{"iptables-legacy", "iptables-legacy-save"},
		{"iptables-nft", "iptables-nft-save"},
		{"ip6tables-legacy", "ip6tables-legacy-save"},
		{"ip6tables-nft", "ip6tables-nft-save"},
	} {
		if _, err := exec.LookPath(src.bin); err != nil {
			continue
		}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, src.bin)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v: %s", src.bin, err, strings.TrimSpace(stderr.String())))
			continue
		}
		outs[src.name] = out
	}
	var tables []string
	conn, err := nftables.New()
	if err == nil {
		var all []*nftables.Table
		all, err = conn.ListTables()
		for _, t := range all {
			if t.Name != "docker-bridges" {
				continue
			}
			switch t.Family {
			case nftables.TableFamilyIPv4:
				tables = append(tables, "ip docker-bridges")
			case nftables.TableFamilyIPv6:
				tables = append(tables, "ip6 docker-bridges")
			}
		}
	}
	if err != nil {
		errs = append(errs, fmt.Sprintf("nftables: %v", err))
	}
	slices.Sort(tables)
	return outs, tables, errs
}

// parseNATSave returns the rules of the nat table of iptables-save
// output that are Docker's NAT for one of nets: in chain DOCKER, a rule
// naming the network's bridge (-i, -o) or translating to its subnet
// (--to-destination); in POSTROUTING, a MASQUERADE or SNAT from an
// address of its subnet. For ip6tables-save output (a source named
// ip6tables-*) the subnet is the network's IPv6 one, and the rules are
// IPv6. The rules of bpfnet's iptables comparator datapath, which has
// chains of its own (BPFNET-DOCKER) and marks its POSTROUTING rules with
// the comment "bpfnet", are not Docker's.
func parseNATSave(source string, out []byte, nets []datapath.Network) []NATRule {
	v6 := strings.HasPrefix(source, "ip6tables")
	var rules []NATRule
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "*") {
			table = line[1:]
			continue
		}
		if table != "nat" || !strings.HasPrefix(line, "-A ") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || (f[1] != "DOCKER" && f[1] != "POSTROUTING") {
			continue
		}
		opt := func(name string) string {
			for i := 2; i+1 < len(f); i++ {
				if f[i] == name {
					return f[i+1]
				}
			}
			return ""
		}
		target := opt("-j")
		if c := strings.Trim(opt("--comment"), `"`); strings.HasPrefix(c, "bpfnet") {
			continue // the iptables comparator datapath's own
		}
		for _, n := range nets {
			subnet := n.Subnet
			if v6 {
				subnet = n.Subnet6
			}
			var match bool
			switch f[1] {
			case "DOCKER":
				match = opt("-i") == n.Bridge || opt("-o") == n.Bridge
				if to := opt("--to-destination"); to != "" {
					a, err := netip.ParseAddr(natDestinationHost(to))
					match = match || err == nil && subnet.IsValid() && subnet.Contains(a)
				}
			case "POSTROUTING":
				if (target == "MASQUERADE" || target == "SNAT") && subnet.IsValid() {
					src := opt("-s")
					if p, err := netip.ParsePrefix(src); err == nil {
						match = p.Overlaps(subnet)
					} else if a, err := netip.ParseAddr(src); err == nil {
						match = subnet.Contains(a)
					}
				}
			}
			if match {
				rules = append(rules, NATRule{Source: source, Rule: line, Bridge: n.Bridge, IPv6: v6})
				break
			}
		}
	}
	return rules
}

// natDestinationHost is the (first) address of a --to-destination:
// 172.17.0.2:80, 172.17.0.2-172.17.0.9:80-90, [fd00::2]:80, fd00::2.
func natDestinationHost(to string) string {
	if rest, ok := strings.CutPrefix(to, "["); ok {
		host, _, _ := strings.Cut(rest, "]")
		return host
	}
	host, _, _ := strings.Cut(to, "-")
	if strings.Count(host, ":") == 1 {
		host, _, _ = strings.Cut(host, ":")
	}
	return host
}

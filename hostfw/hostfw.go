// SPDX-License-Identifier: Apache-2.0

// Package hostfw finds the host firewall rules that bpfnet's fast path
// takes packets around.
//
// With the fast path on, a translated packet is redirected from one
// interface to the other at TC: it never reaches routing or netfilter, so
// rules a user put where Docker tells them to (the filter table's
// DOCKER-USER chain), ufw's forward chains, or an nftables table of their
// own hooked at forward, never see it. Detect reports such rules so the
// daemon can say so; it changes nothing.
//
// What it reads, in the network namespace it is given:
//   - the filter table of iptables and ip6tables (bpfnet translates both
//     families), both backends: iptables-legacy-save, iptables-nft-save
//     and their ip6tables twins (whichever is installed; they are
//     separate kernel state). It counts the rules of DOCKER-USER other
//     than a bare "-j RETURN" (which Docker itself installs) and the
//     rules of ufw's forward chains (ufw-before-forward, ufw-user-forward,
//     ufw6-user-forward, ...);
//   - nftables through netlink (github.com/google/nftables, no nft binary
//     needed): base chains hooked at forward, in the ip, ip6, inet and
//     bridge families, that have rules or a drop policy, except the tables
//     iptables-nft manages (already read above) and Docker's own
//     docker-bridges (its firewall-backend=nftables rules, which the
//     datapath stands for as it does for Docker's iptables chains).
//
// What it needs: CAP_NET_ADMIN in the namespace, nsenter(1) for a
// namespace other than the caller's. What it does not do: it does not
// judge what the rules match (a rule for traffic bpfnet never handles is
// reported too).
package hostfw

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
)

// Sources of a Chain.
const (
	SourceIptablesLegacy  = "iptables-legacy"
	SourceIptablesNft     = "iptables-nft"
	SourceIp6tablesLegacy = "ip6tables-legacy"
	SourceIp6tablesNft    = "ip6tables-nft"
	SourceNftables        = "nftables"
)

// Chain is a chain whose rules forwarded packets would pass through
// netfilter.
type Chain struct {
	// Source is iptables-legacy, iptables-nft, ip6tables-legacy,
	// ip6tables-nft or nftables.
	Source string `json:"source"`
	// Table is "filter" for iptables, "<family> <name>" for nftables.
	Table string `json:"table"`
	Chain string `json:"chain"`
	// Rules counts the chain's rules (for DOCKER-USER, not counting a
	// bare RETURN).
	Rules int `json:"rules"`
	// Policy is an nftables base chain's policy when it drops.
	Policy string `json:"policy,omitempty"`
}

// Report is what Detect found.
type Report struct {
	// Chains with rules, sorted by source, table and chain.
	Chains []Chain `json:"chains"`
	// Errors are the sources that could not be read. A source not
	// installed (no iptables-legacy-save, say) is not an error.
	Errors []string `json:"errors,omitempty"`
}

// Rules is the number of rules in all of r's chains.
func (r Report) Rules() int {
	n := 0
	for _, c := range r.Chains {
		n += c.Rules
	}
	return n
}

// Found reports whether any chain has rules or a drop policy.
func (r Report) Found() bool { return len(r.Chains) > 0 }

// Equal reports whether r and o found the same chains with the same
// counts and the same errors.
func (r Report) Equal(o Report) bool {
	return slices.Equal(r.Chains, o.Chains) && slices.Equal(r.Errors, o.Errors)
}

// String is a one-line summary, such as
// "iptables-nft filter/DOCKER-USER=2 nftables inet fw/fwd=1 policy=drop".
func (r Report) String() string {
	if len(r.Chains) == 0 {
		return "none"
	}
	var parts []string
	for _, c := range r.Chains {
		s := fmt.Sprintf("%s %s/%s=%d", c.Source, c.Table, c.Chain, c.Rules)
		if c.Policy != "" {
			s += " policy=" + c.Policy
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// Detect reads the firewall of the network namespace at netnsPath (such
// as /run/netns/x), or of the caller's when netnsPath is "". A source that
// fails is named in Report.Errors and the others are still read; the error
// is non-nil only when netnsPath cannot be opened.
func Detect(ctx context.Context, netnsPath string) (Report, error) {
	var r Report
	if netnsPath != "" {
		if _, err := os.Stat(netnsPath); err != nil {
			return r, fmt.Errorf("network namespace %s: %w", netnsPath, err)
		}
	}
	for _, src := range []struct{ name, bin string }{
		{SourceIptablesLegacy, "iptables-legacy-save"},
		{SourceIptablesNft, "iptables-nft-save"},
		{SourceIp6tablesLegacy, "ip6tables-legacy-save"},
		{SourceIp6tablesNft, "ip6tables-nft-save"},
	} {
		if _, err := exec.LookPath(src.bin); err != nil {
			continue
		}
		out, err := save(ctx, netnsPath, src.bin)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("%s: %v", src.bin, err))
			continue
		}
		r.Chains = append(r.Chains, ParseSave(src.name, out)...)
	}
	chains, err := nftChains(netnsPath)
	if err != nil {
		r.Errors = append(r.Errors, fmt.Sprintf("nftables: %v", err))
	}
	r.Chains = append(r.Chains, chains...)
	slices.SortFunc(r.Chains, func(a, b Chain) int {
		return strings.Compare(a.Source+"\x00"+a.Table+"\x00"+a.Chain, b.Source+"\x00"+b.Table+"\x00"+b.Chain)
	})
	return r, nil
}

// save runs an iptables-save variant in the namespace. Without -t it dumps
// only the tables that exist, so reading never creates one.
func save(ctx context.Context, netnsPath, bin string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin)
	if netnsPath != "" {
		cmd = exec.CommandContext(ctx, "nsenter", "--net="+netnsPath, "--", bin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// watched reports whether rules in an iptables filter chain of this name
// filter forwarded packets that the fast path takes around them (ufw names
// its ip6tables chains ufw6-*).
func watched(chain string) bool {
	ufw := strings.HasPrefix(chain, "ufw-") || strings.HasPrefix(chain, "ufw6-")
	return chain == "DOCKER-USER" || (ufw && strings.HasSuffix(chain, "-forward"))
}

// ParseSave returns the watched chains with rules in the filter table of
// iptables-save output, as found by source.
func ParseSave(source string, out []byte) []Chain {
	counts := map[string]int{}
	var order []string
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case table == "filter" && strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 || !watched(fields[1]) {
				continue
			}
			if fields[1] == "DOCKER-USER" && len(fields) == 4 && fields[2] == "-j" && fields[3] == "RETURN" {
				continue
			}
			if _, ok := counts[fields[1]]; !ok {
				order = append(order, fields[1])
			}
			counts[fields[1]]++
		}
	}
	var chains []Chain
	for _, name := range order {
		chains = append(chains, Chain{Source: source, Table: "filter", Chain: name, Rules: counts[name]})
	}
	return chains
}

// xtablesTables are the tables iptables-nft creates, with the names of its
// built-in chains (FORWARD in upper case).
var xtablesTables = []string{"filter", "mangle", "raw", "security", "nat"}

// dockerTable is the ip and ip6 table of Docker's nftables firewall
// backend (Docker 29+).
const dockerTable = "docker-bridges"

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return ""
}

// nftChains lists the nftables base chains hooked at forward that hold
// rules or drop by policy, outside iptables-nft's tables.
func nftChains(netnsPath string) ([]Chain, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	all, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var chains []Chain
	var errs []error
	for _, c := range all {
		fam := familyName(c.Table.Family)
		if fam == "" || c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookForward {
			continue
		}
		if (fam == "ip" || fam == "ip6") && (c.Table.Name == dockerTable ||
			slices.Contains(xtablesTables, c.Table.Name) && c.Name == "FORWARD") {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules of %s %s/%s: %w", fam, c.Table.Name, c.Name, err))
			continue
		}
		ch := Chain{Source: SourceNftables, Table: fam + " " + c.Table.Name, Chain: c.Name, Rules: len(rules)}
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			ch.Policy = "drop"
		}
		if ch.Rules > 0 || ch.Policy != "" {
			chains = append(chains, ch)
		}
	}
	return chains, errors.Join(errs...)
}

// Status is the daemon's last check, as `bpfnet status` and the metrics
// show it.
type Status struct {
	Report
	// CheckedAt is when Detect ran.
	CheckedAt time.Time `json:"checked_at"`
	// FastPath: the daemon runs the eBPF datapath with its fast path, so
	// translated packets do not pass these chains.
	FastPath bool `json:"fast_path"`
	// Bypassed: rules were found and the fast path takes packets around
	// them.
	Bypassed bool `json:"bypassed"`
	// TotalRules is Report.Rules(), kept when Chains had to be cut to fit
	// the record (see [Status.Record]).
	TotalRules int `json:"total_rules"`
}

// NewStatus is the status of report, read at, for a daemon whose fast
// path is on or off.
func NewStatus(report Report, at time.Time, fastPath bool) Status {
	return Status{Report: report, CheckedAt: at, FastPath: fastPath,
		Bypassed: fastPath && report.Found(), TotalRules: report.Rules()}
}

// maxRecord keeps a record within a symbolic link's target (PATH_MAX).
const maxRecord = 4000

// Record is s as JSON of at most 4000 bytes, for a bpffs record: chains
// and errors past that are left out (TotalRules still counts them).
func (s Status) Record() ([]byte, error) {
	for {
		data, err := json.Marshal(s)
		if err != nil || len(data) <= maxRecord {
			return data, err
		}
		switch {
		case len(s.Errors) > 0:
			s.Errors = s.Errors[:len(s.Errors)-1]
		case len(s.Chains) > 0:
			s.Chains = s.Chains[:len(s.Chains)-1]
		default:
			return nil, fmt.Errorf("host firewall record of %d bytes", len(data))
		}
	}
}

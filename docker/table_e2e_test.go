// SPDX-License-Identifier: Apache-2.0

package docker

// TestDockerTable is the table of Docker's network options end to end:
// one dockerd of the test's own, and for each datapath (ebpf, iptables,
// nftables) in turn the real daemon, `bpfnet run --docker --datapath X`,
// serving the same networks and containers, made anew for each. Three
// external namespaces reach the host: ext and trusted each through an
// uplink of the daemon's (--uplink), other through an interface that is
// none; trusted's and other's are trusted_host_interfaces of the nat
// network. Each
// row is a connection from a namespace (an external one, the host, a
// container) to an address and port, and what Docker 28/29 make of it:
//
//   - reach: the echo server named answers (and saw the client's own
//     address, where the client is not the host);
//   - blocked: the SYN goes unanswered (a timeout; with refused, the
//     host's own refusal counts too: nothing is mapped there), and with
//     the eBPF datapath its drop counter of that reason grows; each
//     blocked row names its twin, a row of the same phase that reaches:
//     the same source to an allowed port, or an allowed source to the
//     same port;
//   - egress: a server in the external namespace sees the connection
//     from that source address.
//
// A probe that cannot run (a source or destination that is not there,
// its namespace gone, ping or a send that errs) fails its row, pending or
// not; a blocked TCP row wants a timeout, nothing else (or the host's
// refusal, where it says so). The phases: the networks as made; one
// container connected to a second network, then disconnected from it;
// the daemon restarted with --allow-direct-routing. After each
// datapath the containers and networks go, the daemon stops, `bpfnet
// down` runs, and the host namespace's rules (iptables-save, nft list
// ruleset) and BPF attachments must be what they were before it started.
//
// knownDifferences lists the rows where a datapath is known to differ
// from Docker; nothing else is excused.
//
// Not in the table, as bpfnet does not claim them: published host ports
// and masquerade on an interface that is no uplink (Docker's DNAT and
// MASQUERADE apply on every interface; bpfnet serves its uplinks only).

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// knownDifferences are the rows where a datapath is known to differ from
// Docker's rules, each with why; nothing else is excused. A listed row
// that passes fails the test, so the list cannot go stale.
var knownDifferences = map[string]map[string]string{
	"ebpf": {
		"routed-from-other-net": "no masquerade between bridges: a container of a nat network reaching a routed network's published container port " +
			"(n2 -> r1:80) keeps its own address, where Docker's MASQUERADE -s <nat subnet> ! -o <its bridge> gives it the routed bridge's (r1 sees 172.30.72.1); " +
			"the eBPF datapath masquerades on uplinks only (to_netdev). The connection is let through either way.",
	},
}

// pending returns why a row is expected to fail with a datapath, if it is.
func pending(dp, row string) (string, bool) {
	why, ok := knownDifferences[dp][row]
	return why, ok
}

// tableWant is what a row expects.
type tableWant struct {
	kind    string              // "reach", "blocked" or "egress"
	who     string              // reach: the server that answers
	seenAs  string              // reach: the network whose gateway address the server must see the client with (masqueraded), "" for the client's own
	reason  datapath.DropReason // blocked: the eBPF drop counter that grows (0: none, nothing is there)
	refused bool                // blocked: the host's refusal (a reset) counts as blocked too
	twin    string              // blocked: a reach row of the same phase
	source  string              // egress: who the external server sees: "host", "hostip" or a container
}

func reach(who string) tableWant { return tableWant{kind: "reach", who: who} }

// reachMasqueraded: who answers, and sees the client as the gateway of
// network net: the host masqueraded it on the way.
func reachMasqueraded(who, net string) tableWant {
	return tableWant{kind: "reach", who: who, seenAs: net}
}

func blocked(reason datapath.DropReason, twin string) tableWant {
	return tableWant{kind: "blocked", reason: reason, twin: twin}
}

// unmapped: nothing serves the port (no mapping there): the host refuses
// or dockerd's reservation of the port never answers.
func unmapped(twin string) tableWant { return tableWant{kind: "blocked", refused: true, twin: twin} }

func egress(source string) tableWant { return tableWant{kind: "egress", source: source} }

// tableRow is a connection and what Docker makes of it. from is "ext",
// "trusted" (the external namespaces), "host" or a container; to is
// "host" (the first uplink's host address), "host2" (the second's), "lo"
// (127.0.0.1), "ext" (the external server, port 9000), a container, or
// "container@network" for its address on that network.
//
// proto is "" for TCP (the greeting of the echo servers), "icmp" (a ping;
// port 0), or "udp": a datagram to port, which must arrive (reach) or not
// (blocked) at a socket the test holds in container at's namespace on
// atPort; to "lo-forged" is a datagram to 127.0.0.1 that the external
// namespace sends to the host on its uplink, as a neighbour can
// (CVE-2020-8558), from a raw socket, and "host-forged" the same to the
// host's address, its twin.
type tableRow struct {
	name     string
	from, to string
	port     uint16
	want     tableWant
	proto    string
	at       string
	atPort   uint16
}

// tr is a TCP row.
func tr(name, from, to string, port uint16, want tableWant) tableRow {
	return tableRow{name: name, from: from, to: to, port: port, want: want}
}

// tablePhases are the rows, by phase, in the order they run.
var tablePhases = []struct {
	name string
	rows []tableRow
}{
	{"networks", []tableRow{
		// nat (the default), trusted_host_interfaces=<second uplink>.
		tr("nat-port", "ext", "host", 8080, reach("n1")),
		tr("nat-port-from-host", "host", "host", 8080, reach("n1")),
		tr("nat-port-from-peer", "n2", "host", 8080, reach("n1")),
		tr("nat-hairpin", "n1", "host", 8080, reach("n1")),
		tr("nat-direct", "ext", "n1", 80, blocked(datapath.DropNotPublished, "trusted-published")),
		tr("trusted-published", "trusted", "n1", 80, reach("n1")),
		tr("trusted-unpublished", "trusted", "n1", 81, blocked(datapath.DropNotPublished, "trusted-published")),
		tr("nat-unpublished-ctr", "ext", "n2", 80, blocked(datapath.DropNotPublished, "icc")),
		tr("icc", "n1", "n2", 80, reach("n2")),
		tr("loopback-host", "host", "lo", 8082, reach("n1")),
		tr("loopback-remote", "ext", "host", 8082, unmapped("loopback-host")),
		// A port bound to the second uplink's address only.
		tr("hostip-bound", "trusted", "host2", 8099, reach("n3")),
		tr("hostip-bound-elsewhere", "ext", "host", 8099, unmapped("hostip-bound")),
		{name: "loopback-udp-host", from: "host", to: "lo", port: 8084, want: reach("n1"), proto: "udp", at: "n1", atPort: 84},
		{name: "forged-path", from: "ext", to: "host-forged", port: 8085, want: reach("n1"), proto: "udp", at: "n1", atPort: 84},
		{name: "loopback-forged", from: "ext", to: "lo-forged", port: 8084, want: blocked(0, "forged-path"), proto: "udp", at: "n1", atPort: 84},
		// A trusted interface that is no uplink of bpfnet's.
		tr("other-trusted", "other", "n1", 80, reach("n1")),
		tr("other-trusted-unpublished", "other", "n1", 81, blocked(datapath.DropDirectAccess, "other-trusted")),
		tr("other-untrusted", "other", "k1", 80, blocked(datapath.DropDirectAccess, "b-inside")),
		{name: "nat-ping", from: "ext", to: "n1", want: blocked(datapath.DropNotPublished, "routed-ping"), proto: "icmp"},
		tr("nat-egress", "n1", "ext", 9000, egress("host")),
		// Allowlists: bpfnet.allow=<ext>, bpfnet.allow.8097/tcp=<trusted>.
		tr("allow-ok", "ext", "host", 8096, reach("a1")),
		tr("allow-denied", "trusted", "host2", 8096, blocked(datapath.DropPortDenied, "allow-port-ok")),
		tr("allow-port-ok", "trusted", "host2", 8097, reach("a1")),
		tr("allow-port-denied", "ext", "host", 8097, blocked(datapath.DropPortDenied, "allow-ok")),
		// nat-unprotected.
		tr("unprot-port", "ext", "host", 8090, reach("u1")),
		tr("unprot-direct", "ext", "u1", 80, reach("u1")),
		tr("unprot-unpublished", "ext", "u1", 81, reach("u1")),
		tr("unprot-egress", "u1", "ext", 9000, egress("host")),
		tr("unprot-from-other-net", "n2", "u1", 81, blocked(datapath.DropIsolation, "unprot-unpublished")),
		// routed: no NAT; published container ports by address.
		tr("routed-direct", "ext", "r1", 80, reach("r1")),
		tr("routed-unpublished", "ext", "r1", 81, blocked(datapath.DropNotPublished, "routed-direct")),
		tr("routed-hostport", "ext", "host", 8092, unmapped("routed-direct")),
		tr("routed-egress", "r1", "ext", 9000, egress("r1")),
		// (Docker's MASQUERADE -s <nat subnet> ! -o <its bridge> applies
		// on the way into the routed bridge too.)
		tr("routed-from-other-net", "n2", "r1", 80, reachMasqueraded("r1", "trouted")),
		tr("routed-unpublished-from-other-net", "n2", "r1", 81, blocked(datapath.DropNotPublished, "routed-from-other-net")),
		tr("routed-to-other-net", "r1", "n2", 80, blocked(datapath.DropIsolation, "icc")),
		{name: "routed-ping", from: "ext", to: "r1", want: reach("r1"), proto: "icmp"},
		tr("routed-allow-ok", "ext", "r2", 80, reach("r2")),
		tr("routed-allow-denied", "trusted", "r2", 80, blocked(datapath.DropPortDenied, "routed-allow-ok")),
		// isolated (internal, the host cut off).
		tr("isolated-inside", "s2", "s1", 80, reach("s1")),
		tr("isolated-from-ext", "ext", "s1", 80, blocked(datapath.DropInternal, "isolated-inside")),
		tr("isolated-from-host", "host", "s1", 80, blocked(datapath.DropInternal, "isolated-inside")),
		tr("isolated-to-ext", "s1", "ext", 9000, blocked(datapath.DropInternal, "nat-egress")),
		// internal.
		tr("internal-inside", "i2", "i1", 80, reach("i1")),
		tr("internal-from-host", "host", "i1", 80, reach("i1")),
		tr("internal-from-ext", "ext", "i1", 80, blocked(datapath.DropInternal, "internal-inside")),
		tr("internal-to-ext", "i1", "ext", 9000, blocked(datapath.DropInternal, "nat-egress")),
		// host_ipv4, enable_ip_masquerade=false, enable_icc=false.
		tr("hostip-egress", "h1", "ext", 9000, egress("hostip")),
		tr("nomasq-egress", "m1", "ext", 9000, egress("m1")),
		tr("nomasq-port", "ext", "host", 8094, reach("m1")),
		tr("noicc-port", "ext", "host", 8095, reach("c2")),
		tr("noicc", "c1", "c2", 80, blocked(datapath.DropICC, "noicc-port")),
		tr("noicc-via-port", "c1", "host", 8095, blocked(datapath.DropICC, "noicc-port")),
		// Between networks.
		tr("b-inside", "kp", "k1", 80, reach("k1")),
		tr("b-port", "ext", "host", 8098, reach("k1")),
		tr("isolation", "n2", "k1", 80, blocked(datapath.DropIsolation, "b-inside")),
	}},
	{"connected", []tableRow{ // docker network connect tnat k1
		tr("connected-port", "ext", "host", 8098, reach("k1")),
		tr("connected-same-net", "n2", "k1@tnat", 80, reach("k1")),
		tr("connected-from-b", "kp", "k1@tb", 80, reach("k1")),
		tr("connected-other-net", "n2", "k1@tb", 80, blocked(datapath.DropIsolation, "connected-same-net")),
	}},
	{"disconnected", []tableRow{ // docker network disconnect tnat k1
		tr("disconnected-port", "ext", "host", 8098, reach("k1")),
		tr("disconnected-peer", "n2", "n1", 80, reach("n1")),
		tr("disconnected-old", "n2", "k1@tnat", 80, blocked(0, "disconnected-peer")),
		tr("disconnected-from-b", "kp", "k1@tb", 80, reach("k1")),
		tr("disconnected-isolation", "n2", "k1@tb", 80, blocked(datapath.DropIsolation, "disconnected-from-b")),
	}},
	{"allow-direct-routing", []tableRow{ // bpfnet run --allow-direct-routing
		tr("adr-port", "ext", "host", 8080, reach("n1")),
		tr("adr-direct", "ext", "n1", 80, reach("n1")),
		tr("adr-unpublished", "ext", "n1", 81, blocked(datapath.DropNotPublished, "adr-direct")),
	}},
}

// tableNets are the networks of the table, made for each datapath.
func tableNets(trusted, hostIP string) []isoNet {
	return []isoNet{
		{name: "tnat", subnet: "172.30.70.0/24", opts: map[string]string{optTrustedIfaces: trusted}},
		{name: "tunprot", subnet: "172.30.71.0/24", opts: map[string]string{optGatewayModeIPv4: "nat-unprotected"}},
		{name: "trouted", subnet: "172.30.72.0/24", opts: map[string]string{optGatewayModeIPv4: "routed"}},
		{name: "tisolated", subnet: "172.30.73.0/24", internal: true, opts: map[string]string{optGatewayModeIPv4: "isolated"}},
		{name: "tinternal", subnet: "172.30.74.0/24", internal: true},
		{name: "thostip", subnet: "172.30.75.0/24", opts: map[string]string{optHostIPv4: hostIP}},
		{name: "tnomasq", subnet: "172.30.76.0/24", opts: map[string]string{optMasquerade: "false"}},
		{name: "tnoicc", subnet: "172.30.77.0/24", opts: map[string]string{optICC: "false"}},
		{name: "tb", subnet: "172.30.78.0/24"},
	}
}

// tableCtrs are the containers of the table (ext and trusted are the
// external namespaces' addresses, host2 the host's on the second uplink);
// k1, which publishes a port,
// is started last, so that its port answering means the daemon applied a
// state with all of them.
func tableCtrs(ext, trusted, host2 netip.Addr) []*isoCtr {
	return []*isoCtr{
		{name: "n1", net: "tnat", tcp: "80,81,82", publish: []string{"8080:80", "127.0.0.1:8082:82", "127.0.0.1:8084:84/udp", "8085:84/udp"}},
		{name: "n2", net: "tnat"},
		{name: "n3", net: "tnat", publish: []string{host2.String() + ":8099:80"}},
		{name: "a1", net: "tnat", publish: []string{"8096:80", "8097:80"}, labels: map[string]string{
			LabelAllow: ext.String() + "/32", LabelAllowPort + "8097/tcp": trusted.String() + "/32"}},
		{name: "u1", net: "tunprot", tcp: "80,81", publish: []string{"8090:80"}},
		{name: "r1", net: "trouted", tcp: "80,81", publish: []string{"8092:80"}},
		{name: "r2", net: "trouted", publish: []string{"8093:80"}, labels: map[string]string{LabelAllow: ext.String()}},
		{name: "s1", net: "tisolated"},
		{name: "s2", net: "tisolated"},
		{name: "i1", net: "tinternal"},
		{name: "i2", net: "tinternal"},
		{name: "h1", net: "thostip"},
		{name: "m1", net: "tnomasq", publish: []string{"8094:80"}},
		{name: "c1", net: "tnoicc"},
		{name: "c2", net: "tnoicc", publish: []string{"8095:80"}},
		{name: "kp", net: "tb"},
		{name: "k1", net: "tb", publish: []string{"8098:80"}},
	}
}

// tableLab is what the datapaths share: the lab, its dockerd, the
// daemon's binary. ext and trusted are on uplinks of the daemon (--uplink),
// other on an interface that is none; trusted and other are tnat's
// trusted_host_interfaces.
type tableLab struct {
	topo                *lab.Topology
	ext, trusted, other *lab.External
	hostIP              netip.Addr // a second address of the first uplink: thostip's host_ipv4
	d                   *dockerd
	bin                 string
}

func TestDockerTable(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare", "busybox", "iptables-save", "nft")
	checkTableRows(t)
	start := time.Now()
	tl := &tableLab{bin: lab.BuildBpfnet(t)}
	sweepStale(t)
	tl.topo = lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}, Externals: []lab.ExternalConfig{{}, {}, {}}})
	tl.ext, tl.trusted, tl.other = tl.topo.Externals[0], tl.topo.Externals[1], tl.topo.Externals[2]
	tl.hostIP = addUplinkAddr(t, tl.topo, tl.ext)
	// The externals route the containers' subnets through the host, as
	// a router in front of it would (routed and unmasqueraded networks
	// answer through it).
	for _, x := range []*lab.External{tl.ext, tl.trusted, tl.other} {
		if out, err := x.Command(context.Background(), "ip", "route", "add", "172.30.0.0/16", "via", x.HostAddr.String()).CombinedOutput(); err != nil {
			t.Fatalf("route in %s: %v %s", x.Name, err, out)
		}
	}
	tl.d = startDockerd(t, tl.topo.Host, tl.topo.Bridges[0].Name, tl.topo.Prefix)
	tl.d.ImportImage()
	isoServe(t, &tl.ext.Namespace, net.JoinHostPort(tl.ext.Addr.String(), "9000"), "external")
	t.Logf("setup: %v", time.Since(start).Round(time.Millisecond))
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) {
			start := time.Now()
			tableRun(t, tl, dp)
			t.Logf("datapath %s: %v", dp, time.Since(start).Round(time.Millisecond))
		})
	}
}

// checkTableRows checks the table itself: unique names, every blocked row
// with a twin that reaches in the same phase, every pending row a row.
func checkTableRows(t *testing.T) {
	names := map[string]bool{}
	for _, ph := range tablePhases {
		reaches := map[string]bool{}
		for _, r := range ph.rows {
			if names[r.name] {
				t.Fatalf("row %s twice", r.name)
			}
			names[r.name] = true
			if r.want.kind != "blocked" {
				reaches[r.name] = true
			}
		}
		for _, r := range ph.rows {
			if r.want.kind == "blocked" && !reaches[r.want.twin] {
				t.Fatalf("blocked row %s: its twin %q is no reach or egress row of phase %s", r.name, r.want.twin, ph.name)
			}
		}
	}
	for dp, rows := range knownDifferences {
		for r := range rows {
			if !names[r] {
				t.Fatalf("knownDifferences names %s for %s, which is no row", r, dp)
			}
		}
	}
}

// tableDaemon is one run of `bpfnet run --docker`.
type tableDaemon struct {
	t    *testing.T
	tl   *tableLab
	dp   string
	pin  string
	logs *daemonLog
	cmd  *exec.Cmd      // nil when stopped
	ebpf *datapath.EBPF // the pinned datapath, with the eBPF datapath
}

func (td *tableDaemon) start(extra ...string) {
	t := td.t
	t.Helper()
	args := append([]string{"run", "--pin-path", td.pin, "--datapath", td.dp, "--docker=unix://" + td.tl.d.sock,
		"--uplink", td.tl.ext.Uplink, "--uplink", td.tl.trusted.Uplink, "--metrics-addr", ""}, extra...)
	cmd := startRun(t, td.tl.topo.Host, td.logs, td.tl.bin, args...)
	td.cmd = cmd
	if td.dp == "ebpf" {
		waitFor(t, "the daemon's pins", func() bool {
			dp, err := datapath.OpenPinned(td.pin)
			if err != nil {
				return false
			}
			td.ebpf = dp
			return true
		})
	}
}

func (td *tableDaemon) stop() {
	if td.ebpf != nil {
		td.ebpf.Close()
		td.ebpf = nil
	}
	if td.cmd != nil {
		td.cmd.Process.Signal(syscall.SIGTERM)
		td.cmd.Wait()
		td.cmd = nil
	}
}

func tableRun(t *testing.T, tl *tableLab, dp string) {
	// dockerd's helpers fail the test they are given: this one, while it
	// runs.
	tl.d.t = t
	defer func() { tl.d.t = nil }()
	ctx := context.Background()
	host := tl.topo.Host
	before := tableSnapshot(t, host)
	td := &tableDaemon{t: t, tl: tl, dp: dp, pin: filepath.Join("/sys/fs/bpf", pinPrefix+tl.topo.Prefix+"-table"), logs: &daemonLog{}}
	// Whatever happens, the next datapath starts clean; on success
	// teardown has done all this already.
	t.Cleanup(func() {
		td.stop()
		host.Command(ctx, tl.bin, "down", "--pin-path", td.pin).Run()
		os.RemoveAll(td.pin)
		if t.Failed() {
			t.Logf("bpfnet run's log:\n%s", td.logs.String())
		}
	})
	t.Cleanup(func() { tableRemoveAll(t, tl.d) })
	td.start()

	e := &e2e{t: t, topo: tl.topo, ext: tl.ext, d: tl.d, hostAddr: addr4(tl.ext.HostAddr)}
	nets := tableNets(tl.trusted.Uplink+":"+tl.other.Uplink, tl.hostIP.String())
	ids := isoCreate(e, nets)
	ctrs := map[string]*isoCtr{}
	addrs := map[string]netip.Addr{}
	for _, c := range tableCtrs(addr4(tl.ext.Addr), addr4(tl.trusted.Addr), addr4(tl.trusted.HostAddr)) {
		isoRun(e, c)
		ctrs[c.name] = c
		addrs[c.name] = c.addr
		addrs[c.name+"@"+c.net] = c.addr
	}
	p := &tableProbe{t: t, tl: tl, td: td, ctrs: ctrs, addrs: addrs, sinks: map[string]*net.UDPConn{}, nets: nets}
	defer func() {
		for _, c := range p.sinks {
			c.Close()
		}
	}()
	failed := map[string]string{}

	for _, ph := range tablePhases {
		switch ph.name {
		case "connected":
			k1 := ctrs["k1"]
			if err := tl.d.cli.NetworkConnect(ctx, ids["tnat"], k1.id, nil); err != nil {
				t.Fatalf("docker network connect tnat k1: %v", err)
			}
			a := mnAddrs(e, k1.id)["tnat"]
			if !a.IsValid() {
				t.Fatalf("k1 has no address on tnat after docker network connect")
			}
			addrs["k1@tnat"] = a
		case "disconnected":
			if err := tl.d.cli.NetworkDisconnect(ctx, ids["tnat"], ctrs["k1"].id, false); err != nil {
				t.Fatalf("docker network disconnect tnat k1: %v", err)
			}
		case "allow-direct-routing":
			td.stop()
			td.start("--allow-direct-routing")
		}
		t.Run(ph.name, func(t *testing.T) {
			p.t = t
			p.phase(ph.rows, failed)
		})
		if ph.name == "networks" {
			// The twin of the check after teardown: what the
			// datapath installed shows in the snapshot.
			if during := tableSnapshot(t, host); during == before {
				t.Errorf("the %s datapath, serving, left no trace in the snapshot of the host namespace:\n%s", dp, during)
			}
		}
	}
	for _, n := range slices.Sorted(maps.Keys(failed)) {
		t.Logf("row %s failed with %s: %s", n, dp, failed[n])
	}

	// Teardown, then the host namespace must be as it was.
	tableRemoveAll(t, tl.d)
	td.stop()
	if out, err := host.Command(ctx, tl.bin, "down", "--pin-path", td.pin).CombinedOutput(); err != nil {
		t.Errorf("bpfnet down: %v\n%s", err, out)
	}
	if _, err := os.Stat(td.pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind by bpfnet down (%v)", td.pin, err)
	}
	if after := tableSnapshot(t, host); after != before {
		t.Errorf("the %s datapath left the host namespace changed:\nbefore:\n%s\nafter:\n%s", dp, before, after)
	}
}

// tableRemoveAll removes every container and every network but Docker's
// own.
func tableRemoveAll(t *testing.T, d *dockerd) {
	t.Helper()
	if d.cli == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		t.Errorf("listing containers: %v", err)
	}
	for _, c := range list {
		if err := d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			t.Errorf("removing container %s: %v", c.ID, err)
		}
	}
	nws, err := d.cli.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		t.Errorf("listing networks: %v", err)
	}
	for _, n := range nws {
		if n.Name == "bridge" || n.Name == "host" || n.Name == "none" {
			continue
		}
		if err := d.cli.NetworkRemove(ctx, n.ID); err != nil {
			t.Errorf("removing network %s: %v", n.Name, err)
		}
	}
}

// tableProbe runs the rows of a datapath.
type tableProbe struct {
	t     *testing.T
	tl    *tableLab
	td    *tableDaemon
	ctrs  map[string]*isoCtr
	addrs map[string]netip.Addr
	sinks map[string]*net.UDPConn // by "container:port"
	nets  []isoNet
}

// reachWithin is how long a reach row is retried: the datapath follows
// Docker's events, and the machine may be loaded.
const reachWithin = 20 * time.Second

// phase runs the reach and egress rows first, retrying each until it
// passes, which also waits until the daemon serves the phase's setup;
// then each blocked row once. A row's failure is recorded in failed.
func (p *tableProbe) phase(rows []tableRow, failed map[string]string) {
	t := p.t
	order := slices.Clone(rows)
	slices.SortStableFunc(order, func(a, b tableRow) int {
		return bool2int(a.want.kind == "blocked") - bool2int(b.want.kind == "blocked")
	})
	for _, r := range order {
		why, isPending := pending(p.td.dp, r.name)
		within := reachWithin
		if isPending {
			// Known to fail: a few tries are enough to see it still does.
			within = 3 * time.Second
		}
		err := p.row(r, within)
		var perr probeError
		switch {
		case errors.As(err, &perr):
			failed[r.name] = err.Error()
			t.Errorf("row %s: %v", r.name, err)
		case isPending && err == nil:
			t.Errorf("row %s passes with %s, yet it is listed as pending (%s): take it off the list", r.name, p.td.dp, why)
		case isPending:
			t.Logf("row %s: %v (%s)", r.name, err, why)
		case err != nil:
			failed[r.name] = err.Error()
			t.Errorf("row %s (%s -> %s:%d, want %s): %v", r.name, r.from, r.to, r.port, r.want.kind, err)
		}
	}
}

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// source is the namespace a row connects from and the address its
// servers must see it with (invalid: not checked, the host's choice).
func (p *tableProbe) source(name string) (*lab.Namespace, netip.Addr, error) {
	switch name {
	case "ext":
		return &p.tl.ext.Namespace, addr4(p.tl.ext.Addr), nil
	case "trusted":
		return &p.tl.trusted.Namespace, addr4(p.tl.trusted.Addr), nil
	case "other":
		return &p.tl.other.Namespace, addr4(p.tl.other.Addr), nil
	case "host":
		return p.tl.topo.Host, netip.Addr{}, nil
	}
	c, ok := p.ctrs[name]
	if !ok {
		return nil, netip.Addr{}, fmt.Errorf("no source %q", name)
	}
	return c.ns, netip.Addr{}, nil
}

// dest is the address a row connects to.
func (p *tableProbe) dest(r tableRow) (netip.AddrPort, error) {
	var a netip.Addr
	switch r.to {
	case "host", "host-forged":
		a = addr4(p.tl.ext.HostAddr)
	case "host2":
		a = addr4(p.tl.trusted.HostAddr)
	case "host3":
		a = addr4(p.tl.other.HostAddr)
	case "lo", "lo-forged":
		a = netip.MustParseAddr("127.0.0.1")
	case "ext":
		a = addr4(p.tl.ext.Addr)
	default:
		a = p.addrs[r.to]
	}
	if !a.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("no destination %q", r.to)
	}
	return netip.AddrPortFrom(a, r.port), nil
}

// row runs one row, retrying a reach or egress row for up to within, and
// says how it differs from what it wants.
func (p *tableProbe) row(r tableRow, within time.Duration) error {
	ns, saw, err := p.source(r.from)
	if err != nil {
		return probeError{err}
	}
	to, err := p.dest(r)
	if err != nil {
		return probeError{err}
	}
	if !ns.Exists() {
		return probeError{fmt.Errorf("namespace %s (%s) is gone", ns.Name, ns.Path)}
	}
	switch r.want.kind {
	case "reach", "egress":
		var last string
		deadline := time.Now().Add(within)
		for {
			msg, ok, err := p.attempt(r, ns, to, saw)
			if err != nil {
				return probeError{err}
			}
			if ok {
				return nil
			}
			last = msg
			if time.Now().After(deadline) {
				return fmt.Errorf("not within %v: %s", within, last)
			}
			time.Sleep(50 * time.Millisecond)
		}
	case "blocked":
		reason := r.want.reason
		var before uint64
		if p.td.ebpf != nil && reason != 0 {
			d, err := p.td.ebpf.Drops()
			if err != nil {
				return fmt.Errorf("reading the drop counters: %w", err)
			}
			before = d[reason]
		}
		if r.proto != "" {
			msg, ok, err := p.attempt(r, ns, to, saw)
			if err != nil {
				return probeError{err}
			}
			if ok {
				return fmt.Errorf("reached %s: %s", to, msg)
			}
		} else {
			line, err := ns.Greeting(to.String())
			switch {
			case err == nil:
				return fmt.Errorf("reached %s: %q", to, line)
			case lab.IsTimeout(err):
			case r.want.refused && errors.Is(err, syscall.ECONNREFUSED):
			default:
				return fmt.Errorf("%s: %v, want the SYN dropped (a timeout)", to, err)
			}
		}
		if p.td.ebpf != nil && reason != 0 {
			d, err := p.td.ebpf.Drops()
			if err != nil {
				return fmt.Errorf("reading the drop counters: %w", err)
			}
			if d[reason] <= before {
				return fmt.Errorf("blocked, but drops[%s] stayed at %d (others: %v)", reason, before, d)
			}
		}
		return nil
	}
	return probeError{fmt.Errorf("row %s: unknown want %q", r.name, r.want.kind)}
}

// probeError is a probe that could not run: it fails its row whatever the
// row wants, pending or not.
type probeError struct{ error }

func (e probeError) Error() string { return "the probe could not run: " + e.error.Error() }

// attempt tries a row's connection once and tells whether it got through
// as the row wants (with what happened, when it did not); an error is a
// probe that could not run.
func (p *tableProbe) attempt(r tableRow, ns *lab.Namespace, to netip.AddrPort, saw netip.Addr) (string, bool, error) {
	switch r.proto {
	case "":
		line, err := ns.Greeting(to.String())
		msg, ok := p.judge(r, line, err, saw)
		return msg, ok, nil
	case "icmp":
		ok, err := ns.Ping(context.Background(), to.Addr().String())
		return fmt.Sprintf("ping %s: answered %v", to.Addr(), ok), ok, err
	case "udp":
		return p.udp(r, ns, to)
	}
	return "", false, fmt.Errorf("unknown proto %q", r.proto)
}

// udp sends a datagram carrying a token of its own to to and tells whether
// the test's socket in container r.at's namespace on r.atPort got it
// within a second.
func (p *tableProbe) udp(r tableRow, ns *lab.Namespace, to netip.AddrPort) (string, bool, error) {
	c, ok := p.ctrs[r.at]
	if !ok {
		return "", false, fmt.Errorf("row %s: no container %q to receive", r.name, r.at)
	}
	key := fmt.Sprintf("%s:%d", r.at, r.atPort)
	sink := p.sinks[key]
	if sink == nil {
		var err error
		if sink, err = c.ns.ListenUDP(fmt.Sprintf("0.0.0.0:%d", r.atPort)); err != nil {
			return "", false, err
		}
		p.sinks[key] = sink
	}
	token := fmt.Sprintf("%s %d", r.name, time.Now().UnixNano())
	var err error
	if strings.HasSuffix(r.to, "-forged") {
		x := addr4(p.tl.ext.Addr)
		err = ns.SendIPv4(addr4(p.tl.ext.HostAddr), lab.UDPv4(x, to.Addr(), 40000, to.Port(), []byte(token)))
	} else {
		err = ns.Do(func() error {
			s, err := net.Dial("udp", to.String())
			if err != nil {
				return err
			}
			defer s.Close()
			_, err = s.Write([]byte(token))
			return err
		})
	}
	if err != nil {
		return "", false, fmt.Errorf("sending to %s: %w", to, err)
	}
	buf := make([]byte, 512)
	sink.SetReadDeadline(time.Now().Add(time.Second))
	for {
		n, from, err := sink.ReadFromUDP(buf)
		if lab.IsTimeout(err) {
			return "nothing arrived", false, nil
		}
		if err != nil {
			return "", false, err
		}
		if string(buf[:n]) == token {
			return fmt.Sprintf("%s got it from %s", r.at, from), true, nil
		}
	}
}

// judge tells whether the greeting of a reach or egress row is what it
// wants, and if not, what it was.
func (p *tableProbe) judge(r tableRow, line string, err error, saw netip.Addr) (string, bool) {
	if err != nil {
		return err.Error(), false
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return fmt.Sprintf("answer %q", line), false
	}
	peer, perr := netip.ParseAddrPort(f[0])
	if perr != nil {
		return fmt.Sprintf("answer %q", line), false
	}
	if r.want.kind == "egress" {
		var want netip.Addr
		switch r.want.source {
		case "host":
			want = addr4(p.tl.ext.HostAddr)
		case "hostip":
			want = p.tl.hostIP
		default:
			want = p.ctrs[r.want.source].addr
		}
		if f[1] != "external" || peer.Addr() != want {
			return fmt.Sprintf("the external server saw %q, want %s", line, want), false
		}
		return "", true
	}
	if f[1] != r.want.who {
		return fmt.Sprintf("answer %q, want %s's", line, r.want.who), false
	}
	if r.want.seenAs != "" {
		i := slices.IndexFunc(p.nets, func(n isoNet) bool { return n.name == r.want.seenAs })
		if i < 0 {
			return fmt.Sprintf("no network %s", r.want.seenAs), false
		}
		if gw := p.nets[i].gateway(); peer.Addr() != gw {
			return fmt.Sprintf("%s saw the client as %s, want %s (masqueraded to %s's gateway)", r.want.who, peer.Addr(), gw, r.want.seenAs), false
		}
		return "", true
	}
	if c, ok := p.ctrs[r.from]; ok && !strings.HasPrefix(r.to, "host") {
		// (Through a host port, the host's own masquerade may stand
		// in for it: Docker's hairpin rule.)
		// A container is seen with one of its own addresses.
		if !slices.ContainsFunc(p.addrList(c.name), func(a netip.Addr) bool { return a == peer.Addr() }) {
			return fmt.Sprintf("%s saw the client as %s, want one of %s's addresses", r.want.who, peer.Addr(), c.name), false
		}
	} else if saw.IsValid() && peer.Addr() != saw {
		return fmt.Sprintf("%s saw the client as %s, want %s (the real client address)", r.want.who, peer.Addr(), saw), false
	}
	return "", true
}

// addrList are a container's addresses, by "name@network" and "name".
func (p *tableProbe) addrList(name string) []netip.Addr {
	var out []netip.Addr
	for k, a := range p.addrs {
		if k == name || strings.HasPrefix(k, name+"@") {
			out = append(out, a)
		}
	}
	return out
}

// builtinChain matches the chains iptables-save lists for every table it
// has loaded, and their policy lines.
var builtinChain = regexp.MustCompile(`^:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT`)

// tableSnapshot is what a datapath may change in the host namespace and
// must set back: the iptables rules and user chains (the built-in tables
// and chains iptables loads stay), the nftables tables but those of
// iptables-nft (which iptables-save shows), and the BPF programs on its
// interfaces.
func tableSnapshot(t *testing.T, ns *lab.Namespace) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(lab.IptablesSave(t, ns), "\n") {
		if strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, ":") && !builtinChain.MatchString(line) {
			fmt.Fprintln(&b, line)
		}
	}
	out, err := ns.Run(context.Background(), "nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset: %v", err)
	}
	skip := false
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "table ") {
			f := strings.Fields(line)
			skip = len(f) >= 3 && f[1] == "ip" && slices.Contains([]string{"filter", "nat", "raw", "mangle", "security"}, f[2])
		}
		if !skip && strings.TrimSpace(line) != "" {
			fmt.Fprintln(&b, line)
		}
		if line == "}" {
			skip = false
		}
	}
	atts, err := ns.TCAttachments()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		fmt.Fprintln(&b, a)
	}
	return b.String()
}

// TestDockerTableRows checks the table without root: its rows are
// consistent (checkTableRows), and a probe that cannot run, from a source
// that is not there or a namespace that is gone, fails its row, even a
// blocked one, rather than passing as blocked.
func TestDockerTableRows(t *testing.T) {
	checkTableRows(t)
	p := &tableProbe{tl: &tableLab{}, td: &tableDaemon{dp: "ebpf"},
		ctrs:  map[string]*isoCtr{"gone": {name: "gone", ns: &lab.Namespace{Name: "gone", Path: "/proc/0/ns/net"}}},
		addrs: map[string]netip.Addr{"n1": netip.MustParseAddr("192.0.2.2")}}
	for _, r := range []tableRow{
		tr("no-source", "nowhere", "n1", 80, blocked(datapath.DropNotPublished, "x")),
		tr("no-destination", "gone", "nowhere", 80, blocked(datapath.DropNotPublished, "x")),
		tr("namespace-gone", "gone", "n1", 80, blocked(datapath.DropNotPublished, "x")),
		tr("namespace-gone-reach", "gone", "n1", 80, reach("n1")),
	} {
		var perr probeError
		if err := p.row(r, time.Second); !errors.As(err, &perr) {
			t.Errorf("row %s: %v, want a probe that could not run", r.name, err)
		}
	}
}

// SPDX-License-Identifier: Apache-2.0

package docker

// Containers on several networks, end to end, with a dockerd of the
// test's own and Source.Watch driving the eBPF datapath. The networks are
// made as Docker Compose makes them (<project>_<name>, labelled
// com.docker.compose.project and .network) and so are the containers
// (<project>-<service>-<n>, labelled), so nothing may depend on Docker's
// default network or on one network per container:
//
//   - a running container joins two more networks (docker network
//     connect), one of them with enable_icc=false: within a second each
//     new interface is an endpoint, its network's rules apply to it, its
//     published port keeps answering; it leaves one again (docker network
//     disconnect): within a second that endpoint is gone;
//   - a container is created on one network, connected to a second and
//     only then started: both interfaces are served from the start;
//   - a container on an internal network only publishes nothing until it
//     joins a normal network, and nothing again once it leaves it;
//   - the project goes down and up again (containers and networks
//     removed, the networks made again with their names and subnets, new
//     ids and bridges): its containers are served on the new bridges.
//
// What Docker's iptables rules do for a dual-homed container (Docker 28's
// as 20.10's): the isolation rules match bridges (DOCKER-ISOLATION-STAGE-1
// -i br-A ! -o br-A, STAGE-2 -o br-B -j DROP), and Docker 28's
// direct-access rule drops a packet to a container address that does not
// come in on that address's bridge. So a container only on A reaches the
// dual-homed container's A address and not its B address, and never a
// container only on B; the dual-homed container reaches both networks,
// each through its own interface (bridged, never forwarded between
// bridges). Its published ports are DNATed to its address on the
// network of its gateway endpoint, the one its default route goes
// through (libnetwork's ProgramExternalConnectivity), which moves when a
// network sorting first is connected or disconnected.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// followWithin is how soon the datapath must follow a change of Docker's.
const followWithin = time.Second

// mnOthers is how many more containers TestDaemonDockerMultiNet runs
// (with 40, connect and disconnect were followed in 130 ms).
const mnOthers = 12

// Compose's labels.
const (
	composeProject = "com.docker.compose.project"
	composeNetwork = "com.docker.compose.network"
	composeService = "com.docker.compose.service"
	composeNumber  = "com.docker.compose.container-number"
	composeOneoff  = "com.docker.compose.oneoff"
)

const mnProject = "mnproj"

// mnLabels are the labels Compose gives the container of a service.
func mnLabels(service string) map[string]string {
	return map[string]string{composeProject: mnProject, composeService: service, composeNumber: "1", composeOneoff: "False"}
}

// mnAddrs returns a container's address on each network, from Docker.
func mnAddrs(e *e2e, id string) map[string]netip.Addr {
	e.t.Helper()
	out := map[string]netip.Addr{}
	for name, es := range e.d.Inspect(id).NetworkSettings.Networks {
		if es != nil {
			out[name] = parseAddr(es.IPAddress)
		}
	}
	return out
}

// mnVeths returns, for each IPv4 address in ns, the ifindex of the peer of
// the interface holding it: the host end of that interface's veth.
func mnVeths(t *testing.T, ns *lab.Namespace) map[netip.Addr]uint32 {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]uint32{}
	for _, l := range links {
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && l.Type() == "veth" {
				out[ip] = uint32(l.Attrs().ParentIndex)
			}
		}
	}
	return out
}

// mnDefaultVia returns the gateway of ns's default route.
func mnDefaultVia(t *testing.T, ns *lab.Namespace) netip.Addr {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
				return gw
			}
		}
	}
	t.Fatalf("no default route in %s: %v", ns.Name, routes)
	return netip.Addr{}
}

// followed polls the datapath's endpoints until ok holds of them and
// fails the test if that takes longer than followWithin since since (when
// the Docker command that changed things returned). It returns how long
// it took.
func (e *e2e) followed(t *testing.T, what string, since time.Time, ok func(map[netip.Addr]datapath.EndpointInfo) bool) time.Duration {
	t.Helper()
	deadline := since.Add(followWithin)
	for {
		eps, err := e.dp.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		byAddr := map[netip.Addr]datapath.EndpointInfo{}
		for _, ep := range eps {
			byAddr[ep.Addr] = ep
		}
		if ok(byAddr) {
			d := time.Since(since)
			t.Logf("the datapath followed %s in %v", what, d.Round(time.Millisecond))
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("the datapath did not follow %s within %v: endpoints %+v", what, followWithin, eps)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mnRunTwo creates c on c.net, connects it to second and only then starts
// it, as Compose does with a service on two networks (before API 1.44,
// which takes them all at create), and waits until the datapath serves
// both interfaces, within followWithin of the start. It fills in c's id,
// namespace and address (on c.net) and returns its addresses by network
// and its pid.
func mnRunTwo(t *testing.T, e *e2e, c *isoCtr, second string) (map[string]netip.Addr, int) {
	t.Helper()
	exposed, bindings, err := nat.ParsePortSpecs(c.publish)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := &container.Config{Image: testImage, Hostname: c.name, Cmd: []string{"/bin/echo", "-tcp", "80"}, ExposedPorts: exposed, Labels: c.labels}
	hc := &container.HostConfig{PortBindings: bindings, NetworkMode: container.NetworkMode(c.net)}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{c.net: {}}}
	created, err := e.d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, c.name)
	if err != nil {
		t.Fatalf("creating %s: %v", c.name, err)
	}
	c.id = created.ID
	if err := e.d.cli.NetworkConnect(ctx, second, c.id, nil); err != nil {
		t.Fatalf("docker network connect %s %s (created): %v", second, c.name, err)
	}
	if err := e.d.cli.ContainerStart(ctx, c.id, container.StartOptions{}); err != nil {
		t.Fatalf("starting %s: %v", c.name, err)
	}
	t0 := time.Now()
	ci := e.d.Inspect(c.id)
	c.ns = &lab.Namespace{Name: c.name, Path: fmt.Sprintf("/proc/%d/ns/net", ci.State.Pid)}
	addrs := mnAddrs(e, c.id)
	if len(addrs) != 2 || !addrs[c.net].IsValid() || !addrs[second].IsValid() {
		t.Fatalf("%s's networks: %v, want %s and %s", c.name, addrs, c.net, second)
	}
	c.addr = addrs[c.net]
	veths := mnVeths(t, c.ns)
	e.followed(t, "docker start of "+c.name+" on two networks", t0, func(eps map[netip.Addr]datapath.EndpointInfo) bool {
		for _, a := range addrs {
			if ep, ok := eps[a]; !ok || ep.Ifindex != veths[a] || veths[a] == 0 {
				return false
			}
		}
		return true
	})
	return addrs, ci.State.Pid
}

// mnProbe is a connection from a container to an address.
type mnProbe struct {
	from *isoCtr
	to   netip.Addr
}

// expectReach: from reaches the echo server of who at to:80, which sees
// the client as saw.
func expectReach(t *testing.T, from *isoCtr, to netip.Addr, who string, saw netip.Addr) {
	t.Helper()
	dst := netip.AddrPortFrom(to, 80).String()
	line, err := from.ns.Greeting(dst)
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[1] != who {
		t.Errorf("%s to %s: %q %v, want %s's answer", from.name, dst, line, err, who)
		return
	}
	if ap, err := netip.ParseAddrPort(f[0]); err != nil || ap.Addr() != saw {
		t.Errorf("%s to %s: %s saw the client as %s, want %s", from.name, dst, who, f[0], saw)
	}
}

// expectBlocked: every probe's SYN to port 80 is dropped, each counted
// under reason.
func (e *e2e) expectBlocked(t *testing.T, reason datapath.DropReason, probes ...mnProbe) {
	t.Helper()
	before := e.drops(t)[reason]
	for _, p := range probes {
		dst := netip.AddrPortFrom(p.to, 80).String()
		if line, err := p.from.ns.Greeting(dst); err == nil {
			t.Errorf("%s: %s reached %s (%q), want it blocked", reason, p.from.name, dst, line)
		} else if !lab.IsTimeout(err) {
			t.Errorf("%s: %s to %s: %v, want a timeout (the SYN dropped)", reason, p.from.name, dst, err)
		}
	}
	if after := e.drops(t)[reason]; after < before+uint64(len(probes)) {
		t.Errorf("drops[%s] %d -> %d after %d blocked connections, want one drop each at least", reason, before, after, len(probes))
	}
}

// lastState is the latest state Watch applied that holds ok.
func (e *e2e) lastState(t *testing.T, ok func(datapath.State) bool) datapath.State {
	t.Helper()
	var st datapath.State
	e.waitApplied(t, func(s datapath.State) bool {
		if ok(s) {
			st = s
			return true
		}
		return false
	})
	return st
}

// expectPortsTo checks that every port of container name leads to addr.
func expectPortsTo(t *testing.T, st datapath.State, name string, addr netip.Addr) {
	t.Helper()
	n := 0
	for _, m := range st.Ports {
		if m.Container != name {
			continue
		}
		n++
		if m.ContainerIP != addr {
			t.Errorf("port %s of %s leads to %s, want %s (the gateway endpoint's address)", m, name, m.ContainerIP, addr)
		}
	}
	if n == 0 {
		t.Errorf("no port of %s in the state", name)
	}
}

func TestDockerMultiNetE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare", "busybox")
	e := newWatchedE2E(t)
	ctx := context.Background()

	// Compose's networks: "back" sorts before "default", so connecting
	// it moves the gateway endpoint, and the published ports, to it.
	nets := []isoNet{
		{name: mnProject + "_default", subnet: "172.30.40.0/24", masq: true},
		{name: mnProject + "_back", subnet: "172.30.41.0/24", masq: true},
		{name: mnProject + "_quiet", subnet: "172.30.42.0/24", opts: map[string]string{optICC: "false"}, masq: true, noICC: true},
		{name: mnProject + "_inner", subnet: "172.30.43.0/24", internal: true},
	}
	netA, netB, netC, netI := nets[0].name, nets[1].name, nets[2].name, nets[3].name
	ids := map[string]string{}
	// up creates networks as Compose does and waits until Watch gives
	// them to the datapath.
	up := func(nets []isoNet) {
		for _, n := range nets {
			key := strings.TrimPrefix(n.name, mnProject+"_")
			nw, err := e.d.cli.NetworkCreate(ctx, n.name, network.CreateOptions{
				Driver: "bridge", Options: n.opts, Internal: n.internal,
				Labels: map[string]string{composeProject: mnProject, composeNetwork: key, "com.docker.compose.version": "2.29.1"},
				IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: n.subnet}}},
			})
			if err != nil {
				t.Fatalf("creating network %s: %v", n.name, err)
			}
			ids[n.name] = nw.ID
		}
		e.waitApplied(t, func(st datapath.State) bool {
			for _, n := range nets {
				want := datapath.Network{Name: n.name, Bridge: "br-" + ids[n.name][:12], Subnet: netip.MustParsePrefix(n.subnet),
					Gateway: n.gateway(), Masquerade: n.masq, NoICC: n.noICC, Internal: n.internal}
				if !slices.Contains(st.Networks, want) {
					return false
				}
			}
			return true
		})
	}
	up(nets)

	web := &isoCtr{name: mnProject + "-web-1", net: netA, publish: []string{"8090:80"}, labels: mnLabels("web")}
	peerA := &isoCtr{name: mnProject + "-peera-1", net: netA, labels: mnLabels("peera")}
	peerB := &isoCtr{name: mnProject + "-peerb-1", net: netB, labels: mnLabels("peerb")}
	peerB2 := &isoCtr{name: mnProject + "-peerb2-1", net: netB, labels: mnLabels("peerb2")}
	peerC := &isoCtr{name: mnProject + "-peerc-1", net: netC, labels: mnLabels("peerc")}
	for _, c := range []*isoCtr{web, peerA, peerB, peerB2, peerC} {
		isoRun(e, c)
	}
	e.waitApplied(t, func(s datapath.State) bool {
		for _, c := range []*isoCtr{web, peerA, peerB, peerB2, peerC} {
			if !hasEndpoint(s, c.name) {
				return false
			}
		}
		return true
	})
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, 2*time.Second)
	isoServe(t, e.topo.Host, nets[2].gateway().String()+":7", "gateway")

	// web's address on each network.
	webAddr := map[string]netip.Addr{netA: web.addr}
	gateway := map[netip.Addr]string{}
	for _, n := range nets {
		gateway[n.gateway()] = n.name
	}
	// gwAddr is the address of c on the network its default route goes
	// through: where Docker sends its published ports.
	gwAddr := func(t *testing.T, c *isoCtr, addrs map[string]netip.Addr) netip.Addr {
		t.Helper()
		via := mnDefaultVia(t, c.ns)
		n, ok := gateway[via]
		if !ok || !addrs[n].IsValid() {
			t.Fatalf("%s's default route goes via %s, the gateway of none of its networks %v", c.name, via, addrs)
		}
		t.Logf("%s's gateway endpoint is on %s (default via %s)", c.name, n, via)
		return addrs[n]
	}

	// Connect web to B, then to C (enable_icc=false), while it runs.
	for _, n := range []string{netB, netC} {
		if err := e.d.cli.NetworkConnect(ctx, ids[n], web.id, nil); err != nil {
			t.Fatalf("docker network connect %s %s: %v", n, web.name, err)
		}
		t0 := time.Now()
		addrs := mnAddrs(e, web.id)
		a := addrs[n]
		if !a.IsValid() {
			t.Fatalf("%s has no address on %s after connecting: %v", web.name, n, addrs)
		}
		webAddr[n] = a
		veth := mnVeths(t, web.ns)[a]
		if veth == 0 {
			t.Fatalf("no veth in %s holds its address %s on %s", web.name, a, n)
		}
		e.followed(t, "docker network connect "+n, t0, func(eps map[netip.Addr]datapath.EndpointInfo) bool {
			ep, ok := eps[a]
			return ok && ep.Ifindex == veth
		})
	}
	t.Logf("%s: %v", web.name, webAddr)

	t.Run("Connected", func(t *testing.T) {
		st := e.lastState(t, func(s datapath.State) bool {
			n := 0
			for _, ep := range s.Endpoints {
				if ep.Container == web.name && ep.Addr == webAddr[ep.Network] && ep.Labels[composeProject] == mnProject {
					n++
				}
			}
			return n == 3
		})
		// The programs are on each of its veths.
		atts, err := loader.List(e.pin)
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range st.Endpoints {
			if ep.Container != web.name {
				continue
			}
			for _, want := range []struct {
				prog string
				dir  loader.Direction
			}{{datapath.ProgFromContainer, loader.Ingress}, {datapath.ProgToContainer, loader.Egress}} {
				if !slices.ContainsFunc(atts, func(a loader.Attachment) bool {
					return a.Interface == ep.HostVeth && a.Program == want.prog && a.Direction == want.dir && a.ProgramID != 0
				}) {
					t.Errorf("%s (%s on %s): no %s on %s", ep.HostVeth, web.name, ep.Network, want.prog, want.dir)
				}
			}
		}
		expectPortsTo(t, st, web.name, gwAddr(t, web, webAddr))
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin)
		// Out through its new default route, B's, masqueraded.
		e.expectMasquerade(t, web.id)
		// Its published port through the host from B, the network of
		// its gateway endpoint (the answer goes back the same way), and
		// from A, where the answer leaves by web's interface on A from
		// its B address: one container's endpoints share their
		// addresses (bpf src_allowed), and the hairpin is translated
		// back on the way to A's peer. (Docker without docker-proxy
		// drops that SYN: DOCKER-ISOLATION between the two bridges;
		// docker-proxy relays it, as bpfnet's hairpin does.)
		for _, peer := range []*isoCtr{peerB, peerA} {
			line, err := peer.ns.Greeting(netip.AddrPortFrom(e.hostAddr, 8090).String())
			if f := strings.Fields(line); err != nil || len(f) != 2 || f[1] != web.name {
				t.Errorf("%s to %s:8090: %q %v, want %s's answer", peer.name, e.hostAddr, line, err, web.name)
			}
		}

		// B's peer reaches it by its B address, and it the peer; A's
		// peer by its A address.
		expectReach(t, peerB, webAddr[netB], web.name, peerB.addr)
		expectReach(t, web, peerB.addr, peerB.name, webAddr[netB])
		expectReach(t, peerA, webAddr[netA], web.name, peerA.addr)
		expectReach(t, web, peerA.addr, peerA.name, webAddr[netA])
		// Between networks, isolation holds for those on one network.
		e.expectBlocked(t, datapath.DropIsolation,
			mnProbe{peerA, webAddr[netB]}, mnProbe{peerB, webAddr[netA]}, mnProbe{peerA, peerB.addr}, mnProbe{peerB, peerA.addr})
		// C has no ICC, for web's interface in C as for any other; C's
		// gateway, the host, is not another container (positive twin).
		e.expectBlocked(t, datapath.DropICC, mnProbe{peerC, webAddr[netC]}, mnProbe{web, peerC.addr})
		before := e.drops(t)
		for _, c := range []*isoCtr{peerC, web} {
			line, err := c.ns.Greeting(netip.AddrPortFrom(nets[2].gateway(), 7).String())
			if f := strings.Fields(line); err != nil || len(f) != 2 || f[1] != "gateway" {
				t.Errorf("%s to %s's gateway: %q %v, want the host's answer; drops %v", c.name, netC, line, err, dropsSince(before, e.drops(t)))
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	// Disconnect web from B.
	oldB := webAddr[netB]
	oldIfindex := mnVeths(t, web.ns)[oldB]
	if err := e.d.cli.NetworkDisconnect(ctx, ids[netB], web.id, false); err != nil {
		t.Fatalf("docker network disconnect %s %s: %v", netB, web.name, err)
	}
	t0 := time.Now()
	delete(webAddr, netB)
	e.followed(t, "docker network disconnect "+netB, t0, func(eps map[netip.Addr]datapath.EndpointInfo) bool {
		if _, ok := eps[oldB]; ok {
			return false
		}
		for _, ep := range eps {
			if ep.Ifindex == oldIfindex {
				return false
			}
		}
		_, a := eps[webAddr[netA]]
		_, c := eps[webAddr[netC]]
		return a && c
	})

	t.Run("Disconnected", func(t *testing.T) {
		if got := mnAddrs(e, web.id); got[netB].IsValid() {
			t.Fatalf("%s still has %s on %s after the disconnect", web.name, got[netB], netB)
		}
		st := e.lastState(t, func(s datapath.State) bool {
			return !slices.ContainsFunc(s.Endpoints, func(ep datapath.Endpoint) bool { return ep.Container == web.name && ep.Network == netB }) &&
				slices.ContainsFunc(s.Endpoints, func(ep datapath.Endpoint) bool { return ep.Container == web.name && ep.Network == netA })
		})
		expectPortsTo(t, st, web.name, gwAddr(t, web, webAddr))
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin)
		e.expectMasquerade(t, web.id)
		expectReach(t, peerA, webAddr[netA], web.name, peerA.addr)

		// Its old B address: B's peer no longer reaches it there, while
		// it reaches the other peer of B.
		expectReach(t, peerB, peerB2.addr, peerB2.name, peerB.addr)
		if line, err := peerB.ns.Greeting(netip.AddrPortFrom(oldB, 80).String()); err == nil {
			t.Errorf("%s reached %s's old address %s on %s: %q", peerB.name, web.name, oldB, netB, line)
		}

		// A packet forged from that address by another container of B is
		// dropped as spoofed; the same container's own are delivered.
		c, err := peerB2.ns.ListenUDP(netip.AddrPortFrom(peerB2.addr, 5000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := map[netip.Addr]int{}
		receive := func(src netip.Addr, want int) int {
			deadline := time.Now().Add(3 * time.Second)
			buf := make([]byte, 256)
			for got[src] < want && time.Now().Before(deadline) {
				c.SetReadDeadline(deadline)
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					break
				}
				got[from.Addr().Unmap()]++
			}
			return got[src]
		}
		send := func(src netip.Addr) {
			t.Helper()
			ds := make([][]byte, 20)
			for i := range ds {
				ds[i] = lab.UDPv4(src, peerB2.addr, 40000, 5000, []byte("from "+src.String()))
			}
			if err := peerB.ns.SendIPv4(peerB2.addr, ds...); err != nil {
				t.Fatalf("sending from %s: %v", peerB.name, err)
			}
		}
		before := e.drops(t)[datapath.DropSpoofed]
		send(oldB)
		send(peerB.addr)
		if n := receive(peerB.addr, 20); n != 20 {
			t.Errorf("%s received %d of %s's 20 datagrams from its own address, want all", peerB2.name, n, peerB.name)
		}
		if n := got[oldB]; n != 0 {
			t.Errorf("%s received %d datagrams forged from %s's old address %s, want none", peerB2.name, n, web.name, oldB)
		}
		if n := e.drops(t)[datapath.DropSpoofed] - before; n < 20 {
			t.Errorf("%d drops counted as spoofed after 20 datagrams forged from %s, want 20", n, oldB)
		}
	})

	// Created on A, connected to B, then started: served from its start.
	t.Run("TwoAtStart", func(t *testing.T) {
		dual := &isoCtr{name: mnProject + "-dual-1", net: netA, publish: []string{"8091:80"}, labels: mnLabels("dual")}
		addrs, pid := mnRunTwo(t, e, dual, netB)
		veths := mnVeths(t, dual.ns)
		// Without its MAC (an API that leaves it out) each interface is
		// found by its address.
		err := e.topo.Host.Do(func() error {
			for n, a := range addrs {
				name, _, err := (netlinkKernel{}).hostVeth(pid, nil, a)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", a, n, err)
				}
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if uint32(l.Attrs().Index) != veths[a] {
					return fmt.Errorf("%s on %s: found %s (ifindex %d), want ifindex %d", a, n, name, l.Attrs().Index, veths[a])
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("the host veths of %s by address: %v", dual.name, err)
		}
		st := e.lastState(t, func(s datapath.State) bool {
			n := 0
			for _, ep := range s.Endpoints {
				if ep.Container == dual.name && ep.Addr == addrs[ep.Network] {
					n++
				}
			}
			return n == 2
		})
		expectPortsTo(t, st, dual.name, gwAddr(t, dual, addrs))
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8091), dual.name, followWithin)
		e.expectMasquerade(t, dual.id)
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin)

		expectReach(t, peerA, addrs[netA], dual.name, peerA.addr)
		expectReach(t, peerB, addrs[netB], dual.name, peerB.addr)
		expectReach(t, dual, peerA.addr, peerA.name, addrs[netA])
		expectReach(t, dual, peerB.addr, peerB.name, addrs[netB])
		e.expectBlocked(t, datapath.DropIsolation,
			mnProbe{peerA, addrs[netB]}, mnProbe{peerB, addrs[netA]}, mnProbe{peerA, peerB.addr}, mnProbe{peerB, peerA.addr})
		// web, on A and C, is one of A's.
		expectReach(t, dual, webAddr[netA], web.name, addrs[netA])
		e.expectBlocked(t, datapath.DropIsolation, mnProbe{dual, webAddr[netC]})
	})

	// A container on an internal network only publishes nothing (Docker
	// gives its ports no endpoint); connected to a normal network it
	// publishes them there, disconnected no more.
	inner := &isoCtr{name: mnProject + "-inner-1", net: netI, publish: []string{"8092:80"}, labels: mnLabels("inner")}
	isoRun(e, inner)
	e.waitApplied(t, func(s datapath.State) bool { return hasEndpoint(s, inner.name) })
	isoServe(t, e.topo.Host, nets[3].gateway().String()+":80", "gateway")
	t.Run("InternalThenConnected", func(t *testing.T) {
		port := netip.AddrPortFrom(e.hostAddr, 8092)
		// notServed checks that the port does not answer, and that
		// 8090, web's, does (positive twin).
		notServed := func(within time.Duration) {
			t.Helper()
			deadline := time.Now().Add(within)
			for {
				line, err := e.dial("tcp", port)
				if err != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s answered %q, want nothing there", port, line)
				}
				time.Sleep(10 * time.Millisecond)
			}
			e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin)
		}
		notServed(0)
		if err := e.d.cli.NetworkConnect(ctx, ids[netA], inner.id, nil); err != nil {
			t.Fatalf("docker network connect %s %s: %v", netA, inner.name, err)
		}
		t0 := time.Now()
		e.expectEcho(t, "tcp", port, inner.name, followWithin)
		t.Logf("%s answered %v after docker network connect returned", port, time.Since(t0).Round(time.Millisecond))
		addrs := mnAddrs(e, inner.id)
		st := e.lastState(t, func(s datapath.State) bool {
			return slices.ContainsFunc(s.Ports, func(m datapath.PortMapping) bool { return m.Container == inner.name })
		})
		expectPortsTo(t, st, inner.name, addrs[netA])
		if err := e.d.cli.NetworkDisconnect(ctx, ids[netA], inner.id, false); err != nil {
			t.Fatalf("docker network disconnect %s %s: %v", netA, inner.name, err)
		}
		notServed(followWithin)
		expectReach(t, inner, nets[3].gateway(), "gateway", addrs[netI])
	})

	if t.Failed() {
		t.FailNow()
	}

	// docker compose down, then up: the project's networks come back
	// with the same names and subnets, new ids and new bridges.
	oldBridges := map[string]string{netA: "br-" + ids[netA][:12], netB: "br-" + ids[netB][:12]}
	e.mu.Lock()
	nerrs := len(e.errs)
	e.mu.Unlock()
	list, err := e.d.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if err := e.d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nets {
		if err := e.d.cli.NetworkRemove(ctx, n.name); err != nil {
			t.Fatalf("removing network %s: %v", n.name, err)
		}
	}
	e.waitApplied(t, func(s datapath.State) bool {
		return len(s.Endpoints) == 0 && !slices.ContainsFunc(s.Networks, func(n datapath.Network) bool { return strings.HasPrefix(n.Name, mnProject+"_") })
	})
	e.mu.Lock()
	// A state read while Docker still listed what it was removing fails
	// to apply; the next one, without them, applies.
	kept := e.errs[:nerrs]
	for _, err := range e.errs[nerrs:] {
		if strings.Contains(err.Error(), "not found") {
			t.Logf("transient, while Docker removed them: %v", err)
			continue
		}
		kept = append(kept, err)
	}
	e.errs = kept
	e.mu.Unlock()
	up(nets[:2])
	if ids[netA] == "" || "br-"+ids[netA][:12] == oldBridges[netA] {
		t.Fatalf("%s came back with its old bridge %s", netA, oldBridges[netA])
	}
	web = &isoCtr{name: mnProject + "-web-1", net: netA, publish: []string{"8090:80"}, labels: mnLabels("web")}
	addrs, _ := mnRunTwo(t, e, web, netB)
	peerA = &isoCtr{name: mnProject + "-peera-1", net: netA, labels: mnLabels("peera")}
	peerB = &isoCtr{name: mnProject + "-peerb-1", net: netB, labels: mnLabels("peerb")}
	for _, c := range []*isoCtr{peerA, peerB} {
		isoRun(e, c)
	}
	e.waitApplied(t, func(s datapath.State) bool { return hasEndpoint(s, peerA.name) && hasEndpoint(s, peerB.name) })
	t.Run("ComposeUpAgain", func(t *testing.T) {
		// web's endpoints are on the new bridges.
		bridges := map[netip.Addr]int{}
		err := e.topo.Host.Do(func() error {
			for n, a := range addrs {
				l, err := netlink.LinkByName("br-" + ids[n][:12])
				if err != nil {
					return err
				}
				bridges[a] = l.Attrs().Index
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		eps, err := e.dp.Endpoints()
		if err != nil {
			t.Fatal(err)
		}
		for a, br := range bridges {
			i := slices.IndexFunc(eps, func(ep datapath.EndpointInfo) bool { return ep.Addr == a })
			if i < 0 || eps[i].BridgeIfindex != uint32(br) {
				t.Errorf("endpoint %s: %+v, want it on bridge ifindex %d", a, eps, br)
			}
		}
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin)
		expectReach(t, peerA, addrs[netA], web.name, peerA.addr)
		expectReach(t, peerB, addrs[netB], web.name, peerB.addr)
		e.expectBlocked(t, datapath.DropIsolation, mnProbe{peerA, addrs[netB]}, mnProbe{peerA, peerB.addr})
	})

	e.mu.Lock()
	defer e.mu.Unlock()
	for _, err := range e.errs {
		t.Errorf("applying a state from Watch: %v", err)
	}
}

// dropsSince are the drop counters that grew from before to after, by
// name.
func dropsSince(before, after map[datapath.DropReason]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for r, n := range after {
		if n > before[r] {
			out[r.String()] = n - before[r]
		}
	}
	return out
}

// TestDaemonDockerMultiNet runs `bpfnet run --docker --datapath X` for
// every datapath, whose reconcile loop also follows the bridges' links: a
// running container connected to a second network is served there (with
// the eBPF datapath: is its endpoint) within a second, and disconnected
// loses that within a second while its first network and its published
// port, which moves back to it, keep working; with a dozen more
// containers of the project around, all of which every event reads again.
func TestDaemonDockerMultiNet(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	bin := lab.BuildBpfnet(t)
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) { daemonMultiNet(t, bin, dp) })
	}
}

func daemonMultiNet(t *testing.T, bin, dp string) {
	sweepStale(t)
	topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	ext := topo.Externals[0]
	pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-daemon")
	t.Cleanup(func() {
		topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
		os.RemoveAll(pin)
	})
	d := startDockerd(t, topo.Host, topo.Bridges[0].Name, topo.Prefix)
	d.ImportImage()
	run := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin, "--datapath", dp,
		"--docker=unix://"+d.sock, "--uplink", ext.Uplink, "--metrics-addr", "")
	run.Stderr = os.Stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		run.Process.Signal(syscall.SIGTERM)
		run.Wait()
	})
	e := &e2e{t: t, topo: topo, ext: ext, d: d, hostAddr: addr4(ext.HostAddr)}
	ebpf := dp == "ebpf"
	if ebpf {
		waitFor(t, "the daemon's pins", func() bool {
			dp, err := datapath.OpenPinned(pin)
			if err != nil {
				return false
			}
			e.dp = dp
			return true
		})
		t.Cleanup(func() { e.dp.Close() })
	}
	// blocked: the SYNs of the probes are dropped, and counted as
	// isolation drops where the datapath counts them by reason.
	blocked := func(probes ...mnProbe) {
		t.Helper()
		if ebpf {
			e.expectBlocked(t, datapath.DropIsolation, probes...)
			return
		}
		for _, p := range probes {
			dst := netip.AddrPortFrom(p.to, 80).String()
			if line, err := p.from.ns.Greeting(dst); err == nil {
				t.Errorf("%s reached %s (%q), want it blocked", p.from.name, dst, line)
			} else if !lab.IsTimeout(err) {
				t.Errorf("%s to %s: %v, want a timeout (the SYN dropped)", p.from.name, dst, err)
			}
		}
	}

	ctx := context.Background()
	netA, netB := mnProject+"_default", mnProject+"_back"
	ids := map[string]string{}
	for _, n := range []isoNet{{name: netA, subnet: "172.30.50.0/24"}, {name: netB, subnet: "172.30.51.0/24"}} {
		nw, err := d.cli.NetworkCreate(ctx, n.name, network.CreateOptions{
			Driver: "bridge", Labels: map[string]string{composeProject: mnProject, composeNetwork: strings.TrimPrefix(n.name, mnProject+"_")},
			IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: n.subnet}}},
		})
		if err != nil {
			t.Fatalf("creating network %s: %v", n.name, err)
		}
		ids[n.name] = nw.ID
	}
	web := &isoCtr{name: mnProject + "-web-1", net: netA, publish: []string{"8090:80"}, labels: mnLabels("web")}
	peerA := &isoCtr{name: mnProject + "-peera-1", net: netA, labels: mnLabels("peera")}
	peerB := &isoCtr{name: mnProject + "-peerb-1", net: netB, labels: mnLabels("peerb")}
	for _, c := range []*isoCtr{web, peerA, peerB} {
		isoRun(e, c)
	}
	// Others on both networks, as a Compose project has: each event
	// reads them all.
	var others []*isoCtr
	for i := 0; i < mnOthers; i++ {
		c := &isoCtr{name: fmt.Sprintf("%s-other-%d", mnProject, i+1), net: []string{netA, netB}[i%2], labels: mnLabels("other")}
		isoRun(e, c)
		others = append(others, c)
	}
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, 10*time.Second)
	if ebpf {
		waitFor(t, "the containers' endpoints", func() bool {
			eps, err := e.dp.Endpoints()
			if err != nil {
				t.Fatal(err)
			}
			have := map[netip.Addr]bool{}
			for _, ep := range eps {
				have[ep.Addr] = true
			}
			for _, c := range append([]*isoCtr{web, peerA, peerB}, others...) {
				if !have[c.addr] {
					return false
				}
			}
			return true
		})
	}

	if err := d.cli.NetworkConnect(ctx, ids[netB], web.id, nil); err != nil {
		t.Fatalf("docker network connect %s %s: %v", netB, web.name, err)
	}
	t0 := time.Now()
	webB := mnAddrs(e, web.id)[netB]
	veth := mnVeths(t, web.ns)[webB]
	if veth == 0 {
		t.Fatalf("no veth of %s holds its address %s on %s", web.name, webB, netB)
	}
	if ebpf {
		e.followed(t, "docker network connect "+netB, t0, func(eps map[netip.Addr]datapath.EndpointInfo) bool {
			ep, ok := eps[webB]
			return ok && ep.Ifindex == veth
		})
	}
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin-time.Since(t0))
	expectReach(t, peerB, webB, web.name, peerB.addr)
	expectReach(t, peerA, web.addr, web.name, peerA.addr)
	blocked(mnProbe{peerA, webB}, mnProbe{peerA, peerB.addr}, mnProbe{peerB, web.addr})

	// B sorts first: Docker's gateway endpoint, and the published port,
	// moved there; disconnecting B moves them back to A.
	if via := mnDefaultVia(t, web.ns); via != netip.MustParseAddr("172.30.51.1") {
		t.Errorf("%s's default route goes via %s after connecting %s, want its gateway", web.name, via, netB)
	}
	if err := d.cli.NetworkDisconnect(ctx, ids[netB], web.id, false); err != nil {
		t.Fatalf("docker network disconnect %s %s: %v", netB, web.name, err)
	}
	t0 = time.Now()
	if ebpf {
		e.followed(t, "docker network disconnect "+netB, t0, func(eps map[netip.Addr]datapath.EndpointInfo) bool {
			_, b := eps[webB]
			_, a := eps[web.addr]
			return !b && a
		})
	}
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8090), web.name, followWithin-time.Since(t0))
	t.Logf("the published port answered %v after docker network disconnect returned", time.Since(t0).Round(time.Millisecond))
	expectReach(t, peerA, web.addr, web.name, peerA.addr)
	expectReach(t, peerB, others[1].addr, others[1].name, peerB.addr)
	if line, err := peerB.ns.Greeting(netip.AddrPortFrom(webB, 80).String()); err == nil {
		t.Errorf("%s reached %s's old address %s on %s: %q", peerB.name, web.name, webB, netB, line)
	}
}

// mnComposeFile is a Compose application on two networks: web on both,
// publishing a port, api on back only, edge on front only.
const mnComposeFile = `version: "2.4"
services:
  web:
    image: ` + testImage + `
    hostname: web
    command: ["/bin/echo", "-tcp", "80"]
    ports: ["8093:80"]
    networks: [front, back]
  api:
    image: ` + testImage + `
    hostname: api
    command: ["/bin/echo", "-tcp", "80"]
    networks: [back]
  edge:
    image: ` + testImage + `
    hostname: edge
    command: ["/bin/echo", "-tcp", "80"]
    networks: [front]
networks:
  front:
    ipam: {config: [{subnet: 172.30.60.0/24}]}
  back:
    ipam: {config: [{subnet: 172.30.61.0/24}]}
`

// TestDockerComposeMultiNet brings mnComposeFile up with docker-compose
// (through the API, with the same names and labels, where it is not
// installed or BPFNET_TEST_NO_COMPOSE=1): web is served on both networks
// and reached on each by that network's service, its port is published to
// its address on back (its gateway endpoint's network), and front and
// back stay apart for the others; once the application is down, its
// networks and endpoints leave the datapath.
func TestDockerComposeMultiNet(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	e := newWatchedE2E(t)
	ctx := context.Background()
	const project = "mnc"
	front, back := project+"_front", project+"_back"
	services := map[string][]string{"web": {front, back}, "api": {back}, "edge": {front}}
	dir := t.TempDir()
	compose := func(args ...string) {
		t.Helper()
		cmd := exec.Command(dockerCompose(), append([]string{"-H", "unix://" + e.d.sock, "-p", project}, args...)...)
		cmd.Dir = dir
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker-compose %v: %v\n%s", args, err, out)
		}
		t.Logf("docker-compose %v: %v", args, time.Since(start).Round(time.Millisecond))
	}
	if dockerCompose() != "" {
		if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(mnComposeFile), 0o644); err != nil {
			t.Fatal(err)
		}
		compose("up", "-d")
	} else {
		t.Logf("without docker-compose (not installed, or BPFNET_TEST_NO_COMPOSE=1): the application is made through the API")
		for n, subnet := range map[string]string{front: "172.30.60.0/24", back: "172.30.61.0/24"} {
			if _, err := e.d.cli.NetworkCreate(ctx, n, network.CreateOptions{
				Driver: "bridge", Labels: map[string]string{composeProject: project, composeNetwork: strings.TrimPrefix(n, project+"_")},
				IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: subnet}}},
			}); err != nil {
				t.Fatal(err)
			}
		}
		for svc, nets := range services {
			labels := map[string]string{composeProject: project, composeService: svc, composeNumber: "1", composeOneoff: "False"}
			c := &isoCtr{name: svc, net: nets[0], labels: labels}
			if svc == "web" {
				c.publish = []string{"8093:80"}
			}
			cfg := &container.Config{Image: testImage, Hostname: svc, Cmd: []string{"/bin/echo", "-tcp", "80"}, Labels: labels}
			exposed, bindings, err := nat.ParsePortSpecs(c.publish)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ExposedPorts = exposed
			hc := &container.HostConfig{PortBindings: bindings, NetworkMode: container.NetworkMode(nets[0])}
			nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{nets[0]: {Aliases: []string{svc}}}}
			created, err := e.d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, project+"_"+svc+"_1")
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range nets[1:] {
				if err := e.d.cli.NetworkConnect(ctx, n, created.ID, &network.EndpointSettings{Aliases: []string{svc}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The application's containers, by service, with their addresses.
	list, err := e.d.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrs := map[string]*isoCtr{}
	addrs := map[string]map[string]netip.Addr{}
	names := map[string]string{} // service -> container name
	for _, c := range list {
		svc := c.Labels[composeService]
		if c.Labels[composeProject] != project || services[svc] == nil {
			continue
		}
		ci := e.d.Inspect(c.ID)
		// The echo server answers with the hostname, the service's.
		ctrs[svc] = &isoCtr{name: svc, id: c.ID, ns: &lab.Namespace{Name: svc, Path: fmt.Sprintf("/proc/%d/ns/net", ci.State.Pid)}}
		addrs[svc] = mnAddrs(e, c.ID)
		names[svc] = strings.TrimPrefix(ci.Name, "/")
		for _, n := range services[svc] {
			if !addrs[svc][n].IsValid() {
				t.Fatalf("%s (%s) is not on %s: %v", svc, ci.Name, n, addrs[svc])
			}
		}
		if len(addrs[svc]) != len(services[svc]) {
			t.Fatalf("%s is on %v, want %v", svc, addrs[svc], services[svc])
		}
	}
	if len(ctrs) != len(services) {
		t.Fatalf("the application's containers: %v", names)
	}
	web, api, edge := ctrs["web"], ctrs["api"], ctrs["edge"]
	st := e.lastState(t, func(s datapath.State) bool {
		n := 0
		for _, ep := range s.Endpoints {
			for svc, name := range names {
				if ep.Container == name && ep.Addr == addrs[svc][ep.Network] && ep.Labels[composeProject] == project && ep.Labels[composeService] == svc {
					n++
				}
			}
		}
		return n == 4
	})
	t.Logf("the application: %v", addrs)
	if via := mnDefaultVia(t, web.ns); via != netip.MustParseAddr("172.30.61.1") {
		t.Errorf("web's default route goes via %s, want back's gateway", via)
	}
	expectPortsTo(t, st, names["web"], addrs["web"][back])
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8093), "web", 2*time.Second)
	e.expectMasquerade(t, web.id)

	expectReach(t, edge, addrs["web"][front], "web", addrs["edge"][front])
	expectReach(t, api, addrs["web"][back], "web", addrs["api"][back])
	expectReach(t, web, addrs["edge"][front], "edge", addrs["web"][front])
	expectReach(t, web, addrs["api"][back], "api", addrs["web"][back])
	e.expectBlocked(t, datapath.DropIsolation,
		mnProbe{edge, addrs["web"][back]}, mnProbe{api, addrs["web"][front]},
		mnProbe{edge, addrs["api"][back]}, mnProbe{api, addrs["edge"][front]})

	// Down: the networks and endpoints leave the datapath. A state read
	// while Docker still listed what it was removing fails to apply; the
	// next one, without them, applies.
	e.mu.Lock()
	nerrs := len(e.errs)
	e.mu.Unlock()
	if dockerCompose() != "" {
		compose("down")
	} else {
		for _, c := range ctrs {
			if err := e.d.cli.ContainerRemove(ctx, c.id, container.RemoveOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []string{front, back} {
			if err := e.d.cli.NetworkRemove(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.waitApplied(t, func(s datapath.State) bool {
		return len(s.Endpoints) == 0 && !slices.ContainsFunc(s.Networks, func(n datapath.Network) bool { return strings.HasPrefix(n.Name, project+"_") })
	})
	eps, err := e.dp.Endpoints()
	if err != nil || len(eps) != 0 {
		t.Errorf("endpoints after docker-compose down: %v %v", eps, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, err := range e.errs {
		if i >= nerrs && strings.Contains(err.Error(), "not found") {
			t.Logf("transient, while Docker removed them: %v", err)
			continue
		}
		t.Errorf("applying a state from Watch: %v", err)
	}
}

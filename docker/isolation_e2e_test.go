// SPDX-License-Identifier: Apache-2.0

package docker

// Docker's isolation of networks, end to end: a dockerd of the test's own
// (--iptables=false: no rule of Docker's does it) creates user-defined
// networks, a normal one, another, an --internal one, one with
// enable_icc=false and one with enable_ip_masquerade=false, runs
// containers on them, and Source.Watch drives the eBPF datapath. The test
// then tries every way between them from the containers' namespaces and
// from the external host, and reads the drop counters. User-defined
// networks get the datapath when they are created and lose it when they
// are removed.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// isoNet is a user-defined network of the test.
type isoNet struct {
	name     string
	subnet   string
	internal bool
	opts     map[string]string
	// What the datapath must be given.
	masq, noICC bool
}

var isoNets = []isoNet{
	{name: "iso-a", subnet: "172.30.10.0/24", masq: true},
	{name: "iso-b", subnet: "172.30.11.0/24", masq: true},
	{name: "iso-int", subnet: "172.30.12.0/24", internal: true},
	{name: "iso-noicc", subnet: "172.30.13.0/24", opts: map[string]string{optICC: "false"}, masq: true, noICC: true},
	{name: "iso-nomasq", subnet: "172.30.14.0/24", opts: map[string]string{optMasquerade: "false"}},
}

func (n isoNet) gateway() netip.Addr { return netip.MustParsePrefix(n.subnet).Addr().Next() }

// isoCreate creates the networks through the API and returns their ids
// by name.
func isoCreate(e *e2e, nets []isoNet) map[string]string {
	e.t.Helper()
	ids := map[string]string{}
	for _, n := range nets {
		nw, err := e.d.cli.NetworkCreate(context.Background(), n.name, network.CreateOptions{
			Driver: "bridge", Internal: n.internal, Options: n.opts,
			IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: n.subnet}}},
		})
		if err != nil {
			e.t.Fatalf("creating network %s: %v", n.name, err)
		}
		ids[n.name] = nw.ID
	}
	return ids
}

// isoCtr is a container of the test: the echo server on port 80, and on
// the ports of tcp instead when it is set ("80,81").
type isoCtr struct {
	name, net string
	tcp       string
	publish   []string
	labels    map[string]string
	id        string
	addr      netip.Addr
	ns        *lab.Namespace // its network namespace, /proc/<pid>/ns/net
}

// isoRun creates and starts c on its network and fills in its id,
// address and namespace.
func isoRun(e *e2e, c *isoCtr) {
	t := e.t
	t.Helper()
	exposed, bindings, err := nat.ParsePortSpecs(c.publish)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ports := c.tcp
	if ports == "" {
		ports = "80"
	}
	cfg := &container.Config{Image: testImage, Hostname: c.name, Cmd: []string{"/bin/echo", "-tcp", ports}, ExposedPorts: exposed, Labels: c.labels}
	hc := &container.HostConfig{PortBindings: bindings, NetworkMode: container.NetworkMode(c.net)}
	nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{c.net: {}}}
	created, err := e.d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, c.name)
	if err != nil {
		t.Fatalf("creating container %s: %v", c.name, err)
	}
	if err := e.d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("starting container %s: %v\n%s", c.name, err, e.d.logTail(20))
	}
	c.id = created.ID
	ci := e.d.Inspect(c.id)
	es := ci.NetworkSettings.Networks[c.net]
	if es == nil {
		t.Fatalf("container %s is not on %s: %v", c.name, c.net, ci.NetworkSettings.Networks)
	}
	c.addr = parseAddr(es.IPAddress)
	c.ns = &lab.Namespace{Name: c.name, Path: fmt.Sprintf("/proc/%d/ns/net", ci.State.Pid)}
}

// isoServe answers every TCP connection to addr in ns with the client's
// address and name, as the echo server does.
func isoServe(t *testing.T, ns *lab.Namespace, addr, name string) {
	t.Helper()
	ns.ServeTCP(t, addr, func(c net.Conn) { fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), name) })
}

// isoNetsMap reads the datapath's pinned nets map: NET_F_* flags by
// subnet.
func isoNetsMap(t *testing.T, pin string) map[netip.Prefix]uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(loader.GlobalsDir(pin), "nets"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var k struct {
		Prefixlen uint32
		Addr      [4]byte
	}
	// struct net_info begins with its flags; the fields after them grow
	// with the datapath, so the value is read whole and only they are
	// taken.
	v := make([]byte, m.ValueSize())
	out := map[netip.Prefix]uint32{}
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[netip.PrefixFrom(netip.AddrFrom4(k.Addr), int(k.Prefixlen))] = binary.NativeEndian.Uint32(v[:4])
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// NET_F_* of bpf/lib/maps.h.
const (
	isoFMasq     = 0x1
	isoFNoICC    = 0x2
	isoFInternal = 0x4
)

func TestDockerIsolationE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare", "busybox")
	start := time.Now()
	e := newWatchedE2E(t)
	t.Logf("setup: %v", time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	host := e.hostAddr.String()

	// Networks: created through the API, given to the datapath by Watch
	// with Docker's settings.
	ids := isoCreate(e, isoNets)
	e.waitApplied(t, func(st datapath.State) bool {
		for _, n := range isoNets {
			want := datapath.Network{Name: n.name, Bridge: "br-" + ids[n.name][:12], Subnet: netip.MustParsePrefix(n.subnet),
				Gateway: n.gateway(), Masquerade: n.masq, NoICC: n.noICC, Internal: n.internal}
			if !slices.Contains(st.Networks, want) {
				return false
			}
		}
		return true
	})
	t.Run("NetsMap", func(t *testing.T) {
		got := isoNetsMap(t, e.pin)
		for _, n := range isoNets {
			var want uint32
			if n.masq {
				want |= isoFMasq
			}
			if n.noICC {
				want |= isoFNoICC
			}
			if n.internal {
				want |= isoFInternal
			}
			if f, ok := got[netip.MustParsePrefix(n.subnet)]; !ok || f != want {
				t.Errorf("nets[%s] (%s) = %#x (present %v), want %#x", n.subnet, n.name, f, ok, want)
			}
		}
	})

	ctrs := []*isoCtr{
		{name: "a1", net: "iso-a", publish: []string{"8080:80"}},
		{name: "a2", net: "iso-a"},
		{name: "b1", net: "iso-b", publish: []string{"8081:80"}},
		{name: "i1", net: "iso-int"},
		{name: "i2", net: "iso-int"},
		{name: "n1", net: "iso-noicc", publish: []string{"8082:80"}},
		{name: "n2", net: "iso-noicc"},
		{name: "m1", net: "iso-nomasq", publish: []string{"8083:80"}},
	}
	byName := map[string]*isoCtr{}
	for _, c := range ctrs {
		isoRun(e, c)
		byName[c.name] = c
	}
	a1, a2, b1, i1, i2, n1, n2, m1 := ctrs[0], ctrs[1], ctrs[2], ctrs[3], ctrs[4], ctrs[5], ctrs[6], ctrs[7]
	var st datapath.State
	e.waitApplied(t, func(s datapath.State) bool {
		for _, c := range ctrs {
			if !hasEndpoint(s, c.name) {
				return false
			}
		}
		st = s
		return true
	})

	t.Run("Attached", func(t *testing.T) {
		// Each container's veth, on its network's bridge br-<id12>, has
		// the programs.
		var atts []loader.Attachment
		var masters map[string]string
		err := e.topo.Host.Do(func() error {
			var err error
			if atts, err = loader.List(e.pin); err != nil {
				return err
			}
			masters = map[string]string{}
			for _, ep := range st.Endpoints {
				l, err := netlink.LinkByName(ep.HostVeth)
				if err != nil {
					return err
				}
				m, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
				if err != nil {
					return err
				}
				masters[ep.Container] = m.Attrs().Name
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range st.Endpoints {
			c := byName[ep.Container]
			if c == nil {
				continue
			}
			if want := "br-" + ids[c.net][:12]; masters[c.name] != want || ep.Network != c.net || ep.Addr != c.addr {
				t.Errorf("endpoint %+v: on %s, want %s at %s on bridge %s", ep, masters[c.name], c.net, c.addr, want)
			}
			for _, want := range []struct {
				prog string
				dir  loader.Direction
			}{{datapath.ProgFromContainer, loader.Ingress}, {datapath.ProgToContainer, loader.Egress}} {
				if !slices.ContainsFunc(atts, func(a loader.Attachment) bool {
					return a.Interface == ep.HostVeth && a.Program == want.prog && a.Direction == want.dir && a.ProgramID != 0
				}) {
					t.Errorf("%s (%s): no %s on %s", ep.HostVeth, c.name, want.prog, want.dir)
				}
			}
		}
	})

	// Servers outside the containers: the external host, and the host on
	// its gateways and uplink address.
	isoServe(t, &e.ext.Namespace, e.ext.Addr.String()+":9000", "external")
	for _, n := range isoNets[2:4] {
		isoServe(t, e.topo.Host, n.gateway().String()+":7", "gateway")
	}
	isoServe(t, e.topo.Host, host+":7", "host")
	// The outside routes the network without masquerade back to the host.
	if out, err := e.ext.Command(ctx, "ip", "route", "add", "172.30.14.0/24", "via", host).CombinedOutput(); err != nil {
		t.Fatalf("route: %v %s", err, out)
	}
	// Docker may leave a container of an internal network without a
	// default route: one that would leave (with NET_ADMIN) sets it. Only
	// the datapath stops it.
	for _, c := range []*isoCtr{i1, i2} {
		out, _ := c.ns.Command(ctx, "ip", "route").CombinedOutput()
		t.Logf("routes of %s: %s", c.name, strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; "))
		if out, err := c.ns.Command(ctx, "ip", "route", "replace", "default", "via", isoNets[2].gateway().String()).CombinedOutput(); err != nil {
			t.Fatalf("default route in %s: %v %s", c.name, err, out)
		}
	}
	to := func(c *isoCtr, port int) string { return net.JoinHostPort(c.addr.String(), fmt.Sprint(port)) }
	extAddr := net.JoinHostPort(e.ext.Addr.String(), "9000")

	t.Run("Published", func(t *testing.T) {
		// Published ports of user-defined networks, from the external
		// host; the internal network publishes none.
		for _, p := range []struct {
			port uint16
			who  string
		}{{8080, "a1"}, {8081, "b1"}, {8082, "n1"}, {8083, "m1"}} {
			e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, p.port), p.who, 2*time.Second)
		}
	})

	t.Run("Reachable", func(t *testing.T) {
		for _, p := range []struct {
			name     string
			from     *isoCtr
			to       string
			who, saw string // the server's name, the client address it must see
		}{
			{"same network", a2, to(a1, 80), "a1", a2.addr.String()},
			{"inside the internal network", i2, to(i1, 80), "i1", i2.addr.String()},
			{"internal network to its gateway", i1, isoNets[2].gateway().String() + ":7", "gateway", i1.addr.String()},
			{"internal network to the host's address", i1, host + ":7", "host", i1.addr.String()},
			{"no-ICC network to its gateway", n1, isoNets[3].gateway().String() + ":7", "gateway", n1.addr.String()},
			{"no-ICC network out, masqueraded", n1, extAddr, "external", host},
			{"normal network out, masqueraded", b1, extAddr, "external", host},
			{"network without masquerade out, with its own address", m1, extAddr, "external", m1.addr.String()},
			{"another network's published port, through the host", b1, host + ":8080", "a1", b1.addr.String()},
		} {
			line, err := p.from.ns.Greeting(p.to)
			f := strings.Fields(line)
			if err != nil || len(f) != 2 || f[1] != p.who {
				t.Errorf("%s: %s to %s: %q %v, want %s's answer", p.name, p.from.name, p.to, line, err, p.who)
				continue
			}
			if ap, err := netip.ParseAddrPort(f[0]); err != nil || ap.Addr().String() != p.saw {
				t.Errorf("%s: %s saw the client as %s, want %s", p.name, p.who, f[0], p.saw)
			}
		}
	})

	t.Run("Blocked", func(t *testing.T) {
		for _, g := range []struct {
			reason datapath.DropReason
			probes []struct {
				from *isoCtr // nil: the external host
				to   string
			}
		}{
			{datapath.DropIsolation, []struct {
				from *isoCtr
				to   string
			}{{a1, to(b1, 80)}, {b1, to(a1, 80)}, {a1, to(i1, 80)}, {i1, to(a2, 80)}, {n1, to(a1, 80)}, {m1, to(a1, 80)}, {a1, to(m1, 80)}}},
			{datapath.DropICC, []struct {
				from *isoCtr
				to   string
				// A neighbour's published port through the host too: Docker
				// drops the DNATed packet by its ICC rule (-i br -o br).
				// The twin is another network's port, reached above.
			}{{n1, to(n2, 80)}, {n2, to(n1, 80)}, {n2, host + ":8082"}}},
			{datapath.DropInternal, []struct {
				from *isoCtr
				to   string
			}{{i1, extAddr}, {i2, host + ":8080"}}},
			{datapath.DropNotPublished, []struct {
				from *isoCtr
				to   string
			}{{nil, to(m1, 80)}}},
		} {
			before := e.drops(t)[g.reason]
			for _, p := range g.probes {
				ns, from := &e.ext.Namespace, "the external host"
				if p.from != nil {
					ns, from = p.from.ns, p.from.name
				}
				if line, err := ns.Greeting(p.to); err == nil {
					t.Errorf("%s: %s reached %s (%q), want it blocked", g.reason, from, p.to, line)
				} else if !lab.IsTimeout(err) {
					t.Errorf("%s: %s to %s: %v, want a timeout (the SYN dropped)", g.reason, from, p.to, err)
				}
			}
			after := e.drops(t)[g.reason]
			if after < before+uint64(len(g.probes)) {
				t.Errorf("drops[%s] %d -> %d after %d blocked connections, want one drop each at least", g.reason, before, after, len(g.probes))
			}
			t.Logf("drops[%s]: %d -> %d", g.reason, before, after)
		}
	})

	t.Run("Ping", func(t *testing.T) {
		// An echo that must go unanswered is dropped for its reason
		// during that ping.
		for _, p := range []struct {
			from     *isoCtr
			to       string
			answered bool
			reason   datapath.DropReason // when not answered
		}{
			{a2, a1.addr.String(), true, 0},
			{i2, i1.addr.String(), true, 0},
			{n1, isoNets[3].gateway().String(), true, 0},
			{n1, e.ext.Addr.String(), true, 0},
			{a1, b1.addr.String(), false, datapath.DropIsolation},
			{n1, n2.addr.String(), false, datapath.DropICC},
			{i1, e.ext.Addr.String(), false, datapath.DropInternal},
		} {
			before := e.drops(t)[p.reason]
			got, err := p.from.ns.Ping(ctx, p.to)
			if err != nil {
				t.Fatal(err)
			}
			after := e.drops(t)[p.reason]
			if got != p.answered {
				t.Errorf("ping from %s to %s: answered %v, want %v", p.from.name, p.to, got, p.answered)
			} else if !got && after <= before {
				t.Errorf("ping from %s to %s: no answer, but %s drops went %d -> %d: lost elsewhere", p.from.name, p.to, p.reason, before, after)
			}
		}
	})

	t.Run("NetworkRemoved", func(t *testing.T) {
		// Its containers gone, the network goes, and with it its place
		// in the datapath. A state read while Docker still lists the
		// network (or a container) whose bridge (or veth) is gone already
		// fails to apply; the next event's state, without them, applies.
		e.mu.Lock()
		nerrs := len(e.errs)
		e.mu.Unlock()
		defer func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			kept := e.errs[:nerrs]
			for _, err := range e.errs[nerrs:] {
				if strings.Contains(err.Error(), "not found") {
					t.Logf("transient, while Docker removed them: %v", err)
					continue
				}
				kept = append(kept, err)
			}
			e.errs = kept
		}()
		for _, c := range []*isoCtr{n1, n2} {
			if err := e.d.cli.ContainerRemove(ctx, c.id, container.RemoveOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.d.cli.NetworkRemove(ctx, "iso-noicc"); err != nil {
			t.Fatal(err)
		}
		e.waitApplied(t, func(s datapath.State) bool {
			return !slices.ContainsFunc(s.Networks, func(n datapath.Network) bool { return n.Name == "iso-noicc" }) &&
				!hasEndpoint(s, "n1") && !hasEndpoint(s, "n2")
		})
		if f, ok := isoNetsMap(t, e.pin)[netip.MustParsePrefix(isoNets[3].subnet)]; ok {
			t.Errorf("nets still holds %s (flags %#x)", isoNets[3].subnet, f)
		}
		err := e.topo.Host.Do(func() error {
			eps, err := e.dp.Endpoints()
			if err != nil {
				return err
			}
			for _, ep := range eps {
				if ep.Addr == n1.addr || ep.Addr == n2.addr {
					return fmt.Errorf("endpoint %s left in the datapath", ep.Addr)
				}
			}
			if _, err := netlink.LinkByName("br-" + ids["iso-noicc"][:12]); err == nil {
				return errors.New("the bridge of the removed network is still there")
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		// The others are as they were.
		if line, err := a2.ns.Greeting(to(a1, 80)); err != nil {
			t.Errorf("a2 to a1 after the removal: %q %v", line, err)
		}
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "a1", 2*time.Second)
	})

	e.mu.Lock()
	defer e.mu.Unlock()
	for _, err := range e.errs {
		t.Errorf("applying a state from Watch: %v", err)
	}
}

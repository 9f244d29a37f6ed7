// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/bpfnet/bpfnet/loader"
)

// reload loads the programs again on the lab's pinned state and applies,
// as a restarted or upgraded daemon does.
func (l *labDatapath) reload(t *testing.T, opts Options, ports []PortMapping) error {
	t.Helper()
	opts.PinPath = l.pin
	return l.topo.Host.Do(func() error {
		s, err := discoverLab(l.topo, ports)
		if err != nil {
			return err
		}
		dp, err := NewEBPF(opts)
		if err != nil {
			return err
		}
		if err := dp.Apply(context.Background(), s); err != nil {
			dp.Close()
			return err
		}
		l.dp.Close()
		l.dp = dp
		return nil
	})
}

func (l *labDatapath) programIDs(t *testing.T) map[string]ebpf.ProgramID {
	t.Helper()
	var atts []loader.Attachment
	err := l.topo.Host.Do(func() error {
		var err error
		atts, err = loader.List(l.pin)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]ebpf.ProgramID{}
	for _, a := range atts {
		out[a.Interface+"/"+a.Direction.String()] = a.ProgramID
	}
	return out
}

// udpPinger sends sequential UDP requests through a published port and
// counts the ones without an answer, until stop.
func udpPinger(t *testing.T, l *labDatapath, addr string, stop <-chan struct{}) (sent, lost *atomic.Int64, done chan struct{}) {
	t.Helper()
	ext := l.topo.Externals[0]
	var conn net.Conn
	if err := ext.Do(func() error {
		var err error
		conn, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sent, lost, done = &atomic.Int64{}, &atomic.Int64{}, make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close()
		buf := make([]byte, 64)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			msg := fmt.Sprint(i)
			conn.Write([]byte(msg))
			sent.Add(1)
			conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			for {
				n, err := conn.Read(buf)
				if err != nil {
					lost.Add(1)
					break
				}
				if strings.HasSuffix(string(buf[:n]), " "+msg) {
					break
				}
			}
		}
	}()
	return sent, lost, done
}

// TestLabUpgrade replaces the attached programs with newly loaded ones, on
// the same pinned maps, again and again under traffic: no request is lost
// (no window without NAT), established state carries over, and the
// attachments are updated in place.
func TestLabUpgrade(t *testing.T) {
	for _, mode := range []loader.Mode{loader.ModeTCX, loader.ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			opts := Options{FastPath: true, AttachMode: mode}
			l := startLabWith(t, twoContainers(), opts)
			c0, ext := l.topo.Containers[0], l.topo.Externals[0]
			ports := publish(t, fmt.Sprintf("5353:%s:53/udp", c0.Addr), fmt.Sprintf("8080:%s:80", c0.Addr))
			l.setPorts(t, ports)
			echoUDP(t, &c0.Namespace, c0.Addr.String()+":53")
			echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
			if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 1000); got != ext.Addr.String() {
				t.Fatalf("before the upgrade: saw %s", got)
			}
			before := l.programIDs(t)
			stop := make(chan struct{})
			sent, lost, done := udpPinger(t, l, ext.HostAddr.String()+":5353", stop)
			for i := 0; i < 6; i++ {
				// Alternate the fast path so each load is a different program.
				opts.FastPath = i%2 == 1
				if err := l.reload(t, opts, ports); err != nil {
					t.Fatalf("upgrade %d: %v", i, err)
				}
				time.Sleep(30 * time.Millisecond)
			}
			close(stop)
			<-done
			if sent.Load() < 10 || lost.Load() != 0 {
				t.Errorf("%d of %d requests lost during 6 upgrades", lost.Load(), sent.Load())
			}
			after := l.programIDs(t)
			if len(after) != len(before) {
				t.Errorf("attachments %d -> %d", len(before), len(after))
			}
			for k, id := range after {
				if id == 0 || id == before[k] {
					t.Errorf("%s still runs program %d after the upgrade", k, id)
				}
			}
			if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 1000); got != ext.Addr.String() {
				t.Errorf("after the upgrade: saw %s", got)
			}
		})
	}
}

// TestLabVerifierRejection: a program the verifier rejects gives an error
// with the end of the log, and the datapath attached before keeps working.
func TestLabVerifierRejection(t *testing.T) {
	l := startLabWith(t, twoContainers(), Options{FastPath: true})
	c0, ext := l.topo.Containers[0], l.topo.Externals[0]
	ports := publish(t, fmt.Sprintf("8080:%s:80", c0.Addr))
	l.setPorts(t, ports)
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	before := l.programIDs(t)

	broken := Options{FastPath: true, mutateSpec: func(spec *ebpf.CollectionSpec) {
		// Read a register nothing wrote: the verifier must refuse.
		spec.Programs["from_netdev"].Instructions = asm.Instructions{
			asm.Mov.Reg(asm.R0, asm.R5),
			asm.Return(),
		}
	}}
	err := l.reload(t, broken, ports)
	var ve *VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("reload of a broken program: %v, want a *VerifierError", err)
	}
	if !strings.Contains(err.Error(), "R5 !read_ok") || len(ve.Log()) == 0 {
		t.Errorf("error lacks the verifier's reason: %v", err)
	}
	if after := l.programIDs(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("attachments changed after a rejected load: %v -> %v", before, after)
	}
	if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 1000); got != ext.Addr.String() {
		t.Errorf("after the rejected load: saw %s", got)
	}
}

// TestLabLegacyAttach runs published ports and masquerade through the
// clsact fallback.
func TestLabLegacyAttach(t *testing.T) {
	l := startLabWith(t, twoContainers(), Options{FastPath: true, AttachMode: loader.ModeLegacy})
	c0, ext := l.topo.Containers[0], l.topo.Externals[0]
	l.setPorts(t, publish(t, fmt.Sprintf("8080:%s:80", c0.Addr)))
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
	if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 10000); got != ext.Addr.String() {
		t.Errorf("published port over clsact: saw %s", got)
	}
	if got := tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 10000); got != ext.HostAddr.String() {
		t.Errorf("masquerade over clsact: saw %s", got)
	}
	atts, err := loader.List(l.pin)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts {
		if a.Mode != loader.ModeLegacy {
			t.Errorf("%s attached with %s, want legacy", a.Interface, a.Mode)
		}
	}
	if len(atts) != 6 {
		t.Errorf("%d attachments, want 6 (uplink and two veths, both directions)", len(atts))
	}
}

// TestLabApplyAllOrNothing: an Apply that fails while writing the maps
// (more ports than the map holds) leaves the previous state in place, and
// the datapath keeps serving it.
func TestLabApplyAllOrNothing(t *testing.T) {
	l := startLabWith(t, twoContainers(), Options{FastPath: true})
	c0, ext := l.topo.Containers[0], l.topo.Externals[0]
	small := publish(t, fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("5353:%s:53/udp", c0.Addr))
	l.setPorts(t, small)
	echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
	before, err := l.dp.Published()
	if err != nil {
		t.Fatal(err)
	}
	// 65,535 TCP and 5,000 UDP ports: more than the 65,536 the map holds.
	huge := publish(t, fmt.Sprintf("1-65535:%s:80", c0.Addr), fmt.Sprintf("1-5000:%s:53/udp", c0.Addr))
	err = l.topo.Host.Do(func() error {
		s, err := Discover([]string{l.topo.Bridges[0].Name}, nil, nil)
		if err != nil {
			return err
		}
		s.Ports = huge
		return l.dp.Apply(context.Background(), s)
	})
	if err == nil || !strings.Contains(err.Error(), "programming published ports") {
		t.Fatalf("Apply of %d ports: %v, want a map error", len(huge), err)
	}
	after, err := l.dp.Published()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("published ports after a failed Apply: %d entries, want the %d of before", len(after), len(before))
	}
	if got := tcpExchange(t, &ext.Namespace, ext.HostAddr.String()+":8080", 100); got != ext.Addr.String() {
		t.Errorf("after the failed Apply: saw %s", got)
	}
	// And the next Apply starts from the state really in the maps.
	l.setPorts(t, small[:1])
	if after, _ := l.dp.Published(); len(after) != 1 {
		t.Errorf("%d ports after publishing one, want 1", len(after))
	}
}

// TestLabPublishPorts publishes and unpublishes ports one at a time next to
// an applied state.
func TestLabPublishPorts(t *testing.T) {
	requireRoot(t)
	unapplied, err := NewEBPF(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unapplied.PublishPorts(publish(t, "8080:172.30.0.2:80")...); !errors.Is(err, ErrNotApplied) {
		t.Errorf("PublishPorts before Apply: %v, want ErrNotApplied", err)
	}
	unapplied.Close()

	l := startLabWith(t, twoContainers(), Options{FastPath: true})
	c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
	l.setPorts(t, publish(t, fmt.Sprintf("9000-9099:%s:80", c1.Addr)))
	echoUDPNamed(t, &c0.Namespace, c0.Addr.String()+":53", "c0")
	echoUDPNamed(t, &c1.Namespace, c1.Addr.String()+":53", "c1")
	if err := l.dp.PublishPorts(publish(t, fmt.Sprintf("5353:%s:53/udp", c0.Addr))...); err != nil {
		t.Fatal(err)
	}
	var conn *net.UDPConn
	if err := ext.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp", &net.UDPAddr{IP: ext.Addr, Port: 40001}, &net.UDPAddr{IP: ext.HostAddr, Port: 5353})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() string {
		buf := make([]byte, 16)
		for i := 0; i < 3; i++ {
			conn.Write([]byte("?"))
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, err := conn.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		return "nothing"
	}
	if got := ask(); got != "c0" {
		t.Fatalf("published one port: answer %q, want c0", got)
	}
	// Replacing the binding moves the flow at once.
	if err := l.dp.PublishPorts(publish(t, fmt.Sprintf("5353:%s:53/udp", c1.Addr))...); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "c1" {
		t.Errorf("after the binding moved: answer %q, want c1", got)
	}
	if n := len(mustPublished(t, l.dp)); n != 101 {
		t.Errorf("%d ports published, want the range's 100 and one", n)
	}
	if err := l.dp.UnpublishPorts(publish(t, fmt.Sprintf("5353:%s:53/udp", c1.Addr))...); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "nothing" {
		t.Errorf("after unpublishing: answer %q", got)
	}
	if n := len(mustPublished(t, l.dp)); n != 100 {
		t.Errorf("%d ports published after unpublishing, want 100", n)
	}
	if err := l.dp.PublishPorts(PortMapping{Proto: TCP, HostPort: 0, ContainerIP: addrOf(c0.Addr), ContainerPort: 80}); err == nil {
		t.Error("PublishPorts accepted port 0")
	}
	// Validate's rules hold next to the applied state too, and a refused
	// call writes nothing.
	for spec, want := range map[string]string{
		"8080:10.250.0.2:80": "port 8080->10.250.0.2:80/tcp: container address 10.250.0.2 is in none of the networks",
		fmt.Sprintf("%s:9000:%s:80", ext.HostAddr, c0.Addr): fmt.Sprintf("port %s:9000->%s:80/tcp: host port already published on another address (a port on 0.0.0.0 takes it on every address)", ext.HostAddr, c0.Addr),
	} {
		if err := l.dp.PublishPorts(publish(t, spec)...); err == nil || err.Error() != want {
			t.Errorf("PublishPorts(%s): %v, want %q", spec, err, want)
		}
	}
	if n := len(mustPublished(t, l.dp)); n != 100 {
		t.Errorf("%d ports published after refused calls, want 100", n)
	}
	// A wildcard waits for the specific binding of its port to go.
	specific := publish(t, fmt.Sprintf("%s:7000:%s:80", ext.HostAddr, c0.Addr))
	wildcard := publish(t, fmt.Sprintf("7000:%s:80", c0.Addr))
	if err := l.dp.PublishPorts(specific...); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.PublishPorts(wildcard...); err == nil || !strings.Contains(err.Error(), "already published on another address") {
		t.Errorf("wildcard next to a specific binding: %v, want it refused", err)
	}
	if err := l.dp.UnpublishPorts(specific...); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.PublishPorts(wildcard...); err != nil {
		t.Errorf("wildcard once the specific binding went: %v", err)
	}
}

func mustPublished(t *testing.T, d *EBPF) []PublishedPort {
	t.Helper()
	p, err := d.Published()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPinMigration: a new version whose counter map has another size
// starts its counts again; one whose state map changed refuses to start
// rather than lose the flows.
func TestPinMigration(t *testing.T) {
	requireRoot(t)
	pin := bpffsDir(t, "bpfnet-migrate-")
	old, err := NewEBPF(Options{PinPath: pin, mutateSpec: func(s *ebpf.CollectionSpec) {
		s.Maps["drops"].MaxEntries = 8 // an older version's size
	}})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	d, err := NewEBPF(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("loading over an older counter map: %v", err)
	}
	if n := d.objs.Drops.MaxEntries(); n != uint32(dropMax) {
		t.Errorf("drops map holds %d entries, want %d", n, dropMax)
	}
	d.Close()

	_, err = NewEBPF(Options{PinPath: pin, CTSize: 1024})
	if err == nil || !strings.Contains(err.Error(), "bpfnet down") {
		t.Errorf("loading over a conntrack table of another size: %v, want a refusal that says what to do", err)
	}
}

// TestPinMigrationRebuiltMaps: the maps that Apply writes whole from the
// State (endpoints among them, whose value grew with the sender check)
// are replaced when their layout changed, with a line in the log; the
// conntrack table, in the same folder, is kept.
func TestPinMigrationRebuiltMaps(t *testing.T) {
	requireRoot(t)
	pin := bpffsDir(t, "bpfnet-migrate-")
	// An older version: each rebuilt map's value 8 bytes longer (the
	// programs stay within it), one entry in each, and a flow.
	old, err := NewEBPF(Options{PinPath: pin, mutateSpec: func(s *ebpf.CollectionSpec) {
		for name := range rebuiltMaps {
			s.Maps[name].ValueSize += 8
			s.Maps[name].Value = nil
			s.Maps[name].Key = nil
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	oldSizes := map[string]uint32{}
	objs := map[string]*ebpf.Map{
		"endpoints": old.objs.Endpoints, "veths": old.objs.Veths, "nets": old.objs.Nets,
		"published": old.objs.Published, "host_addrs": old.objs.HostAddrs, "uplinks": old.objs.Uplinks,
		"port_allow": old.objs.PortAllow, "direct_trusted": old.objs.DirectTrusted,
		"routed_ports": old.objs.RoutedPorts,
		"published6":   old.objs.Published6, "host_addrs6": old.objs.HostAddrs6, "endpoints6": old.objs.Endpoints6,
		"uplinks6": old.objs.Uplinks6, "nets6": old.objs.Nets6, "port_allow6": old.objs.PortAllow6,
		"direct_trusted6": old.objs.DirectTrusted6, "routed_ports6": old.objs.RoutedPorts6,
	}
	if len(objs) != len(rebuiltMaps) {
		t.Fatalf("the test knows %d rebuilt maps, the datapath %d", len(objs), len(rebuiltMaps))
	}
	for name, m := range objs {
		oldSizes[name] = m.ValueSize()
		k := make([]byte, m.KeySize())
		switch name {
		case "nets":
			k[0] = 24 // prefix length
		case "nets6":
			k[0] = 64 // prefix length
		case "port_allow", "port_allow6":
			k[0] = 40 // prefix length: the list id and 8 bits
		}
		if err := m.Put(k, make([]byte, m.ValueSize())); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	flow := ctKey(uint8(pTCP), ctrA, 40000, remoteIP, 443)
	if err := old.objs.Ct4.Put(flow, bpfCtEntry{Kind: bpfCtKind(KindSNAT), Expires: 1 << 62}); err != nil {
		t.Fatal(err)
	}
	old.Close()

	var logs strings.Builder
	prevLog := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	d, err := NewEBPF(Options{PinPath: pin})
	slog.SetDefault(prevLog)
	if err != nil {
		t.Fatalf("loading over older endpoint maps: %v", err)
	}
	defer d.Close()
	news := map[string]*ebpf.Map{
		"endpoints": d.objs.Endpoints, "veths": d.objs.Veths, "nets": d.objs.Nets,
		"published": d.objs.Published, "host_addrs": d.objs.HostAddrs, "uplinks": d.objs.Uplinks,
		"port_allow": d.objs.PortAllow,
		"published6": d.objs.Published6, "host_addrs6": d.objs.HostAddrs6, "endpoints6": d.objs.Endpoints6,
		"uplinks6": d.objs.Uplinks6, "nets6": d.objs.Nets6, "port_allow6": d.objs.PortAllow6,
		"direct_trusted6": d.objs.DirectTrusted6, "routed_ports6": d.objs.RoutedPorts6,
	}
	for name, m := range news {
		if m.ValueSize() == oldSizes[name] {
			t.Errorf("%s: value size still the old %d", name, oldSizes[name])
		}
		if n := len(mustKeys(t, m)); n != 0 {
			t.Errorf("%s: %d entries of the old map, want a fresh one", name, n)
		}
		if !strings.Contains(logs.String(), "map="+name) {
			t.Errorf("no log line for %s:\n%s", name, logs.String())
		}
	}
	var e bpfCtEntry
	if err := d.objs.Ct4.Lookup(flow, &e); err != nil || e.Kind != bpfCtKind(KindSNAT) {
		t.Errorf("the flow did not survive the migration: %+v %v", e, err)
	}

	// With the conntrack table changed too, the new version refuses, and
	// replaces nothing: the old version can go on with its pins.
	pin2 := bpffsDir(t, "bpfnet-migrate-")
	old, err = NewEBPF(Options{PinPath: pin2, CTSize: 1024, mutateSpec: func(s *ebpf.CollectionSpec) {
		s.Maps["endpoints"].ValueSize += 8
		s.Maps["endpoints"].Value = nil
		s.Maps["endpoints"].Key = nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	oldSize := old.objs.Endpoints.ValueSize()
	old.Close()
	if _, err := NewEBPF(Options{PinPath: pin2}); err == nil || !strings.Contains(err.Error(), "bpfnet down") {
		t.Fatalf("loading over a conntrack table of another size: %v, want a refusal", err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(loader.GlobalsDir(pin2), "endpoints"), nil)
	if err != nil {
		t.Fatalf("the refused version removed the old endpoints pin: %v", err)
	}
	defer m.Close()
	if m.ValueSize() != oldSize {
		t.Errorf("endpoints pin has values of %d bytes after a refusal, want the old %d", m.ValueSize(), oldSize)
	}
}

// mustKeys lists the keys of m, as bytes.
func mustKeys(t *testing.T, m *ebpf.Map) [][]byte {
	t.Helper()
	var out [][]byte
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

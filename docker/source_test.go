// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/bpfnet/bpfnet/datapath"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter sends log lines to t.Log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func netID(n int) string { return fmt.Sprintf("%02d%s", n, strings.Repeat("ab", 31)) }

func bridgeNetwork(name string, id int, subnet, gw string, opts map[string]string) network.Summary {
	cfg := network.IPAMConfig{Subnet: subnet, Gateway: gw}
	return network.Summary{Name: name, ID: netID(id), Driver: "bridge", IPAM: network.IPAM{Config: []network.IPAMConfig{cfg}}, Options: opts}
}

type attach struct {
	net, addr, mac string
	gwPrio         int
}

func runningContainer(name string, pid int, labels map[string]string, ports nat.PortMap, nets ...attach) container.InspectResponse {
	c := container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID:    strings.Repeat(name[:1], 64),
			Name:  "/" + name,
			State: &container.State{Running: pid > 0, Pid: pid},
		},
		Config:          &container.Config{Labels: labels},
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{}},
	}
	c.NetworkSettings.Ports = ports
	for _, a := range nets {
		c.NetworkSettings.Networks[a.net] = &network.EndpointSettings{IPAddress: a.addr, MacAddress: a.mac, GwPriority: a.gwPrio}
	}
	return c
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// fixture is a Docker with most of what State must sort out.
func fixture() ([]network.Summary, []container.InspectResponse, *fakeKernel) {
	nets := []network.Summary{
		bridgeNetwork("bridge", 1, "172.17.0.0/16", "172.17.0.1", map[string]string{
			optDefaultBridge: "true", optMasquerade: "false", optBridgeName: "docker0", optICC: "true",
		}),
		// Created with --subnet only: IPAM has no gateway.
		bridgeNetwork("appnet", 2, "172.18.0.0/16", "", nil),
		bridgeNetwork("nomasq", 3, "172.19.0.0/16", "172.19.0.1/16", map[string]string{optMasquerade: "false", optICC: "false"}),
		bridgeNetwork("aaa", 4, "172.20.0.0/16", "172.20.0.1", nil),
		bridgeNetwork("v6only", 6, "fd00::/64", "fd00::1", nil),
		bridgeNetwork("gone", 7, "172.22.0.0/16", "172.22.0.1", nil),
		{Name: "host", ID: netID(8), Driver: "host"},
		{Name: "none", ID: netID(9), Driver: "null"},
	}
	internal := bridgeNetwork("internal", 5, "172.21.0.0/16", "172.21.0.1", nil)
	internal.Internal = true
	nets = append(nets, internal)

	k := &fakeKernel{
		bridges: map[string]fakeBridge{
			"docker0":          {index: 10, addrs: []netip.Prefix{pfx("172.17.0.1/16")}},
			"br-02abababab":    {index: 99}, // a decoy: not the 12-character name
			"br-02ababababab":  {index: 11, addrs: []netip.Prefix{pfx("10.9.9.9/8"), pfx("172.18.0.1/16")}},
			"br-03ababababab":  {index: 12},
			"br-04ababababab":  {index: 13},
			"br-05ababababab":  {index: 14},
			"br-06ababababab":  {index: 15},
			"br-0xnotanetwork": {index: 16},
		},
		veths: map[string]fakeVeth{
			"100/02:42:ac:11:00:02": {"vethweb0", 10},
			"100/02:42:ac:14:00:02": {"vethweb1", 13},
			"200/02:42:ac:15:00:02": {"vethdb", 14},
			"300/02:42:ac:12:00:03": {"vethclash", 11},
			"400/02:42:ac:12:00:04": {"vethelse", 12}, // on the wrong bridge
			"600/02:42:ac:13:00:02": {"vethnm", 12},
		},
		gone: map[int]bool{500: true},
	}

	web := runningContainer("web", 100, map[string]string{"com.docker.compose.service": "web"}, nat.PortMap{
		"80/tcp": {
			{HostIP: "0.0.0.0", HostPort: "8080"},
			{HostIP: "::", HostPort: "8080"},
			{HostIP: "0.0.0.0", HostPort: "8080"}, // listed twice
		},
		"53/udp":    {{HostIP: "", HostPort: "5353"}},
		"81/tcp":    {{HostIP: "10.0.0.1", HostPort: "8081"}, {HostIP: "10.0.0.1", HostPort: "not-a-port"}},
		"9000/tcp":  {{HostIP: "0.0.0.0", HostPort: "9000"}},
		"9001/tcp":  {{HostIP: "0.0.0.0", HostPort: "9001"}},
		"7777/tcp":  nil, // exposed, not published
		"132/sctp":  {{HostIP: "0.0.0.0", HostPort: "132"}},
		"6000/tcp":  {{HostIP: "0.0.0.0", HostPort: "0"}},
		"6001/tcp":  {{HostIP: "fe80::1", HostPort: "6001"}},
		"6002/tcp":  {{HostIP: "::ffff:10.0.0.2", HostPort: "6002"}},
		"65536/tcp": {{HostIP: "0.0.0.0", HostPort: "6003"}},
	},
		attach{net: "bridge", addr: "172.17.0.2", mac: "02:42:ac:11:00:02"},
		// "aaa" sorts before "bridge": Docker gives it the gateway and
		// the published ports.
		attach{net: "aaa", addr: "172.20.0.2", mac: "02:42:ac:14:00:02"},
		attach{net: "gone", addr: "172.22.0.2", mac: "02:42:ac:16:00:02"},
		attach{net: "host"},
	)
	db := runningContainer("db", 200, nil, nat.PortMap{"5432/tcp": {{HostIP: "0.0.0.0", HostPort: "5432"}}},
		attach{net: "internal", addr: "172.21.0.2", mac: "02:42:ac:15:00:02"})
	stopped := runningContainer("stopped", 0, nil, nat.PortMap{"80/tcp": {{HostPort: "8090"}}},
		attach{net: "bridge", addr: "172.17.0.9", mac: "02:42:ac:11:00:09"})
	dying := runningContainer("dying", 500, nil, nat.PortMap{"80/tcp": {{HostPort: "8091"}}},
		attach{net: "bridge", addr: "172.17.0.5", mac: "02:42:ac:11:00:05"})
	// Sorts after web: its 8080 loses.
	clash := runningContainer("zz-clash", 300, nil, nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}}, "82/tcp": {{HostPort: "8082"}}},
		attach{net: "appnet", addr: "172.18.0.3", mac: "02:42:ac:12:00:03"})
	elsewhere := runningContainer("elsewhere", 400, nil, nat.PortMap{"80/tcp": {{HostPort: "8092"}}},
		attach{net: "appnet", addr: "172.18.0.4", mac: "02:42:ac:12:00:04"})
	// nomasq with a gateway priority beats aaa/appnet alphabetically.
	prio := runningContainer("prio", 600, nil, nat.PortMap{"80/tcp": {{HostPort: "8093"}}},
		attach{net: "nomasq", addr: "172.19.0.2", mac: "02:42:ac:13:00:02", gwPrio: 10},
		attach{net: "appnet", addr: "172.18.0.99", mac: "02:42:ac:12:00:63"})
	return nets, []container.InspectResponse{web, db, stopped, dying, clash, elsewhere, prio}, k
}

func TestBuild(t *testing.T) {
	nets, ctrs, k := fixture()
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	wantNets := []Network{
		{Network: datapath.Network{Name: "aaa", Bridge: "br-04ababababab", Subnet: pfx("172.20.0.0/16"), Gateway: ip("172.20.0.1"), Masquerade: true}, ID: netID(4), ICC: true},
		{Network: datapath.Network{Name: "appnet", Bridge: "br-02ababababab", Subnet: pfx("172.18.0.0/16"), Gateway: ip("172.18.0.1"), Masquerade: true}, ID: netID(2), ICC: true},
		{Network: datapath.Network{Name: "bridge", Bridge: "docker0", Subnet: pfx("172.17.0.0/16"), Gateway: ip("172.17.0.1"), Masquerade: true}, ID: netID(1), Default: true, ICC: true},
		{Network: datapath.Network{Name: "internal", Bridge: "br-05ababababab", Subnet: pfx("172.21.0.0/16"), Gateway: ip("172.21.0.1"), Masquerade: false, Internal: true}, ID: netID(5), Internal: true, ICC: true},
		{Network: datapath.Network{Name: "nomasq", Bridge: "br-03ababababab", Subnet: pfx("172.19.0.0/16"), Gateway: ip("172.19.0.1"), Masquerade: false, NoICC: true}, ID: netID(3), ICC: false},
	}
	if !reflect.DeepEqual(snap.Networks, wantNets) {
		t.Errorf("networks:\n got %+v\nwant %+v", snap.Networks, wantNets)
	}
	id := func(c string) string { return strings.Repeat(c, 64) }
	wantEps := []datapath.Endpoint{
		{Container: "db", ContainerID: id("d"), Network: "internal", Addr: ip("172.21.0.2"), MAC: mac("02:42:ac:15:00:02"), HostVeth: "vethdb"},
		{Container: "prio", ContainerID: id("p"), Network: "nomasq", Addr: ip("172.19.0.2"), MAC: mac("02:42:ac:13:00:02"), HostVeth: "vethnm"},
		{Container: "web", ContainerID: id("w"), Network: "aaa", Addr: ip("172.20.0.2"), MAC: mac("02:42:ac:14:00:02"), HostVeth: "vethweb1", Labels: map[string]string{"com.docker.compose.service": "web"}},
		{Container: "web", ContainerID: id("w"), Network: "bridge", Addr: ip("172.17.0.2"), MAC: mac("02:42:ac:11:00:02"), HostVeth: "vethweb0", Labels: map[string]string{"com.docker.compose.service": "web"}},
		{Container: "zz-clash", ContainerID: id("z"), Network: "appnet", Addr: ip("172.18.0.3"), MAC: mac("02:42:ac:12:00:03"), HostVeth: "vethclash"},
	}
	if !reflect.DeepEqual(snap.Endpoints, wantEps) {
		t.Errorf("endpoints:\n got %+v\nwant %+v", snap.Endpoints, wantEps)
	}
	web := ip("172.20.0.2")
	wantPorts := []datapath.PortMapping{
		{Proto: datapath.TCP, HostPort: 8080, ContainerIP: web, ContainerPort: 80, Container: "web"},
		{Proto: datapath.TCP, HostIP: ip("10.0.0.1"), HostPort: 8081, ContainerIP: web, ContainerPort: 81, Container: "web"},
		{Proto: datapath.TCP, HostPort: 8082, ContainerIP: ip("172.18.0.3"), ContainerPort: 82, Container: "zz-clash"},
		{Proto: datapath.TCP, HostPort: 8093, ContainerIP: ip("172.19.0.2"), ContainerPort: 80, Container: "prio"},
		{Proto: datapath.TCP, HostPort: 9000, ContainerIP: web, ContainerPort: 9000, Container: "web"},
		{Proto: datapath.TCP, HostPort: 9001, ContainerIP: web, ContainerPort: 9001, Container: "web"},
		{Proto: datapath.UDP, HostPort: 5353, ContainerIP: web, ContainerPort: 53, Container: "web"},
	}
	if !reflect.DeepEqual(snap.Ports, wantPorts) {
		t.Errorf("ports:\n got %v\nwant %v", snap.Ports, wantPorts)
	}
	st := snap.State()
	if err := st.Validate(); err != nil {
		t.Errorf("state does not validate: %v", err)
	}
	if len(st.Uplinks) != 0 || st.HostAddrs != nil {
		t.Errorf("uplinks %v, host addresses %v: those are not Docker's", st.Uplinks, st.HostAddrs)
	}

	// With DefaultBridgeMasquerade off, the default bridge follows it.
	snap, err = build(k, testLogger(t), false, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range snap.Networks {
		if n.Name == "bridge" && n.Masquerade {
			t.Errorf("default bridge masqueraded with DefaultBridgeMasquerade false")
		}
	}
}

func TestBuildWrongNamespace(t *testing.T) {
	nets, ctrs, _ := fixture()
	k := &fakeKernel{} // no bridge at all: not dockerd's namespace
	_, err := build(k, testLogger(t), true, nets, ctrs)
	if !errors.Is(err, errNoBridge) {
		t.Fatalf("got %v, want %v", err, errNoBridge)
	}
	// No bridge network at all is just an empty state.
	snap, err := build(k, testLogger(t), true, nil, nil)
	if err != nil || len(snap.Networks)+len(snap.Endpoints)+len(snap.Ports) != 0 {
		t.Fatalf("empty Docker: %+v, %v", snap, err)
	}
}

func TestStateFromFake(t *testing.T) {
	nets, ctrs, k := fixture()
	f := newFakeDocker(t)
	f.Set(nets, ctrs)
	s, err := New(f.Host())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.k = k
	s.Logger = testLogger(t)
	st, err := s.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Networks) != 5 || len(st.Endpoints) != 5 || len(st.Ports) != 7 {
		t.Fatalf("got %d networks, %d endpoints, %d ports; want 5, 5, 7", len(st.Networks), len(st.Endpoints), len(st.Ports))
	}
	// A container listed but gone when inspected is left out.
	f.mu.Lock()
	f.ghosts = []string{"vanished"}
	f.mu.Unlock()
	st2, err := s.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, st2) {
		t.Fatalf("a container gone between list and inspect changed the state:\n%+v\n%+v", st, st2)
	}
}

func TestUnreachable(t *testing.T) {
	sock := t.TempDir() + "/docker.sock"
	s, err := New("unix://" + sock)
	if err != nil {
		t.Fatalf("New does not contact Docker, so it must not fail: %v", err)
	}
	defer s.Close()
	want := "cannot reach Docker at unix://" + sock + ": dial unix " + sock + ": connect: no such file or directory"
	for name, call := range map[string]func() error{
		"Ping":  func() error { return s.Ping(context.Background()) },
		"State": func() error { _, err := s.State(context.Background()); return err },
	} {
		err := call()
		var ue *UnreachableError
		if !errors.As(err, &ue) || err.Error() != want {
			t.Errorf("%s: got %v\nwant %s", name, err, want)
		}
	}

	// A socket nobody listens on.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	err = s.Ping(context.Background())
	if want := "cannot reach Docker at unix://" + sock + ": dial unix " + sock + ": connect: connection refused"; err == nil || err.Error() != want {
		t.Errorf("closed socket: got %v\nwant %s", err, want)
	}
}

func TestDefaultHost(t *testing.T) {
	t.Setenv("DOCKER_HOST", "")
	s, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Host() != "unix:///var/run/docker.sock" {
		t.Errorf("default host %q", s.Host())
	}
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/bpfnet-test/docker.sock")
	s2, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	err = s2.Ping(context.Background())
	if want := "cannot reach Docker at unix:///nonexistent/bpfnet-test/docker.sock: dial unix /nonexistent/bpfnet-test/docker.sock: connect: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("DOCKER_HOST: got %v\nwant %s", err, want)
	}
	if _, err := New("no-scheme"); err == nil {
		t.Errorf("New accepted a host without a scheme")
	}
}

// TestBuildSkipsUnservablePorts: a binding the datapath cannot honour (a
// host port another container has, on every address or on the same one)
// is left out with a warning naming the container, and everything else of
// that container and the others stays.
func TestBuildSkipsUnservablePorts(t *testing.T) {
	nets := []network.Summary{bridgeNetwork("bridge", 1, "172.17.0.0/16", "172.17.0.1", map[string]string{optBridgeName: "docker0"})}
	k := &fakeKernel{
		bridges: map[string]fakeBridge{"docker0": {index: 10, addrs: []netip.Prefix{pfx("172.17.0.1/16")}}},
		veths: map[string]fakeVeth{
			"100/02:42:ac:11:00:02": {"vetha", 10},
			"200/02:42:ac:11:00:03": {"vethb", 10},
			"300/02:42:ac:11:00:04": {"vethc", 10},
		},
	}
	a := runningContainer("a", 100, nil, nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}}},
		attach{net: "bridge", addr: "172.17.0.2", mac: "02:42:ac:11:00:02"})
	b := runningContainer("b", 200, nil, nat.PortMap{
		"80/tcp": {{HostIP: "127.0.0.1", HostPort: "8080"}},
		"90/tcp": {{HostIP: "127.0.0.1", HostPort: "9000"}},
	}, attach{net: "bridge", addr: "172.17.0.3", mac: "02:42:ac:11:00:03"})
	c := runningContainer("c", 300, nil, nat.PortMap{"90/tcp": {{HostIP: "127.0.0.2", HostPort: "9000"}}},
		attach{net: "bridge", addr: "172.17.0.4", mac: "02:42:ac:11:00:04"})
	snap, err := build(k, testLogger(t), true, nets, []container.InspectResponse{c, b, a})
	if err != nil {
		t.Fatal(err)
	}
	wantPorts := []datapath.PortMapping{
		{Proto: datapath.TCP, HostPort: 8080, ContainerIP: ip("172.17.0.2"), ContainerPort: 80, Container: "a"},
		{Proto: datapath.TCP, HostIP: ip("127.0.0.1"), HostPort: 9000, ContainerIP: ip("172.17.0.3"), ContainerPort: 90, Container: "b"},
		{Proto: datapath.TCP, HostIP: ip("127.0.0.2"), HostPort: 9000, ContainerIP: ip("172.17.0.4"), ContainerPort: 90, Container: "c"},
	}
	if !reflect.DeepEqual(snap.Ports, wantPorts) {
		t.Errorf("ports:\n got %v\nwant %v", snap.Ports, wantPorts)
	}
	wantWarnings := []string{"container b: port 127.0.0.1:8080->172.17.0.3:80/tcp: host port already published by 8080->172.17.0.2:80/tcp (a port on 0.0.0.0 takes it on every address)"}
	if !reflect.DeepEqual(snap.Warnings, wantWarnings) {
		t.Errorf("warnings:\n got %q\nwant %q", snap.Warnings, wantWarnings)
	}
	st := snap.State()
	if !reflect.DeepEqual(st.Warnings, wantWarnings) {
		t.Errorf("the state's warnings %q, want the snapshot's", st.Warnings)
	}
	if err := st.Validate(); err != nil {
		t.Errorf("state does not validate: %v", err)
	}
	if len(st.Endpoints) != 3 {
		t.Errorf("endpoints %v: the container whose binding was left out must keep its endpoint", st.Endpoints)
	}
}

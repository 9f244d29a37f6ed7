// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestBuildAllowForeignSource: the label bpfnet.allow-foreign-source=true
// sets the exception on every endpoint of its container; without it, or
// with another value, a container's endpoints have none.
func TestBuildAllowForeignSource(t *testing.T) {
	nets, ctrs, k := fixture()
	labelled := map[string]bool{}
	for i, c := range ctrs {
		switch c.Name {
		case "/web":
			c.Config.Labels[LabelAllowForeignSource] = "true"
			labelled["web"] = true
		case "/prio":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "false"}}
		case "/zz-clash":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "yes please"}}
		}
		ctrs[i] = c
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range snap.Endpoints {
		seen[e.Container]++
		if e.AllowForeignSource != labelled[e.Container] {
			t.Errorf("endpoint %s on %s: AllowForeignSource %v, want %v", e.Container, e.Network, e.AllowForeignSource, labelled[e.Container])
		}
	}
	for _, c := range []string{"web", "prio", "zz-clash", "db"} {
		if seen[c] == 0 {
			t.Errorf("no endpoint of %s: the test sees nothing of it", c)
		}
	}
	if seen["web"] != 2 {
		t.Errorf("web has %d endpoints, want its 2", seen["web"])
	}
}

// TestBuildAllowLabels: bpfnet.allow gives every published port of its
// container a source allowlist, bpfnet.allow.<hostPort>/<proto> one host
// port (and wins); a label that does not parse fails closed: the ports it
// covers are not published, with an error in the log, while the others
// of the container stay published.
func TestBuildAllowLabels(t *testing.T) {
	nets := []network.Summary{bridgeNetwork("bridge", 1, "172.17.0.0/16", "172.17.0.1", map[string]string{
		optDefaultBridge: "true", optBridgeName: "docker0",
	})}
	k := &fakeKernel{
		bridges: map[string]fakeBridge{"docker0": {index: 10, addrs: []netip.Prefix{pfx("172.17.0.1/16")}}},
		veths: map[string]fakeVeth{
			"100/02:42:ac:11:00:02": {"veth0", 10},
			"200/02:42:ac:11:00:03": {"veth1", 10},
			"300/02:42:ac:11:00:04": {"veth2", 10},
			"400/02:42:ac:11:00:05": {"veth3", 10},
		},
	}
	on := func(addr, m string) attach { return attach{net: "bridge", addr: addr, mac: m} }
	bind := func(port string) []nat.PortBinding { return []nat.PortBinding{{HostIP: "0.0.0.0", HostPort: port}} }
	ctrs := []container.InspectResponse{
		runningContainer("good", 100, map[string]string{
			LabelAllow:                   "192.0.2.0/24, 203.0.113.9",
			LabelAllowPort + "8081/tcp":  "198.51.100.7/32, fd00:1::/64",
			LabelAllowPort + "5353/udp":  "198.51.100.0/24",
			LabelAllowPort + "9999/tcp":  "10.0.0.0/8", // no such port: a warning
			LabelAllowForeignSource:      "false",      // not an allowlist
			LabelAllowPort + "8082":      "10.1.0.0/16",
			LabelAllowPort + "8083/tcp/": "garbage", // names no port: a warning
		}, nat.PortMap{
			"80/tcp": append(append(bind("8080"), bind("8081")...), bind("8082")...), // three host ports, one container port
			"53/udp": bind("5353"),
			"54/udp": bind("5354"),
		}, on("172.17.0.2", "02:42:ac:11:00:02")),
		runningContainer("badall", 200, map[string]string{
			LabelAllow:                  "192.0.2.0/24,not-a-cidr",
			LabelAllowPort + "9001/tcp": "192.0.2.1",
		}, nat.PortMap{"80/tcp": bind("9000"), "81/tcp": bind("9001")}, on("172.17.0.3", "02:42:ac:11:00:03")),
		runningContainer("badport", 300, map[string]string{
			LabelAllowPort + "7000/tcp": "10.0.0.0/33",
			LabelAllowPort + "7002/tcp": "",
			LabelAllowPort + "7003/tcp": "::ffff:10.0.0.0/104",
		}, nat.PortMap{"80/tcp": bind("7000"), "81/tcp": bind("7001"), "82/tcp": bind("7002"), "83/tcp": bind("7003")},
			on("172.17.0.4", "02:42:ac:11:00:04")),
		runningContainer("open", 400, nil, nat.PortMap{"80/tcp": bind("6000")}, on("172.17.0.5", "02:42:ac:11:00:05")),
	}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	snap, err := build(k, log, true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(logs.String())
	got := map[string]string{}
	for _, m := range snap.Ports {
		got[fmt.Sprintf("%d/%s", m.HostPort, m.Proto)] = datapath.FormatAllow(m.Allow)
	}
	want := map[string]string{
		"8080/tcp": "192.0.2.0/24,203.0.113.9/32",
		"8081/tcp": "198.51.100.7/32,fd00:1::/64",
		"8082/tcp": "10.1.0.0/16", // no protocol in the label: tcp
		"5353/udp": "198.51.100.0/24",
		"5354/udp": "192.0.2.0/24,203.0.113.9/32",
		"9001/tcp": "192.0.2.1/32", // its own label wins over the bad one
		"7001/tcp": "",             // no label: open
		"6000/tcp": "",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("published ports and their lists:\n got %v\nwant %v", got, want)
	}
	for _, w := range []string{
		`level=ERROR msg="docker port not published: its allowlist label is invalid, so the port stays closed rather than open to all" container=badall host_port=9000 protocol=tcp label=bpfnet.allow`,
		`container=badport host_port=7000 protocol=tcp label=bpfnet.allow.7000/tcp value=10.0.0.0/33 error="allowlist item \"10.0.0.0/33\" is not a CIDR prefix or an address"`,
		`container=badport host_port=7002 protocol=tcp label=bpfnet.allow.7002/tcp value="" error="empty allowlist"`,
		`container=badport host_port=7003 protocol=tcp label=bpfnet.allow.7003/tcp value=::ffff:10.0.0.0/104 error="allowlist item \"::ffff:10.0.0.0/104\": an IPv4-mapped IPv6 prefix: write the IPv4 prefix"`,
		`container label ignored: it names no published host port (want bpfnet.allow.<hostPort>/<proto>)" container=good label=bpfnet.allow.9999/tcp`,
		`container=good label=bpfnet.allow.8083/tcp/`,
	} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %s", w)
		}
	}
	if strings.Contains(logs.String(), "label=bpfnet.allow-foreign-source") {
		t.Errorf("the foreign-source label was taken for an allowlist:\n%s", logs.String())
	}
}

// TestBuildTwoNetworksWithoutMAC: a container on two of a Compose
// project's networks whose endpoints carry no MAC has each of its
// interfaces found by its address, on its own network's bridge (not eth0
// twice, the second then left out as on the wrong bridge); its published
// ports go to its address on the network that sorts first, Docker's
// gateway endpoint, whatever the networks are called.
func TestBuildTwoNetworksWithoutMAC(t *testing.T) {
	nets := []network.Summary{
		bridgeNetwork("proj_default", 1, "172.30.1.0/24", "172.30.1.1", nil),
		bridgeNetwork("proj_back", 2, "172.30.2.0/24", "172.30.2.1", nil),
	}
	k := &fakeKernel{
		bridges: map[string]fakeBridge{
			"br-01ababababab": {index: 11},
			"br-02ababababab": {index: 12},
		},
		veths: map[string]fakeVeth{
			"100/172.30.1.2": {"vethdef", 11},
			"100/172.30.2.2": {"vethback", 12},
		},
	}
	web := runningContainer("proj-web-1", 100, map[string]string{"com.docker.compose.project": "proj"},
		nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}}},
		attach{net: "proj_default", addr: "172.30.1.2"}, attach{net: "proj_back", addr: "172.30.2.2"})
	for name, es := range web.NetworkSettings.Networks {
		for _, n := range nets {
			if n.Name == name {
				es.NetworkID = n.ID
			}
		}
	}
	snap, err := build(k, testLogger(t), true, nets, []container.InspectResponse{web})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range snap.Endpoints {
		got[e.Network] = e.Addr.String() + " " + e.HostVeth
	}
	want := map[string]string{"proj_default": "172.30.1.2 vethdef", "proj_back": "172.30.2.2 vethback"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints by network %v, want %v", got, want)
	}
	wantPorts := []datapath.PortMapping{{Proto: datapath.TCP, HostPort: 8080, ContainerIP: ip("172.30.2.2"), ContainerPort: 80, Container: "proj-web-1"}}
	if !reflect.DeepEqual(snap.Ports, wantPorts) {
		t.Errorf("ports %v, want %v", snap.Ports, wantPorts)
	}
	st := snap.State()
	if err := st.Validate(); err != nil {
		t.Errorf("state does not validate: %v", err)
	}
}

// TestBuildDirectOptions: trusted_host_interfaces and host_ipv4 reach the
// network as given; a host_ipv4 that is no IPv4 address leaves the
// network out; a network without them has neither.
func TestBuildDirectOptions(t *testing.T) {
	nets, ctrs, k := fixture()
	for i, n := range nets {
		switch n.Name {
		case "appnet":
			n.Options = map[string]string{optTrustedIfaces: "eth1:wg0", optHostIPv4: "192.0.2.9"}
		case "aaa":
			n.Options = map[string]string{optHostIPv4: "fe80::1"}
		}
		nets[i] = n
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]datapath.Network{}
	for _, n := range snap.Networks {
		got[n.Name] = n.Network
	}
	app, ok := got["appnet"]
	if !ok {
		t.Fatal("appnet left out")
	}
	if app.TrustedHostInterfaces != "eth1:wg0" || app.HostIPv4 != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("appnet: trusted %q, host_ipv4 %s; want eth1:wg0, 192.0.2.9", app.TrustedHostInterfaces, app.HostIPv4)
	}
	if _, ok := got["aaa"]; ok {
		t.Error("aaa, whose host_ipv4 is IPv6, is in the snapshot")
	}
	if b, ok := got["bridge"]; !ok || b.TrustedHostInterfaces != "" || b.HostIPv4.IsValid() {
		t.Errorf("bridge: %+v, want no trusted interfaces and no host_ipv4", b)
	}
}

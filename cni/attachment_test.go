// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

func testAttachment(id string) Attachment {
	return Attachment{ContainerID: id, IfName: "eth0", Network: "pods", Bridge: "cni0", HostVeth: "veth1",
		Addr: netip.MustParseAddr("10.88.0.2"), Subnet: netip.MustParsePrefix("10.88.0.0/24"), Gateway: netip.MustParseAddr("10.88.0.1"),
		Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}, {HostPort: 53, ContainerPort: 53, Protocol: "UDP", HostIP: "192.0.2.1"}},
		Pod:   "web", Namespace: "shop"}
}

// TestAttachmentCheck: what the agent refuses before keeping anything,
// beside an attachment it takes.
func TestAttachmentCheck(t *testing.T) {
	if err := testAttachment("abc").Check(); err != nil {
		t.Fatalf("a good attachment: %v", err)
	}
	for name, mod := range map[string]func(*Attachment){
		"id with a slash":     func(a *Attachment) { a.ContainerID = "../etc" },
		"empty id":            func(a *Attachment) { a.ContainerID = "" },
		"ifname with a slash": func(a *Attachment) { a.IfName = "a/b" },
		"no network":          func(a *Attachment) { a.Network = "" },
		"no veth":             func(a *Attachment) { a.HostVeth = "" },
		"address outside":     func(a *Attachment) { a.Addr = netip.MustParseAddr("10.99.0.2") },
		"IPv6 address":        func(a *Attachment) { a.Addr = netip.MustParseAddr("fd00::2") },
		"gateway outside":     func(a *Attachment) { a.Gateway = netip.MustParseAddr("10.99.0.1") },
		"port 0":              func(a *Attachment) { a.Ports[0].HostPort = 0 },
		"port too high":       func(a *Attachment) { a.Ports[0].ContainerPort = 70000 },
		"sctp":                func(a *Attachment) { a.Ports[0].Protocol = "sctp" },
		"IPv6 host address":   func(a *Attachment) { a.Ports[1].HostIP = "::1" },
	} {
		a := testAttachment("abc")
		mod(&a)
		if err := a.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestMappings: portMappings as the datapath takes them; 0.0.0.0 is
// every address, as "" is.
func TestMappings(t *testing.T) {
	a := testAttachment("abc")
	a.Ports = append(a.Ports, Port{HostPort: 9000, ContainerPort: 90, Protocol: "tcp", HostIP: "0.0.0.0"})
	ms, err := a.Mappings()
	if err != nil {
		t.Fatal(err)
	}
	want := []datapath.PortMapping{
		{Proto: datapath.TCP, HostPort: 8080, ContainerIP: a.Addr, ContainerPort: 80, Container: "shop/web"},
		{Proto: datapath.UDP, HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 53, ContainerIP: a.Addr, ContainerPort: 53, Container: "shop/web"},
		{Proto: datapath.TCP, HostPort: 9000, ContainerIP: a.Addr, ContainerPort: 90, Container: "shop/web"},
	}
	if len(ms) != len(want) {
		t.Fatalf("%v, want %v", ms, want)
	}
	for i := range want {
		if !ms[i].Equal(want[i]) {
			t.Errorf("mapping %d: %v, want %v", i, ms[i], want[i])
		}
	}
}

// TestMappingsDualStack: on a dual-stack network, a hostPort on every
// address ("" or ::) maps both families, as the portmap plugin does;
// 0.0.0.0 or an IPv4 host address maps IPv4 alone, an IPv6 one IPv6
// alone. Without an IPv6 address, :: maps IPv4 and an IPv6 host address
// is refused; an IPv6 address outside its subnet is refused.
func TestMappingsDualStack(t *testing.T) {
	a := testAttachment("abc")
	a.Addr6, a.Subnet6, a.Gateway6 = netip.MustParseAddr("fd00:88::2"), netip.MustParsePrefix("fd00:88::/64"), netip.MustParseAddr("fd00:88::1")
	host6 := netip.MustParseAddr("2001:db8::1")
	a.Ports = []Port{
		{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 8081, ContainerPort: 81, Protocol: "tcp", HostIP: "::"},
		{HostPort: 8082, ContainerPort: 82, Protocol: "udp", HostIP: "0.0.0.0"},
		{HostPort: 8083, ContainerPort: 83, Protocol: "tcp", HostIP: "192.0.2.1"},
		{HostPort: 8084, ContainerPort: 84, Protocol: "tcp", HostIP: host6.String()},
	}
	if err := a.Check(); err != nil {
		t.Fatalf("a dual-stack attachment: %v", err)
	}
	ms, err := a.Mappings()
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := a.Addr, a.Addr6
	pm := func(proto datapath.Proto, hip netip.Addr, hp uint16, ctr netip.Addr, cp uint16) datapath.PortMapping {
		return datapath.PortMapping{Proto: proto, HostIP: hip, HostPort: hp, ContainerIP: ctr, ContainerPort: cp, Container: "shop/web"}
	}
	want := []datapath.PortMapping{
		pm(datapath.TCP, netip.Addr{}, 8080, v4, 80), pm(datapath.TCP, netip.IPv6Unspecified(), 8080, v6, 80),
		pm(datapath.TCP, netip.Addr{}, 8081, v4, 81), pm(datapath.TCP, netip.IPv6Unspecified(), 8081, v6, 81),
		pm(datapath.UDP, netip.Addr{}, 8082, v4, 82),
		pm(datapath.TCP, netip.MustParseAddr("192.0.2.1"), 8083, v4, 83),
		pm(datapath.TCP, host6, 8084, v6, 84),
	}
	if len(ms) != len(want) {
		t.Fatalf("%v, want %v", ms, want)
	}
	for i := range want {
		if !ms[i].Equal(want[i]) {
			t.Errorf("mapping %d: %v, want %v", i, ms[i], want[i])
		}
	}
	// The state takes them: both families of one port are two bindings.
	st := datapath.State{
		Networks:  []datapath.Network{{Name: "pods", Bridge: "cni0", Subnet: a.Subnet, Gateway: a.Gateway, Subnet6: a.Subnet6, Gateway6: a.Gateway6}},
		Endpoints: []datapath.Endpoint{{Container: "shop/web", Network: "pods", Addr: v4, Addr6: v6, HostVeth: "veth1"}},
		Ports:     ms,
	}
	if err := st.Validate(); err != nil {
		t.Errorf("the state of a dual-stack pod: %v", err)
	}

	v4only := testAttachment("abc")
	v4only.Ports = []Port{{HostPort: 8081, ContainerPort: 81, Protocol: "tcp", HostIP: "::"}}
	if ms, err := v4only.Mappings(); err != nil || len(ms) != 1 || ms[0].ContainerIP != v4only.Addr || ms[0].HostIP.IsValid() {
		t.Errorf("hostIP :: of an IPv4 pod: %v %v, want the IPv4 mapping alone", ms, err)
	}
	v4only.Ports[0].HostIP = host6.String()
	if err := v4only.Check(); err == nil {
		t.Error("an IPv6 host address for a pod without IPv6: accepted")
	}
	bad := a
	bad.Addr6 = netip.MustParseAddr("fd00:99::2")
	if err := bad.Check(); err == nil {
		t.Error("an IPv6 address outside its subnet: accepted")
	}
	bad = a
	bad.Subnet6 = netip.Prefix{}
	if err := bad.Check(); err == nil {
		t.Error("an IPv6 address without its subnet: accepted")
	}
}

// TestStore: one file per attachment, read back, listed in key order,
// deleted idempotently; a key that is no file name is refused.
func TestStore(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "cni")}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Fatalf("a store not made yet: %v %v", l, err)
	}
	b, a := testAttachment("bbb"), testAttachment("aaa")
	for _, x := range []Attachment{b, a} {
		if err := s.Put(x); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := s.Get(a.Key())
	if err != nil || !ok || got.Pod != "web" || len(got.Ports) != 2 {
		t.Fatalf("Get: %+v %v %v", got, ok, err)
	}
	l, err := s.List()
	if err != nil || len(l) != 2 || l[0].ContainerID != "aaa" || l[1].ContainerID != "bbb" {
		t.Fatalf("List: %+v %v", l, err)
	}
	ents, _ := os.ReadDir(s.Dir)
	if len(ents) != 2 {
		t.Errorf("%d files, want 2 (no temporary left)", len(ents))
	}
	if err := s.Delete(a.Key()); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(a.Key()); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if _, ok, _ := s.Get(a.Key()); ok {
		t.Error("Get after Delete finds it")
	}
	if err := s.Put(testAttachment("../x")); err == nil {
		t.Error("Put of a key that escapes the folder: accepted")
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "broken.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "broken.json") {
		t.Errorf("List with a broken file: %v, want its name in the error", err)
	}
}

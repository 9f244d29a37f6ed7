// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/datapath"
)

func TestJoinHostPort(t *testing.T) {
	for _, tc := range []struct {
		addr string
		port uint16
		want string
	}{
		{"172.30.0.2", 80, "172.30.0.2:80"},
		{"0.0.0.0", 8080, "0.0.0.0:8080"},
		{"fd00:251::2", 80, "[fd00:251::2]:80"},
		{"::", 8080, "[::]:8080"},
		{"::ffff:10.0.0.1", 80, "[::ffff:10.0.0.1]:80"},
		{"", 80, ":80"},
	} {
		if got := joinHostPort(tc.addr, tc.port); got != tc.want {
			t.Errorf("joinHostPort(%q, %d) = %q, want %q", tc.addr, tc.port, got, tc.want)
		}
	}
}

// TestPrintPortsIPv6: the ports table of both families, IPv6 addresses
// in brackets where a port follows, an allowlist's IPv6 prefixes beside
// its IPv4 ones; JSON keeps the address and the port
// apart, without brackets.
func TestPrintPortsIPv6(t *testing.T) {
	ports := []portJSON{
		{Proto: "tcp", HostIP: "0.0.0.0", HostPort: 8080, ContainerIP: "172.30.0.2", ContainerPort: 80, Container: "web", Connections: 3, Allow: []string{}},
		{Proto: "tcp", HostIP: "::", HostPort: 8080, ContainerIP: "fd00:251::2", ContainerPort: 80, Container: "web", Connections: 2, Allow: []string{}},
		{Proto: "udp", HostIP: "fd00:252::100", HostPort: 8081, ContainerIP: "fd00:251::3", ContainerPort: 81, Allow: []string{"192.0.2.0/24", "2001:db8::/32"}, Denied: 1},
	}
	var b bytes.Buffer
	if err := printPorts(&b, ports); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"PROTO", "HOST", "CONTAINER", "NAME", "CONNECTIONS", "ALLOW", "DENIED"},
		{"tcp", "0.0.0.0:8080", "172.30.0.2:80", "web", "3", "all", "0"},
		{"tcp", "[::]:8080", "[fd00:251::2]:80", "web", "2", "all", "0"},
		{"udp", "[fd00:252::100]:8081", "[fd00:251::3]:81", "0", "192.0.2.0/24,2001:db8::/32", "1"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", b.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("line %d: %q, want %q", i, got, want[i])
		}
	}
	var js bytes.Buffer
	if err := writeJSON(&js, ports[1:2]); err != nil {
		t.Fatal(err)
	}
	if s := js.String(); !strings.Contains(s, `"host_ip": "::"`) || !strings.Contains(s, `"container_ip": "fd00:251::2"`) {
		t.Errorf("JSON %s", s)
	}
}

// TestPrintCTIPv6: conntrack entries of both families, IPv6 tuples in
// brackets in the table and in JSON.
func TestPrintCTIPv6(t *testing.T) {
	ap := netip.MustParseAddrPort
	entries := []datapath.CTEntry{
		{Kind: datapath.KindDNAT, Key: datapath.Tuple{Proto: 6, Src: ap("[fd00:99::2]:40000"), Dst: ap("[fd00:99::1]:8080")},
			Translated: datapath.Tuple{Proto: 6, Src: ap("[fd00:99::2]:40000"), Dst: ap("[fd00:251::2]:80")}, Packets: 4, Bytes: 300, Expires: 90 * time.Second},
		{Kind: datapath.KindSNAT, Reply: true, Key: datapath.Tuple{Proto: 17, Src: ap("10.231.0.2:53"), Dst: ap("10.231.0.1:40001")},
			Translated: datapath.Tuple{Proto: 17, Src: ap("10.231.0.2:53"), Dst: ap("172.30.0.2:5000")}, Packets: 1, Bytes: 60, Expires: 20 * time.Second},
	}
	var rows []ctJSON
	for _, e := range entries {
		rows = append(rows, ctRow(e))
	}
	if r := rows[0]; r.Src != "[fd00:99::2]:40000" || r.Dst != "[fd00:99::1]:8080" || r.NewDst != "[fd00:251::2]:80" || r.ExpiresSec != 90 {
		t.Errorf("IPv6 row %+v", r)
	}
	if r := rows[1]; r.Src != "10.231.0.2:53" || r.NewDst != "172.30.0.2:5000" {
		t.Errorf("IPv4 row %+v", r)
	}
	var b bytes.Buffer
	if err := printCT(&b, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"[fd00:99::2]:40000 -> [fd00:99::1]:8080",
		"[fd00:99::2]:40000 -> [fd00:251::2]:80",
		"10.231.0.2:53 -> 10.231.0.1:40001",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("ct table has no %q:\n%s", want, b.String())
		}
	}
	js, err := json.Marshal(rows[0])
	if err != nil || !strings.Contains(string(js), `"translated_dst":"[fd00:251::2]:80"`) {
		t.Errorf("JSON %s %v", js, err)
	}
}

// TestPrintStatusIPv6: status counts the IPv6 ports, shows the IPv6
// conntrack tables and lists the endpoints of both families.
func TestPrintStatusIPv6(t *testing.T) {
	r := statusReport{PinPath: "/sys/fs/bpf/x", Ports: 3, PortsIPv6: 1,
		CT6Entries: 4, CT6Capacity: 1024, HalfOpen6Entries: 2, HalfOpen6Capacity: 128,
		Endpoints: []endpointJSON{{Addr: netip.MustParseAddr("172.30.0.2"), Ifindex: 7}, {Addr: netip.MustParseAddr("fd00:251::2"), Ifindex: 7}}}
	var b bytes.Buffer
	if err := printStatus(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"published ports  3 (1 IPv6)", "conntrack IPv6   4 / 1024 entries, 2 / 128 unassured", "\nfd00:251::2 ", "\n172.30.0.2 "} {
		if !strings.Contains(out, want) {
			t.Errorf("status has no %q:\n%s", want, out)
		}
	}
	r.PortsIPv6 = 0
	r.CT6Capacity = 0 // pinned by a version without ct6
	b.Reset()
	printStatus(&b, r)
	if !strings.Contains(b.String(), "published ports  3\n") || strings.Contains(b.String(), "IPv6") {
		t.Errorf("IPv4-only status:\n%s", b.String())
	}
}

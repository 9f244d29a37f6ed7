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

// TestPrintNAT64: a NAT64 mapping in the ports table, marked beside its
// IPv4 container address (nat64 in JSON); a NAT64 flow in the ct table,
// the client's IPv6 tuple translated to the pool's IPv4 one, and its
// answer the other way. The IPv4 mapping beside it is not marked.
func TestPrintNAT64(t *testing.T) {
	ports := []portJSON{
		{Proto: "tcp", HostIP: "0.0.0.0", HostPort: 8080, ContainerIP: "172.30.0.2", ContainerPort: 80, Container: "web", Allow: []string{}},
		{Proto: "tcp", HostIP: "::", HostPort: 8080, ContainerIP: "172.30.0.2", ContainerPort: 80, Container: "web", Allow: []string{}, NAT64: true},
	}
	var b bytes.Buffer
	if err := printPorts(&b, ports); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != "tcp 0.0.0.0:8080 172.30.0.2:80 web 0 all 0" ||
		strings.Join(strings.Fields(lines[2]), " ") != "tcp [::]:8080 172.30.0.2:80(nat64) web 0 all 0" {
		t.Errorf("ports table:\n%s", b.String())
	}
	j, err := json.Marshal(ports[1])
	if err != nil || !strings.Contains(string(j), `"nat64":true`) {
		t.Errorf("JSON %s, %v", j, err)
	}
	if j, _ := json.Marshal(ports[0]); strings.Contains(string(j), "nat64") {
		t.Errorf("an IPv4 mapping's JSON says nat64: %s", j)
	}

	ap := netip.MustParseAddrPort
	rows := []ctJSON{
		ctRow(datapath.CTEntry{Kind: datapath.KindNAT64, Key: datapath.Tuple{Proto: 6, Src: ap("[2001:db8::7]:40000"), Dst: ap("[2001:db8:1::1]:8080")},
			Translated: datapath.Tuple{Proto: 6, Src: ap("198.19.12.34:40000"), Dst: ap("172.30.0.2:80")}, Packets: 3, Bytes: 180, Expires: time.Minute}),
		ctRow(datapath.CTEntry{Kind: datapath.KindNAT64, Reply: true, Key: datapath.Tuple{Proto: 6, Src: ap("172.30.0.2:80"), Dst: ap("198.19.12.34:40000")},
			Translated: datapath.Tuple{Proto: 6, Src: ap("[2001:db8:1::1]:8080"), Dst: ap("[2001:db8::7]:40000")}, Packets: 2, Bytes: 120, Expires: time.Minute}),
	}
	b.Reset()
	if err := printCT(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{
		"nat64 orig tcp [2001:db8::7]:40000 -> [2001:db8:1::1]:8080 198.19.12.34:40000 -> 172.30.0.2:80 - 3 180 60s",
		"nat64 reply tcp 172.30.0.2:80 -> 198.19.12.34:40000 [2001:db8:1::1]:8080 -> [2001:db8::7]:40000 - 2 120 60s",
	}
	if len(lines) != 3 {
		t.Fatalf("ct table:\n%s", b.String())
	}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != w {
			t.Errorf("ct line %d: %q, want %q", i+1, got, w)
		}
	}
	if j, _ := json.Marshal(rows[0]); !strings.Contains(string(j), `"kind":"nat64"`) || !strings.Contains(string(j), `"translated_src":"198.19.12.34:40000"`) {
		t.Errorf("ct JSON %s", j)
	}
}

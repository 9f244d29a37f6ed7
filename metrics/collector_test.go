// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/loader"
)

// fakeReader is a Reader with fixed contents; failing makes one of its
// methods fail.
type fakeReader struct {
	mu        sync.Mutex
	traffic   map[uint32]datapath.Traffic
	drops     map[datapath.DropReason]uint64
	events    map[datapath.Event]uint64
	ports     map[datapath.PortBinding]uint64
	denied    map[datapath.PortBinding]uint64
	ctEntries int
	ctCap     int
	// the table of unassured flows
	halfEntries, halfCap int
	// ct6 and ct6_syn, as big as ct4 and ct4_syn.
	ct6Entries, half6Entries int
	failing                  string // method name
}

var errFake = errors.New("map read failed")

func (f *fakeReader) fail(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing == method {
		return errFake
	}
	return nil
}

func (f *fakeReader) Traffic() (map[uint32]datapath.Traffic, error) {
	if err := f.fail("Traffic"); err != nil {
		return nil, err
	}
	return maps.Clone(f.traffic), nil
}

func (f *fakeReader) Drops() (map[datapath.DropReason]uint64, error) {
	if err := f.fail("Drops"); err != nil {
		return nil, err
	}
	return maps.Clone(f.drops), nil
}

func (f *fakeReader) Events() (map[datapath.Event]uint64, error) {
	if err := f.fail("Events"); err != nil {
		return nil, err
	}
	return maps.Clone(f.events), nil
}

func (f *fakeReader) PortConnections() (map[datapath.PortBinding]uint64, error) {
	if err := f.fail("PortConnections"); err != nil {
		return nil, err
	}
	return maps.Clone(f.ports), nil
}

func (f *fakeReader) PortDenied() (map[datapath.PortBinding]uint64, error) {
	if err := f.fail("PortDenied"); err != nil {
		return nil, err
	}
	return maps.Clone(f.denied), nil
}

func (f *fakeReader) CTUsage() (int, int, error) {
	if err := f.fail("CTUsage"); err != nil {
		return 0, 0, err
	}
	return f.ctEntries, f.ctCap, nil
}

func (f *fakeReader) CT6Usage() (int, int, error) {
	if err := f.fail("CT6Usage"); err != nil {
		return 0, 0, err
	}
	return f.ct6Entries, f.ctCap, nil
}

func (f *fakeReader) HalfOpen6Usage() (int, int, error) {
	if err := f.fail("HalfOpen6Usage"); err != nil {
		return 0, 0, err
	}
	return f.half6Entries, f.halfCap, nil
}

func (f *fakeReader) HalfOpenUsage() (int, int, error) {
	if err := f.fail("HalfOpenUsage"); err != nil {
		return 0, 0, err
	}
	return f.halfEntries, f.halfCap, nil
}

const (
	webID = "3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e"
	dbID  = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"
)

// fixture is a Docker-like state: a Compose container and a plain one
// with runtime ids, a container discovered without a runtime (its "veth"
// is lo, found by name), and one whose veth is gone.
type fixture struct {
	reader *fakeReader
	mu     sync.Mutex
	state  datapath.State
	atts   []loader.Attachment
	attErr error
	loIdx  int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	f := &fixture{loIdx: lo.Index}
	f.state = datapath.State{
		Networks: []datapath.Network{{Name: "bridge", Bridge: "docker0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: ip("172.17.0.1"),
			Subnet6: netip.MustParsePrefix("fd00:17::/64"), Gateway6: ip("fd00:17::1")}},
		Endpoints: []datapath.Endpoint{
			{Container: "/shop-web-1", ContainerID: webID, Network: "bridge", Addr: ip("172.17.0.2"), Addr6: ip("fd00:17::2"), HostVeth: "veth1a2b3c",
				Labels: map[string]string{LabelComposeProject: "shop", LabelComposeService: "web", "other": "x"}},
			{Container: "/db", ContainerID: dbID, Network: "bridge", Addr: ip("172.17.0.3"), HostVeth: "veth9f8e7d"},
			{Container: "lo", Network: "bridge", Addr: ip("172.17.0.4"), HostVeth: "lo"},
			{Container: "/gone", ContainerID: "0123456789abcdef", Network: "bridge", Addr: ip("172.17.0.5"), HostVeth: "vethgone"},
		},
		Ports: []datapath.PortMapping{
			{Proto: datapath.TCP, HostPort: 8080, ContainerIP: ip("172.17.0.2"), ContainerPort: 80},
			// Docker's second binding of -p 8080:80 on a network with
			// IPv6: counted apart, under ::, named by its IPv6 address.
			{Proto: datapath.TCP, HostPort: 8080, ContainerIP: ip("fd00:17::2"), ContainerPort: 80},
			{Proto: datapath.UDP, HostIP: ip("127.0.0.1"), HostPort: 5353, ContainerIP: ip("172.17.0.3"), ContainerPort: 53, Container: "/db"},
		},
	}
	f.atts = []loader.Attachment{
		{Interface: "veth1a2b3c", Ifindex: 11, Direction: loader.Ingress, Program: datapath.ProgFromContainer, Mode: loader.ModeTCX, ProgramID: 40},
		{Interface: "veth1a2b3c", Ifindex: 11, Direction: loader.Egress, Program: datapath.ProgToContainer, Mode: loader.ModeTCX, ProgramID: 41},
		{Interface: "veth9f8e7d", Ifindex: 12, Direction: loader.Ingress, Program: datapath.ProgFromContainer, Mode: loader.ModeLegacy, ProgramID: 42},
		{Interface: "vethgone", Ifindex: 0, Direction: loader.Egress, Program: datapath.ProgToContainer, Mode: loader.ModeTCX},
	}
	f.reader = &fakeReader{
		traffic: map[uint32]datapath.Traffic{
			11:                      {RxPackets: 10, RxBytes: 15000, TxPackets: 20, TxBytes: 3000},
			12:                      {RxPackets: 1, RxBytes: 100, TxPackets: 2, TxBytes: 200},
			uint32(lo.Index):        {RxPackets: 3, RxBytes: 300, TxPackets: 4, TxBytes: 400},
			99:                      {RxPackets: 1e6, RxBytes: 1e9, TxPackets: 1e6, TxBytes: 1e9}, // a veth long gone
			uint32(lo.Index + 1000): {RxPackets: 5},
		},
		drops:  map[datapath.DropReason]uint64{datapath.DropNotPublished: 3, datapath.DropMalformed: 1},
		events: map[datapath.Event]uint64{datapath.EventCTNewDNAT: 7, datapath.EventCTNewSNAT: 4, datapath.EventCTNewHairpin: 1, datapath.EventCTNewNAT64: 5, datapath.EventCTRecreated: 2, datapath.EventCTPeerRestored: 3, datapath.EventRedirectPeer: 100, datapath.EventCTHalfOpen: 9, datapath.EventCTPromoted: 6, datapath.EventNATHostSocket: 2, datapath.EventNATHostRemap: 1},
		ports: map[datapath.PortBinding]uint64{
			{Proto: datapath.TCP, HostIP: ip("0.0.0.0"), HostPort: 8080}: 7,
			{Proto: datapath.TCP, HostIP: ip("::"), HostPort: 8080}:      2,
			{Proto: datapath.TCP, HostIP: ip("0.0.0.0"), HostPort: 9999}: 5, // unpublished since
		},
		denied: map[datapath.PortBinding]uint64{
			{Proto: datapath.TCP, HostIP: ip("0.0.0.0"), HostPort: 8080}: 3,
			{Proto: datapath.TCP, HostIP: ip("::"), HostPort: 8080}:      1,
			{Proto: datapath.TCP, HostIP: ip("0.0.0.0"), HostPort: 9999}: 1, // unpublished since
		},
		ctEntries:    24,
		ctCap:        262144,
		halfEntries:  6,
		ct6Entries:   4,
		half6Entries: 2,
		halfCap:      32768,
	}
	return f
}

func (f *fixture) collector() *Collector {
	return NewCollector(f.reader, func() datapath.State {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.state
	}, func() ([]loader.Attachment, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.atts, f.attErr
	}, BuildInfo{Version: "1.2.3", GoVersion: "go1.26.8"})
}

const (
	helpTraffic = `# HELP bpfnet_container_receive_bytes_total Bytes received by the container (sent into it), Ethernet header included, counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets).
# TYPE bpfnet_container_receive_bytes_total counter
# HELP bpfnet_container_receive_packets_total Packets received by the container (sent into it), counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets); a GSO/GRO packet counts once.
# TYPE bpfnet_container_receive_packets_total counter
# HELP bpfnet_container_transmit_bytes_total Bytes transmitted by the container (sent out of it), Ethernet header included, counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets).
# TYPE bpfnet_container_transmit_bytes_total counter
# HELP bpfnet_container_transmit_packets_total Packets transmitted by the container (sent out of it), counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets); a GSO/GRO packet counts once.
# TYPE bpfnet_container_transmit_packets_total counter
`
	// Labels in the order the comparison prints them: sorted by name.
	webLabels = `compose_project="shop",compose_service="web",container="shop-web-1",container_id="3f4e5d6c7b8a",interface="veth1a2b3c",namespace="",network="bridge",pod=""`
	dbLabels  = `compose_project="",compose_service="",container="db",container_id="9a8b7c6d5e4f",interface="veth9f8e7d",namespace="",network="bridge",pod=""`
	loLabels  = `compose_project="",compose_service="",container="lo",container_id="",interface="lo",namespace="",network="bridge",pod=""`
)

func trafficText(labels string, rxB, rxP, txB, txP int) string {
	return fmt.Sprintf(`bpfnet_container_receive_bytes_total{%[1]s} %[2]d
bpfnet_container_receive_packets_total{%[1]s} %[3]d
bpfnet_container_transmit_bytes_total{%[1]s} %[4]d
bpfnet_container_transmit_packets_total{%[1]s} %[5]d
`, labels, rxB, rxP, txB, txP)
}

const otherFamilies = `# HELP bpfnet_published_port_connections_total New connections (TCP) or flows (UDP) translated to a published port's container. host_ip is 0.0.0.0 for a port published on every host address.
# TYPE bpfnet_published_port_connections_total counter
bpfnet_published_port_connections_total{container="shop-web-1",host_ip="0.0.0.0",host_port="8080",protocol="tcp"} 7
bpfnet_published_port_connections_total{container="shop-web-1",host_ip="::",host_port="8080",protocol="tcp"} 2
bpfnet_published_port_connections_total{container="db",host_ip="127.0.0.1",host_port="5353",protocol="udp"} 0
# HELP bpfnet_published_port_denied_total New connections (TCP) or flows (UDP) to a published port dropped because their source is not in the port's allowlist (labels bpfnet.allow, bpfnet.allow.<port>/<proto>; --publish ...,allow=). host_ip is 0.0.0.0 for a port published on every host address.
# TYPE bpfnet_published_port_denied_total counter
bpfnet_published_port_denied_total{container="shop-web-1",host_ip="0.0.0.0",host_port="8080",protocol="tcp"} 3
bpfnet_published_port_denied_total{container="shop-web-1",host_ip="::",host_port="8080",protocol="tcp"} 1
bpfnet_published_port_denied_total{container="db",host_ip="127.0.0.1",host_port="5353",protocol="udp"} 0
# HELP bpfnet_conntrack_entries Entries in the connection-tracking table (two per flow, one per direction), counted at scrape time. table="ct4": established flows; table="ct4_syn": published-port flows whose client has not answered the container yet (where a SYN flood stays); table="ct6" and "ct6_syn": the same for IPv6.
# TYPE bpfnet_conntrack_entries gauge
bpfnet_conntrack_entries{table="ct4"} 24
bpfnet_conntrack_entries{table="ct4_syn"} 6
bpfnet_conntrack_entries{table="ct6"} 4
bpfnet_conntrack_entries{table="ct6_syn"} 2
# HELP bpfnet_conntrack_capacity Capacity of the connection-tracking table (entries). The table is an LRU hash: when full, the least recently used entries are evicted.
# TYPE bpfnet_conntrack_capacity gauge
bpfnet_conntrack_capacity{table="ct4"} 262144
bpfnet_conntrack_capacity{table="ct4_syn"} 32768
bpfnet_conntrack_capacity{table="ct6"} 262144
bpfnet_conntrack_capacity{table="ct6_syn"} 32768
# HELP bpfnet_conntrack_evictions_total Connection-tracking entries found missing while their flow was still active, i.e. evictions the datapath noticed: TCP flows re-created mid-stream (event ct_recreated) plus flow halves restored from the other half (event ct_peer_restored). An evicted entry whose flow never sends again is not counted.
# TYPE bpfnet_conntrack_evictions_total counter
bpfnet_conntrack_evictions_total 5
# HELP bpfnet_conntrack_new_total Flows the datapath started tracking, by translation kind: dnat (published port), snat (masquerade), hairpin, nat64 (an IPv6 host port of an IPv4 container).
# TYPE bpfnet_conntrack_new_total counter
bpfnet_conntrack_new_total{kind="dnat"} 7
bpfnet_conntrack_new_total{kind="snat"} 4
bpfnet_conntrack_new_total{kind="hairpin"} 1
bpfnet_conntrack_new_total{kind="nat64"} 5
# HELP bpfnet_conntrack_half_open_total Published-port flows that started unassured, in table ct4_syn, until their client answers the container: under a SYN flood, one per forged SYN.
# TYPE bpfnet_conntrack_half_open_total counter
bpfnet_conntrack_half_open_total 9
# HELP bpfnet_conntrack_promoted_total Unassured flows whose client answered the container, moved from ct4_syn into ct4.
# TYPE bpfnet_conntrack_promoted_total counter
bpfnet_conntrack_promoted_total 6
# HELP bpfnet_nat_host_collisions_total Masquerade clashes with the host's own flows that the datapath avoided: kind="host_socket", a candidate port refused because a host socket uses its tuple; kind="host_remap", a host flow opened on a tuple a translation holds, given another source port.
# TYPE bpfnet_nat_host_collisions_total counter
bpfnet_nat_host_collisions_total{kind="host_socket"} 2
bpfnet_nat_host_collisions_total{kind="host_remap"} 1
# HELP bpfnet_drops_total Packets the datapath dropped, by reason.
# TYPE bpfnet_drops_total counter
bpfnet_drops_total{reason="malformed"} 1
bpfnet_drops_total{reason="not_published"} 3
bpfnet_drops_total{reason="ct_full"} 0
bpfnet_drops_total{reason="nat_ports_exhausted"} 0
bpfnet_drops_total{reason="rewrite_failed"} 0
bpfnet_drops_total{reason="ct_miss"} 0
bpfnet_drops_total{reason="isolation"} 0
bpfnet_drops_total{reason="icc_disabled"} 0
bpfnet_drops_total{reason="internal"} 0
bpfnet_drops_total{reason="spoofed"} 0
bpfnet_drops_total{reason="direct_access"} 0
bpfnet_drops_total{reason="port_denied"} 0
bpfnet_drops_total{reason="ipv6_ext_headers"} 0
bpfnet_drops_total{reason="nat64"} 0
# HELP bpfnet_attached A program bpfnet attached: 1 when the kernel runs it, 0 when it is recorded but the kernel no longer runs it (its interface went away).
# TYPE bpfnet_attached gauge
bpfnet_attached{hook="ingress",interface="veth1a2b3c",mode="tcx",program="from_container"} 1
bpfnet_attached{hook="egress",interface="veth1a2b3c",mode="tcx",program="to_container"} 1
bpfnet_attached{hook="ingress",interface="veth9f8e7d",mode="legacy",program="from_container"} 1
bpfnet_attached{hook="egress",interface="vethgone",mode="tcx",program="to_container"} 0
# HELP bpfnet_build_info bpfnet's version and the Go version it was built with; always 1.
# TYPE bpfnet_build_info gauge
bpfnet_build_info{go_version="go1.26.8",version="1.2.3"} 1
`

// TestCollectorSeries checks every series and label of a scrape: Docker
// names without the slash, 12-character ids, Compose labels, veths
// resolved from the attachments or by name, unknown and gone veths and
// unpublished ports left out, every drop reason reported.
func TestCollectorSeries(t *testing.T) {
	f := newFixture(t)
	want := helpTraffic +
		trafficText(webLabels, 15000, 10, 3000, 20) +
		trafficText(dbLabels, 100, 1, 200, 2) +
		trafficText(loLabels, 300, 3, 400, 4) +
		otherFamilies
	if err := testutil.CollectAndCompare(f.collector(), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestCollectorContainerGone checks that a container's series disappear
// at the first scrape after it leaves the state, and that a container
// without counters yet is reported at zero.
func TestCollectorContainerGone(t *testing.T) {
	f := newFixture(t)
	c := f.collector()
	names := []string{
		"bpfnet_container_receive_bytes_total", "bpfnet_container_transmit_bytes_total",
		"bpfnet_container_receive_packets_total", "bpfnet_container_transmit_packets_total",
	}
	if n := testutil.CollectAndCount(c, names...); n != 12 {
		t.Fatalf("%d container series, want 12 (3 containers × 4)", n)
	}
	f.mu.Lock()
	f.state.Endpoints = f.state.Endpoints[:1] // db and lo stopped
	f.mu.Unlock()
	want := helpTraffic + trafficText(webLabels, 15000, 10, 3000, 20)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// A container that just started: attached, no packet yet.
	f.mu.Lock()
	f.state.Endpoints = append(f.state.Endpoints, datapath.Endpoint{Container: "/new", ContainerID: "feedfacecafebeef00", Network: "bridge", HostVeth: "vethnew"})
	f.atts = append(f.atts, loader.Attachment{Interface: "vethnew", Ifindex: 13, Direction: loader.Ingress, Program: datapath.ProgFromContainer, Mode: loader.ModeTCX, ProgramID: 43})
	f.mu.Unlock()
	want += trafficText(`compose_project="",compose_service="",container="new",container_id="feedfacecafe",interface="vethnew",namespace="",network="bridge",pod=""`, 0, 0, 0, 0)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

// TestCollectorReadErrors makes each read fail in turn: the scrape
// reports the error, the families of that read are absent (not partly
// there), the others are whole.
func TestCollectorReadErrors(t *testing.T) {
	all := []string{
		"bpfnet_container_receive_bytes_total", "bpfnet_container_transmit_bytes_total",
		"bpfnet_container_receive_packets_total", "bpfnet_container_transmit_packets_total",
		"bpfnet_published_port_connections_total", "bpfnet_conntrack_entries", "bpfnet_conntrack_capacity",
		"bpfnet_conntrack_evictions_total", "bpfnet_conntrack_new_total",
		"bpfnet_conntrack_half_open_total", "bpfnet_conntrack_promoted_total", "bpfnet_nat_host_collisions_total", "bpfnet_drops_total",
		"bpfnet_attached", "bpfnet_build_info", "bpfnet_published_port_denied_total",
	}
	for _, tc := range []struct {
		method  string
		message string
		gone    []string
	}{
		{"Traffic", "reading container traffic: map read failed", all[:4]},
		{"PortConnections", "reading published port connections: map read failed", all[4:5]},
		{"CTUsage", "reading conntrack usage: map read failed", all[5:7]},
		{"HalfOpenUsage", "reading conntrack usage: map read failed", all[5:7]},
		{"CT6Usage", "reading conntrack usage: map read failed", all[5:7]},
		{"HalfOpen6Usage", "reading conntrack usage: map read failed", all[5:7]},
		{"Events", "reading datapath events: map read failed", all[7:12]},
		{"Drops", "reading drop counters: map read failed", all[12:13]},
		{"attachments", "listing attachments: map read failed", all[13:14]},
		{"PortDenied", "reading published port denials: map read failed", all[15:16]},
	} {
		t.Run(tc.method, func(t *testing.T) {
			f := newFixture(t)
			f.reader.failing = tc.method
			if tc.method == "attachments" {
				f.attErr = errFake
			}
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(f.collector())
			mfs, err := reg.Gather()
			if err == nil || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("gather error %v, want one saying %q", err, tc.message)
			}
			got := map[string]int{}
			for _, mf := range mfs {
				got[mf.GetName()] = len(mf.GetMetric())
			}
			for _, name := range all {
				gone := false
				for _, g := range tc.gone {
					gone = gone || g == name
				}
				switch {
				case gone && got[name] != 0:
					t.Errorf("%s: %d series despite the read error, want none", name, got[name])
				case !gone && got[name] == 0:
					t.Errorf("%s: missing though its read succeeded", name)
				}
			}
			// The traffic families stay whole when only the attachment
			// list fails: the veths are then looked up by name, and only
			// lo exists here.
			if tc.method == "attachments" && got["bpfnet_container_receive_bytes_total"] != 1 {
				t.Errorf("receive bytes: %d series, want 1 (lo, found by name)", got["bpfnet_container_receive_bytes_total"])
			}
		})
	}
}

// TestHandler checks the HTTP side: a good scrape is 200 in the text
// format; a scrape with a read error is 500 with the error, not a partial
// page.
func TestHandler(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(Handler(NewRegistry(f.collector())))
	defer srv.Close()

	body, status := get(t, srv.URL)
	if status != http.StatusOK {
		t.Fatalf("status %d:\n%s", status, body)
	}
	for _, want := range []string{
		`bpfnet_container_receive_bytes_total{compose_project="shop",compose_service="web",container="shop-web-1",container_id="3f4e5d6c7b8a",interface="veth1a2b3c",namespace="",network="bridge",pod=""} 15000`,
		`bpfnet_build_info{go_version="go1.26.8",version="1.2.3"} 1`,
		"go_goroutines ", "process_resident_memory_bytes ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}

	f.reader.mu.Lock()
	f.reader.failing = "Traffic"
	f.reader.mu.Unlock()
	body, status = get(t, srv.URL)
	if status != http.StatusInternalServerError {
		t.Fatalf("status %d with a failing read, want 500", status)
	}
	if !strings.Contains(body, "reading container traffic: map read failed") {
		t.Errorf("500 body does not name the error:\n%s", body)
	}
	if strings.Contains(body, "bpfnet_drops_total") {
		t.Errorf("500 body carries metrics:\n%s", body)
	}
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.StatusCode
}

// TestPromtoolFake runs promtool check metrics on a scrape of the fake.
func TestPromtoolFake(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(Handler(NewRegistry(f.collector())))
	defer srv.Close()
	promtoolCheck(t, srv.URL)
}

// promtoolCheck scrapes url and fails the test on anything promtool check
// metrics says about it.
func promtoolCheck(t *testing.T, url string) {
	t.Helper()
	promtool := requireTool(t, "promtool")
	body, status := get(t, url)
	if status != http.StatusOK {
		t.Fatalf("scrape: status %d\n%s", status, body)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestServe checks Serve's life cycle: off with no address, serving
// until the context ends, an error for an address in use.
func TestServe(t *testing.T) {
	reg := NewRegistry(newFixture(t).collector())
	if err := Serve(context.Background(), "", reg); err != nil {
		t.Fatalf("Serve with no address: %v", err)
	}

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, addr, reg) }()
	url := "http://" + addr + "/metrics"
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s", url, resp.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The address is taken now.
	if err := Serve(context.Background(), addr, reg); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second Serve on %s: %v, want address already in use", addr, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := http.Get(url); err == nil {
		t.Error("still serving after Serve returned")
	}
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

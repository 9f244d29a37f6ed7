// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/loader"
)

// cgroupReader is fakeReader with cgroup counters.
type cgroupReader struct {
	*fakeReader
	cg  map[datapath.CgroupCounterKey]datapath.Traffic
	err error
}

func (r *cgroupReader) CgroupTraffic() (map[datapath.CgroupCounterKey]datapath.Traffic, error) {
	return maps.Clone(r.cg), r.err
}

// TestCollectorCgroupSeries: host-mode and macvlan containers get the
// bpfnet_container_* series from the cgroup counters (host mode: every
// interface but loopback; macvlan: its device only), with their network,
// interface and Compose labels; every non-bridge container is in
// bpfnet_container_network_mode; a container whose cgroup is gone has no
// series; a read error fails the traffic families only.
func TestCollectorCgroupSeries(t *testing.T) {
	f := newFixture(t)
	f.state.Endpoints = f.state.Endpoints[:1] // shop-web-1 only
	dir := t.TempDir()
	mk := func(name string) (string, uint64) {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		id, err := datapath.CgroupID(p)
		if err != nil {
			t.Fatal(err)
		}
		return p, id
	}
	hostCg, hostID := mk("host")
	mvCg, mvID := mk("mv")
	compose := map[string]string{LabelComposeProject: "shop", LabelComposeService: "metricsd"}
	f.state.CgroupEndpoints = []datapath.CgroupEndpoint{
		{Container: "/nodeexp", ContainerID: "11112222333344445555", Mode: datapath.ModeHost, Network: "host", CgroupPath: hostCg, Labels: compose},
		{Container: "/mvc", ContainerID: "aaaabbbbccccdddd", Mode: datapath.ModeMacvlan, Network: "lan", Interface: "eth0", Ifindex: 7, CgroupPath: mvCg},
		{Container: "/gone", ContainerID: "eeeeffff00001111", Mode: datapath.ModeHost, Network: "host", CgroupPath: filepath.Join(dir, "gone")},
	}
	f.state.Shared = []datapath.SharedNetns{{Container: "/sidecar", ContainerID: "999988887777", Owner: "/shop-web-1", OwnerID: webID}}
	f.state.NoNetwork = []datapath.NoNetwork{{Container: "/batch", ContainerID: "123412341234"}}
	r := &cgroupReader{fakeReader: f.reader, cg: map[datapath.CgroupCounterKey]datapath.Traffic{
		{Account: hostID, Ifindex: datapath.LoopbackIfindex}: {RxPackets: 1000, RxBytes: 1e6, TxPackets: 1000, TxBytes: 1e6},
		{Account: hostID, Ifindex: 2}:                        {RxPackets: 1, RxBytes: 100, TxPackets: 2, TxBytes: 200},
		{Account: hostID, Ifindex: 5}:                        {RxPackets: 3, RxBytes: 300, TxPackets: 4, TxBytes: 400},
		{Account: mvID, Ifindex: 7}:                          {RxPackets: 5, RxBytes: 500, TxPackets: 6, TxBytes: 600},
		{Account: mvID, Ifindex: 8}:                          {RxPackets: 50, RxBytes: 5000}, // its bridge veth: TC's
	}}
	f.reader = nil
	atts := func() ([]loader.Attachment, error) { return f.atts, nil }
	c := NewCollector(r, func() datapath.State { return f.state }, atts, BuildInfo{Version: "1", GoVersion: "go"})
	names := []string{
		"bpfnet_container_receive_bytes_total", "bpfnet_container_transmit_bytes_total",
		"bpfnet_container_receive_packets_total", "bpfnet_container_transmit_packets_total",
	}
	want := helpTraffic +
		trafficText(webLabels, 15000, 10, 3000, 20) +
		trafficText(`compose_project="shop",compose_service="metricsd",container="nodeexp",container_id="111122223333",interface="",namespace="",network="host",pod=""`, 400, 4, 600, 6) +
		trafficText(`compose_project="",compose_service="",container="mvc",container_id="aaaabbbbcccc",interface="eth0",namespace="",network="lan",pod=""`, 500, 5, 600, 6)
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	modes := `bpfnet_container_network_mode{compose_project="shop",compose_service="metricsd",container="nodeexp",container_id="111122223333",mode="host",owner=""} 1
bpfnet_container_network_mode{compose_project="",compose_service="",container="mvc",container_id="aaaabbbbcccc",mode="macvlan",owner=""} 1
bpfnet_container_network_mode{compose_project="",compose_service="",container="gone",container_id="eeeeffff0000",mode="host",owner=""} 1
bpfnet_container_network_mode{compose_project="",compose_service="",container="sidecar",container_id="999988887777",mode="container",owner="shop-web-1"} 1
bpfnet_container_network_mode{compose_project="",compose_service="",container="batch",container_id="123412341234",mode="none",owner=""} 1
`
	b, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, "bpfnet_container_network_mode")
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	for _, line := range strings.Split(strings.TrimSpace(modes), "\n") {
		if !strings.Contains(got, line) {
			t.Errorf("scrape lacks %s", line)
		}
	}
	if n := testutil.CollectAndCount(c, "bpfnet_container_network_mode"); n != 5 {
		t.Errorf("%d network mode series, want 5", n)
	}

	// A read error: the traffic families fail, the rest is there.
	r.err = errors.New("boom")
	if err := testutil.CollectAndCompare(c, strings.NewReader(""), names...); err == nil || !strings.Contains(err.Error(), "reading container traffic counted by cgroup: boom") {
		t.Errorf("scrape with a failing cgroup read: %v", err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, _ := reg.Gather()
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "bpfnet_container_network_mode" {
			n = len(mf.GetMetric())
		}
		if strings.HasPrefix(mf.GetName(), "bpfnet_container_") && strings.HasSuffix(mf.GetName(), "_total") {
			t.Errorf("with a failing cgroup read: %s is there", mf.GetName())
		}
	}
	if n != 5 {
		t.Errorf("with a failing cgroup read: %d network mode series, want 5", n)
	}

	// A Reader that does not count by cgroup: no series for them, no
	// error.
	c = NewCollector(&fakeReader{traffic: r.traffic}, func() datapath.State { return f.state }, atts, BuildInfo{})
	if n := testutil.CollectAndCount(c, names...); n != 4 {
		t.Errorf("plain reader: %d container series, want web's 4", n)
	}
}

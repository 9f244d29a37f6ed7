// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// labDatapath is a lab topology with the eBPF datapath in its host
// namespace, its containers named as Docker Compose would name them, and
// port 8080 published to container 0's port 80.
type labDatapath struct {
	topo  *lab.Topology
	dp    *datapath.EBPF
	pin   string
	state datapath.State
	// Bytes the last exchange's client and server sent again.
	clientRetrans, serverRetrans uint64
	// exch pairs the sink server with the exchange under way.
	exch atomic.Pointer[exchangeSync]
}

const (
	labWebID   = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc"
	labWebName = "shop-web-1"
	labPort    = 8080
)

// startLab is datapath/lab_test.go's startLabWith, with names for the
// containers.
func startLab(t *testing.T, fast bool) *labDatapath {
	t.Helper()
	requireRoot(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}, {}}})
	pin := lab.BPFFSDir(t, "bpfnet-metrics-test-")
	l := &labDatapath{topo: topo, pin: pin}
	t.Cleanup(func() {
		if l.dp != nil {
			if err := topo.Host.Do(l.dp.Remove); err != nil {
				t.Errorf("removing datapath: %v", err)
			}
		}
	})
	c0, c1 := topo.Containers[0], topo.Containers[1]
	err := topo.Host.Do(func() error {
		s, err := datapath.Discover(topo.BridgeNames(), nil, nil)
		if err != nil {
			return err
		}
		for i, e := range s.Endpoints {
			switch e.HostVeth {
			case c0.HostVeth:
				s.Endpoints[i].Container, s.Endpoints[i].ContainerID = "/"+labWebName, labWebID
				s.Endpoints[i].Labels = map[string]string{LabelComposeProject: "shop", LabelComposeService: "web"}
			case c1.HostVeth:
				s.Endpoints[i].Container = "/db"
			}
		}
		s.Ports = []datapath.PortMapping{{Proto: datapath.TCP, HostPort: labPort, ContainerIP: addrOf(c0.Addr), ContainerPort: 80}}
		dp, err := datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: fast})
		if err != nil {
			return err
		}
		l.dp = dp
		l.state = s
		return dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("starting datapath: %v", err)
	}
	return l
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

// registry is what the daemon would serve for this lab. The collector
// runs in the test's namespace, not the lab's: the maps are reachable
// from anywhere, and the attachments, listed in the lab's host namespace,
// map the veths to their ifindexes.
func (l *labDatapath) registry() *prometheus.Registry {
	return NewRegistry(NewCollector(l.dp, func() datapath.State { return l.state }, func() ([]loader.Attachment, error) {
		var atts []loader.Attachment
		err := l.topo.Host.Do(func() (err error) {
			atts, err = loader.List(l.pin)
			return err
		})
		return atts, err
	}, BuildInfo{Version: "lab"}))
}

// sinkServer serves in container 0 on port 80: it reads what a client
// sends until the client closes its side, then sends back the reply size
// of the exchange under way (as many bytes as it read outside one).
func (l *labDatapath) sinkServer(t *testing.T) {
	t.Helper()
	c0 := l.topo.Containers[0]
	c0.ServeTCP(t, net.JoinHostPort(c0.Addr.String(), "80"), func(c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		x := l.exch.Load()
		if x != nil {
			n = int64(x.reply)
		}
		c.Write(make([]byte, n))
		c.(*net.TCPConn).CloseWrite()
		if x == nil {
			return // plain traffic, not an exchange
		}
		// The client has read everything: what was resent is final.
		select {
		case <-x.read:
		case <-time.After(20 * time.Second):
		}
		x.retrans <- retransmitted(c.(*net.TCPConn))
	})
}

// exchangeSync tells the sink server that the client read the whole reply,
// and the client how many bytes the server sent again.
type exchangeSync struct {
	reply   int // bytes the server sends back
	read    chan struct{}
	retrans chan uint64
}

// dialPublished connects from the external namespace to the published
// port on the host's uplink address.
func (l *labDatapath) dialPublished(ctx context.Context) (*net.TCPConn, error) {
	ext := l.topo.Externals[0]
	return ext.DialTCP(ctx, net.JoinHostPort(ext.HostAddr.String(), fmt.Sprint(labPort)))
}

// exchange sends n bytes into container 0 through the published port and
// reads its reply of reply bytes.
func (l *labDatapath) exchange(t *testing.T, n, reply int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x := &exchangeSync{reply: reply, read: make(chan struct{}), retrans: make(chan uint64, 1)}
	l.exch.Store(x)
	c, err := l.dialPublished(ctx)
	if err != nil {
		t.Fatalf("dial published port: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i)
	}
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("sending: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, c)
	if err != nil || got != int64(reply) {
		t.Fatalf("reply: %d bytes, %v; want %d bytes", got, err, reply)
	}
	l.clientRetrans = retransmitted(c)
	close(x.read)
	select {
	case l.serverRetrans = <-x.retrans:
	case <-time.After(30 * time.Second):
		t.Fatal("the sink server never finished its side of the exchange")
	}
}

// retransmitted is how many bytes a connection sent again: they pass the
// counters twice, which a loaded machine makes happen.
func retransmitted(c *net.TCPConn) uint64 {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var n uint64
	raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = info.Bytes_retrans
		}
	})
	return n
}

// containerTraffic reads container's four traffic counters from a
// scrape of reg.
func containerTraffic(t *testing.T, reg prometheus.Gatherer, container string) datapath.Traffic {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	var tr datapath.Traffic
	found := 0
	for _, mf := range mfs {
		var dst *uint64
		switch mf.GetName() {
		case "bpfnet_container_receive_bytes_total":
			dst = &tr.RxBytes
		case "bpfnet_container_receive_packets_total":
			dst = &tr.RxPackets
		case "bpfnet_container_transmit_bytes_total":
			dst = &tr.TxBytes
		case "bpfnet_container_transmit_packets_total":
			dst = &tr.TxPackets
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "container" && lp.GetValue() == container {
					*dst = uint64(m.GetCounter().GetValue())
					found++
				}
			}
		}
	}
	if found != 4 {
		t.Fatalf("container %s: %d traffic series in the scrape, want 4", container, found)
	}
	return tr
}

// headerAllowance is the most a counted packet may add to the payload it
// carries: Ethernet 14 + IPv4 20 + TCP with options 60 = 94 bytes.
const headerAllowance = 100

// TestLabTrafficCounters sends 1 MiB into container 0 through a published
// port and has it send 256 KiB back, on both datapath paths, and checks
// each direction's counters rose by its own payload, plus no more than the
// headers of the packets counted: with four times more one way than the
// other, counters that swapped receive and transmit fail. Then promtool
// checks the live scrape.
func TestLabTrafficCounters(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast_path=%v", fast), func(t *testing.T) {
			l := startLab(t, fast)
			reg := l.registry()
			const in, out = 1 << 20, 1 << 18
			l.sinkServer(t)
			l.exchange(t, 1000, 1000) // settle ARP and the neighbours first
			before := containerTraffic(t, reg, labWebName)
			l.exchange(t, in, out)
			after := containerTraffic(t, reg, labWebName)

			var retrans uint64
			check := func(dir string, n, bytes0, bytes1, pkts0, pkts1 uint64) {
				bytes, pkts := bytes1-bytes0, pkts1-pkts0
				t.Logf("%s: %d bytes in %d packets for a %d-byte payload", dir, bytes, pkts, n)
				if pkts == 0 {
					t.Errorf("%s: packet counter did not rise", dir)
				}
				if bytes < n {
					t.Errorf("%s: bytes rose by %d, less than the %d-byte payload", dir, bytes, n)
				}
				if limit := n + headerAllowance*pkts + retrans; bytes > limit {
					t.Errorf("%s: bytes rose by %d, more than the payload plus %d bytes for each of %d packets and %d retransmitted (%d)", dir, bytes, headerAllowance, pkts, retrans, limit)
				}
			}
			retrans = l.clientRetrans
			check("receive", in, before.RxBytes, after.RxBytes, before.RxPackets, after.RxPackets)
			retrans = l.serverRetrans
			check("transmit", out, before.TxBytes, after.TxBytes, before.TxPackets, after.TxPackets)

			srv := httptest.NewServer(Handler(reg))
			defer srv.Close()
			body, _ := get(t, srv.URL)
			for _, want := range []string{
				`bpfnet_published_port_connections_total{container="shop-web-1",host_ip="0.0.0.0",host_port="8080",protocol="tcp"} 2`,
				`bpfnet_conntrack_new_total{kind="dnat"} 2`,
				`bpfnet_conntrack_capacity{table="ct4"} 262144`,
				fmt.Sprintf(`bpfnet_attached{hook="egress",interface="%s",mode="tcx",program="to_container"} 1`, l.topo.Containers[0].HostVeth),
				`container="db",container_id=""`,
			} {
				if !strings.Contains(body, want) {
					t.Errorf("scrape lacks %s", want)
				}
			}
			promtoolCheck(t, srv.URL)
		})
	}
}

// trafficInto keeps sending into container 0 through the published port
// until ctx ends.
func (l *labDatapath) trafficInto(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			c, err := l.dialPublished(ctx)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ctx.Err() == nil {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			c.Close()
		}
	}()
}

// TestLabPrometheus has a real Prometheus scrape the test's metrics
// server every second while traffic flows into container 0, and asks it
// for the container's receive rate.
func TestLabPrometheus(t *testing.T) {
	l := startLab(t, true)
	prom := requireTool(t, "prometheus")
	l.sinkServer(t)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	metricsAddr := freeAddr(t)
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, metricsAddr, l.registry()) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	}()

	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	err := os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: bpfnet
    static_configs:
      - targets: [%q]
`, metricsAddr)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	var promLog bytes.Buffer
	cmd := exec.Command(prom,
		"--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn",
	)
	cmd.Stdout, cmd.Stderr = &promLog, &promLog
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("prometheus output:\n%s", promLog.String())
		}
	}()

	l.trafficInto(ctx, &wg)

	query := fmt.Sprintf(`rate(bpfnet_container_receive_bytes_total{container=%q}[5s])`, labWebName)
	deadline := time.Now().Add(40 * time.Second)
	var last string
	for {
		select {
		case <-exited:
			t.Fatalf("prometheus exited: %v", cmd.ProcessState)
		default:
		}
		rate, labels, err := queryValue(promAddr, query)
		if err == nil && rate > 0 {
			t.Logf("%s = %.0f bytes/s %v", query, rate, labels)
			if labels["compose_service"] != "web" || labels["container_id"] != labWebID[:12] || labels["job"] != "bpfnet" {
				t.Errorf("series labels %v", labels)
			}
			break
		}
		last = fmt.Sprintf("rate %v, err %v", rate, err)
		if time.Now().After(deadline) {
			t.Fatalf("no positive %s from Prometheus in time; last answer: %s", query, last)
		}
		time.Sleep(time.Second)
	}

	// Every query of the Grafana dashboard parses and finds series.
	queries := dashboardQueries(t)
	for _, q := range queries {
		res, err := promQuery(promAddr, q)
		switch {
		case err != nil:
			t.Errorf("dashboard query %s: %v", q, err)
		case len(res) == 0:
			t.Errorf("dashboard query %s: no series", q)
		}
	}
	t.Logf("%d dashboard queries answered", len(queries))
}

// promSeries is one series of an instant query's answer.
type promSeries struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// promQuery runs an instant query through Prometheus's HTTP API.
func promQuery(addr, query string) ([]promSeries, error) {
	resp, err := http.Get(fmt.Sprintf("http://%s/api/v1/query?query=%s", addr, neturl.QueryEscape(query)))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string       `json:"resultType"`
			Result     []promSeries `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("decoding the answer: %w", err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query failed: %s", r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", r.Data.ResultType)
	}
	return r.Data.Result, nil
}

// queryValue runs an instant query and returns the value and labels of
// its single series.
func queryValue(addr, query string) (float64, map[string]string, error) {
	res, err := promQuery(addr, query)
	if err != nil {
		return 0, nil, err
	}
	if len(res) != 1 {
		return 0, nil, fmt.Errorf("%d series in the result, want 1", len(res))
	}
	s, ok := res[0].Value[1].(string)
	if !ok {
		return 0, nil, fmt.Errorf("value %v is not a string", res[0].Value[1])
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, res[0].Metric, err
}

// dashboardQueries returns the PromQL of every panel of the Grafana
// dashboard, with its variables replaced by values for a short test.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5s", "$__range", "1m", "$topk", "10",
		"$instance", ".*", "$compose_project", ".*", "$container", ".*")
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, vars.Replace(tg.Expr))
		}
	}
	if len(out) < 10 {
		t.Fatalf("dashboard has %d queries", len(out))
	}
	return out
}

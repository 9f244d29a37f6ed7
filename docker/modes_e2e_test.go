// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// modesLab is a lab with a dockerd of its own and the real daemon,
// `bpfnet run --docker`, serving /metrics in the lab's host namespace.
type modesLab struct {
	t       *testing.T
	topo    *lab.Topology
	ext     *lab.External
	d       *dockerd
	bin     string
	pin     string
	metrics string // address of /metrics, in the host namespace
	logs    *daemonLog
}

// daemonLog is the daemon's log.
type daemonLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *daemonLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *daemonLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newModesLab builds the lab, starts dockerd with the test image and the
// daemon; everything goes at cleanup, and the daemon's log is shown when
// the test fails.
func newModesLab(t *testing.T, metricsPort int) *modesLab {
	t.Helper()
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	start := time.Now()
	m := &modesLab{t: t, bin: lab.BuildBpfnet(t), logs: &daemonLog{}}
	sweepStale(t)
	m.topo = lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	m.ext = m.topo.Externals[0]
	m.pin = filepath.Join("/sys/fs/bpf", pinPrefix+m.topo.Prefix+"-modes")
	t.Cleanup(func() {
		out, err := m.topo.Host.Command(context.Background(), m.bin, "down", "--pin-path", m.pin).CombinedOutput()
		if err != nil {
			t.Errorf("bpfnet down: %v\n%s", err, out)
		}
		os.RemoveAll(m.pin)
	})
	m.d = startDockerd(t, m.topo.Host, m.topo.Bridges[0].Name, m.topo.Prefix)
	m.d.ImportImage()
	m.metrics = fmt.Sprintf("127.0.0.1:%d", metricsPort)
	// Registered first, so it runs after the daemon stopped.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bpfnet run's log:\n%s", m.logs.String())
		}
	})
	startRun(t, m.topo.Host, m.logs, m.bin, "run", "--pin-path", m.pin,
		"--docker=unix://"+m.d.sock, "--uplink", m.ext.Uplink, "--metrics-addr", m.metrics)
	m.eventually("the daemon serves metrics", 10*time.Second, func() error {
		_, err := m.scrape()
		return err
	})
	t.Logf("setup: %v", time.Since(start).Round(time.Millisecond))
	return m
}

// run creates and starts a container with a network mode, labels and
// endpoint settings.
func (m *modesLab) run(name, mode string, labels map[string]string, eps map[string]*network.EndpointSettings, cmd ...string) string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := &container.Config{Image: testImage, Hostname: name, Cmd: cmd, Labels: labels}
	if container.NetworkMode(mode).IsHost() || container.NetworkMode(mode).IsContainer() {
		cfg.Hostname = "" // Docker refuses one in these modes
	}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(mode)}
	var nc *network.NetworkingConfig
	if eps != nil {
		nc = &network.NetworkingConfig{EndpointsConfig: eps}
	}
	created, err := m.d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, name)
	if err != nil {
		m.t.Fatalf("creating container %s: %v", name, err)
	}
	if err := m.d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		m.t.Fatalf("starting container %s: %v\n%s", name, err, m.d.logTail(20))
	}
	return created.ID
}

// eventually retries f until it succeeds, failing the test after within.
func (m *modesLab) eventually(what string, within time.Duration, f func() error) {
	m.t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricSample is a series of a scrape.
type metricSample struct {
	labels map[string]string
	value  float64
}

// scrape reads /metrics, by family name.
func (m *modesLab) scrape() (map[string][]metricSample, error) {
	var body []byte
	err := m.topo.Host.Do(func() error {
		c, err := net.DialTimeout("tcp", m.metrics, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "GET /metrics HTTP/1.0\r\n\r\n")
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		return nil, err
	}
	_, payload, ok := bytes.Cut(body, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(body, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(body, []byte("HTTP/1.1 200")) {
		return nil, fmt.Errorf("metrics answered %q", body[:min(len(body), 200)])
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	out := map[string][]metricSample{}
	for name, f := range fams {
		for _, mt := range f.GetMetric() {
			s := metricSample{labels: map[string]string{}}
			for _, l := range mt.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.value = mt.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.value = mt.GetGauge().GetValue()
			}
			out[name] = append(out[name], s)
		}
	}
	return out, nil
}

// find returns the series of family whose labels include want.
func findSeries(fams map[string][]metricSample, family string, want map[string]string) []metricSample {
	var out []metricSample
	for _, s := range fams[family] {
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// traffic is a container's bpfnet_container_* series for the labels given.
type ctrTraffic struct{ rxBytes, rxPackets, txBytes, txPackets float64 }

func (t ctrTraffic) sub(o ctrTraffic) ctrTraffic {
	return ctrTraffic{t.rxBytes - o.rxBytes, t.rxPackets - o.rxPackets, t.txBytes - o.txBytes, t.txPackets - o.txPackets}
}

// ctrTrafficOf returns the one series of the labels given, or an error when
// there is none or more than one.
func ctrTrafficOf(fams map[string][]metricSample, want map[string]string) (ctrTraffic, error) {
	var t ctrTraffic
	for name, dst := range map[string]*float64{
		"bpfnet_container_receive_bytes_total": &t.rxBytes, "bpfnet_container_receive_packets_total": &t.rxPackets,
		"bpfnet_container_transmit_bytes_total": &t.txBytes, "bpfnet_container_transmit_packets_total": &t.txPackets,
	} {
		s := findSeries(fams, name, want)
		if len(s) != 1 {
			return t, fmt.Errorf("%d series of %s with %v", len(s), name, want)
		}
		*dst = s[0].value
	}
	return t, nil
}

func (m *modesLab) traffic(want map[string]string) ctrTraffic {
	m.t.Helper()
	var t ctrTraffic
	m.eventually(fmt.Sprintf("series %v", want), 10*time.Second, func() error {
		fams, err := m.scrape()
		if err != nil {
			return err
		}
		t, err = ctrTrafficOf(fams, want)
		return err
	})
	return t
}

// checkCounted checks that a counter delta carries payload bytes: at least
// the payload, at most the payload plus 80 bytes of headers a packet (IP,
// TCP with options, Ethernet), slack for the handshake, and 15% for
// retransmissions (counted again, as on the wire: a busy machine running
// the other packages' tests drops a segment now and then).
func checkCounted(t *testing.T, what string, bytes, packets float64, payload int) {
	t.Helper()
	if bytes < float64(payload) || bytes > float64(payload)*1.15+packets*80+2000 || packets < 1 {
		t.Errorf("%s: %.0f bytes in %.0f packets for a payload of %d", what, bytes, packets, payload)
	} else {
		t.Logf("%s: %.0f bytes in %.0f packets for a payload of %d", what, bytes, packets, payload)
	}
}

// statusContainer is a container of `bpfnet status --json`.
type statusContainer struct {
	Container   string `json:"container"`
	ContainerID string `json:"container_id"`
	Mode        string `json:"mode"`
	Owner       string `json:"owner"`
	OwnerID     string `json:"owner_id"`
	Cgroup      string `json:"cgroup"`
	Attached    bool   `json:"attached"`
	Interfaces  []struct {
		Mode      string `json:"mode"`
		Network   string `json:"network"`
		Interface string `json:"interface"`
		Address   string `json:"address"`
		Traffic   struct {
			RxBytes uint64 `json:"rx_bytes"`
			TxBytes uint64 `json:"tx_bytes"`
		} `json:"traffic"`
	} `json:"interfaces"`
}

// status runs `bpfnet status --json` and returns its containers by name,
// and the text form.
func (m *modesLab) status() (map[string]statusContainer, string) {
	m.t.Helper()
	out, err := m.topo.Host.Command(context.Background(), m.bin, "status", "--json", "--pin-path", m.pin).Output()
	if err != nil {
		m.t.Fatalf("bpfnet status --json: %v", err)
	}
	var r struct {
		Containers []statusContainer `json:"containers"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		m.t.Fatalf("bpfnet status --json: %v\n%s", err, out)
	}
	byName := map[string]statusContainer{}
	for _, c := range r.Containers {
		byName[c.Container] = c
	}
	text, err := m.topo.Host.Command(context.Background(), m.bin, "status", "--pin-path", m.pin).CombinedOutput()
	if err != nil {
		m.t.Fatalf("bpfnet status: %v\n%s", err, text)
	}
	return byName, string(text)
}

// echoTo sends n bytes to an echo server (nc -e cat) at to from the
// external namespace and reads them back.
func (m *modesLab) echoTo(to string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.ext.DialTCP(ctx, to)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(bytes.Repeat([]byte{'e'}, n))
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.Copy(io.Discard, c)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if got != int64(n) {
		return fmt.Errorf("%d bytes echoed of %d", got, n)
	}
	return nil
}

// greeting connects from the external namespace to a testdata/echo
// server and returns the client address it saw and its host name.
func (m *modesLab) greeting(to string) (netip.AddrPort, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := m.ext.DialTCP(ctx, to)
	if err != nil {
		return netip.AddrPort{}, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, "", err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return netip.AddrPort{}, "", fmt.Errorf("greeting %q", line)
	}
	ap, err := netip.ParseAddrPort(f[0])
	return ap, f[1], err
}

// sink listens in the external namespace and reports, for each
// connection, the peer's address and how many bytes it sent.
type extSink struct {
	ln   net.Listener
	seen chan extSinkConn
}

type extSinkConn struct {
	from  netip.AddrPort
	bytes int64
}

func (m *modesLab) sink() *extSink {
	m.t.Helper()
	s := &extSink{seen: make(chan extSinkConn, 16)}
	s.ln = m.ext.ServeTCP(m.t, net.JoinHostPort(m.ext.Addr.String(), "0"), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		s.seen <- extSinkConn{netip.MustParseAddrPort(c.RemoteAddr().String()), n}
	})
	return s
}

// sendFrom has container id send n bytes to the sink and returns what the
// sink saw.
func (m *modesLab) sendFrom(id string, s *extSink, n int) extSinkConn {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(s.ln.Addr().String())
	cmd := fmt.Sprintf("busybox head -c %d /dev/zero | busybox nc %s %s", n, host, port)
	if _, err := m.d.Exec(ctx, id, "sh", "-c", cmd); err != nil {
		m.t.Fatalf("sending from the container: %v", err)
	}
	select {
	case c := <-s.seen:
		if c.bytes != int64(n) {
			m.t.Errorf("the sink got %d bytes of %d", c.bytes, n)
		}
		return c
	case <-time.After(10 * time.Second):
		m.t.Fatal("the sink saw no connection")
	}
	return extSinkConn{}
}

// servers is the command of a container serving an echo (nc -e cat) on
// 7070 and the testdata/echo greeting on 7071.
var modesServers = []string{"sh", "-c", "/bin/echo -tcp 7071 & exec nc -ll -p 7070 -e cat"}

const modesPayload = 1 << 20

// TestDockerModes runs containers in each network mode Docker has next to
// the real daemon and checks what is reachable, what bpfnet status says
// and what /metrics counts:
//
//   - host: no NAT (the server sees the client's own address), and the
//     container's traffic, both ways, in its series (network="host",
//     interface=""), counted at its cgroup; a container sharing its
//     namespace is counted with it; when it goes, its programs are
//     detached and its series gone;
//   - container:<owner>: its traffic is the owner's (the owner's veth
//     series grows by what it sends), it has no series of its own, and
//     status and bpfnet_container_network_mode list it with its owner;
//   - none: listed, only loopback, nothing breaks;
//   - macvlan on the lab's uplink: the external host reaches the container
//     at its own address and the container reaches it with it (no NAT
//     either way); its series (network=<macvlan network>,
//     interface="eth0") count that traffic, and macvlan-to-macvlan traffic
//     that never touches the parent.
func TestDockerModes(t *testing.T) {
	m := newModesLab(t, 19476)
	ctx := context.Background()
	hostAddr := m.ext.HostAddr.String()
	extAddr := addr4(m.ext.Addr)
	out := m.sink()

	// --network host.
	hostc := m.run("hostc", "host", map[string]string{"com.docker.compose.project": "mon", "com.docker.compose.service": "agent"}, nil, modesServers...)
	hostLabels := map[string]string{"container": "hostc", "network": "host", "interface": ""}
	// A container sharing hostc's namespace: counted as hostc.
	hostJoiner := m.run("hostjoiner", "container:hostc", nil, nil, "sleep", "1000")
	// --network none.
	nonec := m.run("nonec", "none", nil, nil, "sleep", "1000")
	// A bridge container and one sharing its namespace.
	web := m.run("web", "bridge", nil, nil, "sleep", "1000")
	sidecar := m.run("sidecar", "container:web", nil, nil, "sleep", "1000")

	t.Run("Host", func(t *testing.T) {
		to := net.JoinHostPort(hostAddr, "7071")
		m.eventually("hostc's greeting", 10*time.Second, func() error {
			from, _, err := m.greeting(to)
			if err == nil && from.Addr() != extAddr {
				t.Errorf("hostc saw the client as %s, want %s: no NAT", from, extAddr)
			}
			return err
		})
		before := m.traffic(hostLabels)
		if err := m.echoTo(net.JoinHostPort(hostAddr, "7070"), modesPayload); err != nil {
			t.Fatalf("echo through hostc: %v", err)
		}
		d := m.traffic(hostLabels).sub(before)
		checkCounted(t, "hostc received (external to container)", d.rxBytes, d.rxPackets, modesPayload)
		checkCounted(t, "hostc transmitted (its echo)", d.txBytes, d.txPackets, modesPayload)

		// Sending out: no NAT, counted; and the joiner's traffic too.
		before = m.traffic(hostLabels)
		if c := m.sendFrom(hostc, out, modesPayload); c.from.Addr() != addr4(m.ext.HostAddr) {
			t.Errorf("the external host saw hostc as %s, want the host's %s", c.from, m.ext.HostAddr)
		}
		d = m.traffic(hostLabels).sub(before)
		checkCounted(t, "hostc transmitted (to the sink)", d.txBytes, d.txPackets, modesPayload)
		before = m.traffic(hostLabels)
		m.sendFrom(hostJoiner, out, modesPayload/2)
		d = m.traffic(hostLabels).sub(before)
		checkCounted(t, "hostjoiner's traffic in hostc's series", d.txBytes, d.txPackets, modesPayload/2)
		fams, _ := m.scrape()
		if s := findSeries(fams, "bpfnet_container_transmit_bytes_total", map[string]string{"container": "hostjoiner"}); len(s) != 0 {
			t.Errorf("hostjoiner has series of its own: %v", s)
		}
		if s := findSeries(fams, "bpfnet_container_transmit_bytes_total", hostLabels); len(s) != 1 ||
			s[0].labels["compose_project"] != "mon" || s[0].labels["compose_service"] != "agent" || s[0].labels["container_id"] != hostc[:12] {
			t.Errorf("hostc's series: %+v", s)
		}
		if s := findSeries(fams, "bpfnet_container_network_mode", map[string]string{"container": "hostc", "mode": "host"}); len(s) != 1 {
			t.Errorf("no bpfnet_container_network_mode for hostc")
		}
	})

	t.Run("Container", func(t *testing.T) {
		webLabels := map[string]string{"container": "web", "network": "bridge"}
		before := m.traffic(webLabels)
		// Out through web's veth, masqueraded.
		if c := m.sendFrom(sidecar, out, modesPayload); c.from.Addr() != addr4(m.ext.HostAddr) {
			t.Errorf("the external host saw the sidecar as %s, want the uplink address %s", c.from, m.ext.HostAddr)
		}
		d := m.traffic(webLabels).sub(before)
		checkCounted(t, "the sidecar's traffic in web's series", d.txBytes, d.txPackets, modesPayload)
		fams, _ := m.scrape()
		if s := findSeries(fams, "bpfnet_container_transmit_bytes_total", map[string]string{"container": "sidecar"}); len(s) != 0 {
			t.Errorf("the sidecar has series of its own: %v", s)
		}
		if s := findSeries(fams, "bpfnet_container_network_mode", map[string]string{"container": "sidecar", "mode": "container", "owner": "web"}); len(s) != 1 {
			t.Errorf("bpfnet_container_network_mode lacks the sidecar sharing web's network: %v", fams["bpfnet_container_network_mode"])
		}
		st, text := m.status()
		if c := st["sidecar"]; c.Mode != "container" || c.Owner != "web" || c.OwnerID != web || c.ContainerID != sidecar || c.Attached {
			t.Errorf("status of the sidecar: %+v", c)
		}
		if c := st["hostjoiner"]; c.Mode != "container" || c.Owner != "hostc" || !c.Attached {
			t.Errorf("status of hostjoiner: %+v (counted at its cgroup for hostc)", c)
		}
		if !strings.Contains(text, "shares web") || !strings.Contains(text, "shares hostc") {
			t.Errorf("bpfnet status does not list who shares whose network:\n%s", text)
		}
		t.Logf("bpfnet status:\n%s", text)
	})

	t.Run("None", func(t *testing.T) {
		st, _ := m.status()
		if c := st["nonec"]; c.Mode != "none" || c.ContainerID != nonec || len(c.Interfaces) != 0 || c.Attached {
			t.Errorf("status of nonec: %+v", c)
		}
		links, err := m.d.Exec(ctx, nonec, "ls", "/sys/class/net")
		if err != nil || strings.Join(strings.Fields(links), " ") != "lo" {
			t.Errorf("nonec's interfaces: %q %v, want lo only", links, err)
		}
		// Nothing outside is reachable.
		if got, err := m.d.Exec(ctx, nonec, "/bin/echo", "-dial", out.ln.Addr().String()); err == nil {
			t.Errorf("nonec reached the external host: %q", got)
		}
		fams, _ := m.scrape()
		if s := findSeries(fams, "bpfnet_container_network_mode", map[string]string{"container": "nonec", "mode": "none"}); len(s) != 1 {
			t.Errorf("bpfnet_container_network_mode lacks nonec")
		}
		if s := findSeries(fams, "bpfnet_container_receive_bytes_total", map[string]string{"container": "nonec"}); len(s) != 0 {
			t.Errorf("nonec has traffic series: %v", s)
		}
		if strings.Contains(m.logs.String(), "level=WARN msg=resync") {
			t.Errorf("the daemon failed to apply a state:\n%s", m.logs.String())
		}
	})

	t.Run("Macvlan", func(t *testing.T) {
		// On the uplink, in its subnet: the external host is on the same
		// link and reaches the containers at their own addresses.
		_, err := m.d.cli.NetworkCreate(ctx, "lan", network.CreateOptions{
			Driver:  "macvlan",
			Options: map[string]string{"parent": m.ext.Uplink},
			IPAM: &network.IPAM{Config: []network.IPAMConfig{{
				Subnet: m.ext.Subnet.String(), Gateway: m.ext.Addr.String(), IPRange: "10.231.0.128/25",
			}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ip1, ip2 := "10.231.0.130", "10.231.0.131"
		mv1 := m.run("mv1", "lan", nil, map[string]*network.EndpointSettings{"lan": {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: ip1}}}, modesServers...)
		mv2 := m.run("mv2", "lan", nil, map[string]*network.EndpointSettings{"lan": {IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: ip2}}}, "sleep", "1000")
		mv1Labels := map[string]string{"container": "mv1", "network": "lan", "interface": "eth0"}
		mv2Labels := map[string]string{"container": "mv2", "network": "lan", "interface": "eth0"}

		m.eventually("mv1's greeting", 10*time.Second, func() error {
			from, who, err := m.greeting(net.JoinHostPort(ip1, "7071"))
			if err == nil && (from.Addr() != extAddr || who != "mv1") {
				t.Errorf("mv1 (%s) saw the client as %s, want %s: no NAT", who, from, extAddr)
			}
			return err
		})
		before := m.traffic(mv1Labels)
		if err := m.echoTo(net.JoinHostPort(ip1, "7070"), modesPayload); err != nil {
			t.Fatalf("echo through mv1: %v", err)
		}
		d := m.traffic(mv1Labels).sub(before)
		checkCounted(t, "mv1 received", d.rxBytes, d.rxPackets, modesPayload)
		checkCounted(t, "mv1 transmitted", d.txBytes, d.txPackets, modesPayload)

		// Out: the external host sees the container's own address.
		before = m.traffic(mv2Labels)
		if c := m.sendFrom(mv2, out, modesPayload); c.from.Addr().String() != ip2 {
			t.Errorf("the external host saw mv2 as %s, want its own address %s (no masquerade)", c.from, ip2)
		}
		d = m.traffic(mv2Labels).sub(before)
		checkCounted(t, "mv2 transmitted", d.txBytes, d.txPackets, modesPayload)

		// macvlan to macvlan: never on the parent, counted on both.
		b1, b2 := m.traffic(mv1Labels), m.traffic(mv2Labels)
		cmd := fmt.Sprintf("busybox head -c %d /dev/zero | busybox nc %s 7070 >/dev/null", modesPayload, ip1)
		if _, err := m.d.Exec(ctx, mv2, "sh", "-c", cmd); err != nil {
			t.Fatalf("mv2 to mv1: %v", err)
		}
		d1, d2 := m.traffic(mv1Labels).sub(b1), m.traffic(mv2Labels).sub(b2)
		checkCounted(t, "mv1 received from mv2", d1.rxBytes, d1.rxPackets, modesPayload)
		checkCounted(t, "mv2 transmitted to mv1", d2.txBytes, d2.txPackets, modesPayload)

		st, _ := m.status()
		c := st["mv1"]
		if c.Mode != "macvlan" || !c.Attached || len(c.Interfaces) != 1 || c.Interfaces[0].Network != "lan" || c.Interfaces[0].Interface != "eth0" ||
			c.Interfaces[0].Address != ip1 || c.Interfaces[0].Traffic.RxBytes < 2*modesPayload {
			t.Errorf("status of mv1: %+v", c)
		}
		if !strings.HasSuffix(c.Cgroup, "/"+mv1) {
			t.Errorf("mv1's cgroup %s is not <parent>/<id>", c.Cgroup)
		}
	})

	t.Run("Gone", func(t *testing.T) {
		// hostc goes: its links are detached and unpinned, its series
		// gone; its joiner stays listed (its namespace, the host's, lives
		// on) but is not counted any more.
		st, _ := m.status()
		cg := st["hostc"].Cgroup
		if err := m.d.cli.ContainerRemove(ctx, hostc, container.RemoveOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
		m.eventually("hostc's pins to go", 10*time.Second, func() error {
			if _, err := os.Stat(filepath.Join(datapath.ContainersDir(m.pin), hostc)); err == nil {
				return fmt.Errorf("%s still pinned", hostc)
			}
			return nil
		})
		fams, err := m.scrape()
		if err != nil {
			t.Fatal(err)
		}
		if s := findSeries(fams, "bpfnet_container_receive_bytes_total", map[string]string{"container": "hostc"}); len(s) != 0 {
			t.Errorf("hostc's series are still there: %v", s)
		}
		if _, err := os.Stat(cg); err == nil {
			t.Errorf("hostc's cgroup %s is still there", cg)
		}
		st, _ = m.status()
		if c, ok := st["hostjoiner"]; !ok || c.Attached {
			t.Errorf("hostjoiner after hostc went: %+v (listed: %v)", c, ok)
		}
	})
}

// composeFile is a two-service application: web publishes 8080, client
// talks to it by name on their user-defined network (shop_default).
const composeFile = `version: "2.4"
services:
  web:
    image: ` + testImage + `
    command: ["/bin/echo", "-tcp", "80"]
    ports: ["8080:80"]
  client:
    image: ` + testImage + `
    command: ["sleep", "1000"]
`

// dockerCompose returns the path of docker-compose, or "" when it is not
// installed or BPFNET_TEST_NO_COMPOSE=1 asks for the API instead.
func dockerCompose() string {
	if os.Getenv("BPFNET_TEST_NO_COMPOSE") == "1" {
		return ""
	}
	path, _ := exec.LookPath("docker-compose")
	return path
}

// composeUp starts the application as project shop: with docker-compose
// when it is installed, else with the same network, containers and labels
// through the API. It returns the containers' ids by service.
func (m *modesLab) composeUp(dir string) map[string]string {
	m.t.Helper()
	ctx := context.Background()
	if path := dockerCompose(); path != "" {
		if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(composeFile), 0o644); err != nil {
			m.t.Fatal(err)
		}
		start := time.Now()
		cmd := exec.Command(path, "-H", "unix://"+m.d.sock, "-p", "shop", "up", "-d")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+m.d.sock)
		if out, err := cmd.CombinedOutput(); err != nil {
			m.t.Fatalf("docker-compose up: %v\n%s", err, out)
		}
		m.t.Logf("docker-compose up: %v", time.Since(start).Round(time.Millisecond))
	} else {
		m.t.Logf("without docker-compose (not installed, or BPFNET_TEST_NO_COMPOSE=1): the application is made through the API")
		_, err := m.d.cli.NetworkCreate(ctx, "shop_default", network.CreateOptions{Driver: "bridge", Labels: map[string]string{
			"com.docker.compose.project": "shop", "com.docker.compose.network": "default",
		}})
		if err != nil {
			m.t.Fatal(err)
		}
		for _, svc := range []struct {
			name  string
			cmd   []string
			ports []string
		}{{"web", []string{"/bin/echo", "-tcp", "80"}, []string{"8080:80"}}, {"client", []string{"sleep", "1000"}, nil}} {
			exposed, bindings, err := nat.ParsePortSpecs(svc.ports)
			if err != nil {
				m.t.Fatal(err)
			}
			labels := map[string]string{
				"com.docker.compose.project": "shop", "com.docker.compose.service": svc.name,
				"com.docker.compose.container-number": "1", "com.docker.compose.oneoff": "False",
			}
			cfg := &container.Config{Image: testImage, Cmd: svc.cmd, Labels: labels, ExposedPorts: exposed}
			hc := &container.HostConfig{NetworkMode: "shop_default", PortBindings: bindings}
			nc := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{"shop_default": {Aliases: []string{svc.name}}}}
			created, err := m.d.cli.ContainerCreate(ctx, cfg, hc, nc, nil, "shop_"+svc.name+"_1")
			if err != nil {
				m.t.Fatal(err)
			}
			if err := m.d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	list, err := m.d.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range list {
		if c.Labels["com.docker.compose.project"] == "shop" {
			ids[c.Labels["com.docker.compose.service"]] = c.ID
		}
	}
	if len(ids) != 2 {
		m.t.Fatalf("the application's containers: %v", ids)
	}
	return ids
}

// TestDockerCompose brings a two-service Compose application up next to
// the real daemon: its published port answers from outside with the
// client's real address, the client reaches web by name and sees no NAT,
// and the containers' series carry the Compose labels and count that
// traffic; once the application is down its series are gone.
func TestDockerCompose(t *testing.T) {
	m := newModesLab(t, 19477)
	dir := t.TempDir()
	ids := m.composeUp(dir)
	web := m.d.Inspect(ids["web"])
	client := m.d.Inspect(ids["client"])
	if web.Name != "/shop_web_1" || client.Name != "/shop_client_1" {
		t.Logf("container names: %s, %s", web.Name, client.Name)
	}
	webName, clientName := strings.TrimPrefix(web.Name, "/"), strings.TrimPrefix(client.Name, "/")
	netName := ""
	for n := range web.NetworkSettings.Networks {
		netName = n
	}
	if netName != "shop_default" {
		t.Errorf("web is on %v, want shop_default", web.NetworkSettings.Networks)
	}
	webIP := web.NetworkSettings.Networks[netName].IPAddress
	clientIP := client.NetworkSettings.Networks[netName].IPAddress
	webLabels := map[string]string{"container": webName, "network": "shop_default", "compose_project": "shop", "compose_service": "web"}
	clientLabels := map[string]string{"container": clientName, "network": "shop_default", "compose_project": "shop", "compose_service": "client"}
	before := m.traffic(webLabels)
	clientBefore := m.traffic(clientLabels)

	// From outside, through the published port.
	to := net.JoinHostPort(m.ext.HostAddr.String(), "8080")
	const requests = 5
	for i := 0; i < requests; i++ {
		m.eventually("web's published port", 10*time.Second, func() error {
			from, _, err := m.greeting(to)
			if err == nil && from.Addr() != addr4(m.ext.Addr) {
				t.Errorf("web saw the client as %s, want %s", from, m.ext.Addr)
			}
			return err
		})
	}
	// Container to container, by service name.
	ctx := context.Background()
	out, err := m.d.Exec(ctx, ids["client"], "/bin/echo", "-dial", "web:80")
	if err != nil {
		t.Fatalf("client to web by name: %v", err)
	}
	if f := strings.Fields(out); len(f) != 2 || !strings.HasPrefix(f[0], clientIP+":") {
		t.Errorf("web answered the client with %q, want it to see %s", out, clientIP)
	}
	// And by address.
	if out, err := m.d.Exec(ctx, ids["client"], "/bin/echo", "-dial", net.JoinHostPort(webIP, "80")); err != nil || !strings.HasPrefix(out, clientIP+":") {
		t.Errorf("client to web at %s: %q %v", webIP, out, err)
	}

	d := m.traffic(webLabels).sub(before)
	dc := m.traffic(clientLabels).sub(clientBefore)
	t.Logf("web: %+v; client: %+v", d, dc)
	// requests+2 connections of at least a SYN, an ACK and a FIN in, a
	// SYN-ACK, the greeting and a FIN out.
	if d.rxPackets < 3*(requests+2) || d.txPackets < 3*(requests+2) {
		t.Errorf("web's series counted %+v for %d connections", d, requests+2)
	}
	if dc.txPackets < 3*2 || dc.rxPackets < 3*2 {
		t.Errorf("client's series counted %+v for 2 connections (and a DNS query)", dc)
	}
	fams, _ := m.scrape()
	if s := findSeries(fams, "bpfnet_published_port_connections_total", map[string]string{"container": webName, "host_port": "8080"}); len(s) != 1 || s[0].value < requests {
		t.Errorf("published port connections of web: %+v", s)
	}

	// Down: the series go.
	if path := dockerCompose(); path != "" {
		cmd := exec.Command(path, "-H", "unix://"+m.d.sock, "-p", "shop", "down", "-t", "1")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker-compose down: %v\n%s", err, out)
		}
	} else {
		for _, id := range ids {
			if err := m.d.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.eventually("the application's series to go", 10*time.Second, func() error {
		fams, err := m.scrape()
		if err != nil {
			return err
		}
		if s := findSeries(fams, "bpfnet_container_receive_bytes_total", map[string]string{"compose_project": "shop"}); len(s) != 0 {
			return fmt.Errorf("series left: %v", s)
		}
		return nil
	})
}

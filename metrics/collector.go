// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/loader"
)

// Reader is what the collector reads at scrape time; *datapath.EBPF
// implements it.
type Reader interface {
	// Traffic returns the per-container counters by host-veth ifindex.
	Traffic() (map[uint32]datapath.Traffic, error)
	Drops() (map[datapath.DropReason]uint64, error)
	Events() (map[datapath.Event]uint64, error)
	PortConnections() (map[datapath.PortBinding]uint64, error)
	// PortDenied counts the new flows each published port's source
	// allowlist refused.
	PortDenied() (map[datapath.PortBinding]uint64, error)
	CTUsage() (entries, capacity int, err error)
	// HalfOpenUsage is the table of unassured published-port flows.
	HalfOpenUsage() (entries, capacity int, err error)
}

var _ Reader = (*datapath.EBPF)(nil)

// IPv6Reader is a Reader with the IPv6 connection-tracking tables, ct6
// and ct6_syn (the eBPF datapath): the gauges get their rows too.
type IPv6Reader interface {
	CT6Usage() (entries, capacity int, err error)
	HalfOpen6Usage() (entries, capacity int, err error)
}

var _ IPv6Reader = (*datapath.EBPF)(nil)

// BuildInfo labels bpfnet_build_info.
type BuildInfo struct {
	Version string
	// GoVersion is the toolchain bpfnet was built with; "" means
	// runtime.Version().
	GoVersion string
}

// Compose labels Docker Compose puts on its containers.
const (
	LabelComposeProject = "com.docker.compose.project"
	LabelComposeService = "com.docker.compose.service"
)

// Pod labels: the endpoint labels of a Kubernetes pod's attachment (the
// CNI plugin sets them from K8S_POD_NAME and K8S_POD_NAMESPACE, as
// Kubernetes runtimes label their containers); the series' pod and
// namespace labels.
const (
	LabelPodName      = "io.kubernetes.pod.name"
	LabelPodNamespace = "io.kubernetes.pod.namespace"
)

const namespace = "bpfnet"

// Collector is a prometheus.Collector reading the datapath's maps at
// scrape time. It holds no state and is safe for concurrent scrapes.
type Collector struct {
	r           Reader
	state       func() datapath.State
	attachments func() ([]loader.Attachment, error)
	build       BuildInfo

	rxBytes, txBytes, rxPackets, txPackets *prometheus.Desc
	portConns                              *prometheus.Desc
	portDenied                             *prometheus.Desc
	ctEntries, ctCapacity                  *prometheus.Desc
	ctEvictions, ctNew                     *prometheus.Desc
	ctHalfOpen, ctPromoted                 *prometheus.Desc
	natHostCollisions                      *prometheus.Desc
	drops                                  *prometheus.Desc
	attached                               *prometheus.Desc
	buildInfo                              *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

var containerLabels = []string{"container", "container_id", "network", "interface", "compose_project", "compose_service", "pod", "namespace"}

// NewCollector returns a collector reading r. state returns the daemon's
// current desired state; it names the containers behind the host veths
// and the published ports. attachments lists what bpfnet has attached
// (loader.List on the pin path); its Ifindex values map host veths to the
// keys of the traffic counters, and a veth it does not list is looked up
// by name in the collector's network namespace. attachments may be nil:
// then bpfnet_attached is not reported and every veth is looked up by
// name.
func NewCollector(r Reader, state func() datapath.State, attachments func() ([]loader.Attachment, error), build BuildInfo) *Collector {
	if build.GoVersion == "" {
		build.GoVersion = runtime.Version()
	}
	if state == nil {
		state = func() datapath.State { return datapath.State{} }
	}
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &Collector{
		r:           r,
		state:       state,
		attachments: attachments,
		build:       build,
		rxBytes: prometheus.NewDesc(name("container_receive_bytes_total"),
			"Bytes received by the container (sent into it), Ethernet header included, counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets).",
			containerLabels, nil),
		txBytes: prometheus.NewDesc(name("container_transmit_bytes_total"),
			"Bytes transmitted by the container (sent out of it), Ethernet header included, counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets).",
			containerLabels, nil),
		rxPackets: prometheus.NewDesc(name("container_receive_packets_total"),
			"Packets received by the container (sent into it), counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets); a GSO/GRO packet counts once.",
			containerLabels, nil),
		txPackets: prometheus.NewDesc(name("container_transmit_packets_total"),
			"Packets transmitted by the container (sent out of it), counted by the TC programs on its host veth (in host mode and on macvlan or ipvlan networks: by cgroup skb programs at its sockets); a GSO/GRO packet counts once.",
			containerLabels, nil),
		portConns: prometheus.NewDesc(name("published_port_connections_total"),
			"New connections (TCP) or flows (UDP) translated to a published port's container. host_ip is 0.0.0.0 for a port published on every host address.",
			[]string{"protocol", "host_ip", "host_port", "container"}, nil),
		portDenied: prometheus.NewDesc(name("published_port_denied_total"),
			"New connections (TCP) or flows (UDP) to a published port dropped because their source is not in the port's allowlist (labels bpfnet.allow, bpfnet.allow.<port>/<proto>; --publish ...,allow=). host_ip is 0.0.0.0 for a port published on every host address.",
			[]string{"protocol", "host_ip", "host_port", "container"}, nil),
		ctEntries: prometheus.NewDesc(name("conntrack_entries"),
			"Entries in the connection-tracking table (two per flow, one per direction), counted at scrape time. "+
				"table=\"ct4\": established flows; table=\"ct4_syn\": published-port flows whose client has not answered the container yet (where a SYN flood stays); "+
				"table=\"ct6\" and \"ct6_syn\": the same for IPv6.",
			[]string{"table"}, nil),
		ctCapacity: prometheus.NewDesc(name("conntrack_capacity"),
			"Capacity of the connection-tracking table (entries). The table is an LRU hash: when full, the least recently used entries are evicted.",
			[]string{"table"}, nil),
		ctEvictions: prometheus.NewDesc(name("conntrack_evictions_total"),
			"Connection-tracking entries found missing while their flow was still active, i.e. evictions the datapath noticed: "+
				"TCP flows re-created mid-stream (event ct_recreated) plus flow halves restored from the other half (event ct_peer_restored). "+
				"An evicted entry whose flow never sends again is not counted.",
			nil, nil),
		ctNew: prometheus.NewDesc(name("conntrack_new_total"),
			"Flows the datapath started tracking, by translation kind: dnat (published port), snat (masquerade), hairpin, nat64 (an IPv6 host port of an IPv4 container).",
			[]string{"kind"}, nil),
		ctHalfOpen: prometheus.NewDesc(name("conntrack_half_open_total"),
			"Published-port flows that started unassured, in table ct4_syn, until their client answers the container: under a SYN flood, one per forged SYN.",
			nil, nil),
		ctPromoted: prometheus.NewDesc(name("conntrack_promoted_total"),
			"Unassured flows whose client answered the container, moved from ct4_syn into ct4.",
			nil, nil),
		natHostCollisions: prometheus.NewDesc(name("nat_host_collisions_total"),
			"Masquerade clashes with the host's own flows that the datapath avoided: kind=\"host_socket\", a candidate port refused because a host socket uses its tuple; kind=\"host_remap\", a host flow opened on a tuple a translation holds, given another source port.",
			[]string{"kind"}, nil),
		drops: prometheus.NewDesc(name("drops_total"),
			"Packets the datapath dropped, by reason.",
			[]string{"reason"}, nil),
		attached: prometheus.NewDesc(name("attached"),
			"A program bpfnet attached: 1 when the kernel runs it, 0 when it is recorded but the kernel no longer runs it (its interface went away).",
			[]string{"interface", "hook", "program", "mode"}, nil),
		buildInfo: prometheus.NewDesc(name("build_info"),
			"bpfnet's version and the Go version it was built with; always 1.",
			[]string{"version", "go_version"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.rxBytes, c.txBytes, c.rxPackets, c.txPackets, c.portConns, c.portDenied,
		c.ctEntries, c.ctCapacity, c.ctEvictions, c.ctNew, c.ctHalfOpen, c.ctPromoted, c.natHostCollisions, c.drops,
		c.attached, c.buildInfo, networkModeDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Each family is built whole
// before any of it is sent; a family whose read fails is sent as one
// invalid metric carrying the error.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.state()
	var atts []loader.Attachment
	var attErr error
	if c.attachments != nil {
		atts, attErr = c.attachments()
		if attErr != nil {
			atts, attErr = nil, fmt.Errorf("listing attachments: %w", attErr)
		}
	}
	ms, err := c.traffic(st, atts)
	if err == nil {
		// Containers without a veth of their own (cgroup.go).
		var cms []prometheus.Metric
		cms, err = c.cgroupTraffic(st)
		ms = append(ms, cms...)
	}
	emit(ch, ms, err, c.rxBytes, c.txBytes, c.rxPackets, c.txPackets)
	emit(ch, c.networkModes(st), nil, networkModeDesc)
	ms, err = c.ports(st, c.portConns, "reading published port connections", c.r.PortConnections)
	emit(ch, ms, err, c.portConns)
	ms, err = c.ports(st, c.portDenied, "reading published port denials", c.r.PortDenied)
	emit(ch, ms, err, c.portDenied)
	ms, err = c.conntrack()
	emit(ch, ms, err, c.ctEntries, c.ctCapacity)
	ms, err = c.events()
	emit(ch, ms, err, c.ctEvictions, c.ctNew, c.ctHalfOpen, c.ctPromoted, c.natHostCollisions)
	ms, err = c.dropCounts()
	emit(ch, ms, err, c.drops)
	if c.attachments != nil {
		ms, err = c.attachedGauges(atts, attErr)
		emit(ch, ms, err, c.attached)
	}
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, label(c.build.Version), label(c.build.GoVersion))
}

// emit sends ms, or, when err is set, one invalid metric for each of the
// families instead.
func emit(ch chan<- prometheus.Metric, ms []prometheus.Metric, err error, families ...*prometheus.Desc) {
	if err != nil {
		for _, d := range families {
			ch <- prometheus.NewInvalidMetric(d, err)
		}
		return
	}
	for _, m := range ms {
		ch <- m
	}
}

// label makes s a valid label value: a const metric panics on invalid
// UTF-8, which an interface name or a runtime label may hold.
func label(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// containerName is a container's name without Docker's leading slash.
func containerName(s string) string { return strings.TrimPrefix(s, "/") }

// shortID is the 12-character form of a container id, as docker ps shows
// it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (c *Collector) traffic(st datapath.State, atts []loader.Attachment) ([]prometheus.Metric, error) {
	counters, err := c.r.Traffic()
	if err != nil {
		return nil, fmt.Errorf("reading container traffic: %w", err)
	}
	ifindex := make(map[string]int, len(atts))
	for _, a := range atts {
		if a.Ifindex > 0 {
			ifindex[a.Interface] = a.Ifindex
		}
	}
	byName := map[string]int(nil) // the namespace's links, listed once if needed
	seen := make(map[int]bool, len(st.Endpoints))
	out := make([]prometheus.Metric, 0, 4*len(st.Endpoints))
	for _, e := range st.Endpoints {
		idx, ok := ifindex[e.HostVeth]
		if !ok {
			if byName == nil {
				ifs, err := net.Interfaces()
				if err != nil {
					return nil, fmt.Errorf("listing interfaces to find host veths: %w", err)
				}
				byName = make(map[string]int, len(ifs))
				for _, i := range ifs {
					byName[i.Name] = i.Index
				}
			}
			if idx, ok = byName[e.HostVeth]; !ok {
				continue // the veth is gone: so is the container's traffic
			}
		}
		if seen[idx] {
			continue // two endpoints on one veth: report it once
		}
		seen[idx] = true
		t := counters[uint32(idx)]
		lv := []string{
			label(containerName(e.Container)), label(shortID(e.ContainerID)), label(e.Network), label(e.HostVeth),
			label(e.Labels[LabelComposeProject]), label(e.Labels[LabelComposeService]),
			label(e.Labels[LabelPodName]), label(e.Labels[LabelPodNamespace]),
		}
		out = append(out, c.trafficSeries(t, lv)...)
	}
	return out, nil
}

// ports is one series of desc per published port, read by read (what
// says what it is, in the error).
func (c *Collector) ports(st datapath.State, desc *prometheus.Desc, what string, read func() (map[datapath.PortBinding]uint64, error)) ([]prometheus.Metric, error) {
	if len(st.Ports) == 0 {
		return nil, nil
	}
	conns, err := read()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	byAddr := make(map[netip.Addr]string, len(st.Endpoints))
	for _, e := range st.Endpoints {
		byAddr[e.Addr] = e.Container
		if e.Addr6.IsValid() {
			byAddr[e.Addr6] = e.Container
		}
	}
	seen := make(map[datapath.PortBinding]bool, len(st.Ports))
	out := make([]prometheus.Metric, 0, len(st.Ports))
	for _, m := range st.Ports {
		b := datapath.BindingOf(st.Networks, m)
		if seen[b] {
			continue
		}
		seen[b] = true
		name := m.Container
		if name == "" {
			name = byAddr[m.ContainerIP]
		}
		out = append(out, prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(conns[b]),
			b.Proto.String(), b.HostIP.String(), strconv.Itoa(int(b.HostPort)), label(containerName(name))))
	}
	return out, nil
}

// The tables that label the connection-tracking gauges: established
// flows, and unassured ones.
const (
	ctTable        = "ct4"
	ctTableHalfOp  = "ct4_syn"
	ct6Table       = "ct6"
	ct6TableHalfOp = "ct6_syn"
)

func (c *Collector) conntrack() ([]prometheus.Metric, error) {
	entries, capacity, err := c.r.CTUsage()
	if err != nil {
		return nil, fmt.Errorf("reading conntrack usage: %w", err)
	}
	hEntries, hCapacity, err := c.r.HalfOpenUsage()
	if err != nil {
		return nil, fmt.Errorf("reading conntrack usage: %w", err)
	}
	out := []prometheus.Metric{
		prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(entries), ctTable),
		prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(capacity), ctTable),
		prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(hEntries), ctTableHalfOp),
		prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(hCapacity), ctTableHalfOp),
	}
	r6, ok := c.r.(IPv6Reader)
	if !ok {
		return out, nil
	}
	for _, tb := range []struct {
		name  string
		usage func() (int, int, error)
	}{{ct6Table, r6.CT6Usage}, {ct6TableHalfOp, r6.HalfOpen6Usage}} {
		n, capacity, err := tb.usage()
		if err != nil {
			return nil, fmt.Errorf("reading conntrack usage: %w", err)
		}
		out = append(out,
			prometheus.MustNewConstMetric(c.ctEntries, prometheus.GaugeValue, float64(n), tb.name),
			prometheus.MustNewConstMetric(c.ctCapacity, prometheus.GaugeValue, float64(capacity), tb.name))
	}
	return out, nil
}

// newFlowEvents maps the events counting new flows to their kind label.
var newFlowEvents = []struct {
	ev   datapath.Event
	kind datapath.FlowKind
}{
	{datapath.EventCTNewDNAT, datapath.KindDNAT},
	{datapath.EventCTNewSNAT, datapath.KindSNAT},
	{datapath.EventCTNewHairpin, datapath.KindHairpin},
	{datapath.EventCTNewNAT64, datapath.KindNAT64},
}

func (c *Collector) events() ([]prometheus.Metric, error) {
	ev, err := c.r.Events()
	if err != nil {
		return nil, fmt.Errorf("reading datapath events: %w", err)
	}
	out := []prometheus.Metric{
		prometheus.MustNewConstMetric(c.ctEvictions, prometheus.CounterValue,
			float64(ev[datapath.EventCTRecreated]+ev[datapath.EventCTPeerRestored])),
	}
	out = append(out,
		prometheus.MustNewConstMetric(c.ctHalfOpen, prometheus.CounterValue, float64(ev[datapath.EventCTHalfOpen])),
		prometheus.MustNewConstMetric(c.ctPromoted, prometheus.CounterValue, float64(ev[datapath.EventCTPromoted])),
		prometheus.MustNewConstMetric(c.natHostCollisions, prometheus.CounterValue, float64(ev[datapath.EventNATHostSocket]), "host_socket"),
		prometheus.MustNewConstMetric(c.natHostCollisions, prometheus.CounterValue, float64(ev[datapath.EventNATHostRemap]), "host_remap"))
	for _, n := range newFlowEvents {
		out = append(out, prometheus.MustNewConstMetric(c.ctNew, prometheus.CounterValue, float64(ev[n.ev]), n.kind.String()))
	}
	return out, nil
}

func (c *Collector) dropCounts() ([]prometheus.Metric, error) {
	drops, err := c.r.Drops()
	if err != nil {
		return nil, fmt.Errorf("reading drop counters: %w", err)
	}
	reasons := datapath.DropReasons()
	out := make([]prometheus.Metric, 0, len(reasons))
	known := make(map[datapath.DropReason]bool, len(reasons))
	for _, r := range reasons {
		known[r] = true
		out = append(out, prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(drops[r]), r.String()))
	}
	// A reason the kernel side counts that this build does not name yet.
	for r, n := range drops {
		if !known[r] && n > 0 {
			out = append(out, prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(n), r.String()))
		}
	}
	return out, nil
}

func (c *Collector) attachedGauges(atts []loader.Attachment, err error) ([]prometheus.Metric, error) {
	if err != nil {
		return nil, err
	}
	out := make([]prometheus.Metric, 0, len(atts))
	for _, a := range atts {
		v := 0.0
		if a.ProgramID != 0 {
			v = 1
		}
		out = append(out, prometheus.MustNewConstMetric(c.attached, prometheus.GaugeValue, v,
			label(a.Interface), a.Direction.String(), label(a.Program), a.Mode.String()))
	}
	return out, nil
}

// trafficSeries are the four traffic counters of one container, with its
// label values lv.
func (c *Collector) trafficSeries(t datapath.Traffic, lv []string) []prometheus.Metric {
	return []prometheus.Metric{
		prometheus.MustNewConstMetric(c.rxBytes, prometheus.CounterValue, float64(t.RxBytes), lv...),
		prometheus.MustNewConstMetric(c.txBytes, prometheus.CounterValue, float64(t.TxBytes), lv...),
		prometheus.MustNewConstMetric(c.rxPackets, prometheus.CounterValue, float64(t.RxPackets), lv...),
		prometheus.MustNewConstMetric(c.txPackets, prometheus.CounterValue, float64(t.TxPackets), lv...),
	}
}

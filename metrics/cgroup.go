// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bpfnet/bpfnet/datapath"
)

// CgroupReader is a Reader that also counts the containers without a veth
// of their own (host mode, macvlan, ipvlan) by cgroup; *datapath.EBPF is
// one. A Reader that is not has no series for them.
type CgroupReader interface {
	CgroupTraffic() (map[datapath.CgroupCounterKey]datapath.Traffic, error)
}

var _ CgroupReader = (*datapath.EBPF)(nil)

// networkModeDesc lists the containers whose network is not a bridge
// network's veth: their mode, and for a shared namespace its owner.
var networkModeDesc = prometheus.NewDesc(prometheus.BuildFQName(namespace, "", "container_network_mode"),
	"A container that has no veth of its own on a bridge network, always 1. mode is host, macvlan or ipvlan "+
		"(its traffic is in the bpfnet_container_* series with network=\"host\" or the network's name, counted at its cgroup), "+
		"container (it shares the network namespace of owner, whose series carry its traffic) or none (no network).",
	[]string{"container", "container_id", "mode", "owner", "compose_project", "compose_service"}, nil)

// cgroupTraffic returns the bpfnet_container_* series of the containers
// counted by cgroup: network is "host" or the macvlan/ipvlan network,
// interface "" in host mode (every interface but loopback) or the
// container's device.
func (c *Collector) cgroupTraffic(st datapath.State) ([]prometheus.Metric, error) {
	if len(st.CgroupEndpoints) == 0 {
		return nil, nil
	}
	cr, ok := c.r.(CgroupReader)
	if !ok {
		return nil, nil
	}
	counters, err := cr.CgroupTraffic()
	if err != nil {
		return nil, fmt.Errorf("reading container traffic counted by cgroup: %w", err)
	}
	ids := map[string]uint64{}
	out := make([]prometheus.Metric, 0, 4*len(st.CgroupEndpoints))
	for _, e := range st.CgroupEndpoints {
		id, ok := ids[e.CgroupPath]
		if !ok {
			var err error
			if id, err = datapath.CgroupID(e.CgroupPath); err != nil {
				continue // the container is gone: so is its traffic
			}
			ids[e.CgroupPath] = id
		}
		t := datapath.SumCgroupTraffic(counters, id, e.Ifindex)
		lv := []string{
			label(containerName(e.Container)), label(shortID(e.ContainerID)), label(e.Network), label(e.Interface),
			label(e.Labels[LabelComposeProject]), label(e.Labels[LabelComposeService]),
			label(e.Labels[LabelPodName]), label(e.Labels[LabelPodNamespace]),
		}
		out = append(out, c.trafficSeries(t, lv)...)
	}
	return out, nil
}

// networkModes returns bpfnet_container_network_mode.
func (c *Collector) networkModes(st datapath.State) []prometheus.Metric {
	type key struct{ id, name, mode string }
	seen := map[key]bool{}
	var out []prometheus.Metric
	add := func(name, id, mode, owner string, labels map[string]string) {
		k := key{id, name, mode}
		if seen[k] {
			return
		}
		seen[k] = true
		out = append(out, prometheus.MustNewConstMetric(networkModeDesc, prometheus.GaugeValue, 1,
			label(containerName(name)), label(shortID(id)), mode, label(containerName(owner)),
			label(labels[LabelComposeProject]), label(labels[LabelComposeService])))
	}
	for _, e := range st.CgroupEndpoints {
		add(e.Container, e.ContainerID, e.Mode, "", e.Labels)
	}
	for _, s := range st.Shared {
		add(s.Container, s.ContainerID, datapath.ModeContainer, s.Owner, s.Labels)
	}
	for _, n := range st.NoNetwork {
		add(n.Container, n.ContainerID, datapath.ModeNone, "", n.Labels)
	}
	return out
}

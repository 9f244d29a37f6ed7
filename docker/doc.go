// SPDX-License-Identifier: Apache-2.0

// Package docker makes Docker the source of the datapath's state: the
// bridge networks of a dockerd, the running containers attached to them
// and the ports they publish, read through Docker's API and kept up to
// date from its event stream.
//
// It is meant for a dockerd started with --iptables=false
// --ip6tables=false --userland-proxy=false, whose NAT bpfnet does
// instead; CheckFirewall and Decide (check.go) tell whether it is.
//
// # Namespaces
//
// The host end of a container's veth is found from the container's side:
// the interface in the container's network namespace (/proc/<pid>/ns/net)
// names its peer's ifindex, which is looked up in the calling thread's
// network namespace. That namespace must be dockerd's: State and Watch
// must be called from a thread in dockerd's network namespace (the whole
// process, normally; lab.Namespace.Do in tests). Watch does all its
// kernel work, and calls update, on the goroutine that called it.
//
// # What is read from Docker
//
//   - Networks: every network of the bridge driver with an IPv4 subnet.
//     The bridge is the option com.docker.network.bridge.name, or
//     br-<first 12 characters of the network id>; the gateway is IPAM's,
//     else the bridge's address in the subnet. Networks masquerade unless
//     com.docker.network.bridge.enable_ip_masquerade is "false" or the
//     network is internal; Docker's default bridge network is the
//     exception, see Source.DefaultBridgeMasquerade.
//   - Endpoints: every running container's interface on such a network,
//     one per network it is on, found in its namespace by the endpoint's
//     MAC (by its address when Docker gives no MAC).
//     A container labelled bpfnet.allow-foreign-source=true may send from
//     addresses not its own (LabelAllowForeignSource); others may not.
//   - Ports: the container's published ports (NetworkSettings.Ports), to
//     its address on the network of Docker's gateway endpoint, the one
//     its default route and its published ports go to: the highest
//     gw-priority, then not internal, then the first by name; none when
//     that network is internal. docker network connect and disconnect can
//     move it, and the ports follow. IPv6 bindings (HostIp "::" or an
//     IPv6 address) go to the container's IPv6 address on that network,
//     and are left out for a container without one (Docker's userland
//     proxy serves those) and on a routed IPv6 network.
//   - Containers without a veth on such a network (modes.go): in host mode
//     or on macvlan and ipvlan networks, their cgroup v2 folder (from
//     /proc/<pid>/cgroup) and, for macvlan and ipvlan, their device in
//     their own namespace, for the cgroup skb counters
//     (State.CgroupEndpoints); those sharing another container's network
//     namespace, with the owner (State.Shared); those without a network
//     (State.NoNetwork).
//
// Uplinks and host addresses are not Docker's business and stay empty.
//
// # Engine API versions
//
// The client negotiates the daemon's API version on first contact, up to
// its own newest, 1.51 (github.com/docker/docker v28.5): 1.41 with Docker
// 20.10, 1.51 with Docker 28.5 and with Docker 29 (1.52, which accepts
// 1.44 and newer). Only fields every version from 1.41 to 1.52 has are
// read: each endpoint's address and MAC from NetworkSettings.Networks, not
// the top-level NetworkSettings.IPAddress and MacAddress that 1.52 drops,
// and events' Type and Action, not their status, id and from, also gone
// in 1.52. testdata/api holds each version's answers, recorded from
// Docker 20.10 and derived from it for the newer ones.
package docker

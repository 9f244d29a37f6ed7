// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/daemon"
	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// TestSourceBesideDocker: pods' attachments join a runtime's state (here
// a Docker-like one on another bridge): a hostPort that a Docker
// container holds is refused to a pod, through the server too, with
// nothing kept; a free one is served beside Docker's.
func TestSourceBesideDocker(t *testing.T) {
	lab.RequireRoot(t)
	topo := lab.Setup(t, lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "10.88.0.0/24"}},
		Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 1}},
	})
	dockerCtr, podNS := topo.Containers[0], topo.Containers[1]
	addr := func(ip []byte) netip.Addr { a, _ := netip.AddrFromSlice(ip); return a.Unmap() }
	br0, br1 := topo.Bridges[0], topo.Bridges[1]
	var docker daemon.Static
	docker.Set(datapath.State{
		Networks: []datapath.Network{{Name: "bridge", Bridge: br0.Name, Subnet: netip.MustParsePrefix("172.30.0.0/24"),
			Gateway: addr(br0.Gateway), Masquerade: true}},
		Endpoints: []datapath.Endpoint{{Container: "nginx", Network: "bridge", Addr: addr(dockerCtr.Addr), HostVeth: dockerCtr.HostVeth}},
		Ports:     []datapath.PortMapping{{Proto: datapath.TCP, HostPort: 8080, ContainerIP: addr(dockerCtr.Addr), ContainerPort: 80, Container: "nginx"}},
	})
	src := &Source{Store: Store{Dir: t.TempDir()}, Base: &docker}
	pod := Attachment{ContainerID: "pod1", IfName: "eth0", Network: "pods", Bridge: br1.Name, HostVeth: podNS.HostVeth,
		Addr: addr(podNS.Addr), Subnet: netip.MustParsePrefix("10.88.0.0/24"), Gateway: addr(br1.Gateway),
		Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}, Pod: "web", Namespace: "default"}

	err := topo.Host.Do(func() error {
		_, err := src.With(context.Background(), pod)
		if !errors.Is(err, datapath.ErrPortTaken) {
			t.Errorf("a pod on Docker's 8080: %v, want it refused", err)
		}
		srv := &Server{Source: src}
		resp := srv.Handle(context.Background(), Request{Command: CmdAdd, Attachment: pod})
		if resp.Error == nil || resp.Error.Code != CodePortTaken {
			t.Errorf("the server's ADD on Docker's 8080: %+v, want code %d", resp.Error, CodePortTaken)
		}
		if l, _ := src.Store.List(); len(l) != 0 {
			t.Errorf("a refused ADD kept %v", l)
		}

		// A pod claiming the Docker container's address (its bridge
		// plugin put it in Docker's subnet) is refused too.
		claim := pod
		claim.Ports = nil
		claim.Addr, claim.Subnet, claim.Gateway = addr(dockerCtr.Addr), netip.MustParsePrefix("172.30.0.0/24"), addr(br0.Gateway)
		if _, err := src.With(context.Background(), claim); err == nil || !strings.Contains(err.Error(), "overlaps network bridge") {
			t.Errorf("a pod with Docker's container's address %s: %v, want it refused", claim.Addr, err)
		}
		claim.Bridge, claim.HostVeth = br0.Name, dockerCtr.HostVeth
		if _, err := src.With(context.Background(), claim); err == nil {
			t.Errorf("a pod on Docker's bridge and veth with its container's address: accepted")
		}

		pod.Ports[0].HostPort = 8081
		st, err := src.With(context.Background(), pod)
		if err != nil {
			t.Fatalf("a pod on 8081: %v", err)
		}
		if len(st.Networks) != 2 || len(st.Endpoints) != 2 || len(st.Ports) != 2 || len(st.Uplinks) == 0 {
			t.Errorf("Docker's and the pod's state together: %+v", st)
		}
		for _, e := range st.Endpoints {
			if e.Addr == pod.Addr && (e.ContainerID != "pod1" || e.Labels[LabelPodName] != "web" || e.Container != "default/web") {
				t.Errorf("the pod's endpoint: %+v", e)
			}
		}
		// Kept, then served by State; a pod whose veth is gone is left
		// out with a warning, not failing the others.
		if err := src.Store.Put(pod); err != nil {
			t.Fatal(err)
		}
		gone := pod
		gone.ContainerID, gone.HostVeth, gone.Addr = "pod2", "nosuchveth", netip.MustParseAddr("10.88.0.77")
		gone.Ports = nil
		if err := src.Store.Put(gone); err != nil {
			t.Fatal(err)
		}
		st, err = src.State(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Endpoints) != 2 || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "pod2") {
			t.Errorf("State with a pod whose veth is gone: endpoints %+v warnings %q", st.Endpoints, st.Warnings)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSourceIPv6Claims: a dual-stack pod is refused an IPv6 address
// another pod holds, and an IPv6 subnet that overlaps a Docker
// network's; its twins, its own address and a subnet of its own, are
// served with the IPv6 half in the state.
func TestSourceIPv6Claims(t *testing.T) {
	lab.RequireRoot(t)
	topo := lab.Setup(t, lab.Config{
		Bridges:    []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}, {Subnet: "10.88.0.0/24"}},
		Containers: []lab.ContainerConfig{{Bridge: 0}, {Bridge: 1}, {Bridge: 1}},
	})
	addr := func(ip []byte) netip.Addr { a, _ := netip.AddrFromSlice(ip); return a.Unmap() }
	br0, br1 := topo.Bridges[0], topo.Bridges[1]
	var docker daemon.Static
	docker.Set(datapath.State{
		Networks: []datapath.Network{{Name: "bridge", Bridge: br0.Name, Subnet: netip.MustParsePrefix("172.30.0.0/24"),
			Gateway: addr(br0.Gateway), Subnet6: netip.MustParsePrefix("fd00:30::/64"), Gateway6: netip.MustParseAddr("fd00:30::1"), Masquerade: true}},
		Endpoints: []datapath.Endpoint{{Container: "nginx", Network: "bridge", Addr: addr(topo.Containers[0].Addr),
			Addr6: netip.MustParseAddr("fd00:30::2"), HostVeth: topo.Containers[0].HostVeth}},
	})
	src := &Source{Store: Store{Dir: t.TempDir()}, Base: &docker}
	pod := func(id string, c *lab.Container, addr6 string) Attachment {
		a6 := netip.MustParseAddr(addr6)
		return Attachment{ContainerID: id, IfName: "eth0", Network: "pods", Bridge: br1.Name, HostVeth: c.HostVeth,
			Addr: addr(c.Addr), Subnet: netip.MustParsePrefix("10.88.0.0/24"), Gateway: addr(br1.Gateway),
			Addr6: a6, Subnet6: netip.PrefixFrom(a6, 64).Masked(), Gateway6: netip.PrefixFrom(a6, 64).Masked().Addr().Next(),
			Ports: []Port{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}}
	}
	err := topo.Host.Do(func() error {
		ctx := context.Background()
		first := pod("pod1", topo.Containers[1], "fd00:88::2")
		st, err := src.With(ctx, first)
		if err != nil {
			t.Fatalf("a dual-stack pod: %v", err)
		}
		i := slices.IndexFunc(st.Endpoints, func(e datapath.Endpoint) bool { return e.Addr == first.Addr })
		if i < 0 || st.Endpoints[i].Addr6 != first.Addr6 || len(st.Ports) != 2 {
			t.Errorf("the dual-stack pod's state: endpoints %+v ports %v, want %s with %s and 8080 on both families", st.Endpoints, st.Ports, first.Addr, first.Addr6)
		}
		if err := src.Store.Put(first); err != nil {
			t.Fatal(err)
		}
		claim := pod("pod2", topo.Containers[2], "fd00:88::2")
		claim.Ports = nil
		if _, err := src.With(ctx, claim); err == nil || !strings.Contains(err.Error(), "fd00:88::2 is pod1's already") {
			t.Errorf("a pod claiming pod1's IPv6 address: %v, want it refused", err)
		}
		own := claim
		own.Addr6 = netip.MustParseAddr("fd00:88::3")
		if _, err := src.With(ctx, own); err != nil {
			t.Errorf("a second pod with its own IPv6 address: %v", err)
		}
		// Docker's IPv6 subnet, on the pods' bridge.
		src.Store.Delete(first.Key())
		overlap := pod("pod3", topo.Containers[1], "fd00:30::9")
		overlap.Ports = nil
		if _, err := src.With(ctx, overlap); err == nil || !strings.Contains(err.Error(), "overlaps network bridge") {
			t.Errorf("a pod in Docker's IPv6 subnet: %v, want it refused", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

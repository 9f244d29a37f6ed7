// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"reflect"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestBuildAllowForeignSource: the label bpfnet.allow-foreign-source=true
// sets the exception on every endpoint of its container; without it, or
// with another value, a container's endpoints have none.
func TestBuildAllowForeignSource(t *testing.T) {
	nets, ctrs, k := fixture()
	labelled := map[string]bool{}
	for i, c := range ctrs {
		switch c.Name {
		case "/web":
			c.Config.Labels[LabelAllowForeignSource] = "true"
			labelled["web"] = true
		case "/prio":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "false"}}
		case "/zz-clash":
			c.Config = &container.Config{Labels: map[string]string{LabelAllowForeignSource: "yes please"}}
		}
		ctrs[i] = c
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range snap.Endpoints {
		seen[e.Container]++
		if e.AllowForeignSource != labelled[e.Container] {
			t.Errorf("endpoint %s on %s: AllowForeignSource %v, want %v", e.Container, e.Network, e.AllowForeignSource, labelled[e.Container])
		}
	}
	for _, c := range []string{"web", "prio", "zz-clash", "db"} {
		if seen[c] == 0 {
			t.Errorf("no endpoint of %s: the test sees nothing of it", c)
		}
	}
	if seen["web"] != 2 {
		t.Errorf("web has %d endpoints, want its 2", seen["web"])
	}
}

// TestBuildTwoNetworksWithoutMAC: a container on two of a Compose
// project's networks whose endpoints carry no MAC has each of its
// interfaces found by its address, on its own network's bridge (not eth0
// twice, the second then left out as on the wrong bridge); its published
// ports go to its address on the network that sorts first, Docker's
// gateway endpoint, whatever the networks are called.
func TestBuildTwoNetworksWithoutMAC(t *testing.T) {
	nets := []network.Summary{
		bridgeNetwork("proj_default", 1, "172.30.1.0/24", "172.30.1.1", nil),
		bridgeNetwork("proj_back", 2, "172.30.2.0/24", "172.30.2.1", nil),
	}
	k := &fakeKernel{
		bridges: map[string]fakeBridge{
			"br-01ababababab": {index: 11},
			"br-02ababababab": {index: 12},
		},
		veths: map[string]fakeVeth{
			"100/172.30.1.2": {"vethdef", 11},
			"100/172.30.2.2": {"vethback", 12},
		},
	}
	web := runningContainer("proj-web-1", 100, map[string]string{"com.docker.compose.project": "proj"},
		nat.PortMap{"80/tcp": {{HostIP: "0.0.0.0", HostPort: "8080"}}},
		attach{net: "proj_default", addr: "172.30.1.2"}, attach{net: "proj_back", addr: "172.30.2.2"})
	for name, es := range web.NetworkSettings.Networks {
		for _, n := range nets {
			if n.Name == name {
				es.NetworkID = n.ID
			}
		}
	}
	snap, err := build(k, testLogger(t), true, nets, []container.InspectResponse{web})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range snap.Endpoints {
		got[e.Network] = e.Addr.String() + " " + e.HostVeth
	}
	want := map[string]string{"proj_default": "172.30.1.2 vethdef", "proj_back": "172.30.2.2 vethback"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints by network %v, want %v", got, want)
	}
	wantPorts := []datapath.PortMapping{{Proto: datapath.TCP, HostPort: 8080, ContainerIP: ip("172.30.2.2"), ContainerPort: 80, Container: "proj-web-1"}}
	if !reflect.DeepEqual(snap.Ports, wantPorts) {
		t.Errorf("ports %v, want %v", snap.Ports, wantPorts)
	}
	st := snap.State()
	if err := st.Validate(); err != nil {
		t.Errorf("state does not validate: %v", err)
	}
}

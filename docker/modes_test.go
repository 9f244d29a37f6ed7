// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/datapath"
)

// modesKernel is fakeKernel with cgroups and devices by pid.
type modesKernel struct {
	*fakeKernel
	cgroups map[int]string
	devs    map[string]fakeDev // key "pid/addr"
}

type fakeDev struct {
	name  string
	index int
	kind  string
}

func (k *modesKernel) cgroup(pid int) (string, error) {
	if k.gone[pid] {
		return "", errGone
	}
	cg, ok := k.cgroups[pid]
	if !ok {
		return "", fmt.Errorf("no cgroup for %d", pid)
	}
	return cg, nil
}

func (k *modesKernel) device(pid int, addr netip.Addr) (string, int, string, error) {
	if k.gone[pid] {
		return "", 0, "", errGone
	}
	d, ok := k.devs[fmt.Sprintf("%d/%s", pid, addr)]
	if !ok {
		return "", 0, "", errors.New("no such device")
	}
	return d.name, d.index, d.kind, nil
}

func withMode(c container.InspectResponse, mode string) container.InspectResponse {
	c.HostConfig = &container.HostConfig{NetworkMode: container.NetworkMode(mode)}
	return c
}

func TestConvertModes(t *testing.T) {
	id := func(name string) string { return strings.Repeat(name[:1], 64) }
	cg := func(name string) string { return "/sys/fs/cgroup/unified/docker/" + id(name) }
	nets := []network.Summary{
		bridgeNetwork("bridge", 1, "172.17.0.0/16", "172.17.0.1", map[string]string{optDefaultBridge: "true", optBridgeName: "docker0"}),
	}
	labels := map[string]string{"com.docker.compose.project": "p", "com.docker.compose.service": "s"}
	ctrs := []container.InspectResponse{
		withMode(runningContainer("hostc", 100, labels, nil, attach{net: "host"}), "host"),
		withMode(runningContainer("nonec", 200, nil, nil, attach{net: "none"}), "none"),
		withMode(runningContainer("web", 300, nil, nil, attach{net: "bridge", addr: "172.17.0.2", mac: "02:42:ac:11:00:02"}), "default"),
		withMode(runningContainer("sidecar", 400, nil, nil), "container:"+id("web")),
		withMode(runningContainer("joiner", 450, nil, nil), "container:hostc"), // by name
		// On a macvlan network and on the bridge: two ways of counting.
		withMode(runningContainer("mvc", 500, labels, nil,
			attach{net: "mv", addr: "10.1.0.5"},
			attach{net: "iv", addr: "10.2.0.5"},
			attach{net: "bridge", addr: "172.17.0.3", mac: "02:42:ac:11:00:03"}), "mv"),
		// Its cgroup is not its own (a runtime that leaves it in its
		// parent's): left out.
		withMode(runningContainer("shared-cg", 600, nil, nil, attach{net: "host"}), "host"),
		// Died since inspected.
		withMode(runningContainer("gonec", 700, nil, nil, attach{net: "host"}), "host"),
		// Another driver's veth: not ours.
		withMode(runningContainer("overlayc", 800, nil, nil, attach{net: "ov", addr: "10.3.0.5"}), "ov"),
		// Owner unknown and not an id.
		withMode(runningContainer("orphan", 900, nil, nil), "container:not.running"),
	}
	k := &modesKernel{
		fakeKernel: &fakeKernel{
			bridges: map[string]fakeBridge{"docker0": {index: 10, addrs: []netip.Prefix{pfx("172.17.0.1/16")}}},
			veths: map[string]fakeVeth{
				"300/02:42:ac:11:00:02": {"vethweb", 10},
				"500/02:42:ac:11:00:03": {"vethmv", 10},
			},
			gone: map[int]bool{700: true},
		},
		cgroups: map[int]string{
			100: cg("hostc"), 200: cg("nonec"), 300: cg("web"), 400: cg("sidecar"), 450: cg("joiner"), 500: cg("mvc"),
			600: "/sys/fs/cgroup/unified/docker", 800: cg("overlayc"), 900: cg("orphan"),
		},
		devs: map[string]fakeDev{
			"500/10.1.0.5": {"eth1", 7, "macvlan"},
			"500/10.2.0.5": {"eth2", 8, "ipvlan"},
			"800/10.3.0.5": {"eth0", 9, "veth"},
		},
	}
	snap, err := build(k, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	st := snap.State()
	if err := st.Validate(); err != nil {
		t.Fatalf("state does not validate: %v", err)
	}
	wantCg := []datapath.CgroupEndpoint{
		{Container: "hostc", ContainerID: id("hostc"), Mode: "host", Network: "host", CgroupPath: cg("hostc"), Labels: labels},
		{Container: "mvc", ContainerID: id("mvc"), Mode: "ipvlan", Network: "iv", Interface: "eth2", Ifindex: 8, Addr: ip("10.2.0.5"), CgroupPath: cg("mvc"), Labels: labels},
		{Container: "mvc", ContainerID: id("mvc"), Mode: "macvlan", Network: "mv", Interface: "eth1", Ifindex: 7, Addr: ip("10.1.0.5"), CgroupPath: cg("mvc"), Labels: labels},
	}
	if !reflect.DeepEqual(st.CgroupEndpoints, wantCg) {
		t.Errorf("cgroup endpoints\n got %+v\nwant %+v", st.CgroupEndpoints, wantCg)
	}
	wantShared := []datapath.SharedNetns{
		{Container: "joiner", ContainerID: id("joiner"), Owner: "hostc", OwnerID: id("hostc"), CgroupPath: cg("joiner")},
		{Container: "sidecar", ContainerID: id("sidecar"), Owner: "web", OwnerID: id("web"), CgroupPath: cg("sidecar")},
	}
	if !reflect.DeepEqual(st.Shared, wantShared) {
		t.Errorf("shared\n got %+v\nwant %+v", st.Shared, wantShared)
	}
	wantNone := []datapath.NoNetwork{{Container: "nonec", ContainerID: id("nonec")}}
	if !reflect.DeepEqual(st.NoNetwork, wantNone) {
		t.Errorf("no network\n got %+v\nwant %+v", st.NoNetwork, wantNone)
	}
	// The bridge endpoints are the TC datapath's, whatever else the
	// container has.
	var veths []string
	for _, e := range st.Endpoints {
		veths = append(veths, e.Container+"/"+e.HostVeth)
	}
	if want := []string{"mvc/vethmv", "web/vethweb"}; !reflect.DeepEqual(veths, want) {
		t.Errorf("endpoints %v, want %v", veths, want)
	}

	// A kernel without cgroups: the modes that need none are still listed.
	snap, err = build(k.fakeKernel, testLogger(t), true, nets, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.CgroupEndpoints) != 0 || len(snap.Shared) != 2 || snap.Shared[0].CgroupPath != "" || len(snap.NoNetwork) != 1 {
		t.Errorf("without cgroups: %+v", snap.Modes)
	}
}

func TestOwnCgroup(t *testing.T) {
	id := strings.Repeat("a", 64)
	for _, c := range []struct {
		cg string
		ok bool
	}{
		{"/sys/fs/cgroup/docker/" + id, true},
		{"/sys/fs/cgroup/system.slice/docker-" + id + ".scope", true},
		{"/sys/fs/cgroup/unified/bpfnet-test-x/" + id + "/init", true},
		{"/sys/fs/cgroup/system.slice/containerd.service", false},
		{"/sys/fs/cgroup", false},
	} {
		if err := ownCgroup(c.cg, id); (err == nil) != c.ok {
			t.Errorf("%s: %v, want own=%v", c.cg, err, c.ok)
		}
	}
}

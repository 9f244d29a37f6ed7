// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// Bad flags are refused before anything touches the kernel: no pin folder
// appears.
func TestRunRejectsBadInput(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "pins")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--publish", "8080:80"}, "invalid --publish"},
		{[]string{"--bridge", "br0", "--publish", "8080:172.17.0.2:80/sctp"}, "unknown protocol"},
		{[]string{"--bridge", "br0", "--nat-ports", "9-1"}, "invalid --nat-ports"},
		{[]string{"--bridge", "br0", "--nat64-pool", "198.19.0.0"}, "invalid --nat64-pool"},
		{[]string{"--bridge", "br0", "--nat64-pool", "198.19.0.0/31"}, "prefix length"},
		{[]string{"--bridge", "br0", "--nat64-pool", "fd00::/96"}, "not an IPv4 prefix"},
		{[]string{"--bridge", "br0", "--attach", "magic"}, "invalid --attach"},
		{[]string{"--bridge", "br0", "--masquerade", "10.0.0.0/33"}, "invalid --masquerade"},
		{[]string{"--bridge", "br0", "--ct-size", "10"}, "invalid --ct-size"},
		{[]string{"--bridge", "br0", "--host-firewall-interval", "-1s"}, "invalid --host-firewall-interval"},
		{[]string{"--bridge", "br0", "--ct-half-open-size", "10"}, "invalid --ct-half-open-size"},
		{[]string{}, "at least one --bridge"},
		{[]string{"--bridge", "bpfnet-no-such-bridge0"}, "bpfnet-no-such-bridge0"},
		{[]string{"--docker", "--bridge", "br0"}, "for standalone mode"},
		{[]string{"--bridge", "br0", "--datapath", "pf"}, "invalid --datapath"},
		{[]string{"--bridge", "br0", "--container", "web"}, "invalid --container"},
		{[]string{"--bridge", "br0", "--metrics-addr", "not-an-address"}, "invalid --metrics-addr"},
		{[]string{"--bridge", "br0", "--allow-foreign-source", "web"}, "invalid --allow-foreign-source"},
		{[]string{"--bridge", "br0", "--allow-foreign-source", "fd00::2"}, "invalid --allow-foreign-source"},
		{[]string{"--docker", "--allow-foreign-source", "172.17.0.2"}, "bpfnet.allow-foreign-source=true"},
		{[]string{"--bridge", "br0", "--ignore-docker-firewall"}, "--ignore-docker-firewall is for --docker"},
		{[]string{"--bridge", "br0,gateway_mode=bridged"}, "gateway_mode: want nat"},
		{[]string{"--bridge", "br0,gateway_mode="}, "gateway_mode: want nat"},
		{[]string{"--bridge", "br0,mtu=1500"}, "unknown field"},
		{[]string{"--bridge", ",gateway_mode=routed"}, "no bridge name"},
		{[]string{"--cni", "--bridge", "br0"}, "with --cni"},
		{[]string{"--cni", "--publish", "8080:172.17.0.2:80"}, "with --cni"},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"run", "--pin-path", pin}, tc.args...))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %v: error %v, want one containing %q", tc.args, err, tc.want)
		}
		if _, serr := os.Stat(pin); !os.IsNotExist(serr) {
			t.Fatalf("run %v left %s behind", tc.args, pin)
		}
	}
}

// TestBridgeSpecs: --bridge NAME[,gateway_mode=MODE] gives the names in
// order and the modes of those that name one.
func TestBridgeSpecs(t *testing.T) {
	names, modes, err := bridgeSpecs([]string{"br0", "br1,gateway_mode=routed", "br2,gateway_mode=nat-unprotected", "br3,gateway_mode=isolated", "br4,gateway_mode=nat"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"br0", "br1", "br2", "br3", "br4"}; !slices.Equal(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	want := map[string]datapath.GatewayMode{"br1": datapath.GatewayRouted, "br2": datapath.GatewayNATUnprotected,
		"br3": datapath.GatewayIsolated, "br4": datapath.GatewayNAT}
	if !maps.Equal(modes, want) {
		t.Errorf("modes %v, want %v", modes, want)
	}
}

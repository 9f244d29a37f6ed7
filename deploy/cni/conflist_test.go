// SPDX-License-Identifier: Apache-2.0

// Package cni holds the example conflists README and docs/cni.md show,
// 10-pods.conflist and its dual-stack twin 10-pods-dualstack.conflist:
// bpfnet chained after the reference bridge plugin with its masquerade
// off. The test reads them as a runtime does, with libcni.
package cni

import (
	"encoding/json"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestConflist(t *testing.T) {
	for file, families := range map[string]int{"10-pods.conflist": 1, "10-pods-dualstack.conflist": 2} {
		t.Run(file, func(t *testing.T) { testConflist(t, file, families) })
	}
}

// testConflist reads file, whose host-local has a range for each of
// families address families.
func testConflist(t *testing.T, file string, families int) {
	list, err := libcni.ConfListFromFile(file)
	if err != nil {
		t.Fatalf("libcni cannot read the example conflist: %v", err)
	}
	if list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 {
		t.Fatalf("conflist %s with %d plugins, want CNI 1.1.0 with bridge then bpfnet", list.CNIVersion, len(list.Plugins))
	}
	var bridge struct {
		Type   string `json:"type"`
		IPMasq *bool  `json:"ipMasq"`
		IPAM   struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &bridge); err != nil {
		t.Fatal(err)
	}
	// bpfnet masquerades the pods: bridge's own MASQUERADE chain would
	// translate them first.
	if bridge.Type != "bridge" || bridge.IPMasq == nil || *bridge.IPMasq {
		t.Errorf("first plugin %s with ipMasq %v, want bridge with ipMasq false", bridge.Type, bridge.IPMasq)
	}
	if len(bridge.IPAM.Ranges) != families {
		t.Errorf("host-local with %d ranges, want %d", len(bridge.IPAM.Ranges), families)
	}
	var bpfnet struct {
		Type         string          `json:"type"`
		Capabilities map[string]bool `json:"capabilities"`
	}
	if err := json.Unmarshal(list.Plugins[1].Bytes, &bpfnet); err != nil {
		t.Fatal(err)
	}
	if bpfnet.Type != "bpfnet" || !bpfnet.Capabilities["portMappings"] {
		t.Errorf("second plugin %s with capabilities %v, want bpfnet with portMappings", bpfnet.Type, bpfnet.Capabilities)
	}
}

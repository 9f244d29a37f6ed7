// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"testing"

	"github.com/docker/docker/api/types/container"
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

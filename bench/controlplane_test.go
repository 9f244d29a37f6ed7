// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"io"
	"os"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
	"github.com/bpfnet/bpfnet/datapath/nftables"
	"github.com/bpfnet/bpfnet/lab"
)

// controlPlaneModes are the datapaths the control-plane figures are taken
// for through the daemon's reconcile.
var controlPlaneModes = []Mode{ModeEBPF, ModeIptables, ModeNftables}

// TestControlPlane takes the control-plane figures for every datapath in a
// lab: the timings are all set and none failed, publishing and removing
// one port going through the daemon's reconcile.
func TestControlPlane(t *testing.T) {
	requireRoot(t)
	for _, mode := range controlPlaneModes {
		t.Run(string(mode), func(t *testing.T) {
			topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{Name: "c0"}}})
			e := &env{opts: &Options{Progress: io.Discard, PublishOneRepeats: 2}, mode: mode, topo: topo, c: topo.Containers[0], ext: topo.Externals[0]}
			if err := e.addIPv6(false); err != nil {
				t.Fatal(err)
			}
			if err := topo.Host.Do(e.discover); err != nil {
				t.Fatal(err)
			}
			switch mode {
			case ModeIptables:
				d, err := iptables.New(iptables.Options{Netns: topo.Host.Path})
				if err != nil {
					t.Fatal(err)
				}
				e.dp = d
			case ModeNftables:
				d, err := nftables.New(nftables.Options{Netns: topo.Host.Path})
				if err != nil {
					t.Fatal(err)
				}
				e.dp = d
			default:
				pin, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-bench-")
				if err != nil {
					t.Fatal(err)
				}
				e.pin = pin
				d, err := datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: true})
				if err != nil {
					t.Fatal(err)
				}
				e.dp = d
			}
			t.Cleanup(func() {
				topo.Host.Do(e.dp.Remove)
				if e.pin != "" {
					os.RemoveAll(e.pin)
				}
			})
			figures := map[string]float64{}
			set := func(k string, v float64) { figures[k] = v }
			fail := func(err error, keys ...string) { t.Errorf("%v: %v", keys, err) }
			e.controlPlane(context.Background(), set, fail)
			for _, k := range []string{KeyRemoveAll, KeyRange, KeyPublishOne, KeyRemoveOne} {
				if v, ok := figures[k]; !ok || v <= 0 {
					t.Errorf("%s = %v, %v; want a time", k, v, ok)
				}
			}
			t.Logf("figures: %v", figures)
		})
	}
}

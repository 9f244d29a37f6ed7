// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// TestTrustedOf: the trusted host interfaces of every network, once each.
func TestTrustedOf(t *testing.T) {
	s := baseState()
	s.Networks[0].TrustedHostInterfaces = "wg0:eth1"
	s.Networks = append(s.Networks, datapath.Network{Name: "n2", TrustedHostInterfaces: "eth1:tun0"})
	if got, want := trustedOf(s), []string{"eth1", "tun0", "wg0"}; !slices.Equal(got, want) {
		t.Errorf("trustedOf = %v, want %v", got, want)
	}
}

// TestWatchNamed: a trusted interface that appears, or goes, in the
// namespace is reported; another interface coming and going is not.
func TestWatchNamed(t *testing.T) {
	lab.RequireRoot(t)
	topo := lab.Setup(t, lab.Config{})
	ns := topo.Host
	trusted := topo.Prefix + "t0"
	other := topo.Prefix + "o0"
	changes := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- ns.Do(func() error {
			return watchNamed(ctx, []string{trusted}, func() { changes <- struct{}{} })
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("watchNamed: %v", err)
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := ns.Run(context.Background(), "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	expect := func(what string, want bool) {
		t.Helper()
		select {
		case <-changes:
			if !want {
				t.Errorf("%s: reported, want nothing", what)
			}
		case <-time.After(time.Second):
			if want {
				t.Errorf("%s: not reported within a second", what)
			}
		}
		for len(changes) > 0 {
			<-changes
		}
	}
	// The subscription starts in the goroutine: give it a moment, then
	// check it is there with a change it must report.
	time.Sleep(200 * time.Millisecond)
	run("link", "add", other, "type", "veth", "peer", "name", other+"p")
	expect("another interface appearing", false)
	run("link", "add", trusted, "type", "veth", "peer", "name", trusted+"p")
	expect("the trusted interface appearing", true)
	run("link", "set", trusted, "up")
	expect("the trusted interface going up (same ifindex)", false)
	run("link", "del", trusted)
	expect("the trusted interface going away", true)
	run("link", "del", other)
	expect("another interface going away", false)
}

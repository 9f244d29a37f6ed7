// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// recordingPublisher is a fakePublisher that keeps the last state applied.
type recordingPublisher struct {
	fakePublisher
	last datapath.State
}

func (r *recordingPublisher) Apply(ctx context.Context, s datapath.State) error {
	r.last = s
	return r.fakePublisher.Apply(ctx, s)
}

// TestAllowDirectRouting: Config.AllowDirectRouting is set on every state
// the daemon applies, the first and the reconciled ones; with it, or with a
// network's trusted interfaces, a change of ports is a whole Apply (the
// ports' entries of the trusted interfaces follow the ports), while without
// either it stays incremental.
func TestAllowDirectRouting(t *testing.T) {
	ctx := context.Background()
	a80 := pm(datapath.TCP, "", 8080, "172.30.0.2", 80)
	a53 := pm(datapath.UDP, "", 5353, "172.30.0.2", 53)
	trusted := func(ports ...datapath.PortMapping) datapath.State {
		s := baseState(ports...)
		s.Networks[0].TrustedHostInterfaces = "eth1"
		return s
	}
	for _, tc := range []struct {
		name        string
		allow       bool
		state       func(...datapath.PortMapping) datapath.State
		incremental bool
	}{
		{name: "protected", state: baseState, incremental: true},
		{name: "allow direct routing", allow: true, state: baseState},
		{name: "trusted interfaces", state: trusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp := &recordingPublisher{}
			src := &Static{}
			d := New(Config{Datapath: fp, Source: src, AllowDirectRouting: tc.allow})
			if err := d.Start(ctx, tc.state(a80)); err != nil {
				t.Fatal(err)
			}
			if fp.last.AllowDirectRouting != tc.allow {
				t.Errorf("first state: AllowDirectRouting %v, want %v", fp.last.AllowDirectRouting, tc.allow)
			}
			src.Set(tc.state(a80, a53))
			incr, err := d.Reconcile(ctx, "test")
			if err != nil {
				t.Fatal(err)
			}
			if incr != tc.incremental {
				t.Errorf("publishing a port: incremental %v, want %v", incr, tc.incremental)
			}
			if d.Current().AllowDirectRouting != tc.allow {
				t.Errorf("current state: AllowDirectRouting %v, want %v", d.Current().AllowDirectRouting, tc.allow)
			}
			if !tc.incremental && (fp.applies != 2 || len(fp.last.Ports) != 2 || fp.last.AllowDirectRouting != tc.allow) {
				t.Errorf("publishing a port: %d applies, last with %d ports and AllowDirectRouting %v", fp.applies, len(fp.last.Ports), fp.last.AllowDirectRouting)
			}
		})
	}
}

// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// fakeDatapath records what the daemon asks of it.
type fakeDatapath struct {
	applies          int
	published, unpub []datapath.PortMapping
	failPublish      bool
}

func (f *fakeDatapath) Name() string { return "fake" }
func (f *fakeDatapath) Apply(_ context.Context, s datapath.State) error {
	f.applies++
	return s.Validate()
}
func (f *fakeDatapath) Close() error  { return nil }
func (f *fakeDatapath) Remove() error { return nil }

type fakePublisher struct{ fakeDatapath }

func (f *fakePublisher) PublishPorts(ms ...datapath.PortMapping) error {
	if f.failPublish {
		return errors.New("publish failed")
	}
	f.published = append(f.published, ms...)
	return nil
}
func (f *fakePublisher) UnpublishPorts(ms ...datapath.PortMapping) error {
	f.unpub = append(f.unpub, ms...)
	return nil
}

// A change of the published ports alone is published incrementally by a
// PortPublisher; any other change, or a datapath that cannot, is a full
// Apply; a failed incremental step falls back to one.
func TestReconcileIncremental(t *testing.T) {
	ctx := context.Background()
	a80 := pm(datapath.TCP, "", 8080, "172.30.0.2", 80)
	a53 := pm(datapath.UDP, "", 5353, "172.30.0.2", 53)

	fp := &fakePublisher{}
	src := &Static{}
	d := New(Config{Datapath: fp, Source: src})
	if err := d.Start(ctx, baseState(a80)); err != nil {
		t.Fatal(err)
	}
	src.Set(baseState(a80, a53))
	if incr, err := d.Reconcile(ctx, "test"); err != nil || !incr {
		t.Fatalf("publishing one port: incremental %v, %v", incr, err)
	}
	if fp.applies != 1 || !slices.EqualFunc(fp.published, []datapath.PortMapping{a53}, datapath.PortMapping.Equal) || len(fp.unpub) != 0 {
		t.Errorf("publishing one port: %d applies, published %v, unpublished %v", fp.applies, fp.published, fp.unpub)
	}
	src.Set(baseState(a80))
	if incr, err := d.Reconcile(ctx, "test"); err != nil || !incr {
		t.Fatalf("removing one port: incremental %v, %v", incr, err)
	}
	if fp.applies != 1 || !slices.EqualFunc(fp.unpub, []datapath.PortMapping{a53}, datapath.PortMapping.Equal) {
		t.Errorf("removing one port: %d applies, unpublished %v", fp.applies, fp.unpub)
	}
	if got := d.Current().Ports; !slices.EqualFunc(got, []datapath.PortMapping{a80}, datapath.PortMapping.Equal) {
		t.Errorf("current ports %v, want %v", got, []datapath.PortMapping{a80})
	}

	moved := baseState(a80)
	moved.Endpoints[0].HostVeth = "veth9"
	src.Set(moved)
	if incr, err := d.Reconcile(ctx, "test"); err != nil || incr {
		t.Fatalf("an endpoint changed: incremental %v, %v", incr, err)
	}
	if fp.applies != 2 {
		t.Errorf("an endpoint changed: %d applies, want 2", fp.applies)
	}

	fp.failPublish = true
	next := baseState(a80, a53)
	next.Endpoints[0].HostVeth = "veth9"
	src.Set(next)
	if incr, err := d.Reconcile(ctx, "test"); err != nil || incr {
		t.Fatalf("a failed publish: incremental %v, %v", incr, err)
	}
	if fp.applies != 3 {
		t.Errorf("a failed publish: %d applies, want 3 (the fallback)", fp.applies)
	}

	// An invalid state changes nothing, incremental or not.
	bad := next
	bad.Ports = []datapath.PortMapping{a80, pm(datapath.TCP, "", 9000, "10.9.9.9", 80)}
	src.Set(bad)
	fp.failPublish = false
	if _, err := d.Reconcile(ctx, "test"); err == nil {
		t.Error("a port of an address in no network was accepted")
	}
	if got := d.Current().Ports; !slices.EqualFunc(got, next.Ports, datapath.PortMapping.Equal) {
		t.Errorf("after a refused state the current ports are %v, want %v", got, next.Ports)
	}

	plain := &fakeDatapath{}
	src2 := &Static{}
	d2 := New(Config{Datapath: plain, Source: src2})
	if err := d2.Start(ctx, baseState(a80)); err != nil {
		t.Fatal(err)
	}
	src2.Set(baseState(a80, a53))
	if incr, err := d2.Reconcile(ctx, "test"); err != nil || incr {
		t.Fatalf("a datapath without PortPublisher: incremental %v, %v", incr, err)
	}
	if plain.applies != 2 {
		t.Errorf("a datapath without PortPublisher: %d applies, want 2", plain.applies)
	}
}

// The ports published incrementally through the daemon leave the eBPF
// datapath's published map as a full Apply of the same state does on a
// fresh datapath.
func TestReconcileMatchesApplyEBPF(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{Name: "c0"}, {Name: "c1"}}})
	c0, _ := netip.AddrFromSlice(topo.Containers[0].Addr.To4())
	c1, _ := netip.AddrFromSlice(topo.Containers[1].Addr.To4())
	var base datapath.State
	if err := topo.Host.Do(func() (err error) {
		base, err = datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	with := func(ports ...datapath.PortMapping) datapath.State {
		s := base
		s.Ports = ports
		return s
	}
	ext := topo.Externals[0].HostAddr.String()
	p := func(proto datapath.Proto, host string, hp uint16, c netip.Addr, cp uint16) datapath.PortMapping {
		return pm(proto, host, hp, c.String(), cp)
	}
	steps := []datapath.State{
		with(p(datapath.TCP, "", 8080, c0, 80)),
		with(p(datapath.TCP, "", 8080, c0, 80), p(datapath.UDP, "", 5353, c0, 53)),
		with(p(datapath.TCP, "", 8080, c1, 80), p(datapath.UDP, "", 5353, c0, 53), p(datapath.TCP, ext, 9000, c1, 90)),
		with(p(datapath.TCP, ext, 8080, c1, 80), p(datapath.TCP, ext, 9000, c1, 90)),
		with(p(datapath.TCP, "", 9000, c0, 91)),
	}

	newEBPF := func() *datapath.EBPF {
		pin, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-daemon-test-")
		if err != nil {
			t.Fatal(err)
		}
		dp, err := datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: true})
		if err != nil {
			os.RemoveAll(pin)
			t.Fatal(err)
		}
		t.Cleanup(func() {
			topo.Host.Do(dp.Remove)
			os.RemoveAll(pin)
		})
		return dp
	}
	ctx := context.Background()
	dp := newEBPF()
	src := &Static{}
	d := New(Config{Datapath: dp, Source: src})
	if err := topo.Host.Do(func() error { return d.Start(ctx, steps[0]) }); err != nil {
		t.Fatal(err)
	}
	for i, s := range steps[1:] {
		src.Set(s)
		var incr bool
		err := topo.Host.Do(func() (err error) {
			incr, err = d.Reconcile(ctx, "test")
			return err
		})
		if err != nil || !incr {
			t.Fatalf("step %d: incremental %v, %v", i+1, incr, err)
		}
	}
	got, err := dp.Published()
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Host.Do(dp.Remove); err != nil {
		t.Fatal(err)
	}

	fresh := newEBPF()
	if err := topo.Host.Do(func() error { return fresh.Apply(ctx, steps[len(steps)-1]) }); err != nil {
		t.Fatal(err)
	}
	want, err := fresh.Published()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || len(want) != 1 {
		t.Errorf("published map after incremental steps:\n%v\nafter a full Apply:\n%v", got, want)
	}
}

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// kernelView is what an Apply leaves behind: the maps it programs, the
// attachments the loader records and what the kernel's tcx hooks run.
type kernelView struct {
	maps *resolved
	// atts are the loader's attachments without their link ids (a link
	// put back is a new link running the same program).
	atts []loader.Attachment
	// tcx is, by interface and hook, the ids of the programs the kernel
	// runs there.
	tcx map[string][]ebpf.ProgramID
}

func (l *labDatapath) view(t *testing.T) kernelView {
	t.Helper()
	var v kernelView
	err := l.topo.Host.Do(func() error {
		var err error
		if v.maps, err = l.dp.readApplied(); err != nil {
			return err
		}
		if v.atts, err = loader.List(l.pin); err != nil {
			return err
		}
		for i := range v.atts {
			v.atts[i].LinkID = 0
		}
		v.tcx = map[string][]ebpf.ProgramID{}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, ln := range links {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				q, err := link.QueryPrograms(link.QueryOptions{Target: ln.Attrs().Index, Attach: at})
				if err != nil {
					return fmt.Errorf("querying tcx of %s: %w", ln.Attrs().Name, err)
				}
				for _, p := range q.Programs {
					k := fmt.Sprintf("%s/%s", ln.Attrs().Name, at)
					v.tcx[k] = append(v.tcx[k], p.ID)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the datapath: %v", err)
	}
	return v
}

func (v kernelView) equal(o kernelView) bool {
	return reflect.DeepEqual(v.maps, o.maps) && reflect.DeepEqual(v.atts, o.atts) && reflect.DeepEqual(v.tcx, o.tcx)
}

var errInjected = errors.New("injected attach failure")

// TestLabApplyRollback: an Apply that fails after it wrote the maps, on an
// attach the kernel refuses or on a veth that vanished since it was
// resolved, leaves the maps, the attachments and the kernel's hooks as
// they were, and the previous state's port keeps answering. The same
// Apply without the failure then succeeds and its new port answers.
func TestLabApplyRollback(t *testing.T) {
	l := newLabDatapath(t, lab.Config{Containers: []lab.ContainerConfig{{}, {}, {}}})
	topo, pin := l.topo, l.pin
	c0, c1, c2, ext := topo.Containers[0], topo.Containers[1], topo.Containers[2], topo.Externals[0]
	var inject func(ifname, prog string) error
	opts := Options{PinPath: pin, FastPath: true, attachHook: func(ifname, prog string) error {
		if inject == nil {
			return nil
		}
		return inject(ifname, prog)
	}}
	// state is the lab's with only the endpoints of veths, and the ports.
	state := func(veths []string, publish ...string) State {
		t.Helper()
		var s State
		err := topo.Host.Do(func() error {
			var err error
			s, err = Discover([]string{topo.Bridges[0].Name}, nil, nil)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoints = slices.DeleteFunc(s.Endpoints, func(e Endpoint) bool { return !slices.Contains(veths, e.HostVeth) })
		s.PendingVeths = nil
		for _, p := range publish {
			m, err := ParsePublish(p)
			if err != nil {
				t.Fatal(err)
			}
			s.Ports = append(s.Ports, m...)
		}
		return s
	}
	apply := func(s State) error {
		return topo.Host.Do(func() error { return l.dp.Apply(context.Background(), s) })
	}
	for _, c := range topo.Containers {
		echoTCP(t, &c.Namespace, c.Addr.String()+":80")
	}
	host := ext.HostAddr.String()
	client := ext.Addr.String()
	answers := func(port int) {
		t.Helper()
		if got := tcpExchange(t, &ext.Namespace, fmt.Sprintf("%s:%d", host, port), 1000); got != client {
			t.Errorf("port %d: container saw %s, want the client %s", port, got, client)
		}
	}
	refused := func(port int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := ext.DialTCP(ctx, fmt.Sprintf("%s:%d", host, port))
		if err == nil {
			c.Close()
			t.Errorf("port %d answers, want it refused (not published)", port)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("port %d: %v, want ECONNREFUSED (the host's own answer)", port, err)
		}
	}

	err := topo.Host.Do(func() error {
		dp, err := NewEBPF(opts)
		l.dp = dp
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	prev := state([]string{c0.HostVeth}, fmt.Sprintf("8080:%s:80", c0.Addr))
	if err := apply(prev); err != nil {
		t.Fatalf("first Apply: %v", err)
	}
	answers(8080)
	refused(8081)
	before := l.view(t)
	if len(before.atts) != 4 || len(before.tcx) != 4 {
		t.Fatalf("the first state attached %v, tcx %v: want two programs on the uplink and two on %s", before.atts, before.tcx, c0.HostVeth)
	}

	t.Run("veth vanished", func(t *testing.T) {
		// c2 joins with its port; its veth is deleted after resolve, right
		// before its first program is attached.
		next := state([]string{c0.HostVeth, c2.HostVeth}, fmt.Sprintf("8080:%s:80", c0.Addr), fmt.Sprintf("8082:%s:80", c2.Addr))
		deleted := false
		inject = func(ifname, prog string) error {
			if ifname != c2.HostVeth || deleted {
				return nil
			}
			deleted = true
			ln, err := netlink.LinkByName(ifname)
			if err != nil {
				return err
			}
			return netlink.LinkDel(ln)
		}
		defer func() { inject = nil }()
		err := apply(next)
		if !deleted {
			t.Fatalf("Apply did not try to attach to %s: %v", c2.HostVeth, err)
		}
		if !errors.Is(err, loader.ErrInterfaceNotFound) {
			t.Fatalf("Apply with %s gone: %v, want an error wrapping ErrInterfaceNotFound", c2.HostVeth, err)
		}
		if after := l.view(t); !after.equal(before) {
			t.Errorf("after the failed Apply:\n%+v\nwant the state before it:\n%+v", after, before)
		}
		answers(8080)
		refused(8082)
	})

	t.Run("attach refused", func(t *testing.T) {
		// c1 replaces c0: c0's programs are detached, c1's ingress program
		// attached, and its egress program refused: c1's program comes
		// off again and c0's two go back on.
		next := state([]string{c1.HostVeth}, fmt.Sprintf("8081:%s:80", c1.Addr))
		var tried []string
		inject = func(ifname, prog string) error {
			tried = append(tried, ifname+"/"+prog)
			if ifname == c1.HostVeth && prog == ProgToContainer {
				return errInjected
			}
			return nil
		}
		err := apply(next)
		inject = nil
		if !errors.Is(err, errInjected) {
			t.Fatalf("Apply: %v (tried %v), want the injected failure", err, tried)
		}
		if after := l.view(t); !after.equal(before) {
			t.Errorf("after the failed Apply:\n%+v\nwant the state before it:\n%+v", after, before)
		}
		answers(8080)
		refused(8081)

		// Positive twin: the same Apply without the failure.
		if err := apply(next); err != nil {
			t.Fatalf("the same Apply without the failure: %v", err)
		}
		answers(8081)
		refused(8080)
		after := l.view(t)
		if after.equal(before) || len(after.tcx[c1.HostVeth+"/"+ebpf.AttachTCXIngress.String()]) != 1 || len(after.tcx[c0.HostVeth+"/"+ebpf.AttachTCXIngress.String()]) != 0 {
			t.Errorf("after the successful Apply tcx runs %v: want programs on %s, none on %s", after.tcx, c1.HostVeth, c0.HostVeth)
		}
	})
}

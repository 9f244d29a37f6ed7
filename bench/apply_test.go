// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"os"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// benchmarkPublishOne times what the control-plane figure "publish 1 port,
// 10,000 published" times, as a Go benchmark, so that it can be profiled:
//
//	go test -run - -bench PublishOne -cpuprofile cpu.out ./bench/
func benchmarkPublishOne(b *testing.B, mode Mode) {
	requireRoot(b)
	topo := lab.Setup(b, lab.Config{Containers: []lab.ContainerConfig{{Name: "c0"}}})
	e := &env{opts: &Options{}, mode: mode, topo: topo, c: topo.Containers[0], ext: topo.Externals[0]}
	err := topo.Host.Do(func() error {
		s, err := datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		e.state = s
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	switch mode {
	case ModeIptables:
		d, err := datapath.NewIptables(datapath.IptablesOptions{Netns: topo.Host.Path})
		if err != nil {
			b.Fatal(err)
		}
		e.dp = d
	default:
		pin, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-bench-")
		if err != nil {
			b.Fatal(err)
		}
		e.pin = pin
		d, err := datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: true})
		if err != nil {
			b.Fatal(err)
		}
		e.dp = d
	}
	b.Cleanup(func() {
		topo.Host.Do(e.dp.Remove)
		if e.pin != "" {
			os.RemoveAll(e.pin)
		}
	})
	ctx := context.Background()
	c := e.cAddr()
	many := scalePorts(c, ControlPorts)
	full := e.ports(many)
	one := e.ports(append(many, datapath.PortMapping{Proto: datapath.TCP, HostPort: scaleBase - 1, ContainerIP: c, ContainerPort: scaleBase - 1}))
	if err := e.apply(ctx, full); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := e.apply(ctx, one); err != nil {
			b.Fatal(err)
		}
		if err := e.apply(ctx, full); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublishOneEBPF(b *testing.B)     { benchmarkPublishOne(b, ModeEBPF) }
func BenchmarkPublishOneIptables(b *testing.B) { benchmarkPublishOne(b, ModeIptables) }

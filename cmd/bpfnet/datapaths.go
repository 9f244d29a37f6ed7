// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
	"github.com/bpfnet/bpfnet/datapath/nftables"
	"github.com/bpfnet/bpfnet/loader"
)

// datapaths are the names --datapath takes, the default first.
var datapaths = []string{"ebpf", "iptables", "nftables"}

// newDatapath builds the datapath of that name. applied, when not nil, is
// run after its first Apply: it records under the pin path what `bpfnet
// down` must remove.
func newDatapath(name string, opts datapath.Options) (dp datapath.Datapath, applied func() error, err error) {
	switch name {
	case "ebpf":
		d, err := datapath.NewEBPF(opts)
		if err != nil {
			return nil, nil, err
		}
		return d, nil, nil
	case "iptables":
		d, err := iptables.New(iptables.Options{})
		if err != nil {
			return nil, nil, err
		}
		return d, func() error { return os.MkdirAll(iptablesMarker(opts.PinPath), 0o700) }, nil
	case "nftables":
		d, err := nftables.New(nftables.Options{})
		if err != nil {
			return nil, nil, err
		}
		return d, func() error { return os.MkdirAll(nftablesMarker(opts.PinPath), 0o700) }, nil
	}
	return nil, nil, fmt.Errorf("unknown datapath %q", name)
}

// iptablesMarker marks, under the pin path, that the iptables datapath
// holds rules, so that `bpfnet down` removes them (bpffs takes folders,
// not files).
func iptablesMarker(pinPath string) string { return loader.IptablesMarker(pinPath) }

// nftablesMarker is iptablesMarker for the nftables datapath's table.
func nftablesMarker(pinPath string) string { return loader.NftablesMarker(pinPath) }

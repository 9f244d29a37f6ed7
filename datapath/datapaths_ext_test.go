// SPDX-License-Identifier: Apache-2.0

package datapath_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
	"github.com/bpfnet/bpfnet/datapath/nftables"
	"github.com/bpfnet/bpfnet/lab"
)

func init() {
	datapath.RegisterRuleDatapath("iptables", func(netns string) (datapath.Datapath, error) {
		return iptables.New(iptables.Options{Netns: netns})
	}, func(t *testing.T, ns *lab.Namespace, reason datapath.DropReason) uint64 {
		// DOCKER's DROP stands for not_published, ISOLATION-STAGE-2's
		// for isolation (default chain prefix). The raw table's drop of
		// direct access to a published container comes first, for
		// packets from outside and from other bridges alike, and stands
		// for both.
		// direct_access: the raw drop, and for a trusted interface's
		// packet to an unpublished port, DOCKER's.
		chain := map[datapath.DropReason]string{
			datapath.DropNotPublished: "BPFNET-DOCKER",
			datapath.DropIsolation:    "BPFNET-ISOLATION-STAGE-2",
			datapath.DropDirectAccess: "BPFNET-DOCKER",
		}[reason]
		if chain == "" {
			t.Fatalf("no iptables rule stands for drop reason %s", reason)
		}
		// A routed or nat-unprotected network has no direct-access
		// drop in the raw table.
		raw, _ := datapath.IptablesDropCount(t, ns, "raw:PREROUTING")
		return datapath.IptablesDrops(t, ns, chain) + raw
	})
	datapath.RegisterRuleDatapath("nftables", func(netns string) (datapath.Datapath, error) {
		return nftables.New(nftables.Options{Netns: netns})
	}, func(t *testing.T, ns *lab.Namespace, reason datapath.DropReason) uint64 {
		// The drops by comment: UNPUBLISHED PORT DROP for not_published,
		// ISOLATION for isolation, and the raw table's direct-access drop
		// for both, as with iptables.
		// direct_access: the raw drop, and for a trusted interface's
		// packet to an unpublished port, the filter's.
		kind := map[datapath.DropReason]string{
			datapath.DropNotPublished: "UNPUBLISHED PORT DROP",
			datapath.DropIsolation:    "ISOLATION",
			datapath.DropDirectAccess: "UNPUBLISHED PORT DROP",
		}[reason]
		if kind == "" {
			t.Fatalf("no nftables rule stands for drop reason %s", reason)
		}
		out, err := ns.Run(context.Background(), "nft", "list", "table", "ip", "bpfnet-bridges")
		if err != nil {
			t.Fatal(err)
		}
		// And the ip6 table, which a state with IPv6 has.
		if out6, err := ns.Run(context.Background(), "nft", "list", "table", "ip6", "bpfnet-bridges"); err == nil {
			out = append(out, out6...)
		}
		var n uint64
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.Contains(line, `comment "`+kind+`"`) && !strings.Contains(line, `comment "DROP DIRECT ACCESS"`) {
				continue
			}
			var pkts uint64
			if _, after, ok := strings.Cut(line, "counter packets "); ok {
				fmt.Sscan(after, &pkts)
			}
			n += pkts
		}
		return n
	})
}

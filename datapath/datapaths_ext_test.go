package datapath_test

import (
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/iptables"
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
		chain := map[datapath.DropReason]string{
			datapath.DropNotPublished: "BPFNET-DOCKER",
			datapath.DropIsolation:    "BPFNET-ISOLATION-STAGE-2",
		}[reason]
		if chain == "" {
			t.Fatalf("no iptables rule stands for drop reason %s", reason)
		}
		return datapath.IptablesDrops(t, ns, chain) + datapath.IptablesDrops(t, ns, "raw:PREROUTING")
	})
}

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// newRuleDatapath builds, by mode, the rule-based datapaths of the mode
// tests for a namespace path; ruleDrops reads, by datapath name, the
// packets their DROP rules that stand for a drop reason have matched.
// They live in packages that import this one, so the external test
// package registers them (datapaths_ext_test.go).
var (
	newRuleDatapath = map[string]func(netns string) (Datapath, error){}
	ruleDrops       = map[string]func(t *testing.T, ns *lab.Namespace, reason DropReason) uint64{}
)

// RegisterRuleDatapath registers a rule-based datapath for the mode tests.
func RegisterRuleDatapath(mode string, newDP func(netns string) (Datapath, error),
	drops func(t *testing.T, ns *lab.Namespace, reason DropReason) uint64) {
	newRuleDatapath[mode] = newDP
	ruleDrops[mode] = drops
}

// IptablesDrops sums the packet counters of the DROP rules of a filter
// chain in ns.
var IptablesDrops = iptablesDrops

// IptablesDropCount: see iptablesDropCount.
var IptablesDropCount = iptablesDropCount

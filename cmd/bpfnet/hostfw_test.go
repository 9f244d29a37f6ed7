// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/hostfw"
	"github.com/bpfnet/bpfnet/loader"
)

func TestPrintHostFirewall(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rules := hostfw.Report{Chains: []hostfw.Chain{{Source: hostfw.SourceIptablesNft, Table: "filter", Chain: "DOCKER-USER", Rules: 2}}}
	broken := hostfw.Report{Errors: []string{"nftables: operation not permitted"}}
	for _, tc := range []struct {
		name   string
		status *hostfw.Status
		want   []string
	}{
		{"unchecked", nil, []string{"host firewall\tnot checked"}},
		{"bypassed", ptr(hostfw.NewStatus(rules, at, true)), []string{
			"BYPASSED by the fast path: 2 rules (iptables-nft filter/DOCKER-USER=2); --fast-path=false makes them apply",
			"checked 2026-01-02T03:04:05Z"}},
		{"applied", ptr(hostfw.NewStatus(rules, at, false)), []string{"applied (fast path off): 2 rules (iptables-nft filter/DOCKER-USER=2)"}},
		{"none_partly_read", ptr(hostfw.NewStatus(broken, at, true)), []string{
			"no rules in the forward chains", "not read: nftables: operation not permitted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			printHostFirewall(&b, tc.status)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}

// TestHostFirewallRecord: what the daemon records, status reads back; no
// record is no check, not an error.
func TestHostFirewallRecord(t *testing.T) {
	pin := t.TempDir()
	if s, err := readHostFirewall(pin); s != nil || err != nil {
		t.Fatalf("without a record: %+v %v, want nil nil", s, err)
	}
	want := hostfw.NewStatus(hostfw.Report{Chains: []hostfw.Chain{{Source: hostfw.SourceNftables, Table: "inet fw", Chain: "fwd", Policy: "drop"}}},
		time.Now().Truncate(time.Second), true)
	data, err := want.Record()
	if err != nil {
		t.Fatal(err)
	}
	if err := loader.WriteRecord(hostFirewallRecord(pin), data); err != nil {
		t.Fatal(err)
	}
	got, err := readHostFirewall(pin)
	if err != nil || got == nil || !got.Report.Equal(want.Report) || !got.CheckedAt.Equal(want.CheckedAt) || !got.Bypassed || !got.FastPath {
		t.Errorf("read back %+v %v, want %+v", got, err, want)
	}
}

func ptr[T any](v T) *T { return &v }

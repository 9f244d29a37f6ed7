// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"strings"
	"testing"
)

// TestFloodScenarios: the flood's figures have keys of their own, apply to
// the two NAT datapaths only, and come out in the table with their ratio
// when a report has them.
func TestFloodScenarios(t *testing.T) {
	keys := map[string]bool{}
	for _, s := range Scenarios() {
		keys[s.Key] = true
	}
	for _, s := range FloodScenarios() {
		if keys[s.Key] {
			t.Errorf("flood scenario %s reuses a key", s.Key)
		}
		keys[s.Key] = true
		if s.AppliesTo(ModeRouting) || s.AppliesTo(ModeRedirect) || !s.AppliesTo(ModeEBPF) {
			t.Errorf("flood scenario %s applies to %v, want ebpf (and iptables)", s.Key, s.Modes)
		}
	}
	scen := append(Scenarios(), FloodScenarios()...)
	runs := []RunResult{
		{Run: 1, Mode: ModeIptables, Figures: map[string]float64{KeyFloodKept: 4, KeyFloodDialP99: 80}},
		{Run: 1, Mode: ModeEBPF, Figures: map[string]float64{KeyFloodKept: 8, KeyFloodDialP99: 20}},
	}
	rep := &Report{Scenarios: scen, Runs: runs, Summary: Summary(scen, runs)}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"flood: established flows kept", "of 8", "2.00x", "flood: new connection p99 (lower)", "0.25x"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestQuantile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if q := quantile(s, 0.5); q != 5 {
		t.Errorf("p50 of 1..10 = %v, want 5", q)
	}
	if q := quantile(s, 0.99); q != 9 {
		t.Errorf("p99 of 1..10 = %v, want 9 (index 8 of 10)", q)
	}
	if q := quantile([]float64{7}, 0.99); q != 7 {
		t.Errorf("p99 of one value = %v, want it", q)
	}
}

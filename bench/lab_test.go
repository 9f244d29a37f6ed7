// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

// TestQuickBench builds bpfnet and runs `bpfnet bench --quick` as CI does,
// then checks the JSON for shape: every run of every mode has a non-zero
// figure for every scenario that applies to it. It asserts no speed.
func TestQuickBench(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("runs the whole quick benchmark (about 3 minutes)")
	}
	dir := t.TempDir()
	bin := lab.BuildBpfnet(t)
	jsonPath, svgPath := filepath.Join(dir, "bench.json"), filepath.Join(dir, "bench.svg")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--quick", "--json", jsonPath, "--plot", svgPath)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("bpfnet bench --quick took %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("bpfnet bench --quick: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	t.Logf("table:\n%s", stdout.String())

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("parsing %s: %v", jsonPath, err)
	}
	if rep.Settings.Runs != 3 || !rep.Settings.Quick {
		t.Errorf("settings %+v, want 3 quick runs", rep.Settings)
	}
	if len(rep.Runs) != 3*len(Modes) {
		t.Fatalf("%d runs, want %d", len(rep.Runs), 3*len(Modes))
	}
	for _, r := range rep.Runs {
		if len(r.Errors) > 0 {
			t.Errorf("run %d %s: errors %v", r.Run, r.Mode, r.Errors)
		}
		for _, s := range rep.Scenarios {
			if !s.AppliesTo(r.Mode) {
				if _, ok := r.Figures[s.Key]; ok {
					t.Errorf("run %d %s: figure %s, which does not apply", r.Run, r.Mode, s.Key)
				}
				continue
			}
			if v := r.Figures[s.Key]; !(v > 0) {
				t.Errorf("run %d %s: %s = %v, want > 0", r.Run, r.Mode, s.Key, v)
			}
		}
	}
	for _, s := range rep.Summary {
		for _, m := range Modes {
			if st, ok := s.Stats[m]; s.AppliesTo(m) && (!ok || st.N != 3 || !(st.Min > 0)) {
				t.Errorf("summary %s %s: %+v", s.Key, m, st)
			}
		}
	}
	if st, err := os.Stat(svgPath); err != nil || st.Size() == 0 {
		t.Errorf("chart: %v", err)
	}
}

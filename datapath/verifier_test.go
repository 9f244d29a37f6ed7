// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// The verifier budget: testdata/verifier-budget.json holds, for every
// object, configuration and program, the most instructions the kernel's
// verifier may process to accept it. TestVerifier fails when a program
// takes more, or when the file and the objects list different programs.
// After a deliberate change (new code, a renamed program), rewrite the
// file with today's counts plus budgetHeadroomPercent:
//
//	go test -count=1 ./datapath -run '^TestVerifier$' -update-budget
var updateBudget = flag.Bool("update-budget", false, "rewrite testdata/verifier-budget.json with today's verified instruction counts plus headroom")

const (
	budgetFile = "testdata/verifier-budget.json"
	// budgetHeadroomPercent is added to each count when the file is
	// rewritten, so that a small change (or another kernel's verifier)
	// does not fail the test, while a complexity regression does.
	budgetHeadroomPercent = 10
)

// verifierBudget is the file's content: object -> configuration ->
// program -> verified instructions.
type verifierBudget struct {
	Comment         string                               `json:"comment"`
	HeadroomPercent int                                  `json:"headroom_percent"`
	Budgets         map[string]map[string]map[string]int `json:"budgets"`
}

// verifierConfig is one object built with one configuration.
type verifierConfig struct {
	object, config string
	spec           func() (*ebpf.CollectionSpec, error)
}

// verifierConfigs lists every object with every configuration that
// changes the code the verifier walks: the load-time constants CONFIG
// (datapath) and SOCK_NETNS_COOKIE (sock). The cgroup object has none.
func verifierConfigs(t *testing.T) []verifierConfig {
	tc := func(name string, opts Options) verifierConfig {
		return verifierConfig{"bpf", name, func() (*ebpf.CollectionSpec, error) { return Spec(opts) }}
	}
	return []verifierConfig{
		tc("stack", Options{}),
		tc("fast_path", Options{FastPath: true}),
		tc("redirect_only", Options{FastPath: true, RedirectOnly: true}),
		// A masquerade range of one port takes the sequential branch of
		// the port search; the default range the random one.
		tc("nat_one_port", Options{NATPortMin: 40000, NATPortMax: 40000}),
		{"cgroup", "default", func() (*ebpf.CollectionSpec, error) { return CgroupSpec(false) }},
		// With HostSockets the programs run for the namespace's cookie; a
		// zero cookie (never loaded) would let the verifier drop their
		// bodies.
		{"sock", "host_sockets", func() (*ebpf.CollectionSpec, error) {
			cookie, err := NetnsCookie()
			if err != nil {
				return nil, err
			}
			return SockSpec(cookie, false)
		}},
	}
}

// TestVerifier loads every object in every configuration and checks each
// program's verified instruction count against testdata/verifier-budget.json.
func TestVerifier(t *testing.T) {
	requireRoot(t)
	counts := map[string]map[string]map[string]int{}
	for _, vc := range verifierConfigs(t) {
		spec, err := vc.spec()
		if err != nil {
			t.Fatalf("%s/%s: %v", vc.object, vc.config, err)
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{})
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("%s/%s: %-50v", vc.object, vc.config, ve)
		}
		if err != nil {
			t.Fatalf("%s/%s: %v", vc.object, vc.config, err)
		}
		progs := map[string]int{}
		for name, p := range coll.Programs {
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			size, err := info.TranslatedSize()
			if err != nil {
				t.Fatal(err)
			}
			vi, ok := info.VerifiedInstructions()
			if !ok {
				t.Fatalf("%s/%s/%s: the kernel does not report verified instructions (needs Linux 5.16)", vc.object, vc.config, name)
			}
			t.Logf("%s/%s/%s: xlated=%d insns, verified=%d", vc.object, vc.config, name, size/8, vi)
			if size == 0 {
				t.Errorf("%s/%s/%s: no translated instructions", vc.object, vc.config, name)
			}
			progs[name] = int(vi)
		}
		coll.Close()
		if counts[vc.object] == nil {
			counts[vc.object] = map[string]map[string]int{}
		}
		counts[vc.object][vc.config] = progs
	}

	if *updateBudget {
		writeBudget(t, counts)
		return
	}
	budget := readBudget(t)
	for _, p := range compareBudget(counts, budget.Budgets) {
		t.Error(p)
	}
	if t.Failed() {
		t.Log("after a deliberate change, rewrite the budget: go test -count=1 ./datapath -run '^TestVerifier$' -update-budget")
	}
}

// compareBudget lists every program over its budget, every program
// without a budget and every budget without a program.
func compareBudget(counts, budgets map[string]map[string]map[string]int) []string {
	var problems []string
	for obj, cfgs := range counts {
		for cfg, progs := range cfgs {
			for prog, n := range progs {
				key := obj + "/" + cfg + "/" + prog
				b, ok := budgets[obj][cfg][prog]
				switch {
				case !ok:
					problems = append(problems, fmt.Sprintf("%s: %d verified instructions, not in %s", key, n, budgetFile))
				case n > b:
					problems = append(problems, fmt.Sprintf("%s: %d verified instructions, %d (%.1f%%) over its budget of %d",
						key, n, n-b, 100*float64(n-b)/float64(b), b))
				}
			}
		}
	}
	for obj, cfgs := range budgets {
		for cfg, progs := range cfgs {
			for prog := range progs {
				if _, ok := counts[obj][cfg][prog]; !ok {
					problems = append(problems, fmt.Sprintf("%s/%s/%s: in %s, but no such object, configuration or program is loaded", obj, cfg, prog, budgetFile))
				}
			}
		}
	}
	slices.Sort(problems)
	return problems
}

// withHeadroom is the budget written for a count.
func withHeadroom(n int) int {
	return int(math.Ceil(float64(n) * (100 + budgetHeadroomPercent) / 100))
}

func readBudget(t *testing.T) verifierBudget {
	t.Helper()
	b, err := os.ReadFile(budgetFile)
	if err != nil {
		t.Fatalf("%v (write it with -update-budget)", err)
	}
	var vb verifierBudget
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v", budgetFile, err)
	}
	return vb
}

func writeBudget(t *testing.T, counts map[string]map[string]map[string]int) {
	t.Helper()
	vb := verifierBudget{
		Comment: "Verified instructions each BPF program may take (object/configuration/program), " +
			"checked by TestVerifier. Regenerate: go test -count=1 ./datapath -run '^TestVerifier$' -update-budget " +
			"(today's counts plus headroom_percent).",
		HeadroomPercent: budgetHeadroomPercent,
		Budgets:         map[string]map[string]map[string]int{},
	}
	for obj, cfgs := range counts {
		vb.Budgets[obj] = map[string]map[string]int{}
		for cfg, progs := range cfgs {
			vb.Budgets[obj][cfg] = map[string]int{}
			for prog, n := range progs {
				vb.Budgets[obj][cfg][prog] = withHeadroom(n)
			}
		}
	}
	b, err := json.MarshalIndent(vb, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(budgetFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(budgetFile, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", budgetFile)
}

// TestCompareBudget checks the comparison on its own: a program within
// its budget passes, one over it, one without a budget and a budget
// without a program each fail with their own message.
func TestCompareBudget(t *testing.T) {
	budgets := map[string]map[string]map[string]int{
		"bpf": {"stack": {"from_netdev": 100, "to_netdev": 100, "gone": 50}},
	}
	within := map[string]map[string]map[string]int{
		"bpf": {"stack": {"from_netdev": 100, "to_netdev": 90, "gone": 1}},
	}
	if p := compareBudget(within, budgets); len(p) != 0 {
		t.Errorf("within budget: %q", p)
	}
	over := map[string]map[string]map[string]int{
		"bpf": {"stack": {"from_netdev": 111, "to_netdev": 90, "new_prog": 7}},
	}
	p := compareBudget(over, budgets)
	want := []string{
		"bpf/stack/from_netdev: 111 verified instructions, 11 (11.0%) over its budget of 100",
		"bpf/stack/gone: in testdata/verifier-budget.json, but no such object, configuration or program is loaded",
		"bpf/stack/new_prog: 7 verified instructions, not in testdata/verifier-budget.json",
	}
	if !slices.Equal(p, want) {
		t.Errorf("over budget:\n got %s\nwant %s", strings.Join(p, "\n     "), strings.Join(want, "\n     "))
	}
	if got := withHeadroom(1000); got != 1100 {
		t.Errorf("withHeadroom(1000) = %d, want 1100", got)
	}
}

package datapath

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
)

// TestVerifier loads every configuration of the programs and records their
// instruction counts, so a complexity regression shows in the test log.
func TestVerifier(t *testing.T) {
	requireRoot(t)
	for fast, opts := range map[string]Options{
		"stack":         {},
		"fast_path":     {FastPath: true},
		"redirect_only": {FastPath: true, RedirectOnly: true},
	} {
		spec, err := Spec(opts)
		if err != nil {
			t.Fatal(err)
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{})
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("%s: %-50v", fast, ve)
		}
		if err != nil {
			t.Fatalf("%s: %v", fast, err)
		}
		for name, p := range coll.Programs {
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			size, err := info.TranslatedSize()
			if err != nil {
				t.Fatal(err)
			}
			vi, _ := info.VerifiedInstructions()
			t.Logf("%s %-15s xlated=%d insns, verified=%d", fast, name, size/8, vi)
			if size == 0 {
				t.Errorf("%s: no translated instructions", name)
			}
		}
		coll.Close()
	}
}

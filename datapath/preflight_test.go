// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckBPFFS: a pin path is judged by itself or, when it does not
// exist yet, by its nearest existing parent.
func TestCheckBPFFS(t *testing.T) {
	requireRoot(t)
	for _, ok := range []string{"/sys/fs/bpf", "/sys/fs/bpf/bpfnet-no-such-pin/deeper"} {
		if err := CheckBPFFS(ok); err != nil {
			t.Errorf("CheckBPFFS(%s): %v", ok, err)
		}
	}
	off := filepath.Join(t.TempDir(), "a", "b")
	err := CheckBPFFS(off)
	if err == nil || !strings.HasPrefix(err.Error(), "pin path "+off+" is not on bpffs ("+filepath.Dir(filepath.Dir(off))+" is on another filesystem") {
		t.Errorf("CheckBPFFS(%s): %v, want it refused naming its nearest parent", off, err)
	}
}

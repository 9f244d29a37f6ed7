// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"os/exec"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

// requireTool stops the test when a program it runs is not installed
// (lab.RequireTools) and returns its path.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	lab.RequireTools(t, name)
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

package metrics

import (
	"os/exec"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

// requireTool fails the test when a program it runs is not installed.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (the Debian package prometheus has it; make deps installs it)", name)
	}
	return p
}

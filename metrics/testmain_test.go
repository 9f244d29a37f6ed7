package metrics

import (
	"os"
	"os/exec"
	"testing"
)

// requireRoot skips a test that needs root, except in CI, where skipping
// would hide untested work: there it fails.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root, and CI runs as root")
	}
	t.Skip("needs root")
}

// requireTool fails the test when a program it runs is not installed.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (the Debian package prometheus has it; make deps installs it)", name)
	}
	return p
}

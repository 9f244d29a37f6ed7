package datapath

import (
	"os"
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

// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"testing"
)

// The fixtures every package's tests share: what a test needs to run,
// and the bpfnet binary for tests that run it as a process.

// RequireRoot stops a test that needs root (namespaces, BPF, dockerd)
// when it runs without. In unit mode (go test -short, make test-unit) the
// test is skipped; otherwise it fails, so that a run of the whole suite
// never passes with untested work. Every package's root tests use it.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() {
		tb.Skip("needs root: skipped in unit mode (-short, make test-unit)")
	}
	tb.Fatal("needs root (namespaces, BPF, dockerd): run make test as root, or make test-unit for the tests that need none")
}

// RequireTools stops a test that runs programs that are not installed:
// skipped in unit mode (-short), failed otherwise (make deps installs
// them all).
func RequireTools(tb testing.TB, names ...string) {
	tb.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if testing.Short() {
				tb.Skipf("%s is not installed: skipped in unit mode (-short, make test-unit)", n)
			}
			tb.Fatalf("%s is not installed (make deps installs it)", n)
		}
	}
}

// BuildBpfnet builds cmd/bpfnet into a folder of the test and returns its
// path, for tests that run bpfnet as a process.
func BuildBpfnet(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "bpfnet")
	out, err := exec.Command(goBinary(), "build", "-o", bin, "github.com/bpfnet/bpfnet/cmd/bpfnet").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// goBinary is the go command: on the PATH, or the one of the toolchain
// running the test (sudo may reset the PATH).
var goBinary = sync.OnceValue(func() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
})

// BPFFSDir makes a folder in /sys/fs/bpf for a test's pins, named pattern
// and a random suffix, and removes it with whatever is left in it when the
// test ends (after the cleanups the test registers later).
func BPFFSDir(tb testing.TB, pattern string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("/sys/fs/bpf", pattern)
	if err != nil {
		tb.Fatalf("bpffs: %v (is it mounted at /sys/fs/bpf? make deps mounts it)", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// saveRe matches what changes between two iptables-save runs of the same
// rules: the comment lines with dates and the counters.
var saveRe = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// IptablesSave returns `iptables-save` of ns (nil: the namespace the test
// runs in) without comments and counters, so that two dumps of the same
// rules are equal.
func IptablesSave(tb testing.TB, ns *Namespace, args ...string) string {
	tb.Helper()
	cmd := exec.Command("iptables-save", args...)
	if ns != nil {
		cmd = ns.Command(context.Background(), "iptables-save", args...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("iptables-save: %v\n%s", err, out)
	}
	return saveRe.ReplaceAllString(string(out), "")
}

// KeepHostIptables fails the test if the rules of the namespace the tests
// run in (the real host's) change before its end.
func KeepHostIptables(tb testing.TB) {
	tb.Helper()
	before := IptablesSave(tb, nil)
	tb.Cleanup(func() {
		if after := IptablesSave(tb, nil); after != before {
			tb.Errorf("the real host's iptables rules changed:\nbefore\n%s\nafter\n%s", before, after)
		}
	})
}

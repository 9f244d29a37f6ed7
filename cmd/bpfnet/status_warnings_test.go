// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/datapath"
)

// TestStatusShowsWarnings: what the daemon left out of the state it
// applied (recordWarnings) is in `bpfnet status` and its --json, and goes
// when the daemon records a state without warnings.
func TestStatusShowsWarnings(t *testing.T) {
	requireRoot(t)
	pin, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-warn-")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(pin)
	dp, err := datapath.NewEBPF(datapath.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Remove(); err != nil {
			t.Error(err)
		}
		os.RemoveAll(pin)
	})
	status := func(args ...string) string {
		t.Helper()
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append([]string{"status", "--pin-path", pin}, args...))
		if err := root.Execute(); err != nil {
			t.Fatalf("bpfnet status %v: %v", args, err)
		}
		return out.String()
	}
	warnings := func() []string {
		t.Helper()
		var r statusReport
		if err := json.Unmarshal([]byte(status("--json")), &r); err != nil {
			t.Fatal(err)
		}
		return r.Warnings
	}
	if w := warnings(); len(w) != 0 {
		t.Fatalf("warnings %q before the daemon recorded any", w)
	}
	want := []string{
		"container b: port 127.0.0.1:8080->172.17.0.3:80/tcp: host port already published by 8080->172.17.0.2:80/tcp (a port on 0.0.0.0 takes it on every address)",
		"container c: port 9000->10.250.0.2:90/tcp: container address 10.250.0.2 is in none of the networks",
	}
	recordWarnings(pin, want)
	if got := warnings(); !reflect.DeepEqual(got, want) {
		t.Errorf("status --json warnings %q, want %q", got, want)
	}
	table := status()
	for _, w := range want {
		if !strings.Contains(table, "warning  "+w+"\n") {
			t.Errorf("status does not show %q:\n%s", w, table)
		}
	}
	// Many warnings still fit the record, the last ones summed up.
	many := make([]string, 200)
	for i := range many {
		many[i] = want[1]
	}
	recordWarnings(pin, many)
	got := warnings()
	if len(got) < 2 || len(got) >= len(many) || !strings.HasPrefix(got[len(got)-1], "and ") || got[0] != want[1] {
		t.Errorf("200 warnings recorded as %d: first %q, last %q", len(got), got[0], got[len(got)-1])
	}
	recordWarnings(pin, nil)
	if w := warnings(); len(w) != 0 {
		t.Errorf("warnings %q after a state without any", w)
	}
}

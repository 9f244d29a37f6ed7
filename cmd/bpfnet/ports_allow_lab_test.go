// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// TestRunPublishAllow: `bpfnet run --publish ...,allow=` limits a port to
// its list (a client outside it times out, the same client reaches the
// port without a list), the host itself is not judged, and `bpfnet ports`
// shows the list and the count of refused connections, in JSON and in its
// table.
func TestRunPublishAllow(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}})
	c0, ext := topo.Containers[0], topo.Externals[0]
	pin := pinPath(t, topo, bin, "bpfnet-allow-test-")
	greetServer(t, &c0.Namespace, c0.Addr.String()+":80", false)

	cmd := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin,
		"--bridge", topo.Bridges[0].Name, "--uplink", ext.Uplink,
		"--publish", fmt.Sprintf("8080:%s:80,allow=192.0.2.0/24+198.51.100.7", c0.Addr),
		"--publish", fmt.Sprintf("8081:%s:80", c0.Addr),
		"--publish", fmt.Sprintf("8082:%s:80,allow=%s/32", c0.Addr, ext.Addr))
	ready := readyWatch(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	ready()
	waitAttached(t, topo, bin, pin, 4)

	host := ext.HostAddr.String()
	if got, err := ext.Greeting(host + ":8080"); err == nil || !lab.IsTimeout(err) {
		t.Errorf("port 8080, client not in its list: %q %v, want a timeout", got, err)
	}
	for _, port := range []string{"8081", "8082"} {
		if got, err := ext.Greeting(host + ":" + port); err != nil || got != ext.Addr.String() {
			t.Errorf("port %s: %q %v, want the client let through", port, got, err)
		}
	}

	// The host is trusted: its own connection to 8080, whose list leaves
	// out every address of the host, goes through.
	if got, err := topo.Host.Greeting("127.0.0.1:8080"); err != nil || got != topo.Bridges[0].Gateway.String() {
		t.Errorf("localhost:8080 from the host: %q %v, want it let through (from the bridge address)", got, err)
	}

	out, err := topo.Host.Command(context.Background(), bin, "ports", "--json", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet ports --json: %v", err)
	}
	var ports []portJSON
	if err := json.Unmarshal(out, &ports); err != nil {
		t.Fatal(err)
	}
	got := map[uint16]portJSON{}
	for _, p := range ports {
		got[p.HostPort] = p
	}
	if p := got[8080]; strings.Join(p.Allow, ",") != "192.0.2.0/24,198.51.100.7/32" || p.Denied < 1 || p.Connections != 1 {
		t.Errorf("port 8080: %+v, want its list, a denial and one connection (the host's)", p)
	}
	if p := got[8081]; len(p.Allow) != 0 || p.Denied != 0 || p.Connections != 1 {
		t.Errorf("port 8081: %+v, want no list, no denial, a connection", p)
	}
	if p := got[8082]; strings.Join(p.Allow, ",") != ext.Addr.String()+"/32" || p.Denied != 0 || p.Connections != 1 {
		t.Errorf("port 8082: %+v, want the client's /32, no denial, a connection", p)
	}

	out, err = topo.Host.Command(context.Background(), bin, "ports", "--pin-path", pin).Output()
	if err != nil {
		t.Fatalf("bpfnet ports: %v", err)
	}
	table := string(out)
	for _, want := range []string{"ALLOW", "DENIED", "192.0.2.0/24,198.51.100.7/32", ext.Addr.String() + "/32"} {
		if !strings.Contains(table, want) {
			t.Errorf("bpfnet ports lacks %q:\n%s", want, table)
		}
	}
	for _, line := range strings.Split(table, "\n") {
		if strings.Contains(line, ":8081") && !strings.Contains(line, " all ") {
			t.Errorf("port 8081's line does not say it is open to all: %s", line)
		}
	}
}

// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// TestDockerAllowE2E: a container's allowlist labels on a real dockerd,
// with traffic from the external namespace: the port whose list has the
// client answers, the one whose list has not drops its SYN (counted for
// the port); the container recreated with the labels swapped swaps the
// verdicts for new connections at once.
func TestDockerAllowE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	e := newWatchedE2E(t)
	client := e.ext.Addr.String() + "/32"
	echo := []string{"/bin/echo", "-tcp", "80"}
	run := func(allow8080, allow8081 string) string {
		t.Helper()
		id := e.d.Run(ctr{name: "web", publish: []string{"8080:80", "8081:80"}, cmd: echo, labels: map[string]string{
			LabelAllow: allow8080, LabelAllowPort + "8081/tcp": allow8081,
		}})
		e.waitApplied(t, func(st datapath.State) bool {
			return slices.ContainsFunc(st.Ports, func(m datapath.PortMapping) bool {
				return m.HostPort == 8081 && datapath.FormatAllow(m.Allow) == allow8081
			})
		})
		return id
	}
	denied := func(port uint16) {
		t.Helper()
		to := netip.AddrPortFrom(e.hostAddr, port).String()
		if got, err := e.ext.Greeting(to); err == nil || !lab.IsTimeout(err) {
			t.Errorf("%s from the client: %q %v, want a dropped SYN (a timeout)", to, got, err)
		}
	}

	id := run(client, "192.0.2.0/24")
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", 2*time.Second)
	denied(8081)
	var n uint64
	if err := e.topo.Host.Do(func() error {
		d, err := e.dp.PortDenied()
		n = d[datapath.PortBinding{Proto: datapath.TCP, HostIP: netip.IPv4Unspecified(), HostPort: 8081}]
		return err
	}); err != nil || n == 0 {
		t.Errorf("port 8081: %d denied (%v), want at least one", n, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.d.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	e.waitApplied(t, func(st datapath.State) bool { return len(st.Ports) == 0 })
	run("192.0.2.0/24", client)
	e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8081), "web", 2*time.Second)
	denied(8080)
}

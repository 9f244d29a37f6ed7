// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/bpfnet/bpfnet/lab"
)

// TestDaemonDockerMode runs the real daemon, `bpfnet run --docker`, next to
// a dockerd with --iptables=false --userland-proxy=false: a container
// started after the daemon is published, its metrics carry its name, and
// a missing socket is a clear error that attaches nothing.
func TestDaemonDockerMode(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	bin := lab.BuildBpfnet(t)
	sweepStale(t)
	topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	ext := topo.Externals[0]
	pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-daemon")
	t.Cleanup(func() {
		topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
		os.RemoveAll(pin)
	})

	// No Docker there: a clear error, nothing pinned.
	out, err := topo.Host.Command(context.Background(), bin, "run", "--pin-path", pin,
		"--docker=unix:///nonexistent/docker.sock", "--metrics-addr", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cannot reach Docker at unix:///nonexistent/docker.sock") {
		t.Errorf("run with a missing Docker socket: %v\n%s", err, out)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("run with a missing Docker socket left %s", pin)
	}

	d := startDockerd(t, topo.Host, topo.Bridges[0].Name, topo.Prefix)
	d.ImportImage()
	startRun(t, topo.Host, os.Stderr, bin, "run", "--pin-path", pin,
		"--docker=unix://"+d.sock, "--uplink", ext.Uplink, "--metrics-addr", "127.0.0.1:19475")

	web := d.Run(ctr{name: "web", publish: []string{"8080:80", "5353:53/udp"}, cmd: []string{"/bin/echo", "-tcp", "80", "-udp", "53"}})
	to := net.JoinHostPort(ext.HostAddr.String(), "8080")
	var line string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := ext.DialTCP(ctx, to)
		cancel()
		if err == nil {
			c.SetDeadline(time.Now().Add(200 * time.Millisecond))
			line, _ = bufio.NewReader(c).ReadString('\n')
			c.Close()
			if f := strings.Fields(line); len(f) == 2 && f[1] == "web" {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[1] != "web" {
		t.Fatalf("published port through bpfnet run --docker: %q", line)
	}
	if ap, err := netip.ParseAddrPort(f[0]); err != nil || ap.Addr().String() != ext.Addr.String() {
		t.Errorf("web saw the client as %s, want %s", f[0], ext.Addr)
	}

	var body string
	err = topo.Host.Do(func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:19475", 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Fprint(c, "GET /metrics HTTP/1.0\r\n\r\n")
		b, err := io.ReadAll(c)
		body = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	id := d.Inspect(web).ID[:12]
	if want := `container="web",container_id="` + id + `",interface="veth`; !strings.Contains(body, want) {
		t.Errorf("metrics lack web's traffic series (%s)", want)
	}
	if want := `bpfnet_published_port_connections_total{container="web",host_ip="0.0.0.0",host_port="8080",protocol="tcp"}`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %s", want)
	}
}

// datapaths are the datapaths `bpfnet run --docker` is tested with.
var datapaths = []string{"ebpf", "iptables", "nftables"}

// TestDaemonDockerRestart runs `bpfnet run --docker --datapath X` for every
// datapath: a container restarted with a new address answers on its
// published TCP and UDP ports afterwards, and the container that took its
// old address is not what they reach.
func TestDaemonDockerRestart(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	bin := lab.BuildBpfnet(t)
	for _, dp := range datapaths {
		t.Run(dp, func(t *testing.T) {
			sweepStale(t)
			topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
			ext := topo.Externals[0]
			pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-daemon")
			t.Cleanup(func() {
				topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
				os.RemoveAll(pin)
			})
			d := startDockerd(t, topo.Host, topo.Bridges[0].Name, topo.Prefix)
			d.ImportImage()
			startRun(t, topo.Host, os.Stderr, bin, "run", "--pin-path", pin, "--datapath", dp,
				"--docker=unix://"+d.sock, "--uplink", ext.Uplink, "--metrics-addr", "")
			e := &e2e{t: t, topo: topo, ext: ext, d: d}
			host := addr4(ext.HostAddr)
			tcp, udp := netip.AddrPortFrom(host, 8080), netip.AddrPortFrom(host, 5353)

			web := d.Run(ctr{name: "web", publish: []string{"8080:80", "5353:53/udp"}, cmd: []string{"/bin/echo", "-tcp", "80", "-udp", "53"}})
			oldIP := d.Inspect(web).NetworkSettings.Networks["bridge"].IPAddress
			e.expectEcho(t, "tcp", tcp, "web", 10*time.Second)
			e.expectEcho(t, "udp", udp, "web", 10*time.Second)

			ctx := context.Background()
			timeout := 1
			if err := d.cli.ContainerStop(ctx, web, container.StopOptions{Timeout: &timeout}); err != nil {
				t.Fatal(err)
			}
			// Another container takes web's address while web is stopped,
			// so web comes back with a new one.
			squatter := d.Run(ctr{name: "squatter", cmd: []string{"/bin/echo", "-tcp", "80", "-udp", "53"}})
			if err := d.cli.ContainerStart(ctx, web, container.StartOptions{}); err != nil {
				t.Fatal(err)
			}
			newIP := d.Inspect(web).NetworkSettings.Networks["bridge"].IPAddress
			if newIP == oldIP {
				t.Fatalf("web kept its address %s; the test needs a new one", newIP)
			}
			t.Logf("web moved from %s to %s; squatter is at %s", oldIP, newIP, d.Inspect(squatter).NetworkSettings.Networks["bridge"].IPAddress)
			e.expectEcho(t, "tcp", tcp, "web", 5*time.Second)
			e.expectEcho(t, "udp", udp, "web", 5*time.Second)
			// The old address is no longer served: every later answer is web's.
			for i := 0; i < 20; i++ {
				for _, to := range []netip.AddrPort{tcp, udp} {
					proto := "tcp"
					if to == udp {
						proto = "udp"
					}
					if line, err := e.dial(proto, to); err == nil && !strings.HasSuffix(strings.TrimSpace(line), " web") {
						t.Errorf("%s %s answered %q after web moved, want web", proto, to, line)
					}
				}
			}
		})
	}
}

// startRun starts bin with args in ns, its output to log, and stops it
// with SIGTERM when the test ends. Registered after dockerd's cleanup, that
// runs before dockerd stops, so the daemon sees no container leave.
func startRun(t *testing.T, ns *lab.Namespace, log io.Writer, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := ns.Command(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	return cmd
}

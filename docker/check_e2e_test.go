// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/lab"
)

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	os.Stderr.Write(p)
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// bpfPrograms lists the tcx programs and clsact qdiscs on the
// interfaces of the namespace ("" when there is none). It fails the test
// when the namespace has too few interfaces to prove anything.
func bpfPrograms(t *testing.T, ns *lab.Namespace) string {
	t.Helper()
	var found []string
	err := ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		if len(links) < 3 {
			return fmt.Errorf("only %d interfaces in namespace %s: the check would prove nothing", len(links), ns.Name)
		}
		for _, l := range links {
			name := l.Attrs().Name
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				q, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
				if err != nil {
					return fmt.Errorf("querying tcx of %s: %w", name, err)
				}
				if len(q.Programs) > 0 {
					found = append(found, fmt.Sprintf("%s: %d programs on %s", name, len(q.Programs), at))
				}
			}
			qdiscs, err := netlink.QdiscList(l)
			if err != nil {
				return fmt.Errorf("listing qdiscs of %s: %w", name, err)
			}
			for _, q := range qdiscs {
				if _, ok := q.(*netlink.Clsact); ok {
					found = append(found, name+": a clsact qdisc")
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(found, "\n")
}

// unitCapabilities are the setpriv(1) --bounding-set of the systemd
// unit's CapabilityBoundingSet: "-all,+bpf,+perfmon,...".
func unitCapabilities(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../deploy/systemd/bpfnet.service")
	if err != nil {
		t.Fatal(err)
	}
	set := "-all"
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(v) {
				set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
			}
		}
	}
	if set == "-all" {
		t.Fatal("no CapabilityBoundingSet in bpfnet.service")
	}
	return set
}

// TestDockerFirewallCheck runs bpfnet run --docker next to a dockerd of
// the test's own: with iptables on, it refuses to start, says what to
// put in daemon.json, exits 78 and installs nothing,
// --ignore-docker-firewall starts it in that same setup, and a restart
// without it is refused and leaves that datapath be; with dockerd as
// documented (iptables and userland-proxy off), it starts, under the
// systemd unit's capabilities, and serves a published port; with the
// userland proxy on, it warns and serves.
func TestDockerFirewallCheck(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare", "setpriv")
	bin := lab.BuildBpfnet(t)

	t.Run("iptables_on", func(t *testing.T) {
		sweepStale(t)
		topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
		ext := topo.Externals[0]
		bridge := topo.Bridges[0].Name
		pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-check")
		t.Cleanup(func() {
			topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
			os.RemoveAll(pin)
		})
		// Docker's defaults but the proxy: iptables on, masquerade on.
		d := startDockerdWith(t, topo.Host, bridge, topo.Prefix, []string{"--userland-proxy=false"})
		if nat := lab.IptablesSave(t, topo.Host, "-t", "nat"); !strings.Contains(nat, "! -o "+bridge+" -j MASQUERADE") {
			t.Fatalf("dockerd with iptables on made no MASQUERADE for %s:\n%s", bridge, nat)
		}
		args := []string{"run", "--pin-path", pin, "--docker=unix://" + d.sock, "--uplink", ext.Uplink, "--metrics-addr", ""}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := topo.Host.Command(ctx, bin, args...).CombinedOutput()
		t.Logf("bpfnet run next to dockerd --iptables=true:\n%s", out)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != ExitConfig {
			t.Fatalf("run: %v, want exit status %d", err, ExitConfig)
		}
		for _, want := range []string{
			"does NAT itself",
			"runs with iptables true (Docker's default)",
			"-A POSTROUTING -s 172.30.0.0/24 ! -o " + bridge + " -j MASQUERADE",
			DaemonJSON,
			"systemctl restart docker",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the refusal does not say %q", want)
			}
		}
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused start left %s: %v", pin, err)
		}
		if progs := bpfPrograms(t, topo.Host); progs != "" {
			t.Errorf("the refused start left programs attached:\n%s", progs)
		}

		// The same setup, with the override: it starts, and the same
		// probes see what it installs.
		log := &lockedBuffer{}
		run := startRun(t, topo.Host, log, bin, append(args, "--ignore-docker-firewall")...)
		waitFor(t, "bpfnet's pins and programs", func() bool {
			_, err := os.Stat(pin)
			return err == nil && bpfPrograms(t, topo.Host) != ""
		})
		if !strings.Contains(log.String(), "--ignore-docker-firewall") {
			t.Errorf("the overridden start did not log the conflict:\n%s", log)
		}

		// A restart without the override, as systemd's would be: refused,
		// the datapath of the first start left as it is, and said so.
		run.Process.Signal(syscall.SIGTERM)
		run.Wait()
		progs := bpfPrograms(t, topo.Host)
		out, err = topo.Host.Command(ctx, bin, args...).CombinedOutput()
		if !errors.As(err, &ee) || ee.ExitCode() != ExitConfig || !strings.Contains(string(out), "still pinned at "+pin) {
			t.Errorf("restart without the override: %v, want exit status %d and the pinned datapath named:\n%s", err, ExitConfig, out)
		}
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("the refused restart removed the pins: %v", err)
		}
		if now := bpfPrograms(t, topo.Host); now != progs || now == "" {
			t.Errorf("the refused restart changed the programs attached: %q, before %q", now, progs)
		}
	})

	// The userland proxy only warns: docker-proxy holds the published
	// port, and bpfnet answers it first, with the client's address.
	t.Run("userland_proxy_on", func(t *testing.T) {
		sweepStale(t)
		topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
		ext := topo.Externals[0]
		pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-check")
		t.Cleanup(func() {
			topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
			os.RemoveAll(pin)
		})
		d := startDockerdWith(t, topo.Host, topo.Bridges[0].Name, topo.Prefix, []string{"--iptables=false", "--ip-masq=false"})
		d.ImportImage()
		d.Run(ctr{name: "web", publish: []string{"8080:80"}, cmd: []string{"/bin/echo", "-tcp", "80"}})
		e := &e2e{t: t, topo: topo, ext: ext, d: d, hostAddr: addr4(ext.HostAddr)}
		to := netip.AddrPortFrom(e.hostAddr, 8080)
		// Without bpfnet, docker-proxy answers, and the container sees
		// the proxy's address (the bridge's), not the client's.
		var proxied string
		waitFor(t, "docker-proxy's answer", func() bool {
			line, err := e.dial("tcp", to)
			proxied = strings.TrimSpace(line)
			return err == nil && strings.HasSuffix(proxied, " web")
		})
		if strings.HasPrefix(proxied, ext.Addr.String()+":") {
			t.Errorf("through docker-proxy the container saw %q: the client's own address", proxied)
		}
		log := &lockedBuffer{}
		startRun(t, topo.Host, log, bin, "run", "--pin-path", pin, "--docker=unix://"+d.sock, "--uplink", ext.Uplink, "--metrics-addr", "")
		// Until bpfnet is there, docker-proxy answers, with its own
		// address as the client's: wait for the datapath first.
		waitFor(t, "the datapath attached", func() bool { return strings.Contains(log.String(), `msg="datapath attached"`) })
		e.expectEcho(t, "tcp", to, "web", 20*time.Second)
		out := log.String()
		for _, want := range []string{"runs with userland-proxy true (Docker's default) (", "docker-proxy processes here)", `set \"userland-proxy\": false`, "docker leaves NAT to bpfnet"} {
			if !strings.Contains(out, want) {
				t.Errorf("run's log does not say %q:\n%s", want, out)
			}
		}
	})

	// Docker's IPv6 NAT for the bridge's IPv6 subnet is refused as its
	// IPv4 NAT is (bpfnet translates IPv6 too). Docker 20.10 makes IPv6
	// NAT only with iptables on as well, and leaves its rules behind when
	// it stops: a first dockerd with both on makes them, its IPv4 rules
	// are removed, and the dockerd bpfnet then follows runs as
	// documented, on the same IPv6 network, so that the IPv6 rules alone
	// refuse the start. Its twin is iptables_off below: no rules there.
	t.Run("ip6tables_rules", func(t *testing.T) {
		sweepStale(t)
		topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
		ext := topo.Externals[0]
		bridge := topo.Bridges[0].Name
		pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-check")
		t.Cleanup(func() {
			topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
			os.RemoveAll(pin)
		})
		// Docker 20.10 has ip6tables behind --experimental (27.0 on has it
		// on by default).
		first := startDockerdWith(t, topo.Host, bridge, topo.Prefix, []string{"--userland-proxy=false",
			"--experimental", "--ip6tables=true", "--ipv6", "--fixed-cidr-v6=fd00:30::/64"})
		first.Stop()
		nat6, err := topo.Host.Command(context.Background(), "ip6tables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("ip6tables-save: %v\n%s", err, nat6)
		}
		masq := "-A POSTROUTING -s fd00:30::/64 ! -o " + bridge + " -j MASQUERADE"
		if !strings.Contains(string(nat6), masq) {
			t.Fatalf("dockerd with ip6tables on left no IPv6 MASQUERADE for %s:\n%s", bridge, nat6)
		}
		for _, c := range [][]string{{"iptables", "-t", "nat", "-F"}, {"iptables", "-t", "nat", "-X"}} {
			if out, err := topo.Host.Command(context.Background(), c[0], c[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", c, err, out)
			}
		}
		if nat := lab.IptablesSave(t, topo.Host, "-t", "nat"); strings.Contains(nat, "DOCKER") || strings.Contains(nat, "MASQUERADE") {
			t.Fatalf("IPv4 NAT rules left:\n%s", nat)
		}
		d := startDockerdWith(t, topo.Host, bridge, topo.Prefix, []string{"--iptables=false", "--ip6tables=false", "--userland-proxy=false",
			"--ipv6", "--fixed-cidr-v6=fd00:30::/64"})
		args := []string{"run", "--pin-path", pin, "--docker=unix://" + d.sock, "--uplink", ext.Uplink, "--metrics-addr", ""}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := topo.Host.Command(ctx, bin, args...).CombinedOutput()
		t.Logf("bpfnet run next to Docker's IPv6 NAT rules:\n%s", out)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != ExitConfig {
			t.Fatalf("run: %v, want exit status %d", err, ExitConfig)
		}
		for _, want := range []string{
			"does NAT itself",
			"Docker's IPv6 NAT rule (ip6tables-",
			masq,
			DaemonJSON,
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the refusal does not say %q", want)
			}
		}
		if strings.Contains(string(out), "runs with ip") || strings.Contains(string(out), "Docker's NAT rule") {
			t.Errorf("the refusal blames a setting or an IPv4 rule: only the IPv6 rules are left")
		}
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refused start left %s: %v", pin, err)
		}
		if progs := bpfPrograms(t, topo.Host); progs != "" {
			t.Errorf("the refused start left programs attached:\n%s", progs)
		}
	})

	t.Run("iptables_off", func(t *testing.T) {
		sweepStale(t)
		topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
		ext := topo.Externals[0]
		pin := filepath.Join("/sys/fs/bpf", pinPrefix+topo.Prefix+"-check")
		t.Cleanup(func() {
			topo.Host.Command(context.Background(), bin, "down", "--pin-path", pin).Run()
			os.RemoveAll(pin)
		})
		d := startDockerd(t, topo.Host, topo.Bridges[0].Name, topo.Prefix)
		d.ImportImage()
		d.Run(ctr{name: "web", publish: []string{"8080:80"}, cmd: []string{"/bin/echo", "-tcp", "80"}})
		log := &lockedBuffer{}
		// As the systemd unit runs it: its capabilities only, no new
		// privileges.
		startRun(t, topo.Host, log, "setpriv", "--bounding-set", unitCapabilities(t), "--no-new-privs", "--",
			bin, "run", "--pin-path", pin, "--docker=unix://"+d.sock, "--uplink", ext.Uplink, "--metrics-addr", "")
		e := &e2e{t: t, topo: topo, ext: ext, d: d, hostAddr: addr4(ext.HostAddr)}
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", 20*time.Second)
		out := log.String()
		if !strings.Contains(out, "docker leaves NAT to bpfnet") {
			t.Errorf("run did not log that the check passed:\n%s", out)
		}
		if strings.Contains(out, "level=WARN msg=\"docker configuration\"") {
			t.Errorf("run warned of the documented configuration:\n%s", out)
		}
	})
}

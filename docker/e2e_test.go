// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// e2e is a lab with a dockerd of its own in the host namespace and the
// eBPF datapath fed from a Source.
type e2e struct {
	t    *testing.T
	topo *lab.Topology
	ext  *lab.External
	d    *dockerd
	src  *Source
	dp   *datapath.EBPF
	pin  string

	// hostAddr is the host's uplink address, extra a second one on the
	// uplink that wildcard ports answer on and host-IP bindings do not.
	hostAddr, extra netip.Addr

	connected atomic.Int32 // Watch's (re)connections

	mu      sync.Mutex
	applied []datapath.State // by Watch
	errs    []error
	notify  chan struct{}
}

// addUplinkAddr gives ext's uplink, in the host namespace, a second
// address, .3 of its subnet (the host's is .1, the external end .2), and
// returns it.
func addUplinkAddr(t *testing.T, topo *lab.Topology, ext *lab.External) netip.Addr {
	t.Helper()
	a := addr4(ext.HostAddr).Next().Next()
	h, err := topo.Host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	up, err := h.LinkByName(ext.Uplink)
	if err == nil {
		err = h.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: ext.Subnet.Mask}})
	}
	if err != nil {
		t.Fatalf("adding %s to the uplink %s: %v", a, ext.Uplink, err)
	}
	return a
}

func addr4(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

func TestDockerE2E(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	e := &e2e{t: t, notify: make(chan struct{}, 1)}
	checkLeftovers := e.leftoverCheck()
	t.Cleanup(checkLeftovers) // registered first: runs after every other cleanup

	start := time.Now()
	sweepStale(t)
	e.topo = lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	e.ext = e.topo.Externals[0]
	e.hostAddr = addr4(e.ext.HostAddr)
	e.extra = addUplinkAddr(t, e.topo, e.ext)
	var err error

	e.d = startDockerd(t, e.topo.Host, e.topo.Bridges[0].Name, e.topo.Prefix)
	e.d.ImportImage()
	e.src, err = New("unix://" + e.d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.src.Close() })
	e.src.Logger = slog.New(countingHandler{testLogger(t).Handler(), "docker connected", &e.connected})
	e.startDatapath()
	t.Logf("setup: %v", time.Since(start).Round(time.Millisecond))

	echo := []string{"/bin/echo", "-tcp", "80,7000,9000,9001,9002", "-udp", "53"}
	web := e.d.Run(ctr{
		name: "web",
		publish: []string{
			"8080:80", e.hostAddr.String() + ":8081:80", "9000-9002:9000-9002", "5353:53/udp",
		},
		expose: []string{"7000/tcp"}, publishAll: true,
		cmd: echo,
	})
	webIP := addr4(net.ParseIP(e.d.Inspect(web).NetworkSettings.Networks["bridge"].IPAddress))

	t.Run("State", func(t *testing.T) { e.checkState(t, web, webIP) })
	if t.Failed() {
		t.FailNow()
	}
	t.Run("NoIptables", func(t *testing.T) {
		// dockerd --iptables=false must leave netfilter alone; what it
		// does change is logged for the record.
		for _, prog := range []string{"iptables-save", "iptables-legacy-save"} {
			if _, err := exec.LookPath(prog); err != nil {
				t.Logf("%s not installed: not checked", prog)
				continue
			}
			out, err := e.topo.Host.Run(context.Background(), prog)
			if err != nil {
				t.Errorf("%s: %v", prog, err)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, "-A ") || strings.Contains(line, "DOCKER") {
					t.Errorf("%s in dockerd's namespace: %s", prog, line)
				}
			}
		}
		br := e.topo.Bridges[0].Name
		v, _ := e.topo.Host.ReadSysctl("net/ipv4/conf/" + br + "/route_localnet")
		t.Logf("net.ipv4.conf.%s.route_localnet=%s (dockerd sets 1 with --userland-proxy=false)", br, v)
	})
	t.Run("TCP", func(t *testing.T) {
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", time.Second)
		// Wildcard ports answer on every host address.
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.extra, 8080), "web", time.Second)
	})
	t.Run("HostIP", func(t *testing.T) {
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8081), "web", time.Second)
		if line, err := e.dial("tcp", netip.AddrPortFrom(e.extra, 8081)); err == nil {
			t.Errorf("port 8081 is bound to %s only, yet %s:8081 answered %q", e.hostAddr, e.extra, line)
		}
	})
	t.Run("Range", func(t *testing.T) {
		for p := uint16(9000); p <= 9002; p++ {
			e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, p), "web", time.Second)
		}
	})
	t.Run("PublishAll", func(t *testing.T) {
		b := e.d.Inspect(web).NetworkSettings.Ports["7000/tcp"]
		if len(b) == 0 {
			t.Fatalf("-P published no port for 7000/tcp: %v", e.d.Inspect(web).NetworkSettings.Ports)
		}
		var port uint16
		fmt.Sscan(b[0].HostPort, &port)
		t.Logf("-P published 7000/tcp on %d", port)
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, port), "web", time.Second)
	})
	t.Run("UDP", func(t *testing.T) {
		e.expectEcho(t, "udp", netip.AddrPortFrom(e.hostAddr, 5353), "web", time.Second)
	})
	t.Run("Masquerade", func(t *testing.T) { e.expectMasquerade(t, web) })
	t.Run("Localhost", func(t *testing.T) {
		// The host itself, without docker-proxy: dockerd only holds the
		// port (a listener that never answers); the cgroup programs send
		// the connection to the container.
		for _, to := range []string{"127.0.0.1:8080", e.hostAddr.String() + ":8080"} {
			var line string
			err := e.topo.Host.Do(func() error {
				c, err := net.DialTimeout("tcp", to, time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				line, err = bufio.NewReader(c).ReadString('\n')
				return err
			})
			if f := strings.Fields(line); err != nil || len(f) != 2 || f[1] != "web" {
				t.Errorf("curl %s on the host: %q %v, want web's answer", to, line, err)
			}
		}
	})

	// From here on Watch drives the datapath.
	e.startWatch()

	t.Run("Restart", func(t *testing.T) {
		ctx := context.Background()
		timeout := 1
		if err := e.d.cli.ContainerStop(ctx, web, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Fatal(err)
		}
		// Another container takes web's address meanwhile.
		squatter := e.d.Run(ctr{name: "squatter", cmd: []string{"/bin/echo", "-tcp", "80"}})
		sq := addr4(net.ParseIP(e.d.Inspect(squatter).NetworkSettings.Networks["bridge"].IPAddress))
		if sq != webIP {
			t.Logf("the squatter got %s, not web's old %s", sq, webIP)
		}
		e.waitApplied(t, func(st datapath.State) bool { return hasEndpoint(st, "squatter") && !hasEndpoint(st, "web") })
		if line, err := e.dial("tcp", netip.AddrPortFrom(e.hostAddr, 8080)); err == nil {
			t.Errorf("port 8080 answered %q while web was stopped", line)
		}
		t0 := time.Now()
		if err := e.d.cli.ContainerStart(ctx, web, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", time.Second)
		t.Logf("docker start took %v; the port answered %v after it returned", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
		newIP := addr4(net.ParseIP(e.d.Inspect(web).NetworkSettings.Networks["bridge"].IPAddress))
		if newIP == webIP {
			t.Logf("web kept its address %s", newIP)
		}
		webIP = newIP
		e.expectEcho(t, "udp", netip.AddrPortFrom(e.hostAddr, 5353), "web", time.Second)
		e.expectMasquerade(t, web)
	})

	t.Run("Reconnect", func(t *testing.T) {
		ctx := context.Background()
		// --subnet only: IPAM lists no gateway, the bridge has it.
		nw, err := e.d.cli.NetworkCreate(ctx, "e2e-net", network.CreateOptions{
			Driver: "bridge",
			IPAM:   &network.IPAM{Config: []network.IPAMConfig{{Subnet: "172.30.7.0/24"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		e.waitApplied(t, func(st datapath.State) bool {
			return slices.ContainsFunc(st.Networks, func(n datapath.Network) bool {
				return n.Name == "e2e-net" && n.Bridge == "br-"+nw.ID[:12] && n.Gateway == netip.MustParseAddr("172.30.7.1") && n.Masquerade
			})
		})
		if err := e.d.cli.NetworkDisconnect(ctx, "bridge", web, false); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := e.d.cli.NetworkConnect(ctx, nw.ID, web, nil); err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", time.Second)
		t.Logf("docker network connect took %v; the port answered %v after it returned", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
		ci := e.d.Inspect(web)
		if _, ok := ci.NetworkSettings.Networks["e2e-net"]; !ok || len(ci.NetworkSettings.Networks) != 1 {
			t.Errorf("web's networks: %v", ci.NetworkSettings.Networks)
		}
		e.expectMasquerade(t, web)
	})

	t.Run("DockerRestart", func(t *testing.T) {
		// dockerd stops its containers as it goes: Watch passes that on,
		// then keeps the last state while Docker is away.
		n := e.connected.Load()
		t0 := time.Now()
		e.d.Restart()
		waitFor(t, "Watch to reconnect", func() bool { return e.connected.Load() > n })
		t.Logf("Watch reconnected %v after dockerd was asked to stop", time.Since(t0).Round(time.Millisecond))
		e.waitApplied(t, func(st datapath.State) bool { return len(st.Endpoints) == 0 && len(st.Networks) == 2 })
		t0 = time.Now()
		if err := e.d.cli.ContainerStart(context.Background(), web, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		e.expectEcho(t, "tcp", netip.AddrPortFrom(e.hostAddr, 8080), "web", time.Second)
		t.Logf("docker start took %v; the port answered %v after it returned", t1.Sub(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	})

	e.mu.Lock()
	defer e.mu.Unlock()
	for _, err := range e.errs {
		t.Errorf("applying a state from Watch: %v", err)
	}
}

// checkState compares Source.State with what Docker and the kernel say,
// then programs the datapath with it.
func (e *e2e) checkState(t *testing.T, web string, webIP netip.Addr) {
	ctx := context.Background()
	br := e.topo.Bridges[0]
	bridgeNet, err := e.d.cli.NetworkInspect(ctx, "bridge", network.InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := bridgeNet.Options[optMasquerade]; v != "false" {
		t.Logf("note: dockerd --iptables=false left %s=%q on the default bridge", optMasquerade, v)
	}
	ci := e.d.Inspect(web)
	es := ci.NetworkSettings.Networks["bridge"]
	var st datapath.State
	err = e.topo.Host.Do(func() error {
		var err error
		st, err = e.src.State(ctx)
		if err != nil {
			return err
		}
		if len(st.Endpoints) != 1 {
			return fmt.Errorf("endpoints %+v, want web's", st.Endpoints)
		}
		// The host end, as the kernel knows it.
		peer, err := netlink.LinkByName(st.Endpoints[0].HostVeth)
		if err != nil {
			return err
		}
		if peer.Attrs().MasterIndex != br.Index {
			return fmt.Errorf("%s is not on bridge %s", peer.Attrs().Name, br.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantNet := datapath.Network{Name: "bridge", Bridge: br.Name, Subnet: netip.MustParsePrefix("172.30.0.0/24"), Gateway: netip.MustParseAddr("172.30.0.1"), Masquerade: true}
	if len(st.Networks) != 1 || st.Networks[0] != wantNet {
		t.Errorf("networks %+v, want [%+v]", st.Networks, wantNet)
	}
	ep := st.Endpoints[0]
	if ep.Container != "web" || ep.ContainerID != web || ep.Network != "bridge" || ep.Addr != webIP || ep.MAC.String() != es.MacAddress || !strings.HasPrefix(ep.HostVeth, "veth") {
		t.Errorf("endpoint %+v; want web (%s) at %s, MAC %s, a veth", ep, web, webIP, es.MacAddress)
	}
	var ports []string
	for _, m := range st.Ports {
		if m.ContainerIP != webIP || m.Container != "web" {
			t.Errorf("port %v not to web at %s", m, webIP)
		}
		ports = append(ports, m.String())
	}
	random := ci.NetworkSettings.Ports[nat.Port("7000/tcp")]
	if len(random) == 0 {
		t.Fatalf("no binding for 7000/tcp: %v", ci.NetworkSettings.Ports)
	}
	want := []string{
		fmt.Sprintf("8080->%s:80/tcp", webIP),
		fmt.Sprintf("%s:8081->%s:80/tcp", e.hostAddr, webIP),
		fmt.Sprintf("9000->%s:9000/tcp", webIP),
		fmt.Sprintf("9001->%s:9001/tcp", webIP),
		fmt.Sprintf("9002->%s:9002/tcp", webIP),
		fmt.Sprintf("%s->%s:7000/tcp", random[0].HostPort, webIP),
		fmt.Sprintf("5353->%s:53/udp", webIP),
	}
	slices.Sort(want)
	slices.Sort(ports)
	if !slices.Equal(ports, want) {
		t.Errorf("ports\n got %v\nwant %v", ports, want)
	}
	if err := st.Validate(); err != nil {
		t.Errorf("state does not validate: %v", err)
	}
	if err := e.apply(st); err != nil {
		t.Fatalf("applying: %v", err)
	}
}

// startDatapath loads the datapath, pinned under /sys/fs/bpf, in the host
// namespace.
func (e *e2e) startDatapath() {
	t := e.t
	pin := filepath.Join("/sys/fs/bpf", pinPrefix+e.topo.Prefix)
	if err := os.Mkdir(pin, 0o700); err != nil {
		t.Fatalf("bpffs: %v (is it mounted at /sys/fs/bpf?)", err)
	}
	e.pin = pin
	t.Cleanup(func() {
		if e.dp != nil {
			if err := e.topo.Host.Do(e.dp.Remove); err != nil {
				t.Errorf("removing the datapath: %v", err)
			}
		}
		os.RemoveAll(pin)
	})
	err := e.topo.Host.Do(func() error {
		var err error
		e.dp, err = datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: true, HostSockets: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// apply programs the datapath with st and the lab's uplink, in the host
// namespace.
func (e *e2e) apply(st datapath.State) error {
	return e.topo.Host.Do(func() error { return e.applyHere(st) })
}

// applyHere is apply on a thread already in the host namespace.
func (e *e2e) applyHere(st datapath.State) error {
	st.Uplinks = []datapath.Uplink{{Name: e.ext.Uplink}}
	return e.dp.Apply(context.Background(), st)
}

// newWatchedE2E sets up an e2e whose datapath Watch feeds: a lab with one
// bridge, dockerd on it with the test image, a Source and the eBPF
// datapath, Watch started and its first state applied. The leftover check
// is registered before anything else, so it runs after every other
// cleanup.
func newWatchedE2E(t *testing.T) *e2e {
	t.Helper()
	e := &e2e{t: t, notify: make(chan struct{}, 1)}
	t.Cleanup(e.leftoverCheck())

	sweepStale(t)
	e.topo = lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	e.ext = e.topo.Externals[0]
	e.hostAddr = addr4(e.ext.HostAddr)
	e.d = startDockerd(t, e.topo.Host, e.topo.Bridges[0].Name, e.topo.Prefix)
	e.d.ImportImage()
	var err error
	e.src, err = New("unix://" + e.d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.src.Close() })
	e.src.Logger = testLogger(t)
	e.startDatapath()
	e.startWatch()
	return e
}

// startWatch runs Source.Watch in the host namespace, applying every
// state it sends; it is stopped at cleanup.
func (e *e2e) startWatch() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := e.topo.Host.Do(func() error {
			return e.src.Watch(ctx, func(st datapath.State) {
				err := e.applyHere(st)
				e.mu.Lock()
				if err != nil {
					e.errs = append(e.errs, err)
				}
				e.applied = append(e.applied, st)
				e.mu.Unlock()
				e.t.Logf("%s watch applied: %d endpoints, %d ports (%v)", time.Now().Format("15:04:05.000"), len(st.Endpoints), len(st.Ports), err)
				select {
				case e.notify <- struct{}{}:
				default:
				}
			})
		})
		if err != nil {
			e.mu.Lock()
			e.errs = append(e.errs, err)
			e.mu.Unlock()
		}
	}()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	e.waitApplied(e.t, func(datapath.State) bool { return true })
}

// waitApplied waits until Watch applies a state for which ok holds; the
// states seen are consumed.
func (e *e2e) waitApplied(t *testing.T, ok func(datapath.State) bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		e.mu.Lock()
		states := e.applied
		e.applied = nil
		e.mu.Unlock()
		for _, st := range states {
			if ok(st) {
				return
			}
		}
		select {
		case <-e.notify:
		case <-deadline:
			t.Fatalf("Watch applied no state as expected within 15 s")
		}
	}
}

// drops reads the datapath's drop counters, failing the test if it cannot.
func (e *e2e) drops(t *testing.T) map[datapath.DropReason]uint64 {
	t.Helper()
	d, err := e.dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func hasEndpoint(st datapath.State, name string) bool {
	return slices.ContainsFunc(st.Endpoints, func(e datapath.Endpoint) bool { return e.Container == name })
}

// dial sends one request from the external namespace and returns the
// answer line.
func (e *e2e) dial(proto string, to netip.AddrPort) (string, error) {
	// Short timeouts: a SYN that is lost is not retransmitted before a
	// second, and until the datapath knows the port dockerd's listener
	// that reserves it accepts connections and never answers.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if proto == "tcp" {
		c, err := e.ext.DialTCP(ctx, to.String())
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(100 * time.Millisecond))
		return bufio.NewReader(c).ReadString('\n')
	}
	var c net.Conn
	err := e.ext.Do(func() error {
		var err error
		c, err = net.Dial("udp", to.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// expectEcho retries until the echo server of container `who` answers at
// `to`, within `within`, and checks that it saw the external client's
// real address.
func (e *e2e) expectEcho(t *testing.T, proto string, to netip.AddrPort, who string, within time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	var last string
	var lastErr error
	var attempts []string
	defer func() {
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Logf("%s %s: answered after %v; attempts: %s", proto, to, d.Round(time.Millisecond), strings.Join(attempts, "; "))
		}
	}()
	for {
		a0 := time.Now()
		line, err := e.dial(proto, to)
		attempts = append(attempts, fmt.Sprintf("+%v %v %q", a0.Sub(start).Round(time.Millisecond), err, strings.TrimSpace(line)))
		if err == nil {
			f := strings.Fields(line)
			if len(f) == 2 && f[1] == who {
				ap, perr := netip.ParseAddrPort(f[0])
				if perr != nil || ap.Addr() != addr4(e.ext.Addr) {
					t.Errorf("%s %s: %s saw the client as %s, want %s (the real client address)", proto, to, who, f[0], e.ext.Addr)
				}
				return
			}
		}
		last, lastErr = line, err
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: no answer from %s within %v (last: %q, %v)", proto, to, who, within, strings.TrimSpace(last), lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectMasquerade has the container connect to a server in the
// external namespace, which must see the host's uplink address.
func (e *e2e) expectMasquerade(t *testing.T, id string) {
	t.Helper()
	l, err := e.ext.ListenTCP(net.JoinHostPort(e.ext.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			seen <- err.Error()
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "%s external\n", c.RemoteAddr())
		seen <- c.RemoteAddr().String()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := e.d.Exec(ctx, id, "/bin/echo", "-dial", l.Addr().String())
	if err != nil {
		t.Fatalf("connecting out from the container: %v", err)
	}
	from := <-seen
	ap, err := netip.ParseAddrPort(from)
	if err != nil || ap.Addr() != e.hostAddr {
		t.Errorf("the external server saw %s, want the uplink address %s", from, e.hostAddr)
	}
	if !strings.HasPrefix(out, e.hostAddr.String()+":") {
		t.Errorf("the container got %q back", out)
	}
}

// leftoverCheck returns a function that fails the test when something it
// made outlived it: dockerd's processes, its folder, cgroups, pins, the
// lab's namespaces.
func (e *e2e) leftoverCheck() func() {
	return func() {
		t := e.t
		if e.d != nil {
			if e.d.mntNS != 0 {
				if pids := processesIn(e.d.mntNS, e.d.cgroup); len(pids) > 0 {
					t.Errorf("processes left behind: %v", pids)
				}
			}
			if _, err := os.Stat(e.d.dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind", e.d.dir)
			}
			for _, m := range cgroupMounts() {
				if _, err := os.Stat(m + e.d.cgroup); err == nil {
					t.Errorf("cgroup %s%s left behind", m, e.d.cgroup)
				}
			}
		}
		if e.pin != "" {
			if _, err := os.Stat(e.pin); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind", e.pin)
			}
		}
		if e.topo != nil && e.topo.Host.Exists() {
			t.Errorf("namespace %s left behind", e.topo.Host.Name)
		}
		for _, p := range systemDockerPaths {
			if _, err := os.Stat(p); err == nil && !preexisting[p] {
				t.Errorf("%s appeared during the test", p)
			}
		}
	}
}

// systemDockerPaths are where a dockerd and containerd keep things by
// default; the test's dockerd must not touch them.
var systemDockerPaths = []string{
	"/run/docker", "/var/run/docker.sock", "/var/run/docker.pid", "/etc/docker/key.json",
	"/var/lib/docker", "/run/containerd", "/var/lib/containerd",
}

// preexisting are paths of a system Docker that existed before the test,
// which the test must not touch and does not blame itself for.
var preexisting = func() map[string]bool {
	m := map[string]bool{}
	for _, p := range systemDockerPaths {
		if _, err := os.Stat(p); err == nil {
			m[p] = true
		}
	}
	return m
}()

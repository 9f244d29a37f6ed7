// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// labDatapath is a lab topology with the eBPF datapath running in its host
// namespace.
type labDatapath struct {
	topo *lab.Topology
	dp   *EBPF
	pin  string
}

// drops and events read the datapath's counters, failing the test if
// they cannot be read.
func (l *labDatapath) drops(t *testing.T) map[DropReason]uint64 {
	t.Helper()
	return mustRead(t, l.dp.Drops)
}

func (l *labDatapath) events(t *testing.T) map[Event]uint64 {
	t.Helper()
	return mustRead(t, l.dp.Events)
}

// mustRead returns what read returns, failing the test on its error.
func mustRead[T any](t *testing.T, read func() (T, error)) T {
	t.Helper()
	v, err := read()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

// startLab builds a topology of cfg and attaches the datapath with ports
// (given as --publish specs) in its host namespace.
func startLab(t *testing.T, cfg lab.Config, fast bool, publish ...string) *labDatapath {
	t.Helper()
	return startLabWith(t, cfg, Options{FastPath: fast}, publish...)
}

// newLabDatapath builds a topology of cfg and a pin folder for a datapath
// not started yet: whatever datapath the test puts in dp is removed at
// cleanup, and the folder with it.
func newLabDatapath(t *testing.T, cfg lab.Config) *labDatapath {
	t.Helper()
	requireRoot(t)
	topo := lab.Setup(t, cfg)
	l := &labDatapath{topo: topo, pin: bpffsDir(t, "bpfnet-test-")}
	t.Cleanup(func() {
		if l.dp != nil {
			if err := topo.Host.Do(l.dp.Remove); err != nil {
				t.Errorf("removing datapath: %v", err)
			}
		}
	})
	return l
}

// discoverLab is the state of the lab's bridges (Discover, run in the
// host namespace) with ports published.
func discoverLab(topo *lab.Topology, ports []PortMapping) (State, error) {
	s, err := Discover(topo.BridgeNames(), nil, nil)
	if err != nil {
		return s, err
	}
	s.Ports = ports
	return s, nil
}

// bpffsDir: see lab.BPFFSDir.
var bpffsDir = lab.BPFFSDir

func startLabWith(t *testing.T, cfg lab.Config, opts Options, publish ...string) *labDatapath {
	t.Helper()
	l := newLabDatapath(t, cfg)
	topo, pin := l.topo, l.pin
	var ports []PortMapping
	for _, p := range publish {
		m, err := ParsePublish(p)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, m...)
	}
	err := topo.Host.Do(func() error {
		s, err := discoverLab(topo, ports)
		if err != nil {
			return err
		}
		opts.PinPath = pin
		dp, err := NewEBPF(opts)
		if err != nil {
			return err
		}
		l.dp = dp
		return dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("starting datapath: %v", err)
	}
	return l
}

// echoTCP serves in ns on addr: each connection gets back the client's
// address as the server saw it, then the echo of what it sends.
func echoTCP(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	ns.ServeTCP(t, addr, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
		io.Copy(c, c)
	})
}

// echoUDP answers every datagram with the sender's address, then the
// datagram.
func echoUDP(t *testing.T, ns *lab.Namespace, addr string) {
	t.Helper()
	serveUDP(t, ns, addr, func(from *net.UDPAddr, b []byte) []byte {
		return append([]byte(from.IP.String()+" "), b...)
	})
}

// serveUDP listens in ns on addr until the test ends and sends every
// datagram's sender what answer makes of it.
func serveUDP(t *testing.T, ns *lab.Namespace, addr string, answer func(from *net.UDPAddr, b []byte) []byte) {
	t.Helper()
	c, err := ns.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(answer(from, buf[:n]), from)
		}
	}()
}

// tcpExchange connects from ns to addr, reads the address the server saw
// and checks that a payload comes back whole.
func tcpExchange(t *testing.T, ns *lab.Namespace, addr string, size int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, 0, 32)
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			t.Fatalf("reading greeting from %s: %v", addr, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go c.Write(payload)
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading echo from %s: %v", addr, err)
	}
	for i := range got {
		if got[i] != payload[i] {
			t.Fatalf("echo differs at byte %d", i)
		}
	}
	return string(line)
}

func udpExchange(t *testing.T, ns *lab.Namespace, addr string, msg string) string {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			from, body, _ := strings.Cut(string(buf[:n]), " ")
			if body != msg {
				t.Fatalf("udp echo %q, want %q", body, msg)
			}
			return from
		}
	}
	t.Fatalf("no UDP answer from %s", addr)
	return ""
}

func twoContainers() lab.Config {
	return lab.Config{Containers: []lab.ContainerConfig{{}, {}}}
}

func forBothPaths(t *testing.T, fn func(t *testing.T, fast bool)) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast_path=%v", fast), func(t *testing.T) { fn(t, fast) })
	}
}

func TestLabPublishedPorts(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		cfg := twoContainers()
		l := startLab(t, cfg, fast)
		c0, c1, ext := l.topo.Containers[0], l.topo.Containers[1], l.topo.Externals[0]
		hostIP := ext.HostAddr.String()
		specs := []string{
			fmt.Sprintf("8080:%s:80", c0.Addr),
			fmt.Sprintf("%s:8081:%s:80", hostIP, c1.Addr),
			fmt.Sprintf("9000-9002:%s:7000-7002", c1.Addr),
			fmt.Sprintf("5353:%s:53/udp", c0.Addr),
		}
		var ports []PortMapping
		for _, s := range specs {
			m, err := ParsePublish(s)
			if err != nil {
				t.Fatal(err)
			}
			ports = append(ports, m...)
		}
		l.setPorts(t, ports)
		echoTCP(t, &c0.Namespace, c0.Addr.String()+":80")
		echoTCP(t, &c1.Namespace, c1.Addr.String()+":80")
		for p := 7000; p <= 7002; p++ {
			echoTCP(t, &c1.Namespace, fmt.Sprintf("%s:%d", c1.Addr, p))
		}
		echoUDP(t, &c0.Namespace, c0.Addr.String()+":53")

		client := ext.Addr.String()
		if got := tcpExchange(t, &ext.Namespace, hostIP+":8080", 200000); got != client {
			t.Errorf("container saw client %s, want the real client %s", got, client)
		}
		if got := tcpExchange(t, &ext.Namespace, hostIP+":8081", 1000); got != client {
			t.Errorf("host-IP binding: container saw %s, want %s", got, client)
		}
		for p := 9000; p <= 9002; p++ {
			if got := tcpExchange(t, &ext.Namespace, fmt.Sprintf("%s:%d", hostIP, p), 100); got != client {
				t.Errorf("range port %d: container saw %s", p, got)
			}
		}
		if got := udpExchange(t, &ext.Namespace, hostIP+":5353", "hello"); got != client {
			t.Errorf("udp: container saw %s, want %s", got, client)
		}
	})
}

// setPorts replaces the published ports.
func (l *labDatapath) setPorts(t *testing.T, ports []PortMapping) {
	t.Helper()
	err := l.topo.Host.Do(func() error {
		s, err := discoverLab(l.topo, ports)
		if err != nil {
			return err
		}
		return l.dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLabMasquerade(t *testing.T) {
	forBothPaths(t, func(t *testing.T, fast bool) {
		l := startLab(t, twoContainers(), fast)
		c0, ext := l.topo.Containers[0], l.topo.Externals[0]
		echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
		echoUDP(t, &ext.Namespace, ext.Addr.String()+":9001")
		want := ext.HostAddr.String()
		if got := tcpExchange(t, &c0.Namespace, ext.Addr.String()+":9000", 300000); got != want {
			t.Errorf("external server saw %s, want the uplink address %s", got, want)
		}
		if got := udpExchange(t, &c0.Namespace, ext.Addr.String()+":9001", "x"); got != want {
			t.Errorf("udp: external server saw %s, want %s", got, want)
		}
		out, err := c0.Command(context.Background(), "busybox", "ping", "-c", "2", "-W", "2", ext.Addr.String()).CombinedOutput()
		if err != nil {
			t.Errorf("ping from container through masquerade: %v\n%s", err, out)
		}
	})
}

func TestLabNoIptablesRules(t *testing.T) {
	l := startLab(t, twoContainers(), true)
	c0 := l.topo.Containers[0]
	l.setPorts(t, []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: addrOf(c0.Addr), ContainerPort: 80}})
	for _, table := range []string{"nat", "filter"} {
		out, err := l.topo.Host.Command(context.Background(), "iptables-save", "-t", table).CombinedOutput()
		if err != nil {
			if _, lerr := exec.LookPath("iptables-save"); lerr != nil {
				t.Fatalf("iptables-save not installed (make deps installs it)")
			}
			t.Fatalf("iptables-save: %v\n%s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A ") {
				t.Errorf("bpfnet's namespace has an iptables rule in %s: %s", table, line)
			}
		}
	}
}

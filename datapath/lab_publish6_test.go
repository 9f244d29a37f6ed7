// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestLabPublishPortsIPv6 publishes and unpublishes IPv6 ports one at a
// time next to an applied dual-stack state, as the daemon does on a
// Docker event: the outside reaches a newly published port, a moved
// binding moves its flow at once, an unpublished one answers no more, and
// refused calls (another family, outside the networks, a taken port, an
// allowlist) write nothing. A port published on [::1] this way serves the
// host's own sockets.
func TestLabPublishPortsIPv6(t *testing.T) {
	l, ext := dualStackLab(t, []PortMapping{{Proto: TCP, HostPort: 8080, ContainerIP: labCtr6[0], ContainerPort: 80}})
	c0, c1 := l.topo.Containers[0], l.topo.Containers[1]
	echoTCP(t, &c0.Namespace, "[::]:80")
	echoUDPNamed(t, &c0.Namespace, "[::]:53", "c0")
	echoUDPNamed(t, &c1.Namespace, "[::]:53", "c1")
	n6 := func() int {
		t.Helper()
		m, err := readMap[bpfPort6Key, bpfPort6Target](l.dp.objs.Published6)
		if err != nil {
			t.Fatal(err)
		}
		return len(m)
	}
	up := "[" + labHost6.String() + "]"
	// The applied port answers first, retried as the other lab tests do.
	// It also has the host learn the container's link address: in the
	// lab's first second the new bridge's link-local address is still
	// tentative (DAD), and the host sends no Neighbour Solicitation for a
	// forwarded packet (whose source is not the host's) until it is, so
	// the first datagrams from the outside wait a second, longer than the
	// UDP checks below try.
	var err error
	for try := 0; try < 20; try++ {
		var got string
		if got, err = ext.Greeting(up + ":8080"); err == nil && got == labExt6.String() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the applied IPv6 port: %v", err)
	}

	if err := l.dp.PublishPorts(publish(t, fmt.Sprintf("[::]:5353:[%s]:53/udp", labCtr6[0]))...); err != nil {
		t.Fatal(err)
	}
	var conn *net.UDPConn
	if err := ext.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp6", &net.UDPAddr{IP: net.IP(labExt6.AsSlice()), Port: 40001}, &net.UDPAddr{IP: net.IP(labHost6.AsSlice()), Port: 5353})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func() string {
		buf := make([]byte, 16)
		for i := 0; i < 3; i++ {
			conn.Write([]byte("?"))
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, err := conn.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		return "nothing"
	}
	if got := ask(); got != "c0" {
		t.Fatalf("published one IPv6 port: answer %q, want c0", got)
	}
	// Replacing the binding moves the flow at once.
	if err := l.dp.PublishPorts(publish(t, fmt.Sprintf("[::]:5353:[%s]:53/udp", labCtr6[1]))...); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "c1" {
		t.Errorf("after the binding moved: answer %q, want c1", got)
	}
	if n := n6(); n != 2 {
		t.Errorf("%d IPv6 ports published, want 2", n)
	}
	if err := l.dp.UnpublishPorts(publish(t, fmt.Sprintf("[::]:5353:[%s]:53/udp", labCtr6[1]))...); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "nothing" {
		t.Errorf("after unpublishing: answer %q", got)
	}
	if n := n6(); n != 1 {
		t.Errorf("%d IPv6 ports published after unpublishing, want 1", n)
	}
	// The applied port still answers: unpublishing touched only its own.
	if got, err := ext.Greeting(up + ":8080"); err != nil || got != labExt6.String() {
		t.Errorf("the applied IPv6 port after the runtime changes: %q (%v)", got, err)
	}

	// Refused, and nothing written.
	allowed := publish(t, fmt.Sprintf("[::]:7001:[%s]:80", labCtr6[0]))[0]
	allowed.Allow = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}
	for _, c := range []struct {
		m    PortMapping
		want string
	}{
		{PortMapping{Proto: TCP, HostIP: netip.IPv4Unspecified(), HostPort: 7000, ContainerIP: labCtr6[0], ContainerPort: 80}, "must be both IPv4 or both IPv6"},
		{PortMapping{Proto: TCP, HostIP: netip.IPv6Unspecified(), HostPort: 7000, ContainerIP: addrOf(c0.Addr), ContainerPort: 80}, "must be both IPv4 or both IPv6"},
		{publish(t, "[::]:7000:[fd00:99::2]:80")[0], "is in none of the networks' IPv6 subnets"},
		{publish(t, fmt.Sprintf("%s:8080:[%s]:80", up, labCtr6[1]))[0], "already published on another address"},
		{allowed, "with an allowlist"},
	} {
		if err := l.dp.PublishPorts(c.m); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PublishPorts(%s): %v, want an error saying %q", c.m, err, c.want)
		}
	}
	if n := n6(); n != 1 {
		t.Errorf("%d IPv6 ports published after refused calls, want 1", n)
	}
	// A wildcard waits for the specific binding of its port to go.
	specific := publish(t, fmt.Sprintf("%s:7000:[%s]:80", up, labCtr6[0]))
	wildcard := publish(t, fmt.Sprintf("[::]:7000:[%s]:80", labCtr6[0]))
	if err := l.dp.PublishPorts(specific...); err != nil {
		t.Fatal(err)
	}
	if got, err := ext.Greeting(up + ":7000"); err != nil || got != labExt6.String() {
		t.Errorf("a specific IPv6 binding published at run time: %q (%v)", got, err)
	}
	if err := l.dp.PublishPorts(wildcard...); err == nil || !strings.Contains(err.Error(), "already published on another address") {
		t.Errorf("wildcard next to a specific binding: %v, want it refused", err)
	}
	if err := l.dp.UnpublishPorts(specific...); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.PublishPorts(wildcard...); err != nil {
		t.Errorf("wildcard once the specific binding went: %v", err)
	}

	// [::1] published at run time: the host's sockets reach it, the
	// outside does not.
	startSock(t, l)
	if err := l.dp.PublishPorts(publish(t, fmt.Sprintf("[::1]:8085:[%s]:80", labCtr6[0]))...); err != nil {
		t.Fatal(err)
	}
	got, c := greeting6(t, l.topo.Host, "[::1]:8085", nil)
	c.Close()
	if got != labGw6.String() {
		t.Errorf("[::1]:8085 from the host: server saw %q, want %s", got, labGw6)
	}
	if _, err := ext.Greeting(up + ":8085"); err == nil {
		t.Errorf("a port published on [::1] answered the outside")
	}
}

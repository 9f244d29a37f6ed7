// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// TestIptablesLabAllow: the source allowlists of published ports as
// DOCKER-USER rules, with two external clients: the allowed one reaches
// the port, the other times out, two host ports to one container port
// keep their lists apart, the rules read back as written, an established
// connection outlives a list that leaves its client out (PublishPorts),
// and new connections obey the new list at once.
func TestIptablesLabAllow(t *testing.T) {
	requireRoot(t)
	lab.KeepHostIptables(t)
	topo := lab.Setup(t, lab.Config{Containers: []lab.ContainerConfig{{}}, Externals: []lab.ExternalConfig{{}, {}}})
	host, c0 := topo.Host, topo.Containers[0]
	x0, x1 := topo.Externals[0], topo.Externals[1]
	dp, err := New(Options{Netns: host.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	var s datapath.State
	if err := host.Do(func() error {
		s, err = datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.Ports = publish(t, fmt.Sprintf("8080:%s:80,allow=%s+192.0.2.0/24", c0.Addr, x0.Addr),
		fmt.Sprintf("8081:%s:80,allow=%s", c0.Addr, x1.Addr), fmt.Sprintf("8082:%s:80", c0.Addr))
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	c0.ServeTCP(t, c0.Addr.String()+":80", func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
		io.Copy(c, c)
	})
	checkRules := func(s datapath.State) {
		t.Helper()
		want, err := dp.opts.tables(s)
		if err != nil {
			t.Fatal(err)
		}
		got := dp.opts.parseSave("filter", lab.IptablesSave(t, host))
		if fmt.Sprint(got) != fmt.Sprint(want["filter"]) {
			t.Errorf("filter table holds\n%+v\nwant\n%+v", got, want["filter"])
		}
	}
	checkRules(s)
	save := lab.IptablesSave(t, host, "-t", "filter")
	for _, w := range []string{
		fmt.Sprintf("-A BPFNET-DOCKER-USER -s %s/32 -d %s/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -m conntrack --ctstate DNAT --ctorigdstport 8080 -j RETURN", x0.Addr, c0.Addr),
		fmt.Sprintf("-A BPFNET-DOCKER-USER -d %s/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -m conntrack --ctstate DNAT --ctorigdstport 8081 -j DROP", c0.Addr),
	} {
		if !strings.Contains(save, w+"\n") {
			t.Errorf("filter table lacks %s:\n%s", w, save)
		}
	}

	allowed := func(x *lab.External, port string) {
		t.Helper()
		if got, err := x.Greeting(x.HostAddr.String() + ":" + port); err != nil || got != x.Addr.String() {
			t.Errorf("%s -> :%s: %q %v, want it let through", x.Name, port, got, err)
		}
	}
	denied := func(x *lab.External, port string) {
		t.Helper()
		if got, err := x.Greeting(x.HostAddr.String() + ":" + port); err == nil || !lab.IsTimeout(err) {
			t.Errorf("%s -> :%s: %q %v, want a dropped SYN (a timeout)", x.Name, port, got, err)
		}
	}
	allowed(x0, "8080")
	denied(x1, "8080")
	allowed(x1, "8081")
	denied(x0, "8081")
	allowed(x0, "8082")
	allowed(x1, "8082")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := x0.DialTCP(ctx, x0.HostAddr.String()+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting := make([]byte, len(x0.Addr.String())+1)
	if _, err := io.ReadFull(conn, greeting); err != nil {
		t.Fatal(err)
	}
	moved := publish(t, fmt.Sprintf("8080:%s:80,allow=%s", c0.Addr, x1.Addr))
	if err := dp.PublishPorts(moved...); err != nil {
		t.Fatal(err)
	}
	next, err := datapath.WithPorts(s.Ports, moved...)
	if err != nil {
		t.Fatal(err)
	}
	s.Ports = next
	checkRules(s)
	fmt.Fprint(conn, "still here")
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "still here" {
		t.Errorf("established connection after its list changed: %q %v", buf, err)
	}
	denied(x0, "8080")
	allowed(x1, "8080")
}

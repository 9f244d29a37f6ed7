// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// floodSources is where the flood's forged sources come from: RFC 2544's
// benchmarking range, which the external namespace does not route, so
// the container's answers to them die there.
var floodSources = netip.MustParsePrefix("198.18.0.0/15")

// echoConn is an open connection to an echo server (echoTCP), past its
// greeting.
type echoConn struct {
	c  *net.TCPConn
	r  *bufio.Reader
	id string
}

func openEcho(ctx context.Context, ns *lab.Namespace, addr, id string) (*echoConn, error) {
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	e := &echoConn{c: c, r: bufio.NewReader(c), id: id}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := e.r.ReadString('\n'); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: greeting: %w", id, err)
	}
	return e, nil
}

// exchange sends a line and reads its echo within a second.
func (e *echoConn) exchange(n int) error {
	msg := fmt.Sprintf("%s message %d\n", e.id, n)
	e.c.SetDeadline(time.Now().Add(time.Second))
	if _, err := e.c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("%s: writing message %d: %w", e.id, n, err)
	}
	got, err := e.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: reading echo %d: %w", e.id, n, err)
	}
	if got != msg {
		return fmt.Errorf("%s: echo %q, want %q", e.id, got, msg)
	}
	return nil
}

// TestLabFlood: a SYN flood of 50,000 forged sources at a published port,
// through a table of unassured flows of 1,024 entries and a ct4 of 4,096,
// i.e. many times what either holds. Connections established before it,
// published and masqueraded, keep exchanging during and after it; a new
// connection made in its middle succeeds within a second (a few attempts
// allowed, and reported); the flood's flows are counted as half-open, none
// of them reaches ct4, and ct4 still holds every established flow. Half
// of the connections stay idle during the flood: the LRU would evict them
// first from a shared table, and an idle masqueraded connection could not
// be rebuilt (the container's next segment would be dropped as ct_miss).
func TestLabFlood(t *testing.T) {
	const (
		ctSize, halfOpen = 4096, 1024
		synCount         = 50000
		established      = 4
	)
	forBothPaths(t, func(t *testing.T, fast bool) {
		cfg := lab.Config{Containers: []lab.ContainerConfig{{Addr: "172.30.0.2"}}}
		l := startLabWith(t, cfg, Options{FastPath: fast, CTSize: ctSize, HalfOpenSize: halfOpen}, "8080:172.30.0.2:80")
		c0, ext := l.topo.Containers[0], l.topo.Externals[0]
		if c0.Addr.String() != "172.30.0.2" {
			t.Fatalf("container at %s, want 172.30.0.2", c0.Addr)
		}
		echoTCP(t, &c0.Namespace, "172.30.0.2:80")
		echoTCP(t, &ext.Namespace, ext.Addr.String()+":9000")
		published := net.JoinHostPort(ext.HostAddr.String(), "8080")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()

		// One published and one masqueraded connection of each pair
		// exchange during the flood; those of every other pair stay idle.
		var conns []*echoConn
		masq, idle := map[*echoConn]bool{}, map[*echoConn]bool{}
		for i := range established {
			c, err := openEcho(ctx, &ext.Namespace, published, fmt.Sprintf("published %d", i))
			if err != nil {
				t.Fatalf("connection before the flood: %v", err)
			}
			conns = append(conns, c)
			idle[c] = i%2 == 1
			c, err = openEcho(ctx, &c0.Namespace, net.JoinHostPort(ext.Addr.String(), "9000"), fmt.Sprintf("masqueraded %d", i))
			if err != nil {
				t.Fatalf("masqueraded connection before the flood: %v", err)
			}
			conns = append(conns, c)
			masq[c] = true
			idle[c] = i%2 == 1
		}
		defer func() {
			for _, c := range conns {
				c.c.Close()
			}
		}()
		for _, c := range conns {
			if err := c.exchange(0); err != nil {
				t.Fatalf("before the flood: %v", err)
			}
		}
		ev0 := l.events(t)

		// The flood, while every connection keeps exchanging.
		mid := make(chan struct{})
		done := make(chan struct{})
		var wg sync.WaitGroup
		during := make([]int, len(conns))
		errs := make([]error, len(conns))
		for i, c := range conns {
			if idle[c] {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 1; ; n++ {
					select {
					case <-done:
						return
					case <-time.After(10 * time.Millisecond):
					}
					if err := c.exchange(n); err != nil {
						errs[i] = err
						return
					}
					during[i]++
				}
			}()
		}
		type dial struct {
			attempts int
			took     time.Duration
			err      error
		}
		dialed := make(chan dial, 1)
		go func() {
			<-mid
			var d dial
			start := time.Now()
			for d.attempts = 1; d.attempts <= 3; d.attempts++ {
				dctx, dcancel := context.WithTimeout(ctx, time.Second)
				c, err := openEcho(dctx, &ext.Namespace, published, "new during the flood")
				dcancel()
				d.err = err
				if err == nil {
					d.err = c.exchange(1)
					c.c.Close()
					break
				}
			}
			d.took = time.Since(start)
			dialed <- d
		}()
		res, err := ext.FloodSYN(ctx, lab.Flood{
			Dst:     netip.AddrPortFrom(addrOf(ext.HostAddr), 8080),
			Sources: floodSources, Count: synCount, Burst: 500, Pause: 5 * time.Millisecond, Started: mid,
		})
		if err != nil {
			t.Fatalf("flood: %v", err)
		}
		d := <-dialed
		close(done)
		wg.Wait()
		t.Logf("flood: %d SYNs in %v (%.0f/s); new connection: %d attempt(s), %v",
			res.Sent, res.Elapsed.Round(time.Millisecond), res.Rate(), d.attempts, d.took.Round(time.Millisecond))
		if res.Sent != synCount {
			t.Fatalf("flood sent %d SYNs, want %d", res.Sent, synCount)
		}
		if d.err != nil {
			t.Errorf("new connection during the flood failed after %d attempts: %v", d.attempts-1, d.err)
		}
		for i, c := range conns {
			if errs[i] != nil {
				t.Errorf("during the flood: %v", errs[i])
			} else if during[i] == 0 && !idle[c] {
				t.Errorf("%s: no exchange during the flood", c.id)
			}
		}
		for _, c := range conns {
			if err := c.exchange(1 << 20); err != nil {
				t.Errorf("after the flood: %v", err)
			}
		}

		// What the datapath saw: the flood counted as half-open flows
		// (each SYN a new one: its sources are random), the new
		// connection promoted, nothing dropped for want of room.
		ev := l.events(t)
		halfOpened := ev[EventCTHalfOpen] - ev0[EventCTHalfOpen]
		promoted := ev[EventCTPromoted] - ev0[EventCTPromoted]
		t.Logf("ct_half_open +%d, ct_promoted +%d", halfOpened, promoted)
		if halfOpened < synCount*9/10 || halfOpened > synCount+10 {
			t.Errorf("ct_half_open rose by %d, want about the flood's %d", halfOpened, synCount)
		}
		if promoted < 1 || promoted > 3 {
			t.Errorf("ct_promoted rose by %d, want the new connection's 1 (up to 3 attempts)", promoted)
		}
		drops := l.drops(t)
		if drops[DropCTFull] != 0 {
			t.Errorf("ct_full drops: %d", drops[DropCTFull])
		}

		// ct4 holds every established flow and none of the flood's;
		// ct4_syn is where the flood's are (the positive twin of that
		// "none").
		entries, err := l.dp.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		inCt4 := map[Tuple]bool{}
		floodCt4, floodSyn := 0, 0
		for _, e := range entries {
			forged := floodSources.Contains(e.Key.Src.Addr()) || floodSources.Contains(e.Key.Dst.Addr())
			switch {
			case e.Unassured && forged:
				floodSyn++
			case !e.Unassured && forged:
				floodCt4++
			case !e.Unassured:
				inCt4[e.Key] = true
			}
		}
		if floodCt4 != 0 {
			t.Errorf("%d entries of the flood's forged sources in ct4", floodCt4)
		}
		if floodSyn == 0 || floodSyn > halfOpen {
			t.Errorf("%d entries of the flood in ct4_syn, want some, at most its %d", floodSyn, halfOpen)
		}
		for _, c := range conns {
			local := tcpAddrPort(c.c.LocalAddr())
			var key Tuple
			if masq[c] {
				key = Tuple{Proto: 6, Src: local, Dst: tcpAddrPort(c.c.RemoteAddr())}
			} else {
				key = Tuple{Proto: 6, Src: local, Dst: netip.AddrPortFrom(addrOf(ext.HostAddr), 8080)}
			}
			if !inCt4[key] {
				t.Errorf("%s: no ct4 entry at %s after the flood", c.id, key)
			}
		}

		// The daemon's housekeeping copes with the churned table.
		start := time.Now()
		if _, err := l.dp.GC(); err != nil {
			t.Errorf("GC after the flood: %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("GC after the flood took %v", took)
		}
	})
}

func tcpAddrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

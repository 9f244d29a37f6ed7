// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// The SYN flood measurement (bpfnet bench --flood): in a fresh lab per
// mode, connections are established through a published port and out
// through masquerade, then the external host floods the published port
// with SYNs from forged sources while those connections keep exchanging
// and a dialer opens new connections one after another. It reports the
// rate the flood reached, the size and use of the table it fills, how many
// established connections survived, and how long new connections took.

// Scenario keys of the flood measurement.
const (
	KeyFloodRate     = "flood_syn_rate"
	KeyFloodTable    = "flood_table_capacity"
	KeyFloodEntries  = "flood_table_entries"
	KeyFloodKept     = "flood_established_kept"
	KeyFloodDialP50  = "flood_new_conn_p50"
	KeyFloodDialP99  = "flood_new_conn_p99"
	KeyFloodCTTable  = "flood_ct4_capacity"
	floodPort        = 5003 // published; echo server in the container
	floodEgressPort  = 5004 // echo server in the external namespace
	floodEstablished = 4    // published connections, and as many masqueraded
	// floodCTSize is the eBPF datapath's ct4 in the flood lab: its
	// unassured table is an eighth of it, which the default flood fills
	// some fifty times over (and would have filled ct4 itself six times).
	floodCTSize = 16384
)

// floodSources: RFC 2544's benchmarking range, which the lab's external
// namespace does not route, so the container's answers to it die there.
var floodSources = netip.MustParsePrefix("198.18.0.0/15")

// floodModes are the modes the flood is measured in: the two NAT
// datapaths.
var floodModes = map[Mode]bool{ModeIptables: true, ModeEBPF: true}

var floodNotes = []string{
	"flood: SYNs from random sources in 198.18.0.0/15 at a published port, as fast as one raw socket sends them; " +
		"table: ebpf, the unassured table ct4_syn (ct4 is " + strconv.Itoa(floodCTSize) + "); iptables, nf_conntrack_max (global, not changed)",
	"flood: kept counts the " + strconv.Itoa(floodEstablished) + " published and " + strconv.Itoa(floodEstablished) +
		" masqueraded connections that still exchange after it (half of each kept exchanging during it, half stayed idle, as a shared LRU evicts idle flows first); " +
		"new connections: dialled one after another during the flood, 1s timeout, up to 3 attempts, time to connect and one echo",
}

// FloodScenarios are the figures of the flood measurement, in table order.
func FloodScenarios() []Scenario {
	nat := []Mode{ModeIptables, ModeEBPF}
	return []Scenario{
		{Key: KeyFloodRate, Name: "flood: SYN rate sent", Unit: "SYN/s", Modes: nat},
		{Key: KeyFloodTable, Name: "flood: capacity of the table it fills", Unit: "entries", Modes: nat},
		{Key: KeyFloodCTTable, Name: "flood: ct4 capacity (established flows)", Unit: "entries", Modes: []Mode{ModeEBPF}},
		{Key: KeyFloodEntries, Name: "flood: entries in that table after", Unit: "entries", Modes: nat},
		{Key: KeyFloodKept, Name: "flood: established flows kept", Unit: "of " + strconv.Itoa(2*floodEstablished), Modes: nat},
		{Key: KeyFloodDialP50, Name: "flood: new connection p50", Unit: "ms", LowerIsBetter: true, Modes: nat},
		{Key: KeyFloodDialP99, Name: "flood: new connection p99", Unit: "ms", LowerIsBetter: true, Modes: nat},
	}
}

// echoServer echoes every line on every connection, concurrently, until
// its listener is closed.
func echoServer(ns *lab.Namespace, addr string) (*net.TCPListener, error) {
	return ns.ListenAndServeTCP(addr, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if _, err := c.Write(line); err != nil {
				return
			}
		}
	})
}

// floodConn is a connection to an echo server.
type floodConn struct {
	c *net.TCPConn
	r *bufio.Reader
	n int
}

func dialEcho(ctx context.Context, ns *lab.Namespace, addr string) (*floodConn, error) {
	c, err := ns.DialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &floodConn{c: c, r: bufio.NewReader(c)}, nil
}

// exchange sends a line and waits up to d for its echo.
func (f *floodConn) exchange(d time.Duration) error {
	f.n++
	msg := fmt.Sprintf("flood %d\n", f.n)
	f.c.SetDeadline(time.Now().Add(d))
	if _, err := f.c.Write([]byte(msg)); err != nil {
		return err
	}
	got, err := f.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// measureFlood takes the flood figures of mode m into r.
func measureFlood(ctx context.Context, opts *Options, m Mode, r *RunResult) {
	keys := []string{KeyFloodRate, KeyFloodTable, KeyFloodEntries, KeyFloodKept, KeyFloodDialP50, KeyFloodDialP99}
	if m == ModeEBPF {
		keys = append(keys, KeyFloodCTTable)
	}
	if r.Figures == nil {
		r.Figures = map[string]float64{}
	}
	fail := func(err error) {
		if r.Errors == nil {
			r.Errors = map[string]string{}
		}
		for _, k := range keys {
			if _, ok := r.Figures[k]; !ok {
				r.Errors[k] = err.Error()
			}
		}
	}
	set := func(key string, v float64) {
		r.Figures[key] = v
		sc := FloodScenarios()[slices.IndexFunc(FloodScenarios(), func(s Scenario) bool { return s.Key == key })]
		fmt.Fprintf(opts.Progress, "  %-44s %s %s\n", sc.Name, formatValue(v), sc.Unit)
	}
	e, err := newEnv(ctx, opts, m, floodCTSize)
	if e != nil {
		defer func() {
			if err := e.close(); err != nil {
				fmt.Fprintf(opts.Progress, "  closing the %s flood lab: %v\n", m, err)
			}
		}()
	}
	if err != nil {
		fail(fmt.Errorf("setting up the flood lab: %w", err))
		return
	}
	note, err := e.flood(ctx, opts.FloodSYNs, set)
	if note != "" {
		if r.Notes == nil {
			r.Notes = map[string]string{}
		}
		r.Notes[KeyFloodRate] = note
	}
	if err != nil {
		fail(err)
	}
}

// flood runs the measurement in e and returns a note of the raw counts.
func (e *env) flood(ctx context.Context, syns int, set func(string, float64)) (string, error) {
	c := e.cAddr()
	extra := []datapath.PortMapping{{Proto: datapath.TCP, HostPort: floodPort, ContainerIP: c, ContainerPort: floodPort, Container: "c0"}}
	if err := e.apply(ctx, e.ports(extra)); err != nil {
		return "", fmt.Errorf("publishing the flood port: %w", err)
	}
	lnC, err := echoServer(&e.c.Namespace, netip.AddrPortFrom(c, floodPort).String())
	if err != nil {
		return "", fmt.Errorf("echo server in the container: %w", err)
	}
	defer lnC.Close()
	extAddr := addrOf(e.ext.Addr)
	lnX, err := echoServer(&e.ext.Namespace, netip.AddrPortFrom(extAddr, floodEgressPort).String())
	if err != nil {
		return "", fmt.Errorf("echo server in the external namespace: %w", err)
	}
	defer lnX.Close()
	published := netip.AddrPortFrom(e.target, floodPort).String()

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var conns []*floodConn
	defer func() {
		for _, fc := range conns {
			fc.c.Close()
		}
	}()
	// Pairs of a published and a masqueraded connection; those of every
	// other pair stay idle during the flood.
	for range floodEstablished {
		fc, err := dialEcho(dctx, &e.ext.Namespace, published)
		if err != nil {
			return "", fmt.Errorf("connecting before the flood: %w", err)
		}
		conns = append(conns, fc)
		fc, err = dialEcho(dctx, &e.c.Namespace, netip.AddrPortFrom(extAddr, floodEgressPort).String())
		if err != nil {
			return "", fmt.Errorf("connecting out before the flood: %w", err)
		}
		conns = append(conns, fc)
	}
	idle := func(i int) bool { return (i/2)%2 == 1 }
	for _, fc := range conns {
		if err := fc.exchange(2 * time.Second); err != nil {
			return "", fmt.Errorf("exchanging before the flood: %w", err)
		}
	}
	before, err := e.floodCount()
	if err != nil {
		return "", err
	}

	// The flood, while the connections exchange and new ones are dialled.
	done := make(chan struct{})
	var wg sync.WaitGroup
	alive := make([]bool, len(conns))
	for i, fc := range conns {
		alive[i] = true
		if idle(i) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if fc.exchange(2*time.Second) != nil {
					alive[i] = false
					return
				}
			}
		}()
	}
	var dials []float64
	dialFailures := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			start := time.Now()
			ok := false
			for attempt := 0; attempt < 3 && !ok; attempt++ {
				actx, acancel := context.WithTimeout(ctx, time.Second)
				nc, err := dialEcho(actx, &e.ext.Namespace, published)
				acancel()
				if err == nil {
					ok = nc.exchange(time.Second) == nil
					nc.c.Close()
				}
			}
			if ok {
				dials = append(dials, float64(time.Since(start).Microseconds())/1e3)
			} else {
				dialFailures++
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	res, ferr := e.ext.FloodSYN(ctx, lab.Flood{
		Dst: netip.AddrPortFrom(e.target, floodPort), Sources: floodSources, Count: syns, Burst: 1000,
	})
	close(done)
	wg.Wait()
	if ferr != nil {
		return "", fmt.Errorf("flooding: %w", ferr)
	}
	after, err := e.floodCount()
	if err != nil {
		return "", err
	}
	entries, capacity, ctCap, err := e.floodTable()
	if err != nil {
		return "", err
	}
	kept := 0
	for i, fc := range conns {
		if alive[i] && fc.exchange(2*time.Second) == nil {
			kept++
		}
	}
	set(KeyFloodRate, res.Rate())
	set(KeyFloodTable, float64(capacity))
	if ctCap > 0 {
		set(KeyFloodCTTable, float64(ctCap))
	}
	set(KeyFloodEntries, float64(entries))
	set(KeyFloodKept, float64(kept))
	note := fmt.Sprintf("%d SYNs in %v; the datapath counted %d new flows; %d new connections, %d failed",
		res.Sent, res.Elapsed.Round(time.Millisecond), after-before, len(dials), dialFailures)
	if len(dials) == 0 {
		return note, errors.New("no new connection succeeded during the flood")
	}
	slices.Sort(dials)
	set(KeyFloodDialP50, quantile(dials, 0.5))
	set(KeyFloodDialP99, quantile(dials, 0.99))
	return note, nil
}

func quantile(sorted []float64, p float64) float64 {
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

// floodCount is how many flows the datapath has started so far: eBPF, its
// ct_half_open event; iptables, the entries of the lab host namespace's
// conntrack table (the flood's stay there for the SYN_RECV timeout, a
// minute, longer than the measurement).
func (e *env) floodCount() (uint64, error) {
	if d, ok := e.dp.(*datapath.EBPF); ok {
		ev, err := d.Events()
		if err != nil {
			return 0, err
		}
		return ev[datapath.EventCTHalfOpen], nil
	}
	n, err := e.sysctlInt("net/netfilter/nf_conntrack_count")
	return uint64(n), err
}

func (e *env) sysctlInt(key string) (int, error) {
	s, err := e.topo.Host.ReadSysctl(key)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(s))
}

// floodTable is the use and capacity of the table the flood fills, and
// for eBPF the capacity of ct4.
func (e *env) floodTable() (entries, capacity, ct4 int, err error) {
	if d, ok := e.dp.(*datapath.EBPF); ok {
		entries, capacity, err = d.HalfOpenUsage()
		if err != nil {
			return 0, 0, 0, err
		}
		_, ct4, err = d.CTUsage()
		return entries, capacity, ct4, err
	}
	if entries, err = e.sysctlInt("net/netfilter/nf_conntrack_count"); err != nil {
		return 0, 0, 0, err
	}
	capacity, err = e.sysctlInt("net/netfilter/nf_conntrack_max")
	return entries, capacity, 0, err
}

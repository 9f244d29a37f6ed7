// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/bench"
	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
	"github.com/bpfnet/bpfnet/metrics"
)

func newDemoCmd() *cobra.Command {
	var compare bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a namespace lab, run the eBPF datapath in it and show what it does",
		Long: `demo builds a Docker-like lab in network namespaces (a host with a bridge,
two containers serving HTTP, an external client), publishes the containers'
ports with the eBPF datapath, and shows requests, masquerade, conntrack
and counters. It touches nothing outside its namespaces and removes them.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := runDemo(cmd.Context(), cmd.OutOrStdout()); err != nil {
				return err
			}
			if !compare {
				return nil
			}
			return demoCompare(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&compare, "compare", true, "end with a quick side-by-side measurement of iptables and eBPF (about a minute)")
	return cmd
}

// demoCompare runs the quick benchmark for Docker's iptables rules and
// bpfnet's eBPF datapath and prints the table.
func demoCompare(ctx context.Context, out, progress io.Writer) error {
	fmt.Fprintf(out, "\n== Side by side with Docker's iptables rules: bpfnet bench --quick --mode iptables --mode ebpf\n")
	fmt.Fprintln(out, "(each mode in a fresh lab; medians of 3 short runs on this machine; `sudo make bench` runs the full comparison)")
	opts := quickBenchOptions()
	opts.Modes = []bench.Mode{bench.ModeIptables, bench.ModeEBPF}
	opts.Progress = progress
	opts.Command = "bpfnet demo"
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		return fmt.Errorf("comparing with iptables: %w", err)
	}
	return rep.WriteTable(out)
}

// serveHTTP answers in ns with who the server is and who it saw.
func serveHTTP(ns *lab.Namespace, addr, name string) (func(), error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s, you are %s\n", name, host)
	})}
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

// httpGet fetches url from inside ns.
func httpGet(ctx context.Context, ns *lab.Namespace, url string) (string, error) {
	var conn net.Conn
	host := strings.TrimPrefix(url, "http://")
	host, _, _ = strings.Cut(host, "/")
	err := ns.Do(func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, "tcp", host)
		return err
	})
	if err != nil {
		return "", err
	}
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

func runDemo(ctx context.Context, out io.Writer) error {
	step := func(format string, a ...any) { fmt.Fprintf(out, "\n== "+format+"\n", a...) }
	if err := lab.Sweep(); err != nil {
		return err
	}
	topo, err := lab.New(lab.Config{Containers: []lab.ContainerConfig{{Name: "web1"}, {Name: "web2"}}})
	if err != nil {
		return fmt.Errorf("building the lab: %w", err)
	}
	defer topo.Close()
	pin, err := os.MkdirTemp("/sys/fs/bpf", "bpfnet-demo-")
	if err != nil {
		return fmt.Errorf("bpffs: %w (mount it: mount -t bpf bpf /sys/fs/bpf)", err)
	}
	defer os.RemoveAll(pin)
	c1, c2, ext := topo.Containers[0], topo.Containers[1], topo.Externals[0]
	host := ext.HostAddr.String()

	step("A Docker-like host in namespace %s", topo.Host.Name)
	fmt.Fprintf(out, "bridge %s %s (gateway %s)\n", topo.Bridges[0].Name, topo.Bridges[0].Subnet, topo.Bridges[0].Gateway)
	fmt.Fprintf(out, "container web1 %s on %s, container web2 %s on %s, both serving HTTP on :80\n", c1.Addr, c1.HostVeth, c2.Addr, c2.HostVeth)
	fmt.Fprintf(out, "external client %s reaches the host at %s through uplink %s; it has no route to %s\n", ext.Addr, host, ext.Uplink, topo.Bridges[0].Subnet)

	for _, c := range []*lab.Container{c1, c2} {
		stop, err := serveHTTP(&c.Namespace, c.Addr.String()+":80", strings.TrimPrefix(c.Name, topo.Prefix+"-"))
		if err != nil {
			return err
		}
		defer stop()
	}

	specs := []string{fmt.Sprintf("8080:%s:80", c1.Addr), fmt.Sprintf("8081:%s:80", c2.Addr)}
	step("bpfnet run --bridge %s --publish %s --publish %s", topo.Bridges[0].Name, specs[0], specs[1])
	var dp *datapath.EBPF
	err = topo.Host.Do(func() error {
		s, err := datapath.Discover([]string{topo.Bridges[0].Name}, nil, nil)
		if err != nil {
			return err
		}
		for _, spec := range specs {
			m, err := datapath.ParsePublish(spec)
			if err != nil {
				return err
			}
			s.Ports = append(s.Ports, m...)
		}
		if err := datapath.Preflight(s, datapath.PreflightOptions{PinPath: pin}); err != nil {
			return err
		}
		dp, err = datapath.NewEBPF(datapath.Options{PinPath: pin, FastPath: true})
		if err != nil {
			return err
		}
		return dp.Apply(ctx, s)
	})
	if err != nil {
		return fmt.Errorf("starting the datapath: %w", err)
	}
	defer topo.Host.Do(dp.Remove)
	fmt.Fprintln(out, "TC programs attached: from_netdev/to_netdev on the uplink, from_container/to_container on each container's veth; no iptables rule")

	step("The external client asks the host's published ports")
	for _, port := range []string{"8080", "8081"} {
		body, err := httpGet(ctx, &ext.Namespace, "http://"+host+":"+port+"/")
		if err != nil {
			return fmt.Errorf("request to %s:%s: %w", host, port, err)
		}
		fmt.Fprintf(out, "curl http://%s:%s/  ->  %s\n", host, port, body)
	}
	fmt.Fprintf(out, "(the containers see the client's real address %s: no userland proxy in between)\n", ext.Addr)

	step("A container reaches the outside through masquerade")
	stop, err := serveHTTP(&ext.Namespace, ext.Addr.String()+":8000", "the outside")
	if err != nil {
		return err
	}
	defer stop()
	body, err := httpGet(ctx, &c1.Namespace, "http://"+ext.Addr.String()+":8000/")
	if err != nil {
		return fmt.Errorf("container egress: %w", err)
	}
	fmt.Fprintf(out, "web1$ curl http://%s:8000/  ->  %s\n", ext.Addr, body)
	fmt.Fprintf(out, "(web1 is %s; the outside saw the host's uplink address %s)\n", c1.Addr, host)

	step("Connection tracking (bpfnet ct)")
	entries, err := dp.Conntrack()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KIND\tDIR\tTUPLE\tREWRITTEN TO\tPKTS")
	for _, e := range entries {
		dir := "orig"
		if e.Reply {
			dir = "reply"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", e.Kind, dir, e.Key, e.Translated, e.Packets)
	}
	w.Flush()

	step("Traffic per container, counted on its veth (bpfnet status)")
	tr, err := dp.Traffic()
	if err != nil {
		return err
	}
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER\tVETH\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES")
	for _, c := range []*lab.Container{c1, c2} {
		t := tr[uint32(c.HostVethIndex)]
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", strings.TrimPrefix(c.Name, topo.Prefix+"-"), c.HostVeth, t.RxPackets, t.RxBytes, t.TxPackets, t.TxBytes)
	}
	w.Flush()
	drops, err := dp.Drops()
	if err != nil {
		return err
	}
	var nd uint64
	for _, v := range drops {
		nd += v
	}
	fmt.Fprintf(out, "drops: %d\n", nd)

	step("What Prometheus scrapes from bpfnet run's /metrics (excerpt)")
	state := datapath.State{}
	for _, c := range []*lab.Container{c1, c2} {
		state.Endpoints = append(state.Endpoints, datapath.Endpoint{
			Container: strings.TrimPrefix(c.Name, topo.Prefix+"-"), Network: topo.Bridges[0].Name,
			Addr: netip.MustParseAddr(c.Addr.String()), HostVeth: c.HostVeth,
		})
	}
	for i, spec := range specs {
		m, _ := datapath.ParsePublish(spec)
		m[0].Container = state.Endpoints[i].Container
		state.Ports = append(state.Ports, m...)
	}
	var atts []loader.Attachment
	if err := topo.Host.Do(func() error { var err error; atts, err = loader.List(pin); return err }); err != nil {
		return err
	}
	coll := metrics.NewCollector(dp, func() datapath.State { return state },
		func() ([]loader.Attachment, error) { return atts, nil }, metrics.BuildInfo{Version: version})
	mfs, err := metrics.NewRegistry(coll).Gather()
	if err != nil {
		return fmt.Errorf("scraping: %w", err)
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "bpfnet_container_") && name != "bpfnet_published_port_connections_total" && name != "bpfnet_conntrack_entries" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetValue() != "" && l.GetName() != "network" {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			fmt.Fprintf(out, "%s{%s} %g\n", name, strings.Join(labels, ","), v)
		}
	}

	step("Cleaning up: datapath detached, namespaces %s-* removed", topo.Prefix)
	return nil
}

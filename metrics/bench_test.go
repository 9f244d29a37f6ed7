// SPDX-License-Identifier: Apache-2.0

package metrics

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/loader"
)

const (
	benchContainers = 1000
	benchCTEntries  = 10000
)

// mapReader reads real BPF maps the way *datapath.EBPF does: drops and
// events come from a loaded, unpinned datapath (NewEBPF); the per-veth
// traffic, the published-port counters and the conntrack table are maps
// this benchmark creates from the datapath's own map specs (same types,
// key and value sizes, per-CPU where the datapath's are) and fills, since
// the datapath's maps cannot be written from outside its package.
// Reading them costs what reading the datapath's costs: one iteration of
// each hash (a lookup per entry, per-CPU values summed) and a lookup per
// array slot.
type mapReader struct {
	dp                      *datapath.EBPF
	ifStats, portConns, ct4 *ebpf.Map
}

// traffic mirrors struct traffic of bpf/lib/maps.h.
type traffic struct{ RxPackets, RxBytes, TxPackets, TxBytes uint64 }

// portKey mirrors struct port_key.
type portKey struct {
	Addr  uint32
	Port  uint16
	Proto uint8
	Pad   uint8
}

func (r *mapReader) Drops() (map[datapath.DropReason]uint64, error) { return r.dp.Drops() }
func (r *mapReader) Events() (map[datapath.Event]uint64, error)     { return r.dp.Events() }

func (r *mapReader) Traffic() (map[uint32]datapath.Traffic, error) {
	out := map[uint32]datapath.Traffic{}
	var k uint32
	var vals []traffic
	it := r.ifStats.Iterate()
	for it.Next(&k, &vals) {
		var t datapath.Traffic
		for _, v := range vals {
			t.RxPackets += v.RxPackets
			t.RxBytes += v.RxBytes
			t.TxPackets += v.TxPackets
			t.TxBytes += v.TxBytes
		}
		out[k] = t
	}
	return out, it.Err()
}

func (r *mapReader) PortConnections() (map[datapath.PortBinding]uint64, error) {
	out := map[datapath.PortBinding]uint64{}
	var k portKey
	var vals []uint64
	it := r.portConns.Iterate()
	for it.Next(&k, &vals) {
		var n uint64
		for _, v := range vals {
			n += v
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], k.Addr)
		out[datapath.PortBinding{Proto: datapath.Proto(k.Proto), HostIP: netip.AddrFrom4(a), HostPort: bits.ReverseBytes16(k.Port)}] = n
	}
	return out, it.Err()
}

// PortDenied reads nothing: the benchmark publishes no allowlists.
func (r *mapReader) PortDenied() (map[datapath.PortBinding]uint64, error) {
	return map[datapath.PortBinding]uint64{}, nil
}

func (r *mapReader) CTUsage() (entries, capacity int, err error) {
	k := make([]byte, r.ct4.KeySize())
	v := make([]byte, r.ct4.ValueSize())
	it := r.ct4.Iterate()
	for it.Next(&k, &v) {
		entries++
	}
	return entries, int(r.ct4.MaxEntries()), it.Err()
}

func (r *mapReader) HalfOpenUsage() (entries, capacity int, err error) { return 0, 0, nil }

func (r *mapReader) Close() {
	r.dp.Close()
	r.ifStats.Close()
	r.portConns.Close()
	r.ct4.Close()
}

func benchIfindex(i int) uint32 { return uint32(1000 + i) }

// benchState is a host with benchContainers Compose containers, each with
// one published port, and their attachments.
func benchState() (datapath.State, []loader.Attachment) {
	s := datapath.State{
		Networks: []datapath.Network{{Name: "bridge", Bridge: "docker0", Subnet: netip.MustParsePrefix("172.17.0.0/16"), Gateway: netip.MustParseAddr("172.17.0.1")}},
	}
	var atts []loader.Attachment
	for i := range benchContainers {
		addr := netip.AddrFrom4([4]byte{172, 17, byte((i + 2) >> 8), byte(i + 2)})
		veth := fmt.Sprintf("veth%07x", i)
		s.Endpoints = append(s.Endpoints, datapath.Endpoint{
			Container: fmt.Sprintf("/app%d-web-1", i), ContainerID: fmt.Sprintf("%064x", i),
			Network: "bridge", Addr: addr, HostVeth: veth,
			Labels: map[string]string{LabelComposeProject: fmt.Sprintf("app%d", i), LabelComposeService: "web"},
		})
		s.Ports = append(s.Ports, datapath.PortMapping{Proto: datapath.TCP, HostPort: uint16(20000 + i), ContainerIP: addr, ContainerPort: 80})
		for _, p := range []struct {
			dir  loader.Direction
			prog string
		}{{loader.Ingress, datapath.ProgFromContainer}, {loader.Egress, datapath.ProgToContainer}} {
			atts = append(atts, loader.Attachment{Interface: veth, Ifindex: int(benchIfindex(i)), Direction: p.dir,
				Program: p.prog, Mode: loader.ModeTCX, ProgramID: ebpf.ProgramID(100 + 2*i)})
		}
	}
	return s, atts
}

func newMapReader(b *testing.B) *mapReader {
	b.Helper()
	requireRoot(b)
	dp, err := datapath.NewEBPF(datapath.Options{})
	if err != nil {
		b.Fatal(err)
	}
	spec, err := datapath.Spec(datapath.Options{})
	if err != nil {
		b.Fatal(err)
	}
	r := &mapReader{dp: dp}
	for name, dst := range map[string]**ebpf.Map{"if_stats": &r.ifStats, "port_conns": &r.portConns, "ct4": &r.ct4} {
		m, err := ebpf.NewMap(spec.Maps[name].Copy())
		if err != nil {
			b.Fatalf("creating %s: %v", name, err)
		}
		*dst = m
	}
	b.Cleanup(r.Close)

	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	for i := range benchContainers {
		t := make([]traffic, cpus)
		p := make([]uint64, cpus)
		for c := range t {
			t[c] = traffic{uint64(i), uint64(i) * 1500, uint64(i), uint64(i) * 100}
			p[c] = uint64(i)
		}
		if err := r.ifStats.Put(benchIfindex(i), t); err != nil {
			b.Fatal(err)
		}
		k := portKey{Port: bits.ReverseBytes16(uint16(20000 + i)), Proto: uint8(datapath.TCP)}
		if err := r.portConns.Put(k, p); err != nil {
			b.Fatal(err)
		}
	}
	key := make([]byte, r.ct4.KeySize())
	val := make([]byte, r.ct4.ValueSize())
	for i := range benchCTEntries {
		binary.NativeEndian.PutUint32(key, uint32(i)) // saddr
		key[12] = 6                                   // proto
		if err := r.ct4.Put(key, val); err != nil {
			b.Fatal(err)
		}
	}
	if n, _, err := r.CTUsage(); err != nil || n != benchCTEntries {
		b.Fatalf("conntrack table holds %d entries (%v), want %d", n, err, benchCTEntries)
	}
	return r
}

// memReader is the same content in Go maps: the scrape without syscalls.
func memReader(b *testing.B, r Reader) Reader {
	b.Helper()
	f := &fakeReader{}
	var err error
	if f.traffic, err = r.Traffic(); err != nil {
		b.Fatal(err)
	}
	if f.drops, err = r.Drops(); err != nil {
		b.Fatal(err)
	}
	if f.events, err = r.Events(); err != nil {
		b.Fatal(err)
	}
	if f.ports, err = r.PortConnections(); err != nil {
		b.Fatal(err)
	}
	if f.ctEntries, f.ctCap, err = r.CTUsage(); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkScrape measures one whole scrape of 1,000 containers (each
// with a published port and two attachments) and a conntrack table of
// 10,000 entries: an HTTP GET of Handler, uncompressed, through a
// recorder (no socket), with the registry NewRegistry builds (the Go and
// process collectors included).
//
//   - bpf_maps reads real BPF maps (see mapReader): 1,000 per-CPU traffic
//     entries, 1,000 per-CPU port counters, 10,000 conntrack entries
//     iterated, the drop and event arrays of a loaded datapath. Needs
//     root.
//   - in_memory is the same content held in Go maps: the collector's and
//     the encoding's share of the cost.
//
// Not measured: resolving veths by name (the attachments give every
// ifindex here), listing the attachments (the daemon's loader.List reads
// bpffs), the network and gzip.
func BenchmarkScrape(b *testing.B) {
	r := newMapReader(b)
	state, atts := benchState()
	for _, bc := range []struct {
		name string
		r    Reader
	}{{"bpf_maps", r}, {"in_memory", memReader(b, r)}} {
		b.Run(bc.name, func(b *testing.B) {
			c := NewCollector(bc.r, func() datapath.State { return state },
				func() ([]loader.Attachment, error) { return atts, nil }, BuildInfo{Version: "bench"})
			h := Handler(NewRegistry(c))
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			var body string
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("scrape: %d\n%s", w.Code, w.Body)
				}
				body = w.Body.String()
			}
			series := 0
			for line := range strings.Lines(body) {
				if !strings.HasPrefix(line, "#") {
					series++
				}
			}
			b.ReportMetric(float64(len(body)), "body_bytes")
			b.ReportMetric(float64(series), "series")
		})
	}
}

// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{3}, Stat{Median: 3, Min: 3, Max: 3, N: 1}},
		{[]float64{5, 1, 3}, Stat{Median: 3, Min: 1, Max: 5, N: 3}},
		{[]float64{4, 1, 3, 2}, Stat{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{[]float64{10, 10, 9, 100, 11}, Stat{Median: 10, Min: 9, Max: 100, N: 5}},
	} {
		in := append([]float64(nil), tc.in...)
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Errorf("Summarize reordered its input: %v", tc.in)
			}
		}
	}
}

func TestRatio(t *testing.T) {
	a, b := Summarize([]float64{3, 6, 9}), Summarize([]float64{2, 3, 4})
	if r, ok := Ratio(a, b); !ok || r != 2 {
		t.Errorf("Ratio = %v, %v; want 2, true", r, ok)
	}
	if _, ok := Ratio(a, Stat{}); ok {
		t.Error("Ratio with a missing figure is ok")
	}
	if _, ok := Ratio(a, Summarize([]float64{0})); ok {
		t.Error("Ratio over zero is ok")
	}
}

// sampleRuns are three runs of every mode with made-up figures: mode i has
// figure (i+1) * run for every scenario that applies to it.
func sampleRuns() []RunResult {
	var runs []RunResult
	for run := 1; run <= 3; run++ {
		for i, m := range Modes {
			r := RunResult{Run: run, Mode: m, Figures: map[string]float64{}}
			for _, s := range Scenarios() {
				if s.AppliesTo(m) {
					r.Figures[s.Key] = float64((i + 1) * run)
				}
			}
			runs = append(runs, r)
		}
	}
	return runs
}

func TestSummary(t *testing.T) {
	sum := Summary(Scenarios(), sampleRuns())
	if len(sum) != len(Scenarios()) {
		t.Fatalf("%d summaries for %d scenarios", len(sum), len(Scenarios()))
	}
	for _, s := range sum {
		for i, m := range Modes {
			st, ok := s.Stats[m]
			if !s.AppliesTo(m) {
				if ok {
					t.Errorf("%s: %s has a figure though the scenario does not apply to it", s.Key, m)
				}
				continue
			}
			k := float64(i + 1)
			if want := (Stat{Median: 2 * k, Min: k, Max: 3 * k, N: 3}); st != want {
				t.Errorf("%s %s: %+v, want %+v", s.Key, m, st, want)
			}
		}
	}
	rr := sum[0]
	if rr.Key != KeyBulk1 {
		t.Fatalf("first scenario is %s, want %s", rr.Key, KeyBulk1)
	}
	// ebpf is mode 3, iptables 2, routing 1, ebpf-redirect 4, nftables 5.
	want := map[string]float64{"ebpf/iptables": 1.5, "ebpf/routing": 3, "ebpf/ebpf-redirect": 0.75, "ebpf/nftables": 0.6}
	for k, v := range want {
		if got := rr.Ratios[k]; math.Abs(got-v) > 1e-9 {
			t.Errorf("ratio %s = %v, want %v", k, got, v)
		}
	}
	for _, s := range sum {
		if s.Key == KeyRulesPort && len(s.Ratios) != 0 {
			t.Errorf("%s has ratios %v though only the rule modes (iptables, nftables) have the figure", s.Key, s.Ratios)
		}
	}
}

func sampleReport() *Report {
	runs := sampleRuns()
	return &Report{
		Command: "bpfnet bench --quick", Kernel: "6.18", CPU: "test", CPUs: 2,
		Settings: Settings{Runs: 3, Quick: true}, Notes: reportNotes,
		Scenarios: Scenarios(), Runs: runs, Summary: Summary(Scenarios(), runs),
	}
}

func TestReportJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Command   string `json:"command"`
		Kernel    string `json:"kernel"`
		Scenarios []struct {
			Key, Name, Unit string
		} `json:"scenarios"`
		Runs []struct {
			Run     int                `json:"run"`
			Mode    string             `json:"mode"`
			Figures map[string]float64 `json:"figures"`
		} `json:"runs"`
		Summary []struct {
			Key    string                     `json:"key"`
			Stats  map[string]map[string]any  `json:"stats"`
			Ratios map[string]json.RawMessage `json:"ratios"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatalf("decoding: %v\n%s", err, b.String())
	}
	if doc.Command == "" || doc.Kernel == "" {
		t.Error("command or kernel missing")
	}
	if len(doc.Runs) != 3*len(Modes) || doc.Runs[0].Mode != "routing" || doc.Runs[0].Run != 1 {
		t.Errorf("runs: %d, first %+v", len(doc.Runs), doc.Runs[0])
	}
	if len(doc.Summary) != len(doc.Scenarios) {
		t.Fatalf("%d summaries for %d scenarios", len(doc.Summary), len(doc.Scenarios))
	}
	for _, s := range doc.Summary {
		for m, st := range s.Stats {
			for _, k := range []string{"median", "min", "max", "n"} {
				if _, ok := st[k]; !ok {
					t.Errorf("%s %s: no %q", s.Key, m, k)
				}
			}
		}
	}
	if _, ok := doc.Summary[0].Ratios["ebpf/iptables"]; !ok {
		t.Errorf("summary of %s has no ebpf/iptables ratio", doc.Summary[0].Key)
	}
}

// The chart shows every scenario with ratios once: data-plane and
// control-plane figures as a row under their name, scaling figures as a
// point over their number of ports; memory per port is in the table only.
func TestReportSVG(t *testing.T) {
	rep := sampleReport()
	var b bytes.Buffer
	if err := rep.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Well-formed, with an svg root: chartTexts fails otherwise.
	texts := chartTexts(t, b.Bytes())
	count := func(s string) int {
		n := 0
		for _, tx := range texts {
			if tx.s == s {
				n++
			}
		}
		return n
	}
	want := 0
	for _, s := range rep.Summary {
		if len(s.Ratios) == 0 {
			continue
		}
		want++
		fig, n, scale := scaleKey(s.Key)
		switch {
		case isMemoryKey(s.Key):
			if count(s.Name) != 0 || count(rowName(s)) != 0 {
				t.Errorf("memory figure %s is drawn", s.Key)
			}
		case scale:
			title, _, _ := strings.Cut(s.Name, ",")
			if count(title+" ("+s.Unit+") by other published ports") != 1 || count(strconv.Itoa(n)) == 0 {
				t.Errorf("scaling figure %s (%s over %d ports) is not drawn", s.Key, fig, n)
			}
		case isControlKey(s.Key):
			if count(s.Name) != 1 {
				t.Errorf("control-plane figure %s has %d rows, want 1", s.Key, count(s.Name))
			}
		default:
			if count(rowName(s)) != 1 {
				t.Errorf("scenario %s has %d rows, want 1", s.Key, count(rowName(s)))
			}
		}
	}
	if want == 0 {
		t.Error("the sample report has no ratios")
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"SCENARIO", "ebpf/iptables", "TCP_CRR", "2.000 [1.000-3.000]", "1.50x", "n/a"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestParseIperf(t *testing.T) {
	b, err := os.ReadFile("testdata/iperf3-client.json")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ParseIperf(b)
	if err != nil {
		t.Fatal(err)
	}
	if res.BitsPerSecond != 14421369555.989473 || res.Bytes != 1804861440 || res.Seconds != 1.001215 {
		t.Errorf("parsed %+v", res)
	}
	if _, err := ParseIperf([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("iperf3 error report: %v", err)
	}
	if _, err := ParseIperf([]byte(`{"end":{}}`)); err == nil {
		t.Error("a report without sum_received parsed")
	}
}

func TestParseProcStat(t *testing.T) {
	ct, err := ParseProcStat([]byte("cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (CPUTimes{Busy: 100 + 5 + 50 + 3 + 7 + 2, Total: 1187}); ct != want {
		t.Errorf("got %+v, want %+v", ct, want)
	}
	if _, err := ParseProcStat([]byte("intr 1 2 3\n")); err == nil {
		t.Error("a file without the cpu line parsed")
	}
}

// TestPerfLoopback runs the RR, CRR and UDP tools against a server on
// loopback, IPv4 and IPv6: no root and no namespaces needed. It checks
// that they count, never how fast. The IPv6 server takes the IPv4 one's
// port: its sockets are IPv6 only, so the two serve side by side, as the
// benchmark's container runs them.
func TestPerfLoopback(t *testing.T) {
	s4, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	s6, err := Listen(netip.AddrPortFrom(netip.IPv6Loopback(), s4.Addr().Port()))
	if err != nil {
		t.Fatalf("IPv6 server on the IPv4 server's port: %v", err)
	}
	for _, s := range []*Server{s4, s6} {
		t.Run(s.Addr().String(), func(t *testing.T) { testPerf(t, s) })
	}
	if _, err := Listen(netip.MustParseAddrPort("[::ffff:127.0.0.1]:0")); err == nil {
		t.Error("Listen took an IPv4-mapped IPv6 address")
	}
}

func testPerf(t *testing.T, s *Server) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	d := 200 * time.Millisecond
	rr, err := RR(s.Addr(), d)
	if err != nil {
		t.Fatalf("RR: %v", err)
	}
	if rr.Transactions == 0 || rr.Rate <= 0 || rr.P50us <= 0 || rr.P99us < rr.P50us {
		t.Errorf("RR: %+v", rr)
	}
	crr, err := CRR(s.Addr(), d)
	if err != nil {
		t.Fatalf("CRR: %v", err)
	}
	if crr.Connections == 0 || crr.Rate <= 0 {
		t.Errorf("CRR: %+v", crr)
	}
	udp, err := UDP(s.Addr(), d, 64)
	if err != nil {
		t.Fatalf("UDP: %v", err)
	}
	if udp.Sent == 0 || udp.Received == 0 || udp.Received > udp.Sent || udp.Rate <= 0 {
		t.Errorf("UDP: %+v", udp)
	}
	if _, err := UDP(s.Addr(), d, 2000); err == nil {
		t.Error("UDP with a 2000-byte payload ran")
	}
}

func TestPercentile(t *testing.T) {
	v := make([]int64, 100)
	for i := range v {
		v[i] = int64(i + 1)
	}
	if p := percentile(v, 50); p != 50 {
		t.Errorf("p50 = %d", p)
	}
	if p := percentile(v, 99); p != 99 {
		t.Errorf("p99 = %d", p)
	}
	if p := percentile(nil, 99); p != 0 {
		t.Errorf("p99 of nothing = %d", p)
	}
}

func TestChooseCongestion(t *testing.T) {
	for _, tc := range []struct {
		allowed, want, got string
		err                bool
	}{
		{allowed: "reno cubic bbr", want: CongestionAuto, got: "cubic"},
		{allowed: "reno bbr", want: CongestionAuto, got: "reno"},
		{allowed: "bbr", want: CongestionAuto, err: true},
		{allowed: "reno bbr", want: "bbr", got: "bbr"},
		{allowed: "reno bbr", want: "cubic", err: true},
	} {
		got, err := chooseCongestion(tc.allowed, tc.want)
		if (err != nil) != tc.err || got != tc.got {
			t.Errorf("chooseCongestion(%q, %q) = %q, %v; want %q, error %v", tc.allowed, tc.want, got, err, tc.got, tc.err)
		}
	}
}

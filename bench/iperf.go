// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// IperfResult is what the benchmark takes from `iperf3 -J` on the client.
type IperfResult struct {
	// BitsPerSecond is end.sum_received.bits_per_second: what the
	// receiver got, not what the sender pushed.
	BitsPerSecond float64
	// Bytes is end.sum_received.bytes.
	Bytes   float64
	Seconds float64
}

// ParseIperf reads the client's JSON report of iperf3.
func ParseIperf(b []byte) (IperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumReceived *struct {
				Seconds       float64 `json:"seconds"`
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return IperfResult{}, fmt.Errorf("parsing iperf3 JSON: %w", err)
	}
	if doc.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	s := doc.End.SumReceived
	if s == nil {
		return IperfResult{}, errors.New("iperf3 JSON has no end.sum_received")
	}
	return IperfResult{BitsPerSecond: s.BitsPerSecond, Bytes: s.Bytes, Seconds: s.Seconds}, nil
}

// CPUTimes are the whole machine's jiffies from the first line of
// /proc/stat.
type CPUTimes struct {
	Busy, Total uint64
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat. Busy is
// everything but idle and iowait.
func ParseProcStat(b []byte) (CPUTimes, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return CPUTimes{}, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	var t CPUTimes
	// user nice system idle iowait irq softirq steal (guest, guest_nice
	// are already counted in user and nice).
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return CPUTimes{}, fmt.Errorf("parsing /proc/stat field %q: %w", s, err)
		}
		t.Total += v
		if i != 3 && i != 4 {
			t.Busy += v
		}
	}
	return t, nil
}

func readCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, fmt.Errorf("reading /proc/stat: %w", err)
	}
	return ParseProcStat(b)
}

// userHZ is the unit of /proc/stat; Linux fixes it at 100 for user space.
const userHZ = 100

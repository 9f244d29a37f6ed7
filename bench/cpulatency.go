// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"os"
)

// cpuLatencyPath is the PM QoS device through which a process asks for a
// CPU wake-up latency bound; the request holds while the file stays open.
const cpuLatencyPath = "/dev/cpu_dma_latency"

// holdCPULatency asks the kernel for a zero wake-up latency, so that idle
// CPUs poll instead of halting, as tuned's latency-performance and
// network-latency profiles do for network benchmarks. Without it, on a VM
// whose idle vCPUs halt (cpuidle haltpoll with guest_halt_poll_ns=0), each
// cross-core wake-up of a request/response transaction is a trip through
// the hypervisor of tens of microseconds, which drowns the few
// microseconds a datapath costs. The request ends when the returned
// function closes the file, or when the process exits.
func holdCPULatency() (release func() error, err error) {
	f, err := os.OpenFile(cpuLatencyPath, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", cpuLatencyPath, err)
	}
	// The request is a 32-bit latency in microseconds: zero.
	if _, err := f.Write(make([]byte, 4)); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", cpuLatencyPath, err)
	}
	return f.Close, nil
}

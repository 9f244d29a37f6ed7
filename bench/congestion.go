// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// allowedCongestionPath lists the algorithms any namespace may take; it is
// the same in every namespace.
const allowedCongestionPath = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"

// CongestionAuto picks the congestion control of the lab's TCP endpoints:
// the kernel's default, cubic, where a namespace may use it, and reno
// otherwise (see pickCongestion).
const CongestionAuto = "auto"

// pickCongestion resolves the congestion control the lab's TCP endpoints
// use. Every mode's endpoints use the same one, set as the default of
// their namespaces before any socket opens (iperf3's -C switches after
// connect, too late to undo what the previous one set up).
//
// A namespace other than the initial one may only take the algorithms the
// host lists in net.ipv4.tcp_allowed_congestion_control. "auto" prefers
// cubic, the kernel's default, then reno; it never keeps a host default of
// bbr, whose pacing without the fq qdisc falls back to a high-resolution
// timer per burst: on a VM each such timer is a trip through the
// hypervisor, and the cross-CPU transmissions it causes reorder segments
// on veth (spurious retransmissions), capping every mode alike at a
// fraction of what the path carries.
func pickCongestion(want string) (string, error) {
	b, err := os.ReadFile(allowedCongestionPath)
	if err != nil {
		return "", fmt.Errorf("reading the congestion controls a namespace may use: %w", err)
	}
	return chooseCongestion(strings.TrimSpace(string(b)), want)
}

// chooseCongestion picks want, or for CongestionAuto cubic then reno, from
// the allowed list.
func chooseCongestion(allowed, want string) (string, error) {
	list := strings.Fields(allowed)
	if want != CongestionAuto {
		if !slices.Contains(list, want) {
			return "", fmt.Errorf("congestion control %q is not allowed in a namespace (net.ipv4.tcp_allowed_congestion_control: %s)", want, allowed)
		}
		return want, nil
	}
	for _, cc := range []string{"cubic", "reno"} {
		if slices.Contains(list, cc) {
			return cc, nil
		}
	}
	return "", fmt.Errorf("neither cubic nor reno is allowed in a namespace (net.ipv4.tcp_allowed_congestion_control: %s)", allowed)
}

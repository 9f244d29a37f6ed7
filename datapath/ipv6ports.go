// SPDX-License-Identifier: Apache-2.0

package datapath

import "fmt"

// IPv6Publisher is a Datapath that says whether it publishes ports of
// IPv6 container addresses. The project's three datapaths do; one that
// does not (a test's fake, a datapath to come) is given a state without
// them, with a warning each, rather than one it would refuse whole
// (DropIPv6Ports).
type IPv6Publisher interface {
	PublishesIPv6() bool
}

// PublishesIPv6 tells whether dp publishes ports of IPv6 container
// addresses.
func PublishesIPv6(dp Datapath) bool {
	p, ok := dp.(IPv6Publisher)
	return ok && p.PublishesIPv6()
}

// PublishesIPv6 is true: published6 and the IPv6 programs serve them.
func (d *EBPF) PublishesIPv6() bool { return true }

// DropIPv6Ports removes the ports of IPv6 container addresses from s and
// says, for each, that datapath name does not publish it.
func (s *State) DropIPv6Ports(name string) []string {
	var warnings []string
	kept := s.Ports[:0:0]
	for _, m := range s.Ports {
		if m.ContainerIP.Is6() && !m.ContainerIP.Is4In6() {
			who := m.Container
			if who == "" {
				who = m.ContainerIP.String()
			}
			warnings = append(warnings, fmt.Sprintf("container %s: port %s: the %s datapath does not publish IPv6 ports", who, m, name))
			continue
		}
		kept = append(kept, m)
	}
	s.Ports = kept
	return warnings
}

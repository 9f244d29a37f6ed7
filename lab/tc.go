// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// TCAttachments lists what is attached at TC on the namespace's
// interfaces, one line each, sorted: "<ifname> <tcx_ingress|tcx_egress>
// <n> programs" for tcx, "<ifname> clsact" for a clsact qdisc (which
// legacy cls_bpf filters hang from). An empty list is a namespace no
// datapath touched.
func (n *Namespace) TCAttachments() ([]string, error) {
	var out []string
	err := n.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			name := l.Attrs().Name
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				q, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: at})
				if err != nil {
					return fmt.Errorf("querying tcx of %s: %w", name, err)
				}
				if len(q.Programs) > 0 {
					out = append(out, fmt.Sprintf("%s %s %d programs", name, at, len(q.Programs)))
				}
			}
			qdiscs, err := netlink.QdiscList(l)
			if err != nil {
				return fmt.Errorf("listing qdiscs of %s: %w", name, err)
			}
			for _, q := range qdiscs {
				if _, ok := q.(*netlink.Clsact); ok {
					out = append(out, name+" clsact")
				}
			}
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

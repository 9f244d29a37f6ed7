// SPDX-License-Identifier: Apache-2.0

package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/bpfnet/bpfnet/datapath"
)

// PublishPorts publishes ms next to the applied state, as Docker does on a
// container's start: the rules of those ports are added, each at its
// place, and nothing else is touched, in one transaction. A mapping of a
// host binding that is published already replaces it. The new state is
// validated first; nothing changes when it is invalid.
func (d *Datapath) PublishPorts(ms ...datapath.PortMapping) error {
	return d.changePorts(func(s datapath.State) (datapath.State, error) { return datapath.PublishedState(s, ms...) })
}

// UnpublishPorts deletes the rules of the host bindings of ms (their
// container side is not looked at); unknown bindings are ignored.
func (d *Datapath) UnpublishPorts(ms ...datapath.PortMapping) error {
	return d.changePorts(func(s datapath.State) (datapath.State, error) { return datapath.UnpublishedState(s, ms...) })
}

func (d *Datapath) changePorts(edit func(datapath.State) (datapath.State, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil {
		return datapath.ErrNotApplied
	}
	next, err := edit(*d.applied)
	if err != nil {
		return err
	}
	if hasIPv6(next) != hasIPv6(*d.applied) {
		// The ip6 table comes or goes: the whole transaction of Apply.
		return d.applyLocked(context.Background(), next)
	}
	have, err := want(*d.applied)
	if err != nil {
		return err
	}
	w, err := want(next)
	if err != nil {
		return err
	}
	input, gone, err := d.diffInput(w, have)
	if err != nil {
		return err
	}
	if input != "" {
		added, err := d.nft(context.Background(), input)
		if err != nil {
			return err
		}
		for _, k := range gone {
			delete(d.handles, k)
		}
		for k, h := range added {
			d.handles[k] = h
		}
	}
	d.applied = &next
	return d.kernel.Apply(next)
}

// diffInput is the nft input that turns the chains of have into those of
// want (states that differ in their ports, so with the same chains): the
// rules only have holds are deleted by handle; each run of rules only
// want holds is inserted before the rule that follows it in want, or
// appended at the end of its chain, which leaves each chain in want's
// order.
// It returns the rules deleted too.
func (d *Datapath) diffInput(want, have map[string][]string) (string, []ruleKey, error) {
	var gone []ruleKey
	var b strings.Builder
	t := d.opts.Table
	names := make([]string, 0, len(want))
	for c := range want {
		names = append(names, c)
	}
	slices.Sort(names)
	for _, c := range names {
		w, h := want[c], have[c]
		inW, inH := set(w), set(h)
		for _, r := range h {
			if inW[r] {
				continue
			}
			k := ruleKey{c, r}
			handle, ok := d.handles[k]
			if !ok {
				return "", nil, fmt.Errorf("chain %s: no handle of rule %q", c, r)
			}
			fam, name := splitKey(c)
			fmt.Fprintf(&b, "delete rule %s %s %s handle %d\n", fam, t, name, handle)
			gone = append(gone, k)
		}
		for i, r := range w {
			if inH[r] {
				continue
			}
			// The next rule that is already there anchors the run.
			anchor := uint64(0)
			for _, n := range w[i+1:] {
				if inH[n] {
					anchor = d.handles[ruleKey{c, n}]
					break
				}
			}
			fam, name := splitKey(c)
			if anchor != 0 {
				fmt.Fprintf(&b, "insert rule %s %s %s position %d %s\n", fam, t, name, anchor, r)
			} else {
				fmt.Fprintf(&b, "add rule %s %s %s %s\n", fam, t, name, r)
			}
		}
	}
	return b.String(), gone, nil
}

func set(rules []string) map[string]bool {
	m := make(map[string]bool, len(rules))
	for _, r := range rules {
		m[r] = true
	}
	return m
}

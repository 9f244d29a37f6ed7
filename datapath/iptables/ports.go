// SPDX-License-Identifier: Apache-2.0

package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/datapath/rules"
)

var _ datapath.PortPublisher = (*Datapath)(nil)

// PublishPorts publishes ms next to the applied state, as Docker does on a
// container's start: only the rules of those ports are inserted, each at
// its place, with one iptables-restore --noflush run per table that
// changes. A mapping of a host binding that is published already replaces
// it. The new state is validated first; nothing changes when it is
// invalid.
func (d *Datapath) PublishPorts(ms ...datapath.PortMapping) error {
	return d.changePorts(func(s datapath.State) (datapath.State, error) { return datapath.PublishedState(s, ms...) })
}

// UnpublishPorts removes the host bindings of ms (their container side is
// not looked at); unknown bindings are ignored.
func (d *Datapath) UnpublishPorts(ms ...datapath.PortMapping) error {
	return d.changePorts(func(s datapath.State) (datapath.State, error) { return datapath.UnpublishedState(s, ms...) })
}

// changePorts writes the difference between the rules of the applied
// state and those of the state whose ports edit returns.
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
	if d.no6 != nil && hasIPv6(next) {
		return d.no6
	}
	// IPv4 only unless either state has IPv6, as Apply writes them.
	fams := []rules.Family{rules.IPv4}
	if hasIPv6(*d.applied) || hasIPv6(next) {
		fams = d.families()
	}
	have, err := d.opts.allTables(*d.applied, fams)
	if err != nil {
		return err
	}
	want, err := d.opts.allTables(next, fams)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var done []famTable
	for _, table := range d.order() {
		input, changed := diffInput(want.get(table), have.get(table))
		if !changed {
			continue
		}
		if err := d.restore(ctx, table, input); err != nil {
			for _, prev := range slices.Backward(done) {
				back, _ := diffInput(have.get(prev), want.get(prev))
				if rerr := d.restore(ctx, prev, back); rerr != nil {
					err = errors.Join(err, fmt.Errorf("putting the %s table back: %w", prev, rerr))
				}
			}
			return err
		}
		done = append(done, table)
	}
	d.applied = &next
	return d.kernel.Apply(next)
}

// diffInput is the iptables-restore --noflush input that turns the rules
// of have into those of want, both computed for states that differ in
// their ports (so with the same chains): the rules only have are deleted
// by their text, then those only want has are inserted at their position
// in want, chain by chain, which leaves each chain in want's order. Rules
// in built-in chains are counted from the top, where ours are.
func diffInput(want, have *ipTable) (string, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", want.name)
	changed := false
	for _, part := range [][2][]ipRule{{want.builtin, have.builtin}, {want.rules, have.rules}} {
		w, h := part[0], part[1]
		inWant := map[ipRule]bool{}
		for _, r := range w {
			inWant[r] = true
		}
		inHave := map[ipRule]bool{}
		for _, r := range h {
			inHave[r] = true
			if !inWant[r] {
				fmt.Fprintf(&b, "-D %s %s\n", r.chain, r.spec)
				changed = true
			}
		}
		pos := map[string]int{}
		for _, r := range w {
			pos[r.chain]++
			if !inHave[r] {
				fmt.Fprintf(&b, "-I %s %d %s\n", r.chain, pos[r.chain], r.spec)
				changed = true
			}
		}
	}
	b.WriteString("COMMIT\n")
	return b.String(), changed
}

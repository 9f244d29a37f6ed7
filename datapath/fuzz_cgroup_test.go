// SPDX-License-Identifier: Apache-2.0

package datapath

// Fuzz target of the cgroup skb programs (bpf/cgroup_skb.c), through
// BPF_PROG_RUN. The kernel runs a cgroup skb program on a socket of its
// own that belongs to the calling thread's cgroup, so the cgroup the
// programs see is the test process's: the fuzzed input says which of its
// ancestors (or none) is registered, and with which account. Per input:
//
//   - the verdict is 1 (pass): the programs never drop;
//   - the packet is unchanged (BPF_PROG_RUN zeroes the Ethernet header of
//     a program that does not see it: the rest must be the input);
//   - a registered ancestor counts the packet once, to its account and
//     the interface, as received (ingress) or sent (egress), with skb->len
//     plus the Ethernet header as bytes; without one nothing is counted;
//   - the registrations are as they were.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// cgroupFuzzDevs are the interfaces a packet is counted on, in the test
// namespace (BPF_PROG_RUN needs the interface to exist).
var cgroupFuzzDevs = []string{"lo", "up0", "vetha", "br0"}

type cgroupFuzzEnv struct {
	ns    *netnsRunner
	idx   map[string]uint32
	objs  cgroupObjects
	chain []uint64 // cgroup ids from the root of the hierarchy to the process's
}

func newCgroupFuzzEnv(f *testing.F) *cgroupFuzzEnv {
	f.Helper()
	requireRoot(f)
	e := &cgroupFuzzEnv{idx: map[string]uint32{}}
	e.ns = startNetns(f, func() error { return setupTestNetns(e.idx) })
	e.idx["lo"] = 1
	chain, err := processCgroupChain()
	if err != nil {
		f.Fatal(err)
	}
	e.chain = chain
	spec, err := CgroupSpec(false)
	if err != nil {
		f.Fatal(err)
	}
	if err := spec.LoadAndAssign(&e.objs, nil); err != nil {
		f.Fatalf("loading the cgroup programs: %v", err)
	}
	f.Cleanup(func() { e.objs.Close() })
	return e
}

// processCgroupChain returns the ids of the test process's cgroup v2
// folder and of its ancestors, the root first.
func processCgroupChain() ([]uint64, error) {
	root, err := DefaultCgroupPath()
	if err != nil {
		return nil, err
	}
	dir, err := ProcessCgroup(root, os.Getpid())
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return nil, err
	}
	var chain []uint64
	p := root
	parts := []string{}
	if rel != "." {
		parts = strings.Split(rel, string(filepath.Separator))
	}
	for i := 0; i <= len(parts); i++ {
		if i > 0 {
			p = filepath.Join(p, parts[i-1])
		}
		id, err := CgroupID(p)
		if err != nil {
			return nil, err
		}
		chain = append(chain, id)
	}
	return chain, nil
}

func readCgroupStats(m *ebpf.Map) (map[cgroupCgroupKey]cgroupCgroupTraffic, error) {
	out := map[cgroupCgroupKey]cgroupCgroupTraffic{}
	var k cgroupCgroupKey
	var vals []cgroupCgroupTraffic
	it := m.Iterate()
	for it.Next(&k, &vals) {
		var s cgroupCgroupTraffic
		for _, v := range vals {
			s.RxPackets += v.RxPackets
			s.RxBytes += v.RxBytes
			s.TxPackets += v.TxPackets
			s.TxBytes += v.TxBytes
		}
		out[k] = s
	}
	return out, it.Err()
}

func FuzzCgroupSkb(f *testing.F) {
	for _, s := range fuzzSeeds() {
		for i := range cgroupFuzzDevs {
			f.Add(s, uint8(i), i%2 == 0, uint8(i), uint64(0x1000+i))
		}
	}
	e := newCgroupFuzzEnv(f)
	f.Fuzz(func(t *testing.T, frame []byte, dev uint8, egress bool, level uint8, account uint64) {
		if !runnable(frame) {
			return
		}
		name := cgroupFuzzDevs[int(dev)%len(cgroupFuzzDevs)]
		prog := e.objs.CgroupSkbIngress
		if egress {
			prog = e.objs.CgroupSkbEgress
		}
		// level picks the registered ancestor; past the chain, none is.
		var registered uint64
		if int(level) < len(e.chain) && account != 0 {
			registered = e.chain[level]
			if err := e.objs.CgroupAccounts.Put(registered, account); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := e.objs.CgroupAccounts.Delete(registered); err != nil {
					t.Error(err)
				}
			}()
		}
		accountsBefore, err := readMap[uint64, uint64](e.objs.CgroupAccounts)
		if err != nil {
			t.Fatal(err)
		}

		ret, out, err := e.ns.runProg(prog, name, e.idx[name], frame)
		if err != nil {
			t.Fatal(err)
		}
		stats, err := readCgroupStats(e.objs.CgroupStats)
		if err != nil {
			t.Fatal(err)
		}
		for k := range stats {
			if err := e.objs.CgroupStats.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatal(err)
			}
		}
		accounts, err := readMap[uint64, uint64](e.objs.CgroupAccounts)
		if err != nil {
			t.Fatal(err)
		}

		where := prog.String() + " on " + name
		if ret != 1 {
			t.Errorf("%s: verdict %d, want 1 (pass)", where, ret)
		}
		if len(out) != len(frame) || !bytes.Equal(out[14:], frame[14:]) {
			t.Errorf("%s: packet changed:\n in  %x\n out %x", where, frame, out)
		}
		if len(accounts) != len(accountsBefore) || accounts[registered] != accountsBefore[registered] {
			t.Errorf("%s: registrations changed: %v -> %v", where, accountsBefore, accounts)
		}
		want := map[cgroupCgroupKey]cgroupCgroupTraffic{}
		if registered != 0 {
			k := cgroupCgroupKey{Account: account, Ifindex: e.idx[name]}
			if egress {
				want[k] = cgroupCgroupTraffic{TxPackets: 1, TxBytes: uint64(len(frame))}
			} else {
				want[k] = cgroupCgroupTraffic{RxPackets: 1, RxBytes: uint64(len(frame))}
			}
		}
		if len(stats) != len(want) {
			t.Errorf("%s: counted %+v, want %+v", where, stats, want)
			return
		}
		for k, w := range want {
			if stats[k] != w {
				t.Errorf("%s: counted %+v, want %+v", where, stats, want)
			}
		}
	})
}

// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfnet/bpfnet/lab"
)

// TestCgroupPrograms loads the cgroup skb programs (TestVerifier checks
// their sizes) and runs one without a socket.
func TestCgroupPrograms(t *testing.T) {
	requireRoot(t)
	spec, err := CgroupSpec(false)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range spec.Programs {
		if p.Type != ebpf.CGroupSKB {
			t.Errorf("%s is a %s program, want cgroup_skb", name, p.Type)
		}
	}
	if a := spec.Programs[ProgCgroupIngress].AttachType; a != ebpf.AttachCGroupInetIngress {
		t.Errorf("%s attaches to %s", ProgCgroupIngress, a)
	}
	if a := spec.Programs[ProgCgroupEgress].AttachType; a != ebpf.AttachCGroupInetEgress {
		t.Errorf("%s attaches to %s", ProgCgroupEgress, a)
	}
	var objs cgroupObjects
	err = spec.LoadAndAssign(&objs, nil)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		t.Fatalf("%-50v", ve)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	// Without a socket (BPF_PROG_RUN has none) nothing is counted and the
	// packet passes.
	pkt := make([]byte, 64)
	ret, err := objs.CgroupSkbEgress.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 1 {
		t.Errorf("egress returned %d, want 1 (pass)", ret)
	}
	var k cgroupCgroupKey
	var v []cgroupCgroupTraffic
	if objs.CgroupStats.Iterate().Next(&k, &v) {
		t.Errorf("counted a packet without a socket: %+v", k)
	}
}

func TestParseProcCgroup(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{in: "0::/docker/abc\n", want: "/docker/abc"},
		{in: "12:pids:/docker/abc\n1:name=systemd:/docker/abc\n0::/system.slice/docker-abc.scope\n", want: "/system.slice/docker-abc.scope"},
		{in: "0::/\n", want: "/"},
		{in: "4:memory:/docker/abc\n", err: "no cgroup v2 entry"},
		{in: "0::/../../other\n", err: "outside this cgroup namespace"},
		{in: "0::/docker/abc (deleted)\n", err: "was deleted"},
		{in: "0::relative\n", err: "not absolute"},
	} {
		got, err := ParseProcCgroup(strings.NewReader(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %q, %v; want error %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	// This process's own.
	p, err := ProcessCgroup("/sys/fs/cgroup/unified", os.Getpid())
	if err != nil {
		t.Logf("own cgroup: %v", err)
	} else if !strings.HasPrefix(p, "/sys/fs/cgroup/unified/") && p != "/sys/fs/cgroup/unified" {
		t.Errorf("own cgroup %s is not below the root given", p)
	}
	if _, err := ProcessCgroup("/sys/fs/cgroup", 1<<30); err == nil {
		t.Error("a process that does not exist has a cgroup")
	}
}

func TestValidateModes(t *testing.T) {
	host := CgroupEndpoint{Container: "h", ContainerID: "aaa", Mode: ModeHost, Network: "host", CgroupPath: "/sys/fs/cgroup/docker/aaa"}
	mv := CgroupEndpoint{Container: "m", ContainerID: "bbb", Mode: ModeMacvlan, Network: "mv", Interface: "eth0", Ifindex: 5, CgroupPath: "/sys/fs/cgroup/docker/bbb"}
	mv2 := mv
	mv2.Network, mv2.Interface, mv2.Ifindex = "mv2", "eth1", 6
	sh := SharedNetns{Container: "s", ContainerID: "ccc", Owner: "h", OwnerID: "aaa", CgroupPath: "/sys/fs/cgroup/docker/ccc"}
	none := NoNetwork{Container: "n", ContainerID: "ddd"}
	mod := func(f func(*State)) State {
		s := State{CgroupEndpoints: []CgroupEndpoint{host, mv, mv2}, Shared: []SharedNetns{sh}, NoNetwork: []NoNetwork{none}}
		f(&s)
		return s
	}
	if s := mod(func(*State) {}); s.Validate() != nil {
		t.Fatalf("valid state refused: %v", s.Validate())
	}
	for name, c := range map[string]struct {
		s    State
		want string
	}{
		"no id":         {mod(func(s *State) { s.CgroupEndpoints[0].ContainerID = "" }), "id of"},
		"dotted id":     {mod(func(s *State) { s.CgroupEndpoints[0].ContainerID = "a.b" }), "id of"},
		"root cgroup":   {mod(func(s *State) { s.CgroupEndpoints[0].CgroupPath = "/" }), "not an absolute"},
		"relative":      {mod(func(s *State) { s.CgroupEndpoints[0].CgroupPath = "docker/x" }), "not an absolute"},
		"unclean":       {mod(func(s *State) { s.CgroupEndpoints[0].CgroupPath = "/a/../b" }), "not an absolute"},
		"mode":          {mod(func(s *State) { s.CgroupEndpoints[0].Mode = "overlay" }), "unknown mode"},
		"host with if":  {mod(func(s *State) { s.CgroupEndpoints[0].Ifindex = 3 }), "every interface"},
		"macvlan no if": {mod(func(s *State) { s.CgroupEndpoints[1].Ifindex = 0 }), "ifindex are required"},
		"same if twice": {mod(func(s *State) { s.CgroupEndpoints[2].Ifindex = 5 }), "listed twice"},
		"two cgroups":   {mod(func(s *State) { s.CgroupEndpoints[2].CgroupPath = "/x" }), "two names or cgroups"},
		"host and more": {mod(func(s *State) {
			s.CgroupEndpoints = append(s.CgroupEndpoints, mv)
			s.CgroupEndpoints[3].ContainerID = "aaa"
		}), ""},
		"shared cgroup": {mod(func(s *State) {
			s.CgroupEndpoints[1].CgroupPath = host.CgroupPath
			s.CgroupEndpoints[2].CgroupPath = host.CgroupPath
		}), "both container"},
		"own owner":      {mod(func(s *State) { s.Shared[0].OwnerID = "ccc" }), "owner of its own"},
		"shared and cg":  {mod(func(s *State) { s.Shared[0].ContainerID = "bbb" }), "also has cgroup endpoints"},
		"shared twice":   {mod(func(s *State) { s.Shared = append(s.Shared, sh) }), "listed twice"},
		"none and cg":    {mod(func(s *State) { s.NoNetwork[0].ContainerID = "aaa" }), "without network, yet"},
		"none and share": {mod(func(s *State) { s.NoNetwork[0].ContainerID = "ccc" }), "listed twice"},
		"none nameless":  {mod(func(s *State) { s.NoNetwork[0].Container = "" }), "a name and an id"},
	} {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

func TestSumCgroupTraffic(t *testing.T) {
	m := map[CgroupCounterKey]Traffic{
		{1, LoopbackIfindex}: {RxPackets: 100, RxBytes: 1000, TxPackets: 100, TxBytes: 1000},
		{1, 4}:               {RxPackets: 1, RxBytes: 10, TxPackets: 2, TxBytes: 20},
		{1, 7}:               {RxPackets: 3, RxBytes: 30},
		{2, 4}:               {RxPackets: 50},
	}
	if got, want := SumCgroupTraffic(m, 1, 0), (Traffic{4, 40, 2, 20}); got != want {
		t.Errorf("host mode: %+v, want %+v (loopback left out)", got, want)
	}
	if got, want := SumCgroupTraffic(m, 1, 4), (Traffic{1, 10, 2, 20}); got != want {
		t.Errorf("one interface: %+v, want %+v", got, want)
	}
	if got := SumCgroupTraffic(m, 3, 0); got != (Traffic{}) {
		t.Errorf("unknown account: %+v", got)
	}
}

// cgroupLab is a lab with the datapath and cgroups of its own for the
// cgroup programs, removed at the end.
type cgroupLab struct {
	*labDatapath
	root string
}

func newCgroupLab(t *testing.T) *cgroupLab {
	t.Helper()
	l := startLabWith(t, lab.Config{}, Options{})
	root, err := DefaultCgroupPath()
	if err != nil {
		t.Fatal(err)
	}
	return &cgroupLab{labDatapath: l, root: root}
}

// mkCgroup makes a cgroup v2 folder below parent ("" the root), removed
// when the test ends and its processes have gone.
func (l *cgroupLab) mkCgroup(t *testing.T, parent string) string {
	t.Helper()
	if parent == "" {
		parent = l.root
	}
	return tempCgroup(t, parent, "bpfnet-cgroup-test-")
}

// tempCgroup makes a cgroup v2 folder below parent, named pattern and a
// random suffix, and removes it when the test ends, once the exit of the
// processes moved in has emptied it.
func tempCgroup(t *testing.T, parent, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	return dir
}

func (l *cgroupLab) apply(t *testing.T, extra State) {
	t.Helper()
	err := l.topo.Host.Do(func() error {
		s, err := Discover([]string{l.topo.Bridges[0].Name}, nil, nil)
		if err != nil {
			return err
		}
		s.CgroupEndpoints, s.Shared, s.NoNetwork = extra.CgroupEndpoints, extra.Shared, extra.NoNetwork
		return l.dp.Apply(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("applying: %v", err)
	}
}

// sinkServer accepts connections in ns on addr; each reads `in` bytes,
// answers `out` bytes and closes.
func sinkServer(t *testing.T, ns *lab.Namespace, addr string, in, out int) string {
	t.Helper()
	ln := ns.ServeTCP(t, addr, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.CopyN(io.Discard, c, int64(in))
		c.Write(bytes.Repeat([]byte{'x'}, out))
	})
	return ln.Addr().String()
}

// sendFrom runs busybox nc in cgroup and namespace ns, sending n bytes to
// addr and reading the answer until the server closes; it returns how
// many bytes came back.
func sendFrom(t *testing.T, cgroup string, ns *lab.Namespace, addr string, n int) int {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec nsenter --net="$2" -- busybox nc -w 3 "$3" "$4"`,
		"sh", cgroup, ns.Path, host, port)
	cmd.Stdin = bytes.NewReader(bytes.Repeat([]byte{'y'}, n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nc in %s to %s: %v: %s", cgroup, addr, err, stderr.String())
	}
	return len(out)
}

func (l *cgroupLab) counters(t *testing.T) map[CgroupCounterKey]Traffic {
	t.Helper()
	m, err := l.dp.CgroupTraffic()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func cgroupLinkIDs(t *testing.T, cgroup string) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []ebpf.ProgramID
	for _, h := range cgroupHooks {
		r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
		if err != nil {
			t.Fatalf("querying %s programs of %s: %v", h.pin, cgroup, err)
		}
		for _, p := range r.Programs {
			out = append(out, p.ID)
		}
	}
	return out
}

// TestCgroupCounting: the cgroup skb programs count a container's traffic
// per interface, from its point of view; a process in a cgroup below the
// container's counts for the container, one in a container sharing the
// namespace for the owner, one elsewhere not at all; the records say
// who is what; a restart adopts the pinned links and keeps the counters;
// a container leaving the state is detached and its counters dropped.
func TestCgroupCounting(t *testing.T) {
	requireRoot(t)
	lab.RequireTools(t, "busybox")
	l := newCgroupLab(t)
	ext := l.topo.Externals[0]
	ctrCg := l.mkCgroup(t, "")
	innerCg := l.mkCgroup(t, ctrCg)
	joinerCg := l.mkCgroup(t, "")
	state := State{
		CgroupEndpoints: []CgroupEndpoint{{Container: "hostc", ContainerID: "c1", Mode: ModeHost, Network: "host", CgroupPath: ctrCg,
			Labels: map[string]string{labelComposeProject: "proj", labelComposeService: "svc"}}},
		Shared:    []SharedNetns{{Container: "joiner", ContainerID: "c2", Owner: "hostc", OwnerID: "c1", CgroupPath: joinerCg}},
		NoNetwork: []NoNetwork{{Container: "nonet", ContainerID: "c3"}},
	}
	l.apply(t, state)
	acct, err := CgroupID(ctrCg)
	if err != nil {
		t.Fatal(err)
	}
	if ids := cgroupLinkIDs(t, ctrCg); len(ids) != 2 {
		t.Fatalf("programs on the container's cgroup: %v, want ingress and egress", ids)
	}

	const sent, answer = 200000, 50000
	to := sinkServer(t, &ext.Namespace, net.JoinHostPort(ext.Addr.String(), "0"), sent, answer)
	if got := sendFrom(t, ctrCg, l.topo.Host, to, sent); got != answer {
		t.Fatalf("got %d bytes back, want %d", got, answer)
	}
	c := l.counters(t)
	tr := SumCgroupTraffic(c, acct, 0)
	t.Logf("after %d bytes out, %d in: %+v", sent, answer, tr)
	// Headers: at most 40 bytes of IP and TCP (+ options) and 14 of
	// Ethernet per packet; the packets are large (GSO/GRO).
	within := func(what string, got, payload, packets uint64) {
		if got < payload || got > payload+packets*80+1000 {
			t.Errorf("%s: %d bytes for %d of payload in %d packets", what, got, payload, packets)
		}
	}
	within("transmitted", tr.TxBytes, sent, tr.TxPackets)
	within("received", tr.RxBytes, answer, tr.RxPackets)
	if tr.TxPackets == 0 || tr.RxPackets == 0 {
		t.Errorf("no packets: %+v", tr)
	}
	if on := SumCgroupTraffic(c, acct, ext.UplinkIndex); on != tr {
		t.Errorf("not all on the uplink (ifindex %d): %+v of %+v; counters %v", ext.UplinkIndex, on, tr, c)
	}

	// Loopback, from a cgroup below the container's: counted to the
	// container, under ifindex 1, which host mode leaves out.
	lo := sinkServer(t, l.topo.Host, "127.0.0.1:0", 1000, 10)
	sendFrom(t, innerCg, l.topo.Host, lo, 1000)
	c = l.counters(t)
	if got := SumCgroupTraffic(c, acct, 0); got != tr {
		t.Errorf("loopback changed the host-mode sum: %+v, was %+v", got, tr)
	}
	if lt := SumCgroupTraffic(c, acct, LoopbackIfindex); lt.TxBytes < 1000 || lt.RxBytes < 10 {
		// The client's side only: its 1000 bytes out, the 10 of the
		// answer in (the server is not in the cgroup).
		t.Errorf("loopback from the inner cgroup: %+v, want 1000 bytes out and 10 in", lt)
	}

	// The joiner's traffic is the owner's; the test process's is nobody's.
	sendFrom(t, joinerCg, l.topo.Host, to, sent)
	c = l.counters(t)
	tr2 := SumCgroupTraffic(c, acct, 0)
	within("transmitted with the joiner's", tr2.TxBytes-tr.TxBytes, sent, tr2.TxPackets-tr.TxPackets)
	joinerID, _ := CgroupID(joinerCg)
	for k := range c {
		if k.Account != acct {
			t.Errorf("counted to account %d (the joiner is %d), want only %d", k.Account, joinerID, acct)
		}
	}
	conn, err := l.topo.Host.DialTCP(context.Background(), to)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(bytes.Repeat([]byte{'z'}, sent))
	io.Copy(io.Discard, conn)
	conn.Close()
	if got := SumCgroupTraffic(l.counters(t), acct, 0); got != tr2 {
		t.Errorf("a process outside the cgroups was counted: %+v, was %+v", got, tr2)
	}

	// Records.
	recs, err := ReadContainerRecords(l.pin)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]ContainerRecord{}
	for _, r := range recs {
		byName[r.Container] = r
	}
	if r := byName["hostc"]; r.Mode != ModeHost || !r.Attached || r.CgroupID != acct || r.Account != acct || r.CgroupPath != ctrCg ||
		r.ComposeProject != "proj" || r.ComposeService != "svc" || len(r.Interfaces) != 1 || r.Interfaces[0].Network != "host" {
		t.Errorf("hostc's record: %+v", r)
	}
	if r := byName["joiner"]; r.Mode != ModeContainer || r.Owner != "hostc" || r.OwnerID != "c1" || !r.Attached || r.Account != acct || r.CgroupID != joinerID {
		t.Errorf("joiner's record: %+v", r)
	}
	if r := byName["nonet"]; r.Mode != ModeNone || r.Attached || r.CgroupPath != "" {
		t.Errorf("nonet's record: %+v", r)
	}
	if len(recs) != 3 {
		t.Errorf("%d records, want 3: %+v", len(recs), recs)
	}

	// A restart adopts the links (same link, new program) and keeps the
	// counters.
	linkID := func() link.ID {
		l, err := link.LoadPinnedLink(filepath.Join(ContainersDir(l.pin), "c1", "egress"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	before := linkID()
	progsBefore := cgroupLinkIDs(t, ctrCg)
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	err = l.topo.Host.Do(func() error {
		var err error
		l.dp, err = NewEBPF(Options{PinPath: l.pin})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Closed, the links still count.
	sendFrom(t, ctrCg, l.topo.Host, to, sent)
	l.apply(t, state)
	if after := linkID(); after != before {
		t.Errorf("restart: link %d replaced by %d, want it adopted", before, after)
	}
	progsAfter := cgroupLinkIDs(t, ctrCg)
	if len(progsAfter) != 2 || progsAfter[0] == progsBefore[0] {
		t.Errorf("restart: programs %v, were %v: want two new ones", progsAfter, progsBefore)
	}
	tr3 := SumCgroupTraffic(l.counters(t), acct, 0)
	within("transmitted across the restart", tr3.TxBytes-tr2.TxBytes, sent, tr3.TxPackets-tr2.TxPackets)

	// Gone from the state: detached, unpinned, forgotten.
	l.apply(t, State{NoNetwork: state.NoNetwork})
	for _, cg := range []string{ctrCg, joinerCg} {
		if ids := cgroupLinkIDs(t, cg); len(ids) != 0 {
			t.Errorf("programs %v still on %s", ids, cg)
		}
	}
	if _, err := os.Stat(filepath.Join(ContainersDir(l.pin), "c1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins of c1 left: %v", err)
	}
	if c := l.counters(t); len(c) != 0 {
		t.Errorf("counters left: %v", c)
	}
	if recs, _ := ReadContainerRecords(l.pin); len(recs) != 1 || recs[0].Container != "nonet" {
		t.Errorf("records: %+v, want nonet's only", recs)
	}

	// Back again, then Remove takes everything down.
	l.apply(t, state)
	if err := l.topo.Host.Do(l.dp.Remove); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	for _, cg := range []string{ctrCg, joinerCg} {
		if ids := cgroupLinkIDs(t, cg); len(ids) != 0 {
			t.Errorf("after Remove: programs %v still on %s", ids, cg)
		}
	}
}

// TestCgroupUnpinned: without a pin path the programs count while the
// datapath is open and go with Close.
func TestCgroupUnpinned(t *testing.T) {
	requireRoot(t)
	root, err := DefaultCgroupPath()
	if err != nil {
		t.Fatal(err)
	}
	l := &cgroupLab{root: root}
	cg := l.mkCgroup(t, "")
	dp, err := NewEBPF(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	st := State{CgroupEndpoints: []CgroupEndpoint{{Container: "x", ContainerID: "x", Mode: ModeMacvlan, Network: "mv", Interface: "eth0", Ifindex: 2, CgroupPath: cg}}}
	if err := dp.Apply(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if ids := cgroupLinkIDs(t, cg); len(ids) != 2 {
		t.Errorf("programs on the cgroup: %v, want 2", ids)
	}
	// A cgroup that is gone (the container exited since it was read) is
	// left out, not an error.
	st.CgroupEndpoints = append(st.CgroupEndpoints, CgroupEndpoint{Container: "y", ContainerID: "y", Mode: ModeHost, Network: "host", CgroupPath: cg + "-gone"})
	if err := dp.Apply(context.Background(), st); err != nil {
		t.Errorf("a cgroup that went away: %v", err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if ids := cgroupLinkIDs(t, cg); len(ids) != 0 {
		t.Errorf("programs %v left on the cgroup after Close", ids)
	}
}

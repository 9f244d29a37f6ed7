// SPDX-License-Identifier: Apache-2.0

package datapath

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfnet/bpfnet/loader"
)

// Cgroup skb program names (bpf/cgroup_skb.c).
const (
	ProgCgroupIngress = "cgroup_skb_ingress"
	ProgCgroupEgress  = "cgroup_skb_egress"
)

// cgroupHooks are the two attachments made to each cgroup, by the name of
// their link pin.
var cgroupHooks = []struct {
	pin    string
	attach ebpf.AttachType
}{
	{"ingress", ebpf.AttachCGroupInetIngress},
	{"egress", ebpf.AttachCGroupInetEgress},
}

// LoopbackIfindex is the ifindex of lo in every network namespace.
const LoopbackIfindex = 1

// ContainersDir is where the containers without a veth of their own are
// recorded (loader.ContainerRecordPath, a ContainerRecord) and their
// cgroup_skb links pinned (loader.ContainerLinkPin, by the hook names of
// cgroupHooks).
//
// A container sharing another's network namespace, or without a network,
// has only its record (or, when its owner is counted by cgroup, links too).
func ContainersDir(pinPath string) string { return loader.ContainersDir(pinPath) }

// ContainerRecord is what Apply records about a container that has no veth
// of its own, for `bpfnet status`: a JSON document that is the target of
// a symbolic link (bpffs has no regular files).
type ContainerRecord struct {
	Container   string `json:"container"`
	ContainerID string `json:"container_id"`
	// Mode is ModeHost, ModeMacvlan, ModeIpvlan, ModeContainer or
	// ModeNone.
	Mode string `json:"mode"`
	// Owner and OwnerID name the container whose network namespace a
	// ModeContainer container shares.
	Owner   string `json:"owner,omitempty"`
	OwnerID string `json:"owner_id,omitempty"`
	// CgroupPath is the container's cgroup v2 folder, CgroupID its id, and
	// Account the cgroup id its traffic is counted to (the owner's for a
	// shared namespace); 0 when nothing is attached.
	CgroupPath string `json:"cgroup,omitempty"`
	CgroupID   uint64 `json:"cgroup_id,omitempty"`
	Account    uint64 `json:"account,omitempty"`
	// Interfaces are the counted interfaces (CgroupEndpoints).
	Interfaces     []RecordInterface `json:"interfaces,omitempty"`
	ComposeProject string            `json:"compose_project,omitempty"`
	ComposeService string            `json:"compose_service,omitempty"`
	// Attached is set when reading: both links are pinned and the kernel
	// runs them on the container's cgroup.
	Attached bool `json:"-"`
}

// RecordInterface is a CgroupEndpoint in a ContainerRecord.
type RecordInterface struct {
	Mode      string     `json:"mode"`
	Network   string     `json:"network"`
	Interface string     `json:"interface,omitempty"`
	Ifindex   int        `json:"ifindex,omitempty"`
	Addr      netip.Addr `json:"address,omitzero"`
}

// CgroupCounterKey is a key of the cgroup counters: the account (the cgroup
// id of the container counted) and the interface, in the container's
// network namespace.
type CgroupCounterKey struct {
	Account uint64
	Ifindex uint32
}

// SumCgroupTraffic adds up the counters of account on ifindex, or, for
// ifindex 0, on every interface but loopback (host mode).
func SumCgroupTraffic(m map[CgroupCounterKey]Traffic, account uint64, ifindex int) Traffic {
	var sum Traffic
	for k, t := range m {
		if k.Account != account {
			continue
		}
		if ifindex == 0 && k.Ifindex == LoopbackIfindex || ifindex != 0 && k.Ifindex != uint32(ifindex) {
			continue
		}
		sum.RxPackets += t.RxPackets
		sum.RxBytes += t.RxBytes
		sum.TxPackets += t.TxPackets
		sum.TxBytes += t.TxBytes
	}
	return sum
}

// CgroupID is the id the kernel gives the cgroup v2 folder at path (its
// inode), as bpf_skb_cgroup_id returns it.
func CgroupID(path string) (uint64, error) { return loader.CgroupID(path) }

// ParseProcCgroup returns the cgroup v2 path ("0::/...") of a
// /proc/<pid>/cgroup file's content.
func ParseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "0::")
		if !ok {
			continue
		}
		if !path.IsAbs(rest) {
			return "", fmt.Errorf("cgroup v2 path %q is not absolute", rest)
		}
		// A path outside the reader's cgroup namespace shows as "/.." +
		// more; so does a deleted cgroup's, with " (deleted)".
		if strings.HasSuffix(rest, " (deleted)") {
			return "", fmt.Errorf("cgroup %s was deleted", strings.TrimSuffix(rest, " (deleted)"))
		}
		if path.Clean(rest) != rest || strings.HasPrefix(rest, "/..") {
			return "", fmt.Errorf("cgroup v2 path %q is outside this cgroup namespace", rest)
		}
		return rest, nil
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 entry (0::) in the process's cgroups")
}

// ProcessCgroup returns the absolute cgroup v2 folder of process pid: the
// root of the hierarchy (DefaultCgroupPath when root is "") joined with the
// "0::" line of /proc/<pid>/cgroup.
func ProcessCgroup(root string, pid int) (string, error) {
	if root == "" {
		var err error
		if root, err = DefaultCgroupPath(); err != nil {
			return "", err
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	rel, err := ParseProcCgroup(f)
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	return filepath.Join(root, rel), nil
}

// cgroupSkb holds the cgroup skb programs of an EBPF, loaded by the first
// Apply that needs them. Its zero value is ready; mu guards everything, so
// that scrapes read the counters while Apply runs.
type cgroupSkb struct {
	mu     sync.Mutex
	loaded bool
	objs   cgroupObjects
	// held are the links of the containers attached, by container id.
	held map[string]*cgroupLinks
}

type cgroupLinks struct {
	cgroupID uint64
	links    []link.Link // as cgroupHooks
}

func (l *cgroupLinks) close() error {
	var errs []error
	for _, k := range l.links {
		if k != nil {
			errs = append(errs, k.Close())
		}
	}
	return errors.Join(errs...)
}

// detach detaches the links even if another process holds them, and
// removes their pins (loader.DetachLink).
func (l *cgroupLinks) detach() error {
	var errs []error
	for _, k := range l.links {
		if k != nil {
			errs = append(errs, loader.DetachLink(k))
		}
	}
	l.links = nil
	return errors.Join(errs...)
}

// CgroupSpec returns the cgroup skb programs' collection, not loaded; with
// pinned false nothing is pinned.
func CgroupSpec(pinned bool) (*ebpf.CollectionSpec, error) {
	spec, err := loadCgroup()
	if err != nil {
		return nil, fmt.Errorf("reading the cgroup object: %w", err)
	}
	if !pinned {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	return spec, nil
}

func (c *cgroupSkb) load(pinPath string) error {
	if c.loaded {
		return nil
	}
	spec, err := CgroupSpec(pinPath != "")
	if err != nil {
		return err
	}
	var co ebpf.CollectionOptions
	if pinPath != "" {
		co.Maps.PinPath = loader.GlobalsDir(pinPath)
		if err := os.MkdirAll(co.Maps.PinPath, 0o700); err != nil {
			return fmt.Errorf("creating pin folder: %w", err)
		}
	}
	if err := spec.LoadAndAssign(&c.objs, &co); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return &VerifierError{Program: "cgroup", Err: ve}
		}
		return fmt.Errorf("loading the cgroup programs: %w", err)
	}
	c.loaded = true
	c.held = map[string]*cgroupLinks{}
	return nil
}

func (c *cgroupSkb) programs() []*ebpf.Program {
	return []*ebpf.Program{c.objs.CgroupSkbIngress, c.objs.CgroupSkbEgress}
}

// cgroupWant is a container the programs are attached for.
type cgroupWant struct {
	record ContainerRecord
	// attach: the cgroup to attach to and the container id whose
	// account it counts to ("" records only).
	cgroup  string
	account string
}

// wantedCgroups sorts out, from s, what is recorded and attached, by
// container id.
func wantedCgroups(s State) map[string]*cgroupWant {
	want := map[string]*cgroupWant{}
	for _, e := range s.CgroupEndpoints {
		w := want[e.ContainerID]
		if w == nil {
			w = &cgroupWant{
				record: ContainerRecord{
					Container: e.Container, ContainerID: e.ContainerID, Mode: e.Mode, CgroupPath: e.CgroupPath,
					ComposeProject: e.Labels[labelComposeProject], ComposeService: e.Labels[labelComposeService],
				},
				cgroup: e.CgroupPath, account: e.ContainerID,
			}
			want[e.ContainerID] = w
		}
		w.record.Interfaces = append(w.record.Interfaces, RecordInterface{
			Mode: e.Mode, Network: e.Network, Interface: e.Interface, Ifindex: e.Ifindex, Addr: e.Addr,
		})
	}
	for _, sh := range s.Shared {
		w := &cgroupWant{record: ContainerRecord{
			Container: sh.Container, ContainerID: sh.ContainerID, Mode: ModeContainer,
			Owner: sh.Owner, OwnerID: sh.OwnerID, CgroupPath: sh.CgroupPath,
			ComposeProject: sh.Labels[labelComposeProject], ComposeService: sh.Labels[labelComposeService],
		}}
		if o := want[sh.OwnerID]; o != nil && o.account == sh.OwnerID && sh.CgroupPath != "" {
			// The owner is counted by cgroup: so are the packets of
			// this container's sockets, in the owner's account.
			w.cgroup, w.account = sh.CgroupPath, sh.OwnerID
		}
		want[sh.ContainerID] = w
	}
	for _, n := range s.NoNetwork {
		want[n.ContainerID] = &cgroupWant{record: ContainerRecord{
			Container: n.Container, ContainerID: n.ContainerID, Mode: ModeNone,
			ComposeProject: n.Labels[labelComposeProject], ComposeService: n.Labels[labelComposeService],
		}}
	}
	return want
}

// Compose labels, recorded for status.
const (
	labelComposeProject = "com.docker.compose.project"
	labelComposeService = "com.docker.compose.service"
)

// applyCgroups makes the cgroup attachments, accounts and records match
// s. The programs are loaded when first needed: for a container to count,
// or to clean up what a previous run left pinned. A container whose cgroup
// is gone (it exited since the state was read) is recorded, not attached.
func (d *EBPF) applyCgroups(s State) error {
	c := &d.cg
	c.mu.Lock()
	defer c.mu.Unlock()
	pinPath := d.opts.PinPath
	want := wantedCgroups(s)
	if !c.loaded {
		attach := false
		for _, w := range want {
			attach = attach || w.cgroup != ""
		}
		leftovers := false
		if pinPath != "" {
			for _, p := range []string{ContainersDir(pinPath), loader.GlobalPin(pinPath, "cgroup_accounts")} {
				if _, err := os.Stat(p); err == nil {
					leftovers = true
				}
			}
		}
		if !attach && !leftovers && len(want) == 0 {
			return nil
		}
		if attach || leftovers {
			if err := c.load(pinPath); err != nil {
				return err
			}
		}
	}

	// The cgroups, by id, and the accounts.
	ids := map[string]uint64{} // container id -> cgroup id
	for id, w := range want {
		if w.cgroup == "" {
			continue
		}
		cgid, err := loader.CgroupID(w.cgroup)
		if errors.Is(err, os.ErrNotExist) {
			w.cgroup = "" // exited: the next state forgets it
			continue
		}
		if err != nil {
			return fmt.Errorf("container %s: cgroup %s: %w", w.record.Container, w.cgroup, err)
		}
		ids[id] = cgid
	}
	accounts := map[uint64]uint64{}
	for id, w := range want {
		cgid, ok := ids[id]
		if !ok {
			continue
		}
		acct, ok := ids[w.account]
		if !ok {
			w.cgroup = "" // the owner's cgroup is gone
			continue
		}
		accounts[cgid] = acct
		w.record.CgroupID, w.record.Account = cgid, acct
	}
	if c.loaded {
		// Accounts first, so the first packets after attaching count.
		have, err := readMap[uint64, uint64](c.objs.CgroupAccounts)
		if err != nil {
			return fmt.Errorf("reading cgroup accounts: %w", err)
		}
		var undo undoLog
		if err := syncMap(&undo, c.objs.CgroupAccounts, have, accounts); err != nil {
			undo.run()
			return fmt.Errorf("programming cgroup accounts: %w", err)
		}
	}

	var errs []error
	if pinPath != "" {
		if err := os.MkdirAll(ContainersDir(pinPath), 0o700); err != nil {
			return fmt.Errorf("creating pin folder: %w", err)
		}
	}
	for id, w := range want {
		if w.cgroup != "" {
			err := c.attach(pinPath, id, w.cgroup, ids[id])
			if _, serr := os.Stat(w.cgroup); err != nil && errors.Is(serr, os.ErrNotExist) {
				// It exited meanwhile: the next state forgets it.
				w.cgroup, w.record.CgroupID, w.record.Account = "", 0, 0
				err = c.detach(pinPath, id)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("container %s: %w", w.record.Container, err))
				continue
			}
		} else if err := c.detach(pinPath, id); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", w.record.Container, err))
		}
		if pinPath != "" {
			if err := writeContainerRecord(pinPath, w.record); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// What is not wanted any more: held, or pinned by a previous run.
	gone := map[string]bool{}
	for id := range c.held {
		if want[id] == nil {
			gone[id] = true
		}
	}
	if pinPath != "" {
		ents, err := os.ReadDir(ContainersDir(pinPath))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, e := range ents {
			if want[e.Name()] == nil {
				gone[e.Name()] = true
			}
		}
	}
	for id := range gone {
		if err := c.detach(pinPath, id); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", id, err))
			continue
		}
		if pinPath != "" {
			if err := os.RemoveAll(loader.ContainerDir(pinPath, id)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.loaded {
		live := map[uint64]bool{}
		for _, a := range accounts {
			live[a] = true
		}
		errs = append(errs, dropStaleCgroupCounters(c.objs.CgroupStats, live))
	}
	return errors.Join(errs...)
}

// attach attaches both programs to cgroup (id cgid) for container id,
// keeping links that are already there: held ones, or pinned ones of a
// previous run, whose program is replaced in place.
func (c *cgroupSkb) attach(pinPath, id, cgroup string, cgid uint64) error {
	if h := c.held[id]; h != nil {
		if h.cgroupID == cgid {
			return nil
		}
		// The container's cgroup was made anew (a restart): new links.
		if err := c.detach(pinPath, id); err != nil {
			return err
		}
	}
	h := &cgroupLinks{cgroupID: cgid}
	progs := c.programs()
	for i, hook := range cgroupHooks {
		l, err := loader.AttachCgroup(containerLinkPin(pinPath, id, hook.pin), progs[i], cgroup, hook.attach)
		if err != nil {
			errs := []error{err, h.detach()}
			if pinPath != "" {
				for _, hk := range cgroupHooks {
					errs = append(errs, loader.DetachPin(loader.ContainerLinkPin(pinPath, id, hk.pin)))
				}
			}
			return errors.Join(errs...)
		}
		h.links = append(h.links, l)
	}
	c.held[id] = h
	return nil
}

// containerLinkPin is where the link of container id on hook is pinned; ""
// (not pinned) without a pin path.
func containerLinkPin(pinPath, id, hook string) string {
	if pinPath == "" {
		return ""
	}
	return loader.ContainerLinkPin(pinPath, id, hook)
}

// detach takes the links of container id down, held or pinned, and
// removes their pins.
func (c *cgroupSkb) detach(pinPath, id string) error {
	var errs []error
	if h := c.held[id]; h != nil {
		errs = append(errs, h.detach())
		delete(c.held, id)
	}
	if pinPath != "" {
		for _, hook := range cgroupHooks {
			errs = append(errs, loader.DetachPin(loader.ContainerLinkPin(pinPath, id, hook.pin)))
		}
	}
	return errors.Join(errs...)
}

func dropStaleCgroupCounters(m *ebpf.Map, live map[uint64]bool) error {
	var k cgroupCgroupKey
	var vals []cgroupCgroupTraffic
	var stale []cgroupCgroupKey
	it := m.Iterate()
	for it.Next(&k, &vals) {
		if !live[k.Account] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading cgroup counters: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("dropping cgroup counters: %w", err)
		}
	}
	return nil
}

// close releases the file descriptors: pinned links stay attached, unpinned
// ones go.
func (c *cgroupSkb) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded {
		return nil
	}
	var errs []error
	for id, h := range c.held {
		errs = append(errs, h.close())
		delete(c.held, id)
	}
	errs = append(errs, c.objs.Close())
	c.loaded = false
	return errors.Join(errs...)
}

// remove detaches every cgroup link, held or pinned, and removes the
// records and the pins of the cgroup maps.
func (c *cgroupSkb) remove(pinPath string) error {
	c.mu.Lock()
	var errs []error
	ids := map[string]bool{}
	for id := range c.held {
		ids[id] = true
	}
	if pinPath != "" {
		ents, _ := os.ReadDir(ContainersDir(pinPath))
		for _, e := range ents {
			ids[e.Name()] = true
		}
	}
	for id := range ids {
		errs = append(errs, c.detach(pinPath, id))
	}
	if pinPath != "" {
		if err := os.RemoveAll(ContainersDir(pinPath)); err != nil {
			errs = append(errs, err)
		}
		for _, name := range []string{"cgroup_accounts", "cgroup_stats"} {
			if err := os.Remove(loader.GlobalPin(pinPath, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	c.mu.Unlock()
	errs = append(errs, c.close())
	return errors.Join(errs...)
}

// CgroupTraffic returns the counters of the cgroup programs, summed over
// CPUs; empty before any container is counted by cgroup.
func (d *EBPF) CgroupTraffic() (map[CgroupCounterKey]Traffic, error) {
	d.cg.mu.Lock()
	defer d.cg.mu.Unlock()
	if !d.cg.loaded {
		if d.opts.PinPath == "" {
			return map[CgroupCounterKey]Traffic{}, nil
		}
		// Opened with OpenPinned, or nothing counted yet: the pin, if any.
		return ReadCgroupTraffic(d.opts.PinPath)
	}
	return readCgroupTraffic(d.cg.objs.CgroupStats)
}

// ReadCgroupTraffic reads the counters of the cgroup programs of a running
// datapath from their pinned map; empty when it has none.
func ReadCgroupTraffic(pinPath string) (map[CgroupCounterKey]Traffic, error) {
	m, err := ebpf.LoadPinnedMap(loader.GlobalPin(pinPath, "cgroup_stats"), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return map[CgroupCounterKey]Traffic{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening the cgroup counters: %w", err)
	}
	defer m.Close()
	return readCgroupTraffic(m)
}

func readCgroupTraffic(m *ebpf.Map) (map[CgroupCounterKey]Traffic, error) {
	out := map[CgroupCounterKey]Traffic{}
	var k cgroupCgroupKey
	var vals []cgroupCgroupTraffic
	it := m.Iterate()
	for it.Next(&k, &vals) {
		var t Traffic
		for _, v := range vals {
			t.add(bpfTraffic(v))
		}
		out[CgroupCounterKey{Account: k.Account, Ifindex: k.Ifindex}] = t
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading cgroup counters: %w", err)
	}
	return out, nil
}

// maxRecord bounds a record: a symbolic link's target is at most a page.
const maxRecord = 4000

func writeContainerRecord(pinPath string, r ContainerRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if len(data) > maxRecord {
		// Many interfaces, long names: keep what status needs most.
		r.Interfaces = nil
		if data, err = json.Marshal(r); err != nil {
			return err
		}
	}
	dir := loader.ContainerDir(pinPath, r.ContainerID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	return loader.WriteRecord(loader.ContainerRecordPath(pinPath, r.ContainerID), data)
}

// ReadContainerRecords lists the containers without a veth of their own
// that the datapath at pinPath knows, sorted by name, with whether their
// programs are attached.
func ReadContainerRecords(pinPath string) ([]ContainerRecord, error) {
	ents, err := os.ReadDir(ContainersDir(pinPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []ContainerRecord
	for _, e := range ents {
		target, err := os.Readlink(loader.ContainerRecordPath(pinPath, e.Name()))
		if err != nil {
			continue // being written or removed
		}
		var r ContainerRecord
		if err := json.Unmarshal([]byte(target), &r); err != nil {
			return nil, fmt.Errorf("malformed record of container %s: %w", e.Name(), err)
		}
		r.Attached = r.CgroupID != 0
		for _, hook := range cgroupHooks {
			l, err := link.LoadPinnedLink(loader.ContainerLinkPin(pinPath, e.Name(), hook.pin), nil)
			if err != nil {
				r.Attached = false
				continue
			}
			info, err := l.Info()
			if err != nil || info.Cgroup() == nil || info.Cgroup().CgroupId != r.CgroupID {
				r.Attached = false
			}
			l.Close()
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Container != out[j].Container {
			return out[i].Container < out[j].Container
		}
		return out[i].ContainerID < out[j].ContainerID
	})
	return out, nil
}

// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// StateDir holds one small record per live topology, named after its
// prefix and containing the PID (and process start time) of the process
// that created it. Sweep uses it to find topologies whose creator died.
const StateDir = "/run/bpfnet-lab"

// lockState takes an exclusive flock on StateDir/.lock, serialising the
// few operations that must not interleave between processes.
func lockState() (func(), error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating state directory %s: %w", StateDir, err)
	}
	p := filepath.Join(StateDir, ".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

type record struct {
	pid   int
	start uint64 // process start time in clock ticks since boot
}

// processStart returns the start time of pid from /proc/<pid>/stat, which
// tells a live process from a later one that reused its PID.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading stat of pid %d: %w", pid, err)
	}
	// The command name (field 2) may contain spaces and parentheses;
	// fields after the last ')' are well-formed. starttime is field 22.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing stat of pid %d: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	const idx = 22 - 3 // f[0] is field 3
	if len(f) <= idx {
		return 0, fmt.Errorf("parsing stat of pid %d: only %d fields", pid, len(f)+2)
	}
	v, err := strconv.ParseUint(f[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing start time of pid %d: %w", pid, err)
	}
	return v, nil
}

func (r record) String() string { return fmt.Sprintf("pid=%d\nstart=%d\n", r.pid, r.start) }

func parseRecord(b []byte) (record, error) {
	var r record
	var havePID, haveStart bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "pid":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return r, fmt.Errorf("bad pid %q", v)
			}
			r.pid, havePID = n, true
		case "start":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("bad start %q", v)
			}
			r.start, haveStart = n, true
		}
	}
	if !havePID || !haveStart {
		return r, errors.New("incomplete record")
	}
	return r, nil
}

// alive reports whether the process that wrote the record still runs.
func (r record) alive() bool {
	start, err := processStart(r.pid)
	return err == nil && start == r.start
}

func recordPath(prefix string) string { return filepath.Join(StateDir, prefix) }

// claimPrefix atomically creates the state record for prefix. It fails
// with an error matching fs.ErrExist if the record already exists.
func claimPrefix(prefix string) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return fmt.Errorf("creating state directory %s: %w", StateDir, err)
	}
	pid := os.Getpid()
	start, err := processStart(pid)
	if err != nil {
		return err
	}
	// Write a temporary file and hard-link it into place: the record
	// appears complete or not at all, and never replaces another one.
	tmp := filepath.Join(StateDir, fmt.Sprintf(".%s.%d.tmp", prefix, pid))
	if err := os.WriteFile(tmp, []byte(record{pid: pid, start: start}.String()), 0o644); err != nil {
		return fmt.Errorf("writing state record %s: %w", tmp, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, recordPath(prefix)); err != nil {
		return fmt.Errorf("creating state record for %s: %w", prefix, err)
	}
	return nil
}

// prefixInUse reports whether anything with the prefix exists already.
func prefixInUse(prefix string) bool {
	if _, err := os.Lstat(recordPath(prefix)); err == nil {
		return true
	}
	m, _ := filepath.Glob(filepath.Join(NetnsDir, prefix+"-*"))
	return len(m) > 0
}

// Cleanup removes everything a topology with this prefix may have left:
// every namespace NetnsDir/<prefix>-* (deleting a namespace deletes the
// links in it, and their veth peers elsewhere), any link named after the
// prefix in the process's own network namespace, and the state record.
// It returns nil when there is nothing to remove.
//
// Namespace destruction in the kernel is asynchronous and is delayed for as
// long as anything (an open socket, a netlink handle, a process) still
// references the namespace; the names are free again immediately.
func Cleanup(prefix string) error {
	if !ValidPrefix(prefix) {
		return fmt.Errorf("cleaning up prefix %q: refusing an invalid prefix (want %s)", prefix, prefixRe)
	}
	var errs []error
	if err := removePrefixed(NetnsDir, prefix, deleteNamespace); err != nil {
		errs = append(errs, err)
	}
	if err := deleteOwnLinks(prefix); err != nil {
		errs = append(errs, err)
	}
	// Pinned maps live, and hold their memory, until their pins go.
	if err := removePrefixed(BPFFS, prefix, removePins); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(recordPath(prefix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing state record: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleaning up prefix %s: %w", prefix, err)
	}
	return nil
}

// BPFFS is the bpffs mount under which labs keep their pins (see PinDir).
const BPFFS = "/sys/fs/bpf"

// PinDir is a bpffs directory for the pins of what runs in the lab with
// prefix (a datapath under test, a benchmark's). Cleanup, and so Sweep
// after a killed run, removes it with everything pinned under it.
func PinDir(prefix, name string) string {
	return filepath.Join(BPFFS, prefix+"-"+name)
}

// removePins removes a PinDir and its pins.
func removePins(path string) error {
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("removing pins: %w", err)
	}
	return nil
}

// removePrefixed calls remove on every entry of dir named after prefix
// ("<prefix>-..."). A missing dir has none.
func removePrefixed(dir, prefix string, remove func(path string) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			if err := remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// deleteOwnLinks deletes links named after the prefix in the process's
// network namespace (normally the real host's). The lab never creates
// links there, so this only matters after a bug or a manual experiment.
func deleteOwnLinks(prefix string) error {
	ns, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("opening own network namespace: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("creating netlink handle in own namespace: %w", err)
	}
	defer h.Close()
	links, err := linkList(h)
	if err != nil {
		return fmt.Errorf("listing links in own namespace: %w", err)
	}
	var errs []error
	for _, l := range links {
		if !ownsLink(prefix, l.Attrs().Name) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("deleting link %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// linkList lists links, retrying dumps interrupted by concurrent changes
// (other processes may be creating links at the same time).
func linkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range 10 {
		var links []netlink.Link
		links, err = h.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

// Sweep removes the leftovers of earlier runs whose creating process is
// gone, e.g. a test binary killed by `go test -timeout` before its cleanups
// ran. Only topologies with a state record in StateDir are considered, and
// a topology whose creator still runs is never touched, so Sweep is safe to
// call from concurrent test processes.
func Sweep() error {
	entries, err := os.ReadDir(StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweeping: listing %s: %w", StateDir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			// Temporary record of a claim that died half-way.
			if strings.HasSuffix(name, ".tmp") {
				if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
					os.Remove(filepath.Join(StateDir, name))
				}
			}
			continue
		}
		if !ValidPrefix(name) {
			continue
		}
		b, err := os.ReadFile(recordPath(name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed concurrently
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading state record %s: %w", name, err))
			continue
		}
		// Records appear atomically, so an unparsable one is corrupt and
		// is treated as dead.
		if r, err := parseRecord(b); err == nil && r.alive() {
			continue
		}
		if err := Cleanup(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweeping %s: %w", StateDir, err)
	}
	return nil
}

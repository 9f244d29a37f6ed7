// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/metrics"
)

// Defaults of the agent and the plugin.
const (
	DefaultSocket   = "/run/bpfnet/cni.sock"
	DefaultStateDir = "/var/lib/bpfnet/cni"
)

// Attachment is one container interface that the plugin attached: what
// the agent keeps for it and serves. It is the body of an ADD.
type Attachment struct {
	// ContainerID and IfName identify the attachment, as CNI does
	// (CNI_CONTAINERID, CNI_IFNAME); Network is the CNI network's name.
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Network     string `json:"network"`
	Netns       string `json:"netns,omitempty"`
	// Bridge and HostVeth are the host side: the bridge plugin's bridge
	// and the host end of the container's veth.
	Bridge   string `json:"bridge"`
	HostVeth string `json:"hostVeth"`
	// Addr is the container's IPv4 address, in Subnet, whose gateway is
	// Gateway; MAC is the container interface's.
	Addr    netip.Addr   `json:"addr"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	MAC     string       `json:"mac,omitempty"`
	// Addr6, Subnet6 and Gateway6 are their IPv6 twins on a dual-stack
	// network (host-local with an IPv6 range); the zero values on an
	// IPv4 one.
	Addr6    netip.Addr   `json:"addr6,omitzero"`
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// Ports are runtimeConfig.portMappings.
	Ports []Port `json:"ports,omitempty"`
	// Pod and Namespace are K8S_POD_NAME and K8S_POD_NAMESPACE from
	// CNI_ARGS, for status and metrics.
	Pod       string `json:"pod,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Port is one entry of runtimeConfig.portMappings, as the portMappings
// capability has it.
type Port struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Key identifies an attachment: its container id and interface.
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// Key is a's.
func (a Attachment) Key() Key { return Key{a.ContainerID, a.IfName} }

// Name is how the attachment's container is shown: namespace/pod when
// the runtime said (Kubernetes), else the container id, shortened.
func (a Attachment) Name() string {
	if a.Pod != "" {
		if a.Namespace != "" {
			return a.Namespace + "/" + a.Pod
		}
		return a.Pod
	}
	if len(a.ContainerID) > 12 {
		return a.ContainerID[:12]
	}
	return a.ContainerID
}

// Labels on the endpoints of pods, as Kubernetes runtimes label their
// containers; metrics reads them for the pod and namespace labels.
const (
	LabelPodName      = metrics.LabelPodName
	LabelPodNamespace = metrics.LabelPodNamespace
)

// CNI's rule for container ids (SPEC.md, "Parameters"): letters, digits,
// and '_', '.', '-' after the first.
var containerIDRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// CheckKey refuses a key that is not a CNI container id and interface
// name (and so no safe file name).
func CheckKey(k Key) error {
	if !containerIDRe.MatchString(k.ContainerID) || len(k.ContainerID) > 200 {
		return fmt.Errorf("container id %q: want letters, digits, '_', '.' and '-'", k.ContainerID)
	}
	if k.IfName == "" || len(k.IfName) > 15 || strings.ContainsAny(k.IfName, "/ :") || k.IfName == "." || k.IfName == ".." {
		return fmt.Errorf("interface name %q is not an interface name", k.IfName)
	}
	return nil
}

// Mappings are a's ports as the datapath takes them. A hostIP of "" or
// :: is every host address of both families, as the portmap plugin has
// it: one mapping to the IPv4 address and, on a dual-stack network, one
// to the IPv6 address; 0.0.0.0 is every IPv4 address, and a specific
// host address maps its family's container address.
func (a Attachment) Mappings() ([]datapath.PortMapping, error) {
	var out []datapath.PortMapping
	for _, p := range a.Ports {
		proto, err := datapath.ParseProto(p.Protocol)
		if err != nil {
			return nil, fmt.Errorf("port mapping %d: %w", p.HostPort, err)
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return nil, fmt.Errorf("port mapping %d:%d: ports must be within 1-65535", p.HostPort, p.ContainerPort)
		}
		m := datapath.PortMapping{Proto: proto, HostPort: uint16(p.HostPort), ContainerPort: uint16(p.ContainerPort), Container: a.Name()}
		v4, v6 := true, a.Addr6.IsValid()
		var hip netip.Addr
		if p.HostIP != "" {
			if hip, err = netip.ParseAddr(p.HostIP); err != nil || hip.Is4In6() || hip.Zone() != "" {
				return nil, fmt.Errorf("port mapping %d: host address %q is not an IPv4 or IPv6 address", p.HostPort, p.HostIP)
			}
			switch {
			case hip == netip.IPv6Unspecified():
				hip = netip.Addr{}
			case hip.Is4():
				v6 = false
			default:
				if !a.Addr6.IsValid() {
					return nil, fmt.Errorf("port mapping %d: host address %s is IPv6, and the container has no IPv6 address", p.HostPort, hip)
				}
				v4 = false
			}
		}
		if v4 {
			m4 := m
			m4.ContainerIP = a.Addr
			if hip.Is4() && !hip.IsUnspecified() {
				m4.HostIP = hip
			}
			out = append(out, m4)
		}
		if v6 {
			// The datapath takes the wildcard of IPv6 as ::, as the
			// Docker source writes it.
			m6 := m
			m6.ContainerIP, m6.HostIP = a.Addr6, netip.IPv6Unspecified()
			if hip.Is6() {
				m6.HostIP = hip
			}
			out = append(out, m6)
		}
	}
	return out, nil
}

// Check refuses an attachment the agent could not serve, before anything
// is kept.
func (a Attachment) Check() error {
	if err := CheckKey(a.Key()); err != nil {
		return err
	}
	if a.Network == "" {
		return errors.New("no network name")
	}
	if a.Bridge == "" || a.HostVeth == "" {
		return errors.New("no bridge and host veth: bpfnet must be chained after the bridge plugin")
	}
	if !a.Addr.Is4() || !a.Subnet.IsValid() || !a.Subnet.Addr().Is4() || !a.Subnet.Contains(a.Addr) {
		return fmt.Errorf("address %s in %s: want an IPv4 address in its subnet (an IPv6-only pod is not served)", a.Addr, a.Subnet)
	}
	if a.Gateway.IsValid() && !a.Subnet.Contains(a.Gateway) {
		return fmt.Errorf("gateway %s is outside %s", a.Gateway, a.Subnet)
	}
	if a.Addr6.IsValid() || a.Subnet6.IsValid() || a.Gateway6.IsValid() {
		if !a.Addr6.Is6() || a.Addr6.Is4In6() || a.Addr6.Zone() != "" || !a.Subnet6.IsValid() || !a.Subnet6.Addr().Is6() || !a.Subnet6.Contains(a.Addr6) {
			return fmt.Errorf("IPv6 address %s in %s: want an IPv6 address in its subnet", a.Addr6, a.Subnet6)
		}
		if a.Gateway6.IsValid() && !a.Subnet6.Contains(a.Gateway6) {
			return fmt.Errorf("IPv6 gateway %s is outside %s", a.Gateway6, a.Subnet6)
		}
	}
	_, err := a.Mappings()
	return err
}

// Store keeps attachments as one JSON file each in a folder, written
// whole (a temporary file renamed over the old), so that a crash leaves
// either the old attachment or the new one. Who changes the folder holds
// its Lock: the agent for each request, the plugin when it deletes an
// attachment itself (DeleteOffline).
type Store struct{ Dir string }

// Prepare makes the folder, private to its owner, and refuses one that
// another user owns or may write: its files are the state the agent
// serves.
func (s Store) Prepare() error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	return CheckPrivateDir(s.Dir)
}

// CheckPrivateDir refuses a folder that is not this process's user's, or
// that others may write to (and so swap the files in it).
func CheckPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("%s is not a folder", dir)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to this agent's uid %d", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s may be written by others (mode %v): want it writable by its owner only", dir, fi.Mode().Perm())
	}
	return nil
}

// Lock takes the folder's lock (an flock of its file .lock), waiting
// until ctx is done; unlock releases it.
func (s Store) Lock(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", s.Dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", s.Dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DeleteOffline is DEL without the agent: under the folder's lock, it
// removes the attachment of k when it is network's, so that the agent,
// when it starts, does not serve it again. removed says whether there
// was one. The datapath keeps serving it until then.
func (s Store) DeleteOffline(ctx context.Context, k Key, network string) (removed bool, err error) {
	if err := CheckKey(k); err != nil {
		return false, err
	}
	if _, err := os.Stat(s.Dir); errors.Is(err, os.ErrNotExist) {
		return false, nil // no agent ever kept an attachment here
	}
	unlock, err := s.Lock(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	a, had, err := s.Get(k)
	if err != nil || !had || a.Network != network {
		return false, err
	}
	return true, s.Delete(k)
}

func (s Store) path(k Key) string { return filepath.Join(s.Dir, k.ContainerID+"_"+k.IfName+".json") }

// Put writes a.
func (s Store) Put(a Attachment) error {
	if err := CheckKey(a.Key()); err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.path(a.Key()))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("keeping attachment %s: %w", a.Key(), err)
	}
	return nil
}

// Get reads the attachment of k; ok is false when there is none.
func (s Store) Get(k Key) (a Attachment, ok bool, err error) {
	if err := CheckKey(k); err != nil {
		return a, false, err
	}
	b, err := os.ReadFile(s.path(k))
	if errors.Is(err, os.ErrNotExist) {
		return a, false, nil
	}
	if err != nil {
		return a, false, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, false, fmt.Errorf("reading attachment %s: %w", k, err)
	}
	return a, true, nil
}

// Delete removes the attachment of k; one that is not there is no error.
func (s Store) Delete(k Key) error {
	if err := CheckKey(k); err != nil {
		return err
	}
	if err := os.Remove(s.path(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List reads every attachment, in the order of their keys. A file that
// cannot be read is an error: the agent does not serve a state it only
// partly knows.
func (s Store) List() ([]Attachment, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var a Attachment
		if err := json.Unmarshal(b, &a); err != nil {
			return nil, fmt.Errorf("reading %s: %w", e.Name(), err)
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y Attachment) int { return strings.Compare(x.Key().String(), y.Key().String()) })
	return out, nil
}

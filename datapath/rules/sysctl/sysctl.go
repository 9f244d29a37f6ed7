// SPDX-License-Identifier: Apache-2.0

// Package sysctl holds the kernel settings the rule datapaths
// (datapath/iptables, datapath/nftables) need besides their rules, as
// Docker sets them: net.ipv4.ip_forward on, and route_localnet on the
// bridges of containers with a port bound to a loopback address, set back
// to what it was when no such port is left, and net.ipv6.conf.all.forwarding
// on when a network has an IPv6 subnet (as dockerd does for a network
// with IPv6). It writes /proc/sys in a network namespace given by path
// (or the caller's).
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/bpfnet/bpfnet/datapath"
)

// Settings are the settings of one datapath in one namespace; the zero
// value is not usable, New makes one.
type Settings struct {
	netns string
	// localnet holds, by bridge, the route_localnet value Apply found
	// before it turned it on.
	localnet map[string]string
}

// New returns the settings of the namespace at path ("" for the caller's).
func New(path string) *Settings {
	return &Settings{netns: path, localnet: map[string]string{}}
}

// Apply turns forwarding on (IPv6 forwarding too for a dual-stack state),
// and route_localnet on the bridges that serve
// a port of s bound to a loopback address (and back off on the others).
func (k *Settings) Apply(s datapath.State) error {
	need := map[string]bool{}
	for _, m := range s.Ports {
		if m.HostIP.IsLoopback() {
			if i := slices.IndexFunc(s.Networks, func(n datapath.Network) bool { return n.Subnet.Contains(m.ContainerIP) }); i >= 0 {
				need[s.Networks[i].Bridge] = true
			}
		}
	}
	err := InNetns(k.netns, func() error {
		if err := set("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if slices.ContainsFunc(s.Networks, func(n datapath.Network) bool { return n.Subnet6.IsValid() }) {
			if err := set("net/ipv6/conf/all/forwarding", "1"); err != nil {
				return err
			}
		}
		for br := range need {
			if _, ours := k.localnet[br]; ours {
				continue
			}
			key := "net/ipv4/conf/" + br + "/route_localnet"
			old, err := get(key)
			if err != nil {
				return err
			}
			if old == "1" {
				continue
			}
			if err := set(key, "1"); err != nil {
				return err
			}
			k.localnet[br] = old
		}
		return nil
	})
	return errors.Join(err, k.restore(need))
}

// Restore sets route_localnet back on every bridge Apply changed;
// ip_forward stays on.
func (k *Settings) Restore() error { return k.restore(nil) }

// restore sets route_localnet back on the bridges Apply changed and keep
// does not name. A bridge that is gone is forgotten.
func (k *Settings) restore(keep map[string]bool) error {
	return InNetns(k.netns, func() error {
		var errs []error
		for br, old := range k.localnet {
			if keep[br] {
				continue
			}
			err := set("net/ipv4/conf/"+br+"/route_localnet", old)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			delete(k.localnet, br)
		}
		return errors.Join(errs...)
	})
}

func get(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// set writes a sysctl unless it already has the value.
func set(key, value string) error {
	if v, err := get(key); err == nil && v == value {
		return nil
	}
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// InNetns runs fn on a thread switched into the namespace at path ("":
// the caller's): /proc/sys/net follows the namespace of the thread that
// opens a file. If the thread cannot be switched back it stays locked, and
// the runtime discards it when the goroutine ends.
func InNetns(path string, fn func() error) (err error) {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening the thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("leaving network namespace %s (thread discarded): %w", path, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

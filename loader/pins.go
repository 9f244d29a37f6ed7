// SPDX-License-Identifier: Apache-2.0

package loader

import (
	"fmt"
	"path/filepath"
	"strings"
)

// The bpffs layout of a datapath, as functions of its base folder (the pin
// path, /sys/fs/bpf/bpfnet by default). Every package names pins and
// records through these functions; the names on disk are a compatibility
// promise (a running datapath is upgraded in place over them), so they
// change only with a migration.
//
//	<base>/globals/<map>                                 pinned maps (GlobalPin)
//	<base>/devices/<ifname>/links/<dir>_<prog>           tcx links (LinkPin)
//	<base>/devices/<ifname>/legacy/<dir>_<prog>          cls_bpf records (LegacyRecordPath)
//	<base>/cgroup/<prog>                                 sock_addr links (SockLinkPin)
//	<base>/cgroup/containers/<id>/info                   container record (ContainerRecordPath)
//	<base>/cgroup/containers/<id>/{ingress,egress}       cgroup_skb links (ContainerLinkPin)
//	<base>/warnings                                      warnings record (WarningsRecord)
//	<base>/host-firewall                                 host firewall record (HostFirewallRecord)
//	<base>/iptables                                      iptables datapath marker (IptablesMarker)
//
// Interface and program names are escaped with [EscapeName].

// GlobalsDir is where the shared maps are pinned.
func GlobalsDir(base string) string { return filepath.Join(base, "globals") }

// GlobalPin is the pin of the shared map name.
func GlobalPin(base, name string) string { return filepath.Join(GlobalsDir(base), name) }

// DevicesDir holds one directory per interface.
func DevicesDir(base string) string { return filepath.Join(base, "devices") }

// DeviceDir holds the pins and records of one interface:
// <base>/devices/<ifname>, with ifname escaped by [EscapeName].
func DeviceDir(base, ifname string) string {
	return filepath.Join(DevicesDir(base), EscapeName(ifname))
}

func linksDir(base, ifname string) string  { return filepath.Join(DeviceDir(base, ifname), "links") }
func legacyDir(base, ifname string) string { return filepath.Join(DeviceDir(base, ifname), "legacy") }

// LinkPin is the bpffs path of the pinned tcx link of prog on ifname/dir.
func LinkPin(base, ifname string, dir Direction, prog string) string {
	return filepath.Join(linksDir(base, ifname), entryName(dir, prog))
}

// LegacyRecordPath is where a cls_bpf attachment of prog on ifname/dir is
// recorded (a symlink whose target is JSON; bpffs allows no regular files).
func LegacyRecordPath(base, ifname string, dir Direction, prog string) string {
	return filepath.Join(legacyDir(base, ifname), entryName(dir, prog))
}

// CgroupDir holds the cgroup links: those of the sock_addr programs, and
// the containers' folders ([ContainersDir]).
func CgroupDir(base string) string { return filepath.Join(base, "cgroup") }

// SockLinkPin is the pin of the cgroup link of the sock_addr program prog.
func SockLinkPin(base, prog string) string { return filepath.Join(CgroupDir(base), EscapeName(prog)) }

// ContainersDir holds one folder per container counted or recorded without
// a veth of its own.
func ContainersDir(base string) string { return filepath.Join(CgroupDir(base), "containers") }

// ContainerDir is the folder of container id (a validated container id:
// no escaping needed).
func ContainerDir(base, id string) string { return filepath.Join(ContainersDir(base), id) }

// ContainerRecordPath is the record of container id (a symlink whose
// target is JSON).
func ContainerRecordPath(base, id string) string {
	return filepath.Join(ContainerDir(base, id), "info")
}

// ContainerLinkPin is the pin of the cgroup_skb link of container id on
// hook ("ingress" or "egress").
func ContainerLinkPin(base, id, hook string) string {
	return filepath.Join(ContainerDir(base, id), hook)
}

// WarningsRecord is where the daemon keeps the warnings of the state it
// applied last.
func WarningsRecord(base string) string { return filepath.Join(base, "warnings") }

// HostFirewallRecord is where the daemon keeps its last check of the host
// firewall.
func HostFirewallRecord(base string) string { return filepath.Join(base, "host-firewall") }

// IptablesMarker is a folder that marks that the iptables datapath holds
// rules, so that `bpfnet down` removes them (bpffs takes folders, not
// files).
func IptablesMarker(base string) string { return filepath.Join(base, "iptables") }

var (
	escaper   = strings.NewReplacer("%", "%25", ".", "%2e")
	unescaper = strings.NewReplacer("%25", "%", "%2e", ".")
)

// EscapeName turns an interface or program name into a bpffs file name.
// bpffs refuses '.' in names (reserved for future use), yet interface names
// such as "eth0.100" are common: '.' becomes "%2e" and '%' becomes "%25".
// Other names are unchanged.
func EscapeName(s string) string { return escaper.Replace(s) }

// UnescapeName is the inverse of EscapeName.
func UnescapeName(s string) (string, error) {
	u := unescaper.Replace(s)
	if EscapeName(u) != s {
		return "", fmt.Errorf("malformed escaped name %q", s)
	}
	return u, nil
}

func entryName(dir Direction, prog string) string { return dir.String() + "_" + EscapeName(prog) }

func parseEntryName(name string) (Direction, string, error) {
	d, prog, ok := strings.Cut(name, "_")
	if !ok {
		return 0, "", fmt.Errorf("malformed entry name %q", name)
	}
	dir, err := ParseDirection(d)
	if err != nil {
		return 0, "", err
	}
	if prog, err = UnescapeName(prog); err != nil {
		return 0, "", err
	}
	if err := validName("program", prog); err != nil {
		return 0, "", err
	}
	return dir, prog, nil
}

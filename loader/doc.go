// SPDX-License-Identifier: Apache-2.0

// Package loader attaches bpfnet's TC (traffic control) eBPF programs to
// network interfaces and keeps those attachments alive across daemon restarts.
//
// # What it does
//
// [Attach] hooks a loaded SchedCLS program into the ingress or egress path of
// an interface. It prefers tcx (BPF links on the TC hook, Linux 6.6+): the
// link is created with [link.Tail] as anchor and pinned in bpffs at
// [LinkPin], so it survives the process. Attaching again over an existing pin
// updates the link in place (BPF_LINK_UPDATE), which swaps the program
// atomically: there is no instant at which packets see no program.
//
// On kernels without tcx (or with [ModeLegacy]) it falls back to the classic
// clsact qdisc with a cls_bpf filter in direct-action mode. The filter is
// named "bpfnet-<prog>" and lives at a priority reserved for that program
// (see [LegacyPriorityBase]) with handle [LegacyHandle]; re-attaching uses
// RTM_NEWTFILTER without NLM_F_EXCL on the same priority/handle, which the
// kernel turns into an atomic program swap. A clsact qdisc is created when
// missing but is never deleted: other tools share it. Legacy filters are held
// by the kernel, not by a pin, so the loader records them in bpffs (see
// [LegacyRecordPath]) to find them again after a restart.
//
// [Detach], [DetachAll], [List] and [Forget] work from those pins and records
// only: they never touch programs or filters that bpfnet did not create.
//
// [AttachCgroup] does the same for cgroup programs (cgroup_skb and the
// sock_addr hooks): it adopts a link pinned on the same cgroup and hook by
// updating its program in place, and otherwise attaches and pins a new link.
// tcx and cgroup links share that attach-or-adopt, and one way down,
// [DetachLink]: detach in the kernel, unpin, close. Unpinning alone is not
// enough, as a process holding the link would keep its program attached;
// every replaced or removed link goes through DetachLink ([DetachPin],
// [DetachTree] for a pin or a folder of them).
//
// [BridgePorts] and [WatchLinks] discover the veth ports of the Docker
// bridges so that the daemon knows where to attach.
//
// # Layout in bpffs
//
//	<base>/globals                              maps shared by all programs (pinned by others)
//	<base>/devices/<ifname>/links/<dir>_<prog>  pinned tcx links
//	<base>/devices/<ifname>/legacy/<dir>_<prog> records of cls_bpf filters
//	<base>/cgroup/<prog>                        pinned sock_addr cgroup links
//	<base>/cgroup/containers/<id>/...           a container's record and cgroup_skb links
//
// pins.go names every path of this layout, with the daemon's records too;
// other packages use its functions, never a folder name of their own.
//
// Names are escaped with [EscapeName] because bpffs refuses '.' in file names
// ("eth0.100" is stored as "eth0%2e100"); base itself must not contain one.
// bpffs also refuses regular files, so a legacy record is a symbolic link
// whose target is a small JSON document (priority, handle and ifindex of the
// filter).
//
// # Network namespaces
//
// Interface indexes and netlink requests are resolved in the network namespace
// of the calling OS thread. Callers that work inside another namespace must
// call [runtime.LockOSThread], switch with netns.Set, call the loader and
// switch back before unlocking. The records do not remember the namespace:
// use one base directory per namespace. Detaching a pinned tcx link works from
// any namespace; Attach and everything about legacy filters need the right
// one.
//
// # Kernel requirements
//
// tcx needs Linux 6.6 or later; link pins and BPF_LINK_UPDATE come with it.
// The fallback needs the clsact qdisc and cls_bpf with direct-action
// (Linux 4.5+). bpffs must be mounted at or above base.
//
// # Ordering and verdicts
//
// Several programs can be attached to the same hook under different names.
// With tcx they run in attach order (each new link goes to the tail); with the
// fallback each name gets the lowest free priority of the reserved range, so
// they also run in first-attach order. A program must return TCX_NEXT
// (TC_ACT_UNSPEC, -1) to let the next one run; TC_ACT_OK and the other verdicts
// end processing at that hook. tcx programs run before any cls_bpf filter.
//
// # What it does not do
//
// It does not load or verify programs, pin maps (see [GlobalsDir]), compile
// anything, attach XDP programs, or follow interfaces across
// namespaces or renames. It does not notice by itself that an interface went
// away: the daemon calls [Forget] for that (the kernel has already dropped the
// attachment). Calls are serialised inside one process by a mutex; two
// processes must not manage the same base concurrently.
package loader

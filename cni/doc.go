// SPDX-License-Identifier: Apache-2.0

// Package cni is bpfnet's CNI state source: the attachments that the
// chained plugin (cmd/bpfnet-cni, CNI type "bpfnet") asks the node agent
// (`bpfnet run --cni`) to serve, how they are kept, and the wire format
// between the two.
//
// # Design
//
// The plugin is a short-lived process that runtimes (containerd, CRI-O,
// Podman, kubelet through them) start once per operation. It holds no
// state and touches no map: it turns the CNI request (the bridge plugin's
// prevResult, runtimeConfig.portMappings, CNI_ARGS) into an Attachment
// and sends it as one Request over the agent's unix socket
// (DefaultSocket, under /run/bpfnet). The agent owns everything else:
//
//   - It checks the request against its whole state, Docker's and CNI's
//     together (a host port already mapped by another pod or by a Docker
//     container is refused with a CNI error, never taken over, and so is
//     one that a socket of the host holds, read with sock_diag:
//     hostsock.go; an address another endpoint holds is refused too),
//     keeps the
//     attachment durably as one JSON file in its state folder
//     (DefaultStateDir, /var/lib/bpfnet/cni), and applies through the
//     daemon's one reconcile path (daemon.Daemon.Reconcile, the Source
//     here reading the folder), answering once the datapath serves it.
//   - The folder, not the agent's memory, is the truth: an agent that
//     restarts or is upgraded reads it again, and the datapath's pinned
//     maps and conntrack stayed in place meanwhile, so no pod loses its
//     ports or its flows.
//   - DEL removes the file, applies, and drops the flows of the pod's
//     address; it is idempotent. CHECK compares the file with the state
//     the daemon applied. GC (CNI 1.1) removes every attachment of the
//     network that is not in cni.dev/valid-attachments, from the folder,
//     so it does not depend on the runtime's cache. STATUS (CNI 1.1) is
//     answered by the agent: when no agent answers, the plugin says
//     error 50 (the plugin is not available).
//   - Requests are served one at a time, under the folder's lock (an
//     flock of its .lock), so the concurrent ADDs and DELs that runtimes
//     issue are safe. A DEL that finds no agent removes the attachment's
//     file under that lock itself and succeeds, as the spec wants a DEL
//     to; the next agent does not serve it.
//   - Only root's connections are served (SO_PEERCRED, on a socket of
//     mode 0600 in a folder only its owner may write, as is the state
//     folder); a request is at most MaxRequest bytes; a DEL removes only
//     its own network's attachment of the key; a GC without a
//     well-formed valid list removes nothing; the requests begun when the
//     agent stops are answered before it closes the datapath.
//
// A dual-stack attachment (an IPv6 address in prevResult too) is served
// on both families: a hostPort on every address ("" or ::) is published
// for each, as the portmap plugin does, and the IPv6 subnet is
// masqueraded as the IPv4 one.
//
// What it does not do: IPv6-only pods (an attachment needs its IPv4
// address), address management or the bridge (the
// bridge and host-local plugins before it do), and the interfaces of the
// datapath on the uplinks, which the agent finds from the default routes
// as `bpfnet run` always does. It needs what the agent needs: root in the
// host's network namespace, bpffs, kernel 6.6 or newer for tcx.
package cni

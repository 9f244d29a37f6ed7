// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/datapath"
)

// MaxRequest bounds a request: a pod's attachment with its ports, or a
// GC's list of valid attachments, is far smaller.
const MaxRequest = 1 << 20

// requestTimeout bounds the work of one request. It does not end with
// the agent's shutdown: a request begun is finished and answered.
const requestTimeout = 2 * time.Minute

// Applier is the daemon as the server drives it: daemon.Daemon.
type Applier interface {
	// Reconcile makes the datapath match the source's state now.
	Reconcile(ctx context.Context, reason string) (bool, error)
	// Current is the state last applied.
	Current() datapath.State
}

// Maps reads what the datapath holds, for CHECK: datapath.EBPF.
type Maps interface {
	Published() ([]datapath.PublishedPort, error)
	Endpoints() ([]datapath.EndpointInfo, error)
}

// Flusher drops the flows of an address, for DEL: datapath.EBPF.
type Flusher interface {
	FlushAddr(netip.Addr) (int, error)
}

// Server answers the plugin's requests on the agent's socket.
type Server struct {
	Source *Source
	Daemon Applier
	// Datapath is the daemon's; its maps are read by CHECK when it is a
	// Maps, and its flows dropped by DEL when it is a Flusher.
	Datapath datapath.Datapath
	// PinPath is the datapath's bpffs folder.
	PinPath string
	Log     *slog.Logger
	// HostSockets lists the host's sockets that hold ports, which an
	// ADD's hostPorts must not take; nil is the agent's network
	// namespace's (HostSockets).
	HostSockets func() ([]HostSocket, error)
	// AllowedUIDs are the users whose connections are served (checked
	// with SO_PEERCRED); nil is root alone, as runtimes run the plugin.
	AllowedUIDs []uint32

	mu       sync.Mutex // one request at a time
	inflight sync.WaitGroup
}

// Listen makes the socket at path, replacing one a previous agent left,
// reachable by its owner (root) only, in a folder that no other user may
// write to (where one could put a socket of their own in its place).
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := CheckPrivateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("the CNI socket's folder: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another agent answers there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers on ln until ctx is done, then closes it and returns once
// the requests begun are answered: the caller may then close the
// datapath. A request that comes later finds no agent (the plugin's DEL
// then removes the attachment itself).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer s.inflight.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.inflight.Add(1)
		go func() {
			defer s.inflight.Done()
			s.serveConn(context.WithoutCancel(ctx), c)
		}()
	}
}

// peerAllowed checks the connecting process's user with SO_PEERCRED.
func (s *Server) peerAllowed(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errors.New("not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("reading the peer's credentials: %w", credErr)
	}
	allowed := s.AllowedUIDs
	if allowed == nil {
		allowed = []uint32{0}
	}
	if !slices.Contains(allowed, cred.Uid) {
		return fmt.Errorf("uid %d (pid %d) may not use the bpfnet agent", cred.Uid, cred.Pid)
	}
	return nil
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(requestTimeout + time.Minute))
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var req Request
	var resp Response
	lr := &io.LimitedReader{R: c, N: MaxRequest + 1}
	// The request is read (bounded) before the peer is checked, so that
	// a refusal reaches the client rather than a reset.
	derr := json.NewDecoder(lr).Decode(&req)
	if err := s.peerAllowed(c); err != nil {
		req = Request{}
		resp.Error = &Error{Code: CodeNotPermitted, Msg: "refused", Details: err.Error()}
	} else if err := derr; err != nil && lr.N <= 0 {
		resp.Error = errorf(CodeDecodingFailure, "the request is larger than %d bytes", MaxRequest)
	} else if err != nil {
		resp.Error = errorf(CodeDecodingFailure, "decoding the request: %v", err)
	} else {
		resp = s.Handle(ctx, req)
	}
	if resp.Error != nil {
		s.log().Warn("cni request refused", "command", req.Command, "container_id", req.Attachment.ContainerID,
			"ifname", req.Attachment.IfName, "code", resp.Error.Code, "error", resp.Error.Error())
	} else {
		s.log().Info("cni request", "command", req.Command, "container_id", req.Attachment.ContainerID,
			"ifname", req.Attachment.IfName, "pod", req.Attachment.Pod, "namespace", req.Attachment.Namespace)
	}
	json.NewEncoder(c).Encode(resp)
}

// Handle answers one request.
func (s *Server) Handle(ctx context.Context, req Request) Response {
	if req.PinPath != "" && s.PinPath != "" && filepath.Clean(req.PinPath) != filepath.Clean(s.PinPath) {
		return Response{Error: errorf(CodeInvalidConfig, "pinPath %s: this agent's datapath is at %s", req.PinPath, s.PinPath)}
	}
	if req.Command == CmdStatus {
		if len(s.Daemon.Current().Uplinks) == 0 {
			return Response{Error: errorf(CodePluginNotAvailable, "the bpfnet agent has no uplink to serve")}
		}
		return Response{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The plugin's DEL without the agent changes the folder too.
	unlock, lerr := s.Source.Store.Lock(ctx)
	if lerr != nil {
		return Response{Error: errorf(CodeTryAgainLater, "%v", lerr)}
	}
	defer unlock()
	var err *Error
	var resp Response
	switch req.Command {
	case CmdAdd:
		err = s.add(ctx, req.Attachment)
	case CmdDel:
		err = s.del(ctx, req.Attachment.Key(), req.Attachment.Network)
	case CmdCheck:
		err = s.check(req.Attachment)
	case CmdGC:
		resp.Removed, err = s.gc(ctx, req.Attachment.Network, req.Valid)
	default:
		err = errorf(CodeInvalidConfig, "unknown command %q", req.Command)
	}
	resp.Error = err
	return resp
}

// changed tells the source's watchers (the daemon's loop) of a change
// applied.
func (s *Server) changed() { s.Source.Notify() }

func (s *Server) add(ctx context.Context, a Attachment) *Error {
	if err := a.Check(); err != nil {
		return errorf(CodeInvalidConfig, "%v", err)
	}
	prev, had, err := s.Source.Store.Get(a.Key())
	if err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	if had && prev.Network != a.Network {
		return errorf(CodeInvalidConfig, "attachment %s is network %s's, not %s's", a.Key(), prev.Network, a.Network)
	}
	if _, err := s.Source.With(ctx, a); err != nil {
		code := uint(CodeApply)
		if errors.Is(err, datapath.ErrPortTaken) {
			code = CodePortTaken
		}
		return &Error{Code: code, Msg: "bpfnet cannot serve this attachment", Details: err.Error()}
	}
	if err := s.checkHostSockets(a, prev, had); err != nil {
		return err
	}
	if err := s.Source.Store.Put(a); err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	undo := func() {
		if had {
			s.Source.Store.Put(prev)
		} else {
			s.Source.Store.Delete(a.Key())
		}
		if _, err := s.Daemon.Reconcile(ctx, "cni add undone"); err != nil {
			s.log().Error("applying the state without a refused attachment", "error", err)
		}
	}
	if _, err := s.Daemon.Reconcile(ctx, "cni add"); err != nil {
		undo()
		return &Error{Code: CodeApply, Msg: "applying the datapath", Details: err.Error()}
	}
	// What changed between the check and the apply (the veth went away,
	// a Docker container took the port meanwhile) left the attachment
	// out of the state applied, or some of its ports: refuse it whole.
	cur := s.Daemon.Current()
	if !slices.ContainsFunc(cur.Endpoints, func(e datapath.Endpoint) bool {
		return e.Addr == a.Addr && e.HostVeth == a.HostVeth
	}) {
		undo()
		return errorf(CodeApply, "the state applied does not serve %s (its veth went away?)", a.HostVeth)
	}
	want, _ := a.Mappings()
	for _, m := range want {
		if !slices.ContainsFunc(cur.Ports, m.Equal) {
			undo()
			return errorf(CodePortTaken, "port %s was taken while the attachment was applied", m)
		}
	}
	s.changed()
	return nil
}

// checkHostSockets refuses the hostPorts of a that a host process holds
// (hostsock.go); those the attachment had already (prev) are its own.
func (s *Server) checkHostSockets(a, prev Attachment, had bool) *Error {
	want, _ := a.Mappings()
	if had {
		old, _ := prev.Mappings()
		want = slices.DeleteFunc(want, func(m datapath.PortMapping) bool {
			return slices.ContainsFunc(old, func(o datapath.PortMapping) bool {
				return o.Proto == m.Proto && o.HostIP == m.HostIP && o.HostPort == m.HostPort
			})
		})
	}
	if len(want) == 0 {
		return nil
	}
	list := s.HostSockets
	if list == nil {
		list = HostSockets
	}
	socks, err := list()
	if err != nil {
		return errorf(CodeTryAgainLater, "%v", err)
	}
	if err := checkHostSockets(want, socks); err != nil {
		return &Error{Code: CodePortTaken, Msg: "bpfnet cannot serve this attachment", Details: err.Error()}
	}
	return nil
}

// del removes the attachment of k in network. One that is not there, or
// is another network's, is left as it is with success: DEL is
// idempotent, and removes only what that network's ADD made.
func (s *Server) del(ctx context.Context, k Key, network string) *Error {
	if err := CheckKey(k); err != nil {
		return errorf(CodeInvalidConfig, "%v", err)
	}
	if network == "" {
		return errorf(CodeInvalidConfig, "DEL needs the network's name")
	}
	a, had, err := s.Source.Store.Get(k)
	if err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	if !had || a.Network != network {
		return nil
	}
	if err := s.remove(ctx, []Attachment{a}); err != nil {
		return err
	}
	s.changed()
	return nil
}

// remove deletes the attachments, applies, and drops their flows; when
// the datapath refuses, it keeps them.
func (s *Server) remove(ctx context.Context, as []Attachment) *Error {
	for _, a := range as {
		if err := s.Source.Store.Delete(a.Key()); err != nil {
			return errorf(CodeIOFailure, "%v", err)
		}
	}
	if _, err := s.Daemon.Reconcile(ctx, "cni del"); err != nil {
		for _, a := range as {
			s.Source.Store.Put(a)
		}
		return &Error{Code: CodeTryAgainLater, Msg: "applying the datapath without the attachment", Details: err.Error()}
	}
	if f, ok := s.Datapath.(Flusher); ok {
		for _, a := range as {
			for _, addr := range []netip.Addr{a.Addr, a.Addr6} {
				if !addr.IsValid() || slices.ContainsFunc(s.Daemon.Current().Endpoints, func(e datapath.Endpoint) bool { return e.Addr == addr || e.Addr6 == addr }) {
					continue // none, or the address is someone else's already
				}
				if _, err := f.FlushAddr(addr); err != nil {
					s.log().Warn("dropping the flows of a removed attachment", "addr", addr, "error", err)
				}
			}
		}
	}
	return nil
}

func (s *Server) check(a Attachment) *Error {
	if err := CheckKey(a.Key()); err != nil {
		return errorf(CodeInvalidConfig, "%v", err)
	}
	kept, had, err := s.Source.Store.Get(a.Key())
	if err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	if !had {
		return errorf(CodeNotServed, "bpfnet keeps no attachment %s", a.Key())
	}
	if kept.Addr != a.Addr || kept.Addr6 != a.Addr6 || kept.HostVeth != a.HostVeth || !slices.Equal(kept.Ports, a.Ports) {
		return errorf(CodeNotServed, "attachment %s: bpfnet keeps %s on %s with %d ports, the runtime says %s on %s with %d",
			a.Key(), addrs(kept), kept.HostVeth, len(kept.Ports), addrs(a), a.HostVeth, len(a.Ports))
	}
	cur := s.Daemon.Current()
	if !slices.ContainsFunc(cur.Endpoints, func(e datapath.Endpoint) bool {
		return e.Addr == a.Addr && e.Addr6 == a.Addr6 && e.HostVeth == a.HostVeth
	}) {
		return errorf(CodeNotServed, "attachment %s: %s on %s is not in the applied state", a.Key(), addrs(a), a.HostVeth)
	}
	want, _ := kept.Mappings()
	for _, m := range want {
		if !slices.ContainsFunc(cur.Ports, m.Equal) {
			return errorf(CodeNotServed, "attachment %s: port %s is not in the applied state", a.Key(), m)
		}
	}
	m, ok := s.Datapath.(Maps)
	if !ok {
		return nil
	}
	eps, err := m.Endpoints()
	if err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	for _, addr := range []netip.Addr{a.Addr, a.Addr6} {
		if addr.IsValid() && !slices.ContainsFunc(eps, func(e datapath.EndpointInfo) bool { return e.Addr == addr }) {
			return errorf(CodeNotServed, "attachment %s: %s is not in the endpoints map", a.Key(), addr)
		}
	}
	pub, err := m.Published()
	if err != nil {
		return errorf(CodeIOFailure, "%v", err)
	}
	for _, w := range want {
		hip := w.HostIP
		if !hip.IsValid() {
			hip = netip.IPv4Unspecified()
		}
		if w.ContainerIP.Is6() && hip.IsUnspecified() {
			hip = netip.IPv6Unspecified()
		}
		if !slices.ContainsFunc(pub, func(p datapath.PublishedPort) bool {
			return p.Binding.Proto == w.Proto && p.Binding.HostPort == w.HostPort && p.Binding.HostIP == hip &&
				p.ContainerIP == w.ContainerIP && p.ContainerPort == w.ContainerPort
		}) {
			return errorf(CodeNotServed, "attachment %s: port %s is not in the published map", a.Key(), w)
		}
	}
	return nil
}

// addrs are a's addresses, as errors show them.
func addrs(a Attachment) string {
	if a.Addr6.IsValid() {
		return a.Addr.String() + " and " + a.Addr6.String()
	}
	return a.Addr.String()
}

// gc removes the attachments of network that are not in valid. A list
// that is missing (null) or names something that is no attachment is
// refused whole: it would remove pods that are still running.
func (s *Server) gc(ctx context.Context, network string, valid []Key) ([]Key, *Error) {
	if network == "" {
		return nil, errorf(CodeInvalidConfig, "GC needs the network's name")
	}
	if valid == nil {
		return nil, errorf(CodeInvalidConfig, "GC without a list of valid attachments (an empty list removes every attachment of %s)", network)
	}
	for i, k := range valid {
		if err := CheckKey(k); err != nil {
			return nil, errorf(CodeInvalidConfig, "GC's valid attachment %d: %v", i, err)
		}
	}
	all, err := s.Source.Store.List()
	if err != nil {
		return nil, errorf(CodeIOFailure, "%v", err)
	}
	var doomed []Attachment
	var keys []Key
	for _, a := range all {
		if a.Network == network && !slices.Contains(valid, a.Key()) {
			doomed = append(doomed, a)
			keys = append(keys, a.Key())
		}
	}
	if len(doomed) == 0 {
		return nil, nil
	}
	if err := s.remove(ctx, doomed); err != nil {
		return nil, err
	}
	s.changed()
	return keys, nil
}

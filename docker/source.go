// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/bpfnet/bpfnet/datapath"
)

// Source reads the datapath's state from a dockerd.
type Source struct {
	cli  *client.Client
	host string
	k    kernel

	// DefaultBridgeMasquerade says whether Docker's default bridge network
	// (docker0) is masqueraded. Its option enable_ip_masquerade cannot be
	// trusted: dockerd --iptables=false forces it to "false" whatever
	// --ip-masq says. New sets it to true, Docker's default. Set it before
	// State or Watch are called.
	DefaultBridgeMasquerade bool
	// Logger receives what State leaves out and why, and Watch's
	// reconnections; New sets slog.Default().
	Logger *slog.Logger
}

// New returns a Source talking to the dockerd at host ("unix:///path",
// "tcp://addr:port"); "" means DOCKER_HOST (with DOCKER_TLS_VERIFY and
// DOCKER_CERT_PATH), else unix:///var/run/docker.sock. The API version is
// negotiated with the daemon on first use. New does not contact Docker:
// Ping does, and State and Watch do; when Docker cannot be reached their
// error says so, as an *UnreachableError.
func New(host string) (*Source, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		h := host
		if h == "" {
			h = "DOCKER_HOST"
		}
		return nil, fmt.Errorf("docker client for %s: %w", h, err)
	}
	return &Source{
		cli:                     cli,
		host:                    cli.DaemonHost(),
		k:                       netlinkKernel{},
		DefaultBridgeMasquerade: true,
		Logger:                  slog.Default(),
	}, nil
}

// APIVersion is the Engine API version the client speaks: the daemon's
// (capped at the client's maximum) once Ping, State or Watch have reached
// it, the client's maximum before. The conversion reads only fields that
// every version from 1.41 to 1.52 has: each endpoint's address and MAC in
// NetworkSettings.Networks (1.52 drops the top-level
// NetworkSettings.IPAddress and its kin), and events' Type, Action and
// Actor (1.52 drops status, id and from).
func (s *Source) APIVersion() string { return s.cli.ClientVersion() }

// Host is the address of the dockerd, e.g. "unix:///var/run/docker.sock".
func (s *Source) Host() string { return s.host }

// Close releases the client's connections.
func (s *Source) Close() error { return s.cli.Close() }

// Ping checks that Docker answers.
func (s *Source) Ping(ctx context.Context) error {
	_, err := s.cli.Ping(ctx)
	return s.wrap("ping", err)
}

// UnreachableError is returned when the dockerd cannot be connected to.
type UnreachableError struct {
	Host string
	Err  error // the reason, e.g. the socket's dial error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach Docker at %s: %v", e.Host, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// wrap turns the client's connection errors into an UnreachableError
// with the underlying reason (the client says only "Is the docker daemon
// running?") and prefixes other errors with what was being done.
func (s *Source) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if !client.IsErrConnectionFailed(err) {
		return fmt.Errorf("docker: %s: %w", what, err)
	}
	reason := err
	if u, perr := client.ParseHostURL(s.host); perr == nil && u.Scheme == "unix" {
		// Ask the socket itself: "no such file or directory" or
		// "connection refused" says more than the client's message.
		c, derr := net.DialTimeout("unix", u.Host, time.Second)
		if derr != nil {
			reason = derr
		} else {
			c.Close()
		}
	}
	return &UnreachableError{Host: s.host, Err: reason}
}

// Option keys of Docker's bridge driver.
const (
	optBridgeName    = "com.docker.network.bridge.name"
	optMasquerade    = "com.docker.network.bridge.enable_ip_masquerade"
	optICC           = "com.docker.network.bridge.enable_icc"
	optDefaultBridge = "com.docker.network.bridge.default_bridge"
	// optTrustedIfaces are interfaces that may reach the published
	// container ports by the containers' addresses (Docker 28),
	// colon-separated.
	optTrustedIfaces = "com.docker.network.bridge.trusted_host_interfaces"
	// optHostIPv4 is the address the network's masqueraded traffic
	// leaves with (SNAT --to-source instead of MASQUERADE).
	optHostIPv4 = "com.docker.network.host_ipv4"
	// optHostIPv6 is optHostIPv4's twin for the network's IPv6 egress.
	optHostIPv6 = "com.docker.network.host_ipv6"
	// Docker 28's gateway modes, per family (nat, nat-unprotected,
	// routed, isolated); Docker 20.10 keeps them as plain options.
	optGatewayModeIPv4 = "com.docker.network.bridge.gateway_mode_ipv4"
	optGatewayModeIPv6 = "com.docker.network.bridge.gateway_mode_ipv6"
)

// Network is a Docker bridge network: what the datapath is given, and
// Docker's isolation settings (also in datapath.Network, which enforces
// them: NoICC, Internal).
type Network struct {
	datapath.Network
	ID string
	// Default is Docker's default network, "bridge" (docker0).
	Default bool
	// Internal networks have no traffic to or from outside their subnet
	// (docker network create --internal): no masquerade, no published
	// ports.
	Internal bool
	// ICC is whether containers on the network may reach each other
	// (option com.docker.network.bridge.enable_icc, default true).
	ICC bool
}

// Snapshot is Docker's networking at one moment.
type Snapshot struct {
	Networks  []Network
	Endpoints []datapath.Endpoint
	Ports     []datapath.PortMapping
	// Modes are the containers without a veth on these networks: host
	// mode, macvlan, ipvlan, sharing a namespace, none (modes.go).
	Modes
	// Warnings say which port bindings were left out, and why.
	Warnings []string
}

// State is the datapath's part of the snapshot; Uplinks and HostAddrs
// are left empty for the caller.
func (s Snapshot) State() datapath.State {
	var st datapath.State
	for _, n := range s.Networks {
		st.Networks = append(st.Networks, n.Network)
	}
	st.Endpoints = s.Endpoints
	st.Ports = s.Ports
	st.CgroupEndpoints, st.Shared, st.NoNetwork = s.CgroupEndpoints, s.Shared, s.NoNetwork
	st.Warnings = s.Warnings
	return st
}

// State reads Docker's bridge networks, running containers and published
// ports now. It must run on a thread in dockerd's network namespace (see
// the package documentation). What cannot be made sense of (a container
// that went away meanwhile, a veth that cannot be found) is left out and
// logged, so that the result always passes datapath.State.Validate.
func (s *Source) State(ctx context.Context) (datapath.State, error) {
	snap, err := s.Snapshot(ctx)
	if err != nil {
		return datapath.State{}, err
	}
	return snap.State(), nil
}

// Snapshot is State with Docker's isolation settings of each network.
func (s *Source) Snapshot(ctx context.Context) (Snapshot, error) {
	nets, err := s.cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("driver", "bridge"))})
	if err != nil {
		return Snapshot{}, s.wrap("listing networks", err)
	}
	list, err := s.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return Snapshot{}, s.wrap("listing containers", err)
	}
	var ctrs []container.InspectResponse
	for _, c := range list {
		ci, err := s.cli.ContainerInspect(ctx, c.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed since the list
		}
		if err != nil {
			return Snapshot{}, s.wrap("inspecting container "+c.ID, err)
		}
		ctrs = append(ctrs, ci)
	}
	return build(s.k, s.logger(), s.DefaultBridgeMasquerade, nets, ctrs)
}

func (s *Source) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.Default()
	}
	return s.Logger
}

// errNoBridge is returned when no network's bridge exists in the calling
// thread's namespace.
var errNoBridge = errors.New("none of Docker's bridges is in this network namespace; bpfnet must run in dockerd's network namespace")

// parseAddr parses an IPv4 address, also in CIDR form ("172.17.0.1/16").
func parseAddr(s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap()
	}
	return netip.Addr{}
}

// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/docker"
)

// checkDocker is run's start-up check under --docker, before anything
// of the datapath is loaded: a dockerd that does NAT itself, on the
// bridges of state, refuses the start with a *docker.FirewallError
// (exit status docker.ExitConfig) that says what to put in daemon.json;
// what does not clash (the userland proxy, settings that
// could not be read) is logged as a warning. With ignore, the conflicts
// are logged as errors and the start goes on: for rules of the user's
// own that look like Docker's (a MASQUERADE of a Docker subnet), which
// the check cannot tell apart.
//
// A refused restart leaves the datapath pinned at pinPath by an earlier
// start as it is, forwarding; the error says so.
func checkDocker(ctx context.Context, ds *docker.Source, state datapath.State, pinPath string, ignore bool) error {
	facts, err := ds.CheckFirewall(ctx, state.Networks)
	if err != nil {
		return err
	}
	v := docker.Decide(facts)
	for _, w := range v.Warnings {
		slog.Warn("docker configuration", "warning", w)
	}
	backend := ""
	if facts.FirewallBackend != nil {
		backend = facts.FirewallBackend.Driver
	}
	if len(v.Conflicts) == 0 {
		slog.Info("docker leaves NAT to bpfnet", "docker", facts.Host, "version", facts.ServerVersion, "firewall_backend", backend)
		return nil
	}
	if ignore {
		for _, c := range v.Conflicts {
			slog.Error("starting with Docker's own NAT on (--ignore-docker-firewall)", "conflict", c)
		}
		return nil
	}
	ferr := &docker.FirewallError{Facts: facts, Verdict: v}
	if _, err := os.Stat(pinPath); err == nil {
		return fmt.Errorf("%w\nThe datapath of an earlier start is still pinned at %s and forwarding, next to Docker's NAT: 'bpfnet down --pin-path %s' removes it", ferr, pinPath, pinPath)
	}
	return ferr
}

// exitCode is the process's exit status for err: its ExitCode() if it
// has one (docker.FirewallError), else 1.
func exitCode(err error) int {
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

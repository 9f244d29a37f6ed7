// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/cni"
	"github.com/bpfnet/bpfnet/daemon"
	"github.com/bpfnet/bpfnet/datapath"
)

// cniFlags are the settings of `bpfnet run --cni`, the node agent of the
// chained CNI plugin (cmd/bpfnet-cni).
type cniFlags struct {
	on       bool
	socket   string
	stateDir string
}

func addCNIFlags(cmd *cobra.Command, f *cniFlags) {
	fl := cmd.Flags()
	fl.BoolVar(&f.on, "cni", false, "serve the bpfnet CNI plugin: pods' endpoints and hostPorts from its requests, beside Docker's with --docker")
	fl.StringVar(&f.socket, "cni-socket", cni.DefaultSocket, "unix socket the CNI plugin's requests come to (the conflist's \"socket\")")
	fl.StringVar(&f.stateDir, "cni-state-dir", cni.DefaultStateDir, "folder where each CNI attachment is kept, one file each, across restarts")
}

// cniServer is the agent's part of run: the source of the attachments
// and the socket, taken before anything is applied, so a second agent
// changes nothing.
type cniServer struct {
	src     *cni.Source
	ln      net.Listener
	pinPath string
	done    chan struct{}
}

func newCNIServer(f *cniFlags, base daemon.Source, uplinks []string, pinPath string) (*cniServer, error) {
	store := cni.Store{Dir: f.stateDir}
	if err := store.Prepare(); err != nil {
		return nil, fmt.Errorf("the CNI state folder: %w", err)
	}
	ln, err := cni.Listen(f.socket)
	if err != nil {
		return nil, err
	}
	return &cniServer{src: &cni.Source{Store: store, Base: base, Uplinks: uplinks}, ln: ln, pinPath: pinPath}, nil
}

// serve answers the plugin until ctx is done; wait waits for the requests
// begun to be answered.
func (s *cniServer) serve(ctx context.Context, d *daemon.Daemon, dp datapath.Datapath) {
	srv := &cni.Server{Source: s.src, Daemon: d, Datapath: dp, PinPath: s.pinPath}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := srv.Serve(ctx, s.ln); err != nil {
			slog.Error("serving the CNI plugin", "error", err)
		}
	}()
	slog.Info("serving the CNI plugin", "socket", s.ln.Addr().String())
}

// wait returns once serve's requests are answered, after ctx is done.
func (s *cniServer) wait() {
	if s.done != nil {
		<-s.done
	}
}

func (s *cniServer) close() { s.ln.Close() }

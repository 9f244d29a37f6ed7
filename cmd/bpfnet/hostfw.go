// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/bpfnet/bpfnet/hostfw"
	"github.com/bpfnet/bpfnet/loader"
)

// hostFirewallRecord is where the daemon keeps its last check of the host
// firewall, for `bpfnet status`.
func hostFirewallRecord(pinPath string) string { return loader.HostFirewallRecord(pinPath) }

// hostFirewall checks, on the daemon's timer, the firewall of the
// daemon's network namespace for rules the fast path takes packets
// around, and logs what it finds when that changes.
type hostFirewall struct {
	pinPath  string
	fastPath bool
	last     atomic.Pointer[hostfw.Status]
}

// status is the last check, for the metrics; false before the first.
func (h *hostFirewall) status() (hostfw.Status, bool) {
	if s := h.last.Load(); s != nil {
		return *s, true
	}
	return hostfw.Status{}, false
}

// watch checks every interval until ctx is done.
func (h *hostFirewall) watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.check(ctx)
		}
	}
}

// checkTimeout bounds one check: a wedged iptables-save is reported, not
// waited for.
const checkTimeout = 10 * time.Second

// check runs the detection, logs a change and records the result under
// the pin path.
func (h *hostFirewall) check(ctx context.Context) {
	dctx, cancel := context.WithTimeout(ctx, checkTimeout)
	r, err := hostfw.Detect(dctx, "")
	cancel()
	if ctx.Err() != nil {
		return // stopping: a check cut short says nothing
	}
	if err != nil {
		slog.Warn("checking the host firewall", "error", err)
		return
	}
	s := hostfw.NewStatus(r, time.Now(), h.fastPath)
	prev := h.last.Swap(&s)
	if prev == nil || !prev.Report.Equal(r) {
		logHostFirewall(prev, s)
	}
	data, err := s.Record()
	if err == nil {
		err = loader.WriteRecord(hostFirewallRecord(h.pinPath), data)
	}
	if err != nil {
		slog.Warn("recording the host firewall check", "error", err)
	}
}

func logHostFirewall(prev *hostfw.Status, s hostfw.Status) {
	if len(s.Errors) > 0 && (prev == nil || fmt.Sprint(prev.Errors) != fmt.Sprint(s.Errors)) {
		slog.Warn("host firewall only partly read", "errors", s.Errors)
	}
	switch {
	case s.Bypassed:
		slog.Warn("host firewall rules do not see translated packets: the fast path takes them around netfilter",
			"chains", s.Report.String(), "rules", s.TotalRules,
			"remedy", "run with --fast-path=false to have translated packets pass FORWARD, or express the policy with bpfnet's own isolation and port bindings")
	case s.Found():
		slog.Info("host firewall rules found; translated packets pass FORWARD (fast path off)",
			"chains", s.Report.String(), "rules", s.TotalRules)
	case prev != nil && prev.Found():
		slog.Info("host firewall rules gone from the forward chains")
	case prev == nil:
		slog.Info("no host firewall rules in the forward chains")
	}
}

// readHostFirewall reads the daemon's last record; nil when there is none.
func readHostFirewall(pinPath string) (*hostfw.Status, error) {
	target, err := os.Readlink(hostFirewallRecord(pinPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s hostfw.Status
	if err := json.Unmarshal([]byte(target), &s); err != nil {
		return nil, fmt.Errorf("malformed host firewall record: %w", err)
	}
	return &s, nil
}

// printHostFirewall is the status line of the host firewall check.
func printHostFirewall(w io.Writer, s *hostfw.Status) {
	switch {
	case s == nil:
		fmt.Fprintf(w, "host firewall\tnot checked\n")
		return
	case s.Bypassed:
		fmt.Fprintf(w, "host firewall\tBYPASSED by the fast path: %d rules (%s); --fast-path=false makes them apply\n", s.TotalRules, s.Report.String())
	case s.Found():
		fmt.Fprintf(w, "host firewall\tapplied (fast path off): %d rules (%s)\n", s.TotalRules, s.Report.String())
	default:
		fmt.Fprintf(w, "host firewall\tno rules in the forward chains\n")
	}
	for _, e := range s.Errors {
		fmt.Fprintf(w, "host firewall\tnot read: %s\n", e)
	}
	fmt.Fprintf(w, "host firewall\tchecked %s\n", s.CheckedAt.UTC().Format(time.RFC3339))
}

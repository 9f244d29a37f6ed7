// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/bpfnet/bpfnet/docker"
)

// TestExitCode: a start refused for Docker's configuration exits with
// 78, which the systemd unit does not restart after; any other error
// with 1.
func TestExitCode(t *testing.T) {
	refused := fmt.Errorf("starting: %w", &docker.FirewallError{})
	if got := exitCode(refused); got != 78 {
		t.Errorf("exit code of %T: %d, want 78", refused, got)
	}
	if got := exitCode(errors.New("cannot reach Docker")); got != 1 {
		t.Errorf("exit code of another error: %d, want 1", got)
	}
}

// SPDX-License-Identifier: Apache-2.0

package main

import (
	"testing"
)

// TestCNIHostPort: a pod's hostPort answers an external client, which the
// pod sees with its own address; CHECK passes; DEL takes the port away
// (it no longer answers, and CHECK fails), and a second DEL succeeds.
func TestCNIHostPort(t *testing.T) {
	n := newNode(t)
	p := n.newPod("web", port(8080, 80, "tcp", ""))
	n.mustAdd(p)
	greet(t, &p.Namespace, ":80")
	hostPort := n.ext.HostAddr.String() + ":8080"
	wantGreeting(t, &n.ext.Namespace, hostPort, n.ext.Addr.String())
	if err := n.check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if f := n.stateFiles(); len(f) != 1 {
		t.Errorf("agent state files %v, want one", f)
	}

	if err := n.del(p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	wantNoAnswer(t, &n.ext.Namespace, hostPort)
	if err := n.check(p); err == nil {
		t.Error("CHECK passes after DEL")
	}
	if err := n.del(p); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if f := n.stateFiles(); len(f) != 0 {
		t.Errorf("agent state files %v after DEL", f)
	}
	if ps := n.portsJSON(); len(ps) != 0 {
		t.Errorf("bpfnet ports after DEL: %v", ps)
	}
}

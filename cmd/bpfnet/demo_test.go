// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDemo runs what `make demo` runs and checks that its story holds:
// the client's real address, masquerade, conntrack, metrics, and nothing
// left behind.
func TestDemo(t *testing.T) {
	requireRoot(t)
	// The real command, as make demo runs it: the comparison's load
	// generators are subcommands of the binary.
	bin := buildBinary(t)
	var out bytes.Buffer
	cmd := exec.CommandContext(context.Background(), bin, "demo")
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bpfnet demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`curl http://10\.231\.0\.1:8080/  ->  hello from web1, you are 10\.231\.0\.2`),
		regexp.MustCompile(`curl http://10\.231\.0\.1:8081/  ->  hello from web2, you are 10\.231\.0\.2`),
		regexp.MustCompile(`web1\$ curl http://10\.231\.0\.2:8000/  ->  hello from the outside, you are 10\.231\.0\.1`),
		regexp.MustCompile(`dnat\s+orig\s+10\.231\.0\.2:\d+ -> 10\.231\.0\.1:8080\s+10\.231\.0\.2:\d+ -> 172\.30\.0\.2:80`),
		regexp.MustCompile(`snat\s+orig\s+172\.30\.0\.2:\d+ -> 10\.231\.0\.2:8000\s+10\.231\.0\.1:\d+ -> 10\.231\.0\.2:8000`),
		regexp.MustCompile(`bpfnet_container_receive_bytes_total\{container="web1",interface="\w+"\} [1-9]\d*`),
		regexp.MustCompile(`bpfnet_published_port_connections_total\{container="web2",host_ip="0\.0\.0\.0",host_port="8081",protocol="tcp"\} 1`),
		regexp.MustCompile(`drops: 0`),
		regexp.MustCompile(`Side by side with Docker's iptables rules`),
		regexp.MustCompile(`(?m)^TCP_CRR.*\d`),
	} {
		if !want.MatchString(text) {
			t.Errorf("demo output lacks %s", want)
		}
	}
	m := regexp.MustCompile(`namespaces (\w+)-\* removed`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("demo does not say what it removed:\n%s", text)
	}
	left, _ := filepath.Glob("/run/netns/" + m[1] + "-*")
	if len(left) > 0 {
		t.Errorf("demo left namespaces: %v", left)
	}
	pins, _ := filepath.Glob("/sys/fs/bpf/bpfnet-demo-*")
	for _, p := range pins {
		if _, err := os.Stat(p); err == nil && strings.Contains(p, "demo") {
			t.Errorf("demo left its pins at %s", p)
		}
	}
}

// SPDX-License-Identifier: Apache-2.0

package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/lab"
)

// TestCNIContainerd runs a container with a real runtime, `ctr run --cni`
// of Debian's containerd (1.6, whose CNI library speaks up to CNI 1.0.0,
// so the conflist says 1.0.0): ctr calls the bridge plugin and bpfnet as
// it would on a node, the container's connection to the outside leaves
// masqueraded, and when the container is removed ctr's DEL leaves no
// attachment behind.
//
// ctr reads /etc/cni/net.d and /opt/cni/bin only: it runs in a mount
// namespace of its own where the test's folders are bound there, so the
// host's stay as they are (the test makes the two empty mount points
// when they are missing, and removes them after).
func TestCNIContainerd(t *testing.T) {
	lab.RequireRoot(t)
	lab.RequireTools(t, "containerd", "ctr", "runc", "unshare", "mount")
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("reading /bin/busybox (apt-get install busybox-static): %v", err)
	}
	n := newNodeVersion(t, "1.0.0")
	dir := t.TempDir()
	netd, bin := filepath.Join(dir, "net.d"), filepath.Join(dir, "bin")
	for _, d := range []string{netd, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(netd, "10-pods.conflist"), []byte(n.conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "bpfnet"} {
		if err := os.Symlink(filepath.Join(binDir, p), filepath.Join(bin, p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, mp := range []string{"/etc/cni/net.d", "/opt/cni/bin"} {
		mountPoint(t, mp)
	}

	// A containerd of the test's own: its folders, its socket, no CRI.
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	var clog bytes.Buffer
	cd := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	cd.Stdout, cd.Stderr = &clog, &clog
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cd.Process.Kill()
		cd.Wait()
		if t.Failed() {
			t.Logf("containerd's log:\n%s", clog.String())
		}
	})
	ns := "bpfnet-" + n.topo.Prefix
	ctr := func(args ...string) *exec.Cmd {
		return exec.Command("ctr", append([]string{"--address", sock, "--namespace", ns}, args...)...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for ctr("version").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not answer on %s", sock)
		}
		time.Sleep(100 * time.Millisecond)
	}
	img := filepath.Join(dir, "image.tar")
	const ref = "docker.io/library/bpfnet-cni-test:1"
	if err := os.WriteFile(img, ociImage(t, ref, bb), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := ctr("images", "import", img).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}

	// The outside says whom it saw, and hangs up.
	n.ext.ServeTCP(t, n.ext.Addr.String()+":9000", func(c net.Conn) {
		fmt.Fprintf(c, "seen %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
	})
	id := "c-" + n.topo.Prefix
	script := fmt.Sprintf("mount --bind %s /etc/cni/net.d && mount --bind %s /opt/cni/bin && exec ctr --address %s --namespace %s run --cni --rm %s %s /bin/busybox nc %s 9000",
		netd, bin, sock, ns, ref, id, n.ext.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := n.topo.Host.Command(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script).CombinedOutput()
	t.Cleanup(func() { ctr("containers", "delete", id).Run() })
	if err != nil {
		t.Fatalf("ctr run --cni: %v\n%s", err, out)
	}
	t.Logf("ctr run --cni: %s", bytes.TrimSpace(out))
	if want := "seen " + n.ext.HostAddr.String(); !strings.Contains(string(out), want) {
		t.Errorf("the container's connection out: %q, want %q (masqueraded to the host's address)", out, want)
	}
	if strings.Contains(string(out), "seen 10.88.") {
		t.Errorf("the outside saw the container's own address: %q", out)
	}
	if f := n.stateFiles(); len(f) != 0 {
		t.Errorf("attachments left after ctr run --rm: %v", f)
	}
}

// mountPoint makes the empty folder path for the test's bind mounts when
// it is missing, and removes what it made when the test ends.
func mountPoint(t *testing.T, path string) {
	t.Helper()
	missing := path
	for {
		parent := filepath.Dir(missing)
		if _, err := os.Stat(parent); err == nil {
			break
		}
		missing = parent
	}
	if _, err := os.Stat(path); err == nil {
		return
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for p := path; ; p = filepath.Dir(p) {
			os.Remove(p) // only if empty
			if p == missing {
				break
			}
		}
	})
}

// ociImage is an OCI image layout, as a tar that `ctr images import`
// reads, holding busybox and its applets' links, named ref.
func ociImage(t *testing.T, ref string, busybox []byte) []byte {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, d := range []string{"bin/", "proc/", "sys/", "dev/", "etc/", "tmp/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(busybox))})
	tw.Write(busybox)
	for _, l := range []string{"sh", "nc"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + l, Typeflag: tar.TypeSymlink, Linkname: "busybox"})
	}
	tw.Close()
	blobs := map[string][]byte{}
	digest := func(b []byte) string {
		s := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(s[:])
		blobs[d] = b
		return d
	}
	desc := func(mt string, b []byte) map[string]any {
		return map[string]any{"mediaType": mt, "digest": digest(b), "size": len(b)}
	}
	must := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	layerDesc := desc("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	config := must(map[string]any{"architecture": runtime.GOARCH, "os": "linux",
		"config": map[string]any{"Cmd": []string{"/bin/sh"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc["digest"].(string)}}})
	manifest := must(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc("application/vnd.oci.image.config.v1+json", config), "layers": []any{layerDesc}})
	md := desc("application/vnd.oci.image.manifest.v1+json", manifest)
	md["annotations"] = map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "1"}
	index := must(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})

	var out bytes.Buffer
	ow := tar.NewWriter(&out)
	file := func(name string, b []byte) {
		ow.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b))})
		ow.Write(b)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", index)
	for d, b := range blobs {
		file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	ow.Close()
	return out.Bytes()
}

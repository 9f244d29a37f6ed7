// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/docker/go-connections/nat"

	"github.com/bpfnet/bpfnet/lab"
	"github.com/bpfnet/bpfnet/loader"
)

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot

// requireTools: see lab.RequireTools.
var requireTools = lab.RequireTools

// testImage is the image the test containers run: busybox and the echo
// server of testdata/echo.
const testImage = "bpfnet-test:latest"

// dockerd is a dockerd of the test's own, in a lab's host namespace:
//
//   - its network namespace is the lab's host namespace (nsenter --net);
//   - its mount namespace is private (unshare --mount), with a tmpfs on
//     /run, because dockerd 20.10 writes /run/docker/plugins whatever its
//     flags, and containerd's shims /run/containerd; --exec-root is under
//     that tmpfs, and everything else under dir: --data-root, the socket,
//     the pidfile, the trust key (deprecated-key-path in --config-file;
//     the default is /etc/docker/key.json);
//   - it starts its own containerd (no --containerd), under --exec-root and
//     --data-root;
//   - its containers' cgroups are under --cgroup-parent /bpfnet-test-<prefix>.
//
// Stop removes the containers, stops dockerd (SIGTERM, SIGKILL after 20 s)
// and kills whatever is left in its mount namespace or cgroups; Cleanup
// calls it and then removes the cgroups and dir.
type dockerd struct {
	t      *testing.T
	ns     *lab.Namespace
	bridge string
	dir    string
	sock   string
	cgroup string // cgroup parent, e.g. /bpfnet-test-bn3k9x
	driver string // storage driver in use
	// netFlags replace --iptables=false --ip-masq=false
	// --userland-proxy=false when set (startDockerdWith).
	netFlags []string

	cmd    *exec.Cmd
	exited chan struct{}
	mntNS  uint64 // inode of its mount namespace
	cli    *client.Client
}

// startDockerd starts a dockerd in ns using bridge as its default bridge,
// trying the overlay2 storage driver first, then vfs.
func startDockerd(t *testing.T, ns *lab.Namespace, bridge, prefix string) *dockerd {
	t.Helper()
	return startDockerdWith(t, ns, bridge, prefix, nil)
}

// startDockerdWith is startDockerd with netFlags instead of
// --iptables=false --ip-masq=false --userland-proxy=false.
func startDockerdWith(t *testing.T, ns *lab.Namespace, bridge, prefix string, netFlags []string) *dockerd {
	t.Helper()
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	// Names carry the lab's prefix so that sweepStale can tell what a
	// test that died left behind.
	dir := filepath.Join(os.TempDir(), dockerdDirPrefix+prefix)
	os.RemoveAll(dir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := &dockerd{t: t, ns: ns, bridge: bridge, dir: dir, sock: filepath.Join(dir, "docker.sock"), cgroup: "/" + cgroupPrefix + prefix, netFlags: netFlags}
	// Cleanups run last-registered first: stop, then cgroups, then dir.
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	t.Cleanup(func() {
		if err := removeCgroups(d.cgroup); err != nil {
			t.Errorf("removing cgroups: %v", err)
		}
	})
	t.Cleanup(d.Stop)
	cfg, _ := json.Marshal(map[string]any{"deprecated-key-path": filepath.Join(dir, "key.json")})
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	var errs []error
	for _, drv := range []string{"overlay2", "vfs"} {
		start := time.Now()
		err := d.launch(drv)
		if err == nil {
			t.Logf("dockerd ready in %v (storage driver %s)", time.Since(start).Round(time.Millisecond), drv)
			return d
		}
		errs = append(errs, fmt.Errorf("storage driver %s: %w", drv, err))
		t.Logf("dockerd with storage driver %s failed: %v\n%s", drv, err, d.logTail(30))
		d.Stop()
		os.RemoveAll(filepath.Join(dir, "data"))
	}
	t.Fatalf("starting dockerd: %v", errors.Join(errs...))
	return nil
}

// launch starts dockerd with a storage driver and waits until it answers.
func (d *dockerd) launch(driver string) error {
	d.driver = driver
	netFlags := d.netFlags
	if netFlags == nil {
		netFlags = []string{"--iptables=false", "--ip-masq=false", "--userland-proxy=false"}
	}
	args := []string{
		"--net=" + d.ns.Path, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount -t tmpfs -o mode=0755,size=64m bpfnet-dockerd-run /run && exec "$@"`, "sh",
		"dockerd",
		"--config-file", filepath.Join(d.dir, "daemon.json"),
	}
	args = append(args, netFlags...)
	args = append(args,
		"--bridge="+d.bridge,
		"--data-root", filepath.Join(d.dir, "data"),
		"--exec-root", "/run/bnd",
		"--pidfile", filepath.Join(d.dir, "docker.pid"),
		"-H", "unix://"+d.sock,
		"--storage-driver", driver,
		"--cgroup-parent", d.cgroup,
	)
	logf, err := os.OpenFile(filepath.Join(d.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// dockerd gets SIGTERM (and shuts its containers and containerd down)
	// if the test process dies. The signal is sent when the thread that
	// started it exits, so that thread is kept, locked, until dockerd
	// exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(exited)
			return
		}
		started <- nil
		cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return err
	}
	d.cmd, d.exited = cmd, exited
	cli, err := client.NewClientWithOpts(client.WithHost("unix://"+d.sock), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	d.cli = cli
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Ping(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("dockerd exited (%v) before answering", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer within 60 s: %v", err)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid), &st); err != nil {
		return fmt.Errorf("reading dockerd's mount namespace: %w", err)
	}
	var self syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/mnt", &self); err != nil || self.Ino == st.Ino {
		return fmt.Errorf("dockerd is not in a mount namespace of its own (%v)", err)
	}
	d.mntNS = st.Ino
	// For sweepStale, should the test die without cleaning up.
	os.WriteFile(filepath.Join(d.dir, "mntns"), []byte(strconv.FormatUint(st.Ino, 10)), 0o644)
	return nil
}

// Name prefixes of what the tests make, followed by the lab's prefix.
const (
	dockerdDirPrefix = "bpfnet-dockerd-"     // in os.TempDir()
	cgroupPrefix     = "bpfnet-test-"        // at the root of each cgroup hierarchy
	pinPrefix        = "bpfnet-docker-test-" // in /sys/fs/bpf
)

// sweepStale removes what tests that died (a -timeout, a kill) left
// behind: lab topologies whose creator is gone (lab.Sweep), then the
// dockerd folders, its processes, cgroups and bpffs pins whose lab
// prefix has no live topology any more.
func sweepStale(t *testing.T) {
	if err := lab.Sweep(); err != nil {
		t.Logf("sweeping old lab topologies: %v", err)
	}
	stale := func(prefix string) bool {
		if !lab.ValidPrefix(prefix) {
			return false
		}
		_, err := os.Stat(filepath.Join(lab.StateDir, prefix))
		return errors.Is(err, os.ErrNotExist)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dockerdDirPrefix+"*"))
	for _, dir := range dirs {
		prefix := strings.TrimPrefix(filepath.Base(dir), dockerdDirPrefix)
		if !stale(prefix) {
			continue
		}
		t.Logf("removing %s, left by a test that died", dir)
		// Its dockerd, containerd and shims, by the mount namespace they
		// were started in, checked against their command lines.
		if b, err := os.ReadFile(filepath.Join(dir, "mntns")); err == nil {
			if ino, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				for _, pid := range processesIn(ino, "") {
					cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
					if bytes.Contains(cmd, []byte("dockerd")) || bytes.Contains(cmd, []byte("containerd")) {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
		}
		killLeftovers(0, "/"+cgroupPrefix+prefix)
		if err := removeCgroups("/" + cgroupPrefix + prefix); err != nil {
			t.Logf("%v", err)
		}
		os.RemoveAll(dir)
	}
	for _, mnt := range cgroupMounts() {
		cgs, _ := filepath.Glob(filepath.Join(mnt, cgroupPrefix+"*"))
		for _, cg := range cgs {
			if prefix := strings.TrimPrefix(filepath.Base(cg), cgroupPrefix); stale(prefix) {
				killLeftovers(0, "/"+cgroupPrefix+prefix)
				removeCgroups("/" + cgroupPrefix + prefix)
			}
		}
	}
	pins, _ := filepath.Glob(filepath.Join("/sys/fs/bpf", pinPrefix+"*"))
	for _, pin := range pins {
		if stale(strings.TrimPrefix(filepath.Base(pin), pinPrefix)) {
			t.Logf("removing %s, left by a test that died", pin)
			if err := loader.DetachAll(pin); err != nil {
				t.Logf("%v", err)
			}
			os.RemoveAll(pin)
		}
	}
}

// Restart stops dockerd, leaving its containers to it (it stops them as
// it shuts down), and starts it again on the same data.
func (d *dockerd) Restart() {
	d.t.Helper()
	d.stopDaemon()
	start := time.Now()
	if err := d.launch(d.driver); err != nil {
		d.t.Fatalf("restarting dockerd: %v\n%s", err, d.logTail(30))
	}
	d.t.Logf("dockerd restarted in %v", time.Since(start).Round(time.Millisecond))
}

// Stop removes every container, stops dockerd and kills what is left of
// it. It is idempotent.
func (d *dockerd) Stop() {
	if d.cli != nil && d.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true})
		if err != nil {
			d.t.Logf("listing containers to remove: %v", err)
		}
		for _, c := range list {
			if err := d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
				d.t.Errorf("removing container %s: %v", c.ID, err)
			}
		}
		cancel()
	}
	d.stopDaemon()
}

func (d *dockerd) running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// stopDaemon sends SIGTERM, waits, sends SIGKILL after 20 s, then kills
// the processes left in dockerd's mount namespace (containerd, shims)
// and in its containers' cgroups.
func (d *dockerd) stopDaemon() {
	if d.cli != nil {
		d.cli.Close()
		d.cli = nil
	}
	if d.cmd != nil && d.running() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			d.t.Errorf("dockerd did not stop within 20 s of SIGTERM; killing it")
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	if d.mntNS != 0 {
		if n := killLeftovers(d.mntNS, d.cgroup); n > 0 {
			d.t.Logf("killed %d processes dockerd left behind", n)
		}
	}
}

// killLeftovers kills the processes in the mount namespace with inode
// mntNS and those in the cgroups under parent, waits for them to go, and
// returns how many there were.
func killLeftovers(mntNS uint64, parent string) int {
	killed := map[int]bool{}
	for try := 0; try < 50; try++ {
		pids := processesIn(mntNS, parent)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
			killed[pid] = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return len(killed)
}

func processesIn(mntNS uint64, parent string) []int {
	self := os.Getpid()
	seen := map[int]bool{}
	var out []int
	add := func(pid int) {
		if pid > 1 && pid != self && !seen[pid] {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if mntNS != 0 && syscall.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st) == nil && st.Ino == mntNS {
			add(pid)
		}
	}
	for _, mnt := range cgroupMounts() {
		if parent == "" {
			break
		}
		filepath.WalkDir(filepath.Join(mnt, parent), func(path string, de os.DirEntry, err error) error {
			if err != nil || !de.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					add(pid)
				}
			}
			return nil
		})
	}
	return out
}

// cgroupMounts lists the mount points of cgroup (v1) and cgroup2 file
// systems.
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		fields := strings.Fields(pre)
		if len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") && len(fields) > 4 {
			out = append(out, fields[4])
		}
	}
	return out
}

// removeCgroups removes parent and everything under it in every cgroup
// hierarchy, retrying while the last processes leave.
func removeCgroups(parent string) error {
	if parent == "" || parent == "/" {
		return fmt.Errorf("refusing to remove cgroup %q", parent)
	}
	var last error
	for try := 0; try < 50; try++ {
		last = nil
		for _, mnt := range cgroupMounts() {
			root := filepath.Join(mnt, parent)
			var dirs []string
			filepath.WalkDir(root, func(path string, de os.DirEntry, err error) error {
				if err == nil && de.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			// Deepest first.
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					last = fmt.Errorf("rmdir %s: %w", dirs[i], err)
				}
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func (d *dockerd) logTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ImportImage builds testImage: /bin/busybox with links for its applets,
// and /bin/echo built from testdata/echo.
func (d *dockerd) ImportImage() {
	t := d.t
	t.Helper()
	start := time.Now()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("reading /bin/busybox (apt-get install busybox-static): %v", err)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	echoPath := filepath.Join(d.dir, "echo")
	build := exec.Command(gobin, "build", "-trimpath", "-o", echoPath, "./testdata/echo")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/echo: %v\n%s", err, out)
	}
	echo, err := os.ReadFile(echoPath)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755})
	}
	for name, data := range map[string][]byte{"bin/busybox": bb, "bin/echo": echo} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(data))})
		tw.Write(data)
	}
	for _, applet := range []string{"sh", "sleep", "nc", "cat", "ip", "ls", "ps", "wget", "hostname"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := d.cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, testImage, image.ImportOptions{})
	if err != nil {
		t.Fatalf("importing the test image: %v", err)
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("importing the test image: %s", out)
	}
	t.Logf("test image built and imported in %v", time.Since(start).Round(time.Millisecond))
}

// ctr describes a test container.
type ctr struct {
	name       string
	publish    []string // docker run -p specs
	expose     []string // "7000/tcp": exposed, published by publishAll
	publishAll bool     // docker run -P
	cmd        []string
	labels     map[string]string // docker run -l
}

// Run creates and starts a container and returns its id.
func (d *dockerd) Run(c ctr) string {
	t := d.t
	t.Helper()
	exposed, bindings, err := nat.ParsePortSpecs(c.publish)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range c.expose {
		exposed[nat.Port(e)] = struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := &container.Config{Image: testImage, Hostname: c.name, Cmd: c.cmd, ExposedPorts: exposed, Labels: c.labels}
	hc := &container.HostConfig{PortBindings: bindings, PublishAllPorts: c.publishAll}
	created, err := d.cli.ContainerCreate(ctx, cfg, hc, nil, nil, c.name)
	if err != nil {
		t.Fatalf("creating container %s: %v", c.name, err)
	}
	if err := d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("starting container %s: %v\n%s", c.name, err, d.logTail(20))
	}
	return created.ID
}

// Inspect returns a container's details.
func (d *dockerd) Inspect(id string) container.InspectResponse {
	d.t.Helper()
	ci, err := d.cli.ContainerInspect(context.Background(), id)
	if err != nil {
		d.t.Fatal(err)
	}
	return ci
}

// Exec runs a command in a container and returns its output; a non-zero
// exit is an error.
func (d *dockerd) Exec(ctx context.Context, id string, cmd ...string) (string, error) {
	ex, err := d.cli.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", err
	}
	att, err := d.cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", err
	}
	defer att.Close()
	var stdout, stderr bytes.Buffer
	if _, err := stdcopy.StdCopy(&stdout, &stderr, att.Reader); err != nil {
		return "", err
	}
	res, err := d.cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return stdout.String(), fmt.Errorf("%v exited with %d: %s", cmd, res.ExitCode, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// SPDX-License-Identifier: Apache-2.0

package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as with
// `ip netns`.
const NetnsDir = "/run/netns"

// Namespace is a named network namespace, bind-mounted at Path.
type Namespace struct {
	Name string
	Path string // NetnsDir/Name
}

func newNamespace(name string) Namespace {
	return Namespace{Name: name, Path: filepath.Join(NetnsDir, name)}
}

// Do runs fn on the calling goroutine, locked to its OS thread, with that
// thread switched into the namespace, then switches it back.
//
// Sockets created inside fn stay in the namespace after Do returns, so a
// listener or connection opened in Do can be used from anywhere. Goroutines
// started by fn do NOT run in the namespace (they run on other threads).
//
// If the thread cannot be switched back, Do leaves it locked and returns an
// error: when the goroutine exits, the Go runtime then terminates the thread
// (or, if it is the main thread, parks it forever) instead of reusing it in
// the wrong namespace. Do may be nested.
func (n *Namespace) Do(fn func() error) (err error) {
	target, err := netns.GetFromPath(n.Path)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", n.Name, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening current namespace of thread: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		// setns failed, so the thread is still where it was.
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", n.Name, err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// Keep the thread locked: it dies with the goroutine.
			err = errors.Join(err, fmt.Errorf("returning from namespace %s (thread left locked and will be discarded): %w", n.Name, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// Command returns a command that runs name in the namespace via
// `nsenter --net=<Path> -- name args...`. Unlike `ip netns exec` it switches
// only the network namespace and does not remount /sys, so bpffs, cgroupfs
// and the real /sys stay visible. The flip side: /sys/class/net still lists
// the real host's interfaces (sysfs is tied to the namespace it was mounted
// in); ask netlink or `ip` about the namespace's links instead.
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
}

// Run runs a command in the namespace (see Command) and returns its
// combined output; the error includes the output.
func (n *Namespace) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("running %s %v in namespace %s: %w: %s", name, args, n.Name, err, out)
	}
	return out, nil
}

// Ping tells whether the namespace gets an echo reply from addr within a
// second, by busybox ping's own verdict: exit status 0 for a reply, 1 with
// "1 packets transmitted, 0 packets received" for none. Anything else
// (busybox or nsenter missing, a send error such as no route, another
// status) is an error rather than no reply, so a test that expects none
// cannot pass on a ping that never ran.
func (n *Namespace) Ping(ctx context.Context, addr string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := n.Command(ctx, "busybox", "ping", "-c", "1", "-W", "1", addr)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil && strings.Contains(stdout.String(), "1 packets received"):
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && stderr.Len() == 0 &&
		strings.Contains(stdout.String(), "1 packets transmitted, 0 packets received"):
		return false, nil
	}
	return false, fmt.Errorf("busybox ping %s in %s did not run to a verdict: %v\nstdout: %s\nstderr: %s", addr, n.Name, err, stdout.String(), stderr.String())
}

// Handle returns a netlink handle whose sockets live in the namespace. The
// caller must Close it; an open handle keeps the namespace alive.
func (n *Namespace) Handle() (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(n.Path)
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", n.Name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("creating netlink handle in namespace %s: %w", n.Name, err)
	}
	return h, nil
}

// ListenTCP opens a TCP listener inside the namespace, e.g. on "172.30.0.2:0".
// The listener keeps the namespace alive until it is closed.
func (n *Namespace) ListenTCP(addr string) (*net.TCPListener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on tcp %s in namespace %s: %w", addr, n.Name, err)
	}
	return l.(*net.TCPListener), nil
}

// ServeTCP listens inside the namespace on addr (for tests and demos) and
// runs handle for every connection as ListenAndServeTCP does. The listener
// is closed when tb ends; a listen error fails tb.
func (n *Namespace) ServeTCP(tb testing.TB, addr string, handle func(net.Conn)) *net.TCPListener {
	tb.Helper()
	ln, err := n.ListenAndServeTCP(addr, handle)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// ListenAndServeTCP listens inside the namespace on addr and runs handle
// for every connection, each in its own goroutine, closing the connection
// after, until the caller closes the listener.
func (n *Namespace) ListenAndServeTCP(addr string, handle func(net.Conn)) (*net.TCPListener, error) {
	ln, err := n.ListenTCP(addr)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln, nil
}

// DialTCP connects from inside the namespace to addr ("ip:port").
func (n *Namespace) DialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		// A literal IP never triggers name resolution or parallel
		// dialing, so the socket is created on this (switched) thread.
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing tcp %s from namespace %s: %w", addr, n.Name, err)
	}
	return c.(*net.TCPConn), nil
}

// Greeting connects from inside the namespace to addr and returns the
// first line the server sends, without its newline: the greeting of the
// tests' echo servers (the address they saw the client with). The dial
// has 700 ms, so that a SYN the datapath drops shows as a timeout
// (IsTimeout) quickly; the read 2 s. The error is the dial's or the
// read's.
func (n *Namespace) Greeting(addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := n.DialTCP(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return strings.TrimSpace(line), fmt.Errorf("reading the greeting of %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// IsTimeout reports whether err is a network operation that ran out of
// time (a dial whose SYN went unanswered, a read past its deadline), as
// opposed to one refused or failed otherwise.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ListenUDP opens a UDP socket inside the namespace, e.g. on "10.231.0.2:0".
func (n *Namespace) ListenUDP(addr string) (*net.UDPConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on udp %s in namespace %s: %w", addr, n.Name, err)
	}
	return c.(*net.UDPConn), nil
}

// WriteSysctl writes value to /proc/sys/<key> (key with slashes, e.g.
// "net/ipv4/ip_forward") inside the namespace. /proc/sys/net reflects the
// network namespace of the thread that opens the file.
func (n *Namespace) WriteSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", key)
	err := n.Do(func() error { return os.WriteFile(p, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("writing %s=%s in namespace %s: %w", key, value, n.Name, err)
	}
	return nil
}

// ReadSysctl reads /proc/sys/<key> inside the namespace, trailing newline
// removed.
func (n *Namespace) ReadSysctl(key string) (string, error) {
	p := filepath.Join("/proc/sys", key)
	var b []byte
	err := n.Do(func() error {
		var err error
		b, err = os.ReadFile(p)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("reading %s in namespace %s: %w", key, n.Name, err)
	}
	if len(b) > 0 && b[len(b)-1] == '\n' {
		b = b[:len(b)-1]
	}
	return string(b), nil
}

// Exists reports whether the namespace's bind mount is present.
func (n *Namespace) Exists() bool {
	return isNsMount(n.Path)
}

var (
	netnsDirMu    sync.Mutex
	netnsDirReady bool
)

// prepareNetnsDir makes NetnsDir a shared mount point, as `ip netns add`
// does, so that namespace mounts and unmounts propagate to mount namespaces
// cloned later (and a later `ip netns` finds things as it expects).
func prepareNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if netnsDirReady {
		return nil
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		netnsDirReady = true
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s a shared mount: %w", NetnsDir, err)
	}
	// EINVAL: not a mount point yet; bind it onto itself first.
	if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", NetnsDir, err)
	}
	if err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", NetnsDir, err)
	}
	netnsDirReady = true
	return nil
}

// createNamespace creates a new network namespace and bind-mounts it at
// NetnsDir/name.
//
// The unshare happens on a locked thread that is switched back to its
// original namespace afterwards. Relying on the runtime to discard a thread
// left locked is not enough: if the goroutine happens to run on the main
// thread, the runtime cannot exit it and parks it forever instead, still in
// the new namespace — and /proc/self/ns/net (the main thread's) then points
// there. Only if switching back fails is the thread left locked.
func createNamespace(name string) (Namespace, error) {
	ns := newNamespace(name)
	if err := prepareNetnsDir(); err != nil {
		return ns, err
	}
	f, err := os.OpenFile(ns.Path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return ns, fmt.Errorf("creating mount point for namespace %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening current namespace of thread: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		err = unix.Mount(src, ns.Path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mounting %s on %s: %w", src, ns.Path, err)
		}
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the thread is discarded (or parked) rather than
			// reused in the wrong namespace.
			errc <- errors.Join(err, fmt.Errorf("returning from new namespace (thread left locked): %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		deleteNamespace(ns.Path)
		return ns, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return ns, nil
}

// deleteNamespace unmounts and removes a named namespace, like
// `ip netns delete`. The kernel destroys the namespace (and its links)
// asynchronously once nothing references it any more. A missing namespace
// is not an error.
func deleteNamespace(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing namespace mount point %s: %w", path, err)
	}
	return nil
}

// isNsMount reports whether path is a bind-mounted network namespace.
func isNsMount(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// isNotExist reports errors meaning "no such link/route/namespace".
func isNotExist(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ESRCH)
}

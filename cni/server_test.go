// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/lab"
)

// fakeDaemon applies by reading the source, as daemon.Daemon does, with
// no datapath; block, when set, holds Reconcile until it is closed.
type fakeDaemon struct {
	src     *Source
	mu      sync.Mutex
	cur     datapath.State
	block   chan struct{}
	entered chan struct{}
}

func (f *fakeDaemon) Reconcile(ctx context.Context, _ string) (bool, error) {
	if f.block != nil {
		f.entered <- struct{}{}
		<-f.block
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	st, err := f.src.State(ctx)
	if err != nil {
		return false, err
	}
	f.mu.Lock()
	f.cur = st
	f.mu.Unlock()
	return false, nil
}

func (f *fakeDaemon) Current() datapath.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

// testServer serves a store in a temporary folder on a socket there.
type testServer struct {
	srv    *Server
	fake   *fakeDaemon
	socket string
	cancel context.CancelFunc
	done   chan error
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	lab.RequireRoot(t)
	dir := t.TempDir()
	src := &Source{Store: Store{Dir: filepath.Join(dir, "state")}, Uplinks: []string{"lo"}}
	fake := &fakeDaemon{src: src, cur: datapath.State{Uplinks: []datapath.Uplink{{Name: "lo"}}}}
	ts := &testServer{srv: &Server{Source: src, Daemon: fake, Datapath: nil}, fake: fake,
		socket: filepath.Join(dir, "run", "cni.sock"), done: make(chan error, 1)}
	if err := src.Store.Prepare(); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- ts.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-ts.done
	})
	return ts
}

func (ts *testServer) call(req Request) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Call(ctx, ts.socket, req)
	return err
}

// raw sends body as it is and reads the answer.
func (ts *testServer) raw(t *testing.T, body []byte) Response {
	t.Helper()
	c, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		c.Write(body)
		c.(*net.UnixConn).CloseWrite()
	}()
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return resp
}

func codeOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return int(e.Code)
	}
	return -1
}

func (ts *testServer) keys(t *testing.T) []string {
	t.Helper()
	l, err := ts.srv.Source.Store.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range l {
		out = append(out, a.Key().String())
	}
	return out
}

func (ts *testServer) put(t *testing.T, as ...Attachment) {
	t.Helper()
	for _, a := range as {
		if err := ts.srv.Source.Store.Put(a); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServerPeerCredentials: a user other than root is refused by the
// agent even when the socket's mode lets them connect; root, through the
// same client, is served. Listen refuses a folder others may write to.
func TestServerPeerCredentials(t *testing.T) {
	lab.RequireTools(t, "/usr/bin/python3")
	ts := newTestServer(t)
	if fi, err := os.Stat(ts.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the socket's mode: %v (%v), want 0600", fi.Mode(), err)
	}
	// Open the way for another user, to reach the credential check.
	for d := filepath.Dir(filepath.Dir(ts.socket)); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	os.Chmod(ts.socket, 0o666)
	client := func(cred *syscall.Credential) Response {
		cmd := exec.Command("/usr/bin/python3", "-c", `import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{"command":"STATUS"}\n'); s.shutdown(socket.SHUT_WR)
sys.stdout.write(s.makefile().read())`, ts.socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("the client (%+v): %v\n%s", cred, err, stderr.String())
		}
		var resp Response
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatalf("the answer %q: %v", out, err)
		}
		return resp
	}
	if resp := client(&syscall.Credential{Uid: 65534, Gid: 65534}); resp.Error == nil || resp.Error.Code != CodeNotPermitted {
		t.Errorf("STATUS as uid 65534: %+v, want code %d", resp.Error, CodeNotPermitted)
	}
	if resp := client(nil); resp.Error != nil {
		t.Errorf("STATUS as root: %v", resp.Error)
	}

	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if ln, err := Listen(filepath.Join(open, "cni.sock")); err == nil {
		ln.Close()
		t.Error("Listen in a folder of mode 0777 was accepted")
	}
	os.Chmod(open, 0o755)
	ln, err := Listen(filepath.Join(open, "cni.sock"))
	if err != nil {
		t.Errorf("Listen in a folder of mode 0755: %v", err)
	} else {
		ln.Close()
	}
}

// TestServerBadRequests: a malformed request and one larger than
// MaxRequest get a clear error and change nothing; a good one after them
// is served.
func TestServerBadRequests(t *testing.T) {
	ts := newTestServer(t)
	ts.put(t, testAttachment("abc"))
	for name, body := range map[string][]byte{
		"malformed": []byte(`{"command":"DEL","attachment":{"containerID":"abc","ifName":"eth0","network":"pods"`),
		"oversized": []byte(`{"command":"DEL","attachment":{"containerID":"abc","ifName":"eth0","network":"pods","pod":"` +
			strings.Repeat("x", 2*MaxRequest) + `"}}`),
		"not JSON": []byte("DEL abc\n"),
	} {
		resp := ts.raw(t, body)
		if resp.Error == nil || resp.Error.Code != CodeDecodingFailure {
			t.Errorf("%s request: %+v, want code %d", name, resp.Error, CodeDecodingFailure)
		} else if name == "oversized" && !strings.Contains(resp.Error.Msg, "larger than") {
			t.Errorf("oversized request: %q, want it to say so", resp.Error.Msg)
		}
	}
	if k := ts.keys(t); len(k) != 1 {
		t.Fatalf("after bad requests, kept %v, want abc/eth0", k)
	}
	resp := ts.raw(t, []byte(`{"command":"DEL","attachment":{"containerID":"abc","ifName":"eth0","network":"pods"}}`))
	if resp.Error != nil || len(ts.keys(t)) != 0 {
		t.Errorf("a good DEL: %+v, kept %v", resp.Error, ts.keys(t))
	}
}

// TestServerDelOwnOnly: a DEL removes the attachment of its container id
// and interface only in its own network; another network's DEL of the
// same key succeeds (DEL is idempotent) and removes nothing.
func TestServerDelOwnOnly(t *testing.T) {
	ts := newTestServer(t)
	a := testAttachment("abc")
	b := testAttachment("def")
	ts.put(t, a, b)
	other := Attachment{ContainerID: "abc", IfName: "eth0", Network: "other"}
	if err := ts.call(Request{Command: CmdDel, Attachment: other}); err != nil {
		t.Errorf("DEL of network other: %v", err)
	}
	if err := ts.call(Request{Command: CmdDel, Attachment: Attachment{ContainerID: "abc", IfName: "eth0"}}); codeOf(err) != CodeInvalidConfig {
		t.Errorf("DEL without a network: %v, want code %d", err, CodeInvalidConfig)
	}
	if err := ts.call(Request{Command: CmdDel, Attachment: Attachment{ContainerID: "../def", IfName: "eth0", Network: "pods"}}); codeOf(err) != CodeInvalidConfig {
		t.Errorf("DEL of a path: %v, want code %d", err, CodeInvalidConfig)
	}
	if k := ts.keys(t); len(k) != 2 {
		t.Fatalf("after DELs not theirs, kept %v, want both", k)
	}
	if err := ts.call(Request{Command: CmdDel, Attachment: Attachment{ContainerID: "abc", IfName: "eth0", Network: "pods"}}); err != nil {
		t.Errorf("DEL of network pods: %v", err)
	}
	if k := ts.keys(t); len(k) != 1 || k[0] != "def/eth0" {
		t.Errorf("after pods' DEL of abc, kept %v, want def/eth0", k)
	}
}

// TestServerGCMalformed: a GC whose valid list is missing or names
// something that is no attachment removes nothing; a good list removes
// the others, and an empty one every attachment of the network.
func TestServerGCMalformed(t *testing.T) {
	ts := newTestServer(t)
	a, b := testAttachment("abc"), testAttachment("def")
	c := testAttachment("ghi")
	c.Network = "other"
	ts.put(t, a, b, c)
	gc := func(valid string) error {
		body := `{"command":"GC","attachment":{"network":"pods"}` + valid + `}`
		if r := ts.raw(t, []byte(body)); r.Error != nil {
			return r.Error
		}
		return nil
	}
	for name, valid := range map[string]string{
		"no list":    ``,
		"null":       `,"valid":null`,
		"bad key":    `,"valid":[{"containerID":"abc","ifName":"eth0"},{"containerID":"../x","ifName":"eth0"}]`,
		"empty key":  `,"valid":[{}]`,
		"not a list": `,"valid":{"containerID":"abc"}`,
	} {
		if err := gc(valid); codeOf(err) != CodeInvalidConfig && codeOf(err) != CodeDecodingFailure {
			t.Errorf("GC with %s: %v, want it refused", name, err)
		}
	}
	if k := ts.keys(t); len(k) != 3 {
		t.Fatalf("after malformed GCs, kept %v, want all 3", k)
	}
	if err := gc(`,"valid":[{"containerID":"abc","ifName":"eth0"}]`); err != nil {
		t.Fatalf("GC keeping abc: %v", err)
	}
	if k := ts.keys(t); len(k) != 2 || k[0] != "abc/eth0" || k[1] != "ghi/eth0" {
		t.Errorf("after GC keeping abc, kept %v, want abc and the other network's ghi", k)
	}
	if err := gc(`,"valid":[]`); err != nil {
		t.Fatalf("GC with none valid: %v", err)
	}
	if k := ts.keys(t); len(k) != 1 || k[0] != "ghi/eth0" {
		t.Errorf("after GC with none valid, kept %v, want the other network's ghi", k)
	}
}

// TestServerShutdown: a request begun when the agent is told to stop is
// finished with a context not cancelled, and answered, before Serve
// returns; one that comes after finds no agent.
func TestServerShutdown(t *testing.T) {
	ts := newTestServer(t)
	ts.put(t, testAttachment("abc"))
	ts.fake.block, ts.fake.entered = make(chan struct{}), make(chan struct{}, 1)
	answered := make(chan error, 1)
	go func() {
		answered <- ts.call(Request{Command: CmdDel, Attachment: Attachment{ContainerID: "abc", IfName: "eth0", Network: "pods"}})
	}()
	select {
	case <-ts.fake.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the DEL did not reach the daemon")
	}
	ts.cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ts.call(Request{Command: CmdStatus})
		if codeOf(err) == CodePluginNotAvailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("STATUS after the shutdown began: %v, want code %d", err, CodePluginNotAvailable)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-ts.done:
		t.Fatal("Serve returned with a request unanswered")
	default:
	}
	close(ts.fake.block)
	if err := <-answered; err != nil {
		t.Errorf("the DEL begun before the shutdown: %v", err)
	}
	select {
	case err := <-ts.done:
		ts.done <- err // for the cleanup
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return once the requests were answered")
	}
	if k := ts.keys(t); len(k) != 0 {
		t.Errorf("after the DEL, kept %v", k)
	}
}

// TestDeleteOffline: the plugin's DEL without an agent removes the
// attachment of its network only, waits for the folder's lock, and is
// idempotent.
func TestDeleteOffline(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "state")}
	ctx := context.Background()
	if removed, err := s.DeleteOffline(ctx, Key{"abc", "eth0"}, "pods"); removed || err != nil {
		t.Errorf("DeleteOffline with no folder: %v %v, want nothing and no error", removed, err)
	}
	if err := s.Put(testAttachment("abc")); err != nil {
		t.Fatal(err)
	}
	if removed, err := s.DeleteOffline(ctx, Key{"abc", "eth0"}, "other"); removed || err != nil {
		t.Errorf("DeleteOffline of another network: %v %v, want nothing removed", removed, err)
	}
	unlock, err := s.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	removed, err := s.DeleteOffline(short, Key{"abc", "eth0"}, "pods")
	cancel()
	if removed || err == nil {
		t.Errorf("DeleteOffline with the lock held: %v %v, want it to wait and give up", removed, err)
	}
	if _, had, _ := s.Get(Key{"abc", "eth0"}); !had {
		t.Fatal("the attachment went while the lock was held")
	}
	unlock()
	if removed, err := s.DeleteOffline(ctx, Key{"abc", "eth0"}, "pods"); !removed || err != nil {
		t.Errorf("DeleteOffline of its network: %v %v, want it removed", removed, err)
	}
	if removed, err := s.DeleteOffline(ctx, Key{"abc", "eth0"}, "pods"); removed || err != nil {
		t.Errorf("a second DeleteOffline: %v %v, want nothing and no error", removed, err)
	}
}

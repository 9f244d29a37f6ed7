// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
)

// fakeDocker is just enough of Docker's API, on a unix socket, for
// State and Watch: ping, networks, containers, events. It can be stopped
// and started again on the same socket, as a restarting dockerd.
type fakeDocker struct {
	t    *testing.T
	Path string

	mu       sync.Mutex
	nets     []network.Summary
	ctrs     []container.InspectResponse
	ghosts   []string // listed, but not found when inspected
	api      *apiFixture
	subs     map[chan []byte]bool
	srv      *http.Server
	requests int
	// versions are the API versions of the requests' paths, in order
	// ("" for an unversioned one such as the first /_ping).
	versions []string
}

func newFakeDocker(t *testing.T) *fakeDocker {
	f := &fakeDocker{t: t, Path: filepath.Join(t.TempDir(), "docker.sock"), subs: map[chan []byte]bool{}}
	f.Start()
	t.Cleanup(f.Stop)
	return f
}

func (f *fakeDocker) Host() string { return "unix://" + f.Path }

// Set replaces what the fake reports.
func (f *fakeDocker) Set(nets []network.Summary, ctrs []container.InspectResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nets, f.ctrs = nets, ctrs
}

// Emit sends an event to every subscriber.
func (f *fakeDocker) Emit(m events.Message) {
	b, err := json.Marshal(m)
	if err != nil {
		f.t.Fatal(err)
	}
	f.EmitRaw(b)
}

// EmitRaw sends one line of the event stream, as it is, to every
// subscriber.
func (f *fakeDocker) EmitRaw(line []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.subs {
		select {
		case c <- line:
		default:
			f.t.Errorf("fake docker: subscriber not reading")
		}
	}
}

// Serve makes the fake answer as the dockerd of an API version does: its
// headers, its bodies as recorded or derived (testdata/api), and its
// range of versions, outside of which a request fails as it would
// there. Set's networks and containers are not used any more.
func (f *fakeDocker) Serve(fx *apiFixture) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.api = fx
}

// Versions returns the API versions of the requests so far.
func (f *fakeDocker) Versions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.versions)
}

// Subscribers is the number of event streams open.
func (f *fakeDocker) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeDocker) Start() {
	l, err := net.Listen("unix", f.Path)
	if err != nil {
		f.t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(f.serve)}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go srv.Serve(l)
}

// Stop closes the socket and every connection, event streams included,
// and removes the socket file.
func (f *fakeDocker) Stop() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

var versionPrefix = regexp.MustCompile(`^/v([0-9.]+)`)

func (f *fakeDocker) serve(w http.ResponseWriter, r *http.Request) {
	version := ""
	if m := versionPrefix.FindStringSubmatch(r.URL.Path); m != nil {
		version = m[1]
	}
	path := versionPrefix.ReplaceAllString(r.URL.Path, "")
	f.mu.Lock()
	f.requests++
	f.versions = append(f.versions, version)
	nets, ctrs, ghosts, api := f.nets, f.ctrs, f.ghosts, f.api
	f.mu.Unlock()
	if api != nil {
		f.serveAPI(w, r, api, version, path)
		return
	}
	w.Header().Set("Api-Version", "1.41")
	switch {
	case path == "/_ping":
		w.Write([]byte("OK"))
	case path == "/networks":
		json.NewEncoder(w).Encode(nets)
	case path == "/containers/json":
		var list []container.Summary
		for _, c := range ctrs {
			if c.State != nil && c.State.Running {
				list = append(list, container.Summary{ID: c.ID, Names: []string{c.Name}})
			}
		}
		for _, g := range ghosts {
			list = append(list, container.Summary{ID: g})
		}
		json.NewEncoder(w).Encode(list)
	case strings.HasPrefix(path, "/containers/") && strings.HasSuffix(path, "/json"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")
		for _, c := range ctrs {
			if c.ID == id {
				json.NewEncoder(w).Encode(c)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"message":"No such container: %s"}`, id)
	case path == "/events":
		f.streamEvents(w, r)
	default:
		http.NotFound(w, r)
	}
}

// streamEvents follows the subscription until the client goes.
func (f *fakeDocker) streamEvents(w http.ResponseWriter, r *http.Request) {
	ch := make(chan []byte, 100)
	f.mu.Lock()
	f.subs[ch] = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case line := <-ch:
			if _, err := w.Write(append(slices.Clip(bytes.TrimSpace(line)), '\n')); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

// apiFixture is one Engine API version's answers, testdata/api/<Version>.
type apiFixture struct {
	Version    string // the daemon's API version: Api-Version, ApiVersion
	MinVersion string // its MinAPIVersion
	Ping       pingFixture
	VersionDoc []byte            // GET /version
	Networks   []byte            // GET /networks
	Containers []byte            // GET /containers/json
	Inspect    map[string][]byte // GET /containers/{id}/json, by id
	Events     [][]byte          // GET /events, a line each
	Info       []byte            // GET /info, when a test sets it (testdata/info)
}

// loadAPIFixture reads testdata/api/<version>.
func loadAPIFixture(t *testing.T, version string) *apiFixture {
	t.Helper()
	dir := filepath.Join(apiTestdata, version)
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	fx := &apiFixture{Inspect: map[string][]byte{}, VersionDoc: read("version.json"), Networks: read("networks.json"), Containers: read("containers.json")}
	if err := json.Unmarshal(read("_ping.json"), &fx.Ping); err != nil {
		t.Fatalf("%s/_ping.json: %v", dir, err)
	}
	var v struct{ ApiVersion, MinAPIVersion string }
	if err := json.Unmarshal(fx.VersionDoc, &v); err != nil {
		t.Fatalf("%s/version.json: %v", dir, err)
	}
	fx.Version, fx.MinVersion = v.ApiVersion, v.MinAPIVersion
	if fx.Version != version || fx.Ping.Headers["Api-Version"] != version || fx.MinVersion == "" {
		t.Fatalf("%s: ApiVersion %q, Api-Version %q, MinAPIVersion %q", dir, fx.Version, fx.Ping.Headers["Api-Version"], fx.MinVersion)
	}
	files, err := filepath.Glob(filepath.Join(dir, "containers", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("%s: no inspected containers (%v)", dir, err)
	}
	for _, p := range files {
		fx.Inspect[strings.TrimSuffix(filepath.Base(p), ".json")] = read(filepath.Join("containers", filepath.Base(p)))
	}
	for _, line := range bytes.Split(bytes.TrimSpace(read("events.json")), []byte("\n")) {
		fx.Events = append(fx.Events, line)
	}
	return fx
}

// serveAPI answers as the daemon of fx: every answer carries the headers
// of its version middleware (Server, Api-Version, Ostype), /_ping those
// of the recorded ping too, and a request for a version outside the
// daemon's range fails with its message.
func (f *fakeDocker) serveAPI(w http.ResponseWriter, r *http.Request, fx *apiFixture, version, path string) {
	for _, h := range []string{"Server", "Api-Version", "Ostype"} {
		w.Header().Set(h, fx.Ping.Headers[h])
	}
	if version != "" {
		msg := ""
		if versions.LessThan(version, fx.MinVersion) {
			msg = fmt.Sprintf("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", version, fx.MinVersion)
		} else if versions.GreaterThan(version, fx.Version) {
			msg = fmt.Sprintf("client version %s is too new. Maximum supported API version is %s", version, fx.Version)
		}
		if msg != "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"message": msg})
			return
		}
	}
	body := func(b []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	}
	switch {
	case path == "/_ping":
		for k, v := range fx.Ping.Headers {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(fx.Ping.Body))
	case path == "/version":
		body(fx.VersionDoc)
	case path == "/networks":
		body(fx.Networks)
	case path == "/containers/json":
		body(fx.Containers)
	case strings.HasPrefix(path, "/containers/") && strings.HasSuffix(path, "/json"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")
		if b, ok := fx.Inspect[id]; ok {
			body(b)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"message":"No such container: %s"}`, id)
	case path == "/events":
		f.streamEvents(w, r)
	case path == "/info" && fx.Info != nil:
		body(fx.Info)
	default:
		http.NotFound(w, r)
	}
}

// fakeKernel stands in for netlink: bridges by name, veths by pid and MAC
// ("100/02:42:ac:11:00:02"), or pid and address for an endpoint without a
// MAC ("100/172.17.0.2").
type fakeKernel struct {
	mu      sync.Mutex
	bridges map[string]fakeBridge
	veths   map[string]fakeVeth // key "pid/mac"
	gone    map[int]bool
}

type fakeBridge struct {
	index int
	addrs []netip.Prefix
}

type fakeVeth struct {
	name   string
	master int
}

func (k *fakeKernel) bridge(name string) (int, []netip.Prefix, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, ok := k.bridges[name]
	if !ok {
		return 0, nil, fmt.Errorf("bridge %s: %w", name, errLinkNotFound)
	}
	return b.index, b.addrs, nil
}

func (k *fakeKernel) hostVeth(pid int, mac net.HardwareAddr, addr netip.Addr) (string, int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gone[pid] {
		return "", 0, errGone
	}
	key := fmt.Sprintf("%d/%s", pid, mac)
	if mac == nil {
		key = fmt.Sprintf("%d/%s", pid, addr)
	}
	v, ok := k.veths[key]
	if !ok {
		return "", 0, errors.New("no such veth")
	}
	return v.name, v.master, nil
}

// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
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
	subs     map[chan events.Message]bool
	srv      *http.Server
	requests int
}

func newFakeDocker(t *testing.T) *fakeDocker {
	f := &fakeDocker{t: t, Path: filepath.Join(t.TempDir(), "docker.sock"), subs: map[chan events.Message]bool{}}
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
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.subs {
		select {
		case c <- m:
		default:
			f.t.Errorf("fake docker: subscriber not reading")
		}
	}
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

var versionPrefix = regexp.MustCompile(`^/v[0-9.]+`)

func (f *fakeDocker) serve(w http.ResponseWriter, r *http.Request) {
	path := versionPrefix.ReplaceAllString(r.URL.Path, "")
	w.Header().Set("Api-Version", "1.41")
	f.mu.Lock()
	f.requests++
	nets, ctrs, ghosts := f.nets, f.ctrs, f.ghosts
	f.mu.Unlock()
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
		ch := make(chan events.Message, 100)
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
		enc := json.NewEncoder(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case m := <-ch:
				if enc.Encode(m) != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
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

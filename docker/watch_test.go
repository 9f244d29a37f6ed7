// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"golang.org/x/sys/unix"

	"github.com/bpfnet/bpfnet/datapath"
)

// countingHandler counts log records whose message starts with a prefix,
// and passes everything on to the test log.
type countingHandler struct {
	slog.Handler
	prefix string
	n      *atomic.Int32
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.prefix) {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

type watchRun struct {
	updates chan datapath.State
	done    chan error
	tidErr  atomic.Value
	cancel  context.CancelFunc
}

// startWatch runs Watch on a goroutine locked to its thread, checking
// that every update comes on that thread.
func startWatch(t *testing.T, s *Source) *watchRun {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchRun{updates: make(chan datapath.State, 100), done: make(chan error, 1), cancel: cancel}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := unix.Gettid()
		w.done <- s.Watch(ctx, func(st datapath.State) {
			if unix.Gettid() != tid {
				w.tidErr.Store("update called on another thread than Watch's")
			}
			w.updates <- st
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("Watch returned %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Watch did not return after its context was cancelled")
		}
		if e := w.tidErr.Load(); e != nil {
			t.Error(e)
		}
	})
	return w
}

func (w *watchRun) next(t *testing.T, within time.Duration) datapath.State {
	t.Helper()
	select {
	case st := <-w.updates:
		return st
	case <-time.After(within):
		t.Fatalf("no update within %v", within)
		return datapath.State{}
	}
}

func (w *watchRun) none(t *testing.T, during time.Duration) {
	t.Helper()
	select {
	case st := <-w.updates:
		t.Fatalf("unexpected update: %+v", st)
	case <-time.After(during):
	}
}

func netNames(st datapath.State) string {
	var n []string
	for _, x := range st.Networks {
		n = append(n, x.Name)
	}
	return strings.Join(n, ",")
}

func TestWatch(t *testing.T) {
	f := newFakeDocker(t)
	one := bridgeNetwork("one", 1, "172.17.0.0/16", "172.17.0.1", nil)
	two := bridgeNetwork("two", 2, "172.18.0.0/16", "172.18.0.1", nil)
	f.Set([]network.Summary{one}, nil)
	k := &fakeKernel{bridges: map[string]fakeBridge{"br-01ababababab": {index: 1}, "br-02ababababab": {index: 2}}}
	s, err := New(f.Host())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.k = k
	var unreachable atomic.Int32
	s.Logger = slog.New(countingHandler{testLogger(t).Handler(), "docker unreachable", &unreachable})

	w := startWatch(t, s)
	if st := w.next(t, 2*time.Second); netNames(st) != "one" {
		t.Fatalf("first update: networks %q, want one", netNames(st))
	}
	waitFor(t, "the event subscription", func() bool { return f.Subscribers() == 1 })

	// A burst of events gives one reading.
	f.Set([]network.Summary{one, two}, nil)
	start := time.Now()
	for range 20 {
		f.Emit(events.Message{Type: events.ContainerEventType, Action: events.ActionStart})
		f.Emit(events.Message{Type: events.NetworkEventType, Action: events.ActionConnect})
	}
	st := w.next(t, time.Second)
	if netNames(st) != "one,two" {
		t.Fatalf("after the burst: networks %q, want one,two", netNames(st))
	}
	if d := time.Since(start); d < coalesce {
		t.Errorf("update %v after the burst began, before the %v of coalescing", d, coalesce)
	}
	// One reading for the 40 events; a second one only if the burst was
	// split by a stall of the machine.
	extra := 0
	for quiet := time.After(400 * time.Millisecond); ; {
		select {
		case <-w.updates:
			extra++
			continue
		case <-quiet:
		}
		break
	}
	if extra > 1 {
		t.Errorf("%d readings for one burst of events, want 1", extra+1)
	}

	// Events that change nothing of the networking are ignored.
	f.Emit(events.Message{Type: events.ContainerEventType, Action: events.ActionExecStart})
	f.Emit(events.Message{Type: events.ImageEventType, Action: events.ActionPull})
	w.none(t, 200*time.Millisecond)

	// Docker goes away: nothing is sent, the last state stays the
	// caller's; reconnection attempts back off.
	f.Stop()
	w.none(t, 1600*time.Millisecond)
	// Attempts at about 0.1, 0.3, 0.7 and 1.5 s.
	if n := unreachable.Load(); n < 3 || n > 6 {
		t.Errorf("%d reconnection attempts in 1.6 s, want 3 to 6 (100 ms doubling)", n)
	}
	// It comes back with other networks: a fresh state is sent.
	f.Set([]network.Summary{two}, nil)
	f.Start()
	if st := w.next(t, 3*time.Second); netNames(st) != "two" {
		t.Fatalf("after reconnecting: networks %q, want two", netNames(st))
	}

	// A reading that fails while Docker answers is retried.
	k.mu.Lock()
	k.bridges = nil
	k.mu.Unlock()
	waitFor(t, "the event subscription", func() bool { return f.Subscribers() == 1 })
	f.Emit(events.Message{Type: events.NetworkEventType, Action: events.ActionCreate})
	w.none(t, 300*time.Millisecond)
	k.mu.Lock()
	k.bridges = map[string]fakeBridge{"br-02ababababab": {index: 2, addrs: []netip.Prefix{pfx("172.18.0.1/16")}}}
	k.mu.Unlock()
	if st := w.next(t, 2*time.Second); netNames(st) != "two" {
		t.Fatalf("after the retry: networks %q, want two", netNames(st))
	}
}

func TestWatchStartsWithoutDocker(t *testing.T) {
	f := newFakeDocker(t)
	f.Stop()
	f.Set([]network.Summary{bridgeNetwork("one", 1, "172.17.0.0/16", "172.17.0.1", nil)}, nil)
	s, err := New(f.Host())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.k = &fakeKernel{bridges: map[string]fakeBridge{"br-01ababababab": {index: 1}}}
	s.Logger = testLogger(t)
	w := startWatch(t, s)
	w.none(t, 500*time.Millisecond)
	f.Start()
	if st := w.next(t, 2*time.Second); netNames(st) != "one" {
		t.Fatalf("networks %q, want one", netNames(st))
	}
	if err := s.Watch(context.Background(), nil); err == nil {
		t.Errorf("Watch accepted a nil update")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

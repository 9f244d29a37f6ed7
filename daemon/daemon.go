// SPDX-License-Identifier: Apache-2.0

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/hostfw"
	"github.com/bpfnet/bpfnet/loader"
	"github.com/bpfnet/bpfnet/metrics"
)

// Collector is a datapath whose connection tracking expires entries that
// a timer must collect (the eBPF datapath's).
type Collector interface {
	GC() (int, error)
}

// Config is what a Daemon drives and how.
type Config struct {
	Datapath datapath.Datapath
	Source   Source
	// PinPath is the datapath's bpffs folder, for the attachments in the
	// metrics.
	PinPath string
	// GCInterval is how often a Collector is collected; 0 never.
	GCInterval time.Duration
	// Metrics, when set, is where /metrics is served, if the datapath is
	// a metrics.Reader; otherwise it is closed.
	Metrics net.Listener
	// Version is the build's, for the metrics.
	Version string
	// AllowDirectRouting is set on every state the daemon applies
	// (datapath.State.AllowDirectRouting, bpfnet run
	// --allow-direct-routing).
	AllowDirectRouting bool
	// HostFirewall is the host firewall's last check, for the metrics;
	// nil leaves it out.
	HostFirewall func() (hostfw.Status, bool)
	// Applied is called after every state made to take effect, with it
	// (the command records its warnings for `bpfnet status`).
	Applied func(datapath.State)
	// Log is where the daemon logs; nil is slog.Default().
	Log *slog.Logger
}

// Daemon keeps a datapath in step with a source.
type Daemon struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // one reconcile at a time
	applied *datapath.State
	current atomic.Pointer[datapath.State]

	// The link watch, restarted when the bridges change.
	watchCtx  context.Context
	stopWatch context.CancelFunc
	watching  string
	linkPoke  chan struct{}
	// The watch of the trusted host interfaces (trusted.go).
	stopTrusted     context.CancelFunc
	trustedWatching string
}

// New returns a daemon that has applied nothing yet.
func New(cfg Config) *Daemon {
	d := &Daemon{cfg: cfg, log: cfg.Log, linkPoke: make(chan struct{}, 1), stopWatch: func() {}, stopTrusted: func() {}}
	if d.log == nil {
		d.log = slog.Default()
	}
	return d
}

// Current is the state last applied; the zero State before Start.
func (d *Daemon) Current() datapath.State {
	if s := d.current.Load(); s != nil {
		return *s
	}
	return datapath.State{}
}

// Start applies s, the first state, in full. It changes nothing but what
// the datapath's Apply changes; on error the caller decides what to
// remove.
func (d *Daemon) Start(ctx context.Context, s datapath.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s.AllowDirectRouting = d.cfg.AllowDirectRouting
	d.servable(&s)
	if err := d.cfg.Datapath.Apply(ctx, s); err != nil {
		return err
	}
	d.store(s)
	return nil
}

// servable leaves out of s the ports the datapath cannot publish (those
// of IPv6 containers, for a datapath without IPv6; NAT64 mappings, for
// one without NAT64), each with a warning.
func (d *Daemon) servable(s *datapath.State) {
	if !datapath.PublishesNAT64(d.cfg.Datapath) {
		for _, w := range s.DropNAT64Ports(d.cfg.Datapath.Name()) {
			d.log.Warn("port left out", "reason", w)
			s.Warnings = append(s.Warnings, w)
		}
	}
	if datapath.PublishesIPv6(d.cfg.Datapath) {
		return
	}
	for _, w := range s.DropIPv6Ports(d.cfg.Datapath.Name()) {
		d.log.Warn("port left out", "reason", w)
		s.Warnings = append(s.Warnings, w)
	}
}

func (d *Daemon) store(s datapath.State) {
	d.applied = &s
	d.current.Store(&s)
}

// Reconcile reads the source and makes the datapath match it: what the
// daemon does on every update of the source and every link event. It
// returns whether it went incrementally (published ports only).
//
// The source is read under the lock of the apply: two reconciles at once
// (the loop's, and a CNI request's, cni.Server) apply their states in the
// order they read them, so an older state never lands after a newer one.
func (d *Daemon) Reconcile(ctx context.Context, reason string) (incremental bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.cfg.Source.State(ctx)
	if err != nil {
		return false, err
	}
	s.AllowDirectRouting = d.cfg.AllowDirectRouting
	return d.apply(ctx, s)
}

// apply makes the datapath match s; d.mu is held.
func (d *Daemon) apply(ctx context.Context, s datapath.State) (bool, error) {
	d.servable(&s)
	// The trusted interfaces of a network (every interface with
	// AllowDirectRouting) reach its published container ports: with any,
	// a change of ports is a change of the whole state.
	if pp, ok := d.cfg.Datapath.(datapath.PortPublisher); ok && d.applied != nil && !trustsInterfaces(s) {
		if unpub, pub, ok := PortsDiff(*d.applied, s); ok {
			if err := s.Validate(); err != nil {
				return false, err
			}
			err := d.publish(pp, unpub, pub)
			if err == nil {
				d.store(s)
				return true, nil
			}
			d.log.Warn("publishing the ports that changed; applying the whole state", "error", err)
		}
	}
	if err := d.cfg.Datapath.Apply(ctx, s); err != nil {
		return false, err
	}
	d.store(s)
	return false, nil
}

// trustsInterfaces tells whether an interface of the host is trusted with
// the published container ports of s.
func trustsInterfaces(s datapath.State) bool {
	if s.AllowDirectRouting {
		return true
	}
	for _, n := range s.Networks {
		if n.TrustedHostInterfaces != "" {
			return true
		}
	}
	return false
}

func (d *Daemon) publish(pp datapath.PortPublisher, unpub, pub []datapath.PortMapping) error {
	if len(unpub) > 0 {
		if err := pp.UnpublishPorts(unpub...); err != nil {
			return err
		}
	}
	if len(pub) > 0 {
		return pp.PublishPorts(pub...)
	}
	return nil
}

// Run follows the source and the links of the bridges, collects and
// serves metrics, until ctx is done; it needs a successful Start. It
// returns nil when ctx ends: the datapath stays as it is.
func (d *Daemon) Run(ctx context.Context) error {
	if d.applied == nil {
		return errors.New("daemon: Run before Start")
	}
	if d.cfg.Applied != nil {
		d.cfg.Applied(d.Current())
	}
	if err := d.serveMetrics(ctx); err != nil {
		return err
	}

	// The source's news: one pending poke stands for any number.
	updates := make(chan struct{}, 1)
	go func() {
		err := d.cfg.Source.Watch(ctx, func() {
			select {
			case updates <- struct{}{}:
			default:
			}
		})
		if err != nil && ctx.Err() == nil {
			d.log.Error("following the state's source", "error", err)
		}
	}()

	d.watchCtx = ctx
	d.watch(bridgesOf(d.Current()))
	d.watchTrusted(trustedOf(d.Current()))
	defer func() { d.stopWatch(); d.stopTrusted() }()

	var gcC <-chan time.Time
	gc, _ := d.cfg.Datapath.(Collector)
	if gc != nil && d.cfg.GCInterval > 0 {
		t := time.NewTicker(d.cfg.GCInterval)
		defer t.Stop()
		gcC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gcC:
			if n, err := gc.GC(); err != nil {
				d.log.Warn("conntrack gc", "error", err)
			} else if n > 0 {
				d.log.Debug("conntrack gc", "deleted", n)
			}
		case <-updates:
			d.resync(ctx, "source")
		case <-d.linkPoke:
			d.resync(ctx, "links")
		}
	}
}

// resync is Reconcile with its logging, the watch of the bridges kept up
// and the Applied hook.
func (d *Daemon) resync(ctx context.Context, reason string) {
	incr, err := d.Reconcile(ctx, reason)
	if err != nil {
		d.log.Warn("resync", "reason", reason, "error", err)
		return
	}
	s := d.Current()
	if d.cfg.Applied != nil {
		d.cfg.Applied(s)
	}
	d.watch(bridgesOf(s))
	d.watchTrusted(trustedOf(s))
	d.log.Info("resynced", "reason", reason, "incremental", incr, "endpoints", len(s.Endpoints), "ports", len(s.Ports),
		"pending_veths", len(s.PendingVeths), "cgroup_endpoints", len(s.CgroupEndpoints), "shared_netns", len(s.Shared),
		"no_network", len(s.NoNetwork))
}

// watch follows the links of bridges, restarting when they change: a
// veth joining a bridge gets the datapath at once.
func (d *Daemon) watch(bridges []string) {
	key := strings.Join(bridges, ",")
	if key == d.watching {
		return
	}
	d.stopWatch()
	d.watching = key
	wctx, cancel := context.WithCancel(d.watchCtx)
	d.stopWatch = cancel
	poke := func(netlink.Link) {
		select {
		case d.linkPoke <- struct{}{}:
		default:
		}
	}
	go func() {
		for wctx.Err() == nil {
			if err := loader.WatchLinks(wctx, netns.None(), bridges, poke, poke); err != nil && wctx.Err() == nil {
				d.log.Warn("watching links", "error", err)
				time.Sleep(time.Second)
			}
		}
	}()
}

func bridgesOf(s datapath.State) []string {
	var out []string
	for _, n := range s.Networks {
		out = append(out, n.Bridge)
	}
	return out
}

// serveMetrics serves /metrics on the listener of the config, if the
// datapath counts anything; the server stops with ctx.
func (d *Daemon) serveMetrics(ctx context.Context) error {
	ln := d.cfg.Metrics
	if ln == nil {
		return nil
	}
	r, ok := d.cfg.Datapath.(metrics.Reader)
	if !ok {
		ln.Close()
		d.log.Warn(fmt.Sprintf("no metrics with the %s datapath: its counters are its own", d.cfg.Datapath.Name()))
		return nil
	}
	pin := d.cfg.PinPath
	coll := metrics.NewCollector(r, d.Current,
		func() ([]loader.Attachment, error) { return loader.List(pin) },
		metrics.BuildInfo{Version: d.cfg.Version})
	reg := metrics.NewRegistry(coll)
	if d.cfg.HostFirewall != nil {
		reg.MustRegister(metrics.NewHostFirewallCollector(d.cfg.HostFirewall))
	}
	srv := &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	d.log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

func metricsMux(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	return mux
}

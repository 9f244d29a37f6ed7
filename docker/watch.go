// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"context"
	"errors"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/bpfnet/bpfnet/datapath"
)

// Timings of Watch; tests shorten them.
var (
	// coalesce is how long Watch gathers a burst of events before it
	// reads the state once for all of them.
	coalesce = 50 * time.Millisecond
	// backoffMin and backoffMax bound the wait between attempts to reach
	// Docker again (doubling from min to max).
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	// readTimeout bounds one reading of the state.
	readTimeout = 30 * time.Second
)

// relevant are the events after which the state is read again.
var relevant = map[events.Type][]events.Action{
	events.ContainerEventType: {events.ActionStart, events.ActionDie, events.ActionStop, events.ActionRestart, events.ActionRename, events.ActionPause, events.ActionUnPause},
	events.NetworkEventType:   {events.ActionConnect, events.ActionDisconnect, events.ActionCreate, events.ActionDestroy},
}

func eventFilters() filters.Args {
	f := filters.NewArgs()
	seen := map[events.Action]bool{}
	for t, actions := range relevant {
		f.Add("type", string(t))
		for _, a := range actions {
			if !seen[a] {
				seen[a] = true
				f.Add("event", string(a))
			}
		}
	}
	return f
}

func isRelevant(m events.Message) bool {
	for _, a := range relevant[m.Type] {
		if a == m.Action {
			return true
		}
	}
	return false
}

// Watch calls update with the full State at start and again after every
// burst of relevant events (containers starting, dying, stopping,
// restarting, renamed, paused, unpaused; networks created, destroyed,
// connected, disconnected), the events of a burst gathered for 50 ms. It runs until ctx is done, then
// returns nil; only a nil update is an error.
//
// When Docker goes away Watch keeps quiet, so the caller keeps what it
// has, and tries to reach Docker again after 100 ms, doubling the wait up
// to 5 s; once it succeeds it calls update with a fresh State. A reading
// of the state that fails while Docker answers is retried the same way.
//
// update and every reading of the state run on the calling goroutine,
// which must be in dockerd's network namespace (see the package
// documentation). update must not block for long: events wait meanwhile
// (dockerd buffers them).
func (s *Source) Watch(ctx context.Context, update func(datapath.State)) error {
	if update == nil {
		return errors.New("docker: Watch needs an update function")
	}
	log := s.logger()
	backoff := backoffMin
	wait := func() bool {
		t := time.NewTimer(backoff)
		defer t.Stop()
		backoff = min(backoff*2, backoffMax)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	connected := false
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		// Subscribe before reading the state so that nothing happening in
		// between is missed: Events returns once dockerd has answered.
		msgs, errs := s.cli.Events(sctx, events.ListOptions{Filters: eventFilters()})
		err := s.session(sctx, msgs, errs, update, &backoff, &connected)
		cancel()
		if ctx.Err() != nil {
			break
		}
		var ue *UnreachableError
		if errors.As(err, &ue) || !connected {
			log.Warn("docker unreachable; the datapath keeps its last state", "host", s.host, "error", err, "retry_in", backoff)
		} else {
			log.Warn("docker event stream ended; reconnecting", "host", s.host, "error", err, "retry_in", backoff)
		}
		connected = false
		if !wait() {
			break
		}
	}
	return nil
}

// session reads the state and follows the event stream until it breaks,
// returning why.
func (s *Source) session(ctx context.Context, msgs <-chan events.Message, errs <-chan error, update func(datapath.State), backoff *time.Duration, connected *bool) error {
	log := s.logger()
	// The first reading is due at once.
	timer := time.NewTimer(0)
	defer timer.Stop()
	armed := true
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return s.wrap("events", err)
		case m := <-msgs:
			if !armed && isRelevant(m) {
				timer.Reset(coalesce)
				armed = true
			}
		case <-timer.C:
			armed = false
			rctx, cancel := context.WithTimeout(ctx, readTimeout)
			st, err := s.State(rctx)
			cancel()
			if err != nil {
				var ue *UnreachableError
				if errors.As(err, &ue) {
					return err
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				log.Warn("reading docker state failed; retrying", "error", err, "retry_in", *backoff)
				timer.Reset(*backoff)
				*backoff = min(*backoff*2, backoffMax)
				armed = true
				continue
			}
			if !*connected {
				log.Info("docker connected", "host", s.host, "api_version", s.APIVersion(), "endpoints", len(st.Endpoints), "ports", len(st.Ports))
			}
			*connected = true
			*backoff = backoffMin
			update(st)
		}
	}
}

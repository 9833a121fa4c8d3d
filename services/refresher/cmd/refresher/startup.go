package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

// readiness is what /readyz, the status page and the log say about whether
// this replica can serve: during start-up, the step it waits for and why;
// once started, a live check of NATS and JetStream. Every change is logged.
type readiness struct {
	mu      sync.Mutex
	logger  *slog.Logger
	reason  string                          // while starting: what start-up waits for
	check   func(ctx context.Context) error // once started
	last    string                          // the last result reported ("" ready)
	started bool
}

// starting records what start-up waits for.
func (r *readiness) starting(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reason = reason
}

// setStarted switches to the live check once every part runs.
func (r *readiness) setStarted(check func(ctx context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.check, r.started, r.last = check, true, ""
}

// isStarted reports whether start-up finished.
func (r *readiness) isStarted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

// Check reports why the replica is not ready, or nil; it logs every change
// of the answer once started.
func (r *readiness) Check(ctx context.Context) error {
	r.mu.Lock()
	check, reason, log := r.check, r.reason, r.logger
	r.mu.Unlock()
	if check == nil {
		if reason == "" {
			reason = "starting"
		}
		return errors.New(reason)
	}
	err := check(ctx)
	now := ""
	if err != nil {
		now = err.Error()
	}
	r.mu.Lock()
	changed := now != r.last
	r.last = now
	r.mu.Unlock()
	if changed && log != nil {
		if err != nil {
			log.Warn("not ready", slog.String("reason", now))
		} else {
			log.Info("ready again")
		}
	}
	return err
}

// monitor runs Check every interval until ctx ends, so that a change is
// logged even when nothing polls /readyz.
func (r *readiness) monitor(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_ = r.Check(cctx)
			cancel()
		}
	}
}

// readyCheck is the live readiness check: connected to NATS, the watch of
// the bucket current (not stalled), and JetStream able to serve the bucket.
func (m *Main) readyCheck(ctx context.Context) error {
	if !m.nc.IsConnected() || m.svcNC != nil && !m.svcNC.IsConnected() {
		return errors.New("not connected to NATS")
	}
	if err := m.store.WatchStalled(); err != nil {
		return err
	}
	return m.store.Check(ctx)
}

// pageStatus is Status for the status page: before start-up finishes, only
// this replica's name and version.
func (m *Main) pageStatus(q wire.StatusRequest) wire.Status {
	if !m.ready.isStarted() {
		return wire.Status{Instance: m.instance, Version: Version}.Page(q)
	}
	return m.Status(q)
}

// dial connects with cc: to the embedded server at once, else to nats.url,
// retrying until ctx ends (connectNATS).
func (m *Main) dial(ctx context.Context, cc natsx.ConnectConfig) (*nats.Conn, error) {
	if m.ns != nil {
		return natsx.Connect(cc)
	}
	return m.connectNATS(ctx, cc)
}

// connectNATS connects to the external servers of nats.url, retrying with
// backoff (0.5 s doubling to 15 s) until they answer or ctx ends: servers and
// refreshers start in any order. Each failure is logged and shown on /readyz.
func (m *Main) connectNATS(ctx context.Context, cc natsx.ConnectConfig) (*nats.Conn, error) {
	wait := 500 * time.Millisecond
	for {
		nc, err := natsx.Connect(cc)
		if err == nil {
			return nc, nil
		}
		why := fmt.Sprintf("cannot connect to NATS at nats.url (%s): %v", natsx.RedactURL(cc.URL), errors.Unwrap(err))
		if cc.Creds != "" {
			why += " (credentials from nats.creds)"
		}
		m.ready.starting(why)
		m.logger.Warn("cannot connect to NATS; retrying", slog.String("reason", why), slog.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w", why, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 15*time.Second)
	}
}

// listenProblem names the configuration field and the fix for an address
// the embedded server cannot listen on.
func listenProblem(err error, demo bool) error {
	var le *natsx.ListenError
	if !errors.As(err, &le) {
		return err
	}
	field, fix := "nats.embedded.listen", "set nats.embedded.listen to a free address, or nats.url to use the server already there"
	if le.Cluster {
		field, fix = "nats.embedded.cluster.listen", "set nats.embedded.cluster.listen to a free address"
	}
	msg := fmt.Sprintf("%s %s is in use (%v): is another nats-server running? %s", field, le.Addr, le.Err, fix)
	if demo {
		msg += " (with --demo, in a copy of services/refresher/cmd/refresher/demo.yaml passed with --config)"
	}
	return errors.New(msg)
}

// waitingForJetStream reports a failed attempt to open the bucket while
// JetStream is not yet available: on /readyz, and in the log at most every
// 5 s.
func (m *Main) waitingForJetStream(err error) {
	why := "waiting for JetStream: " + natsx.JetStreamProblem(err).Error()
	m.ready.starting(why)
	if time.Since(m.jsWaitLogged) >= 5*time.Second {
		m.jsWaitLogged = time.Now()
		m.logger.Warn("waiting for JetStream", slog.String("reason", why))
	}
}

// freshDemoStore points the demo configuration's embedded server at a new
// temporary directory, removed on Close: every demo starts from clean state,
// with no token of an earlier run's simulator and no earlier providers.
func (m *Main) freshDemoStore(cfg *config.Config) error {
	dir, err := os.MkdirTemp("", "tokenbus-demo-")
	if err != nil {
		return fmt.Errorf("demo store: %w", err)
	}
	m.demoDir = dir
	cfg.NATS.Embedded.StoreDir = dir
	return nil
}

// listenFailed names the setting (a configuration field or flag) whose
// address cannot be listened on, and the fix.
func listenFailed(setting, addr string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err // "bind: address already in use", without the address again
	}
	return fmt.Errorf("%s %s: %w (is another program listening there? set %s to a free address)", setting, addr, err, setting)
}

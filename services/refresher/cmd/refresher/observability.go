package main

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/httpapi"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

// observability is the process's metrics (exported on /metrics) and the
// status page's history of recent refreshes.
type observability struct {
	prom    *telemetry.Prometheus
	metrics *metrics.Metrics
	history *httpapi.History
}

var (
	_ refresher.Recorder = (*observability)(nil)
	_ refresher.Recorder = (*metrics.Metrics)(nil)
	_ refresher.Recorder = (*httpapi.History)(nil)
	_ rpc.Recorder       = (*metrics.Metrics)(nil)
)

func newObservability(providers []string, instance string) (*observability, error) {
	prom, err := telemetry.NewPrometheus("tokenbus-refresher", Version, instance)
	if err != nil {
		return nil, err
	}
	met, err := metrics.New(prom.MeterProvider(), providers)
	if err != nil {
		_ = prom.Shutdown(context.Background())
		return nil, err
	}
	return &observability{prom: prom, metrics: met, history: httpapi.NewHistory(0, nil)}, nil
}

// RecordAttempt records an upstream attempt in the metrics and the history.
func (o *observability) RecordAttempt(provider string, took time.Duration, err error) {
	o.metrics.RecordAttempt(provider, took, err)
	o.history.RecordAttempt(provider, took, err)
}

// trackExpiry reports mgr's token expiry and lifetime
// (tokenbus_token_expires_in_seconds, tokenbus_token_lifetime_seconds) and
// its condition (tokenbus_provider_condition).
func (o *observability) trackExpiry(mgr *refresh.Manager) {
	o.metrics.TrackToken(mgr.Name(), func() (time.Time, time.Time, bool) {
		if e := mgr.Slot().Load(); e != nil {
			return e.Token.IssuedAt, e.Token.ExpiresAt, true
		}
		return time.Time{}, time.Time{}, false
	})
	o.metrics.TrackCondition(mgr.Name(), func() string { _, c := mgr.Brief(); return c })
}

func (o *observability) close(ctx context.Context) error {
	if o == nil {
		return nil
	}
	return errors.Join(o.metrics.Close(), o.prom.Shutdown(ctx))
}

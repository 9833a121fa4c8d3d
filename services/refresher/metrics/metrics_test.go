package metrics_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
)

func newMetrics(tb testing.TB, providers ...string) (*metrics.Metrics, *sdkmetric.ManualReader) {
	tb.Helper()
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	m, err := metrics.New(mp, providers)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = m.Close(); _ = mp.Shutdown(context.Background()) })
	return m, r
}

// points returns name's data points as "label=value,…" → value.
func points(tb testing.TB, r *sdkmetric.ManualReader, name string) map[string]float64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	key := func(s attribute.Set) string {
		k := ""
		for _, kv := range s.ToSlice() {
			if k != "" {
				k += ","
			}
			k += string(kv.Key) + "=" + kv.Value.String()
		}
		return k
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[key(p.Attributes)] += float64(p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[key(p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					out[key(p.Attributes)] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[key(p.Attributes)] += float64(p.Count)
				}
			}
		}
	}
	return out
}

func TestInstruments(t *testing.T) {
	m, r := newMetrics(t, "daraja", "mpay")
	m.RecordAttempt("daraja", 20*time.Millisecond, nil)
	m.RecordAttempt("daraja", time.Second, &refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503})
	m.RecordAttempt("daraja", time.Second, &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400})
	m.RecordAttempt("daraja", time.Second, errors.New("publish failed"))
	m.RecordRequest(metrics.EndpointGet, "daraja", metrics.CodeOK, time.Microsecond)
	m.RecordRequest(metrics.EndpointGet, "daraja", 503, time.Microsecond)
	m.RecordRequest(metrics.EndpointRefresh, "mpay", 502, time.Millisecond)
	m.RecordRequest(metrics.EndpointGet, "who-knows", 404, time.Microsecond)
	m.RecordRequest(metrics.EndpointGet, "daraja", 599, time.Microsecond) // not a wire code: counted as 503
	exp := time.Now().Add(90 * time.Second)
	m.TrackExpiry("daraja", func() (time.Time, bool) { return exp, true })
	m.TrackExpiry("mpay", func() (time.Time, bool) { return time.Time{}, false })
	m.RegisterPool("mpay", func() int { return 3 })
	m.SetLeader(true)
	m.LeaseRenewalFailed()
	m.LeaseRenewalFailed()
	m.TokenDiscarded(metrics.DiscardLeaseLost)
	m.TokenDiscarded(metrics.DiscardLeaseLost)
	m.TokenDiscarded("made-up") // counted as publish_failed: the label set stays fixed

	check := func(name string, want map[string]float64) {
		t.Helper()
		got := points(t, r, name)
		if len(got) != len(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s{%s} = %v, want %v (all: %v)", name, k, got[k], v, got)
			}
		}
	}
	check("tokenbus.refreshes", map[string]float64{
		"outcome=ok,provider=daraja": 1, "outcome=transient,provider=daraja": 2, "outcome=permanent,provider=daraja": 1,
	})
	check("tokenbus.upstream.duration", map[string]float64{"provider=daraja": 4})
	check("tokenbus.requests", map[string]float64{
		"code=200,endpoint=token.get,provider=daraja":   1,
		"code=503,endpoint=token.get,provider=daraja":   2,
		"code=502,endpoint=token.refresh,provider=mpay": 1,
		"code=404,endpoint=token.get,provider=_unknown": 1,
	})
	check("tokenbus.request.duration", map[string]float64{
		"code=200,endpoint=token.get,provider=daraja":   1,
		"code=503,endpoint=token.get,provider=daraja":   2,
		"code=502,endpoint=token.refresh,provider=mpay": 1,
		"code=404,endpoint=token.get,provider=_unknown": 1,
	})
	check("tokenbus.pool.size", map[string]float64{"provider=mpay": 3})
	check("tokenbus.leader", map[string]float64{"": 1})
	check("tokenbus.lease.renewal_failures", map[string]float64{"": 2})
	check("tokenbus.tokens.discarded", map[string]float64{"reason=lease_lost": 2, "reason=publish_failed": 1})
	if got := points(t, r, "tokenbus.token.expires_in")["provider=daraja"]; got < 85 || got > 90 {
		t.Errorf("expires_in = %v, want about 90", got)
	}
	if _, ok := points(t, r, "tokenbus.token.expires_in")["provider=mpay"]; ok {
		t.Error("expires_in reported for a provider without a token")
	}
	m.SetLeader(false)
	check("tokenbus.leader", map[string]float64{"": 0})
}

// TestSummaryCountedOncePerCollection: tokenbus_providers and
// tokenbus_providers_by_condition come from one count of the providers per
// collection (with 100,000 providers a count is a walk of them all; a
// scrape made four).
func TestSummaryCountedOncePerCollection(t *testing.T) {
	m, r := newMetrics(t)
	calls := 0
	m.RegisterSummary(func() wire.StatusSummary {
		calls++
		return wire.StatusSummary{Total: 5, States: map[string]int{wire.StateOK: 3, wire.StateNoToken: 2},
			Conditions: map[string]int{wire.ConditionOK: 3, wire.ConditionExpired: 1, wire.ConditionStarting: 1}}
	})
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("the summary was counted %d times in one collection", calls)
	}
	if got := points(t, r, "tokenbus.providers"); len(got) != 3 || got["state=ok"] != 3 || got["state=failing"] != 0 || got["state=no_token"] != 2 {
		t.Fatalf("tokenbus.providers: %v", got)
	}
	if got := points(t, r, "tokenbus.providers.by_condition"); len(got) != len(wire.Conditions) || got["condition=ok"] != 3 ||
		got["condition=expired"] != 1 || got["condition=starting"] != 1 || got["condition=retrying"] != 0 {
		t.Fatalf("tokenbus.providers.by_condition: %v", got)
	}
}

func TestNilMetricsIsANoOp(t *testing.T) {
	var m *metrics.Metrics
	m.RecordAttempt("x", 0, nil)
	m.RecordRequest(metrics.EndpointGet, "x", 200, 0)
	m.TrackExpiry("x", nil)
	m.RegisterPool("x", nil)
	m.SetLeader(true)
	m.LeaseRenewalFailed()
	m.TokenDiscarded(metrics.DiscardLeaseLost)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(nil, []string{"x"}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRecordRequest is the per-request cost on the token.get path.
func BenchmarkRecordRequest(b *testing.B) {
	m, _ := newMetrics(b, "daraja", "mpay", "momo", "airtel")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RecordRequest(metrics.EndpointGet, "momo", metrics.CodeOK, 15*time.Microsecond)
		}
	})
}

package registry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

// benchSet returns a provider set of n runtime providers holding valid
// tokens, every 50th of them with a failed refresh (state failing).
func benchSet(tb testing.TB, n int) *Set {
	tb.Helper()
	ps := New()
	now := time.Now()
	for i := range n {
		name := fmt.Sprintf("m-%06d", i)
		mgr := refresh.NewManager(refresh.Config{Name: name, Kind: "daraja"})
		e, err := refresh.NewEntry(wire.Token{Provider: name, AccessToken: "t", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}, uint64(i+1))
		if err != nil {
			tb.Fatal(err)
		}
		mgr.Slot().Store(e)
		if i%50 == 0 {
			mgr.Slot().Fail(errors.New("daraja: HTTP 503"), now)
		}
		ps.Add(&Served{Name: name, Kind: "daraja", Source: wire.SourceRuntime, Manager: mgr, Reporter: mgr})
	}
	return ps
}

// BenchmarkStatus100k measures, with 100,000 providers, what scalebench's
// poll of token.status ({"limit":1}) costs (with its count of every
// provider reused, and counted afresh), a page of the status page filtered
// by state, and one /metrics scrape (tokenbus_providers and
// tokenbus_providers_by_condition count every provider).
func BenchmarkStatus100k(b *testing.B) {
	ps := benchSet(b, 100_000)
	b.Run("limit1", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sum, page, _ := ps.Status(wire.StatusRequest{Limit: 1}, true)
			if sum.Total != 100_000 || len(page) != 1 {
				b.Fatal(sum)
			}
		}
	})
	// limit1 reuses its count (summaryCache); fresh counts every time, as
	// a small set is.
	b.Run("limit1-fresh", func(b *testing.B) {
		ps.sumCacheMin = time.Duration(math.MaxInt64)
		defer func() { ps.sumCacheMin = summaryCacheMin }()
		b.ReportAllocs()
		for b.Loop() {
			sum, page, _ := ps.Status(wire.StatusRequest{Limit: 1}, true)
			if sum.Total != 100_000 || len(page) != 1 {
				b.Fatal(sum)
			}
		}
	})
	b.Run("failing-page100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, page, _ := ps.Status(wire.StatusRequest{State: wire.StateFailing, Limit: 100}, true)
			if len(page) != 100 {
				b.Fatal(len(page))
			}
		}
	})
	b.Run("metrics", func(b *testing.B) {
		prom, err := telemetry.NewPrometheus("tokenbus-refresher", "bench", "bench")
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = prom.Shutdown(context.Background()) }()
		met, err := metrics.New(prom.MeterProvider(), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = met.Close() }()
		met.RegisterSummary(ps.Summary)
		h := prom.Handler()
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
			if w.Code != 200 {
				b.Fatal(w.Code)
			}
		}
	})
}

package metrics_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/telemetry"
)

// Every query of the Grafana dashboard in deploy/grafana names only metrics
// that /metrics exports: the names are scraped from a real exporter after
// every instrument has recorded something.
func TestGrafanaDashboardQueriesExistingMetrics(t *testing.T) {
	prom, err := telemetry.NewPrometheus("tokenbus-refresher", "test", "test-1")
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Shutdown(context.Background())
	m, err := metrics.New(prom.MeterProvider(), []string{"daraja", "mpay"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.RecordAttempt("daraja", time.Millisecond, nil)
	m.RecordAttempt("daraja", time.Millisecond, errors.New("down"))
	m.RecordRequest(metrics.EndpointGet, "daraja", metrics.CodeOK, time.Microsecond)
	m.TrackExpiry("daraja", func() (time.Time, bool) { return time.Now().Add(time.Minute), true })
	m.RegisterPool("mpay", func() int { return 3 })
	m.SetLeader(true)
	m.LeaseRenewalFailed()
	m.TrackCondition("daraja", func() string { return "ok" })
	m.RegisterSummary(func() wire.StatusSummary {
		return wire.StatusSummary{Total: 1, States: map[string]int{"ok": 1}, Conditions: map[string]int{"ok": 1}}
	})
	m.Event(wire.Event{Provider: "daraja", Type: wire.EventRefreshed})

	rec := httptest.NewRecorder()
	prom.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	exported := map[string]bool{}
	for line := range strings.Lines(rec.Body.String()) {
		if name, _, ok := strings.Cut(line, "{"); ok && !strings.HasPrefix(line, "#") {
			exported[name] = true
		} else if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(line, "#") {
			exported[f[0]] = true
		}
	}

	f, err := os.Open("../../../deploy/grafana/tokenbus.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	body, _ := io.ReadAll(f)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(body, &dash); err != nil {
		t.Fatal(err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("no panels")
	}
	name := regexp.MustCompile(`\btokenbus_\w+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := name.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no tokenbus metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				if !exported[n] {
					t.Errorf("panel %q: query %q names %s, which /metrics does not export", p.Title, tg.Expr, n)
				}
			}
		}
	}
}

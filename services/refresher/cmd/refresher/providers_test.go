package main

import (
	"runtime"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/provider/httpx"
)

// TestProvidersShareOneTransport: a provider built over the refresher's
// shared, instrumented transport costs its own few fields only — no
// transport, no otelhttp wrapper and no metric instruments of its own
// (with those, 1 KiB per provider here, with no meter provider set, and
// about 4.5 KiB in the refresher; 100,000 providers share one).
func TestProvidersShareOneTransport(t *testing.T) {
	shared := httpx.Instrument(httpx.NewTransport(16))
	for _, p := range []config.Provider{
		{Name: "d", Kind: config.KindDaraja, BaseURL: "https://sandbox.safaricom.co.ke", ConsumerKey: "k", ConsumerSecret: "s"},
		{Name: "m", Kind: config.KindMPay, BaseURL: "https://api.mpayafrica.co.tz", Username: "u", Password: "p"},
		{Name: "o", Kind: config.KindOAuth2, TokenURL: "https://auth.example.com/token", ClientID: "c", ClientSecret: "s", Headers: map[string]refresher.Secret{"X-Key": "v"}},
		{Name: "a", Kind: config.KindAirtel, BaseURL: "https://openapiuat.airtel.africa", ClientID: "c", ClientSecret: "s"},
	} {
		p.Timeout = config.Duration(5 * time.Second)
		const n = 2000
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range n {
			if _, err := buildProvider(p, shared); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		per := (after.TotalAlloc - before.TotalAlloc) / n
		t.Logf("%s: %d bytes, %d allocations per provider", p.Kind, per, (after.Mallocs-before.Mallocs)/n)
		if per > 512 {
			t.Errorf("%s: %d bytes allocated per provider built over a shared transport", p.Kind, per)
		}
	}
}

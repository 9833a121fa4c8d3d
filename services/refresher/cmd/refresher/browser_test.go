package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// The status page, opened in a real headless Chromium, shows what a person
// on call needs: every provider with its state, a countdown to expiry that
// moves, the last refresh and last error, which replica leads, and a chart of
// recent refreshes. Set TOKENBUS_SCREENSHOT=file.png to keep a screenshot.
func TestStatusPageInBrowser(t *testing.T) {
	chromium := testutil.Chromium(t)
	sim := simulator.New(simulator.Config{DarajaTTL: 45 * time.Second, DarajaSecret: consumerSecret})
	broken := httptest.NewServer(sim)
	t.Cleanup(broken.Close)
	m, _ := startMain(t, sim, fmt.Sprintf(`
  - name: daraja-broken
    kind: daraja
    base_url: %s
    consumer_key: sim-consumer-key
    consumer_secret: not-the-secret
`, broken.URL))

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 760), chromedp.Flag("disable-component-update", true))...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+m.httpAddr+"/")); err != nil {
		t.Fatalf("open the status page: %v", err)
	}
	// text returns what a person sees in the first element matching sel ("" if none).
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q) || {innerText: ""}).innerText`, sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	row := func(provider, cell string) string {
		return text(fmt.Sprintf(`tr[data-provider=%q] td.%s`, provider, cell))
	}

	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if s := row("daraja-test", "state"); s != "OK" {
			return fmt.Errorf("daraja-test state %q", s)
		}
		if s := row("daraja-broken", "state"); s != "No token" {
			return fmt.Errorf("daraja-broken state %q", s)
		}
		return nil
	})
	if s := text("#leader"); s != "Leader: this replica ("+m.instance+")" {
		t.Errorf("leader: %q", s)
	}
	if s := text("#overall"); !strings.Contains(s, "no valid token") || !strings.Contains(s, "daraja-broken") {
		t.Errorf("overall: %q", s)
	}
	if s := row("daraja-test", "kind"); s != "daraja" {
		t.Errorf("kind: %q", s)
	}
	if s := row("daraja-test", "last-refresh"); !regexp.MustCompile(`^\d+s ago$`).MatchString(s) {
		t.Errorf("last refresh: %q", s)
	}
	if s := row("daraja-test", "last-error"); s != "—" {
		t.Errorf("last error of a healthy provider: %q", s)
	}
	if s := row("daraja-broken", "last-error"); !strings.Contains(s, "bad credentials") || !strings.Contains(s, "ago") {
		t.Errorf("last error: %q", s)
	}
	if s := row("daraja-broken", "expires"); s != "—" {
		t.Errorf("expiry of a provider without a token: %q", s)
	}
	if s := row("daraja-broken", "condition"); !strings.Contains(s, "Credentials rejected") || !strings.Contains(s, "cause: rejected_credentials") || !strings.Contains(s, "ago") {
		t.Errorf("condition of a provider whose credentials are rejected: %q", s)
	}
	if s := row("daraja-test", "condition"); !strings.HasPrefix(s, "OK") {
		t.Errorf("condition of a healthy provider: %q", s)
	}

	// The countdown moves on its own, between polls, and stays below the lifetime.
	countdown := regexp.MustCompile(`^(\d+)s$`)
	first := row("daraja-test", "expires")
	if mm := countdown.FindStringSubmatch(first); mm == nil {
		t.Fatalf("countdown %q, want whole seconds", first)
	} else if n, _ := strconv.Atoi(mm[1]); n > 45 || n < 30 {
		t.Fatalf("countdown %q, want 30–45 s of a 45 s token", first)
	}
	testutil.CheckFor(t, 3*time.Second, 100*time.Millisecond, func() error {
		if now := row("daraja-test", "expires"); now == first {
			return fmt.Errorf("countdown stuck at %q", now)
		}
		return nil
	})

	// The chart shows a point per upstream attempt, coloured by outcome.
	testutil.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#chart circle.ok").length * 1000 + document.querySelectorAll("#chart circle.permanent").length`))
		if err != nil || n < 1001 {
			return fmt.Errorf("chart points (ok×1000 + permanent) = %d, %v", n, err)
		}
		return nil
	})
	if s := text("#summary"); !strings.Contains(s, "ok") || !strings.Contains(s, "1 permanent failure") {
		t.Errorf("chart summary: %q", s)
	}

	if path := os.Getenv("TOKENBUS_SCREENSHOT"); path != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// When the refresher goes away, the page says so instead of showing stale data as live.
	_ = m.httpSrv.Close()
	testutil.CheckFor(t, 5*time.Second, 100*time.Millisecond, func() error {
		if s := text("#banner"); !strings.Contains(s, "Cannot reach the refresher") {
			return fmt.Errorf("banner %q", s)
		}
		return nil
	})
}

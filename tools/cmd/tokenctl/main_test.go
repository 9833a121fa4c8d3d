package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tokenctl runs the command to completion and returns its exit code and
// output.
func tokenctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := exitCode(run(ctx, args, &stdout, &stderr), &stderr)
	return code, stdout.String(), stderr.String()
}

func TestGet(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	want := h.Current()

	code, out, errOut := tokenctl(t, "--server", h.URL, "get", h.Provider)
	if code != 0 || !strings.Contains(out, want.AccessToken) || !strings.Contains(out, "expires_at") || !strings.Contains(out, "(in ") {
		t.Fatalf("get: %d\n%s\n%s", code, out, errOut)
	}
	// Flags after the command, JSON out.
	code, out, errOut = tokenctl(t, "get", h.Provider, "--server", h.URL, "--json")
	var got wire.Token
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got != want {
		t.Fatalf("get --json: %d %q %s", code, out, errOut)
	}
	code, _, errOut = tokenctl(t, "--server", h.URL, "get", "daraja-prod")
	if code != 1 || !strings.Contains(errOut, "404") || !strings.Contains(errOut, `unknown provider "daraja-prod"`) {
		t.Fatalf("unknown provider: %d %s", code, errOut)
	}
}

func TestRefresh(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	old := h.Current()
	code, out, errOut := tokenctl(t, "--server", h.URL, "refresh", h.Provider)
	cur := h.Current()
	if code != 0 || cur.AccessToken == old.AccessToken || !strings.Contains(out, "new token "+short(cur.AccessToken)) {
		t.Fatalf("refresh: %d\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, cur.AccessToken) || strings.Contains(out, old.AccessToken) {
		t.Fatal("refresh printed a whole token")
	}
	// Reporting a token that is no longer current changes nothing.
	code, out, _ = tokenctl(t, "--server", h.URL, "--json", "refresh", h.Provider, "--token", old.AccessToken)
	var got wire.Token
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got != cur || h.Current() != cur {
		t.Fatalf("refresh --token old: %d %s", code, out)
	}
	if n := h.Sim.Stats(simulator.Daraja).TokensIssued; n != 2 {
		t.Fatalf("tokens issued %d, want 2", n)
	}
}

func TestStatus(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	code, out, errOut := tokenctl(t, "--server", h.URL, "status")
	for _, want := range []string{"REPLICA", "harness-1", "leader", "PROVIDER", h.Provider, "daraja", "ok", "(in "} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q", want)
		}
	}
	if code != 0 || t.Failed() {
		t.Fatalf("status: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = tokenctl(t, "--server", h.URL, "status", "--json", "--wait", "100ms")
	var st []wire.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st) != 1 || st[0].Providers[0].Name != h.Provider {
		t.Fatalf("status --json: %d %s", code, out)
	}
	// No refresher: a clear failure.
	h.Refresher().Stop()
	code, _, errOut = tokenctl(t, "--server", h.URL, "status", "--wait", "100ms")
	if code != 1 || !strings.Contains(errOut, "no refresher answered") {
		t.Fatalf("status without refresher: %d %s", code, errOut)
	}
}

func TestWatch(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	first := h.Current()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		var stderr strings.Builder
		done <- exitCode(run(ctx, []string{"--server", h.URL, "--json", "--count", "2", "watch", h.Provider}, pw, &stderr), &stderr)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	read := func() watchEvent {
		t.Helper()
		if !lines.Scan() {
			t.Fatal("watch ended early")
		}
		var ev watchEvent
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil || ev.Token == nil {
			t.Fatalf("line %q: %v", lines.Text(), err)
		}
		return ev
	}
	if ev := read(); ev.Provider != h.Provider || *ev.Token != first {
		t.Fatalf("first event %+v", ev)
	}
	next := h.ForceRefresh()
	if ev := read(); *ev.Token != next || ev.Revision < 2 {
		t.Fatalf("second event %+v", ev)
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	// Human output, stopped by its context.
	w := &syncWriter{w: &strings.Builder{}}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	go func() { // stop once a line is out
		for ctx2.Err() == nil && !strings.Contains(w.String(), "rev") {
			time.Sleep(10 * time.Millisecond)
		}
		cancel2()
	}()
	if err := run(ctx2, []string{"--server", h.URL, "watch"}, w, io.Discard); err != nil {
		t.Fatal(err)
	}
	if s := w.String(); !strings.Contains(s, h.Provider) || !strings.Contains(s, short(next.AccessToken)) || strings.Contains(s, next.AccessToken) {
		t.Fatalf("human watch output %q", s)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"get"}, {"get", "a", "b"}, {"frobnicate"}, {"status", "x"}, {"--bogus"}, {"--timeout", "0s", "status"}} {
		if code, _, _ := tokenctl(t, args...); code != 2 {
			t.Errorf("tokenctl %q: exit %d, want 2", args, code)
		}
	}
	if code, _, errOut := tokenctl(t, "--help"); code != 0 || !strings.Contains(errOut, "commands:") {
		t.Errorf("--help: %d %s", code, errOut)
	}
	if code, out, _ := tokenctl(t, "--version"); code != 0 || out != "tokenctl "+Version+"\n" {
		t.Errorf("--version: %d %q", code, out)
	}
	if code, _, errOut := tokenctl(t, "--server", "nats://user:hunter2@127.0.0.1:1", "--timeout", "200ms", "status"); code != 1 || strings.Contains(errOut, "hunter2") {
		t.Errorf("unreachable server: %d %s", code, errOut)
	}
}

func TestShort(t *testing.T) {
	for tok, want := range map[string]string{
		"abcdefghijklmnop": "abcdef…", "abcdefghijklmnopqrstuvwxyz0123456789": "abcdef…",
		"abcdefghijkl": "abcdef…", "short": "sh…", "": "…",
	} {
		if got := short(tok); got != want {
			t.Errorf("short(%q) = %q, want %q", tok, got, want)
		}
	}
}

// syncWriter is a strings.Builder safe to read while written.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// TestEvents: tokenctl events prints a provider's events as the refresher
// publishes them: failed refreshes during an outage, then the recovery, as
// JSON lines, never with a token; and one line of text per event.
func TestEvents(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stderr := &syncWriter{w: &strings.Builder{}}
	go func() {
		done <- exitCode(run(ctx, []string{"--server", h.URL, "--json", "events", h.Provider}, pw, stderr), stderr)
		pw.Close()
	}()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// In an outage a reported token makes the refresher fail and retry
	// every 20-200 ms: events keep coming until tokenctl has seen one.
	h.Sim.SetFaults(simulator.Daraja, simulator.Faults{Outage: true})
	_, _ = h.TryForceRefresh()
	var types []string
	tokens := []string{h.Current().AccessToken}
	for line := range lines {
		var ev wire.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Provider != h.Provider {
			t.Fatalf("line %q: %v", line, err)
		}
		if len(types) == 0 || types[len(types)-1] != ev.Type {
			types = append(types, ev.Type)
		}
		if ev.Type == wire.EventRefreshFailed {
			h.Sim.SetFaults(simulator.Daraja, simulator.Faults{})
		}
		if ev.Type == wire.EventRefreshed {
			tokens = append(tokens, h.Current().AccessToken)
			cancel()
		}
		for _, tok := range tokens {
			if strings.Contains(line, tok) {
				t.Fatalf("an event carries a token: %s", line)
			}
		}
	}
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := strings.Join(types, " "); got != "refresh_failed recovered refreshed" {
		t.Fatalf("events %q", got)
	}
	// Text: one line per event with its fields.
	var out strings.Builder
	p := &printer{w: &out, now: time.Now}
	retry := wire.Duration(1500 * time.Millisecond)
	_ = p.providerEvent(wire.Event{Provider: "p", Type: wire.EventRefreshFailed, At: time.Now(), Kind: "transient", Cause: "5xx", Status: 503, Attempt: 2, RetryIn: &retry, Detail: "provider error: HTTP 503"})
	if s := out.String(); !strings.Contains(s, "p  refresh_failed kind=transient cause=5xx status=503 attempt=2 retry_in=1.5s  provider error: HTTP 503") {
		t.Fatalf("text output %q", s)
	}
}

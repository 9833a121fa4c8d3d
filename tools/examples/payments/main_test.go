package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/tests/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pay(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url+"/pay", "application/json", strings.NewReader(`{"phone":"254708374149","amount":10}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// TestPayAfterForcedRotation: Daraja rotates, the token every process holds
// is rejected; the next payment still succeeds, after exactly one retry and
// one new upstream token.
func TestPayAfterForcedRotation(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, err := tokenclient.New(h.Connect())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := tc.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := &Service{
		Daraja:  &http.Client{Transport: tc.Transport(h.Provider, nil), Timeout: 10 * time.Second},
		BaseURL: h.SimURL,
		Log:     slog.New(slog.DiscardHandler),
	}
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()

	if code, body := pay(t, srv.URL); code != 200 || body["status"] != "accepted" {
		t.Fatalf("first payment: %d %v", code, body)
	}
	before := h.Sim.Stats(simulator.Daraja)
	h.Sim.Rotate(simulator.Daraja)
	if code, body := pay(t, srv.URL); code != 200 || body["status"] != "accepted" {
		t.Fatalf("payment after rotation: %d %v", code, body)
	}
	after := h.Sim.Stats(simulator.Daraja)
	if got := after.ProtectedRejected - before.ProtectedRejected; got != 1 {
		t.Errorf("rejected calls %d, want exactly 1 (one retry)", got)
	}
	if got := after.TokensIssued - before.TokensIssued; got != 1 {
		t.Errorf("upstream token requests %d, want 1", got)
	}
	if code, _ := pay(t, srv.URL); code != 200 || h.Sim.Stats(simulator.Daraja).ProtectedRejected != after.ProtectedRejected {
		t.Errorf("the payment after that was not straight through")
	}
	if code, _ := pay(t, srv.URL+"/nope"); code != http.StatusNotFound {
		t.Errorf("unknown path: %d", code)
	}
}

// TestRun runs the command as a person would, against the harness.
func TestRun(t *testing.T) {
	h := harness.Start(t, harness.Config{Provider: "daraja-sandbox"})
	ctx, cancel := context.WithCancel(context.Background())
	out, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats", h.URL, "--daraja", h.SimURL, "--listen", "127.0.0.1:0"}, outW, io.Discard)
		outW.Close()
	}()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		cancel()
		t.Fatalf("no output: %v", <-done)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	rest, ok := strings.CutPrefix(lines.Text(), "payments listening on ")
	if !ok {
		cancel()
		t.Fatalf("first line %q", lines.Text())
	}
	url, _, _ := strings.Cut(rest, " ")
	h.Sim.Rotate(simulator.Daraja)
	code, body := pay(t, url)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code != 200 {
		t.Fatalf("payment: %d %v", code, body)
	}
}

func TestBadRequest(t *testing.T) {
	svc := &Service{Log: slog.New(slog.DiscardHandler)}
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/pay", "application/json", strings.NewReader(`{"amount":0}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// Five "consumer not active" errors (a KV watch while the refresher
// restarts) make one log line until the next reconnect; other errors each
// make one.
func TestNATSErrorsLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	o := nats.GetDefaultOptions()
	for _, opt := range natsLogging(log) {
		if err := opt(&o); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		o.AsyncErrorCB(nil, nil, nats.ErrConsumerNotActive)
	}
	if n := strings.Count(buf.String(), "consumer not active"); n != 1 {
		t.Fatalf("%d lines for 5 consumer-not-active errors:\n%s", n, buf.String())
	}
	o.AsyncErrorCB(nil, nil, nats.ErrSlowConsumer)
	if !strings.Contains(buf.String(), "slow consumer") {
		t.Fatalf("other errors are not logged:\n%s", buf.String())
	}
}

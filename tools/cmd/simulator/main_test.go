package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// start runs the command with args until the test ends; it returns the base
// URL and a function that stops the command and returns run's error.
func start(t *testing.T, args ...string) (base string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	out, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), outW, io.Discard)
		outW.Close()
	}()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		cancel()
		t.Fatalf("no output; run: %v", <-done)
	}
	base, ok := strings.CutPrefix(lines.Text(), "simulator listening on ")
	if !ok {
		t.Fatalf("first line %q", lines.Text())
	}
	go io.Copy(io.Discard, out) //nolint:errcheck // ends when run returns
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return base, stop
}

func TestRunServesAndShutsDown(t *testing.T) {
	base, stop := start(t, "--daraja-key", "k", "--daraja-secret", "s", "--daraja-ttl", "90s")
	req, _ := http.NewRequest("GET", base+"/oauth/v1/generate?grant_type=client_credentials", nil)
	req.SetBasicAuth("k", "s")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"expires_in":"90"`) {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// Shutting down ends the injected latency of requests in flight.
func TestShutdownDuringLatency(t *testing.T) {
	base, stop := start(t, "--latency", "1h")
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(base + "/oauth/v1/generate")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	time.Sleep(50 * time.Millisecond) // let the request reach its wait
	begun := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	if d := time.Since(begun); d > shutdownTimeout/2 {
		t.Errorf("shutdown took %v", d)
	}
	if status := <-answered; status != http.StatusServiceUnavailable {
		t.Errorf("in-flight request answered %d, want 503", status)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"extra"},
		{"--latency", "soon"},
	} {
		if err := run(t.Context(), args, io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	if err := run(t.Context(), []string{"--error-rate", "2"}, io.Discard, io.Discard); err == nil {
		t.Error("--error-rate 2 accepted")
	}
	if err := run(t.Context(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

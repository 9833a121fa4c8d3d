package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// --debug-pprof serves the profiles on loopback only, and stops with ctx.
func TestDebugPprof(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "10.1.2.3:6060", ":6060", "nonsense"} {
		if err := servePprof(t.Context(), addr); err == nil || !strings.Contains(err.Error(), "--debug-pprof") {
			t.Errorf("%s: %v, want a refusal", addr, err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	if err := servePprof(ctx, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "heap profile") {
		t.Fatalf("heap: %d %.100s", resp.StatusCode, b)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still listening after ctx ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

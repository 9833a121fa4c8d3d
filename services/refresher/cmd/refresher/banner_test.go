package main

import (
	"strings"
	"testing"

	"github.com/tokenbus/tokenbus/services/refresher/config"
)

// TestBannerHidesNATSCredentials: the start-up banner never prints the
// user:password of nats.url.
func TestBannerHidesNATSCredentials(t *testing.T) {
	var out strings.Builder
	cfg := &config.Config{Bucket: "tokens", Providers: []config.Provider{{Name: "daraja-test"}}}
	cfg.NATS.URL = "nats://alice:hunter2@n1:4222,nats://alice:hunter2@n2:4222"
	m := &Main{Config: cfg, stdout: &out, httpAddr: "127.0.0.1:1"}
	m.banner()
	if strings.Contains(out.String(), "hunter2") || strings.Contains(out.String(), "alice") {
		t.Fatalf("banner shows the NATS credentials:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "n2:4222") {
		t.Fatalf("banner lost the servers:\n%s", out.String())
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// loopbackPorts returns n distinct free loopback ports.
func loopbackPorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// TestEmbeddedClusterMode runs three replicas whose embedded servers join one
// cluster through routes (nats.embedded.cluster): the bucket is R3, one
// replica leads, and a clean stop of the leader hands over.
func TestEmbeddedClusterMode(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	ports := loopbackPorts(t, 6)
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3+i]))
	}
	dir := t.TempDir()
	mains := make([]*Main, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		cfg := fmt.Sprintf(`
nats:
  embedded:
    listen: 127.0.0.1:%d
    store_dir: %q
    cluster: {name: tokenbus-test, listen: "127.0.0.1:%d", routes: [%s]}
lease: {ttl: 1500ms, retry_period: 100ms}
http: {listen: "127.0.0.1:0"}
providers:
  - {name: daraja-test, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret}
`, ports[i], filepath.Join(dir, fmt.Sprint("n", i)), ports[3+i], strings.Join(routes, ", "), srv.URL)
		path := filepath.Join(dir, fmt.Sprintf("r%d.yaml", i))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		mains[i] = NewMain(Options{ConfigPath: path, Instance: fmt.Sprint("replica-", i)}, &testutil.LogBuffer{}, &testutil.LogBuffer{})
		// The replicas start together: each waits for the JetStream cluster.
		wg.Go(func() { errs[i] = mains[i].Run(context.Background()) })
	}
	wg.Wait()
	for i, m := range mains {
		defer m.Close()
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
	}
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d", ports[1], ports[2]))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var leader int
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		st := gatherStatus(t, nc)
		leaders := 0
		for i := range 3 {
			s := st[fmt.Sprint("replica-", i)]
			if len(s.Providers) != 1 || s.Providers[0].State != "ok" {
				return fmt.Errorf("replica %d not serving: %+v", i, s)
			}
			if s.Leader {
				leaders, leader = leaders+1, i
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d leaders", leaders)
		}
		return nil
	})
	js, _ := jetstream.New(nc)
	info, err := js.Stream(context.Background(), "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("bucket has %d replicas, want 3 in a cluster", r)
	}
	// A clean stop of the leader (and its NATS node) hands over.
	if err := mains[leader].Close(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		st := gatherStatus(t, nc)
		for i := range 3 {
			if i != leader && st[fmt.Sprint("replica-", i)].Leader {
				if _, e := getToken(t, nc, "daraja-test"); e != "" {
					return errors.New(e)
				}
				return nil
			}
		}
		return errors.New("no new leader yet")
	})
}

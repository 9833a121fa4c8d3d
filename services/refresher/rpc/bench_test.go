package rpc_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/metrics"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// staticSource serves one pre-encoded token.
type staticSource []byte

func (s staticSource) Get(context.Context) ([]byte, error)             { return s, nil }
func (s staticSource) Refresh(context.Context, string) ([]byte, error) { return s, nil }

// BenchmarkRequestReply compares token.get with a bare NATS echo responder
// answering the same payload on the same server, in one run:
//
//	go test ./services/refresher/rpc -run '^$' -bench RequestReply -count 6 | benchstat -col /responder -
//
// ns/op is per request with 8×GOMAXPROCS requesters over 8 connections; p99-µs is the
// 99th-percentile round trip. token.get records its metrics as in production.
func BenchmarkRequestReply(b *testing.B) {
	ns := testutil.RunServer(b)
	srvConn := testutil.Connect(b, ns)
	now := time.Now()
	payload, _ := json.Marshal(wire.Token{Provider: "bench", AccessToken: "ya29.a0AfH6SMBx3xQ-benchmark-token-value-0123456789", TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	// Metrics recorded as in production: the SDK meter provider, read on demand.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	met, err := metrics.New(mp, []string{"bench"})
	if err != nil {
		b.Fatal(err)
	}
	svc, err := rpc.Start(srvConn, rpc.Config{Sources: map[string]rpc.Source{"bench": staticSource(payload)}, Recorder: met})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = svc.Stop() })
	echoConn := testutil.Connect(b, ns)
	if _, err := echoConn.QueueSubscribe("echo.bench", "echo", func(m *nats.Msg) { _ = m.Respond(payload) }); err != nil {
		b.Fatal(err)
	}
	clients := make([]*nats.Conn, 8)
	for i := range clients {
		clients[i] = testutil.Connect(b, ns)
	}
	for _, rr := range []struct{ name, subject string }{{"echo", "echo.bench"}, {"token.get", wire.GetSubject("bench")}} {
		b.Run("responder="+rr.name, func(b *testing.B) {
			var (
				mu   sync.Mutex
				lats []time.Duration
				next int
			)
			b.SetParallelism(8) // 8 × GOMAXPROCS requesters
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				nc := clients[next%len(clients)]
				next++
				mu.Unlock()
				local := make([]time.Duration, 0, 1024)
				for pb.Next() {
					t0 := time.Now()
					msg, err := nc.Request(rr.subject, nil, 5*time.Second)
					if err != nil || len(msg.Data) != len(payload) {
						b.Errorf("request: %v", err)
						return
					}
					local = append(local, time.Since(t0))
				}
				mu.Lock()
				lats = append(lats, local...)
				mu.Unlock()
			})
			b.StopTimer()
			if len(lats) > 0 {
				slices.Sort(lats)
				b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}

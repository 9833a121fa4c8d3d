package testutil

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// StallWatches removes every consumer of stream (the replicas' watches of a
// KV bucket: "KV_<bucket>") and keeps new ones from being made (the stream's
// consumer limit taken by one of the test's) until the returned func is
// called: the server stops delivering to the watches, the client library
// would not notice for two missed heartbeats (10 s), and a watch recreated
// meanwhile fails.
func StallWatches(t *testing.T, js jetstream.JetStream, stream string) (release func()) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	names := s.ConsumerNames(ctx)
	n := 0
	for name := range names.Name() {
		if err := s.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no consumer to remove")
	}
	limited := cfg
	limited.MaxConsumers = 1
	if _, err := js.UpdateStream(ctx, limited); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "placeholder", AckPolicy: jetstream.AckNonePolicy}); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := s.DeleteConsumer(ctx, "placeholder"); err != nil {
			t.Fatal(err)
		}
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
}

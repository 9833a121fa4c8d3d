package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Store publishes tokens to the JetStream KV bucket under key <provider>.
type Store struct {
	js jetstream.JetStream
	kv jetstream.KeyValue
}

// OpenStore creates the bucket if it does not exist (file storage, history 1,
// replicas as given, at least 1), or updates an existing one to that
// configuration, and returns a Store on it. The bucket republishes every write
// on token.updates.<key> (SPEC §9), so an existing bucket made before that
// gets it here. While JetStream is
// not yet available (a cluster still electing its meta leader, a server
// starting) it retries every half second until ctx ends (2 minutes if ctx has
// no deadline), calling wait, if set, with each failure.
func OpenStore(ctx context.Context, nc *nats.Conn, bucket string, replicas int, wait func(error)) (*Store, error) {
	ctx, cancel := ctxTimeout(ctx, 2*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsx: jetstream: %w", err)
	}
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err := js.CreateOrUpdateKeyValue(actx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "tokenbus: current access token of each provider (and the leader lease, key _lease)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
			RePublish:   republish(bucket),
		})
		acancel()
		if err == nil {
			return &Store{js: js, kv: kv}, nil
		}
		if wait != nil {
			wait(err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("natsx: open bucket %q: %w", bucket, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// republish maps every key of bucket to token.updates.<key>: clients follow
// tokens with a plain subscription instead of a JetStream consumer each.
func republish(bucket string) *jetstream.RePublish {
	return &jetstream.RePublish{Source: "$KV." + bucket + ".>", Destination: wire.UpdatesPrefix + ">"}
}

// KV returns the underlying bucket.
func (s *Store) KV() jetstream.KeyValue { return s.kv }

// Publish stores tok under its provider key and returns the revision.
func (s *Store) Publish(ctx context.Context, tok wire.Token) (uint64, error) {
	b, err := json.Marshal(tok)
	if err != nil {
		return 0, fmt.Errorf("natsx: encode token: %w", err)
	}
	ctx, cancel := ctxTimeout(ctx, 10*time.Second)
	defer cancel()
	rev, err := s.kv.Put(ctx, tok.Provider, b)
	if err != nil {
		return 0, fmt.Errorf("natsx: store token for %s: %w", tok.Provider, err)
	}
	return rev, nil
}

package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// LeaseSuffix names the lease bucket of a tokens bucket: <bucket>-lease. The
// lease lives apart from the tokens so that its renewals (every
// retry_period) never reach the tokens bucket's watchers or its republished
// subjects, and never contend with a token write.
const LeaseSuffix = "-lease"

// Store publishes tokens to the JetStream KV bucket under key <provider>.
type Store struct {
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	lease jetstream.KeyValue
}

// OpenStore creates the tokens bucket and its lease bucket (<bucket>-lease)
// if they do not exist (file storage, history 1, replicas as given, at least
// 1), or updates existing ones to that configuration, and returns a Store on
// them. The tokens bucket republishes every write on token.updates.<key>
// (SPEC §9), so a bucket made before that gets it here. While JetStream is
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
	var kv, lease jetstream.KeyValue
	err = refresher.UntilReady(ctx, wait, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "tokenbus: current access token of each provider (and the leader's term, key _term)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
			RePublish:   republish(bucket),
		})
		if err != nil {
			return err
		}
		lease, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket + LeaseSuffix,
			Description: "tokenbus: the leader lease of bucket " + bucket + " (key _lease)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("natsx: open bucket %q: %w", bucket, err)
	}
	return &Store{js: js, kv: kv, lease: lease}, nil
}

// republish maps every key of bucket to token.updates.<key>: clients follow
// tokens with a plain subscription instead of a JetStream consumer each.
func republish(bucket string) *jetstream.RePublish {
	return &jetstream.RePublish{Source: "$KV." + bucket + ".>", Destination: wire.UpdatesPrefix + ">"}
}

// KV returns the tokens bucket.
func (s *Store) KV() jetstream.KeyValue { return s.kv }

// Lease returns the lease bucket.
func (s *Store) Lease() jetstream.KeyValue { return s.lease }

// JetStream returns the JetStream context the buckets were opened with.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

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

// Watch keeps fn fed with every token in the bucket, from now on and from
// the latest value of each key, until ctx ends. Keys that are not provider
// names (the term record, "_…") are skipped. The watcher is rebuilt whenever
// its channel closes, the connection reconnects, or the bucket turns out to
// have been deleted and created again (checked every bucketCheck), so the
// copy is current again soon after a server restart (a stock watcher can sit
// stale; nats.go #1777) or a recreated bucket.
func (s *Store) Watch(ctx context.Context, nc *nats.Conn, fn func(tok wire.Token, rev uint64)) {
	reconnected := nc.StatusChanged(nats.CONNECTED) // after the first connect: reconnects
	defer nc.RemoveStatusListener(reconnected)
	for ctx.Err() == nil {
		created := s.created(ctx)
		w, err := s.kv.WatchAll(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
				continue
			}
		}
		s.drain(ctx, w, reconnected, created, fn)
		_ = w.Stop()
	}
}

// bucketCheck is how often Watch checks whether the bucket was recreated.
const bucketCheck = 2 * time.Second

// created returns when the bucket's stream was created (zero if unknown).
func (s *Store) created(ctx context.Context) time.Time {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := s.kv.Status(ctx)
	if err != nil {
		return time.Time{}
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		return bs.StreamInfo().Created
	}
	return time.Time{}
}

func (s *Store) drain(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan nats.Status, created time.Time, fn func(wire.Token, uint64)) {
	check := time.NewTicker(bucketCheck)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			return
		case <-check.C:
			if c := s.created(ctx); !c.IsZero() && !c.Equal(created) {
				return // the bucket was deleted and created again
			}
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut || !wire.ValidName(e.Key()) {
				continue
			}
			var tok wire.Token
			if json.Unmarshal(e.Value(), &tok) != nil || tok.Provider != e.Key() {
				continue
			}
			fn(tok, e.Revision())
		}
	}
}

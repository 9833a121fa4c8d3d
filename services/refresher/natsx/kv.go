package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
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
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	lease   jetstream.KeyValue
	batches bool

	watchMu      sync.Mutex
	stalledSince time.Time // zero while the watch is current
	stallReason  string
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
	var atomic bool
	err = refresher.UntilReady(ctx, wait, func(ctx context.Context) (err error) {
		// The lease holder commits token writes that queue up as one batch
		// (leader.AtomicBatches); without allow_atomic it writes them one
		// by one.
		kv, atomic, err = OpenKV(ctx, js, jetstream.KeyValueConfig{
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
	return &Store{js: js, kv: kv, lease: lease, batches: replicas > 1 && atomic}, nil
}

// Batches reports whether the lease holder should commit the token writes
// that queue up together, as one atomic batch: the buckets were opened with
// more than one replica, and the server takes atomic batches (nats-server
// 2.12 or later). On R3 a batch is one proposal: 9× the writes a second of
// one at a time (BenchmarkFencedWrites). On R1 the server stages a batch in
// a file store of its own, which costs more than the fsyncs it saves at the
// sizes a fill makes, so there it writes one at a time.
func (s *Store) Batches() bool { return s.batches }

// OpenKV opens the bucket cfg names — created, or brought to cfg — with its
// stream taking atomic batches (AllowAtomic), and reports whether it does.
// A bucket whose stream already has cfg's settings and takes batches is
// opened as it is: CreateOrUpdateKeyValue writes a stream configuration
// without allow_atomic (nats.go's KeyValueConfig has no such field), which
// would turn it off until AllowAtomic turned it on again, and a batch the
// lease holder sent in that moment would be refused (a replica restarting
// would pause batches: TestOpenKVLeavesABucketAsItIs).
func OpenKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, bool, error) {
	if str, err := js.Stream(ctx, "KV_"+cfg.Bucket); err == nil {
		if c := str.CachedInfo().Config; c.AllowAtomicPublish && hasSettings(c, cfg) {
			kv, err := js.KeyValue(ctx, cfg.Bucket)
			return kv, err == nil, err
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, false, err
	}
	return kv, AllowAtomic(ctx, js, "KV_"+cfg.Bucket), nil
}

// hasSettings reports whether a bucket's stream has the settings of cfg
// that tokenbus sets (as nats.go maps them: history at least 1, no limit as
// -1, replicas at least 1).
func hasSettings(c jetstream.StreamConfig, cfg jetstream.KeyValueConfig) bool {
	limit := func(v int64) int64 {
		if v == 0 {
			return -1
		}
		return v
	}
	return c.Description == cfg.Description && c.MaxMsgsPerSubject == int64(max(cfg.History, 1)) &&
		c.Storage == cfg.Storage && c.Replicas == max(cfg.Replicas, 1) &&
		c.MaxBytes == limit(cfg.MaxBytes) && c.MaxMsgSize == int32(limit(int64(cfg.MaxValueSize))) &&
		c.MaxAge == cfg.TTL && reflect.DeepEqual(c.RePublish, cfg.RePublish)
}

// AllowAtomic lets the stream take atomic batches (nats-server 2.12 and
// later) and reports whether it does. It does not on an older server,
// which ignores the setting, nor when the update is refused. Another
// replica's open (an older tokenbus, whose bucket config lacks the setting)
// may turn it off again: a batch then fails as a whole, and its writers
// write one by one.
func AllowAtomic(ctx context.Context, js jetstream.JetStream, stream string) bool {
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	cfg := str.CachedInfo().Config
	if cfg.AllowAtomicPublish {
		return true
	}
	cfg.AllowAtomicPublish = true
	str, err = js.UpdateStream(ctx, cfg)
	return err == nil && str.CachedInfo().Config.AllowAtomicPublish
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

// WatchHooks are told when the watch of the bucket stalls and when it is
// current again (the refresher logs each once).
type WatchHooks struct {
	// Stalled is called once when a stall is noticed, with the reason.
	Stalled func(reason string)
	// Recovered is called once when a recreated watch has caught up, with
	// how long it was stalled.
	Recovered func(stalledFor time.Duration)
	// Current is called each time a watcher has delivered every value up
	// to its start (the first time: the copy holds every published token).
	Current func()
}

// Watch keeps fn fed with every token in the bucket, from now on and from
// the latest value of each key, until ctx ends. Keys that are not provider
// names (the term record, "_…") are skipped. The watcher is rebuilt whenever
// its channel closes, the connection reconnects, the bucket turns out to
// have been deleted and created again, or the watch stalls: every
// watchCheck it compares the bucket's last revision with the last one it
// delivered, and a write it has not delivered a whole watchCheck later (a
// stream leader election can leave a stock watcher silent for seconds;
// nats.go #1777) makes it recreate the watcher at once. While it is stalled,
// WatchStalled says so.
func (s *Store) Watch(ctx context.Context, nc *nats.Conn, fn func(tok wire.Token, rev uint64), hooks WatchHooks) {
	reconnected := nc.StatusChanged(nats.CONNECTED) // after the first connect: reconnects
	defer nc.RemoveStatusListener(reconnected)
	for ctx.Err() == nil {
		created, st, _ := s.info(ctx)
		w, err := s.kv.WatchAll(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
				continue
			}
		}
		stall := s.drain(ctx, w, reconnected, created, st.Msgs, fn, hooks)
		_ = w.Stop()
		if stall != "" {
			s.stalled(stall, hooks)
		}
	}
}

// watchCheck is how often Watch checks that it is current and that the
// bucket was not recreated.
const watchCheck = time.Second

// emptyWatchPause is the pause before a watcher that delivered nothing of a
// non-empty bucket is made again.
const emptyWatchPause = 100 * time.Millisecond

// WatchStalled returns why the watch of the bucket is stalled, or nil while
// it is current.
func (s *Store) WatchStalled() error {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.stalledSince.IsZero() {
		return nil
	}
	// The text stays the same through one stall (readiness logs changes).
	return fmt.Errorf("natsx: the token watch is stalled (since %s): %s; recreating it", s.stalledSince.UTC().Format("15:04:05.000"), s.stallReason)
}

// stalled records a stall noticed now; hooks hear of the first only.
func (s *Store) stalled(reason string, hooks WatchHooks) {
	s.watchMu.Lock()
	first := s.stalledSince.IsZero()
	if first {
		s.stalledSince, s.stallReason = time.Now(), reason
	}
	s.watchMu.Unlock()
	if first && hooks.Stalled != nil {
		hooks.Stalled(reason)
	}
}

// current records that a watcher has delivered every value up to its start.
func (s *Store) current(hooks WatchHooks) {
	s.watchMu.Lock()
	since := s.stalledSince
	s.stalledSince, s.stallReason = time.Time{}, ""
	s.watchMu.Unlock()
	if !since.IsZero() && hooks.Recovered != nil {
		hooks.Recovered(time.Since(since))
	}
	if hooks.Current != nil {
		hooks.Current()
	}
}

// info returns when the bucket's stream was created (zero if unknown) and
// its first and last sequence (ok false if JetStream did not answer).
func (s *Store) info(ctx context.Context) (created time.Time, state jetstream.StreamState, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, watchCheck)
	defer cancel()
	st, err := s.kv.Status(ctx)
	if err != nil {
		return time.Time{}, state, false
	}
	if bs, isJS := st.(*jetstream.KeyValueBucketStatus); isJS && bs.StreamInfo() != nil {
		return bs.StreamInfo().Created, bs.StreamInfo().State, true
	}
	return time.Time{}, state, false
}

// drain feeds fn from w until the watcher must be rebuilt; it returns the
// reason if that is a stall ("" otherwise). msgs is how many values the
// bucket held just before w was made: a watcher that ends its initial
// values having delivered none of them is stalled, not current (a watch
// made on a stream just restored into a fresh cluster did that for
// seconds, and a leader started on that empty copy replaced every token:
// clustertest TestBackupRestore); it is made again after a pause.
func (s *Store) drain(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan nats.Status, created time.Time, msgs uint64, fn func(wire.Token, uint64), hooks WatchHooks) string {
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	var (
		seen     uint64 // the highest revision delivered, of any key or operation
		initDone bool   // every value up to the watcher's start was delivered
		prevLast uint64 // the bucket's last revision at the previous check
	)
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-reconnected:
			return ""
		case <-check.C:
			c, state, ok := s.info(ctx)
			if !ok {
				continue // JetStream did not answer: /readyz says so
			}
			if !c.IsZero() && !c.Equal(created) {
				return "" // the bucket was deleted and created again
			}
			if initDone && prevLast > seen && prevLast >= state.FirstSeq {
				return fmt.Sprintf("the bucket was at revision %d over %v ago, the watch has delivered up to %d", prevLast, watchCheck, seen)
			}
			prevLast = state.LastSeq
		case e, ok := <-w.Updates():
			if !ok {
				return ""
			}
			if e == nil {
				if seen == 0 && msgs > 0 && !initDone {
					select {
					case <-ctx.Done():
					case <-time.After(emptyWatchPause):
					}
					return fmt.Sprintf("the watch delivered none of the bucket's %d values", msgs)
				}
				initDone = true
				s.current(hooks)
				continue
			}
			seen = max(seen, e.Revision())
			if e.Operation() != jetstream.KeyValuePut || !wire.ValidName(e.Key()) {
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

package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// bucketSource is a shared-token provider's source with a fallback: when
// this replica's copy has no valid token (its watch lags: a partition, a
// stream leader election), token.get reads the bucket before it answers 503,
// so that a published, valid token is always served (SPEC §4). The read is
// off the hot path (only when memory has nothing valid, and off the endpoint
// goroutine) and bounded by natsx.Lookup (one read in flight per provider, a
// miss remembered briefly).
type bucketSource struct {
	freshSource
	lookup *natsx.Lookup
}

var (
	_ rpc.Fallback = bucketSource{}
	_ rpc.Fresher  = bucketSource{}
)

// LooksFurther reports whether Lookup would read the bucket: not on the
// lease holder of the provider, which would take no token from the bucket
// that its copy lacks (leader.Leader.Holds), so that its misses are
// answered at once.
func (b bucketSource) LooksFurther() bool { return !b.Leader.Holds(b.Name) }

// Lookup reads the provider's key from the bucket into this replica's copy
// (as the watch would have), then answers from the copy: the token found if
// it is servable, else the copy's own error (503, with the last failure).
// The lease holder of the provider reads nothing (LooksFurther).
func (b bucketSource) Lookup(ctx context.Context) ([]byte, uint64, error) {
	if b.LooksFurther() {
		_ = b.lookup.Find(ctx, b.Name)
	}
	return b.freshSource.GetRevision(ctx)
}

// newLookup returns the bucket reader of every shared-token source: a token
// found goes through the same gate as one the watch delivers (the leader
// refuses one it did not write), and counts if the copy can serve it.
func (m *Main) newLookup() *natsx.Lookup {
	return m.store.NewLookup(natsx.LookupConfig{Take: func(tok wire.Token, rev uint64) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if m.leader.Accept(ctx, tok, rev) {
			m.set.Token(tok, rev)
		}
		sv := m.set.Get(tok.Provider)
		if sv == nil || sv.Manager == nil {
			return false
		}
		_, err := sv.Manager.Current()
		return err == nil
	}})
}

// forgetMissesOnUpdates makes every write of the bucket, as republished on
// token.updates.<provider> (which reaches a replica even while its watch
// lags), clear that provider's remembered miss: the next token.get reads the
// bucket at once instead of answering 503 for the rest of the 250 ms.
func (m *Main) forgetMissesOnUpdates() error {
	_, err := m.nc.Subscribe(wire.UpdatesPrefix+"*", func(msg *nats.Msg) {
		m.lookup.Forget(strings.TrimPrefix(msg.Subject, wire.UpdatesPrefix))
	})
	if err != nil {
		return fmt.Errorf("refresher: follow %s*: %w", wire.UpdatesPrefix, err)
	}
	return nil
}

// watchHooks log, once each, when the watch of the bucket stalls and when
// it has caught up again (/readyz says so in between).
func (m *Main) watchHooks() natsx.WatchHooks {
	return natsx.WatchHooks{
		Stalled: func(reason string) {
			m.logger.Warn("token watch stalled; recreating it (token.get reads the bucket meanwhile)", slog.String("reason", reason))
		},
		Recovered: func(d time.Duration) {
			m.logger.Info("token watch current again", slog.Duration("stalled_for", d))
		},
	}
}

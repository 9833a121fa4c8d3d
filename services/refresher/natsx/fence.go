package natsx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Headers recorded on every fenced token write.
const (
	// HeaderTerm is the lease term the token was written under.
	HeaderTerm = "Tokenbus-Term"
	// HeaderWriter names the replica that wrote the token.
	HeaderWriter = "Tokenbus-Writer"
)

// ErrFenced is returned by PublishFenced when the lease key no longer has the
// expected revision: the lease was renewed or taken since the fence was read.
var ErrFenced = errors.New("natsx: token write rejected: the lease has moved on")

// PublishFenced stores tok under its provider key only if the lease key
// (fenceSubject, in the same stream) still has revision fenceRev: JetStream
// enforces it (Nats-Expected-Last-Subject-Sequence with its -Subject header,
// nats-server ≥ 2.11), so a deposed leader's late write is rejected by the
// server, not by the writer's own belief. The write records the term and the
// writer in headers. Both wrong-last-sequence codes (10071, and 10164 on
// replicated streams) come back as ErrFenced.
func (s *Store) PublishFenced(ctx context.Context, tok wire.Token, fenceSubject string, fenceRev, term uint64, writer string) (uint64, error) {
	b, err := json.Marshal(tok)
	if err != nil {
		return 0, fmt.Errorf("natsx: encode token: %w", err)
	}
	ctx, cancel := ctxTimeout(ctx, 10*time.Second)
	defer cancel()
	msg := &nats.Msg{
		Subject: "$KV." + s.kv.Bucket() + "." + tok.Provider,
		Data:    b,
		Header:  nats.Header{HeaderTerm: {strconv.FormatUint(term, 10)}, HeaderWriter: {writer}},
	}
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequenceForSubject(fenceRev, fenceSubject))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w (%s)", ErrFenced, tok.Provider)
		}
		return 0, fmt.Errorf("natsx: store token for %s: %w", tok.Provider, err)
	}
	return ack.Sequence, nil
}

// Watch keeps fn fed with every token in the bucket, from now on and from
// the latest value of each key, until ctx ends. Keys that are not provider
// names (the lease, "_…") are skipped. The watcher is rebuilt whenever its
// channel closes or the connection reconnects, so the copy is current again
// soon after a server restart (a stock watcher can sit stale; nats.go #1777).
func (s *Store) Watch(ctx context.Context, nc *nats.Conn, fn func(tok wire.Token, rev uint64)) {
	reconnected := nc.StatusChanged(nats.CONNECTED) // after the first connect: reconnects
	defer nc.RemoveStatusListener(reconnected)
	for ctx.Err() == nil {
		w, err := s.kv.WatchAll(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
				continue
			}
		}
		s.drain(ctx, w, reconnected, fn)
		_ = w.Stop()
	}
}

func (s *Store) drain(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan nats.Status, fn func(wire.Token, uint64)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			return
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

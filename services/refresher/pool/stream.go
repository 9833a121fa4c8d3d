package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Queue is all the pool needs from JetStream for one provider's tokens: its
// subject of the pool stream (a work queue: a message is removed when
// acknowledged; each has its own TTL), the durable consumer claimers fetch
// from, and the provider's fence record. Store.Pool uses JetStream's; the
// deterministic simulation (package sim, test-only) drives the same Pool and
// Filler code against a simulated work-queue stream.
type Queue interface {
	// Publish adds one ready token, checked by the server against the fence
	// record at m.Fence. It returns nil only when the server confirmed it
	// stored the token; an error wrapping ErrFenced when the server refused
	// it because the fence record has moved on (nothing was stored);
	// otherwise the token may or may not be stored, and must never be
	// published again (a second copy could be handed out twice).
	Publish(ctx context.Context, m Minted) error
	// Fetch delivers one ready token to this claimer, waiting up to wait for
	// one (0: not at all); nil, nil if there was none. A delivered token is
	// invisible to other claimers until the consumer's AckWait has passed.
	Fetch(ctx context.Context, wait time.Duration) (Delivery, error)
	// Purge removes every ready token not delivered to a claimer.
	Purge(ctx context.Context) error
	// Counts returns how many tokens are ready and how many claimers are
	// waiting for one (pending pull requests): one consumer-info request.
	Counts(ctx context.Context) (ready, waiting int, err error)
	// LastFence returns the provider's last fence record and its stream
	// sequence; a zero Fence and 0 if there is none.
	LastFence(ctx context.Context) (Fence, uint64, error)
	// WriteFence writes f as the provider's fence record if the last one is
	// still at sequence after (0: none), and returns f's sequence. It
	// returns an error wrapping ErrFenced when another record was written
	// since.
	WriteFence(ctx context.Context, f Fence, after uint64) (uint64, error)
}

// Delivery is one token fetched for a claim.
type Delivery interface {
	// Data is the token, wire JSON.
	Data() []byte
	// Generation is the credential generation the token was minted with
	// (Minted.Generation).
	Generation() uint64
	// Delivered counts the deliveries of this token: 1 on the first.
	Delivered() uint64
	// Ack removes the token from the pool and returns nil only once the
	// server has confirmed the removal.
	Ack(ctx context.Context) error
	// Drop removes the token without waiting for a confirmation: it is not
	// handed out.
	Drop()
}

// Minted is one token to publish into the pool.
type Minted struct {
	// Body is the token, wire JSON.
	Body []byte
	// TTL is how long the pool keeps the token (whole seconds).
	TTL time.Duration
	// Generation is the credential generation the token was minted with.
	Generation uint64
	// Fence is the sequence of the fence record the publish is checked
	// against.
	Fence uint64
}

// Fence is a provider's fence record in the pool stream: every token the
// filler publishes is checked by the server against the sequence of the
// record its filler wrote, so a filler that a newer term, newer
// credentials or a removal has replaced cannot add a token (see
// docs/single-use-tokens.md).
type Fence struct {
	// Term is the lease term the filler that wrote it fills under (0
	// without a leader, in tests).
	Term uint64 `json:"term"`
	// Generation is the credential generation the filler mints with.
	Generation uint64 `json:"generation"`
	// Retired marks a provider removed at that generation: no filler of
	// that generation or older publishes again.
	Retired bool `json:"retired,omitempty"`
}

// supersedes reports whether a filler of term and gen must not write over
// (or publish under) f: f was written by a newer term, newer credentials,
// or a removal of gen.
func (f Fence) supersedes(term, gen uint64) bool {
	switch {
	case f.Term != term:
		return f.Term > term
	case f.Generation != gen:
		return f.Generation > gen
	}
	return f.Retired
}

// ErrFenced is a publish or fence write the server refused because the
// provider's fence record moved on.
var ErrFenced = errors.New("pool: the fence record has moved on")

// HeaderGeneration carries a ready token's credential generation.
const HeaderGeneration = "Tokenbus-Generation"

// fenceSubject is provider's fence subject: one token of the stream's
// subjects that no provider name can take (names start with a letter or a
// digit), so no consumer ever delivers it.
func fenceSubject(bucket, provider string) string {
	return SubjectPrefix + bucket + "._fence-" + provider
}

// jsQueue is a Queue on JetStream.
type jsQueue struct {
	js      jetstream.JetStream
	stream  string
	subject string
	fence   string
	cons    jetstream.Consumer
}

func (q *jsQueue) Publish(ctx context.Context, m Minted) error {
	msg := &nats.Msg{Subject: q.subject, Data: m.Body, Header: nats.Header{}}
	msg.Header.Set(HeaderGeneration, strconv.FormatUint(m.Generation, 10))
	_, err := q.fenced(ctx, msg, m.Fence, jetstream.WithMsgTTL(m.TTL), jetstream.WithExpectStream(q.stream))
	return err
}

// fenced publishes msg checked against the fence record at seq (0: none).
// A refusal because another publish naming the fence subject is still
// being committed (a replicated stream's 10164) is definite — nothing was
// stored — and is tried again a few times.
func (q *jsQueue) fenced(ctx context.Context, msg *nats.Msg, seq uint64, opts ...jetstream.PublishOpt) (uint64, error) {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, q.fence)
	for try := 0; ; try++ {
		ack, err := q.js.PublishMsg(ctx, msg, opts...)
		if err == nil {
			return ack.Sequence, nil
		}
		var apiErr *jetstream.APIError
		switch {
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant && try < 5:
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Duration(try+1) * 10 * time.Millisecond):
			}
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			return 0, fmt.Errorf("%w: %w", ErrFenced, err)
		default:
			return 0, err
		}
	}
}

func (q *jsQueue) Fetch(ctx context.Context, wait time.Duration) (Delivery, error) {
	var (
		batch jetstream.MessageBatch
		err   error
	)
	if wait <= 0 {
		batch, err = q.cons.FetchNoWait(1)
	} else {
		batch, err = q.cons.Fetch(1, jetstream.FetchMaxWait(wait))
	}
	if err != nil {
		return nil, err
	}
	var msg jetstream.Msg
	for m := range batch.Messages() { // read until closed: never abandon a delivery
		msg = m
	}
	if msg == nil {
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, err
		}
		return nil, nil
	}
	return jsDelivery{msg}, nil
}

// Purge removes the ready tokens by claiming and acknowledging them, not
// with a stream purge: the shipped roles (deploy/nats/auth.conf) deny the
// refresher every purge, so that no request can make it empty a stream.
func (q *jsQueue) Purge(ctx context.Context) error {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		batch, err := q.cons.FetchNoWait(64)
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			_ = m.Ack()
			n++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if n == 0 {
			return nil
		}
	}
	return ctx.Err()
}

func (q *jsQueue) Counts(ctx context.Context) (int, int, error) {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := q.cons.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return int(info.NumPending), info.NumWaiting, nil
}

func (q *jsQueue) LastFence(ctx context.Context) (Fence, uint64, error) {
	ctx, cancel := withTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := q.js.Stream(ctx, q.stream)
	if err != nil {
		return Fence{}, 0, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, q.fence)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Fence{}, 0, nil
	}
	if err != nil {
		return Fence{}, 0, err
	}
	var f Fence
	if err := json.Unmarshal(raw.Data, &f); err != nil {
		// Not ours to read: a later record takes its place.
		return Fence{}, raw.Sequence, nil
	}
	return f, raw.Sequence, nil
}

func (q *jsQueue) WriteFence(ctx context.Context, f Fence, after uint64) (uint64, error) {
	body, err := json.Marshal(f)
	if err != nil {
		return 0, err
	}
	// Records leave by their TTL (the refresher may not purge): a filler
	// writes its record again before it goes (FenceTTL).
	return q.fenced(ctx, &nats.Msg{Subject: q.fence, Data: body, Header: nats.Header{}}, after,
		jetstream.WithMsgTTL(FenceTTL), jetstream.WithExpectStream(q.stream))
}

// FenceTTL is how long a fence record stays in the pool stream. A filler
// writes its record again once it is half that old, so the current
// filler's record never leaves; older ones do, and the subject holds about
// one record per lease term of the last day, far under MaxMsgsPerSubject.
const FenceTTL = 24 * time.Hour

// jsDelivery is a Delivery of a JetStream message.
type jsDelivery struct{ msg jetstream.Msg }

func (d jsDelivery) Data() []byte { return d.msg.Data() }

func (d jsDelivery) Generation() uint64 {
	g, _ := strconv.ParseUint(d.msg.Headers().Get(HeaderGeneration), 10, 64)
	return g
}

func (d jsDelivery) Delivered() uint64 {
	meta, err := d.msg.Metadata()
	if err != nil {
		return 0 // no metadata: not a first delivery as far as anyone knows
	}
	return meta.NumDelivered
}

func (d jsDelivery) Ack(ctx context.Context) error { return d.msg.DoubleAck(ctx) }
func (d jsDelivery) Drop()                         { _ = d.msg.Ack() }

// Signals carries the pool's own messages between claimers and the filler:
// a claimer that finds the pool empty asks the filler, a claim tells it a
// token was taken, and the filler listens for both. Store.Pool uses core
// NATS request-reply on the provider's demand subject, in a queue group.
type Signals interface {
	// Ask asks the filler whether a refill is coming and returns its
	// answer; an error wrapping ErrNoFiller when no filler listens.
	Ask(ctx context.Context) ([]byte, error)
	// Claimed tells the filler, if any, that a token was taken.
	Claimed()
	// Listen calls fn for each ask (with the function to answer it) and
	// each claim (answer nil), until stop is called.
	Listen(fn func(answer func([]byte))) (stop func(), err error)
}

// natsSignals is Signals on core NATS.
type natsSignals struct {
	nc     *nats.Conn
	demand string
}

func (s natsSignals) Ask(ctx context.Context) ([]byte, error) {
	msg, err := s.nc.RequestWithContext(ctx, s.demand, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, ErrNoFiller
	}
	if err != nil {
		return nil, err
	}
	return msg.Data, nil
}

func (s natsSignals) Claimed() { _ = s.nc.Publish(s.demand, nil) }

func (s natsSignals) Listen(fn func(answer func([]byte))) (func(), error) {
	sub, err := s.nc.QueueSubscribe(s.demand, fillerQueue, func(msg *nats.Msg) {
		if msg.Reply == "" {
			fn(nil)
			return
		}
		fn(func(b []byte) { _ = msg.Respond(b) })
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

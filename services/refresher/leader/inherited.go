package leader

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Inherited reads what a new leader inherits (Config.Inherited).
type Inherited interface {
	// LastPerKey calls fn with the last message of every key of the tokens
	// bucket as it was when the call began: its key, its headers and its
	// stream sequence (not its data), in one pass.
	LastPerKey(ctx context.Context, fn func(key string, h nats.Header, seq uint64)) error
	// Message returns the data of the message at seq.
	Message(ctx context.Context, seq uint64) ([]byte, error)
}

// inheritedWait bounds the wait for the next message of a LastPerKey pass:
// a pass that hears nothing for this long fails (and is tried again).
const inheritedWait = 10 * time.Second

// jsInherited is Inherited on the tokens bucket's JetStream stream.
type jsInherited struct {
	js     jetstream.JetStream
	bucket string
}

// LastPerKey reads the headers of the last message of every key with one
// ordered consumer (deliver last per subject, headers only: the server
// sends them in batches), up to the stream's last message when the pass
// began.
func (j jsInherited) LastPerKey(ctx context.Context, fn func(key string, h nats.Header, seq uint64)) error {
	name := "KV_" + j.bucket
	stream, err := j.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("leader: open the tokens stream: %w", err)
	}
	last := stream.CachedInfo().State.LastSeq
	if last == 0 {
		return nil
	}
	prefix := "$KV." + j.bucket + "."
	cons, err := j.js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ">"}, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly: true, InactiveThreshold: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("leader: read the tokens stream: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("leader: read the tokens stream: %w", err)
	}
	defer func() {
		it.Stop()
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = j.js.DeleteConsumer(dctx, name, cons.CachedInfo().Name)
	}()
	for {
		nctx, cancel := context.WithTimeout(ctx, inheritedWait)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			return fmt.Errorf("leader: read the tokens stream: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("leader: read the tokens stream: %w", err)
		}
		seq := meta.Sequence.Stream
		if len(msg.Subject()) > len(prefix) {
			fn(msg.Subject()[len(prefix):], msg.Headers(), seq)
		}
		if seq >= last || meta.NumPending == 0 {
			return nil
		}
	}
}

// Message reads the message at seq.
func (j jsInherited) Message(ctx context.Context, seq uint64) ([]byte, error) {
	stream, err := j.js.Stream(ctx, "KV_"+j.bucket)
	if err != nil {
		return nil, fmt.Errorf("leader: open the tokens stream: %w", err)
	}
	msg, err := stream.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("leader: read the tokens stream: %w", err)
	}
	return msg.Data, nil
}

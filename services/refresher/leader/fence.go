package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// TermKey is the key in the tokens bucket that a new lease holder writes
// once, right after acquiring the lease; every token write of its term is
// fenced on it. It starts with "_", so clients skip it.
const TermKey = "_term"

// Headers recorded on every fenced token write (for people and for the next
// leader's check of the keys it inherits).
const (
	// HeaderTerm is the lease term the token was written under.
	HeaderTerm = "Tokenbus-Term"
	// HeaderWriter names the replica that wrote the token.
	HeaderWriter = "Tokenbus-Writer"
)

// TermRecord is the value of TermKey.
type TermRecord struct {
	// Holder names the lease holder that wrote it.
	Holder string `json:"holder"`
	// Term is the holder's lease term (the lease bucket revision).
	Term uint64 `json:"term"`
	// Since is the holder's wall clock when it began the term, for people.
	Since time.Time `json:"since"`
}

// errFenceMoved is a write rejected because TermKey is no longer at the
// revision this term wrote: a newer leader wrote its term, or someone else
// wrote the key.
var errFenceMoved = errors.New("leader: token write rejected: the term record has moved on")

// fence writes the tokens bucket under the current term. The server checks
// every write against the revision of TermKey that this term wrote
// (Nats-Expected-Last-Subject-Sequence with its -Subject header, nats-server
// ≥ 2.11), so a deposed leader's late write is rejected by JetStream, not by
// the writer's own belief. Writes are serialised: on a replicated stream the
// server rejects (10164) a write whose check names a subject another write is
// still committing under, and every token write names TermKey.
type fence struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue // the tokens bucket
	writer string

	// turn serialises writes and term rewrites; a writer waiting for its
	// turn gives up when its context ends (a channel, not a mutex: a write
	// stuck on an unreachable server does not hold the others past their
	// own deadlines).
	turn chan struct{}
	mu   sync.Mutex // guards term and seq
	term uint64     // 0: no term written, no write allowed
	seq  uint64     // TermKey's revision written by this term
}

// lock waits for the fence's turn, or for ctx to end.
func (f *fence) lock(ctx context.Context) error {
	select {
	case f.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("leader: waiting for the previous token write: %w", ctx.Err())
	}
}

func (f *fence) unlock() { <-f.turn }

func (f *fence) subject(key string) string { return "$KV." + f.kv.Bucket() + "." + key }

// begin writes TermKey for term (compare-and-swap on the revision it read)
// and arms the fence. held reports whether the lease still names this
// replica in term (read from the server): a term record of a higher term is
// only written over by a holder the lease confirms (the lease bucket was
// recreated), never by a deposed holder's late begin. A begin that fails
// leaves the fence as it was: a failed rewrite of the term record does not
// stop every write for the rest of the term.
func (f *fence) begin(ctx context.Context, term uint64, now time.Time, held func(context.Context) bool) error {
	if err := f.lock(ctx); err != nil {
		return err
	}
	defer f.unlock()
	return f.beginLocked(ctx, term, now, held)
}

func (f *fence) beginLocked(ctx context.Context, term uint64, now time.Time, held func(context.Context) bool) error {
	body, _ := json.Marshal(TermRecord{Holder: f.writer, Term: term, Since: now.UTC()})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var (
		rev uint64
		err error
	)
	cur, gerr := f.kv.Get(ctx, TermKey)
	switch {
	case errors.Is(gerr, jetstream.ErrKeyNotFound):
		rev, err = f.kv.Create(ctx, TermKey, body)
	case gerr != nil:
		err = gerr
	default:
		var rec TermRecord
		if json.Unmarshal(cur.Value(), &rec) == nil && rec.Term > term && (held == nil || !held(ctx)) {
			return fmt.Errorf("leader: the term record names term %d, newer than this replica's %d: %w", rec.Term, term, refresher.ErrNotAllowed)
		}
		rev, err = f.kv.Update(ctx, TermKey, body, cur.Revision())
	}
	if err != nil {
		return fmt.Errorf("leader: write the term record: %w", err)
	}
	f.mu.Lock()
	f.term, f.seq = term, rev
	f.mu.Unlock()
	return nil
}

// end disarms the fence.
func (f *fence) end() {
	f.mu.Lock()
	f.term, f.seq = 0, 0
	f.mu.Unlock()
}

// write publishes data (or a delete marker when del) to key under the
// current term. A write that collides with one still being committed (10164)
// is tried again a few times.
func (f *fence) write(ctx context.Context, key string, data []byte, del bool) (uint64, error) {
	if err := f.lock(ctx); err != nil {
		return 0, err
	}
	defer f.unlock()
	f.mu.Lock()
	term, seq := f.term, f.seq
	f.mu.Unlock()
	if seq == 0 {
		return 0, refresher.ErrNotAllowed
	}
	msg := &nats.Msg{
		Subject: f.subject(key),
		Data:    data,
		Header:  nats.Header{HeaderTerm: {strconv.FormatUint(term, 10)}, HeaderWriter: {f.writer}},
	}
	if del {
		msg.Header.Set("KV-Operation", "DEL")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for try := 0; ; try++ {
		// The headers jetstream.WithExpectLastSequenceForSubject sets, set
		// here so that the expectation is in the message itself (a
		// simulated JetStream reads it there).
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
		msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, f.subject(TermKey))
		ack, err := f.js.PublishMsg(ctx, msg)
		if err == nil {
			return ack.Sequence, nil
		}
		var apiErr *jetstream.APIError
		switch {
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant && try < 5:
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("leader: write %s: %w", key, ctx.Err())
			case <-time.After(time.Duration(try+1) * 20 * time.Millisecond):
			}
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			return 0, fmt.Errorf("%w (%s)", errFenceMoved, key)
		default:
			return 0, fmt.Errorf("leader: write %s: %w", key, err)
		}
	}
}

// armed returns the TermKey revision the fence checks against now.
func (f *fence) armed() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// rearm writes TermKey again for term, unless another writer of this
// replica already did since stale was armed.
func (f *fence) rearm(ctx context.Context, stale, term uint64, now time.Time, held func(context.Context) bool) error {
	if err := f.lock(ctx); err != nil {
		return err
	}
	defer f.unlock()
	if f.armed() != stale {
		return nil
	}
	return f.beginLocked(ctx, term, now, held)
}

package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

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
//
// Serialised is not one at a time: the writes that queue while one commits
// are committed next, together, as one JetStream atomic batch (group
// commit; when batches is set), every message carrying the same check. The
// server stores a batch whole or not at all, with one sync to disk, so
// 16 providers' tokens cost one fsync and one round trip instead of 16 of
// each. A batch the server will not take as such (allow_atomic turned off
// by an older replica, an older server) is written one message at a time.
type fence struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue // the tokens bucket
	writer  string
	batches BatchPublisher // nil: every write on its own

	// turn serialises commits and term rewrites; a writer waiting for its
	// turn gives up when its context ends (a channel, not a mutex: a write
	// stuck on an unreachable server does not hold the others past their
	// own deadlines).
	turn chan struct{}
	mu   sync.Mutex // guards term and seq
	term uint64     // 0: no term written, no write allowed
	seq  uint64     // TermKey's revision written by this term

	qmu     sync.Mutex    // guards queue and noBatch
	queue   []*fenceWrite // writes waiting for a commit, in order
	noBatch time.Time     // batches are not tried again before this

	log *slog.Logger // nil: nothing logged
}

// BatchPublisher publishes messages as one JetStream atomic batch: all are
// stored, at consecutive sequences ending at last, or none is.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, msgs []*nats.Msg) (last uint64, err error)
}

// AtomicBatches is the BatchPublisher of js: jetstreamext.PublishMsgBatch
// without the flow-control ack of the first message (a batch of the fence
// is at most maxBatch small messages).
func AtomicBatches(js jetstream.JetStream) BatchPublisher { return atomicBatches{js} }

type atomicBatches struct{ js jetstream.JetStream }

func (a atomicBatches) PublishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	ack, err := jetstreamext.PublishMsgBatch(ctx, a.js, msgs, jetstreamext.BatchFlowControl{AckTimeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	if ack.BatchSize != uint64(len(msgs)) || ack.Sequence < ack.BatchSize {
		return 0, fmt.Errorf("leader: a batch of %d acknowledged as %d ending at %d", len(msgs), ack.BatchSize, ack.Sequence)
	}
	return ack.Sequence, nil
}

const (
	// maxBatch bounds the writes committed together (the server takes
	// 1,000 messages in a batch).
	maxBatch = 256
	// noBatchFor is how long after a batch the server would not take as
	// such the fence writes one message at a time.
	noBatchFor = 30 * time.Second
)

// fenceWrite is one write waiting for its commit.
type fenceWrite struct {
	ctx  context.Context // the writer's: the commit ends when every writer's has
	key  string
	data []byte
	del  bool
	done chan struct{} // closed once rev and err are set
	rev  uint64
	err  error
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
// current term, with whatever other writes are queued when its turn comes,
// and returns the revision it was stored at. A commit that collides with one
// still being committed (10164) is tried again a few times.
func (f *fence) write(ctx context.Context, key string, data []byte, del bool) (uint64, error) {
	w := &fenceWrite{ctx: ctx, key: key, data: data, del: del, done: make(chan struct{})}
	f.qmu.Lock()
	f.queue = append(f.queue, w)
	f.qmu.Unlock()
	if err := f.lock(ctx); err != nil {
		if f.withdraw(w) {
			return 0, err
		}
		// Taken by a commit under way: its outcome is the write's.
		select {
		case <-w.done:
			return w.rev, w.err
		default:
			return 0, err
		}
	}
	defer f.unlock()
	// A holder of the turn before this one may have committed it already;
	// if not, it is still queued (a holder settles what it took before its
	// unlock), maybe behind more than one batch.
	for {
		select {
		case <-w.done:
			return w.rev, w.err
		default:
		}
		f.commit(f.take())
	}
}

// withdraw removes w from the queue and reports whether it was still there.
func (f *fence) withdraw(w *fenceWrite) bool {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	i := slices.Index(f.queue, w)
	if i < 0 {
		return false
	}
	f.queue = slices.Delete(f.queue, i, i+1)
	return true
}

// take removes up to maxBatch writes from the head of the queue.
func (f *fence) take() []*fenceWrite {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	n := min(len(f.queue), maxBatch)
	ws := slices.Clone(f.queue[:n])
	f.queue = slices.Delete(f.queue, 0, n)
	return ws
}

// commit writes ws, holding the turn, and settles each: as one batch when
// there are several and batches are taken, otherwise one at a time. The
// commit's context ends when every writer's has (or after 10 s): a writer
// that gave up does not fail the others' writes.
func (f *fence) commit(ws []*fenceWrite) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ws[0].ctx), 10*time.Second)
	defer cancel()
	var left atomic.Int32
	left.Store(int32(len(ws)))
	for _, w := range ws {
		stop := context.AfterFunc(w.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	f.mu.Lock()
	term, seq := f.term, f.seq
	f.mu.Unlock()
	if seq == 0 {
		settle(ws, 0, refresher.ErrNotAllowed)
		return
	}
	if len(ws) > 1 && f.batching() {
		msgs := make([]*nats.Msg, len(ws))
		for i, w := range ws {
			msgs[i] = f.message(w, term, seq)
		}
		last, err := f.publish(ctx, msgs, f.batches.PublishBatch)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			for i, w := range ws {
				w.rev, w.err = last-uint64(len(ws)-1-i), nil
				close(w.done)
			}
			return
		case errors.Is(err, errFenceMoved), ctx.Err() != nil:
			settle(ws, 0, err)
			return
		case errors.As(err, &apiErr), errors.Is(err, jetstreamext.ErrInvalidBatchAck):
			// Not taken as a batch: refused (nothing of it stored), or
			// acknowledged as single messages by a server that knows no
			// batches (writing them again is harmless). One at a time.
			f.qmu.Lock()
			f.noBatch = time.Now().Add(noBatchFor)
			f.qmu.Unlock()
			if f.log != nil {
				// At most once per noBatchFor: the operator learns why
				// token writes got slower (an older replica or server).
				f.log.Warn("leader: the server did not take token writes as an atomic batch; writing them one at a time",
					slog.Duration("retry_batches_in", noBatchFor), slog.String("error", err.Error()))
			}
		default:
			// No answer (the batch may or may not be stored): writing the
			// same tokens again is harmless.
		}
	}
	for _, w := range ws {
		// Made again: a batch's messages carry its headers.
		rev, err := f.publish(ctx, []*nats.Msg{f.message(w, term, seq)}, f.publishOne)
		settle([]*fenceWrite{w}, rev, err)
	}
}

// batching reports whether to try a batch now.
func (f *fence) batching() bool {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	return f.batches != nil && time.Now().After(f.noBatch)
}

// settle gives every write in ws the same outcome.
func settle(ws []*fenceWrite, rev uint64, err error) {
	for _, w := range ws {
		w.rev, w.err = rev, err
		close(w.done)
	}
}

// message is w as a fenced message of term, checked against TermKey at seq.
func (f *fence) message(w *fenceWrite, term, seq uint64) *nats.Msg {
	msg := &nats.Msg{
		Subject: f.subject(w.key),
		Data:    w.data,
		Header:  nats.Header{HeaderTerm: {strconv.FormatUint(term, 10)}, HeaderWriter: {f.writer}},
	}
	if w.del {
		msg.Header.Set("KV-Operation", "DEL")
	}
	// The headers jetstream.WithExpectLastSequenceForSubject sets, set here
	// so that the expectation is in the message itself (a simulated
	// JetStream reads it there).
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	msg.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, f.subject(TermKey))
	return msg
}

func (f *fence) publishOne(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	ack, err := f.js.PublishMsg(ctx, msgs[0])
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// publish sends msgs with send, trying again a few times while the server
// answers that a commit under the same check is still in progress (10164).
// It answers errFenceMoved when the server finds TermKey moved on.
func (f *fence) publish(ctx context.Context, msgs []*nats.Msg, send func(context.Context, []*nats.Msg) (uint64, error)) (uint64, error) {
	what := strings.TrimPrefix(msgs[0].Subject, f.subject(""))
	if len(msgs) > 1 {
		what = fmt.Sprintf("a batch of %d", len(msgs))
	}
	for try := 0; ; try++ {
		last, err := send(ctx, msgs)
		if err == nil {
			return last, nil
		}
		var apiErr *jetstream.APIError
		switch {
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant && try < 5:
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("leader: write %s: %w", what, ctx.Err())
			case <-time.After(time.Duration(try+1) * 20 * time.Millisecond):
			}
		case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
			return 0, fmt.Errorf("%w (%s)", errFenceMoved, what)
		default:
			return 0, fmt.Errorf("leader: write %s: %w", what, err)
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

package sim

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// errTimeout is what a client sees when the reply does not come: the write
// may or may not have committed.
var errTimeout = errors.New("nats: timeout")

// rec is one message of a simulated KV stream.
type rec struct {
	bucket, key string
	data        []byte
	op          jetstream.KeyValueOp
	seq         uint64
	hdr         nats.Header
	at          time.Time
}

func (r rec) Bucket() string                  { return r.bucket }
func (r rec) Key() string                     { return r.key }
func (r rec) Value() []byte                   { return r.data }
func (r rec) Revision() uint64                { return r.seq }
func (r rec) Created() time.Time              { return r.at }
func (r rec) Delta() uint64                   { return 0 }
func (r rec) Operation() jetstream.KeyValueOp { return r.op }

// bucket is a KV bucket with JetStream's semantics on an R3 stream: one
// sequence for the stream, the last message per subject, proposals that
// take time to commit (a write whose expectation names a subject another
// write is still committing is refused with 10164, as on R3), replies lost
// after the commit, and replicas cut off from the majority that can read
// but not commit.
type bucket struct {
	w    *world
	name string

	mu         sync.Mutex
	seq        uint64
	last       map[string]rec
	log        []rec
	committing map[string]int
	watchers   []*watcher // in the order they started: deliveries in a fixed order
}

func newBucket(w *world, name string) *bucket {
	return &bucket{w: w, name: name, last: map[string]rec{}, committing: map[string]int{}}
}

// proposal is one write: check runs when it is proposed (the server's
// expectations), under the bucket's lock.
type proposal struct {
	key    string
	data   []byte
	op     jetstream.KeyValueOp
	hdr    nats.Header
	expect string // another subject whose in-flight commits refuse this one (10164)
	check  func(b *bucket) error
}

func wrongLastConstant() error {
	return &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence: in-flight commit"}
}

// commit proposes p on behalf of from (nil: an operator outside the
// cluster). Faults are drawn from the world's schedule.
func (b *bucket) commit(ctx context.Context, from *replica, p proposal) (uint64, error) {
	return b.commitBatch(ctx, from, []proposal{p})
}

// commitBatch commits ps as one proposal (a JetStream atomic batch): the
// faults of its first key, every check before any write, consecutive
// sequences. It returns the last one.
func (b *bucket) commitBatch(ctx context.Context, from *replica, ps []proposal) (uint64, error) {
	from.awake()
	trip, slow, lose, cut := b.w.writeFaults(from, b.name, ps[0].key)
	if cut {
		// Cut off from the majority: the proposal never commits.
		<-ctx.Done()
		return 0, errTimeout
	}
	time.Sleep(trip)
	b.mu.Lock()
	for _, p := range ps {
		if b.committing[p.key] > 0 || (p.expect != "" && b.committing[p.expect] > 0) {
			b.mu.Unlock()
			return 0, wrongLastConstant()
		}
	}
	for _, p := range ps {
		if p.check != nil {
			if err := p.check(b); err != nil {
				b.mu.Unlock()
				return 0, err
			}
		}
	}
	for _, p := range ps {
		b.committing[p.key]++
	}
	b.mu.Unlock()
	for _, p := range ps {
		b.w.proposed(b, from, p)
	}
	if slow > 0 {
		time.Sleep(slow) // a proposal, once made, commits whatever the client does
	}
	b.mu.Lock()
	rs := make([]rec, len(ps))
	for i, p := range ps {
		b.committing[p.key]--
		b.seq++
		rs[i] = rec{bucket: b.name, key: p.key, data: p.data, op: p.op, seq: b.seq, hdr: p.hdr, at: time.Now()}
		b.last[p.key] = rs[i]
		b.log = append(b.log, rs[i])
		for _, w := range b.watchers {
			w.push(rs[i])
		}
	}
	b.mu.Unlock()
	if lose || ctx.Err() != nil {
		return 0, errTimeout // committed; the reply is lost
	}
	return rs[len(rs)-1].seq, nil
}

// put writes key whatever its revision (`nats kv put`, an operator).
func (b *bucket) put(key string, data []byte, op jetstream.KeyValueOp) {
	_, _ = b.commit(context.Background(), nil, proposal{key: key, data: data, op: op})
}

func (b *bucket) get(key string) (rec, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.last[key]
	return r, ok
}

// watcher delivers every committed message in order, without loss.
type watcher struct {
	mu    sync.Mutex
	queue []rec
	wake  chan struct{}
	out   chan jetstream.KeyValueEntry
	key   string
}

func (w *watcher) push(r rec) {
	if w.key != "" && r.key != w.key {
		return
	}
	w.mu.Lock()
	w.queue = append(w.queue, r)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// watch follows the bucket (key, or every key if "") until ctx ends.
func (b *bucket) watch(ctx context.Context, key string) *watcher {
	w := &watcher{wake: make(chan struct{}, 1), out: make(chan jetstream.KeyValueEntry), key: key}
	b.mu.Lock()
	b.watchers = append(b.watchers, w)
	b.mu.Unlock()
	go func() {
		defer func() {
			b.mu.Lock()
			b.watchers = slices.DeleteFunc(b.watchers, func(o *watcher) bool { return o == w })
			b.mu.Unlock()
			close(w.out)
		}()
		for {
			w.mu.Lock()
			q := w.queue
			w.queue = nil
			w.mu.Unlock()
			for _, r := range q {
				select {
				case w.out <- r:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-w.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w
}

func (w *watcher) Updates() <-chan jetstream.KeyValueEntry { return w.out }
func (w *watcher) Stop() error                             { return nil }

// leaseKV is the lease bucket as one replica reaches it (leader.KV).
type leaseKV struct {
	b    *bucket
	from *replica
}

func (k leaseKV) Get(_ context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.from.awake()
	r, ok := k.b.get(key)
	switch {
	case !ok:
		return nil, jetstream.ErrKeyNotFound
	case r.op != jetstream.KeyValuePut:
		return r, jetstream.ErrKeyDeleted // the marker, as leader.LeaseBucket returns it
	}
	return r, nil
}

func (k leaseKV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	return k.b.commit(ctx, k.from, proposal{key: key, data: value, op: jetstream.KeyValuePut, check: func(b *bucket) error {
		if r, ok := b.last[key]; ok && r.op == jetstream.KeyValuePut {
			return jetstream.ErrKeyExists
		}
		return nil
	}})
}

func (k leaseKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return k.b.commit(ctx, k.from, proposal{key: key, data: value, op: jetstream.KeyValuePut, check: func(b *bucket) error {
		if b.last[key].seq != rev {
			return jetstream.ErrKeyRevisionMismatch
		}
		return nil
	}})
}

func (k leaseKV) Watch(ctx context.Context, key string) (jetstream.KeyWatcher, error) {
	return k.b.watch(ctx, key), nil
}

// tokensKV is the tokens bucket as one replica reaches it: the methods of
// jetstream.KeyValue the leader uses (any other panics).
type tokensKV struct {
	jetstream.KeyValue
	b    *bucket
	from *replica
}

func (k tokensKV) Bucket() string { return k.b.name }

func (k tokensKV) Get(_ context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.from.awake()
	r, ok := k.b.get(key)
	if !ok || r.op != jetstream.KeyValuePut {
		return nil, jetstream.ErrKeyNotFound
	}
	return r, nil
}

func (k tokensKV) Create(ctx context.Context, key string, value []byte, _ ...jetstream.KVCreateOpt) (uint64, error) {
	return leaseKV{b: k.b, from: k.from}.Create(ctx, key, value)
}

func (k tokensKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return leaseKV{b: k.b, from: k.from}.Update(ctx, key, value, rev)
}

func (k tokensKV) ListKeys(context.Context, ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	k.b.mu.Lock()
	ch := make(chan string, len(k.b.last))
	for key, r := range k.b.last {
		if r.op == jetstream.KeyValuePut {
			ch <- key
		}
	}
	k.b.mu.Unlock()
	close(ch)
	return lister(ch), nil
}

type lister chan string

func (l lister) Keys() <-chan string { return l }
func (l lister) Stop() error         { return nil }

// simJS is JetStream as one replica reaches it: the fenced token writes and
// the stream read the leader makes.
type simJS struct {
	jetstream.JetStream
	b    *bucket
	from *replica
}

func (j simJS) PublishMsg(ctx context.Context, msg *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	seq, err := j.b.commit(ctx, j.from, j.proposal(msg))
	if err != nil {
		return nil, err
	}
	return &jetstream.PubAck{Stream: "KV_" + j.b.name, Sequence: seq}, nil
}

// PublishBatch is leader.BatchPublisher on the simulated bucket: every
// message checked, then all committed at consecutive sequences, or none.
func (j simJS) PublishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	ps := make([]proposal, len(msgs))
	for i, m := range msgs {
		ps[i] = j.proposal(m)
	}
	return j.b.commitBatch(ctx, j.from, ps)
}

// proposal is a fenced token write as the bucket commits it.
func (j simJS) proposal(msg *nats.Msg) proposal {
	key := strings.TrimPrefix(msg.Subject, "$KV."+j.b.name+".")
	op := jetstream.KeyValuePut
	if msg.Header.Get("KV-Operation") == "DEL" {
		op = jetstream.KeyValueDelete
	}
	expectKey := strings.TrimPrefix(msg.Header.Get(jetstream.ExpectedLastSubjSeqSubjHeader), "$KV."+j.b.name+".")
	expectSeq, _ := strconv.ParseUint(msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	return proposal{key: key, data: msg.Data, op: op, hdr: cloneHeader(msg.Header), expect: expectKey, check: func(b *bucket) error {
		if expectKey != "" && b.last[expectKey].seq != expectSeq {
			return &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence"}
		}
		return nil
	}}
}

func (j simJS) Stream(context.Context, string) (jetstream.Stream, error) {
	return simStream{b: j.b}, nil
}

type simStream struct {
	jetstream.Stream
	b *bucket
}

func (s simStream) GetLastMsgForSubject(_ context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	r, ok := s.b.get(strings.TrimPrefix(subject, "$KV."+s.b.name+"."))
	if !ok {
		return nil, jetstream.ErrMsgNotFound
	}
	hdr := cloneHeader(r.hdr)
	if r.op != jetstream.KeyValuePut {
		hdr.Set("KV-Operation", "DEL")
	}
	return &jetstream.RawStreamMsg{Subject: subject, Sequence: r.seq, Header: hdr, Data: r.data, Time: r.at}, nil
}

// simInherited is leader.Inherited on the simulated tokens bucket: the
// last message of every key, in key order (a fixed order for replays).
type simInherited struct{ b *bucket }

func (s simInherited) LastPerKey(_ context.Context, fn func(key string, h nats.Header, seq uint64)) error {
	s.b.mu.Lock()
	recs := make([]rec, 0, len(s.b.last))
	for _, key := range slices.Sorted(maps.Keys(s.b.last)) {
		recs = append(recs, s.b.last[key])
	}
	s.b.mu.Unlock()
	for _, r := range recs {
		hdr := cloneHeader(r.hdr)
		if r.op != jetstream.KeyValuePut {
			hdr.Set("KV-Operation", "DEL")
		}
		fn(r.key, hdr, r.seq)
	}
	return nil
}

func (s simInherited) Message(_ context.Context, seq uint64) ([]byte, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for _, r := range s.b.last {
		if r.seq == seq {
			return r.data, nil
		}
	}
	return nil, jetstream.ErrMsgNotFound
}

func cloneHeader(h nats.Header) nats.Header {
	out := nats.Header{}
	for k, v := range h {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// buckets returns the world's buckets in a fixed order.
func (w *world) buckets() []*bucket { return []*bucket{w.lease, w.tokens} }

package leader_test

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// memKV is an in-memory lease bucket for tests that run in a
// testing/synctest bubble (a real server's network I/O would stop the
// bubble's clock). It keeps one key's history of 1, like the real bucket.
type memKV struct {
	mu       sync.Mutex
	rev      uint64
	vals     map[string]entry
	watchers map[*memWatcher]bool
	// afterUpdate, if set, is called after an Update was applied and before
	// it returns (to lose its reply, or hold it).
	afterUpdate func(ctx context.Context) error
	// hang, if set, makes Get, Create and Update block until their context
	// ends (a holder cut off from the bucket); an Update then fails as a
	// late "wrong last sequence" would (the reply to a write whose fate the
	// holder must check by reading the record).
	hang bool
}

// hung blocks until ctx ends if the bucket hangs, and reports whether it did.
func (m *memKV) hung(ctx context.Context) error {
	m.mu.Lock()
	hang := m.hang
	m.mu.Unlock()
	if !hang {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

type entry struct {
	key  string
	val  []byte
	rev  uint64
	op   jetstream.KeyValueOp
	when time.Time
}

func (e entry) Bucket() string                  { return "tokens-lease" }
func (e entry) Key() string                     { return e.key }
func (e entry) Value() []byte                   { return e.val }
func (e entry) Revision() uint64                { return e.rev }
func (e entry) Created() time.Time              { return e.when }
func (e entry) Delta() uint64                   { return 0 }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }

func newMemKV() *memKV { return &memKV{vals: map[string]entry{}, watchers: map[*memWatcher]bool{}} }

func (m *memKV) put(key string, val []byte, op jetstream.KeyValueOp) uint64 {
	m.rev++
	e := entry{key: key, val: val, rev: m.rev, op: op, when: time.Now()}
	m.vals[key] = e
	for w := range m.watchers {
		select {
		case w.ch <- e:
		default:
		}
	}
	return m.rev
}

func (m *memKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if err := m.hung(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.vals[key]
	if !ok {
		return nil, jetstream.ErrKeyNotFound
	}
	if e.op != jetstream.KeyValuePut {
		return nil, jetstream.ErrKeyDeleted // as leader.LeaseBucket reports a delete marker
	}
	return e, nil
}

func (m *memKV) Create(ctx context.Context, key string, val []byte) (uint64, error) {
	if err := m.hung(ctx); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.vals[key]; ok && e.op == jetstream.KeyValuePut {
		return 0, jetstream.ErrKeyExists
	}
	return m.put(key, val, jetstream.KeyValuePut), nil
}

func (m *memKV) Update(ctx context.Context, key string, val []byte, rev uint64) (uint64, error) {
	if m.hung(ctx) != nil {
		return 0, jetstream.ErrKeyRevisionMismatch
	}
	m.mu.Lock()
	e, ok := m.vals[key]
	if !ok || e.rev != rev {
		m.mu.Unlock()
		return 0, jetstream.ErrKeyRevisionMismatch
	}
	n := m.put(key, val, jetstream.KeyValuePut)
	hook := m.afterUpdate
	m.mu.Unlock()
	if hook != nil {
		if err := hook(ctx); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Put writes key whatever its revision (as `nats kv put` does).
func (m *memKV) Put(key string, val []byte) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.put(key, val, jetstream.KeyValuePut)
}

func (m *memKV) Delete(_ context.Context, key string, rev uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vals[key].rev != rev {
		return jetstream.ErrKeyRevisionMismatch
	}
	m.put(key, nil, jetstream.KeyValueDelete)
	return nil
}

func (m *memKV) Watch(ctx context.Context, _ string) (jetstream.KeyWatcher, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := &memWatcher{kv: m, ch: make(chan jetstream.KeyValueEntry, 16)}
	m.watchers[w] = true
	context.AfterFunc(ctx, func() { _ = w.Stop() })
	return w, nil
}

// Watchers returns how many watchers are open.
func (m *memKV) Watchers() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.watchers)
}

type memWatcher struct {
	kv *memKV
	ch chan jetstream.KeyValueEntry
}

func (w *memWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w *memWatcher) Stop() error {
	w.kv.mu.Lock()
	defer w.kv.mu.Unlock()
	delete(w.kv.watchers, w)
	return nil
}

// loseNextUpdateReply makes the next Update land but report a timeout, as a
// renewal whose reply was lost does.
func (m *memKV) loseNextUpdateReply() {
	m.mu.Lock()
	defer m.mu.Unlock()
	lost := true
	m.afterUpdate = func(context.Context) error {
		if lost {
			lost = false
			return errors.New("nats: timeout") // landed, reply lost
		}
		return nil
	}
}

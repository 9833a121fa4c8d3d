// Package credentials owns the store of runtime providers (SPEC §8): a
// JetStream KV bucket with one entry per provider, keyed by its name, whose
// secret fields (consumer_secret, password, client_secret, header values) are
// sealed with AES-256-GCM (package seal) before they leave the process and
// whose other fields are stored in the clear but authenticated: each secret's
// additional data binds every field of the record (kind, URLs, ids, the set
// of sealed fields), so an entry that is edited or moved does not open.
// Every replica follows the bucket with Watch; the lease holder re-seals
// entries sealed with an older key or the older format (Reseal). The bucket
// is bounded (Limits).
package credentials

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

// ErrNotFound is returned by Delete for a name with no entry.
var ErrNotFound = errors.New("credentials: no runtime provider of that name")

// Store is the credential bucket.
type Store struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	ring   *seal.Keyring
	limits Limits
	// atomic: the bucket's stream takes atomic batches (PutBatch).
	atomic bool
}

// Limits bound the bucket (SPEC §10): MaxBytes its whole size, MaxValueSize
// one entry. Zero fields take the defaults.
type Limits struct {
	MaxBytes     int64
	MaxValueSize int32
}

// Default limits: room for over 100,000 providers (an entry is well under
// 1 KiB), and an entry far larger than any provider needs.
const (
	DefaultMaxBytes     = 256 << 20
	DefaultMaxValueSize = 16 << 10
)

// Option configures Open.
type Option func(*Store)

// WithLimits bounds the bucket; zero fields keep the defaults.
func WithLimits(l Limits) Option {
	return func(s *Store) {
		if l.MaxBytes > 0 {
			s.limits.MaxBytes = l.MaxBytes
		}
		if l.MaxValueSize > 0 {
			s.limits.MaxValueSize = l.MaxValueSize
		}
	}
}

// ErrTooLarge is returned by Put for an entry larger than the bucket's
// per-value limit.
var ErrTooLarge = errors.New("credentials: entry too large")

// Open creates the bucket if it does not exist (file storage, history 1,
// bounded by Limits, DefaultMaxBytes and DefaultMaxValueSize unless
// WithLimits says otherwise), applies the limits to an existing one, and
// returns a Store that seals and opens with ring.
func Open(ctx context.Context, nc *nats.Conn, bucket string, replicas int, ring *seal.Keyring, opts ...Option) (*Store, error) {
	st := &Store{ring: ring, limits: Limits{MaxBytes: DefaultMaxBytes, MaxValueSize: DefaultMaxValueSize}}
	for _, o := range opts {
		o(st)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("credentials: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var kv jetstream.KeyValue
	err = refresher.UntilReady(ctx, nil, func(ctx context.Context) (err error) {
		kv, st.atomic, err = natsx.OpenKV(ctx, js, jetstream.KeyValueConfig{
			Bucket:       bucket,
			Description:  "tokenbus: runtime providers, secret fields sealed (AES-256-GCM)",
			History:      1,
			Storage:      jetstream.FileStorage,
			Replicas:     max(replicas, 1),
			MaxBytes:     st.limits.MaxBytes,
			MaxValueSize: st.limits.MaxValueSize,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("credentials: open bucket %q: %w", bucket, err)
	}
	st.kv, st.js = kv, js
	return st, nil
}

// record is an entry as stored: non-secret fields in the clear, secrets
// sealed with additional data that binds the whole record (recordAD).
// Entries without V (the first format) bound the provider name and field
// only; they still open, and are reported stale so that the lease holder
// re-seals them.
type record struct {
	// V is the format: sealedWhole, or 0 for the first format.
	V             int             `json:"v,omitempty"`
	Name          string          `json:"name"`
	Kind          string          `json:"kind"`
	BaseURL       string          `json:"base_url,omitempty"`
	ConsumerKey   string          `json:"consumer_key,omitempty"`
	Username      string          `json:"username,omitempty"`
	Pool          int             `json:"pool,omitempty"`
	TokenURL      string          `json:"token_url,omitempty"`
	ClientID      string          `json:"client_id,omitempty"`
	AuthStyle     string          `json:"auth_style,omitempty"`
	Scopes        []string        `json:"scopes,omitempty"`
	RefreshBefore config.Duration `json:"refresh_before,omitempty"`
	Timeout       config.Duration `json:"timeout,omitempty"`
	// RefreshCooldown is the provider's refresh_cooldown.
	RefreshCooldown config.Duration        `json:"refresh_cooldown,omitempty"`
	Sealed          map[string]seal.Sealed `json:"sealed"`
}

// sealedWhole is the format whose additional data binds the whole record.
const sealedWhole = 2

// Format is the newest sealed-record format this package opens and the one
// it writes (token.status reports it as seal_format).
const Format = sealedWhole

// Secret field names in record.Sealed; a header value is "headers.<Name>".
const (
	fieldConsumerSecret = "consumer_secret"
	fieldPassword       = "password"
	fieldClientSecret   = "client_secret"
	headerPrefix        = "headers."
)

// legacyAD is the first format's additional data: the name and field only.
func legacyAD(name, field string) []byte { return []byte(name + "\x00" + field) }

// recordAD is the additional data of one sealed field of r: a format tag,
// every clear field of r (its JSON without the sealed values, which is
// deterministic: a struct, no maps), the names of every sealed field, and
// the field itself. Changing the kind, a URL, an id, the name (moving the
// entry) or the set of secrets makes every seal fail to open.
func recordAD(r record, field string) []byte {
	fields := slices.Sorted(maps.Keys(r.Sealed))
	r.Sealed = nil
	clear, _ := json.Marshal(r)
	b := make([]byte, 0, 64+len(clear))
	b = append(b, "tokenbus-credentials/v2\x00"...)
	b = append(b, clear...)
	b = append(b, 0)
	b = append(b, strings.Join(fields, "\x01")...)
	b = append(b, 0)
	return append(b, field...)
}

func (s *Store) encode(p config.Provider) ([]byte, error) {
	r := record{
		V: sealedWhole, Name: p.Name, Kind: p.Kind, BaseURL: p.BaseURL, ConsumerKey: p.ConsumerKey, Username: p.Username,
		Pool: p.Pool, TokenURL: p.TokenURL, ClientID: p.ClientID, AuthStyle: p.AuthStyle, Scopes: p.Scopes,
		RefreshBefore: p.RefreshBefore, Timeout: p.Timeout, RefreshCooldown: p.RefreshCooldown,
	}
	secrets := map[string]refresher.Secret{}
	for field, v := range map[string]refresher.Secret{fieldConsumerSecret: p.ConsumerSecret, fieldPassword: p.Password, fieldClientSecret: p.ClientSecret} {
		if v != "" {
			secrets[field] = v
		}
	}
	for h, v := range p.Headers {
		if v != "" {
			secrets[headerPrefix+h] = v
		}
	}
	// The additional data names every sealed field: fix the set first.
	r.Sealed = make(map[string]seal.Sealed, len(secrets))
	for field := range secrets {
		r.Sealed[field] = seal.Sealed{}
	}
	for _, field := range slices.Sorted(maps.Keys(secrets)) {
		sd, err := s.ring.Seal([]byte(secrets[field].Reveal()), recordAD(r, field))
		if err != nil {
			return nil, fmt.Errorf("credentials: %s: %w", p.Name, err)
		}
		r.Sealed[field] = sd
	}
	return json.Marshal(r)
}

// decode opens an entry; stale reports a secret sealed with an older key.
func (s *Store) decode(key string, b []byte) (p config.Provider, stale bool, err error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return p, false, fmt.Errorf("credentials: %s: malformed entry", key)
	}
	if r.Name != key {
		return p, false, fmt.Errorf("credentials: %s: entry names another provider", key)
	}
	if r.V != 0 && r.V != sealedWhole {
		return p, false, fmt.Errorf("credentials: %s: entry format %d is newer than this refresher knows", key, r.V)
	}
	p = config.Provider{
		Name: r.Name, Kind: r.Kind, BaseURL: r.BaseURL, ConsumerKey: r.ConsumerKey, Username: r.Username,
		Pool: r.Pool, TokenURL: r.TokenURL, ClientID: r.ClientID, AuthStyle: r.AuthStyle, Scopes: r.Scopes,
		RefreshBefore: r.RefreshBefore, Timeout: r.Timeout, RefreshCooldown: r.RefreshCooldown,
	}
	// An entry of the first format opens with the name alone bound, and is
	// stale: the lease holder re-seals it whole.
	stale = r.V == 0
	for field, sd := range r.Sealed {
		ad := legacyAD(r.Name, field)
		if r.V == sealedWhole {
			ad = recordAD(r, field)
		}
		pt, err := s.ring.Open(sd, ad)
		if err != nil {
			return p, false, fmt.Errorf("credentials: %s: %s: %w", key, field, err)
		}
		stale = stale || s.ring.Stale(sd)
		v := refresher.Secret(pt)
		switch {
		case field == fieldConsumerSecret:
			p.ConsumerSecret = v
		case field == fieldPassword:
			p.Password = v
		case field == fieldClientSecret:
			p.ClientSecret = v
		case len(field) > len(headerPrefix) && field[:len(headerPrefix)] == headerPrefix:
			if p.Headers == nil {
				p.Headers = map[string]refresher.Secret{}
			}
			p.Headers[field[len(headerPrefix):]] = v
		default:
			return p, false, fmt.Errorf("credentials: %s: unknown sealed field %q", key, field)
		}
	}
	return p, stale, nil
}

// Put stores p, its secrets sealed with the first key, and returns the
// revision once JetStream has stored it.
func (s *Store) Put(ctx context.Context, p config.Provider) (uint64, error) {
	b, err := s.sealed(p)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Put(ctx, p.Name, b)
	if err != nil {
		return 0, fmt.Errorf("credentials: put %s: %w", p.Name, err)
	}
	return rev, nil
}

// sealed is p's entry as stored (encode), refused (ErrTooLarge, a bad
// request) past the bucket's max_value_size.
func (s *Store) sealed(p config.Provider) ([]byte, error) {
	b, err := s.encode(p)
	if err != nil {
		return nil, err
	}
	if len(b) > int(s.limits.MaxValueSize) {
		return nil, fmt.Errorf("%w: %w: %s: %d bytes sealed, more than credentials.max_value_size (%d)", refresher.ErrBadRequest, ErrTooLarge, p.Name, len(b), s.limits.MaxValueSize)
	}
	return b, nil
}

// ErrNoBatch is PutBatch's answer when the bucket's stream takes no
// atomic batches (a server older than 2.12, or the setting refused).
var ErrNoBatch = errors.New("credentials: the bucket takes no atomic batches")

// PutBatch stores ps, sealed as Put seals, in one JetStream atomic batch:
// every entry or none, in one write — on a server with sync_interval always
// one sync to disk for the whole batch instead of one per entry (a bulk
// onboarding of 100,000 providers is otherwise 100,000 syncs). It returns
// each provider's revision, or errs[i] for a provider refused on its own
// (too large once sealed), which is left out of the batch. err reports a
// batch not stored as a whole — ErrNoBatch, a batch refused (the bucket
// full, atomic batches turned off), no acknowledgement in time — and the
// caller puts the providers one by one: a batch that was stored after all
// is stored again, unchanged. No value appears in an error.
func (s *Store) PutBatch(ctx context.Context, ps []config.Provider) (revs []uint64, errs []error, err error) {
	if !s.atomic {
		return nil, nil, ErrNoBatch
	}
	revs, errs = make([]uint64, len(ps)), make([]error, len(ps))
	msgs := make([]*nats.Msg, 0, len(ps))
	at := make([]int, 0, len(ps)) // msgs[k] is ps[at[k]]
	prefix := "$KV." + s.kv.Bucket() + "."
	for i, p := range ps {
		b, err := s.sealed(p)
		if err != nil {
			errs[i] = err
			continue
		}
		msgs = append(msgs, &nats.Msg{Subject: prefix + p.Name, Data: b, Header: nats.Header{}})
		at = append(at, i)
	}
	if len(msgs) == 0 {
		return revs, errs, nil
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, s.js, msgs)
	if err != nil {
		return nil, nil, fmt.Errorf("credentials: put a batch of %d: %w", len(msgs), err)
	}
	// A committed batch is stored in one piece: its entries have the
	// revisions up to the commit's.
	if ack.BatchSize != uint64(len(msgs)) || ack.Sequence < ack.BatchSize {
		return nil, nil, fmt.Errorf("credentials: put a batch of %d: acknowledged %d ending at revision %d", len(msgs), ack.BatchSize, ack.Sequence)
	}
	first := ack.Sequence - ack.BatchSize + 1
	for k, i := range at {
		revs[i] = first + uint64(k)
	}
	return revs, errs, nil
}

// Get returns the stored provider name and its revision.
func (s *Store) Get(ctx context.Context, name string) (config.Provider, uint64, error) {
	e, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return config.Provider{}, 0, ErrNotFound
	}
	if err != nil {
		return config.Provider{}, 0, fmt.Errorf("credentials: get %s: %w", name, err)
	}
	p, _, err := s.decode(name, e.Value())
	return p, e.Revision(), err
}

// Delete removes name's entry; ErrNotFound if there is none.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.kv.Get(ctx, name); errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotFound
	} else if err != nil {
		return fmt.Errorf("credentials: delete %s: %w", name, err)
	}
	if err := s.kv.Delete(ctx, name); err != nil {
		return fmt.Errorf("credentials: delete %s: %w", name, err)
	}
	return nil
}

// Reseal re-seals name's entry with the first key if it is still at
// revision rev (compare-and-swap: a concurrent put wins).
func (s *Store) Reseal(ctx context.Context, p config.Provider, rev uint64) error {
	b, err := s.encode(p)
	if err != nil {
		return err
	}
	if _, err := s.kv.Update(ctx, p.Name, b, rev); err != nil {
		return fmt.Errorf("credentials: reseal %s: %w", p.Name, err)
	}
	return nil
}

// Op is what happened to an entry.
type Op int

const (
	// OpPut: the provider was added or replaced.
	OpPut Op = iota
	// OpDelete: the provider was removed.
	OpDelete
	// OpInvalid: the entry cannot be opened (unknown key, altered value);
	// Err says why, and the provider is treated as absent.
	OpInvalid
	// OpReady: every entry that existed when the watch started has been
	// delivered.
	OpReady
)

// Event is one change seen by Watch.
type Event struct {
	Op       Op
	Name     string
	Provider config.Provider
	Revision uint64
	// Stale is set when a secret was sealed with an older key: the lease
	// holder re-seals it.
	Stale bool
	Err   error
}

// Watch calls fn with every entry of the bucket, then OpReady, then every
// change, until ctx ends. After a reconnect it starts over (fn then sees
// current entries again, and deletes as OpDelete), so fn must be idempotent.
// fn runs on Watch's goroutine.
func (s *Store) Watch(ctx context.Context, nc *nats.Conn, fn func(Event)) {
	reconnected := nc.StatusChanged(nats.CONNECTED)
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
		s.follow(ctx, w, reconnected, fn)
		_ = w.Stop()
	}
}

func (s *Store) follow(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan nats.Status, fn func(Event)) {
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
			if e == nil {
				fn(Event{Op: OpReady})
				continue
			}
			if !wire.ValidName(e.Key()) {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				fn(Event{Op: OpDelete, Name: e.Key(), Revision: e.Revision()})
				continue
			}
			p, stale, err := s.decode(e.Key(), e.Value())
			if err != nil {
				fn(Event{Op: OpInvalid, Name: e.Key(), Revision: e.Revision(), Err: err})
				continue
			}
			fn(Event{Op: OpPut, Name: e.Key(), Provider: p, Revision: e.Revision(), Stale: stale})
		}
	}
}

// Package credentials owns the store of runtime providers (SPEC §8): a
// JetStream KV bucket with one entry per provider, keyed by its name, whose
// secret fields (consumer_secret, password, client_secret, header values) are
// sealed with AES-256-GCM (package seal) before they leave the process and
// whose other fields are stored in the clear. Every replica follows the
// bucket with Watch; the lease holder re-seals entries sealed with an older
// key (Reseal).
package credentials

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

// ErrNotFound is returned by Delete for a name with no entry.
var ErrNotFound = errors.New("credentials: no runtime provider of that name")

// Store is the credential bucket.
type Store struct {
	kv   jetstream.KeyValue
	ring *seal.Keyring
}

// Open creates the bucket if it does not exist (file storage, history 1) and
// returns a Store that seals and opens with ring.
func Open(ctx context.Context, nc *nats.Conn, bucket string, replicas int, ring *seal.Keyring) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("credentials: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var kv jetstream.KeyValue
	err = refresher.UntilReady(ctx, nil, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "tokenbus: runtime providers, secret fields sealed (AES-256-GCM)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("credentials: open bucket %q: %w", bucket, err)
	}
	return &Store{kv: kv, ring: ring}, nil
}

// record is an entry as stored: non-secret fields in the clear, secrets
// sealed with the provider name and field as additional data.
type record struct {
	Name          string                 `json:"name"`
	Kind          string                 `json:"kind"`
	BaseURL       string                 `json:"base_url,omitempty"`
	ConsumerKey   string                 `json:"consumer_key,omitempty"`
	Username      string                 `json:"username,omitempty"`
	Pool          int                    `json:"pool,omitempty"`
	TokenURL      string                 `json:"token_url,omitempty"`
	ClientID      string                 `json:"client_id,omitempty"`
	AuthStyle     string                 `json:"auth_style,omitempty"`
	Scopes        []string               `json:"scopes,omitempty"`
	RefreshBefore config.Duration        `json:"refresh_before,omitempty"`
	Timeout       config.Duration        `json:"timeout,omitempty"`
	Sealed        map[string]seal.Sealed `json:"sealed"`
}

// Secret field names in record.Sealed; a header value is "headers.<Name>".
const (
	fieldConsumerSecret = "consumer_secret"
	fieldPassword       = "password"
	fieldClientSecret   = "client_secret"
	headerPrefix        = "headers."
)

func ad(name, field string) []byte { return []byte(name + "\x00" + field) }

func (s *Store) encode(p config.Provider) ([]byte, error) {
	r := record{
		Name: p.Name, Kind: p.Kind, BaseURL: p.BaseURL, ConsumerKey: p.ConsumerKey, Username: p.Username,
		Pool: p.Pool, TokenURL: p.TokenURL, ClientID: p.ClientID, AuthStyle: p.AuthStyle, Scopes: p.Scopes,
		RefreshBefore: p.RefreshBefore, Timeout: p.Timeout, Sealed: map[string]seal.Sealed{},
	}
	add := func(field string, v refresher.Secret) error {
		if v == "" {
			return nil
		}
		sd, err := s.ring.Seal([]byte(v.Reveal()), ad(p.Name, field))
		if err != nil {
			return fmt.Errorf("credentials: %s: %w", p.Name, err)
		}
		r.Sealed[field] = sd
		return nil
	}
	errs := []error{add(fieldConsumerSecret, p.ConsumerSecret), add(fieldPassword, p.Password), add(fieldClientSecret, p.ClientSecret)}
	for _, h := range slices.Sorted(maps.Keys(p.Headers)) {
		errs = append(errs, add(headerPrefix+h, p.Headers[h]))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
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
	p = config.Provider{
		Name: r.Name, Kind: r.Kind, BaseURL: r.BaseURL, ConsumerKey: r.ConsumerKey, Username: r.Username,
		Pool: r.Pool, TokenURL: r.TokenURL, ClientID: r.ClientID, AuthStyle: r.AuthStyle, Scopes: r.Scopes,
		RefreshBefore: r.RefreshBefore, Timeout: r.Timeout,
	}
	for field, sd := range r.Sealed {
		pt, err := s.ring.Open(sd, ad(r.Name, field))
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
	b, err := s.encode(p)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Put(ctx, p.Name, b)
	if err != nil {
		return 0, fmt.Errorf("credentials: put %s: %w", p.Name, err)
	}
	return rev, nil
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

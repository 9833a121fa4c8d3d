package credentials_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

// TestEditedEntryDoesNotOpen (SPEC §10): the sealed record binds every field
// of a runtime provider. Whoever can write the bucket but holds no key
// cannot point a sealed secret at a server of theirs (kind, base_url,
// token_url), change an id, move the entry, drop a secret, or downgrade it
// to the first format: each edited entry fails to open, while the original
// opens.
func TestEditedEntryDoesNotOpen(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	ring, _ := seal.NewKeyring(key(t, "k1"))
	st, err := credentials.Open(ctx, nc, "creds", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, _ := js.KeyValue(ctx, "creds")
	providers := []config.Provider{
		{Name: "d", Kind: config.KindDaraja, BaseURL: "https://api.safaricom.co.ke", ConsumerKey: "ck", ConsumerSecret: "cs-secret"},
		{Name: "o", Kind: config.KindOAuth2, TokenURL: "https://momo.example/token", ClientID: "cid", ClientSecret: "o-secret", AuthStyle: "header",
			Scopes: []string{"a"}, Headers: map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": "sub-key", "X-Other": "x-val"}},
	}
	for _, p := range providers {
		if _, err := st.Put(ctx, p); err != nil {
			t.Fatal(err)
		}
		if got, _, err := st.Get(ctx, p.Name); err != nil || got.Kind != p.Kind {
			t.Fatalf("%s: the original does not open: %v", p.Name, err)
		}
	}
	edit := func(name string, change func(map[string]any)) []byte {
		e, err := kv.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(e.Value(), &m); err != nil {
			t.Fatal(err)
		}
		change(m)
		b, _ := json.Marshal(m)
		return b
	}
	for _, tc := range []struct {
		what, from, to string
		change         func(map[string]any)
	}{
		{"base_url", "d", "d", func(m map[string]any) { m["base_url"] = "https://attacker.example" }},
		{"kind", "d", "d", func(m map[string]any) { m["kind"] = "airtel"; m["client_id"] = "ck" }},
		{"consumer_key", "d", "d", func(m map[string]any) { m["consumer_key"] = "other" }},
		{"timeout", "d", "d", func(m map[string]any) { m["timeout"] = "2s" }},
		{"format (downgrade)", "d", "d", func(m map[string]any) { delete(m, "v") }},
		{"moved", "d", "d2", func(m map[string]any) { m["name"] = "d2" }},
		{"token_url", "o", "o", func(m map[string]any) { m["token_url"] = "https://attacker.example/token" }},
		{"client_id", "o", "o", func(m map[string]any) { m["client_id"] = "x" }},
		{"auth_style", "o", "o", func(m map[string]any) { m["auth_style"] = "params" }},
		{"scopes", "o", "o", func(m map[string]any) { m["scopes"] = []string{"a", "b"} }},
		{"a dropped secret", "o", "o", func(m map[string]any) { delete(m["sealed"].(map[string]any), "headers.X-Other") }},
	} {
		t.Run(tc.what, func(t *testing.T) {
			b := edit(tc.from, tc.change)
			defer func() {
				// Put the original back for the next case.
				for _, p := range providers {
					if _, err := st.Put(ctx, p); err != nil {
						t.Fatal(err)
					}
				}
			}()
			if _, err := kv.Put(ctx, tc.to, b); err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.Get(ctx, tc.to); !errors.Is(err, seal.ErrOpen) {
				t.Fatalf("an entry with its %s edited: %v, want it not to open", tc.what, err)
			}
		})
	}
}

// TestFirstFormatOpensAndIsResealed: an entry sealed the first way (only the
// name and field bound) still opens after the upgrade, is reported stale,
// and once re-sealed binds the whole record (an edit then fails to open).
func TestFirstFormatOpensAndIsResealed(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	ring, _ := seal.NewKeyring(key(t, "k1"))
	st, err := credentials.Open(ctx, nc, "creds", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, _ := js.KeyValue(ctx, "creds")
	// As the first format wrote it.
	sd, err := ring.Seal([]byte("old-secret"), []byte("m-1\x00consumer_secret"))
	if err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(map[string]any{"name": "m-1", "kind": "daraja", "base_url": "https://api.safaricom.co.ke", "consumer_key": "ck",
		"timeout": "10s", "sealed": map[string]seal.Sealed{"consumer_secret": sd}})
	if _, err := kv.Put(ctx, "m-1", old); err != nil {
		t.Fatal(err)
	}
	ev := &events{by: map[string]credentials.Event{}}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); st.Watch(wctx, nc, ev.add) }()
	defer func() { cancel(); <-done }()
	var e credentials.Event
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		var ok bool
		if e, ok = ev.get("m-1"); !ok || e.Op != credentials.OpPut || !e.Stale || e.Provider.ConsumerSecret.Reveal() != "old-secret" {
			return fmt.Errorf("m-1: %+v", e)
		}
		return nil
	})
	if err := st.Reseal(ctx, e.Provider, e.Revision); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if e, _ := ev.get("m-1"); e.Stale || e.Revision == 1 || e.Provider.ConsumerSecret.Reveal() != "old-secret" {
			return fmt.Errorf("not re-sealed: %+v", e)
		}
		return nil
	})
	cur, _ := kv.Get(ctx, "m-1")
	if !strings.Contains(string(cur.Value()), `"v":2`) {
		t.Fatalf("re-sealed entry %s is not of the whole-record format", cur.Value())
	}
	edited := strings.Replace(string(cur.Value()), "https://api.safaricom.co.ke", "https://attacker.example", 1)
	if _, err := kv.Put(ctx, "m-1", []byte(edited)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, "m-1"); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("an edited re-sealed entry: %v", err)
	}
}

// TestBucketLimits: the bucket has a size limit and a per-value limit,
// defaults or configured; an entry over the per-value limit is refused as a
// bad request naming the setting, never stored.
func TestBucketLimits(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	ring, _ := seal.NewKeyring(key(t, "k1"))
	js, _ := jetstream.New(nc)
	if _, err := credentials.Open(ctx, nc, "creds", 1, ring); err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, "KV_creds")
	if c := s.CachedInfo().Config; c.MaxBytes != credentials.DefaultMaxBytes || c.MaxMsgSize != credentials.DefaultMaxValueSize {
		t.Fatalf("default limits: max_bytes %d, max_msg_size %d", c.MaxBytes, c.MaxMsgSize)
	}
	// Configured limits apply to the existing bucket.
	st, err := credentials.Open(ctx, nc, "creds", 1, ring, credentials.WithLimits(credentials.Limits{MaxBytes: 1 << 20, MaxValueSize: 2048}))
	if err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, "KV_creds")
	if c := s.CachedInfo().Config; c.MaxBytes != 1<<20 || c.MaxMsgSize != 2048 {
		t.Fatalf("configured limits: max_bytes %d, max_msg_size %d", c.MaxBytes, c.MaxMsgSize)
	}
	big := config.Provider{Name: "big", Kind: config.KindOAuth2, TokenURL: "https://x/token", ClientID: "c", ClientSecret: "s",
		Headers: map[string]refresher.Secret{"X-Big": refresher.Secret(strings.Repeat("v", 4096))}}
	_, err = st.Put(ctx, big)
	if !errors.Is(err, credentials.ErrTooLarge) || !errors.Is(err, refresher.ErrBadRequest) || !strings.Contains(err.Error(), "credentials.max_value_size") || strings.Contains(err.Error(), "vvvv") {
		t.Fatalf("oversized put: %v", err)
	}
	if _, _, err := st.Get(ctx, "big"); !errors.Is(err, credentials.ErrNotFound) {
		t.Fatalf("the oversized entry was stored: %v", err)
	}
}

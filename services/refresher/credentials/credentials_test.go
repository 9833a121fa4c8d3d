package credentials_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func key(t *testing.T, id string) seal.Key {
	t.Helper()
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	k, err := seal.ParseKey(id, base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type events struct {
	mu sync.Mutex
	by map[string]credentials.Event
	ok bool
}

func (e *events) add(ev credentials.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ev.Op == credentials.OpReady {
		e.ok = true
		return
	}
	e.by[ev.Name] = ev
}

func (e *events) get(name string) (credentials.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev, ok := e.by[name]
	return ev, ok
}

func TestStoreSealsWatchesAndReseals(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	k1, k2 := key(t, "k1"), key(t, "k2")
	old, _ := seal.NewKeyring(k1)
	st, err := credentials.Open(ctx, nc, "tokenbus-credentials", 1, old)
	if err != nil {
		t.Fatal(err)
	}
	const secret, hdr = "consumer-secret-4f9a0b7c", "subscription-key-77e1c2"
	p := config.Provider{Name: "m-0001", Kind: config.KindDaraja, BaseURL: "http://127.0.0.1:1", ConsumerKey: "ck-1", ConsumerSecret: refresher.Secret(secret), Timeout: config.Duration(time.Second)}
	if _, err := st.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	o := config.Provider{Name: "momo-1", Kind: config.KindOAuth2, TokenURL: "http://127.0.0.1:1/token", ClientID: "c", ClientSecret: "client-secret-e81d", AuthStyle: "header",
		Headers: map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": hdr}}
	if _, err := st.Put(ctx, o); err != nil {
		t.Fatal(err)
	}

	// A replica with the new key first follows the bucket and sees both,
	// opened, and stale (sealed with k1).
	ring, _ := seal.NewKeyring(k2, k1)
	st2, err := credentials.Open(ctx, nc, "tokenbus-credentials", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{by: map[string]credentials.Event{}}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); st2.Watch(wctx, nc, ev.add) }()
	defer func() { cancel(); <-done }()
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		e, ok := ev.get("momo-1")
		if !ok || e.Op != credentials.OpPut || !e.Stale || e.Provider.Headers["Ocp-Apim-Subscription-Key"].Reveal() != hdr {
			return fmt.Errorf("momo-1: %+v", e)
		}
		e, ok = ev.get("m-0001")
		if !ok || e.Provider.ConsumerSecret.Reveal() != secret || e.Provider.ConsumerKey != "ck-1" {
			return fmt.Errorf("m-0001: %+v", e)
		}
		return nil
	})
	// Re-seal: the entry is then sealed with k2, and the old keyring can no
	// longer open it.
	e, _ := ev.get("m-0001")
	if err := st2.Reseal(ctx, e.Provider, e.Revision); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if e, _ := ev.get("m-0001"); e.Stale || e.Revision <= 1 {
			return fmt.Errorf("not re-sealed: %+v", e)
		}
		return nil
	})
	if _, _, err := st.Get(ctx, "m-0001"); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("old keyring opened a re-sealed entry: %v", err)
	}
	// A re-seal of an outdated revision loses to the newer write.
	if err := st2.Reseal(ctx, e.Provider, e.Revision); err == nil {
		t.Fatal("re-seal at an old revision succeeded")
	}

	// Delete: seen by the watch; a second delete is ErrNotFound.
	if err := st2.Delete(ctx, "m-0001"); err != nil {
		t.Fatal(err)
	}
	if err := st2.Delete(ctx, "m-0001"); !errors.Is(err, credentials.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if e, _ := ev.get("m-0001"); e.Op != credentials.OpDelete {
			return fmt.Errorf("not deleted: %+v", e)
		}
		return nil
	})

	// No secret in the clear anywhere in the JetStream store.
	dir := ns.JetStreamConfig().StoreDir
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range []string{secret, hdr, "client-secret-e81d"} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a secret in the clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A sealed value moved to another entry does not open.
func TestMovedEntryDoesNotOpen(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	ring, _ := seal.NewKeyring(key(t, "k1"))
	st, err := credentials.Open(ctx, nc, "creds", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	p := config.Provider{Name: "a", Kind: config.KindAirtel, BaseURL: "http://x", ClientID: "c", ClientSecret: "s-a"}
	if _, err := st.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	// Copy a's entry to b, renaming it: the secret stays bound to a.
	js, _ := nc.JetStream()
	kv, _ := js.KeyValue("creds")
	e, _ := kv.Get("a")
	moved := bytes.Replace(e.Value(), []byte(`"name":"a"`), []byte(`"name":"b"`), 1)
	if _, err := kv.Put("b", moved); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Get(ctx, "b"); !errors.Is(err, seal.ErrOpen) {
		t.Fatalf("moved entry: %v", err)
	}
}

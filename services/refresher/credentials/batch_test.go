package credentials_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

// TestPutBatch: PutBatch stores a batch as one JetStream atomic batch (the
// stored messages carry its id, at consecutive revisions), at the revisions
// it returns, sealed as Put seals (the entries open); a provider too large
// once sealed is refused alone and the rest stored; a batch the stream
// refuses as a whole (atomic batches turned off, as an older replica's Open
// does) is an error with nothing stored, so that the caller can put them one
// by one. No secret is in any error.
func TestPutBatch(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	ring, _ := seal.NewKeyring(key(t, "k1"))
	st, err := credentials.Open(ctx, nc, "tokenbus-credentials", 1, ring, credentials.WithLimits(credentials.Limits{MaxValueSize: 2048}))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	str, err := js.Stream(ctx, "KV_tokenbus-credentials")
	if err != nil || !str.CachedInfo().Config.AllowAtomicPublish {
		t.Fatalf("Open left the stream without atomic batches: %v", err)
	}
	secret := func(i int) string { return fmt.Sprintf("consumer-secret-%04d-9c1e", i) }
	batch := func(from, n int) []config.Provider {
		ps := make([]config.Provider, n)
		for i := range ps {
			ps[i] = config.Provider{Name: fmt.Sprintf("m-%04d", from+i), Kind: config.KindDaraja, BaseURL: "http://127.0.0.1:1",
				ConsumerKey: fmt.Sprintf("ck-%d", from+i), ConsumerSecret: refresher.Secret(secret(from + i))}
		}
		return ps
	}
	ps := batch(0, 6)
	big := strings.Repeat("s", 3000)
	ps[2].Headers = map[string]refresher.Secret{"Ocp-Apim-Subscription-Key": refresher.Secret(big)}
	revs, errs, err := st.PutBatch(ctx, ps)
	if err != nil {
		t.Fatal(err)
	}
	var batchID string
	for i, p := range ps {
		if i == 2 {
			if !errors.Is(errs[i], credentials.ErrTooLarge) || !errors.Is(errs[i], refresher.ErrBadRequest) || revs[i] != 0 ||
				strings.Contains(errs[i].Error(), big) || strings.Contains(errs[i].Error(), secret(i)) {
				t.Fatalf("the large provider: rev %d, %v", revs[i], errs[i])
			}
			if _, _, err := st.Get(ctx, p.Name); !errors.Is(err, credentials.ErrNotFound) {
				t.Fatalf("the large provider was stored: %v", err)
			}
			continue
		}
		if errs[i] != nil {
			t.Fatalf("%s: %v", p.Name, errs[i])
		}
		got, rev, err := st.Get(ctx, p.Name)
		if err != nil || rev != revs[i] || got.ConsumerSecret.Reveal() != secret(i) {
			t.Fatalf("%s: revision %d (PutBatch said %d), %v", p.Name, rev, revs[i], err)
		}
		if i > 0 && i != 3 && revs[i] != revs[i-1]+1 || i == 3 && revs[3] != revs[1]+1 {
			t.Fatalf("revisions not consecutive: %v", revs)
		}
		m, err := str.GetMsg(ctx, rev)
		if err != nil {
			t.Fatal(err)
		}
		id := m.Header.Get("Nats-Batch-Id")
		if id == "" || batchID != "" && id != batchID {
			t.Fatalf("%s was not stored in the one atomic batch: %v", p.Name, m.Header)
		}
		batchID = id
	}

	// Atomic batches turned off: the batch fails whole, nothing stored.
	cfg := str.CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	ps = batch(100, 3)
	if _, _, err := st.PutBatch(ctx, ps); err == nil || strings.Contains(err.Error(), secret(100)) {
		t.Fatalf("a batch on a stream without atomic batches: %v", err)
	}
	for _, p := range ps {
		if _, _, err := st.Get(ctx, p.Name); !errors.Is(err, credentials.ErrNotFound) {
			t.Fatalf("%s stored by a refused batch: %v", p.Name, err)
		}
	}
	// Open turns them on again.
	st, err = credentials.Open(ctx, nc, "tokenbus-credentials", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	if _, errs, err := st.PutBatch(ctx, ps); err != nil || errors.Join(errs...) != nil {
		t.Fatalf("after Open: %v %v", err, errs)
	}
}

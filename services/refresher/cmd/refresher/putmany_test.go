package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// TestRuntimeProvidersPutMany: tokenbus.providers.put_many stores every valid
// provider of a batch before it answers (each entry is in the credentials
// bucket at the revision the reply gives), refuses each invalid one with the
// code a put of it alone would get and a message naming its index and field,
// never a value, and refuses as a whole only a request that is not a list
// of 1 to ProvidersPutManyMax providers. Each stored provider is served.
// The valid ones are stored in one atomic batch (their messages carry its
// id); two providers of one request sharing a credential: the later one is
// refused (409). With atomic batches turned off on the bucket (an older
// replica's Open), a request is stored one by one, with the same results.
func TestRuntimeProvidersPutMany(t *testing.T) {
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	m, _ := startRuntime(t, runtimeSetup{dir: t.TempDir(), simURL: srv.URL, keys: fmt.Sprintf("[{id: k1, key: %q}]", newKey())})
	t.Cleanup(func() { _ = m.Close() })
	nc := testutil.Connect(t, m.ns)
	// The config-file provider serves before the request (its first token
	// may take a few retries on a loaded machine) and after it.
	configServes := func(within time.Duration) {
		t.Helper()
		testutil.CheckFor(t, within, 10*time.Millisecond, func() error {
			if tok, _ := getToken(t, nc, "daraja-test"); tok.AccessToken == "" {
				return errors.New("the config-file provider does not serve")
			}
			return nil
		})
	}
	configServes(10 * time.Second)

	bad := darajaEntry("m-bad", "not-a-url-SECRETISH", "merchant-bad")
	delete(bad, "consumer_secret")
	items := []map[string]string{
		darajaEntry("m-a", srv.URL, "merchant-a"),
		bad,
		darajaEntry("daraja-test", srv.URL, "merchant-x"), // a config-file name: 409
		darajaEntry("m-b", srv.URL, "merchant-b"),
		darajaEntry("m-a", srv.URL, "merchant-a2"), // the same name twice: 400
		darajaEntry("m-c", srv.URL, "merchant-c"),
		darajaEntry("m-d", srv.URL, "merchant-b"), // m-b's credential: 409
	}
	raws := make([]json.RawMessage, len(items))
	for i, it := range items {
		raws[i], _ = json.Marshal(it)
	}
	code, b := request(t, nc, wire.ProvidersPutManySubject, wire.ProviderPutManyRequest{Providers: raws})
	var r wire.ProviderPutManyReply
	if code != 0 || json.Unmarshal(b, &r) != nil || len(r.Results) != len(items) || r.Stored != 3 || r.Refused != 4 {
		t.Fatalf("put_many: %d %s", code, b)
	}
	for _, it := range items {
		if s := it["consumer_secret"]; s != "" && strings.Contains(string(b), s) {
			t.Fatalf("the reply holds a secret: %s", b)
		}
	}
	if strings.Contains(string(b), "SECRETISH") {
		t.Fatalf("the reply echoes a value: %s", b)
	}
	wantErr := map[int]struct {
		code int
		has  []string
	}{
		1: {400, []string{"providers[1]: ", "base_url", "consumer_secret: missing"}},
		2: {409, []string{"providers[2]: "}},
		4: {400, []string{"providers[4]: ", "name: the same as providers[0]"}},
		6: {409, []string{"providers[6]: ", `consumer_key: provider "m-b" of this request uses the same credential`}},
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "tokenbus-credentials")
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range r.Results {
		if res.Index != i {
			t.Fatalf("result %d has index %d", i, res.Index)
		}
		if w, refused := wantErr[i]; refused {
			if res.Error == nil || res.Error.Code != w.code {
				t.Fatalf("result %d: %+v, want code %d", i, res, w.code)
			}
			for _, s := range w.has {
				if !strings.Contains(res.Error.Message, s) {
					t.Fatalf("result %d: message %q lacks %q", i, res.Error.Message, s)
				}
			}
			continue
		}
		if res.Error != nil || res.Name != items[i]["name"] || res.Kind != "daraja" || res.Revision == 0 {
			t.Fatalf("result %d: %+v", i, res)
		}
		// Stored before the reply, at the revision it gives.
		e, err := kv.Get(context.Background(), res.Name)
		if err != nil || e.Revision() != res.Revision {
			t.Fatalf("%s in the bucket: %v, %v; reply says revision %d", res.Name, e, err, res.Revision)
		}
		if id := batchID(t, js, res.Revision); id == "" {
			t.Fatalf("%s was not stored in an atomic batch", res.Name)
		}
	}
	for _, name := range []string{"m-a", "m-b", "m-c"} {
		testutil.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
			_, e := getToken(t, nc, name)
			return errorIf(e)
		})
	}
	configServes(2 * time.Second)

	// Atomic batches turned off: stored one by one, the same answers.
	str, err := js.Stream(context.Background(), "KV_tokenbus-credentials")
	if err != nil {
		t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	cfg.AllowAtomicPublish = false
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	raws = raws[:0]
	for _, n := range []string{"m-e", "m-f", "m-g"} {
		raw, _ := json.Marshal(darajaEntry(n, srv.URL, "merchant-"+n))
		raws = append(raws, raw)
	}
	code, b = request(t, nc, wire.ProvidersPutManySubject, wire.ProviderPutManyRequest{Providers: raws})
	r = wire.ProviderPutManyReply{}
	if code != 0 || json.Unmarshal(b, &r) != nil || r.Stored != 3 || r.Refused != 0 {
		t.Fatalf("put_many without atomic batches: %d %s", code, b)
	}
	for _, res := range r.Results {
		e, err := kv.Get(context.Background(), res.Name)
		if err != nil || e.Revision() != res.Revision || batchID(t, js, res.Revision) != "" {
			t.Fatalf("%s in the bucket: %v, %v; reply says revision %d", res.Name, e, err, res.Revision)
		}
	}

	// Refused as a whole: not the documented shape, empty, too many.
	tooMany := make([]json.RawMessage, wire.ProvidersPutManyMax+1)
	for i := range tooMany {
		tooMany[i] = json.RawMessage(`{}`)
	}
	for _, body := range []any{
		`[{"name":"m-x"}]`,
		`{"provider":[]}`,
		`{"providers":[]}`,
		`not json`,
		wire.ProviderPutManyRequest{Providers: tooMany},
	} {
		code, b := request(t, nc, wire.ProvidersPutManySubject, body)
		if code != 400 || !strings.Contains(string(b), "providers") {
			t.Fatalf("put_many %.40v: %d %s", body, code, b)
		}
	}
}

// batchID returns the atomic batch id of the credentials bucket's message
// at rev ("" if it was put alone).
func batchID(t *testing.T, js jetstream.JetStream, rev uint64) string {
	t.Helper()
	str, err := js.Stream(context.Background(), "KV_tokenbus-credentials")
	if err != nil {
		t.Fatal(err)
	}
	m, err := str.GetMsg(context.Background(), rev)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get("Nats-Batch-Id")
}

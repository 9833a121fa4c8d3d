package natsx

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func TestRedactURL(t *testing.T) {
	got := RedactURL("nats://alice:hunter2@a:4222,nats://b:4222")
	if strings.Contains(got, "hunter2") || strings.Contains(got, "alice") || !strings.Contains(got, "b:4222") {
		t.Fatalf("redactURL = %q", got)
	}
}

func TestEmbeddedServerStoresTokens(t *testing.T) {
	ns, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := Connect(ConnectConfig{Name: "test", Embedded: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer Drain(nc, time.Second)
	st, err := OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r1, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: "a", ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: "b", ExpiresAt: now.Add(time.Hour)})
	if err != nil || r2 <= r1 {
		t.Fatalf("revisions %d then %d (%v)", r1, r2, err)
	}
	if _, err := StartEmbedded(EmbeddedConfig{Listen: "nonsense", StoreDir: t.TempDir()}); err == nil {
		t.Fatal("bad listen address accepted")
	}
}

// TestStoreRepublishesUpdates: a bucket made without republish (as before
// SPEC §9) gets it when the store opens; every write then arrives on
// token.updates.<key> with its sequence headers, and a delete with
// KV-Operation: DEL and an empty body.
func TestStoreRepublishesUpdates(t *testing.T) {
	nc := embedded(t)
	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	old, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tokens", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Put(ctx, "before", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(wire.UpdatesPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Put(ctx, "before", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a bucket without republish published %s", m.Subject)
	}

	st, err := OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := js.Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	if rp := info.CachedInfo().Config.RePublish; rp == nil || rp.Source != "$KV.tokens.>" || rp.Destination != "token.updates.>" {
		t.Fatalf("republish = %+v", rp)
	}
	tok := wire.Token{Provider: "p", AccessToken: "a", ExpiresAt: time.Now().Add(time.Hour).UTC()}
	r1, err := st.Publish(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	tok.AccessToken = "b"
	r2, err := st.Publish(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	next := func() *nats.Msg {
		t.Helper()
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for i, want := range []struct {
		rev, last uint64
		access    string
	}{{r1, 0, "a"}, {r2, r1, "b"}} {
		m := next()
		var got wire.Token
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatal(err)
		}
		if m.Subject != "token.updates.p" || got.AccessToken != want.access ||
			m.Header.Get(wire.HeaderSequence) != fmt.Sprint(want.rev) ||
			m.Header.Get(wire.HeaderLastSequence) != fmt.Sprint(want.last) ||
			m.Header.Get("Nats-Stream") != "KV_tokens" || m.Header.Get("Nats-Subject") != "$KV.tokens.p" {
			t.Fatalf("update %d: %s %v %q", i, m.Subject, m.Header, m.Data)
		}
	}
	if err := st.KV().Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	m := next()
	if m.Subject != "token.updates.p" || m.Header.Get(wire.HeaderKVOperation) != "DEL" || len(m.Data) != 0 ||
		m.Header.Get(wire.HeaderLastSequence) != fmt.Sprint(r2) {
		t.Fatalf("delete: %s %v %q", m.Subject, m.Header, m.Data)
	}
}

// embedded starts an embedded server with JetStream for t and returns a
// connection to it; both end with t.
func embedded(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := Connect(ConnectConfig{Name: "test", Embedded: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Drain(nc, time.Second) })
	return nc
}

// TestStoreBatchesOnlyWhenReplicated: OpenStore lets the tokens bucket take
// atomic batches, but on R1 the lease holder is told to write one at a
// time (a batch costs more than it saves there: BenchmarkFencedWrites and
// docs/benchmarks.md); the R3 case is in clustertest's TestFencedWritesOnR3.
func TestStoreBatchesOnlyWhenReplicated(t *testing.T) {
	nc := embedded(t)
	ctx := context.Background()
	st, err := OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Batches() {
		t.Error("R1: Batches true, want writes one at a time")
	}
	str, err := st.JetStream().Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	if !str.CachedInfo().Config.AllowAtomicPublish {
		t.Error("the tokens bucket's stream does not take atomic batches after OpenStore")
	}
}

// TestOpenKVLeavesABucketAsItIs: opening a bucket that already has its
// settings and takes atomic batches (a replica restarting) updates nothing
// — an update would turn allow_atomic off for a moment and the lease
// holder's batches would pause — while a bucket whose settings differ is
// updated and takes batches after.
func TestOpenKVLeavesABucketAsItIs(t *testing.T) {
	nc := embedded(t)
	ctx := context.Background()
	updated, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(ctx, nc, "tokens", 1, nil); err != nil {
		t.Fatal(err)
	}
	// The first open creates the bucket and turns allow_atomic on: one update.
	if _, err := updated.NextMsg(2 * time.Second); err != nil {
		t.Fatalf("the first open: no update turning allow_atomic on (%v)", err)
	}
	st, err := OpenStore(ctx, nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := updated.NextMsg(500 * time.Millisecond); err == nil {
		t.Fatalf("a second open of an unchanged bucket updated its stream: %s", msg.Data)
	}
	// Settings that differ (a description written by someone else) are
	// brought back, and allow_atomic is on after.
	str, err := st.JetStream().Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	cfg := str.CachedInfo().Config
	cfg.Description, cfg.AllowAtomicPublish = "changed", false
	if _, err := st.JetStream().UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	_, atomic, err := OpenKV(ctx, st.JetStream(), jetstream.KeyValueConfig{Bucket: "tokens", Description: "tokenbus: current access token of each provider (and the leader's term, key _term)",
		History: 1, Storage: jetstream.FileStorage, Replicas: 1, RePublish: republish("tokens")})
	if err != nil || !atomic {
		t.Fatalf("reopen of a changed bucket: atomic %v, %v", atomic, err)
	}
	if str, err = st.JetStream().Stream(ctx, "KV_tokens"); err != nil || str.CachedInfo().Config.Description == "changed" || !str.CachedInfo().Config.AllowAtomicPublish {
		t.Fatalf("after reopening: %+v, %v", str.CachedInfo().Config, err)
	}
}

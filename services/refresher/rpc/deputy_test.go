package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// TestRepliesOnlyToInboxes is the confused-deputy attack: a client names a
// KV key, or a JetStream API subject, as the reply subject of token.get,
// token.refresh or token.status, hoping the refresher publishes there with
// its own permissions. It must not: no KV write, no stream deleted, and
// ordinary requests are still answered.
func TestRepliesOnlyToInboxes(t *testing.T) {
	clk := newClock()
	f := start(t, &countingProvider{life: time.Hour, now: clk.now}, clk.now, refresher.Backoff{})
	waitToken(t, f)
	ctx := context.Background()
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{wire.GetSubject("p1"), wire.RefreshSubject("p1"), wire.StatusSubject} {
		for _, reply := range []string{"$KV.tokens.forged", "$JS.API.STREAM.DELETE.KV_tokens", "token.updates.p2", "_INBOX", "_INBOX_", "_INBOX_*.x", "_INBOX.>", "_R_.>", "_R_"} {
			if err := f.nc.PublishRequest(subject, reply, []byte(`{"invalid_token":"tok-1"}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Ordinary requests after the attack are answered, so the attack's
	// requests have been handled (in order, on one connection) by then.
	for _, inbox := range []string{"_INBOX.abc", "_INBOX_svc-a.abc"} {
		if !wire.IsInbox(inbox) {
			t.Fatalf("IsInbox(%q) = false", inbox)
		}
	}
	waitToken(t, f)
	if _, err := kv.Get(ctx, "forged"); err != jetstream.ErrKeyNotFound {
		t.Fatalf("the refresher replied into the bucket: %v", err)
	}
	if _, err := js.Stream(ctx, "KV_tokens"); err != nil {
		t.Fatalf("the stream is gone: %v", err)
	}
	if n := f.mgr.Status(); n.Name != "p1" {
		t.Fatalf("status %+v", n)
	}
}

// TestReplyAllowed: inboxes and service-import replies, never a wildcard or
// anything else.
func TestReplyAllowed(t *testing.T) {
	for reply, want := range map[string]bool{
		"_INBOX.abc": true, "_INBOX_payments.abc.def": true, "_R_.Rk6bCO.1i3wrP": true, "_R_.a": true,
		"_R_": false, "_R_.": false, "_R_.>": false, "_R_.*": false, "_R_.a.>": false, "_R_..a": false,
		"_INBOX.>": false, "_INBOX_payments.>": false, "_INBOX.*.x": false, "$KV.tokens-lease._lease": false,
		"$KV.tokens._term": false, "$JS.API.STREAM.PURGE.KV_tokens": false, "": false, "_R_X.a": false,
	} {
		if got := rpc.ReplyAllowed(reply); got != want {
			t.Errorf("ReplyAllowed(%q) = %v, want %v", reply, got, want)
		}
	}
}

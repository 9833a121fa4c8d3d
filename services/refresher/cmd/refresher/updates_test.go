package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// TestTokenUpdatesFromTheRefresher: the running refresher's bucket
// republishes its writes on token.updates.<key> (SPEC §9): token.get's reply
// carries the KV revision of the token (Tokenbus-Revision), and the next
// rotation arrives on token.updates.daraja-test with Nats-Sequence past it
// and Nats-Last-Sequence equal to it. The refresher's own keys arrive under
// names no provider can have (_term), and lease renewals not at all.
func TestTokenUpdatesFromTheRefresher(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaTTL: 3 * time.Second, DarajaSecret: consumerSecret})
	m, _ := startMain(t, sim, "")
	nc := testutil.Connect(t, m.ns)
	all, err := nc.SubscribeSync(wire.UpdatesPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var (
		first wire.Token
		rev   uint64
	)
	testutil.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		msg, err := nc.Request(wire.GetSubject("daraja-test"), nil, 2*time.Second)
		if err != nil {
			return err
		}
		if code := msg.Header.Get(wire.HeaderErrorCode); code != "" {
			return fmt.Errorf("token.get: %s", code)
		}
		if err := json.Unmarshal(msg.Data, &first); err != nil {
			t.Fatal(err)
		}
		rev, err = strconv.ParseUint(msg.Header.Get(wire.HeaderRevision), 10, 64)
		return err
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(context.Background(), "daraja-test")
	if err != nil {
		t.Fatal(err)
	}
	if entry.Revision() != rev {
		t.Fatalf("token.get says revision %d, the bucket %d", rev, entry.Revision())
	}

	// The rotation (3 s tokens) arrives as an update that follows rev.
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg, err := all.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("no rotation on token.updates: %v", err)
		}
		key := strings.TrimPrefix(msg.Subject, wire.UpdatesPrefix)
		if wire.ValidName(key) && key != "daraja-test" || key == "_lease" {
			t.Fatalf("unexpected update on %s", msg.Subject)
		}
		if key != "daraja-test" {
			continue // the refresher's own (_term)
		}
		seq, _ := strconv.ParseUint(msg.Header.Get(wire.HeaderSequence), 10, 64)
		if seq <= rev {
			continue // the first token's own update
		}
		var tok wire.Token
		if err := json.Unmarshal(msg.Data, &tok); err != nil || tok.AccessToken == first.AccessToken {
			t.Fatalf("update %q (%v): want the next token", msg.Data, err)
		}
		if last := msg.Header.Get(wire.HeaderLastSequence); last != strconv.FormatUint(rev, 10) {
			t.Fatalf("Nats-Last-Sequence %s, want %d", last, rev)
		}
		return
	}
}

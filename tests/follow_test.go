package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// consumers counts the JetStream consumers on the tokens bucket's stream.
func consumers(t *testing.T, h *harness.Harness) int {
	t.Helper()
	js, err := jetstream.New(h.ConnectAdmin())
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), "KV_"+h.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// tokenGets returns a count of the token.get requests of the harness's
// provider so far, as a plain subscriber sees them (the refresher answers in
// a queue group; this sees every request as well). The count is exact once
// the request has been answered: the server hands the monitor its copy
// before the refresher replies, and the flush makes sure it has arrived.
func tokenGets(t *testing.T, h *harness.Harness) func() int {
	t.Helper()
	nc := h.ConnectAdmin()
	sub, err := nc.SubscribeSync(wire.GetSubject(h.Provider))
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() int {
		t.Helper()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		n, _, err := sub.Pending()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// waitToken polls until tc serves the token access, within 2 s.
func waitToken(t *testing.T, tc *tokenclient.Client, provider, access string) {
	t.Helper()
	harness.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		got, err := tc.Token(context.Background(), provider)
		if err != nil {
			return err
		}
		if got.AccessToken != access {
			return fmt.Errorf("serving %.6s…, want %.6s…", got.AccessToken, access)
		}
		return nil
	})
}

// TestFollowCreatesNoConsumer: clients in the default mode follow a rotation
// without creating a JetStream consumer on the tokens stream; one client in
// the KV-watch mode creates one (which shows the count is the right one).
func TestFollowCreatesNoConsumer(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	base := consumers(t, h)
	var clients []*tokenclient.Client
	for range 5 {
		tc, _ := newClient(t, h)
		waitReady(t, tc)
		clients = append(clients, tc)
	}
	// One more that follows from its first Token call, not WithProviders.
	lazy, err := tokenclient.New(h.Connect(), tokenclient.WithBucket(h.Bucket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lazy.Close() })
	if tok, err := lazy.Token(context.Background(), h.Provider); err != nil || tok != h.Current() {
		t.Fatalf("first Token = %v, %v", tok.AccessToken != "", err)
	}
	clients = append(clients, lazy)
	next := h.ForceRefresh()
	for _, tc := range clients {
		waitToken(t, tc, h.Provider, next.AccessToken)
	}
	if n := consumers(t, h); n != base {
		t.Fatalf("%d consumers on the tokens stream with 6 following clients, want %d (as before they started)", n, base)
	}
	watcher, _ := newClient(t, h, tokenclient.WithFollowMode(tokenclient.FollowKVWatch))
	waitReady(t, watcher)
	if n := consumers(t, h); n != base+1 {
		t.Fatalf("%d consumers with one KV-watch client, want %d", n, base+1)
	}
}

// TestFollowFromFirstToken: without WithProviders, the first Token call
// answers over request-reply and from then on the copy serves the token
// (no further token.get), rotations included.
func TestFollowFromFirstToken(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	gets := tokenGets(t, h)
	tc, err := tokenclient.New(h.Connect(), tokenclient.WithBucket(h.Bucket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	for range 100 {
		if tok, err := tc.Token(context.Background(), h.Provider); err != nil || tok != h.Current() {
			t.Fatalf("Token = %v, %v", tok.AccessToken != "", err)
		}
	}
	if n := gets(); n != 1 {
		t.Fatalf("%d token.get requests for 100 Token calls, want 1", n)
	}
	next := h.ForceRefresh()
	waitToken(t, tc, h.Provider, next.AccessToken)
	if n := gets(); n != 1 {
		t.Fatalf("%d token.get requests after a rotation, want still 1", n)
	}
}

// forge publishes an update for the harness's provider as the server's
// republish would, with the given sequences.
func forge(t *testing.T, h *harness.Harness, seq, last uint64, access string) {
	t.Helper()
	tok := h.Current()
	tok.AccessToken = access
	b, err := json.Marshal(tok)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(wire.UpdatesSubject(h.Provider))
	m.Header.Set("Nats-Stream", "KV_"+h.Bucket)
	m.Header.Set(wire.HeaderSequence, fmt.Sprint(seq))
	m.Header.Set(wire.HeaderLastSequence, fmt.Sprint(last))
	m.Data = b
	nc := h.ConnectAdmin()
	if err := nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestFollowOrderAndGaps: an update older than the token held is ignored;
// an update that shows a gap (its Nats-Last-Sequence is not the sequence
// held) is applied, being newer, and makes the client read the current
// value again.
func TestFollowOrderAndGaps(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	gets := tokenGets(t, h)
	tc, ev := newClient(t, h)
	waitReady(t, tc)
	cur := h.Current()
	next := h.ForceRefresh()
	waitToken(t, tc, h.Provider, next.AccessToken)
	var seq uint64
	func() {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		seq = ev.list[len(ev.list)-1].Revision
	}()
	forge(t, h, seq-1, 1, cur.AccessToken+"-older")
	// The forged older update would have been applied by now, had it been
	// taken: a later real rotation is ordered after it on the same subject.
	third := h.ForceRefresh()
	waitToken(t, tc, h.Provider, third.AccessToken)
	if ev.seen(cur.AccessToken + "-older") {
		t.Fatal("an update older than the token held was applied")
	}
	var seq2 uint64
	func() {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		seq2 = ev.list[len(ev.list)-1].Revision
	}()

	readsBefore := gets()
	forge(t, h, seq2+100, seq2+50, "after-a-gap")
	waitToken(t, tc, h.Provider, "after-a-gap")
	harness.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if gets() == readsBefore {
			return errors.New("no token.get after a gap")
		}
		return nil
	})
}

// TestFollowReconnectRereads: a token published while the client is
// disconnected (the server restarted; the refresher came back first) is
// read once the client reconnects: no update will ever bring it.
func TestFollowReconnectRereads(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	nc := h.Connect(nats.ReconnectWait(1500 * time.Millisecond))
	ev := &events{}
	tc, err := tokenclient.New(nc, tokenclient.WithBucket(h.Bucket), tokenclient.WithProviders(h.Provider), tokenclient.WithOnUpdate(ev.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	waitReady(t, tc)

	h.RestartNATS()
	var next string
	harness.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		tok, err := h.TryForceRefresh()
		next = tok.AccessToken
		return err
	})
	if nc.IsConnected() {
		t.Skip("the client reconnected before the new token was published: nothing was missed")
	}
	harness.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !ev.seen(next) {
			return errors.New("the token published while disconnected has not been read")
		}
		return nil
	})
	waitToken(t, tc, h.Provider, next)
}

// TestFollowDeletedKey: a key deleted from the bucket stops being served
// from memory; without the delete, the copy serves the token even with no
// refresher answering.
func TestFollowDeletedKey(t *testing.T) {
	h := harness.Start(t, harness.Config{})
	tc, ev := newClient(t, h)
	waitReady(t, tc)
	cur := h.Current()
	h.Refresher().Stop()
	if tok, err := tc.Token(context.Background(), h.Provider); err != nil || tok != cur {
		t.Fatalf("from memory with no refresher: %v, %v", tok.AccessToken != "", err)
	}
	js, err := jetstream.New(h.ConnectAdmin())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), h.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), h.Provider); err != nil {
		t.Fatal(err)
	}
	harness.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if last := ev.list[len(ev.list)-1]; !last.Deleted {
			return errors.New("no delete event")
		}
		return nil
	})
	if _, err := tc.Token(context.Background(), h.Provider); !errors.Is(err, tokenclient.ErrUnavailable) {
		t.Fatalf("after the delete: err = %v, want ErrUnavailable (asked, no refresher)", err)
	}
}

// TestFollowRefresherNotThereYet: a client started before any refresher
// answers reports the failed reads, falls back to request-reply, and loads
// the token once a refresher answers.
func TestFollowRefresherNotThereYet(t *testing.T) {
	h := harness.New(t, harness.Config{})
	var readErrs atomic.Int64
	tc, ev := newClient(t, h, tokenclient.WithWatchRetry(50*time.Millisecond),
		tokenclient.WithErrorHandler(func(err error) {
			if errors.Is(err, tokenclient.ErrUnavailable) {
				readErrs.Add(1)
			}
		}))
	if _, err := tc.Token(context.Background(), h.Provider); !errors.Is(err, tokenclient.ErrUnavailable) {
		t.Fatalf("no refresher: err = %v, want ErrUnavailable", err)
	}
	harness.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if readErrs.Load() == 0 {
			return errors.New("the failed read was not reported")
		}
		return nil
	})
	h.StartRefresher()
	waitReady(t, tc)
	if !ev.seen(h.Current().AccessToken) {
		t.Fatal("ready without the token")
	}
	waitToken(t, tc, h.Provider, h.Current().AccessToken)
}

// TestFollowWithReaderPermissions: a client connected with exactly the
// reader permissions of SPEC §10 for one provider (and its own inbox
// prefix) gets, follows and refreshes that provider's token, with no
// permission error; another provider's token is out of its reach.
func TestFollowWithReaderPermissions(t *testing.T) {
	const provider = "daraja-test"
	reader := &server.User{Username: "reader", Password: "reader-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"token.get." + provider, "token.refresh." + provider}},
		Subscribe: &server.SubjectPermission{Allow: []string{"token.updates." + provider, "_INBOX_reader.>"}},
	}}
	h := harness.Start(t, harness.Config{Provider: provider, Users: []*server.User{
		{Username: "refresher", Password: "refresher-pw"}, reader,
	}})
	var (
		mu        sync.Mutex
		asyncErrs []string
	)
	nc := h.Connect(nats.UserInfo("reader", "reader-pw"), nats.CustomInboxPrefix("_INBOX_reader"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			asyncErrs = append(asyncErrs, err.Error())
		}))
	ev := &events{}
	tc, err := tokenclient.New(nc, tokenclient.WithBucket(h.Bucket), tokenclient.WithProviders(provider), tokenclient.WithOnUpdate(ev.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	waitReady(t, tc)
	waitToken(t, tc, provider, h.Current().AccessToken)

	next := h.ForceRefresh()
	waitToken(t, tc, provider, next.AccessToken)
	if !ev.seen(next.AccessToken) {
		t.Fatal("the rotation did not come through token.updates")
	}
	fresh, err := tc.Invalidate(context.Background(), provider, next.AccessToken)
	if err != nil || fresh.AccessToken == next.AccessToken {
		t.Fatalf("Invalidate = %v, %v", fresh.AccessToken == next.AccessToken, err)
	}
	waitToken(t, tc, provider, fresh.AccessToken)
	mu.Lock()
	if len(asyncErrs) > 0 {
		t.Errorf("errors following with reader permissions: %v", asyncErrs)
	}
	asyncErrs = nil
	mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if tok, err := tc.Token(ctx, "other"); err == nil || tok.AccessToken != "" {
		t.Fatalf("another provider's token: %v, %v", tok.AccessToken != "", err)
	}
	harness.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(strings.Join(asyncErrs, "\n"), "Permissions Violation") {
			return fmt.Errorf("no permissions violation reported for another provider: %v", asyncErrs)
		}
		return nil
	})
}

// TestFollowDeniedServesFresh: a client allowed token.get but not
// token.updates (a request-reply-only reader from before SPEC §9) cannot
// follow: the client says so once (ErrNotFollowing), never caches a token
// it could not keep current, and serves the new token after a rotation.
func TestFollowDeniedServesFresh(t *testing.T) {
	const provider = "daraja-test"
	asker := &server.User{Username: "asker", Password: "asker-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"token.get." + provider, "token.refresh." + provider}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_asker.>"}},
	}}
	h := harness.Start(t, harness.Config{Provider: provider, Users: []*server.User{
		{Username: "refresher", Password: "refresher-pw"}, asker,
	}})
	nc := h.Connect(nats.UserInfo("asker", "asker-pw"), nats.CustomInboxPrefix("_INBOX_asker"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	var denied atomic.Int64
	tc, err := tokenclient.New(nc, tokenclient.WithBucket(h.Bucket), tokenclient.WithErrorHandler(func(err error) {
		if errors.Is(err, tokenclient.ErrNotFollowing) {
			denied.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	for range 3 {
		if tok, err := tc.Token(context.Background(), provider); err != nil || tok != h.Current() {
			t.Fatalf("Token = %v, %v", tok.AccessToken != "", err)
		}
	}
	if denied.Load() != 1 {
		t.Fatalf("ErrNotFollowing reported %d times, want 1", denied.Load())
	}
	next := h.ForceRefresh()
	if tok, err := tc.Token(context.Background(), provider); err != nil || tok.AccessToken != next.AccessToken {
		t.Fatalf("after a rotation: fresh %v, %v", tok.AccessToken == next.AccessToken, err)
	}
}

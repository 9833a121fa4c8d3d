package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
)

// attackTargets are the reply subjects a hostile client aims the refresher's
// answers at: the lease, the term record, token keys, a runtime provider's
// sealed entry, and the JetStream API that purges or deletes a stream.
var attackTargets = []string{
	"$KV.tokens-lease._lease",
	"$KV.tokens._term",
	"$KV.tokens.daraja-sandbox",
	"$KV.tokens.airtel-other",
	"$KV.tokenbus-credentials.merchant-0001",
	"$JS.API.STREAM.PURGE.KV_tokens",
	"$JS.API.STREAM.DELETE.KV_tokens",
	"$JS.API.STREAM.PURGE.KV_tokens-lease",
	"$JS.API.STREAM.DELETE.KV_tokenbus-credentials",
	"$JS.API.STREAM.PURGE.KV_tokenbus-credentials",
}

// attacker is one shipped role and every request its role allows.
type attacker struct {
	user, env string
	requests  []attackRequest
}

type attackRequest struct{ subject, body string }

// TestAttackEveryRole runs the shipped deploy/nats configuration (the
// nats-{1,2,3}.conf and auth.conf files themselves) with three refresher
// replicas under the refresher role, and attacks it as every other shipped
// user: each sends every request its role allows, again and again for
// longer than the lease TTL, with the reply subject aimed at the lease,
// _term, token keys, a runtime provider's sealed entry and the stream
// purge/delete API — some with the Go client, some with the stock nats CLI.
// Nothing changes: every write to the buckets meanwhile is the leader's own
// (a token under its key, a lease renewal by the same holder), the leader
// keeps its lease and term, no stream loses a message, and the runtime
// provider is still listed and served.
func TestAttackEveryRole(t *testing.T) {
	cli, err := natsCLI()
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.New(simulator.Config{DarajaTTL: time.Minute})
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	c := startShippedCluster(t)
	reps := make([]*replica, 3)
	for i := range reps {
		reps[i] = startAuthReplica(t, i, c.urls, hs.URL)
	}
	observer := roleConn(t, c.urls, "observer", "TOKENBUS_OBSERVER_PASSWORD", "_INBOX_observer", nil)
	var lead *replica
	testutil.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		var err error
		lead, err = leaderOf(observer, reps)
		return err
	})

	// The admin onboards a runtime provider.
	admin := roleConn(t, c.urls, "onboarding", "TOKENBUS_ADMIN_PASSWORD", "_INBOX_onboarding", nil)
	put := `{"name":"merchant-0001","kind":"daraja","base_url":"` + hs.URL + `","consumer_key":"merchant-0001","consumer_secret":"` + simulator.DerivedSecret("merchant-0001") + `"}`
	if msg, err := admin.Request(wire.ProvidersPutSubject, []byte(put), 10*time.Second); err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" {
		t.Fatalf("providers.put as the admin: %v %v", err, msg)
	}
	// The refresher's own account sees everything the attack could touch.
	own := roleConn(t, c.urls, "tokenbus-refresher", "TOKENBUS_REFRESHER_PASSWORD", "_INBOX_tokenbus-refresher", nil)
	js, err := jetstream.New(own)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	tokens, err := js.KeyValue(ctx, "tokens")
	if err != nil {
		t.Fatal(err)
	}
	// served: the provider has a valid token in the bucket, and the leader
	// reports it ok (only a reader of it could ask for it; the shipped
	// roles have none for these).
	served := func(provider string) error {
		e, err := tokens.Get(ctx, provider)
		if err != nil {
			return fmt.Errorf("%s: %w", provider, err)
		}
		var tok wire.Token
		if err := json.Unmarshal(e.Value(), &tok); err != nil || tok.Provider != provider || !tok.ExpiresAt.After(time.Now()) {
			return fmt.Errorf("%s: no valid token in the bucket: %q", provider, e.Value())
		}
		msg, err := observer.Request(wire.StatusSubject, []byte(`{"provider":"`+provider+`"}`), 2*time.Second)
		if err != nil {
			return err
		}
		var st wire.Status
		if err := json.Unmarshal(msg.Data, &st); err != nil || len(st.Providers) != 1 || st.Providers[0].State != wire.StateOK {
			return fmt.Errorf("%s: status %q", provider, msg.Data)
		}
		return nil
	}
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		for _, p := range []string{"daraja-sandbox", "airtel-other", "merchant-0001"} {
			if err := served(p); err != nil {
				return err
			}
		}
		return nil
	})
	lease, err := js.KeyValue(ctx, "tokens-lease")
	if err != nil {
		t.Fatal(err)
	}
	readLease := func() leader.Record {
		t.Helper()
		e, err := lease.Get(ctx, leader.LeaseKey)
		if err != nil {
			t.Fatal(err)
		}
		var r leader.Record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			t.Fatalf("the lease: %q", e.Value())
		}
		return r
	}
	before := readLease()
	creds, err := js.KeyValue(ctx, "tokenbus-credentials")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := creds.Get(ctx, "merchant-0001")
	if err != nil {
		t.Fatal(err)
	}
	counts := func() map[string]uint64 {
		t.Helper()
		out := map[string]uint64{}
		for _, name := range []string{"KV_tokens", "KV_tokens-lease", "KV_tokenbus-credentials"} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			out[name] = s.CachedInfo().State.Msgs
		}
		return out
	}
	seqBefore := counts()

	// Every write to the three buckets while the attack runs.
	var (
		mu     sync.Mutex
		forged []string
	)
	watch := func(bucket string, ok func(key string, value []byte) bool) {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Stop() })
		go func() {
			for e := range w.Updates() {
				if e == nil {
					continue
				}
				if e.Operation() != jetstream.KeyValuePut || !ok(e.Key(), e.Value()) {
					mu.Lock()
					forged = append(forged, fmt.Sprintf("%s %s %s: %q", bucket, e.Operation(), e.Key(), e.Value()))
					mu.Unlock()
				}
			}
		}()
	}
	watch("tokens", func(key string, v []byte) bool {
		if key == leader.TermKey {
			var r leader.TermRecord
			return json.Unmarshal(v, &r) == nil && r.Holder == before.Holder
		}
		var tok wire.Token
		return json.Unmarshal(v, &tok) == nil && tok.Provider == key && tok.AccessToken != ""
	})
	watch("tokens-lease", func(key string, v []byte) bool {
		var r leader.Record
		return key == leader.LeaseKey && json.Unmarshal(v, &r) == nil && r.Holder == before.Holder
	})
	watch("tokenbus-credentials", func(string, []byte) bool { return false })

	attackers := []attacker{
		{"payments", "TOKENBUS_PAYMENTS_PASSWORD", []attackRequest{
			{wire.GetSubject("daraja-sandbox"), ""}, {wire.GetSubject("daraja-sandbox"), "{}"},
			{wire.RefreshSubject("daraja-sandbox"), `{"invalid_token":"not-the-current-one"}`}, {wire.RefreshSubject("daraja-sandbox"), "junk"},
		}},
		{"checkout", "TOKENBUS_CHECKOUT_PASSWORD", []attackRequest{
			{wire.GetSubject("mpay"), ""}, {wire.RefreshSubject("mpay"), `{"invalid_token":"x"}`},
		}},
		{"onboarding", "TOKENBUS_ADMIN_PASSWORD", []attackRequest{
			{wire.ProvidersListSubject, ""}, {wire.ProvidersPutSubject, `{"name":"x"}`}, {wire.ProvidersDeleteSubject, `{"name":"nobody"}`},
		}},
		{"observer", "TOKENBUS_OBSERVER_PASSWORD", []attackRequest{
			{wire.StatusSubject, ""}, {"$SRV.PING", ""}, {"$SRV.PING.tokenbus", ""}, {"$SRV.INFO", ""}, {"$SRV.INFO.tokenbus", ""},
			{"$SRV.STATS", ""}, {"$SRV.STATS.tokenbus", ""},
		}},
	}
	conns := map[string]*nats.Conn{}
	denied := make(chan error, 64)
	for _, a := range attackers {
		conns[a.user] = roleConn(t, c.urls, a.user, a.env, "_INBOX_"+a.user, denied)
	}
	home := t.TempDir() // no CLI context of the machine's
	runCLI := func(a attacker, subject, body, reply string) {
		t.Helper()
		cmd := exec.Command(cli, "--no-context", "--server", c.urls, "--user", a.user, "--inbox-prefix", "_INBOX_"+a.user,
			"pub", subject, body, "--reply", reply)
		cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "NATS_PASSWORD="+rolePasswords[a.env])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nats pub %s --reply %s as %s: %v\n%s", subject, reply, a.user, err, out)
		}
	}
	// Longer than the lease TTL, once a second, as the reported attack did.
	rounds := int(3*leaseTTL/time.Second) + 1
	for round := range rounds {
		for _, a := range attackers {
			nc := conns[a.user]
			for _, rq := range a.requests {
				for _, reply := range attackTargets {
					if err := nc.PublishRequest(rq.subject, reply, []byte(rq.body)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		// The stock CLI, as a hostile user would: the observer's $SRV.PING
		// at the lease and the purge API, the reader's token.get at a sealed
		// entry and the term record.
		obs, reader := attackers[3], attackers[0]
		runCLI(obs, "$SRV.PING", "", targetFor(round, "$KV.tokens-lease._lease", "$JS.API.STREAM.PURGE.KV_tokens"))
		runCLI(obs, "$SRV.INFO.tokenbus", "", "$KV.tokenbus-credentials.merchant-0001")
		runCLI(reader, wire.GetSubject("daraja-sandbox"), "", targetFor(round, "$KV.tokenbus-credentials.merchant-0001", "$KV.tokens._term"))
		time.Sleep(time.Second)
	}
	select {
	case err := <-denied:
		t.Fatalf("a request the role allows was refused: %v", err)
	default:
	}

	// The leader kept its lease and term; nothing but the leader wrote.
	if after := readLease(); after.Holder != before.Holder || after.Term != before.Term {
		t.Fatalf("the lease moved under attack: %+v, was %+v", after, before)
	}
	if now, err := leaderOf(observer, reps); err != nil || now != lead {
		t.Fatalf("leadership changed under attack: %v", err)
	}
	mu.Lock()
	if len(forged) > 0 {
		t.Fatalf("%d writes that are not the leader's, e.g. %s", len(forged), forged[0])
	}
	mu.Unlock()
	// No stream was purged or deleted: each holds at least its messages.
	for name, n := range counts() {
		if n < seqBefore[name] {
			t.Fatalf("stream %s went from %d messages to %d", name, seqBefore[name], n)
		}
	}
	if e, err := creds.Get(ctx, "merchant-0001"); err != nil || e.Revision() != sealed.Revision() || string(e.Value()) != string(sealed.Value()) {
		t.Fatalf("the sealed entry changed under attack: %v", err)
	}
	// The runtime provider is still listed and served, and so is everyone else.
	msg, err := admin.Request(wire.ProvidersListSubject, nil, 2*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"merchant-0001"`) {
		t.Fatalf("providers.list after the attack: %v %v", err, msg)
	}
	for _, p := range []string{"daraja-sandbox", "airtel-other", "merchant-0001"} {
		if err := served(p); err != nil {
			t.Fatalf("after the attack: %v", err)
		}
	}
	// The replies went back to the attackers' own accounts: the replicas
	// met no permission violation (they never published outside _R_. and
	// their own inbox).
	for _, r := range reps {
		if strings.Contains(r.out.String(), "Permissions Violation") {
			t.Errorf("%s hit a permissions violation: the role let it try to publish outside its replies", r.name)
		}
	}
}

// targetFor alternates between two reply targets by round.
func targetFor(round int, a, b string) string {
	if round%2 == 0 {
		return a
	}
	return b
}

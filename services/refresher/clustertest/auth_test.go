package clustertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// authConf is the shipped roles file: the test runs exactly what users deploy.
var authConf, _ = filepath.Abs("../../../deploy/nats/auth.conf")

// Passwords of the shipped roles, as the servers' environment gives them.
var rolePasswords = map[string]string{
	"TOKENBUS_REFRESHER_PASSWORD": "refresher-pw-Zq81",
	"TOKENBUS_PAYMENTS_PASSWORD":  "payments-pw-Xk27",
	"TOKENBUS_CHECKOUT_PASSWORD":  "checkout-pw-Qa33",
	"TOKENBUS_ADMIN_PASSWORD":     "admin-pw-Lm54",
	"TOKENBUS_OBSERVER_PASSWORD":  "observer-pw-Rt90",
}

// startAuthCluster starts three nats-server processes that include the
// shipped deploy/nats/auth.conf.
func startAuthCluster(t *testing.T) string {
	t.Helper()
	for k, v := range rolePasswords {
		t.Setenv(k, v) // the child processes inherit them
	}
	roles, err := os.ReadFile(authConf)
	if err != nil {
		t.Fatal(err)
	}
	_, urls := startClusterWith(t, "include ./auth.conf\n", map[string][]byte{"auth.conf": roles})
	return urls
}

// startAuthReplica starts a refresher that connects as the shipped
// tokenbus-refresher role, with its password from the environment.
func startAuthReplica(t *testing.T, i int, urls, simURL string) *replica {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "refresher.yaml")
	body := fmt.Sprintf(`nats: {url: %q, replicas: 3, user: tokenbus-refresher, password: "${TOKENBUS_REFRESHER_PASSWORD}"}
lease: {ttl: %s, retry_period: 200ms}
http: {listen: "127.0.0.1:0"}
credentials: {keys: [{id: k1, key: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}]}
providers:
  - {name: daraja-sandbox, kind: daraja, base_url: %q, consumer_key: sim-consumer-key, consumer_secret: sim-consumer-secret, refresh_before: 8s}
  - {name: airtel-other, kind: airtel, base_url: %q, client_id: sim-airtel-id, client_secret: sim-airtel-secret}
  - {name: mpay, kind: mpay, base_url: %q, username: sim-user, password: sim-pass, pool: 2}
`, urls, leaseTTL, simURL, simURL, simURL)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, fmt.Sprint("refresher-", i), bin.refresher, "--config", conf)
	host, _ := os.Hostname()
	return &replica{proc: p, instance: host + "-" + strconv.Itoa(p.pid())}
}

// roleConn connects as one of the shipped roles, with its private inbox.
func roleConn(t *testing.T, urls, user, env, inbox string, denied chan<- error) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(user, rolePasswords[env]), nats.CustomInboxPrefix(inbox), nats.MaxReconnects(-1)}
	if denied != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))
	}
	var nc *nats.Conn
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		var err error
		nc, err = nats.Connect(urls, opts...)
		return err
	})
	t.Cleanup(nc.Close)
	return nc
}

// bulkMerchants is how many providers TestLeastPrivilege onboards with one
// put_many: enough for their tokens to queue behind one another's commits.
const bulkMerchants = 24

// TestLeastPrivilege runs three refresher replicas on a three-node cluster
// with R3 buckets, all connecting with the shipped roles of
// deploy/nats/auth.conf, and attacks them as a reader with the stock
// client's moves.
func TestLeastPrivilege(t *testing.T) {
	sim := simulator.New(simulator.Config{DarajaTTL: 30 * time.Second})
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)

	urls := startAuthCluster(t)
	observer := roleConn(t, urls, "observer", "TOKENBUS_OBSERVER_PASSWORD", "_INBOX_observer", nil)
	// The refresher role is enough: tokens flow, one leader, the pool fills.
	reps := make([]*replica, 3)
	for i := range reps {
		reps[i] = startAuthReplica(t, i, urls, hs.URL)
	}
	// Anonymous: refused (once every node is up; before, a node may refuse
	// the connection itself).
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		nc, err := nats.Connect(urls)
		if err == nil {
			nc.Close()
			t.Fatal("an anonymous connection was accepted")
		}
		if !strings.Contains(err.Error(), "Authorization Violation") {
			return fmt.Errorf("anonymous connection: %v, want an authorization violation", err)
		}
		return nil
	})
	var leader *replica
	testutil.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		var err error
		leader, err = leaderOf(observer, reps)
		return err
	})
	denied := make(chan error, 16)
	reader := roleConn(t, urls, "payments", "TOKENBUS_PAYMENTS_PASSWORD", "_INBOX_payments", denied)
	var tok wire.Token
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		msg, err := reader.Request(wire.GetSubject("daraja-sandbox"), nil, time.Second)
		if err != nil {
			return err
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
			return errors.New(code + " " + msg.Header.Get("Nats-Service-Error"))
		}
		return json.Unmarshal(msg.Data, &tok)
	})
	if code := testutil.ProtectedCall(t, "POST", hs.URL+"/mpesa/stkpush/v1/processrequest", tok.AccessToken); code != 200 {
		t.Fatalf("the reader's token: protected call answered %d", code)
	}
	// The reader may report its token rejected (token.refresh.P).
	msg, err := reader.Request(wire.RefreshSubject("daraja-sandbox"), []byte(`{"invalid_token":"`+tok.AccessToken+`"}`), 10*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("reader's token.refresh: %v %v", err, msg)
	}
	// ... and follow its provider's updates.
	updates, err := reader.SubscribeSync(wire.UpdatesSubject("daraja-sandbox"))
	if err != nil {
		t.Fatal(err)
	}
	// The Go client, on exactly the reader's permissions, follows the token
	// from memory: after a rotation it serves the new one with no request.
	tc, err := tokenclient.New(reader, tokenclient.WithProviders("daraja-sandbox"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	if err := tc.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	cached, err := tc.Token(t.Context(), "daraja-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	// The reader refreshed a moment ago: within the refresh cooldown the
	// report is answered 429 (ErrCooldown), and the client sends it again
	// only after Retry-After.
	var rotated tokenclient.Token
	testutil.CheckFor(t, 15*time.Second, 200*time.Millisecond, func() error {
		var err error
		rotated, err = tc.Invalidate(t.Context(), "daraja-sandbox", cached.AccessToken)
		if err == nil && rotated.AccessToken == cached.AccessToken {
			t.Fatal("Invalidate answered the rejected token")
		}
		if err != nil && !errors.Is(err, tokenclient.ErrCooldown) {
			t.Fatalf("Invalidate as the reader: %v", err)
		}
		return err
	})
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if got, err := tc.Token(t.Context(), "daraja-sandbox"); err != nil || got.AccessToken != rotated.AccessToken {
			return fmt.Errorf("the client still serves the old token (%v)", err)
		}
		return nil
	})
	if _, err := updates.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no token.updates message reached the reader: %v", err)
	}
	if err := reader.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-denied:
		t.Fatalf("the reader's own provider was refused: %v", err)
	default:
	}

	// Every other route is refused: another provider by any subject, the
	// bucket (read, write, the lease, JetStream API), the admin API, other
	// inboxes, wildcards.
	expectDenied := func(what string) {
		t.Helper()
		select {
		case err := <-denied:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("%s: %v, want a permissions violation", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s was allowed", what)
		}
	}
	for _, subj := range []string{
		wire.GetSubject("airtel-other"), wire.RefreshSubject("airtel-other"), wire.GetSubject("mpay"),
		"$KV.tokens.daraja-sandbox", "$KV.tokens.airtel-other", "$KV.tokens._lease", "$KV.tokens._term", "$KV.tokens-lease._lease",
		"$JS.API.DIRECT.GET.KV_tokens.$KV.tokens.airtel-other", "$JS.API.STREAM.MSG.GET.KV_tokens",
		"$JS.API.CONSUMER.CREATE.KV_tokens", "$JS.API.STREAM.INFO.KV_tokens", "$JS.API.STREAM.PURGE.KV_tokens",
		"tokenbus.providers.put", "tokenbus.providers.list", "tokenbus.leader.refresh.airtel-other", "tokenbus.pool.tokens.mpay",
	} {
		if err := reader.Publish(subj, []byte(`{"provider":"airtel-other","access_token":"forged"}`)); err != nil {
			t.Fatal(err)
		}
		expectDenied("publish " + subj)
	}
	for _, subj := range []string{
		wire.UpdatesSubject("airtel-other"), "token.updates.*", "token.updates.>", ">", "$KV.>", "_INBOX.>",
		"_INBOX_observer.>", "_INBOX_tokenbus-refresher.>", "tokenbus.pool.>", "token.get.*",
	} {
		if _, err := reader.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		expectDenied("subscribe " + subj)
	}

	// A reader of the single-use provider claims tokens from the pool (the
	// refresher's role covers the pool stream and its consumers).
	checkout := roleConn(t, urls, "checkout", "TOKENBUS_CHECKOUT_PASSWORD", "_INBOX_checkout", nil)
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		msg, err := checkout.Request(wire.GetSubject("mpay"), nil, 2*time.Second)
		if err != nil {
			return err
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
			return errors.New(code + " " + msg.Header.Get("Nats-Service-Error"))
		}
		var one wire.Token
		if err := json.Unmarshal(msg.Data, &one); err != nil || one.AccessToken == "" {
			return fmt.Errorf("mpay token: %v %q", err, msg.Data)
		}
		return nil
	})

	// The confused deputy: the reader names the bucket or the JetStream API as
	// the reply subject of its own (allowed) requests. The refresher must not
	// publish there for it.
	for _, reply := range []string{"$JS.API.STREAM.DELETE.KV_tokens", "$KV.tokens.airtel-other", "$KV.tokens-lease._lease"} {
		for _, subj := range []string{wire.GetSubject("daraja-sandbox"), wire.StatusSubject} {
			if err := reader.PublishRequest(subj, reply, nil); err != nil && subj != wire.StatusSubject {
				t.Fatal(err)
			}
		}
	}
	if _, err := reader.Request(wire.GetSubject("daraja-sandbox"), nil, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	admin := roleConn(t, urls, "tokenbus-refresher", "TOKENBUS_REFRESHER_PASSWORD", "_INBOX_tokenbus-refresher", nil)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), "tokens")
	if err != nil {
		t.Fatalf("the tokens bucket after the confused-deputy attack: %v", err)
	}
	if e, err := kv.Get(t.Context(), "airtel-other"); err == nil && e.Value() != nil && !strings.Contains(string(e.Value()), `"provider":"airtel-other"`) {
		t.Fatalf("a reply was written into the bucket: %s", e.Value())
	}

	// The admin role onboards a merchant (the refresher role covers the
	// credential bucket); the admin cannot read the token it made, nor can the
	// reader of another provider.
	ad := make(chan error, 4)
	onboard := roleConn(t, urls, "onboarding", "TOKENBUS_ADMIN_PASSWORD", "_INBOX_onboarding", ad)
	put := `{"name":"merchant-0001","kind":"daraja","base_url":"` + hs.URL + `","consumer_key":"merchant-0001","consumer_secret":"` + simulator.DerivedSecret("merchant-0001") + `"}`
	msg, err = onboard.Request(wire.ProvidersPutSubject, []byte(put), 10*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("providers.put as the admin: %v %v", err, msg)
	}
	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		msg, err := onboard.Request(wire.ProvidersListSubject, nil, 2*time.Second)
		if err != nil {
			return err
		}
		if !strings.Contains(string(msg.Data), `"merchant-0001"`) || !strings.Contains(string(msg.Data), `"runtime"`) {
			return fmt.Errorf("list: %s", msg.Data)
		}
		return nil
	})
	// Bulk onboarding under the same roles, on the R3 bucket: put_many is
	// stored as one atomic batch with the refresher's rights.
	updatesAll, err := admin.SubscribeSync(wire.UpdatesPrefix + "*") // as a replica follows them
	if err != nil {
		t.Fatal(err)
	}
	many := `{"providers":[`
	for i := 2; i <= 1+bulkMerchants; i++ {
		n := fmt.Sprintf("merchant-%04d", i)
		if i > 2 {
			many += ","
		}
		many += `{"name":"` + n + `","kind":"daraja","base_url":"` + hs.URL + `","consumer_key":"` + n + `","consumer_secret":"` + simulator.DerivedSecret(n) + `"}`
	}
	msg, err = onboard.Request(wire.ProvidersPutManySubject, []byte(many+"]}"), 10*time.Second)
	var pm wire.ProviderPutManyReply
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" || json.Unmarshal(msg.Data, &pm) != nil || pm.Stored != bulkMerchants {
		t.Fatalf("providers.put_many as the admin: %v %v", err, msg)
	}
	creds, err := js.Stream(t.Context(), "KV_tokenbus-credentials")
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range pm.Results {
		m, err := creds.GetMsg(t.Context(), res.Revision)
		if err != nil || m.Subject != "$KV.tokenbus-credentials."+res.Name || m.Header.Get("Nats-Batch-Id") == "" {
			t.Fatalf("%s at revision %d: %v %v", res.Name, res.Revision, m, err)
		}
	}
	// Their tokens, fetched at once, are written by the leader under the
	// same role: on R3, writes queued behind a commit go as one atomic
	// batch (group commit) — at least one of them did, and none was
	// refused (the leader would have fallen back to one at a time).
	tokens, err := js.Stream(t.Context(), "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	batched := 0
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		batched = 0
		for _, res := range pm.Results {
			e, err := kv.Get(t.Context(), res.Name)
			if err != nil {
				return fmt.Errorf("%s's token: %w", res.Name, err)
			}
			m, err := tokens.GetMsg(t.Context(), e.Revision())
			if err != nil {
				return err
			}
			if m.Header.Get("Nats-Batch-Id") != "" {
				batched++
			}
		}
		return nil
	})
	if batched == 0 {
		t.Fatalf("none of the %d tokens fetched at once was written in a batch", bulkMerchants)
	}
	// SPEC §9: every one of them, batched or not, was announced on
	// token.updates.<provider>.
	announced := map[string]bool{}
	for len(announced) < bulkMerchants {
		m, err := updatesAll.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("token.updates announced %d of the %d bulk merchants' tokens (%d batched): %v", len(announced), bulkMerchants, batched, err)
		}
		var tok wire.Token
		if json.Unmarshal(m.Data, &tok) != nil || m.Subject != wire.UpdatesSubject(tok.Provider) {
			t.Fatalf("token.updates message on %s (%d bytes) is no token of that provider", m.Subject, len(m.Data))
		}
		if strings.HasPrefix(tok.Provider, "merchant-") && tok.Provider != "merchant-0001" {
			announced[tok.Provider] = true
		}
	}
	for i, r := range reps {
		if strings.Contains(r.out.String(), "did not take token writes as an atomic batch") {
			t.Fatalf("replica %d: the server refused a batch of token writes under the refresher role:\n%s", i, r.out.String())
		}
	}
	if err := onboard.Publish(wire.GetSubject("merchant-0001"), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ad:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the admin could ask for a token")
	}
	if err := reader.Publish(wire.GetSubject("merchant-0001"), nil); err != nil {
		t.Fatal(err)
	}
	expectDenied("publish token.get.merchant-0001")

	// The observer sees status but no token; the admin reaches the admin API
	// only.
	od := make(chan error, 4)
	obs := roleConn(t, urls, "observer", "TOKENBUS_OBSERVER_PASSWORD", "_INBOX_observer", od)
	// The observer may reach $SRV.> (discovery), which the micro service
	// answers itself: it must not be able to aim those replies at the
	// JetStream API.
	for _, subj := range []string{"$SRV.PING", "$SRV.INFO.tokenbus", "$SRV.STATS"} {
		if err := obs.PublishRequest(subj, "$JS.API.STREAM.DELETE.KV_tokens", nil); err != nil {
			t.Fatal(err)
		}
		if err := obs.PublishRequest(subj, "$JS.API.STREAM.PURGE.KV_tokens", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := obs.Request("$SRV.PING.tokenbus", nil, 2*time.Second); err != nil {
		t.Fatalf("$SRV.PING as the observer: %v", err)
	}
	// The JetStream API works asynchronously: watch the stream for a while.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		info, err := js.Stream(t.Context(), "KV_tokens")
		if err != nil {
			t.Fatalf("the tokens stream after the observer's $SRV replies: %v", err)
		}
		if n := info.CachedInfo().State.Msgs; n == 0 {
			t.Fatal("the tokens stream was purged by the observer's $SRV replies")
		}
	}
	if err := obs.Publish(wire.GetSubject("daraja-sandbox"), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-od:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the observer could ask for a token")
	}

	// The lease still works under the refresher role: kill the leader, a
	// standby takes over and tokens keep flowing.
	leader.kill()
	var rest []*replica
	for _, r := range reps {
		if r != leader {
			rest = append(rest, r)
		}
	}
	testutil.CheckFor(t, 10*leaseTTL, 200*time.Millisecond, func() error {
		_, err := leaderOf(observer, rest)
		return err
	})
	before := tok.AccessToken
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		msg, err := reader.Request(wire.RefreshSubject("daraja-sandbox"), []byte(`{"invalid_token":"`+before+`"}`), 2*time.Second)
		if err != nil {
			return err
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
			return errors.New(code)
		}
		var fresh wire.Token
		if err := json.Unmarshal(msg.Data, &fresh); err != nil {
			return err
		}
		if fresh.AccessToken == before {
			return fmt.Errorf("no new valid token after the takeover")
		}
		return nil
	})
	// The only violations the replicas met are the attacks' (their replies
	// aimed at the JetStream API); everything they need, the role allows.
	for _, r := range reps {
		for _, line := range strings.Split(r.out.String(), "\n") {
			if strings.Contains(line, "Permissions Violation") && !strings.Contains(line, `\"$JS.API.STREAM.DELETE.KV_tokens\"`) &&
				!strings.Contains(line, `\"$JS.API.STREAM.PURGE.KV_tokens\"`) {
				t.Errorf("%s hit a permissions violation under the shipped role: %s", r.name, line)
			}
		}
	}
}

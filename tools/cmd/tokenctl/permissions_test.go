package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestPermissionsBlockWorks loads the block `tokenctl permissions` prints
// into a real nats-server and checks that it lets the reader use its
// provider's subjects and refuses everything else.
func TestPermissionsBlockWorks(t *testing.T) {
	code, out, errOut := tokenctl(t, "permissions", "reader", "daraja-a", "--user", "svc-a")
	if code != 0 {
		t.Fatalf("permissions: %d %s", code, errOut)
	}
	if strings.Contains(out, "s3cret") {
		t.Fatal("printed a password")
	}
	t.Setenv("SVC_A_PASSWORD", "svc-a-s3cret-pw")
	conf := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\nauthorization { users: [\n"+out+"\n] }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects the printed block: %v\n%s", err, out)
	}
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}

	// tokenctl itself connects as the reader: --user, the password from
	// $NATS_PASSWORD, the private inbox. Nobody answers token.get here, so
	// it fails, but on "no responders", not on authorization or permissions.
	t.Setenv("NATS_PASSWORD", "svc-a-s3cret-pw")
	code, _, errOut = tokenctl(t, "--server", ns.ClientURL(), "--user", "svc-a", "--timeout", "500ms", "get", "daraja-a")
	if code != 1 || !strings.Contains(errOut, "no responders") || strings.Contains(errOut, "svc-a-s3cret-pw") {
		t.Fatalf("tokenctl --user svc-a get: %d %s", code, errOut)
	}
	t.Setenv("NATS_PASSWORD", "wrong")
	if code, _, errOut = tokenctl(t, "--server", ns.ClientURL(), "--user", "svc-a", "get", "daraja-a"); code != 1 || !strings.Contains(errOut, "Authorization") {
		t.Fatalf("tokenctl with a wrong password: %d %s", code, errOut)
	}

	denied := make(chan error, 16)
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("svc-a", "svc-a-s3cret-pw"), nats.CustomInboxPrefix("_INBOX_svc-a"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
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
	// Its own provider: request-reply goes through (no responder here, but no violation).
	if _, err := nc.Request("token.get.daraja-a", nil, 200*time.Millisecond); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("token.get.daraja-a: %v, want no responders (allowed, nobody answering)", err)
	}
	for _, subj := range []string{"token.updates.daraja-a", "token.events.daraja-a"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-denied:
		t.Fatalf("its own provider's subjects were refused: %v", err)
	default:
	}
	// Another provider, the bucket, another client's inbox, everything.
	for _, subj := range []string{"token.get.daraja-b", "token.refresh.daraja-b", "$KV.tokens.daraja-a", "$JS.API.STREAM.INFO.KV_tokens", "tokenbus.providers.put"} {
		if err := nc.Publish(subj, nil); err != nil {
			t.Fatal(err)
		}
		expectDenied("publish " + subj)
	}
	for _, subj := range []string{"token.updates.daraja-b", "token.updates.*", "token.events.daraja-b", "token.events.*", ">", "_INBOX.>", "_INBOX_svc-b.>"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		expectDenied("subscribe " + subj)
	}
}

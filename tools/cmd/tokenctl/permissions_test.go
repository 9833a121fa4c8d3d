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

// TestPermissionsBlockWorks loads the account `tokenctl permissions` prints
// into a real nats-server beside a TOKENBUS account that exports the
// services, as deploy/nats/auth.conf does, and checks that it lets the
// reader use its provider's subjects, through the imports, and refuses
// everything else.
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
	tokenbus := `TOKENBUS: { users: [{user: svc, password: svc-pw}], exports: [
  {service: "token.get.*"}, {service: "token.refresh.*"}, {stream: "token.updates.*"}, {stream: "token.events.*"}] }
`
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\naccounts {\n"+tokenbus+out+"\n}\n"), 0o600); err != nil {
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
	// it fails, but on "no responders" (or a timeout: the import forwards the
	// request), not on authorization or permissions.
	t.Setenv("NATS_PASSWORD", "svc-a-s3cret-pw")
	code, _, errOut = tokenctl(t, "--server", ns.ClientURL(), "--user", "svc-a", "--timeout", "500ms", "get", "daraja-a")
	if code != 1 || !strings.Contains(errOut, "no responders") && !strings.Contains(errOut, "timeout") || strings.Contains(errOut, "svc-a-s3cret-pw") {
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
	// Its own provider: request-reply reaches the service in TOKENBUS
	// through the import, and the updates come through the stream import.
	svc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("svc", "svc-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Subscribe("token.get.*", func(m *nats.Msg) { _ = m.Respond([]byte(m.Subject + " " + m.Reply)) }); err != nil {
		t.Fatal(err)
	}
	if err := svc.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request("token.get.daraja-a", nil, 2*time.Second)
	if err != nil {
		t.Fatalf("token.get.daraja-a through the import: %v", err)
	}
	if !strings.HasPrefix(string(msg.Data), "token.get.daraja-a _R_.") {
		t.Fatalf("the service saw %q, want the reply mapped to _R_.…", msg.Data)
	}
	updates, err := nc.SubscribeSync("token.updates.daraja-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := svc.Publish("token.updates.daraja-a", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := updates.NextMsg(2 * time.Second); err != nil {
		t.Fatalf("token.updates.daraja-a through the import: %v", err)
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
	for _, subj := range []string{"token.updates.daraja-b", "token.updates.*", ">", "_INBOX.>", "_INBOX_svc-b.>"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		expectDenied("subscribe " + subj)
	}
}

// TestPermissionsRefusesBadUser: the user name is spliced into the
// configuration and the inbox prefix, so anything but one plain subject
// token is refused, and nothing is printed.
func TestPermissionsRefusesBadUser(t *testing.T) {
	for _, user := range []string{"a.b", "a*", ">", "svc a", `x" ] } #`, "svc}\n{user: root", "$SYS", ""} {
		code, out, errOut := tokenctl(t, "permissions", "reader", "daraja-a", "--user", user)
		if code != 2 || out != "" || (user != "" && !strings.Contains(errOut, "--user")) {
			t.Errorf("--user %q: %d %q %q, want a usage error naming --user", user, code, out, errOut)
		}
	}
}

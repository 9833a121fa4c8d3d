package natsx

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// writeFile writes content to name in a fresh temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func startEmbedded(t *testing.T, cfg EmbeddedConfig) *server.Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	ns, err := StartEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func TestProtectedMode(t *testing.T) {
	// Beyond loopback with no authorization: refused, saying how to fix it.
	_, err := StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:0", StoreDir: t.TempDir()})
	if !errors.Is(err, ErrUnprotected) {
		t.Fatalf("StartEmbedded(0.0.0.0) = %v, want ErrUnprotected", err)
	}
	for _, want := range []string{"nats.embedded.config", "nats.embedded.insecure: true", "127.0.0.1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// A file with no authorization does not count.
	_, err = StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:0", StoreDir: t.TempDir(), ConfigFile: writeFile(t, "n.conf", "max_payload: 1MB\n")})
	if !errors.Is(err, ErrUnprotected) {
		t.Fatalf("with a config without authorization = %v, want ErrUnprotected", err)
	}
	// The explicit opt-out, loopback, and authorization all start.
	startEmbedded(t, EmbeddedConfig{Listen: "0.0.0.0:0", Insecure: true})
	startEmbedded(t, EmbeddedConfig{Listen: "127.0.0.1:0"})
	startEmbedded(t, EmbeddedConfig{Listen: "localhost:0"})
	startEmbedded(t, EmbeddedConfig{Listen: "[::]:0", ConfigFile: writeFile(t, "n.conf", `authorization { users: [{user: a, password: "s3cret-pw"}] }`)})
}

func TestEmbeddedConfigConflicts(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{"listen: 0.0.0.0:4333\n", "listen/host/port"},
		{"port: 4333\n", "listen/host/port"},
		{"jetstream { store_dir: /tmp/elsewhere }\n", "jetstream store_dir"},
		{"authorization {\n users: [\n", "nats.embedded.config"},
	} {
		_, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), ConfigFile: writeFile(t, "n.conf", tc.conf)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: err = %v, want one naming %q", tc.conf, err, tc.want)
		}
	}
	_, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		ConfigFile: writeFile(t, "n.conf", "cluster { name: x, listen: 127.0.0.1:-1 }\n"),
		Cluster:    &ClusterConfig{Name: "tokenbus", Listen: "127.0.0.1:0"}})
	if err == nil || !strings.Contains(err.Error(), "nats.embedded.cluster") {
		t.Errorf("a cluster in both: err = %v", err)
	}
}

func TestEmbeddedAuthorization(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := writeFile(t, "user.nk", string(seed))
	conf := fmt.Sprintf(`authorization {
  users: [
    {user: refresher, password: "refresher-pw-123"}
    {user: reader, password: "reader-pw-456", permissions: {publish: ["token.get.a"], subscribe: ["_INBOX_reader.>"]}}
    {nkey: %s}
  ]
}
`, pub)
	ns := startEmbedded(t, EmbeddedConfig{Listen: "127.0.0.1:0", ConfigFile: writeFile(t, "auth.conf", conf)})

	// Anonymous: refused. (In-process, nats.go reports the refusal only after
	// a 10 s handshake timeout, so that path is not exercised here.)
	if nc, err := nats.Connect(ns.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("an anonymous connection was accepted")
	}
	// A wrong password is refused, and the error does not carry it.
	_, err = Connect(ConnectConfig{Name: "t", URL: ns.ClientURL(), User: "refresher", Password: "wrong-pw-789"})
	if err == nil || strings.Contains(err.Error(), "wrong-pw-789") {
		t.Fatalf("wrong password: err = %v", err)
	}
	// User and password, in-process, can use JetStream.
	nc, err := Connect(ConnectConfig{Name: "t", Embedded: ns, User: "refresher", Password: "refresher-pw-123"})
	if err != nil {
		t.Fatal(err)
	}
	defer Drain(nc, time.Second)
	if _, err := OpenStore(context.Background(), nc, "tokens", 1, nil); err != nil {
		t.Fatal(err)
	}
	// An nkey seed file authenticates too.
	nk, err := Connect(ConnectConfig{Name: "t", URL: ns.ClientURL(), NkeySeedFile: seedFile})
	if err != nil {
		t.Fatal(err)
	}
	nk.Close()
	// A reader is held to its permissions.
	denied := make(chan error, 1)
	rd, err := nats.Connect(ns.ClientURL(), nats.UserInfo("reader", "reader-pw-456"), nats.CustomInboxPrefix("_INBOX_reader"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Publish("$KV.tokens.a", []byte("forged")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-denied:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("reader's KV write: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader's KV write was not refused")
	}
}

// scanStore reports whether any file under dir contains secret.
func scanStore(t *testing.T, dir, secret string) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestEncryptionAtRest(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		visible    bool
	}{
		{"plain", "", true}, // the scan can see a token: it would catch a leak
		{"aes", `jetstream { cipher: aes, key: "at-rest-key-0123456789abcdef" }`, false},
		{"chacha", `jetstream { cipher: chachapoly, key: "at-rest-key-0123456789abcdef" }`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: dir}
			if tc.conf != "" {
				cfg.ConfigFile = writeFile(t, "n.conf", tc.conf)
			}
			ns, err := StartEmbedded(cfg)
			if err != nil {
				t.Fatal(err)
			}
			nc, err := Connect(ConnectConfig{Name: "t", Embedded: ns})
			if err != nil {
				t.Fatal(err)
			}
			st, err := OpenStore(context.Background(), nc, "tokens", 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			secret := "ACCESS-TOKEN-at-rest-" + tc.name
			if _, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: secret, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			Drain(nc, time.Second)
			ns.Shutdown()
			ns.WaitForShutdown()
			if got := scanStore(t, dir, secret); got != tc.visible {
				t.Fatalf("token visible in the store directory = %v, want %v", got, tc.visible)
			}
			if tc.conf != "" && scanStore(t, dir, "at-rest-key-0123456789abcdef") {
				t.Fatal("the encryption key is in the store directory")
			}
		})
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it,
// and a client certificate, writing PEM files into a temporary directory.
type testCA struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newTestCA(t *testing.T) testCA {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenbus test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kd)
	}
	c := testCA{ca: write("ca.pem", "CERTIFICATE", caDER)}
	c.serverCert, c.serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	c.clientCert, c.clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return c
}

func TestTLS(t *testing.T) {
	ca := newTestCA(t)
	conf := fmt.Sprintf(`tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true }
authorization { users: [{user: refresher, password: "refresher-pw-123"}] }
`, ca.serverCert, ca.serverKey, ca.ca)
	ns := startEmbedded(t, EmbeddedConfig{Listen: "127.0.0.1:0", ConfigFile: writeFile(t, "tls.conf", conf)})
	url := fmt.Sprintf("tls://127.0.0.1:%d", ns.Addr().(*net.TCPAddr).Port)

	// With the CA and a client certificate: connected, over TLS.
	nc, err := Connect(ConnectConfig{Name: "t", URL: url, User: "refresher", Password: "refresher-pw-123",
		CAFile: ca.ca, CertFile: ca.clientCert, KeyFile: ca.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Fatalf("not a TLS connection: %v", err)
	}
	nc.Close()
	// Without trusting the CA, or without a client certificate: refused.
	if _, err := Connect(ConnectConfig{Name: "t", URL: url, User: "refresher", Password: "refresher-pw-123", CertFile: ca.clientCert, KeyFile: ca.clientKey}); err == nil {
		t.Error("connected without trusting the server's CA")
	}
	if _, err := Connect(ConnectConfig{Name: "t", URL: url, User: "refresher", Password: "refresher-pw-123", CAFile: ca.ca}); err == nil {
		t.Error("connected without the client certificate the server verifies")
	}
	// The embedded server's own refresher connects in-process with the same settings.
	in, err := Connect(ConnectConfig{Name: "t", Embedded: ns, User: "refresher", Password: "refresher-pw-123",
		CAFile: ca.ca, CertFile: ca.clientCert, KeyFile: ca.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
}

// TestProtectedListeners: protected mode covers every listener the embedded
// server opens (SPEC §10), not only the client port. Each unprotected shape
// is refused, naming the listener; the same shape with authorization (or on
// loopback) starts, which shows it is refused for that reason alone.
func TestProtectedListeners(t *testing.T) {
	users := "authorization { users: [{user: a, password: \"s3cret-pw\"}] }\n"
	freePort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	}
	for _, tc := range []struct {
		name, listener  string
		listen          string // the client listener; 127.0.0.1:0 if empty
		open, protected string // config files; PORT is a free port; no protected: not started
		cluster         bool   // the cluster comes from nats.embedded.cluster
	}{
		{name: "cluster in the file", listener: "cluster listener",
			// A server with its own cluster block waits for JetStream peers
			// before it is ready: the protected shape is the next case's.
			open: "cluster { name: c, listen: \"0.0.0.0:PORT\" }\n"},
		{name: "cluster from nats.embedded.cluster", listener: "cluster listener", cluster: true,
			open:      "max_payload: 1MB\n",
			protected: "cluster { authorization { user: route, password: \"route-pw\" } }\n"},
		{name: "leaf nodes", listener: "leafnode listener",
			open:      "leafnodes { listen: \"0.0.0.0:-1\" }\n",
			protected: users + "leafnodes { listen: \"0.0.0.0:-1\" }\n"},
		{name: "websocket", listener: "websocket listener",
			open:      "websocket { listen: \"0.0.0.0:-1\", no_tls: true }\n",
			protected: users + "websocket { listen: \"0.0.0.0:-1\", no_tls: true }\n"},
		{name: "monitoring", listener: "monitoring listener",
			open:      "http: \"0.0.0.0:-1\"\n",
			protected: "http: \"127.0.0.1:-1\"\n"},
		{name: "monitoring on the client's host", listener: "monitoring listener", listen: "0.0.0.0:0",
			open:      users + "http_port: -1\n",
			protected: users + "http: \"127.0.0.1:-1\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := func(file string) EmbeddedConfig {
				listen := tc.listen
				if listen == "" {
					listen = "127.0.0.1:0"
				}
				file = strings.ReplaceAll(file, "PORT", freePort())
				c := EmbeddedConfig{Listen: listen, StoreDir: t.TempDir(), ConfigFile: writeFile(t, "n.conf", file)}
				if tc.cluster {
					c.Cluster = &ClusterConfig{Name: "c", Listen: "0.0.0.0:" + freePort()}
				}
				return c
			}
			ns, err := StartEmbedded(cfg(tc.open))
			if err == nil {
				ns.Shutdown()
				t.Fatalf("an unprotected %s started", tc.listener)
			}
			if !errors.Is(err, ErrUnprotected) || !strings.Contains(err.Error(), tc.listener) {
				t.Fatalf("StartEmbedded = %v, want ErrUnprotected naming the %s", err, tc.listener)
			}
			if tc.protected == "" {
				return
			}
			startEmbedded(t, cfg(tc.protected))
			// The explicit opt-out covers it as well.
			c := cfg(tc.open)
			c.Insecure = true
			startEmbedded(t, c)
		})
	}
}

// TestEmbeddedShippedRoles: the shipped deploy/nats/auth.conf, named as is in
// nats.embedded.config, runs the embedded server with its accounts: the
// refresher's user has JetStream in the TOKENBUS account and stores tokens;
// a reader's token.get reaches a responder there through its import, with
// the reply mapped to _R_.…, and its reply aimed at a KV key lands in its own
// account (the bucket is untouched).
func TestEmbeddedShippedRoles(t *testing.T) {
	for k, v := range map[string]string{"TOKENBUS_REFRESHER_PASSWORD": "r-pw-1", "TOKENBUS_PAYMENTS_PASSWORD": "p-pw-2",
		"TOKENBUS_CHECKOUT_PASSWORD": "c-pw-3", "TOKENBUS_ADMIN_PASSWORD": "a-pw-4", "TOKENBUS_OBSERVER_PASSWORD": "o-pw-5"} {
		t.Setenv(k, v)
	}
	conf, err := filepath.Abs("../../../deploy/nats/auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	ns := startEmbedded(t, EmbeddedConfig{Listen: "0.0.0.0:0", ConfigFile: conf})
	nc, err := Connect(ConnectConfig{Name: "t", Embedded: ns, User: "tokenbus-refresher", Password: "r-pw-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer Drain(nc, time.Second)
	st, err := OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatalf("JetStream in the TOKENBUS account: %v", err)
	}
	now := time.Now()
	if _, err := st.Publish(context.Background(), wire.Token{Provider: "daraja-sandbox", AccessToken: "a", ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	replies := make(chan string, 4)
	if _, err := nc.Subscribe("token.get.*", func(m *nats.Msg) { replies <- m.Reply; _ = m.Respond([]byte("{}")) }); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	reader, err := nats.Connect(ns.ClientURL(), nats.UserInfo("payments", "p-pw-2"), nats.CustomInboxPrefix("_INBOX_payments"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err := reader.Request("token.get.daraja-sandbox", nil, 2*time.Second); err != nil {
		t.Fatalf("the reader's token.get through the import: %v", err)
	}
	if r := <-replies; !strings.HasPrefix(r, "_R_.") {
		t.Fatalf("the service saw reply %q, want _R_.…", r)
	}
	if err := reader.PublishRequest("token.get.daraja-sandbox", "$KV.tokens.daraja-sandbox", nil); err != nil {
		t.Fatal(err)
	}
	if r := <-replies; !strings.HasPrefix(r, "_R_.") {
		t.Fatalf("a reply aimed at the bucket reached the service as %q", r)
	}
	_ = nc.Flush()
	e, err := st.kv.Get(context.Background(), "daraja-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(e.Value()), `"access_token":"a"`) {
		t.Fatalf("the bucket after the attack: %s", e.Value())
	}
}

package clustertest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// Helpers of the operations tests (backup and restore, rolling upgrade):
// the stock NATS CLI, refresher processes with runtime providers, and waits
// on what each replica serves.

// natsCLIFor returns the stock NATS CLI (natsCLI, v0.5.0: the version the
// runbook in docs/deploying.md uses), failing the test if it cannot be built.
func natsCLIFor(t *testing.T) string {
	t.Helper()
	path, err := natsCLI()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// runNATS runs the NATS CLI against urls and returns its output.
func runNATS(t *testing.T, urls string, args ...string) string {
	t.Helper()
	cmd := exec.Command(natsCLIFor(t), append([]string{"--server", urls, "--timeout", "10s"}, args...)...)
	cmd.Env = append(os.Environ(), "NATS_CONTEXT=", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sealingKey is a fixed test sealing key (base64 of 32 bytes).
const sealingKey = "dG9rZW5idXMtdGVzdC1zZWFsaW5nLWtleS0zMi1ieXQ="

// startRefresher runs a refresher binary with one config-file Daraja
// provider (daraja-config) and runtime providers on (sealing key k1).
func startRefresher(t *testing.T, name, binary, urls, simURL string) *replica {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "refresher.yaml")
	body := fmt.Sprintf(`nats: {url: %q, replicas: 3}
lease: {ttl: %s, retry_period: 200ms}
http: {listen: "127.0.0.1:0"}
log: {level: debug}
credentials:
  keys:
    - id: k1
      key: ${TEST_SEALING_KEY}
providers:
  - {name: daraja-config, kind: daraja, base_url: %q, consumer_key: app-config, consumer_secret: secret-config, refresh_before: 5s}
`, urls, leaseTTL, simURL)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, path: binary, args: []string{"--config", conf}, out: &syncBuffer{}}
	t.Setenv("TEST_SEALING_KEY", sealingKey)
	p.start(t)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", p.name, p.out.String())
		}
	})
	host, _ := os.Hostname()
	return &replica{proc: p, instance: host + "-" + strconv.Itoa(p.pid())}
}

// putMerchant onboards runtime provider name, a Daraja app whose consumer
// key is its name (the simulator's many-credentials rule accepts it).
func putMerchant(t *testing.T, nc *nats.Conn, name, simURL string) {
	t.Helper()
	// refresh_before 5 s: more than a handover from the previous release
	// takes (it deleted the lease on a clean stop, which a standby waits
	// out for a ttl, 2 s) plus the token's 1 s expiry margin.
	put := fmt.Sprintf(`{"name":%q,"kind":"daraja","base_url":%q,"consumer_key":%q,"consumer_secret":%q,"refresh_before":"5s"}`,
		name, simURL, name, simulator.DerivedSecret(name))
	testutil.CheckFor(t, 20*time.Second, 200*time.Millisecond, func() error {
		msg, err := nc.Request(wire.ProvidersPutSubject, []byte(put), 5*time.Second)
		if err != nil {
			return err
		}
		if c := msg.Header.Get(wire.HeaderErrorCode); c != "" {
			return fmt.Errorf("providers.put %s: %s %s", name, c, msg.Header.Get(wire.HeaderError))
		}
		return nil
	})
}

// getToken asks token.get.<provider> once.
func getToken(nc *nats.Conn, provider string) (wire.Token, error) {
	msg, err := nc.Request(wire.GetSubject(provider), nil, 2*time.Second)
	if err != nil {
		return wire.Token{}, err
	}
	if c := msg.Header.Get(wire.HeaderErrorCode); c != "" {
		return wire.Token{}, fmt.Errorf("token.get.%s: %s %s", provider, c, msg.Header.Get(wire.HeaderError))
	}
	var tok wire.Token
	if err := json.Unmarshal(msg.Data, &tok); err != nil {
		return wire.Token{}, err
	}
	return tok, nil
}

// statusOf asks token.status of every replica and returns r's answer for
// providers (all of them valid), or why not.
func servesAll(nc *nats.Conn, r *replica, providers []string) error {
	st, ok := statuses(nc)[r.instance]
	if !ok {
		return fmt.Errorf("%s does not answer token.status", r.name)
	}
	by := map[string]wire.ProviderStatus{}
	for _, p := range st.Providers {
		by[p.Name] = p
	}
	for _, name := range providers {
		p, ok := by[name]
		if !ok {
			return fmt.Errorf("%s does not serve %s", r.name, name)
		}
		if p.ExpiresAt == nil || !p.ExpiresAt.After(time.Now()) {
			return fmt.Errorf("%s has no valid token for %s (state %s)", r.name, name, p.State)
		}
	}
	return nil
}

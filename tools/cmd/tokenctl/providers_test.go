package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	rconfig "github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// storeRegistry is an rpc.Registry on the real sealed credential store that
// also remembers what it stored, so the test can see what tokenctl sent.
type storeRegistry struct {
	st   *credentials.Store
	mu   sync.Mutex
	seen map[string]rconfig.Provider
}

func (r *storeRegistry) Put(ctx context.Context, p rconfig.Provider) (uint64, error) {
	if p.Name == "daraja-test" {
		return 0, refresher.ErrConflict
	}
	r.mu.Lock()
	r.seen[p.Name] = p
	r.mu.Unlock()
	return r.st.Put(ctx, p)
}

func (r *storeRegistry) Delete(ctx context.Context, name string) error {
	if err := r.st.Delete(ctx, name); errors.Is(err, credentials.ErrNotFound) {
		return refresher.ErrUnknownProvider
	} else if err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.seen, name)
	r.mu.Unlock()
	return nil
}

func (r *storeRegistry) List(after string, limit int) ([]wire.ProviderInfo, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wire.ProviderInfo
	for _, n := range []string{"m-0001", "m-0002"} {
		if p, ok := r.seen[n]; ok && n > after {
			out = append(out, wire.ProviderInfo{Name: n, Kind: p.Kind, Source: wire.SourceRuntime, State: wire.StateNoToken})
		}
	}
	return out, ""
}

// startProvidersService starts a harness and, beside it, the providers
// endpoints of the tokenbus service over a sealed credentials bucket, all
// stopped when the test ends.
func startProvidersService(t *testing.T) (*harness.Harness, *storeRegistry) {
	t.Helper()
	h := harness.New(t, harness.Config{})
	nc, err := nats.Connect(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key, _ := seal.ParseKey("k1", encodeKey(raw))
	ring, _ := seal.NewKeyring(key)
	st, err := credentials.Open(t.Context(), nc, "tokenbus-credentials", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	reg := &storeRegistry{st: st, seen: map[string]rconfig.Provider{}}
	svc, err := rpc.Start(nc, rpc.Config{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	return h, reg
}

func TestProvidersPutListDelete(t *testing.T) {
	h, reg := startProvidersService(t)

	const secret = "consumer-secret-from-env-42"
	getenv = func(k string) string {
		if k == envConsumerSecret {
			return secret
		}
		return ""
	}
	defer func() { getenv = nil }()
	code, out, errOut := tokenctl(t, "--server", h.URL, "providers", "put", "m-0001", "--kind", "daraja", "--base-url", h.SimURL, "--consumer-key", "merchant-0001")
	if code != 0 || !strings.Contains(out, "stored m-0001 (daraja) at revision") {
		t.Fatalf("put: %d %s %s", code, out, errOut)
	}
	if p := reg.seen["m-0001"]; p.ConsumerSecret.Reveal() != secret || p.ConsumerKey != "merchant-0001" {
		t.Fatalf("stored %+v", p)
	}
	// No secret: refused before anything is sent, naming the variable.
	getenv = func(string) string { return "" }
	code, _, errOut = tokenctl(t, "--server", h.URL, "providers", "put", "m-0009", "--kind", "airtel", "--base-url", h.SimURL, "--client-id", "c")
	if code != 1 || !strings.Contains(errOut, "TOKENBUS_CLIENT_SECRET") {
		t.Fatalf("no secret: %d %s", code, errOut)
	}
	// The secret from stdin.
	stdin = strings.NewReader("password-from-stdin\n")
	code, _, errOut = tokenctl(t, "--server", h.URL, "providers", "put", "m-0002", "--kind", "mpay", "--base-url", h.SimURL, "--username", "u", "--secret-stdin")
	if code != 0 || reg.seen["m-0002"].Password.Reveal() != "password-from-stdin" {
		t.Fatalf("stdin secret: %d %s", code, errOut)
	}
	// A 400 names the field; a 409 for a config name.
	stdin = strings.NewReader(`{"name":"m-0003","kind":"daraja","base_url":"x","consumer_key":"k","consumer_secret":"SECRET-IN-JSON"}`)
	code, _, errOut = tokenctl(t, "--server", h.URL, "providers", "put", "-")
	if code != 1 || !strings.Contains(errOut, "400") || !strings.Contains(errOut, "base_url") || strings.Contains(errOut, "SECRET-IN-JSON") {
		t.Fatalf("bad provider: %d %s", code, errOut)
	}
	stdin = strings.NewReader(`{"name":"daraja-test","kind":"daraja","base_url":"http://x","consumer_key":"k","consumer_secret":"s"}`)
	if code, _, errOut = tokenctl(t, "--server", h.URL, "providers", "put", "-"); code != 1 || !strings.Contains(errOut, "409") {
		t.Fatalf("config name: %d %s", code, errOut)
	}
	code, out, _ = tokenctl(t, "--server", h.URL, "--json", "providers", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var first wire.ProviderInfo
	if code != 0 || len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &first) != nil || first.Name != "m-0001" || strings.Contains(out, secret) {
		t.Fatalf("list: %d %s", code, out)
	}
	if code, out, _ = tokenctl(t, "--server", h.URL, "providers", "delete", "m-0001"); code != 0 || out != "deleted m-0001\n" {
		t.Fatalf("delete: %d %s", code, out)
	}
	if code, _, errOut = tokenctl(t, "--server", h.URL, "providers", "delete", "m-0001"); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("second delete: %d %s", code, errOut)
	}
	if code, _, _ = tokenctl(t, "providers", "frob"); code != 2 {
		t.Fatalf("usage: %d", code)
	}
}

func encodeKey(raw []byte) string { return base64.StdEncoding.EncodeToString(raw) }

// TestProvidersPutStream: "providers put -" streams a JSON-lines file in
// batches through tokenbus.providers.put_many: every valid provider is
// stored, blank lines are skipped, a line that is not JSON and each provider
// the refresher refuses are listed by line and name with the code, never
// with a value; on a terminal stderr shows a progress bar; the exit status
// says that some were refused.
func TestProvidersPutStream(t *testing.T) {
	h, reg := startProvidersService(t)

	const n = 5*batchSize + 50 // six batches
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"name":"m-%05d","kind":"daraja","base_url":%q,"consumer_key":"k-%05d","consumer_secret":"SECRET-%05d"}`+"\n", i, h.SimURL, i, i)
		switch i {
		case 10:
			in.WriteString("\n") // blank: skipped
		case 20:
			in.WriteString(`{"name":"m-bad","kind":"daraja","base_url":"x","consumer_key":"k","consumer_secret":"SECRET-BAD"}` + "\n")
		case 30:
			in.WriteString(`not json SECRET-LINE` + "\n")
		case 40:
			in.WriteString(`{"name":"daraja-test","kind":"daraja","base_url":"http://x","consumer_key":"k","consumer_secret":"SECRET-409"}` + "\n")
		}
	}
	path := filepath.Join(t.TempDir(), "merchants.jsonl")
	if err := os.WriteFile(path, []byte(in.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin = f
	isTerminal = func(io.Writer) bool { return true }
	defer func() { stdin, isTerminal = os.Stdin, func(io.Writer) bool { return false } }()

	code, out, errOut := tokenctl(t, "--server", h.URL, "providers", "put", "-")
	if code != 1 || !strings.Contains(out, fmt.Sprintf("stored %d providers, refused 3", n)) {
		t.Fatalf("put -: %d\n%s\n%s", code, out, errOut)
	}
	if len(reg.seen) != n {
		t.Fatalf("stored %d, want %d", len(reg.seen), n)
	}
	// Lines: provider i is on line i+1, plus one line for each extra line
	// before it.
	for _, want := range []string{
		"line 23 (m-bad): 400 bad request: base_url",
		"line 34 (-): 400 not a JSON object",
		"line 45 (daraja-test): 409 ",
		"\r[##############################] 100%",
		"3 of " + fmt.Sprint(n+3) + " providers refused",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut[max(0, len(errOut)-600):])
		}
	}
	if strings.Contains(out+errOut, "SECRET") {
		t.Fatal("tokenctl printed a secret or a line's content")
	}
}

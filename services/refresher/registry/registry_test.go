package registry_test

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/registry"
	"github.com/tokenbus/tokenbus/services/refresher/seal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reporter is a registry.Statuser with a fixed status.
type reporter wire.ProviderStatus

func (r reporter) Status() wire.ProviderStatus { return wire.ProviderStatus(r) }

// TestRegistryGuardsTheCredentialBucket: tokenbus.providers.put and
// .delete, over a real credential bucket, refuse a config-file provider's
// name (a conflict on put, unknown on delete) and a credential another
// provider uses, naming the field and never a secret; a runtime provider is
// stored and deleted, and deleting one that is not there is unknown.
func TestRegistryGuardsTheCredentialBucket(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	ctx := t.Context()
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	k, err := seal.ParseKey("k1", base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := seal.NewKeyring(k)
	if err != nil {
		t.Fatal(err)
	}
	store, err := credentials.Open(ctx, nc, "tokenbus-credentials", 1, ring)
	if err != nil {
		t.Fatal(err)
	}
	const secret = "consumer-secret-5d2e91"
	daraja := func(name, key string) config.Provider {
		return config.Provider{Name: name, Kind: config.KindDaraja, BaseURL: "http://127.0.0.1:1", ConsumerKey: key, ConsumerSecret: secret, Timeout: config.Duration(time.Second)}
	}
	set := registry.New()
	set.Add(&registry.Served{Name: "from-file", Kind: config.KindDaraja, Source: wire.SourceConfig, Credential: daraja("from-file", "file-key").Credential(),
		Reporter: reporter{Name: "from-file", State: wire.StateOK}})
	set.Add(&registry.Served{Name: "rt-1", Kind: config.KindDaraja, Source: wire.SourceRuntime, Credential: daraja("rt-1", "rt-key").Credential(),
		Reporter: reporter{Name: "rt-1", State: wire.StateNoToken}})
	reg := registry.NewRegistry(set, store)
	p := daraja("from-file", "other-key")
	if _, err := reg.Put(ctx, p); !errors.Is(err, refresher.ErrConflict) || !strings.Contains(err.Error(), "name:") {
		t.Fatalf("put of a config-file provider's name: %v, want a conflict naming the name field", err)
	}
	shared := daraja("rt-2", "rt-key")
	if set.Sharing("rt-2", shared.Credential()) != "rt-1" {
		t.Fatalf("credential %q is not seen as rt-1's", shared.Credential())
	}
	_, err = reg.Put(ctx, shared)
	if !errors.Is(err, refresher.ErrConflict) || !strings.Contains(err.Error(), shared.CredentialField()+":") || !strings.Contains(err.Error(), `"rt-1"`) {
		t.Fatalf("put sharing rt-1's credential: %v, want a conflict naming %s and rt-1", err, shared.CredentialField())
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "rt-key") {
		t.Fatalf("the conflict shows a credential: %v", err)
	}
	// rt-1 itself may be put again with its own credential.
	again := daraja("rt-1", "rt-key")
	rev, err := reg.Put(ctx, again)
	if err != nil || rev == 0 {
		t.Fatalf("re-put of rt-1: %d, %v", rev, err)
	}
	if err := reg.Delete(ctx, "from-file"); !errors.Is(err, refresher.ErrUnknownProvider) {
		t.Fatalf("delete of a config-file provider: %v, want unknown", err)
	}
	if err := reg.Delete(ctx, "rt-1"); err != nil {
		t.Fatalf("delete of rt-1: %v", err)
	}
	if err := reg.Delete(ctx, "rt-1"); !errors.Is(err, refresher.ErrUnknownProvider) {
		t.Fatalf("second delete of rt-1: %v, want unknown", err)
	}
	page, next := reg.List("", 10)
	if len(page) != 2 || page[0] != (wire.ProviderInfo{Name: "from-file", Kind: config.KindDaraja, Source: wire.SourceConfig, State: wire.StateOK}) ||
		page[1] != (wire.ProviderInfo{Name: "rt-1", Kind: config.KindDaraja, Source: wire.SourceRuntime, State: wire.StateNoToken}) || next != "" {
		t.Fatalf("list: %+v next %q", page, next)
	}
}

package natsx

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func TestRedactURL(t *testing.T) {
	got := RedactURL("nats://alice:hunter2@a:4222,nats://b:4222")
	if strings.Contains(got, "hunter2") || strings.Contains(got, "alice") || !strings.Contains(got, "b:4222") {
		t.Fatalf("redactURL = %q", got)
	}
}

func TestEmbeddedServerStoresTokens(t *testing.T) {
	ns, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := Connect(ConnectConfig{Name: "test", Embedded: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer Drain(nc, time.Second)
	st, err := OpenStore(context.Background(), nc, "tokens", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r1, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: "a", ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := st.Publish(context.Background(), wire.Token{Provider: "p", AccessToken: "b", ExpiresAt: now.Add(time.Hour)})
	if err != nil || r2 <= r1 {
		t.Fatalf("revisions %d then %d (%v)", r1, r2, err)
	}
	if _, err := StartEmbedded(EmbeddedConfig{Listen: "nonsense", StoreDir: t.TempDir()}); err == nil {
		t.Fatal("bad listen address accepted")
	}
}

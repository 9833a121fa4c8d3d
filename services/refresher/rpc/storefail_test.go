package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// failingRegistry is a credential store that acknowledges nothing.
type failingRegistry struct{}

var errNoAck = fmt.Errorf("credentials: store m-0001: %w", context.DeadlineExceeded)

func (failingRegistry) Put(context.Context, config.Provider) (uint64, error) { return 0, errNoAck }
func (failingRegistry) Delete(context.Context, string) error                 { return errNoAck }
func (failingRegistry) List(string, int) ([]wire.ProviderInfo, string)       { return nil, "" }

// TestStoreFailureIsNamed: a put or delete the store did not acknowledge is
// answered 503 saying it was not stored (or deleted) and to send it again,
// naming the provider and the cause — not token.get's "no valid token
// available yet" — and never echoing the secret it carried.
func TestStoreFailureIsNamed(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	svc, err := rpc.Start(nc, rpc.Config{Registry: failingRegistry{}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	for _, tc := range []struct{ subject, body, want string }{
		{wire.ProvidersPutSubject, `{"name":"m-0001","kind":"daraja","base_url":"http://127.0.0.1:1","consumer_key":"ck","consumer_secret":"S3CRET-VALUE"}`,
			"m-0001: not stored, put it again: credentials: store m-0001: context deadline exceeded"},
		{wire.ProvidersDeleteSubject, `{"name":"m-0001"}`,
			"m-0001: not deleted, delete it again: credentials: store m-0001: context deadline exceeded"},
	} {
		msg, err := nc.Request(tc.subject, []byte(tc.body), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", tc.subject, err)
		}
		if code := msg.Header.Get(wire.HeaderErrorCode); code != "503" {
			t.Errorf("%s: code %q, want 503", tc.subject, code)
		}
		if got := msg.Header.Get(wire.HeaderError); got != tc.want {
			t.Errorf("%s: error %q, want %q", tc.subject, got, tc.want)
		}
		if strings.Contains(string(msg.Data), "S3CRET") || strings.Contains(msg.Header.Get(wire.HeaderError), "S3CRET") {
			t.Errorf("%s: the reply echoes the secret", tc.subject)
		}
	}
}

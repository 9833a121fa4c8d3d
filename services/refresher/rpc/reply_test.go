package rpc_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// hugeSource answers with a body past the server's max_payload (1 MiB by
// default), so that publishing the reply fails on the client side.
type hugeSource struct{ blocking bool }

func (s hugeSource) Get(context.Context) ([]byte, error) {
	return []byte(`{"access_token":"` + strings.Repeat("x", 1<<20) + `"}`), nil
}
func (s hugeSource) Refresh(ctx context.Context, _ string) ([]byte, error) { return s.Get(ctx) }
func (s hugeSource) Blocking() bool                                        { return s.blocking }

// codesRecorder records every request's endpoint, provider and code.
type codesRecorder struct {
	mu  sync.Mutex
	got map[string]int
}

func (r *codesRecorder) RecordRequest(endpoint, provider string, code int, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[endpoint+" "+provider] = code
}

func (r *codesRecorder) code(key string) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.got[key]
	return c, ok
}

// TestFailedReplyIsNotRecordedAsOK: a reply that cannot be published (here
// a body past the server's max_payload) is recorded as 503, not 200, and
// logged — on the async path (a single-use claim, a refresh) and the
// endpoint's own (a shared token).
func TestFailedReplyIsNotRecordedAsOK(t *testing.T) {
	ns := testutil.RunServer(t)
	nc := testutil.Connect(t, ns)
	rec := &codesRecorder{got: map[string]int{}}
	var logs testutil.LogBuffer
	svc, err := rpc.Start(nc, rpc.Config{
		Sources:  map[string]rpc.Source{"claim": hugeSource{blocking: true}, "shared": hugeSource{}},
		Recorder: rec, Logger: logs.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	for _, tc := range []struct{ subject, key, body, log string }{
		{wire.GetSubject("claim"), rpc.EndpointGet + " claim", "", "the single-use token claimed for it is lost"},
		{wire.RefreshSubject("shared"), rpc.EndpointRefresh + " shared", `{"invalid_token":"old"}`, "reply not sent"},
		{wire.GetSubject("shared"), rpc.EndpointGet + " shared", "", "reply not sent"},
	} {
		if _, err := nc.Request(tc.subject, []byte(tc.body), 300*time.Millisecond); err == nil {
			t.Fatalf("%s: a reply arrived", tc.subject)
		}
		testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if code, ok := rec.code(tc.key); !ok || code != wire.CodeUnavailable {
				return fmt.Errorf("%s recorded %d (recorded: %v), want %d", tc.key, code, ok, wire.CodeUnavailable)
			}
			return nil
		})
		if !strings.Contains(logs.String(), tc.log) {
			t.Fatalf("%s: no %q in the log:\n%s", tc.key, tc.log, logs.String())
		}
	}
}

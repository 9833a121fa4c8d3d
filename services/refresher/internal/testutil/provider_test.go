package testutil

import (
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/tokenbus/tokenbus/services/refresher"
)

// fatalRecorder is a testing.TB whose Fatal and Fatalf record that they were
// called and end the goroutine, as the real ones do.
type fatalRecorder struct {
	testing.TB
	mu     sync.Mutex
	failed bool
	msg    string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatal(args ...any) { r.fail(fmt.Sprint(args...)) }

func (r *fatalRecorder) Fatalf(format string, args ...any) { r.fail(fmt.Sprintf(format, args...)) }

func (r *fatalRecorder) fail(msg string) {
	r.mu.Lock()
	r.failed, r.msg = true, msg
	r.mu.Unlock()
	runtime.Goexit()
}

// fails runs CheckProviderError in its own goroutine and reports whether it
// failed, and with what message.
func fails(t *testing.T, err error, want WantError, secrets ...string) (bool, string) {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		CheckProviderError(r, err, want, secrets...)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed, r.msg
}

func TestCheckProviderError(t *testing.T) {
	const secret = "hunter2-secret"
	pe := &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400, Code: "invalid_client", Message: "bad credentials"}
	match := WantError{Kind: refresher.Permanent, Status: 400, Code: "invalid_client", Substr: "bad credentials"}
	if failed, msg := fails(t, pe, match, secret); failed {
		t.Fatalf("matching error failed the check: %s", msg)
	}
	if failed, msg := fails(t, fmt.Errorf("wrapped: %w", pe), match, secret); failed {
		t.Fatalf("wrapped matching error failed the check: %s", msg)
	}
	leak := func(s string) error {
		return &refresher.ProviderError{Kind: pe.Kind, StatusCode: pe.StatusCode, Code: pe.Code, Message: "bad credentials " + s}
	}
	for _, tc := range []struct {
		name string
		err  error
		want WantError
	}{
		{"nil error", nil, match},
		{"not a ProviderError", errors.New("bad credentials"), match},
		{"kind", pe, WantError{refresher.Transient, 400, "invalid_client", "bad credentials"}},
		{"status", pe, WantError{refresher.Permanent, 401, "invalid_client", "bad credentials"}},
		{"status 0 is exact", pe, WantError{refresher.Permanent, 0, "invalid_client", "bad credentials"}},
		{"code", pe, WantError{refresher.Permanent, 400, "invalid_grant", "bad credentials"}},
		{"empty code is exact", pe, WantError{refresher.Permanent, 400, "", "bad credentials"}},
		{"substring", pe, WantError{refresher.Permanent, 400, "invalid_client", "timed out"}},
		{"secret", leak(secret), match},
		{"base64 secret", leak(base64.StdEncoding.EncodeToString([]byte(secret))), match},
		{"base64url secret", leak(base64.RawURLEncoding.EncodeToString([]byte(secret))), match},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if failed, _ := fails(t, tc.err, tc.want, secret); !failed {
				t.Fatalf("CheckProviderError(%v, %+v) passed", tc.err, tc.want)
			}
		})
	}
}

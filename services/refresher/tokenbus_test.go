package refresher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	const value = "s3cr3t-value"
	s := Secret(value)
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	logger.Info("x", "secret", s, "struct", struct{ S Secret }{s})
	b, _ := json.Marshal(struct{ S Secret }{s})
	out := buf.String() + fmt.Sprintf("%v %+v %#v %s %q", s, struct{ S Secret }{s}, s, s, s) + string(b)
	if strings.Contains(out, value) {
		t.Fatalf("secret leaked: %s", out)
	}
	if s.Reveal() != value {
		t.Fatal("Reveal lost the value")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Kind
	}{
		{&ProviderError{Kind: Permanent, StatusCode: 400, Code: "400.008.01"}, Permanent},
		{fmt.Errorf("wrapped: %w", &ProviderError{Kind: Permanent}), Permanent},
		{&ProviderError{Kind: Transient, StatusCode: 503}, Transient},
		{errors.New("boom"), Transient},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	for status, want := range map[int]Kind{400: Permanent, 401: Permanent, 404: Permanent, 408: Transient, 429: Transient, 500: Transient, 503: Transient} {
		if got := KindForStatus(status); got != want {
			t.Errorf("KindForStatus(%d) = %v, want %v", status, got, want)
		}
	}
}

func TestProviderErrorMessage(t *testing.T) {
	e := &ProviderError{Kind: Permanent, StatusCode: 400, Code: "400.008.01", Message: "invalid authentication type"}
	if got, want := e.Error(), "provider error: HTTP 400 400.008.01: invalid authentication type"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestKindFor(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   Kind
	}{
		{500, "login_failed", Permanent}, // MTN MoMo's bad credentials
		{401, "invalid_client", Permanent},
		{400, "invalid_scope", Permanent},
		{400, "unsupported_grant_type", Permanent},
		{503, "temporarily_unavailable", Transient},
		{400, "temporarily_unavailable", Transient},
		{400, "400.008.01", Permanent}, // unknown codes fall back to the status
		{502, "weird", Transient},
		{503, "", Transient},
		{403, "", Permanent},
	} {
		if got := KindFor(tc.status, tc.code); got != tc.want {
			t.Errorf("KindFor(%d, %q) = %v, want %v", tc.status, tc.code, got, tc.want)
		}
	}
}

package tokenclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// responder answers a request in place of the refresher.
type responder func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error)

// newTestClient returns a client without a connection or a watch whose
// requests go to r (nil: fail the test on any request).
func newTestClient(t *testing.T, r responder, opts ...Option) *Client {
	t.Helper()
	if r == nil {
		r = func(_ context.Context, msg *nats.Msg) (*nats.Msg, error) {
			t.Errorf("unexpected request on %s", msg.Subject)
			return nil, errors.New("unexpected request")
		}
	}
	c, err := newClient(r, opts)
	if err != nil {
		t.Fatal(err)
	}
	close(c.done)
	c.markReady()
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testToken(provider, access string, life time.Duration) wire.Token {
	now := time.Now().UTC().Truncate(time.Second)
	return wire.Token{Provider: provider, AccessToken: access, TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(life)}
}

// tokenReply answers with tok as the refresher would.
func tokenReply(tok wire.Token) responder {
	return func(_ context.Context, _ *nats.Msg) (*nats.Msg, error) {
		b, err := json.Marshal(tok)
		if err != nil {
			return nil, err
		}
		return &nats.Msg{Data: b}, nil
	}
}

// errorReply answers with a micro error.
func errorReply(code, message string) responder {
	return func(_ context.Context, _ *nats.Msg) (*nats.Msg, error) {
		n := 0
		_, _ = fmt.Sscan(code, &n)
		b, _ := json.Marshal(wire.ErrorBody{Error: wire.ErrorDetail{Code: n, Message: message}})
		return &nats.Msg{Data: b, Header: nats.Header{wire.HeaderErrorCode: {code}, wire.HeaderError: {message}}}, nil
	}
}

func TestTokenFromMemory(t *testing.T) {
	c := newTestClient(t, nil)
	tok := testToken("daraja", "cached", time.Hour)
	c.cache.put("daraja", tok, 1)
	got, err := c.Token(context.Background(), "daraja")
	if err != nil || got != tok {
		t.Fatalf("Token = %+v, %v; want %+v", got, err, tok)
	}
}

func TestTokenFallsBackToRequest(t *testing.T) {
	fresh := testToken("daraja", "fresh", time.Hour)
	var subjects []string
	c := newTestClient(t, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		subjects = append(subjects, msg.Subject)
		if len(msg.Data) != 0 {
			t.Errorf("token.get body = %q, want empty", msg.Data)
		}
		return tokenReply(fresh)(ctx, msg)
	})
	// Nothing cached, then an entry that has expired: both ask.
	for range 2 {
		got, err := c.Token(context.Background(), "daraja")
		if err != nil || got.AccessToken != "fresh" {
			t.Fatalf("Token = %+v, %v", got, err)
		}
		c.cache.put("daraja", testToken("daraja", "expired", -time.Second), uint64(len(subjects)))
	}
	if want := []string{"token.get.daraja", "token.get.daraja"}; strings.Join(subjects, ",") != strings.Join(want, ",") {
		t.Fatalf("requests = %v, want %v", subjects, want)
	}
	// The fallback's answer is not cached: the watch owns the cache.
	if _, ok := c.cache.get("daraja"); ok {
		t.Fatal("the request-reply answer was cached")
	}
}

// TestTokenNeverExpired: a cached token stops being served once it reaches
// its margin before expiry (here on an injected clock); an expired answer
// from the refresher is refused.
func TestTokenNeverExpired(t *testing.T) {
	var asked atomic.Int32
	clk := newFakeClock()
	c := newTestClient(t, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		asked.Add(1)
		return tokenReply(testToken("daraja", "stale", -time.Minute))(ctx, msg)
	}, withClock(clk.read))
	c.cache.put("daraja", clk.token("daraja", "short", time.Minute), 1)
	if got, err := c.Token(context.Background(), "daraja"); err != nil || got.AccessToken != "short" {
		t.Fatalf("Token = %+v, %v", got, err)
	}
	clk.advance(time.Minute, time.Minute) // a minute passes
	c.cache.check()
	got, err := c.Token(context.Background(), "daraja")
	if !errors.Is(err, ErrUnavailable) || got.AccessToken != "" {
		t.Fatalf("Token after expiry = %+v, %v; want ErrUnavailable", got, err)
	}
	if asked.Load() != 1 {
		t.Fatalf("requests = %d, want 1", asked.Load())
	}
	// A token without expiry is never served either.
	c.cache.put("nexp", wire.Token{Provider: "nexp", AccessToken: "x"}, 1)
	if _, ok := c.cache.get("nexp"); ok {
		t.Fatal("a token without expires_at was served")
	}
}

func TestTokenErrors(t *testing.T) {
	tests := []struct {
		code    string
		want    error
		wantInt int
	}{
		{"400", ErrBadRequest, 400},
		{"404", ErrUnknownProvider, 404},
		{"502", ErrProviderFailed, 502},
		{"503", ErrUnavailable, 503},
		{"garbage", ErrUnavailable, 503},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			c := newTestClient(t, errorReply(tt.code, "daraja: provider error: HTTP 400 400.008.01"))
			_, err := c.Token(context.Background(), "daraja")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != tt.wantInt || e.Op != "token.get" || e.Provider != "daraja" ||
				!strings.Contains(e.Message, "400.008.01") {
				t.Fatalf("err = %#v", err)
			}
			for _, other := range []error{ErrBadRequest, ErrUnknownProvider, ErrProviderFailed, ErrUnavailable} {
				if other != tt.want && errors.Is(err, other) {
					t.Errorf("err also matches %v", other)
				}
			}
		})
	}
}

func TestTokenRequestFailures(t *testing.T) {
	t.Run("no responders", func(t *testing.T) {
		c := newTestClient(t, func(context.Context, *nats.Msg) (*nats.Msg, error) { return nil, nats.ErrNoResponders })
		_, err := c.Token(context.Background(), "daraja")
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("err = %v", err)
		}
	})
	wait := func(ctx context.Context, _ *nats.Msg) (*nats.Msg, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	t.Run("client timeout", func(t *testing.T) {
		c := newTestClient(t, wait, WithTimeout(20*time.Millisecond))
		_, err := c.Token(context.Background(), "daraja")
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("caller's deadline", func(t *testing.T) {
		c := newTestClient(t, wait, WithTimeout(time.Hour))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		_, err := c.Token(ctx, "daraja")
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		c := newTestClient(t, func(context.Context, *nats.Msg) (*nats.Msg, error) { return &nats.Msg{Data: []byte("<html>")}, nil })
		if _, err := c.Token(context.Background(), "daraja"); err == nil || !strings.Contains(err.Error(), "malformed") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad name", func(t *testing.T) {
		c := newTestClient(t, nil)
		for _, name := range []string{"", "Daraja", "a.b", "a*", ">"} {
			if _, err := c.Token(context.Background(), name); !errors.Is(err, ErrBadRequest) {
				t.Errorf("Token(%q) err = %v, want ErrBadRequest", name, err)
			}
		}
	})
}

func TestTokenHonoursContextAndClose(t *testing.T) {
	c := newTestClient(t, nil)
	c.cache.put("daraja", testToken("daraja", "cached", time.Hour), 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Token(ctx, "daraja"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: err = %v", err)
	}
	if _, err := c.Invalidate(ctx, "daraja", "cached"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: Invalidate err = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := c.Token(context.Background(), "daraja"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: err = %v", err)
	}
	if _, err := c.Invalidate(context.Background(), "daraja", "cached"); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: Invalidate err = %v", err)
	}
	if err := c.WaitReady(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: WaitReady err = %v", err)
	}
}

func TestInvalidate(t *testing.T) {
	fresh := testToken("daraja", "fresh", time.Hour)
	var got wire.RefreshRequest
	c := newTestClient(t, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		if msg.Subject != "token.refresh.daraja" {
			t.Errorf("subject = %q", msg.Subject)
		}
		if err := json.Unmarshal(msg.Data, &got); err != nil {
			t.Error(err)
		}
		return tokenReply(fresh)(ctx, msg)
	})
	c.cache.put("daraja", testToken("daraja", "rejected", time.Hour), 7)
	tok, err := c.Invalidate(context.Background(), "daraja", "rejected")
	if err != nil || tok.AccessToken != "fresh" || got.InvalidToken != "rejected" {
		t.Fatalf("Invalidate = %+v, %v; request %+v", tok, err, got)
	}
	// The copy stops serving the rejected token at once...
	if tok, err := c.Token(context.Background(), "daraja"); err != nil || tok.AccessToken != "fresh" {
		t.Fatalf("Token after Invalidate = %+v, %v", tok, err)
	}
	// ...and the watch's next revision still supersedes it.
	if !c.cache.put("daraja", testToken("daraja", "next", time.Hour), 8) {
		t.Fatal("revision 8 was not taken after Invalidate")
	}
	// Reporting a token that is no longer current changes nothing.
	if _, err := c.Invalidate(context.Background(), "daraja", "rejected"); err != nil {
		t.Fatal(err)
	}
	if tok, _ := c.Token(context.Background(), "daraja"); tok.AccessToken != "next" {
		t.Fatalf("Token = %q, want next", tok.AccessToken)
	}
}

func TestSingleUseAlwaysAsks(t *testing.T) {
	var n atomic.Int32
	c := newTestClient(t, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		i := n.Add(1)
		return tokenReply(testToken("mpay", fmt.Sprint("one-off-", i), 2*time.Minute))(ctx, msg)
	}, WithSingleUse("mpay"))
	a, err1 := c.Token(context.Background(), "mpay")
	b, err2 := c.Token(context.Background(), "mpay")
	if err1 != nil || err2 != nil || a.AccessToken == b.AccessToken {
		t.Fatalf("tokens %q, %q (%v, %v): want two different ones", a.AccessToken, b.AccessToken, err1, err2)
	}
}

func TestRequestCarriesTraceContext(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	traceID := trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled,
	}))
	var header string
	c := newTestClient(t, func(ctx context.Context, msg *nats.Msg) (*nats.Msg, error) {
		header = msg.Header.Get("traceparent")
		return tokenReply(testToken("daraja", "t", time.Hour))(ctx, msg)
	})
	if _, err := c.Token(ctx, "daraja"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(header, traceID.String()) {
		t.Fatalf("traceparent = %q, want trace %s", header, traceID)
	}
}

// TestConcurrentReadsAndWrites runs 1,000 readers against a writer
// publishing new revisions (run with -race).
func TestConcurrentReadsAndWrites(t *testing.T) {
	c := newTestClient(t, nil)
	c.cache.put("daraja", testToken("daraja", "t-0", time.Hour), 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for rev := uint64(2); ; rev++ {
			select {
			case <-stop:
				return
			default:
			}
			c.cache.put("daraja", testToken("daraja", fmt.Sprint("t-", rev), time.Hour), rev)
			c.cache.put(fmt.Sprint("other-", rev%5), testToken("other", "o", time.Hour), rev)
		}
	})
	var readers sync.WaitGroup
	for range 1000 {
		readers.Go(func() {
			for range 50 {
				tok, err := c.Token(context.Background(), "daraja")
				if err != nil || !strings.HasPrefix(tok.AccessToken, "t-") {
					t.Errorf("Token = %+v, %v", tok, err)
					return
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	wg.Wait()
}

func TestCacheRevisions(t *testing.T) {
	c := newCache(nil)
	if !c.put("p", testToken("p", "a", time.Hour), 5) {
		t.Fatal("first put refused")
	}
	if c.put("p", testToken("p", "old", time.Hour), 4) || c.put("p", testToken("p", "same", time.Hour), 5) {
		t.Fatal("an older or equal revision replaced a newer one")
	}
	c.remove("p", 3)
	if e, ok := c.get("p"); !ok || e.tok.AccessToken != "a" {
		t.Fatal("a delete older than the value removed it")
	}
	c.remove("p", 6)
	if _, ok := c.get("p"); ok {
		t.Fatal("a newer delete did not remove the value")
	}
	c.put("p", testToken("p", "b", time.Hour), 9)
	c.clear()
	if _, ok := c.get("p"); ok {
		t.Fatal("clear left a value")
	}
}

// Package tokenclient is the Go client of tokenbus (SPEC §6). A Client keeps
// an in-memory copy of the tokens it is asked for, so that Token answers with
// no network hop and no allocation. When the copy has nothing valid (nothing
// read yet, the token expired, or the provider is single-use) Token asks the
// refresher over request-reply on token.get.<provider>. It never returns an
// expired token.
//
// By default (FollowUpdates) the copy follows token.updates.<provider>, the
// core NATS subject on which the server republishes every write to the
// tokens bucket (SPEC §9): the first Token call for a provider (or
// WithProviders) subscribes to it and reads the current value once with
// token.get; updates are ordered by their Nats-Sequence and older ones
// ignored; after a gap (Nats-Last-Sequence is not the sequence held), a
// reconnect (a server restart) or a sequence that went back (a recreated
// bucket) the current value is read again; a deleted key stops being served.
// It costs the servers one subscription per provider and Client, no
// JetStream consumer, and needs only the reader permissions of SPEC §10:
// publish token.get.P and token.refresh.P, subscribe token.updates.P and the
// connection's inbox prefix (nats.CustomInboxPrefix), which every request of
// the Client uses. WithFollowMode(FollowKVWatch) keeps the KV watch of the
// whole bucket instead (one JetStream consumer per Client), rebuilt from the
// last revision seen whenever the connection comes back or the watch's
// channel closes (nats.go#1777).
//
// Invalidate reports a token the provider rejected (token.refresh.<provider>),
// and Transport wraps an http.RoundTripper that sets the Bearer header and,
// on a rejection, invalidates and retries once.
//
// The module depends on nats.go and the OpenTelemetry API only, never on
// nats-server. A Client is safe for concurrent use; it never logs (see
// WithErrorHandler).
package tokenclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// Token is a provider access token as tokenbus publishes it (SPEC §3).
type Token = wire.Token

// Event is one change applied to the in-memory copy (see WithOnUpdate).
type Event struct {
	// Provider is the KV key: the provider name.
	Provider string
	// Token is the new token; zero when Deleted.
	Token Token
	// Revision is the KV revision of the change (its Nats-Sequence); 0 for
	// a provider the refresher answered it no longer knows (Deleted).
	Revision uint64
	// Deleted reports that the key was deleted or purged.
	Deleted bool
}

// Client gets tokens from tokenbus. Create it with New; Close it when done.
type Client struct {
	nc *nats.Conn
	// requestMsg sends a request; nc.RequestMsgWithContext but in tests.
	requestMsg func(context.Context, *nats.Msg) (*nats.Msg, error)
	o          options
	cache      *cache
	// fol follows token.updates (FollowUpdates); nil in the other modes.
	fol     *follower
	errMu   sync.Mutex
	lastErr string
	tracer  trace.Tracer
	closed  atomic.Bool
	// bg bounds the watch's requests; Close cancels it.
	bg       context.Context
	bgCancel context.CancelFunc

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	ready     chan struct{}
	readyOnce sync.Once
	wg        sync.WaitGroup
	// coolUntil maps a provider to the end of the refresh cooldown a 429
	// announced: Invalidate sends no report of it before then.
	coolUntil sync.Map
}

// New returns a Client on nc and, unless WithoutWatch is given, starts
// following tokens in the background (FollowUpdates: the providers given
// WithProviders now, others from their first Token call; FollowKVWatch: a
// watch of the whole bucket). It does not wait: until a token is in memory,
// Token asks over request-reply (use WaitReady to wait). The caller keeps
// ownership of nc; Close the Client before closing nc. New returns an error
// wrapping ErrInvalidOption for a bad option.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil *nats.Conn", ErrInvalidOption)
	}
	c, err := newClient(nc.RequestMsgWithContext, opts)
	if err != nil {
		return nil, err
	}
	c.nc = nc
	if !c.o.watch {
		close(c.done)
		c.markReady()
		return c, nil
	}
	if c.o.follow == FollowUpdates {
		c.fol = newFollower(c)
		c.fol.start()
		go c.fol.run()
		return c, nil
	}
	w, err := newWatch(c)
	if err != nil {
		c.bgCancel()
		c.wg.Wait()
		return nil, err
	}
	go w.run()
	return c, nil
}

// newClient applies opts and returns a client without a connection or a
// watch, sending its requests with requestMsg.
func newClient(requestMsg func(context.Context, *nats.Msg) (*nats.Msg, error), opts []Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	tp := o.tp
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	c := &Client{
		requestMsg: requestMsg,
		o:          o,
		cache:      newCache(o.clock),
		tracer:     tp.Tracer("github.com/tokenbus/tokenbus/libs/tokenclient"),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		ready:      make(chan struct{}),
	}
	c.bg, c.bgCancel = context.WithCancel(context.Background())
	c.wg.Go(func() { c.cache.run(c.bg.Done()) })
	return c, nil
}

// Token returns provider's current token. It answers from the in-memory copy
// when that holds a token that has not expired: no network hop, no lock, no
// clock read, no allocation (a background check retires a cached token
// within its clock-skew margin of expiry, by the wall and the monotonic
// clock, and after a host resumes; see cache.go). Otherwise, and always for providers declared WithSingleUse, it
// asks the refresher on token.get.<provider>, within ctx (or the client's
// timeout when ctx has no deadline). It never returns an expired token.
//
// Errors: ctx's error if ctx is done; ErrClosed after Close; an *Error
// matching ErrUnknownProvider, ErrProviderFailed or ErrUnavailable when the
// refresher answers one; ErrUnavailable when no refresher answers;
// ErrBadRequest for an invalid provider name.
func (c *Client) Token(ctx context.Context, provider string) (Token, error) {
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	if c.closed.Load() {
		return Token{}, ErrClosed
	}
	if e, ok := c.cache.get(provider); ok {
		return e.tok, nil
	}
	if c.fol != nil {
		return c.followAndGet(ctx, provider)
	}
	return c.request(ctx, "token.get", provider, wire.GetSubject(provider), nil)
}

// followAndGet answers a Token call that missed the copy in FollowUpdates
// mode: it follows provider's updates if it does not yet, then reads the
// current value, which also feeds the copy.
func (c *Client) followAndGet(ctx context.Context, provider string) (Token, error) {
	gen, ok := c.fol.ensure(provider)
	if ok {
		ok = c.fol.confirm(ctx, provider)
	}
	tok, rev, err := c.get(ctx, provider)
	if !ok {
		return tok, err
	}
	var e *Error
	switch {
	case err == nil:
		c.fol.read(provider, tok, rev, gen, readStrict)
	case errors.As(err, &e):
		c.fol.refused(provider, e, gen)
	}
	return tok, err
}

// get asks token.get.<provider> and returns the token with the KV revision
// the reply carries (0 if none).
func (c *Client) get(ctx context.Context, provider string) (Token, uint64, error) {
	return c.requestRev(ctx, "token.get", provider, wire.GetSubject(provider), nil)
}

// emit passes ev to the update handler, if any.
func (c *Client) emit(ev Event) {
	if c.o.onUpdate != nil {
		c.o.onUpdate(ev)
	}
}

// clearReport ends a run of equal errors: the next error is reported even if
// it is the same.
func (c *Client) clearReport() {
	c.errMu.Lock()
	c.lastErr = ""
	c.errMu.Unlock()
}

// report passes err to the error handler, once for a run of equal errors.
func (c *Client) report(err error) {
	if c.o.onError == nil {
		return
	}
	msg := err.Error()
	c.errMu.Lock()
	same := msg == c.lastErr
	c.lastErr = msg
	c.errMu.Unlock()
	if !same {
		c.o.onError(err)
	}
}

// Invalidate reports that provider rejected token and returns the token to
// use instead. The refresher fetches a new one only if token is still its
// current one, so any number of callers reporting the same token cause one
// upstream call. The in-memory copy stops serving token at once.
//
// Errors are those of Token, and an *Error matching ErrCooldown when the
// refresher refreshed on a report less than the provider's refresh_cooldown
// ago (SPEC §3): no report changes the token before its RetryAfter, and
// until then Invalidate answers the same without asking the refresher.
func (c *Client) Invalidate(ctx context.Context, provider, token string) (Token, error) {
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	if c.closed.Load() {
		return Token{}, ErrClosed
	}
	if v, ok := c.coolUntil.Load(provider); ok {
		if left := time.Until(v.(time.Time)); left > 0 {
			return Token{}, &Error{Op: "token.refresh", Provider: provider, Code: wire.CodeTooManyRequests,
				Message: "refresh cooldown: not reported again before Retry-After", RetryAfter: left}
		}
		c.coolUntil.Delete(provider)
	}
	body, err := json.Marshal(wire.RefreshRequest{InvalidToken: token})
	if err != nil {
		return Token{}, fmt.Errorf("tokenclient: encode refresh request: %w", err)
	}
	tok, err := c.request(ctx, "token.refresh", provider, wire.RefreshSubject(provider), body)
	var e *Error
	if errors.As(err, &e) && e.Code == wire.CodeTooManyRequests && e.RetryAfter > 0 {
		c.coolUntil.Store(provider, time.Now().Add(e.RetryAfter))
	}
	if err != nil {
		return Token{}, err
	}
	if !c.o.singleUse[provider] {
		c.cache.replace(provider, token, tok)
	}
	return tok, nil
}

// WaitReady waits until the copy is loaded, so that Token answers from
// memory: in FollowUpdates, until the refresher has answered a read of each
// provider given WithProviders (at once without them); in FollowKVWatch,
// until the watch has loaded the bucket's current tokens. It returns nil at
// once for a Client WithoutWatch, ctx's error if ctx ends first, and
// ErrClosed after Close.
func (c *Client) WaitReady(ctx context.Context) error {
	select {
	case <-c.ready:
		if c.closed.Load() {
			return ErrClosed
		}
		return nil
	case <-c.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops following (unsubscribes, or stops the watch) and waits for its
// goroutines to end. Token and
// Invalidate then return ErrClosed. It does not close the NATS connection.
// Close is idempotent and safe to call concurrently with other methods.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.bgCancel()
		close(c.stop)
	})
	<-c.done
	c.wg.Wait()
	return nil
}

func (c *Client) markReady() { c.readyOnce.Do(func() { close(c.ready) }) }

// withTimeout applies the client's timeout to ctx when it has no deadline.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.o.timeout)
}

// request sends body to subject, carrying ctx's trace context, and decodes
// the token or the error in the reply.
func (c *Client) request(ctx context.Context, op, provider, subject string, body []byte) (Token, error) {
	tok, _, err := c.requestRev(ctx, op, provider, subject, body)
	return tok, err
}

// requestRev is request that also returns the KV revision in the reply's
// wire.HeaderRevision (0 if none).
func (c *Client) requestRev(ctx context.Context, op, provider, subject string, body []byte) (tok Token, rev uint64, err error) {
	if !wire.ValidName(provider) {
		return Token{}, 0, fmt.Errorf("%w: %s: provider name %q is not valid", ErrBadRequest, op, provider)
	}
	parent := ctx
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	ctx, span := c.tracer.Start(ctx, op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.destination.name", subject),
		attribute.String("tokenbus.provider", provider),
	))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	msg := nats.NewMsg(subject)
	msg.Data = body
	natstrace.Inject(ctx, msg)
	reply, err := c.requestMsg(ctx, msg)
	if err != nil {
		return Token{}, 0, requestError(op, provider, parent, err)
	}
	if err := replyError(op, provider, reply.Header); err != nil {
		return Token{}, 0, err
	}
	if err := json.Unmarshal(reply.Data, &tok); err != nil {
		return Token{}, 0, fmt.Errorf("tokenclient: %s %s: malformed reply: %w", op, provider, err)
	}
	if tok.AccessToken == "" {
		return Token{}, 0, fmt.Errorf("tokenclient: %s %s: reply has no access_token", op, provider)
	}
	if tok.Expired(time.Now()) {
		return Token{}, 0, &Error{Op: op, Provider: provider, Code: wire.CodeUnavailable, Message: "the refresher answered an expired token"}
	}
	rev, _ = strconv.ParseUint(reply.Header.Get(wire.HeaderRevision), 10, 64)
	return tok, rev, nil
}

// requestError maps a failed request: nobody listening, or no answer within
// the client's timeout, is ErrUnavailable; a closed connection ErrClosed. The
// error of the caller's ctx is wrapped as it is.
func requestError(op, provider string, parent context.Context, err error) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("tokenclient: %s %s: no refresher is answering: %w: %w", op, provider, ErrUnavailable, err)
	case parent.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)):
		return fmt.Errorf("tokenclient: %s %s: no answer in time: %w: %w", op, provider, ErrUnavailable, err)
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("tokenclient: %s %s: %w: %w", op, provider, ErrClosed, err)
	default:
		return fmt.Errorf("tokenclient: %s %s: %w", op, provider, err)
	}
}

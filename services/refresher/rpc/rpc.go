// Package rpc is the refresher's request-reply surface: one NATS micro service
// named "tokenbus" with the endpoints token.get.* and token.refresh.* in one
// queue group (SPEC §3). It maps domain errors to wire error codes once, here,
// and answers token.get from memory on the endpoint's goroutine; anything that
// may wait (a refresh, a single-use claim, a read of the bucket when memory
// has no valid token) runs on its own goroutine so that it never stalls
// other callers.
package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/time/rate"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenbus/tokenbus/libs/tokenclient/natstrace"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// Source serves one provider's tokens as encoded wire.Token JSON.
type Source interface {
	// Get returns the token to hand out now. Unless the source is Blocking, it
	// must answer from memory without waiting.
	Get(ctx context.Context) ([]byte, error)
	// Refresh handles a report that invalid was rejected by the provider.
	Refresh(ctx context.Context, invalid string) ([]byte, error)
}

// Revisioned is implemented by sources of a shared token stored in the KV
// bucket. GetRevision is Get that also returns the KV revision the token was
// stored at (0 if it is not stored yet); token.get's reply carries it in
// header wire.HeaderRevision, so that a client following token.updates can
// order its read against the updates (SPEC §9). Single-use sources do not
// implement it: their replies carry no revision and are never cached.
type Revisioned interface {
	GetRevision(ctx context.Context) ([]byte, uint64, error)
}

// Fallback is implemented by a Revisioned source that can look further
// than memory when memory has no valid token (a read of the bucket, for a
// replica whose watch lags). The service calls Lookup only after
// GetRevision failed with refresher.ErrNoToken and LooksFurther reported
// true, and off the endpoint goroutine: the hot path stays in memory. When
// LooksFurther reports false (the lease holder, which takes nothing from the
// bucket its memory lacks) the miss is answered at once, with
// GetRevision's error, on the endpoint goroutine: no goroutine, no budget.
type Fallback interface {
	Revisioned
	LooksFurther() bool
	Lookup(ctx context.Context) ([]byte, uint64, error)
}

// Fresher is implemented by sources of a shared token that can answer a
// token.get with min_validity (SPEC §3): GetFresh returns a token valid for
// at least d — the current one, or one refreshed early — with its KV
// revision (0 if not stored yet), or an error wrapping refresher.ErrNoToken
// (503) if none can be had in time. The service calls it off the endpoint
// goroutine only when the current token does not live long enough.
type Fresher interface {
	GetFresh(ctx context.Context, d time.Duration) ([]byte, uint64, error)
}

// Blocking is implemented by sources whose Get may wait on the network (a
// single-use pool claims its token from JetStream); the service calls their
// Get off the endpoint goroutine.
type Blocking interface {
	Source
	Blocking() bool
}

// Config configures the service.
type Config struct {
	// Version is the service version reported by $SRV.INFO.
	Version string
	// Sources maps provider names to their sources.
	Sources map[string]Source
	// Lookup, if set, finds a provider's source instead of Sources: the set
	// of providers changes while the service runs (runtime providers). It
	// is called on the request path and must be cheap and safe for
	// concurrent use.
	Lookup func(name string) (Source, bool)
	// Status reports this replica's view for token.status: the summary of
	// every provider and the page the request asks for, as wire.Status.Page
	// cuts it (a small fleet may return all.Page(q)). The endpoint is not
	// registered when nil. The service cuts the page further to keep the
	// reply within one NATS message.
	Status func(q wire.StatusRequest) wire.Status
	// Registry serves tokenbus.providers.*; nil answers them 503 with a
	// how-to (runtime providers are off).
	Registry Registry
	// Timeout bounds a blocking request (refresh, single-use claim); 15s if zero.
	Timeout time.Duration
	// PutRate bounds how many runtime providers are stored per second,
	// through tokenbus.providers.put and put_many together: a request waits
	// its turn (at most Timeout, else 503 naming the bound); 0: no bound.
	PutRate int
	// MaxInFlight bounds the requests in flight of each budget — token.get,
	// single-use claims, token.refresh and tokenbus.providers.* have one
	// each, so that a flood on one leaves the others answering (SPEC §10);
	// 1024 if zero. Past it, callers of that budget get a 503 at once.
	MaxInFlight int
	Logger      *slog.Logger
	Tracer      trace.Tracer
	// Now returns the current time; time.Now if nil.
	Now func() time.Time
	// Recorder is told about every token.get and token.refresh answered
	// (metrics); nil records nothing.
	Recorder Recorder
}

// Recorder is told about every request answered: its endpoint ("token.get"
// or "token.refresh"), provider (as requested; it may not be configured), wire
// code (200 for success) and latency. It is called on the request path and
// must be cheap.
type Recorder interface {
	RecordRequest(endpoint, provider string, code int, took time.Duration)
}

// Endpoint names as given to Recorder and in span names.
const (
	EndpointGet     = "token.get"
	EndpointRefresh = "token.refresh"
)

// codeOK is the code recorded for a successful request.
const codeOK = 200

// Service is the running micro service.
type Service struct {
	cfg Config
	nc  *nats.Conn
	svc micro.Service
	log *slog.Logger
	tr  trace.Tracer
	// budgets bound the requests in flight, one per budget name (budgetOf).
	budgets map[string]chan struct{}
	// puts is Config.PutRate's limiter; nil without a bound.
	puts   *rate.Limiter
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// Start registers the tokenbus micro service on nc and returns once the
// server has its endpoints' subscriptions (a flush, at most 10 s).
func Start(nc *nats.Conn, cfg Config) (*Service, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if cfg.Version == "" {
		cfg.Version = "0.0.0"
	}
	s := &Service{cfg: cfg, nc: nc, log: cfg.Logger, tr: cfg.Tracer, budgets: map[string]chan struct{}{}}
	for _, b := range []string{budgetGet, budgetClaim, budgetRefresh, budgetProviders} {
		s.budgets[b] = make(chan struct{}, cfg.MaxInFlight)
	}
	if cfg.PutRate > 0 {
		// A put_many of the most providers must fit in one turn.
		s.puts = rate.NewLimiter(rate.Limit(cfg.PutRate), max(cfg.PutRate, wire.ProvidersPutManyMax))
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.tr == nil {
		s.tr = otel.Tracer("github.com/tokenbus/tokenbus/services/refresher/rpc")
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	names := make([]string, 0, len(cfg.Sources))
	for n := range cfg.Sources {
		names = append(names, n)
	}
	slices.Sort(names)
	svc, err := micro.AddService(nc, micro.Config{
		Name:        wire.ServiceName,
		Version:     cfg.Version,
		Description: "tokenbus: payment-provider access tokens for the fleet",
		QueueGroup:  wire.QueueGroup,
		Metadata:    map[string]string{"providers": strings.Join(names, ","), "version": cfg.Version},
	})
	if err != nil {
		return nil, fmt.Errorf("rpc: add service: %w", err)
	}
	s.svc = svc
	add := func(name, subject string, h micro.HandlerFunc) error {
		return svc.AddEndpoint(name, s.inboxOnly(h), micro.WithEndpointSubject(subject),
			micro.WithEndpointMetadata(map[string]string{"subject": subject}))
	}
	if err := add("get", wire.GetPrefix+"*", s.handleGet); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("rpc: add endpoint get: %w", err)
	}
	if err := add("refresh", wire.RefreshPrefix+"*", s.handleRefresh); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("rpc: add endpoint refresh: %w", err)
	}
	if err := s.addProviders(); err != nil {
		_ = svc.Stop()
		return nil, err
	}
	if cfg.Status != nil {
		err := svc.AddEndpoint("status", s.inboxOnly(s.handleStatus),
			micro.WithEndpointSubject(wire.StatusSubject), micro.WithEndpointQueueGroupDisabled(),
			micro.WithEndpointMetadata(map[string]string{"subject": wire.StatusSubject}))
		if err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("rpc: add endpoint status: %w", err)
		}
	}
	// Return once the server has the endpoints' subscriptions, so that a
	// request sent right after Start, on any connection, finds a responder.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("rpc: registering the endpoints: %w", err)
	}
	return s, nil
}

// Micro returns the underlying micro service (for Info and Stats).
func (s *Service) Micro() micro.Service { return s.svc }

// Stop stops answering and waits for requests in flight to finish.
func (s *Service) Stop() error {
	err := s.svc.Stop()
	s.cancel()
	s.wg.Wait()
	return err
}

// lookup finds name's source.
func (s *Service) lookup(name string) (Source, bool) {
	if s.cfg.Lookup != nil {
		return s.cfg.Lookup(name)
	}
	src, ok := s.cfg.Sources[name]
	return src, ok
}

func (s *Service) handleGet(req micro.Request) {
	c := s.begin(req, EndpointGet, wire.GetPrefix)
	src, ok := s.lookup(c.provider)
	if !ok {
		s.fail(c, req.Reply(), req, refresher.ErrUnknownProvider)
		return
	}
	minValidity, err := parseGet(req.Data())
	if err != nil {
		s.fail(c, req.Reply(), req, err)
		return
	}
	if b, ok := src.(Blocking); ok && b.Blocking() {
		if req.Reply() == "" {
			// No one would receive it: a single-use token claimed now
			// would be lost.
			s.end(c, wire.CodeBadRequest)
			return
		}
		c.claim = true
		s.async(c, req.Reply(), func(ctx context.Context) ([]byte, error) {
			body, err := src.Get(ctx)
			if err == nil && minValidity > 0 && !lastsFor(body, s.now(), minValidity) {
				return nil, fmt.Errorf("%w: the single-use token claimed expires sooner", refresher.ErrMinValidity)
			}
			return body, err
		})
		return
	}
	if f, ok := src.(Fresher); ok && minValidity > 0 {
		if r, ok := src.(Revisioned); !ok || !s.fresh(c.ctx, r, minValidity) {
			s.asyncRev(c, req.Reply(), func(ctx context.Context) ([]byte, uint64, error) { return f.GetFresh(ctx, minValidity) })
			return
		}
	}
	var (
		body []byte
		rev  uint64
	)
	if r, ok := src.(Revisioned); ok {
		body, rev, err = r.GetRevision(c.ctx)
	} else {
		body, err = src.Get(c.ctx)
	}
	if err == nil && minValidity > 0 && !lastsFor(body, s.now(), minValidity) {
		// A source that cannot refresh early (it is no Fresher).
		err = fmt.Errorf("%w: the current token expires sooner", refresher.ErrMinValidity)
	}
	if err != nil {
		if fb, ok := src.(Fallback); ok && errors.Is(err, refresher.ErrNoToken) && req.Reply() != "" && fb.LooksFurther() {
			s.asyncRev(c, req.Reply(), fb.Lookup)
			return
		}
		s.fail(c, req.Reply(), req, err)
		return
	}
	if rev > 0 {
		err = req.Respond(body, micro.WithHeaders(micro.Headers{wire.HeaderRevision: {strconv.FormatUint(rev, 10)}}))
	} else {
		err = req.Respond(body)
	}
	s.answered(c, err)
}

// parseGet reads a token.get body: empty, {} or {"min_validity":"30s"}
// (other fields are ignored, for requests from newer clients). It returns
// the minimum validity asked for, 0 if none.
func parseGet(b []byte) (time.Duration, error) {
	if !emptyOrObject(b) {
		return 0, fmt.Errorf(`%w: token.get takes an empty body, {} or {"min_validity":"30s"}`, refresher.ErrBadRequest)
	}
	if !bytes.Contains(b, []byte("min_validity")) {
		return 0, nil // the hot path: no decoding
	}
	var req struct {
		MinValidity json.RawMessage `json:"min_validity"`
	}
	if err := json.Unmarshal(b, &req); err != nil || len(req.MinValidity) == 0 {
		return 0, nil
	}
	var v string
	if err := json.Unmarshal(req.MinValidity, &v); err != nil {
		return 0, fmt.Errorf(`%w: min_validity: must be a duration string such as "30s"`, refresher.ErrBadRequest)
	}
	d, err := wire.ParseMinValidity(v)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", refresher.ErrBadRequest, err)
	}
	return d, nil
}

// fresh reports whether src's current token is valid for at least d.
func (s *Service) fresh(ctx context.Context, src Revisioned, d time.Duration) bool {
	body, _, err := src.GetRevision(ctx)
	return err == nil && lastsFor(body, s.now(), d)
}

// lastsFor reports whether the token JSON body stays valid until now+d,
// keeping the refresher's expiry margin (min(1 s, a tenth of its life)).
func lastsFor(body []byte, now time.Time, d time.Duration) bool {
	var tok wire.Token
	if json.Unmarshal(body, &tok) != nil {
		return false
	}
	margin := min(time.Second, tok.ExpiresAt.Sub(tok.IssuedAt)/10)
	return !tok.Expired(now.Add(d + margin))
}

// now returns the service's current time.
func (s *Service) now() time.Time {
	if s.cfg.Now != nil {
		return s.cfg.Now()
	}
	return time.Now()
}

func (s *Service) handleRefresh(req micro.Request) {
	c := s.begin(req, EndpointRefresh, wire.RefreshPrefix)
	src, ok := s.lookup(c.provider)
	if !ok {
		s.fail(c, req.Reply(), req, refresher.ErrUnknownProvider)
		return
	}
	var r wire.RefreshRequest
	if err := json.Unmarshal(req.Data(), &r); err != nil || r.InvalidToken == "" {
		s.fail(c, req.Reply(), req, fmt.Errorf(`%w: token.refresh takes {"invalid_token":"<rejected token>"}`, refresher.ErrBadRequest))
		return
	}
	s.async(c, req.Reply(), func(ctx context.Context) ([]byte, error) { return src.Refresh(ctx, r.InvalidToken) })
}

// async runs fn on its own goroutine and publishes the reply itself: micro's
// Request must not be used once the handler has returned.
func (s *Service) async(c call, reply string, fn func(context.Context) ([]byte, error)) {
	s.asyncRev(c, reply, func(ctx context.Context) ([]byte, uint64, error) {
		b, err := fn(ctx)
		return b, 0, err
	})
}

// asyncRev is async for a reply that carries the token's revision (header
// wire.HeaderRevision) when it is not 0.
func (s *Service) asyncRev(c call, reply string, fn func(context.Context) ([]byte, uint64, error)) {
	name := budgetOf(c)
	sem := s.budgets[name]
	select {
	case sem <- struct{}{}:
	default:
		s.fail(c, reply, nil, &busyError{budget: name})
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-sem }()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), s.cfg.Timeout)
		defer cancel()
		stop := context.AfterFunc(s.ctx, cancel)
		defer stop()
		body, rev, err := fn(ctx)
		if err != nil {
			s.fail(c, reply, nil, err)
			return
		}
		if reply != "" {
			msg := &nats.Msg{Subject: reply, Data: body}
			if rev > 0 {
				msg.Header = nats.Header{wire.HeaderRevision: {strconv.FormatUint(rev, 10)}}
			}
			err = s.nc.PublishMsg(msg)
		}
		s.answered(c, err)
	}()
}

// answered ends c once its token reply was published (err nil: 200). A
// reply that could not be published (the connection closed, a payload past
// the server's limit) was not answered: it is recorded as 503, not 200,
// and logged; for a single-use claim the token claimed for it is lost
// (never handed out twice: it left the pool before the reply).
func (s *Service) answered(c call, err error) {
	if err == nil {
		s.end(c, codeOK)
		return
	}
	code := wire.CodeUnavailable
	msg := "reply not sent"
	if c.claim {
		msg = "reply not sent: the single-use token claimed for it is lost"
	}
	c.span.SetAttributes(keyErrorCode.Int(code))
	c.span.SetStatus(codes.Error, msg)
	s.log.LogAttrs(c.ctx, slog.LevelWarn, msg, slog.String("endpoint", c.endpoint),
		slog.String("provider", c.provider), slog.String("error", err.Error()))
	s.end(c, code)
}

// call is one request in progress.
type call struct {
	ctx      context.Context
	span     trace.Span
	endpoint string
	provider string
	start    time.Time
	// claim marks a single-use claim (token.get of a Blocking source).
	claim bool
}

// The in-flight budgets (Config.MaxInFlight each).
const (
	budgetGet       = "token.get"
	budgetClaim     = "single-use claim"
	budgetRefresh   = "token.refresh"
	budgetProviders = "tokenbus.providers"
)

// rateError is the answer to a put that could not have its turn within
// the request timeout (Config.PutRate): 503, naming the bound.
type rateError struct{ rate int }

func (e *rateError) Error() string {
	return fmt.Sprintf("rpc: not stored: onboarding at this replica's bound of %d providers a second (credentials.put_rate); put it again shortly", e.rate)
}

// waitPutTurn waits until n more providers may be stored (Config.PutRate),
// at most the request timeout: a *rateError if that is too long.
func (s *Service) waitPutTurn(n int) error {
	if s.puts == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	if err := s.puts.WaitN(ctx, n); err != nil {
		return &rateError{rate: s.cfg.PutRate}
	}
	return nil
}

// busyError is the answer past a budget's bound: 503, naming the budget.
type busyError struct{ budget string }

func (e *busyError) Error() string {
	return fmt.Sprintf("rpc: too many %s requests in flight; retry shortly", e.budget)
}

func (e *busyError) Unwrap() error { return refresher.ErrNoToken }

// budgetOf names the budget a call counts against.
func budgetOf(c call) string {
	switch {
	case c.claim:
		return budgetClaim
	case c.endpoint == EndpointRefresh:
		return budgetRefresh
	case strings.HasPrefix(c.endpoint, "tokenbus.providers."):
		return budgetProviders
	}
	return budgetGet
}

// Span attributes of the server spans (OpenTelemetry messaging semantic
// conventions, plus the provider).
var (
	attrSystem     = semconv.MessagingSystemKey.String("nats")
	attrGroup      = semconv.MessagingConsumerGroupName(wire.QueueGroup)
	keyProvider    = attribute.Key("tokenbus.provider")
	keyErrorCode   = attribute.Key("tokenbus.error_code")
	spanKindServer = trace.WithSpanKind(trace.SpanKindServer)
)

// begin starts the server span for req, continuing the caller's trace from
// the W3C trace context in its headers. Attributes are set only on spans
// that record, so an unsampled request allocates nothing for them.
func (s *Service) begin(req micro.Request, endpoint, prefix string) call {
	c := call{endpoint: endpoint, provider: strings.TrimPrefix(req.Subject(), prefix), start: time.Now()}
	ctx := natstrace.Extract(context.Background(), nats.Header(req.Headers()))
	c.ctx, c.span = s.tr.Start(ctx, endpoint, spanKindServer)
	if c.span.IsRecording() {
		c.span.SetAttributes(
			attrSystem,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingOperationName(endpoint),
			semconv.MessagingDestinationName(req.Subject()),
			semconv.MessagingDestinationTemplate(prefix+"*"),
			semconv.MessagingMessageBodySize(len(req.Data())),
			attrGroup,
			keyProvider.String(c.provider),
		)
	}
	return c
}

// end ends c's span and records it.
func (s *Service) end(c call, code int) {
	c.span.End()
	// The providers endpoints are counted by micro's $SRV.STATS only.
	if s.cfg.Recorder != nil && (c.endpoint == EndpointGet || c.endpoint == EndpointRefresh) {
		s.cfg.Recorder.RecordRequest(c.endpoint, c.provider, code, time.Since(c.start))
	}
}

// fail answers with the wire error for err. With req it answers through micro
// (so its stats count the error); without, it publishes to reply directly.
func (s *Service) fail(c call, reply string, req micro.Request, err error) {
	code, msg := Code(c.provider, err)
	c.span.SetAttributes(keyErrorCode.Int(code))
	c.span.SetStatus(codes.Error, msg)
	s.log.LogAttrs(c.ctx, slog.LevelDebug, "request failed", slog.String("endpoint", c.endpoint),
		slog.String("provider", c.provider), slog.Int("code", code), slog.String("error", msg))
	defer s.end(c, code)
	body, _ := json.Marshal(wire.ErrorBody{Error: wire.ErrorDetail{Code: code, Message: msg}})
	cs := fmt.Sprint(code)
	var extra micro.Headers
	if wait := RetryAfter(err); wait > 0 {
		extra = micro.Headers{wire.HeaderRetryAfter: {strconv.Itoa(refresher.RetryAfterSeconds(wait))}}
	}
	if req != nil {
		_ = req.Error(cs, msg, body, micro.WithHeaders(extra))
		return
	}
	if reply == "" {
		return
	}
	h := nats.Header{wire.HeaderErrorCode: {cs}, wire.HeaderError: {msg}}
	for k, v := range extra {
		h[k] = v
	}
	if err := s.nc.PublishMsg(&nats.Msg{Subject: reply, Data: body, Header: h}); err != nil {
		s.log.LogAttrs(c.ctx, slog.LevelWarn, "error reply not sent", slog.String("endpoint", c.endpoint),
			slog.String("provider", c.provider), slog.Int("code", code), slog.String("error", err.Error()))
	}
}

// Code maps a domain error to its wire code and message (SPEC §3): unknown
// provider 404, bad request 400, a provider that refused (a permanent provider
// error, message carrying the provider's own code) 502, no valid token 503.
func Code(provider string, err error) (int, string) {
	var (
		pe *refresher.ProviderError
		re *refresher.RemoteError
	)
	var (
		ce *refresher.CooldownError
		be *busyError
		se *storeError
		te *rateError
	)
	switch {
	case errors.As(err, &te):
		return wire.CodeUnavailable, fmt.Sprintf("%s: %s", provider, strings.TrimPrefix(te.Error(), "rpc: "))
	case errors.As(err, &se):
		return wire.CodeUnavailable, fmt.Sprintf("%s: %s", provider, se.Error())
	case errors.As(err, &be):
		return wire.CodeUnavailable, fmt.Sprintf("%s: %s", provider, strings.TrimPrefix(be.Error(), "rpc: "))
	case errors.As(err, &re):
		return re.Code, re.Message
	case errors.As(err, &ce):
		return wire.CodeTooManyRequests, fmt.Sprintf("%s: %s", provider, strings.TrimPrefix(ce.Error(), "refresher: "))
	case errors.Is(err, refresher.ErrUnknownProvider):
		return wire.CodeUnknownProvider, fmt.Sprintf("unknown provider %q", provider)
	case errors.Is(err, refresher.ErrBadRequest):
		return wire.CodeBadRequest, strings.TrimPrefix(err.Error(), "refresher: ")
	case errors.Is(err, refresher.ErrConflict):
		return wire.CodeConflict, strings.TrimPrefix(err.Error(), "refresher: ")
	case errors.Is(err, refresher.ErrRuntimeOff):
		return wire.CodeUnavailable, strings.TrimPrefix(err.Error(), "refresher: ")
	case errors.Is(err, refresher.ErrMinValidity):
		return wire.CodeUnavailable, fmt.Sprintf("%s: %s", provider, strings.TrimPrefix(err.Error(), "refresher: "))
	case errors.As(err, &pe) && pe.Kind == refresher.Permanent:
		return wire.CodeProviderFailed, fmt.Sprintf("%s: %s", provider, pe.Error())
	case errors.As(err, &pe):
		return wire.CodeUnavailable, fmt.Sprintf("%s: no valid token available: provider unavailable (%s)", provider, pe.Error())
	default:
		return wire.CodeUnavailable, fmt.Sprintf("%s: no valid token available yet", provider)
	}
}

// RetryAfter is how long err asks the caller to wait (a refresh cooldown,
// here or on the leader a refresh was forwarded to); 0 if it does not.
func RetryAfter(err error) time.Duration {
	var (
		ce *refresher.CooldownError
		re *refresher.RemoteError
	)
	switch {
	case errors.As(err, &ce):
		return ce.RetryAfter
	case errors.As(err, &re):
		return re.RetryAfter
	}
	return 0
}

// emptyOrObject reports whether b is empty, blank or a JSON object.
func emptyOrObject(b []byte) bool {
	for i, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return json.Valid(b[i:])
		default:
			return false
		}
	}
	return true
}

// inboxOnly drops a request whose reply subject is not an inbox. A NATS
// service publishes its reply wherever the request says, with the service's
// own permissions: without this check a client allowed only token.get.A
// could name $KV.<bucket>.B, or a JetStream API subject, as its reply
// subject and have the refresher write a forged token or manage a stream on
// its behalf (a confused deputy). Every NATS client's replies go to an inbox
// (_INBOX. by default, _INBOX_<user>. with a private prefix, SPEC §10); a
// request imported from another NATS account (deploy/nats/auth.conf) carries
// the reply subject nats-server mapped it to, _R_.<id>.<id>, which leads back
// to the requester's own account only. The server enforces the same with the
// shipped roles; this is the second wall.
func (s *Service) inboxOnly(h micro.HandlerFunc) micro.HandlerFunc {
	return func(req micro.Request) {
		if !ReplyAllowed(req.Reply()) {
			s.log.Warn("request dropped: its reply subject is not an inbox", slog.String("subject", req.Subject()), slog.String("reply", req.Reply()))
			return
		}
		h(req)
	}
}

// ReplyAllowed reports whether the refresher may answer at reply: an inbox
// (wire.IsInbox) or the reply subject of a service import (_R_. and at
// least one more token, no wildcard).
func ReplyAllowed(reply string) bool {
	if wire.IsInbox(reply) {
		return true
	}
	rest, ok := strings.CutPrefix(reply, "_R_.")
	if !ok || rest == "" {
		return false
	}
	for tok := range strings.SplitSeq(rest, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return false
		}
	}
	return true
}

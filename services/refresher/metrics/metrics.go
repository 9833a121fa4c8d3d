// Package metrics owns the refresher's metric instruments, recorded through
// the OpenTelemetry metrics API (the SDK and the Prometheus exporter live in
// package telemetry). Every label value is a configured provider name, an
// endpoint name, an outcome or a wire code from a fixed set: never a request
// subject, a credential or a token. Names as Prometheus shows them:
//
//	tokenbus_refreshes_total{provider,outcome}          upstream token requests; outcome ok|transient|permanent
//	tokenbus_upstream_duration_seconds{provider}        upstream token request latency (histogram)
//	tokenbus_token_expires_in_seconds{provider}         seconds until the current token expires (negative: expired)
//	tokenbus_requests_total{endpoint,provider,code}     token.get / token.refresh requests by wire code (200 for success)
//	tokenbus_request_duration_seconds{endpoint,provider,code}  their latency (histogram)
//	tokenbus_pool_size{provider}                        single-use tokens ready to hand out
//	tokenbus_leader                                     1 while this replica holds the lease, else 0
//	tokenbus_lease_renewal_failures_total               failed lease renewals
//	tokenbus_foreign_writes_total{provider}             token writes the leader did not make (replaced at once)
//	tokenbus_tokens_discarded_total{reason}             tokens a provider issued that were never published (reasons: DiscardReasons)
//	tokenbus_providers{state}                           providers served, by state (ok, failing, no_token)
//	tokenbus_refresh_failures_total{provider,cause}     failed upstream token requests by cause (wire.Causes)
//	tokenbus_events_total{provider,type}                provider events published (token.events.<provider>)
//	tokenbus_provider_condition{provider,condition}     1 for the provider's condition (wire.Conditions), else 0
//	tokenbus_providers_by_condition{condition}          providers served, by condition
//	tokenbus_token_lifetime_seconds{provider}           the current token's lifetime (expires_at - issued_at)
//
// Series per provider are bounded (docs/observability.md): the first
// MaxProviderSeries config-file providers have their own provider label;
// every other served provider (the rest of a large file, and every runtime
// provider) is counted under provider="_other", and has no expiry or pool
// gauge of its own. tokenbus_providers{state} and token.status
// {"state":"failing"} find the ones in trouble.
//
// Recording is cheap on the request path: attribute sets and options are built
// once per provider, endpoint and code, so a request costs a map lookup and
// two instrument updates, and allocates nothing.
package metrics

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// ScopeName is the instrumentation scope of every instrument.
const ScopeName = "github.com/tokenbus/tokenbus/services/refresher/metrics"

// Label keys.
const (
	// KeyProvider labels a configured provider name.
	KeyProvider = attribute.Key("provider")
	// KeyOutcome labels an upstream attempt: OutcomeOK, OutcomeTransient or
	// OutcomePermanent.
	KeyOutcome = attribute.Key("outcome")
	// KeyEndpoint labels a request endpoint: EndpointGet or EndpointRefresh.
	KeyEndpoint = attribute.Key("endpoint")
	// KeyCode labels a request's wire code: 200 for success, else 400, 404,
	// 502 or 503.
	KeyCode = attribute.Key("code")
)

// Label values.
const (
	OutcomeOK        = "ok"
	OutcomeTransient = "transient"
	OutcomePermanent = "permanent"
	EndpointGet      = "token.get"
	EndpointRefresh  = "token.refresh"
	// UnknownProvider labels requests for a provider that is not configured,
	// so that callers cannot create label values at will. It is not a valid
	// provider name.
	UnknownProvider = "_unknown"
	// OtherProviders labels the providers served past MaxProviderSeries and
	// every runtime provider. It is not a valid provider name.
	OtherProviders = "_other"
	// CodeOK is the code label of a successful request.
	CodeOK = 200
	// KeyCause labels a failed upstream request's cause (wire.Causes).
	KeyCause = attribute.Key("cause")
	// KeyType labels an event's type (wire.EventTypes).
	KeyType = attribute.Key("type")
	// KeyCondition labels a provider's condition (wire.Conditions).
	KeyCondition = attribute.Key("condition")
)

// MaxProviderSeries is how many providers have series of their own.
const MaxProviderSeries = 100

// codes are the wire codes a request can end with, in label order.
var codes = [...]int{CodeOK, wire.CodeBadRequest, wire.CodeUnknownProvider, wire.CodeProviderFailed, wire.CodeUnavailable}

var endpoints = [...]string{EndpointGet, EndpointRefresh}

// Latency buckets: the request path answers in microseconds, provider calls
// take tens of milliseconds to seconds.
var (
	requestBuckets  = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15}
	upstreamBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// Metrics records the refresher's metrics. Its methods are safe for
// concurrent use and do nothing on a nil *Metrics.
type Metrics struct {
	refreshes  metric.Int64Counter
	upstream   metric.Float64Histogram
	requests   metric.Int64Counter
	reqLatency metric.Float64Histogram
	renewals   metric.Int64Counter
	foreign    metric.Int64Counter
	discarded  metric.Int64Counter
	discardOpt map[string]metric.AddOption
	failures   metric.Int64Counter
	events     metric.Int64Counter
	leader     atomic.Int64

	providers map[string]*providerOpts
	unknown   *providerOpts
	other     *providerOpts
	known     atomic.Pointer[func(string) bool]
	noAttrs   metric.AddOption
	// summary counts every provider served by state and condition.
	summary atomic.Pointer[func() wire.StatusSummary]
	gStates metric.Int64ObservableGauge

	mu      sync.Mutex
	expiry  []expirySource
	pools   []poolSource
	regs    []metric.Registration
	gExpiry metric.Float64ObservableGauge
	gPool   metric.Int64ObservableGauge
	gLife   metric.Float64ObservableGauge
	gCond   metric.Int64ObservableGauge
	gConds  metric.Int64ObservableGauge
	conds   []conditionSource
}

type conditionSource struct {
	attrs []metric.ObserveOption // by wire.Conditions
	fn    func() string
}

type expirySource struct {
	provider string
	attrs    metric.ObserveOption
	fn       func() (time.Time, bool)
	life     func() (time.Duration, bool)
}

type poolSource struct {
	provider string
	attrs    metric.ObserveOption
	fn       func() int
}

// providerOpts are one provider's pre-built measurement options.
type providerOpts struct {
	name     string
	set      attribute.Set
	outcome  [3][]metric.AddOption // by outcome: ok, transient, permanent
	upstream []metric.RecordOption // {provider}
	reqAdd   [2][len(codes)][]metric.AddOption
	reqRec   [2][len(codes)][]metric.RecordOption
	cause    map[string][]metric.AddOption // by wire.Causes
	event    map[string][]metric.AddOption // by wire.EventTypes
}

func newProviderOpts(name string) *providerOpts {
	p := &providerOpts{name: name, set: attribute.NewSet(KeyProvider.String(name))}
	for i, o := range [...]string{OutcomeOK, OutcomeTransient, OutcomePermanent} {
		p.outcome[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(KeyProvider.String(name), KeyOutcome.String(o)))}
	}
	p.upstream = []metric.RecordOption{metric.WithAttributeSet(p.set)}
	p.cause, p.event = make(map[string][]metric.AddOption, len(wire.Causes)), make(map[string][]metric.AddOption, len(wire.EventTypes))
	for _, c := range wire.Causes {
		p.cause[c] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(KeyProvider.String(name), KeyCause.String(c)))}
	}
	for _, t := range wire.EventTypes {
		p.event[t] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(KeyProvider.String(name), KeyType.String(t)))}
	}
	for e, ep := range endpoints {
		for c, code := range codes {
			opt := metric.WithAttributeSet(attribute.NewSet(KeyEndpoint.String(ep), KeyProvider.String(name), KeyCode.String(strconv.Itoa(code))))
			p.reqAdd[e][c], p.reqRec[e][c] = []metric.AddOption{opt}, []metric.RecordOption{opt}
		}
	}
	return p
}

// New creates the instruments on mp (a no-op provider if nil) for the
// configured providers. The leader gauge starts at 0.
func New(mp metric.MeterProvider, providers []string) (*Metrics, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	meter := mp.Meter(ScopeName)
	m := &Metrics{providers: make(map[string]*providerOpts, min(len(providers), MaxProviderSeries)),
		unknown: newProviderOpts(UnknownProvider), other: newProviderOpts(OtherProviders)}
	for _, p := range providers[:min(len(providers), MaxProviderSeries)] {
		m.providers[p] = newProviderOpts(p)
	}
	m.noAttrs = metric.WithAttributeSet(*attribute.EmptySet())
	var err error
	mk := func(e error) {
		if err == nil && e != nil {
			err = fmt.Errorf("metrics: %w", e)
		}
	}
	var e error
	m.refreshes, e = meter.Int64Counter("tokenbus.refreshes", metric.WithUnit("{refresh}"),
		metric.WithDescription("Upstream token requests by provider and outcome (ok, transient, permanent)."))
	mk(e)
	m.upstream, e = meter.Float64Histogram("tokenbus.upstream.duration", metric.WithUnit("s"),
		metric.WithDescription("Latency of upstream token requests, by provider."),
		metric.WithExplicitBucketBoundaries(upstreamBuckets...))
	mk(e)
	m.requests, e = meter.Int64Counter("tokenbus.requests", metric.WithUnit("{request}"),
		metric.WithDescription("token.get and token.refresh requests by endpoint, provider and wire code (200 for success)."))
	mk(e)
	m.reqLatency, e = meter.Float64Histogram("tokenbus.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Latency of token.get and token.refresh requests, from receipt to reply."),
		metric.WithExplicitBucketBoundaries(requestBuckets...))
	mk(e)
	m.renewals, e = meter.Int64Counter("tokenbus.lease.renewal_failures", metric.WithUnit("{failure}"),
		metric.WithDescription("Failed renewals of the leader lease."))
	mk(e)
	m.foreign, e = meter.Int64Counter("tokenbus.foreign_writes", metric.WithUnit("{write}"),
		metric.WithDescription("Token writes to a provider key that the leader did not make; each is replaced at once."))
	mk(e)
	m.discarded, e = meter.Int64Counter("tokenbus.tokens.discarded", metric.WithUnit("{token}"),
		metric.WithDescription("Tokens a provider issued that this replica could not publish or pool, by reason; each is also logged."))
	mk(e)
	m.discardOpt = map[string]metric.AddOption{}
	for _, r := range DiscardReasons {
		m.discardOpt[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", r)))
	}
	_, e = meter.Int64ObservableGauge("tokenbus.leader",
		metric.WithDescription("1 while this replica holds the leader lease and calls providers, else 0."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(m.leader.Load())
			return nil
		}))
	mk(e)
	m.gExpiry, e = meter.Float64ObservableGauge("tokenbus.token.expires_in", metric.WithUnit("s"),
		metric.WithDescription("Seconds until the current token expires, by provider; negative once expired, absent before the first token."))
	mk(e)
	m.gPool, e = meter.Int64ObservableGauge("tokenbus.pool.size", metric.WithUnit("{token}"),
		metric.WithDescription("Single-use tokens ready to hand out, by provider."))
	mk(e)
	m.gStates, e = meter.Int64ObservableGauge("tokenbus.providers", metric.WithUnit("{provider}"),
		metric.WithDescription("Providers served by this replica, by state (ok, failing, no_token)."))
	mk(e)
	m.failures, e = meter.Int64Counter("tokenbus.refresh_failures", metric.WithUnit("{failure}"),
		metric.WithDescription("Failed upstream token requests by provider and cause (timeout, 5xx, rejected_credentials, malformed, rate_limited, unreachable, other)."))
	mk(e)
	m.events, e = meter.Int64Counter("tokenbus.events", metric.WithUnit("{event}"),
		metric.WithDescription("Provider events published on token.events.<provider>, by provider and type."))
	mk(e)
	m.gLife, e = meter.Float64ObservableGauge("tokenbus.token.lifetime", metric.WithUnit("s"),
		metric.WithDescription("The current token's lifetime (expires_at - issued_at), by provider; absent before the first token."))
	mk(e)
	m.gCond, e = meter.Int64ObservableGauge("tokenbus.provider.condition",
		metric.WithDescription("1 for the provider's condition (starting, ok, retrying, credentials_rejected, expired), 0 for the others."))
	mk(e)
	m.gConds, e = meter.Int64ObservableGauge("tokenbus.providers.by_condition", metric.WithUnit("{provider}"),
		metric.WithDescription("Providers served by this replica, by condition (starting, ok, retrying, credentials_rejected, expired)."))
	mk(e)
	if err != nil {
		return nil, err
	}
	reg, err := meter.RegisterCallback(m.observe, m.gExpiry, m.gPool, m.gStates, m.gLife, m.gCond, m.gConds)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	m.regs = append(m.regs, reg)
	// Export the counters from the start, so rate() and alerts see a zero.
	m.renewals.Add(context.Background(), 0, m.noAttrs)
	// Per provider too: increase() over a counter that first appears at 1
	// sees no increase, so an alert on the first foreign write or failure
	// would never fire.
	for _, p := range append(slices.Collect(maps.Values(m.providers)), m.other) {
		for _, o := range p.cause {
			m.failures.Add(context.Background(), 0, o...)
		}
		m.foreign.Add(context.Background(), 0, metric.WithAttributeSet(p.set))
	}
	return m, nil
}

func (m *Metrics) observe(_ context.Context, o metric.Observer) error {
	m.mu.Lock()
	expiry, pools := m.expiry, m.pools
	m.mu.Unlock()
	now := time.Now()
	for _, s := range expiry {
		if at, ok := s.fn(); ok {
			o.ObserveFloat64(m.gExpiry, at.Sub(now).Seconds(), s.attrs)
		}
		if s.life != nil {
			if life, ok := s.life(); ok {
				o.ObserveFloat64(m.gLife, life.Seconds(), s.attrs)
			}
		}
	}
	m.mu.Lock()
	conds := m.conds
	m.mu.Unlock()
	for _, s := range conds {
		cur := s.fn()
		for i, c := range wire.Conditions {
			v := int64(0)
			if c == cur {
				v = 1
			}
			o.ObserveInt64(m.gCond, v, s.attrs[i])
		}
	}
	for _, s := range pools {
		o.ObserveInt64(m.gPool, int64(s.fn()), s.attrs)
	}
	if fn := m.summary.Load(); fn != nil {
		// One count of every provider for both gauges (with 100,000
		// providers a count is a walk of them all).
		sum := (*fn)()
		for i, st := range summaryStates {
			o.ObserveInt64(m.gStates, int64(sum.States[st]), stateAttrs[i])
		}
		for i, c := range wire.Conditions {
			o.ObserveInt64(m.gConds, int64(sum.Conditions[c]), conditionAttrs[i])
		}
	}
	return nil
}

// keyState labels tokenbus_providers.
var keyState = attribute.Key("state")

// summaryStates are the states tokenbus_providers reports; stateAttrs and
// conditionAttrs label each state and each of wire.Conditions.
var (
	summaryStates  = [...]string{wire.StateOK, wire.StateFailing, wire.StateNoToken}
	stateAttrs     = attrsOf(keyState, summaryStates[:])
	conditionAttrs = attrsOf(KeyCondition, wire.Conditions)
)

func attrsOf(k attribute.Key, values []string) []metric.ObserveOption {
	out := make([]metric.ObserveOption, len(values))
	for i, v := range values {
		out[i] = metric.WithAttributes(k.String(v))
	}
	return out
}

func (m *Metrics) opts(provider string) *providerOpts {
	if p, ok := m.providers[provider]; ok {
		return p
	}
	if fn := m.known.Load(); fn != nil && (*fn)(provider) {
		return m.other
	}
	return m.unknown
}

// SetKnown tells the metrics which provider names are served besides those
// given to New (runtime providers): they are labelled OtherProviders, and
// any other name UnknownProvider. known is called on the request path.
func (m *Metrics) SetKnown(known func(string) bool) {
	if m == nil {
		return
	}
	m.known.Store(&known)
}

// RegisterSummary reports tokenbus_providers{state} and
// tokenbus_providers_by_condition{condition} on every collection: fn counts
// the providers served by state and by condition (called once per
// collection).
func (m *Metrics) RegisterSummary(fn func() wire.StatusSummary) {
	if m == nil {
		return
	}
	m.summary.Store(&fn)
}

// hasSeries reports whether provider has series of its own.
func (m *Metrics) hasSeries(provider string) bool {
	_, ok := m.providers[provider]
	return ok
}

// TrackExpiry reports provider's token expiry on every collection: fn returns
// the current token's expiry, or false when there is none.
func (m *Metrics) TrackExpiry(provider string, fn func() (expiresAt time.Time, ok bool)) {
	if m == nil || !m.hasSeries(provider) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expiry = append(slices.Clip(m.expiry), expirySource{provider, metric.WithAttributeSet(m.opts(provider).set), fn, nil})
}

// TrackToken reports provider's token expiry (as TrackExpiry) and its
// lifetime (tokenbus_token_lifetime_seconds) on every collection: fn returns
// the current token's issue and expiry times, or false when there is none.
func (m *Metrics) TrackToken(provider string, fn func() (issuedAt, expiresAt time.Time, ok bool)) {
	if m == nil || !m.hasSeries(provider) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expiry = append(slices.Clip(m.expiry), expirySource{provider, metric.WithAttributeSet(m.opts(provider).set),
		func() (time.Time, bool) { _, exp, ok := fn(); return exp, ok },
		func() (time.Duration, bool) { iss, exp, ok := fn(); return exp.Sub(iss), ok }})
}

// TrackCondition reports provider's condition in tokenbus_provider_condition
// on every collection: fn returns one of wire.Conditions.
func (m *Metrics) TrackCondition(provider string, fn func() string) {
	if m == nil || !m.hasSeries(provider) {
		return
	}
	src := conditionSource{fn: fn}
	for _, c := range wire.Conditions {
		src.attrs = append(src.attrs, metric.WithAttributeSet(attribute.NewSet(KeyProvider.String(provider), KeyCondition.String(c))))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.conds = append(slices.Clip(m.conds), src)
}

// Event counts one provider event published (tokenbus_events_total).
func (m *Metrics) Event(ev wire.Event) {
	if m == nil {
		return
	}
	if o, ok := m.opts(ev.Provider).event[ev.Type]; ok {
		m.events.Add(context.Background(), 1, o...)
	}
}

// RegisterPool reports provider's single-use pool size on every collection:
// fn returns the number of tokens ready to hand out.
func (m *Metrics) RegisterPool(provider string, fn func() int) {
	if m == nil || !m.hasSeries(provider) {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pools = append(slices.Clip(m.pools), poolSource{provider, metric.WithAttributeSet(m.opts(provider).set), fn})
}

// RecordAttempt records one refresh attempt of provider: its upstream token
// request took took, and the attempt (request and publication) failed with
// err, nil for success; err is classified by refresher.Classify into the
// outcome label.
func (m *Metrics) RecordAttempt(provider string, took time.Duration, err error) {
	if m == nil {
		return
	}
	p := m.opts(provider)
	i := 0
	if err != nil {
		i = 1
		if refresher.Classify(err) == refresher.Permanent {
			i = 2
		}
	}
	ctx := context.Background()
	m.refreshes.Add(ctx, 1, p.outcome[i]...)
	m.upstream.Record(ctx, took.Seconds(), p.upstream...)
	if err != nil {
		m.failures.Add(ctx, 1, p.cause[refresher.Cause(err)]...)
	}
}

// RecordRequest records one request to endpoint (EndpointGet or
// EndpointRefresh) for provider, answered with the wire code (CodeOK for
// success) after took. Unconfigured providers are labelled UnknownProvider.
func (m *Metrics) RecordRequest(endpoint, provider string, code int, took time.Duration) {
	if m == nil {
		return
	}
	p := m.opts(provider)
	e := 0
	if endpoint == EndpointRefresh {
		e = 1
	}
	c := slices.Index(codes[:], code)
	if c < 0 {
		c = len(codes) - 1 // any other failure is "unavailable"
	}
	ctx := context.Background()
	m.requests.Add(ctx, 1, p.reqAdd[e][c]...)
	m.reqLatency.Record(ctx, took.Seconds(), p.reqRec[e][c]...)
}

// SetLeader sets the leader gauge: 1 while this replica holds the lease.
func (m *Metrics) SetLeader(leader bool) {
	if m == nil {
		return
	}
	var v int64
	if leader {
		v = 1
	}
	m.leader.Store(v)
}

// LeaseRenewalFailed counts one failed renewal of the leader lease.
func (m *Metrics) LeaseRenewalFailed() {
	if m == nil {
		return
	}
	m.renewals.Add(context.Background(), 1, m.noAttrs)
}

// ForeignWrite counts one token write to provider's key that the leader did
// not make. Unconfigured providers are labelled UnknownProvider.
func (m *Metrics) ForeignWrite(provider string) {
	if m == nil {
		return
	}
	m.foreign.Add(context.Background(), 1, metric.WithAttributeSet(m.opts(provider).set))
}

// Reasons a token a provider issued was discarded (the reason label of
// tokenbus_tokens_discarded_total). docs/leadership.md says when each can
// happen.
const (
	// DiscardLeaseLost: the lease was lost (its deadline passed, or another
	// replica took it) between the provider's answer and the publish.
	DiscardLeaseLost = "lease_lost"
	// DiscardExpired: the token expired while its publish was being retried.
	DiscardExpired = "expired"
	// DiscardRemoved: the provider was removed while its token was being
	// fetched; it is not published for a provider that no longer exists.
	DiscardRemoved = "removed"
	// DiscardPublishFailed: a stop's bound ran out while the publish was
	// still failing (the bucket unreachable for the whole stop).
	DiscardPublishFailed = "publish_failed"
)

// DiscardReasons lists every reason label of tokenbus_tokens_discarded_total.
var DiscardReasons = []string{DiscardLeaseLost, DiscardExpired, DiscardRemoved, DiscardPublishFailed}

// TokenDiscarded counts one token a provider issued that was never
// published, for reason (one of DiscardReasons; any other counts as
// publish_failed, so the label set stays fixed).
func (m *Metrics) TokenDiscarded(reason string) {
	if m == nil {
		return
	}
	o, ok := m.discardOpt[reason]
	if !ok {
		o = m.discardOpt[DiscardPublishFailed]
	}
	m.discarded.Add(context.Background(), 1, o)
}

// Close unregisters the observable callbacks.
func (m *Metrics) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	for _, r := range m.regs {
		if e := r.Unregister(); e != nil && err == nil {
			err = e
		}
	}
	m.regs = nil
	return err
}

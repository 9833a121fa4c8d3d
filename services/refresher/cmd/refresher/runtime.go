package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// served is one provider this replica serves: from the config file or a
// runtime one from the credential bucket.
type served struct {
	name, kind, source string
	cred               string           // config.Provider.Credential
	src                rpc.Source       // token.get / token.refresh on any replica
	mgr                *refresh.Manager // shared-token providers; nil for pools
	st                 statuser
	loop               leader.Loop // the loop the lease holder runs for it
	// Runtime providers: the entry as stored, its revision, and whether a
	// secret is sealed with an older key.
	prov  config.Provider
	rev   uint64
	stale bool
}

// providerSet is every provider this replica serves. It changes while the
// refresher runs (runtime providers); lookups on the request path take a
// read lock.
type providerSet struct {
	mu      sync.RWMutex
	byName  map[string]*served
	config  []string  // config-file providers, in configuration order
	runtime []*served // runtime providers, by name (walked without a map lookup each)
	sorted  []string  // every provider, sorted (tokenbus.providers.list)
	// pending holds tokens seen in the bucket for a provider not (yet)
	// known here, so that a runtime provider added later starts from it and
	// a valid token is not fetched again. Expired ones are dropped.
	pending map[string]*refresh.Entry
	// removed is when each runtime provider was removed: a token of its
	// issued before then (published by its loop as it stopped) does not
	// seed a later provider of the same name.
	removed map[string]time.Time
	// byCred names the provider that uses each credential
	// (config.Provider.Credential): two may not share one.
	byCred map[string]string
	// stale counts the runtime providers sealed with an older key, so that
	// the re-sealer's tick does not scan every provider when none is.
	stale int
	// sumCache is the last count of every provider (status); a count that
	// took less than sumCacheMin is not reused.
	sumCache    summaryCache
	sumCacheMin time.Duration
}

func newProviderSet() *providerSet {
	return &providerSet{byName: map[string]*served{}, pending: map[string]*refresh.Entry{}, removed: map[string]time.Time{}, byCred: map[string]string{},
		sumCacheMin: summaryCacheMin}
}

// sharing returns the provider other than name that uses credential cred,
// or "".
func (ps *providerSet) sharing(name, cred string) string {
	if cred == "" {
		return ""
	}
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if other := ps.byCred[cred]; other != name {
		return other
	}
	return ""
}

func insertSorted(s []string, name string) []string {
	i, found := slices.BinarySearch(s, name)
	if found {
		return s
	}
	return slices.Insert(s, i, name)
}

// runtimeIndex finds the runtime provider name: its index, or where it
// would be inserted.
func (ps *providerSet) runtimeIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(ps.runtime, name, func(sv *served, name string) int { return strings.Compare(sv.name, name) })
}

func removeSorted(s []string, name string) []string {
	if i, found := slices.BinarySearch(s, name); found {
		return slices.Delete(s, i, i+1)
	}
	return s
}

// add makes sv served, replacing a runtime provider of that name, and
// returns the one it replaced (nil if none).
func (ps *providerSet) add(sv *served) *served {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	old := ps.byName[sv.name]
	ps.byName[sv.name] = sv
	if old != nil && ps.byCred[old.cred] == old.name {
		delete(ps.byCred, old.cred)
	}
	if sv.cred != "" {
		ps.byCred[sv.cred] = sv.name
	}
	delete(ps.removed, sv.name)
	if old != nil && old.stale {
		ps.stale--
	}
	if sv.stale {
		ps.stale++
	}
	if sv.source == wire.SourceRuntime {
		if i, found := ps.runtimeIndex(sv.name); found {
			ps.runtime[i] = sv
		} else {
			ps.runtime = slices.Insert(ps.runtime, i, sv)
		}
	}
	if old == nil {
		if sv.source == wire.SourceConfig {
			ps.config = append(ps.config, sv.name)
		}
		ps.sorted = insertSorted(ps.sorted, sv.name)
	}
	if e := ps.pending[sv.name]; e != nil && sv.mgr != nil {
		sv.mgr.Slot().Store(e)
	}
	delete(ps.pending, sv.name)
	return old
}

// remove stops serving the runtime provider name and returns it.
func (ps *providerSet) remove(name string) *served {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	sv := ps.byName[name]
	delete(ps.pending, name)
	if sv == nil || sv.source != wire.SourceRuntime {
		return nil
	}
	now := time.Now()
	for n, at := range ps.removed {
		if now.Sub(at) > 10*time.Minute {
			delete(ps.removed, n) // its last tokens have long been deleted
		}
	}
	ps.removed[name] = now
	if sv.stale {
		ps.stale--
	}
	if ps.byCred[sv.cred] == name {
		delete(ps.byCred, sv.cred)
	}
	delete(ps.byName, name)
	if i, found := ps.runtimeIndex(name); found {
		ps.runtime = slices.Delete(ps.runtime, i, i+1)
	}
	ps.sorted = removeSorted(ps.sorted, name)
	return sv
}

func (ps *providerSet) get(name string) *served {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return ps.byName[name]
}

// lookup finds name's source for token.get and token.refresh.
func (ps *providerSet) lookup(name string) (rpc.Source, bool) {
	ps.mu.RLock()
	sv := ps.byName[name]
	ps.mu.RUnlock()
	if sv == nil {
		return nil, false
	}
	return sv.src, true
}

// known reports whether name is served (metrics label it "_other", not
// "_unknown").
func (ps *providerSet) known(name string) bool { return ps.get(name) != nil }

// token stores a token seen in the bucket in its provider's slot, or keeps
// it for a provider not known yet.
func (ps *providerSet) token(tok wire.Token, rev uint64) {
	e, err := refresh.NewEntry(tok, rev)
	if err != nil {
		return
	}
	ps.mu.Lock()
	sv := ps.byName[tok.Provider]
	if at, ok := ps.removed[tok.Provider]; sv == nil && (!ok || tok.IssuedAt.After(at)) {
		if old := ps.pending[tok.Provider]; old == nil || old.Revision < rev {
			if old == nil && len(ps.pending)%1024 == 1023 {
				ps.dropExpiredLocked()
			}
			ps.pending[tok.Provider] = e
		}
	}
	ps.mu.Unlock()
	if sv != nil && sv.mgr != nil {
		sv.mgr.Slot().Store(e)
	}
}

// dropExpiredLocked forgets pending tokens that have expired (keys of
// providers never added: the map does not grow with every stray key).
func (ps *providerSet) dropExpiredLocked() {
	now := time.Now()
	for n, e := range ps.pending {
		if e.Token.Expired(now) {
			delete(ps.pending, n)
		}
	}
}

// briefer is a statuser that reports State and Condition without building
// its whole status (refresh.Manager); the others are asked for Status.
type briefer interface {
	Brief() (state, condition string)
}

// brief returns st's State and Condition.
func brief(st statuser) (state, condition string) {
	if b, ok := st.(briefer); ok {
		return b.Brief()
	}
	s := st.Status()
	return s.State, s.Condition
}

// statusChunk is how many providers each walks under one hold of the set's
// read lock: a put or delete waiting for the lock (and the token.get
// lookups queued behind it) wait for a chunk, never for a whole walk of
// 100,000 providers.
const statusChunk = 256

// each calls fn with the providers in page order (config-file providers in
// configuration order, then runtime providers by name) from the cfg-th
// config-file provider (none if cfg < 0), then the runtime providers named
// after after, until fn returns false. fn is told the provider's index
// among the config-file ones (-1 for a runtime one) and runs outside the
// lock: a provider added or removed during the walk may be missed or seen,
// never seen twice.
func (ps *providerSet) each(cfg int, after string, fn func(sv *served, cfg int) bool) {
	buf := make([]*served, 0, statusChunk)
	for i := cfg; i >= 0; {
		buf = buf[:0]
		ps.mu.RLock()
		n := len(ps.config)
		for ; i < n && len(buf) < statusChunk; i++ {
			buf = append(buf, ps.byName[ps.config[i]])
		}
		ps.mu.RUnlock()
		for j, sv := range buf {
			if !fn(sv, i-len(buf)+j) {
				return
			}
		}
		if i >= n {
			break
		}
	}
	for {
		buf = buf[:0]
		ps.mu.RLock()
		j, found := ps.runtimeIndex(after)
		if found {
			j++
		}
		buf = append(buf, ps.runtime[j:min(j+statusChunk, len(ps.runtime))]...)
		j += len(buf)
		more := j < len(ps.runtime)
		ps.mu.RUnlock()
		for _, sv := range buf {
			if !fn(sv, -1) {
				return
			}
		}
		if !more || len(buf) == 0 {
			return
		}
		after = buf[len(buf)-1].name
	}
}

// summaryCache keeps the last count of every provider by state and
// condition. A count that took at least summaryCacheMin is reused for ten
// times as long as it took (about 150 ms with 100,000 providers), so that
// token.status polled in a loop, the status page and /metrics spend at
// most about a tenth of a core counting; a smaller set is counted afresh
// every time.
type summaryCache struct {
	mu   sync.Mutex
	sum  wire.StatusSummary
	at   time.Time
	took time.Duration
}

// summaryCacheMin is the least counting time worth reusing a count for.
const summaryCacheMin = time.Millisecond

// counter counts providers by state and condition without a map operation
// per provider.
type counter struct {
	total  int
	states [3]int
	conds  [5]int
	other  map[string]int // states and conditions outside the lists
	otherC map[string]int
}

var (
	counterStates = [3]string{wire.StateOK, wire.StateFailing, wire.StateNoToken}
	counterConds  = [5]string{wire.ConditionStarting, wire.ConditionOK, wire.ConditionRetrying, wire.ConditionCredentialsRejected, wire.ConditionExpired}
)

func (c *counter) add(state, cond string) {
	c.total++
	if i := slices.Index(counterStates[:], state); i >= 0 {
		c.states[i]++
	} else {
		if c.other == nil {
			c.other = map[string]int{}
		}
		c.other[state]++
	}
	if cond == "" {
		return
	}
	if i := slices.Index(counterConds[:], cond); i >= 0 {
		c.conds[i]++
	} else {
		if c.otherC == nil {
			c.otherC = map[string]int{}
		}
		c.otherC[cond]++
	}
}

// summary returns the counts as wire.Status.Page reports them: every state
// seen, and Conditions only when a provider reports one.
func (c *counter) summary() wire.StatusSummary {
	sum := wire.StatusSummary{Total: c.total, States: map[string]int{}}
	for i, n := range c.states {
		if n > 0 {
			sum.States[counterStates[i]] = n
		}
	}
	maps.Copy(sum.States, c.other)
	for i, n := range c.conds {
		if n > 0 {
			if sum.Conditions == nil {
				sum.Conditions = map[string]int{}
			}
			sum.Conditions[counterConds[i]] = n
		}
	}
	if len(c.otherC) > 0 {
		if sum.Conditions == nil {
			sum.Conditions = map[string]int{}
		}
		maps.Copy(sum.Conditions, c.otherC)
	}
	return sum
}

// cachedSummary returns the last count if it may still be reused.
func (ps *providerSet) cachedSummary() (wire.StatusSummary, bool) {
	c := &ps.sumCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || c.took < ps.sumCacheMin || time.Since(c.at) >= 10*c.took {
		return wire.StatusSummary{}, false
	}
	return c.sum, true
}

func (ps *providerSet) storeSummary(sum wire.StatusSummary, at time.Time, took time.Duration) {
	c := &ps.sumCache
	c.mu.Lock()
	c.sum, c.at, c.took = sum, at, took
	c.mu.Unlock()
}

// summary counts every provider by state and condition
// (tokenbus_providers, tokenbus_providers_by_condition). The maps are
// shared: read them only.
func (ps *providerSet) summary() wire.StatusSummary {
	sum, _, _ := ps.status(wire.StatusRequest{}, false)
	return sum
}

// status returns what wire.Status.Page returns over every provider's
// status in page order — the summary of every provider (see summaryCache;
// its maps are shared: read them only), the page q asks for and the After
// of the next page — building the status of the providers of the page only
// (token.status polled every 50 ms with 100,000 providers built all of
// them). Without page, only the summary.
func (ps *providerSet) status(q wire.StatusRequest, page bool) (wire.StatusSummary, []wire.ProviderStatus, string) {
	limit := q.Limit
	if limit <= 0 || limit > wire.StatusPageMax {
		limit = wire.StatusPageMax
	}
	// Where the page starts: after the provider q.After names, or at the
	// beginning when no provider has that name.
	fromCfg, fromRuntime := 0, ""
	if q.After != "" {
		ps.mu.RLock()
		if sv := ps.byName[q.After]; sv != nil && sv.source == wire.SourceConfig {
			fromCfg = slices.Index(ps.config, q.After) + 1
		} else if sv != nil {
			fromCfg, fromRuntime = -1, q.After
		}
		ps.mu.RUnlock()
	}
	var picked []*served
	more := false
	// pick takes sv into the page if it matches; false once the page is
	// full and one more match shows a next page.
	pick := func(sv *served, state, cond string) bool {
		if !statusMatches(q, sv.name, state, cond) {
			return true
		}
		if len(picked) == limit {
			more = true
			return false
		}
		picked = append(picked, sv)
		return true
	}
	sum, ok := ps.cachedSummary()
	if !ok {
		// One walk counts every provider and picks the page.
		var c counter
		start := time.Now()
		ps.each(0, "", func(sv *served, cfg int) bool {
			state, cond := brief(sv.st)
			c.add(state, cond)
			if page && !more && (fromCfg >= 0 && cfg >= fromCfg || cfg < 0 && (fromCfg >= 0 || sv.name > fromRuntime)) {
				pick(sv, state, cond)
			}
			return true
		})
		sum = c.summary()
		ps.storeSummary(sum, start, time.Since(start))
	} else if page {
		// The page only: from its start to one match past its end.
		ps.each(fromCfg, fromRuntime, func(sv *served, _ int) bool {
			state, cond := brief(sv.st)
			return pick(sv, state, cond)
		})
	}
	if !page {
		return sum, nil, ""
	}
	out := make([]wire.ProviderStatus, 0, len(picked))
	for _, sv := range picked {
		// Its state may have moved since it was picked: the page shows
		// only what matches when built.
		if st := sv.st.Status(); statusMatches(q, st.Name, st.State, st.Condition) {
			out = append(out, st)
		}
	}
	next := ""
	if more {
		next = picked[len(picked)-1].name
	}
	return sum, out, next
}

// statusMatches reports whether a provider passes q's filter, as
// wire.Status.Page filters.
func statusMatches(q wire.StatusRequest, name, state, cond string) bool {
	return (q.Provider == "" || name == q.Provider) && (q.State == "" || state == q.State) &&
		(q.Condition == "" || cond == q.Condition) && (q.Search == "" || strings.Contains(name, q.Search))
}

// list pages every provider by name for tokenbus.providers.list.
func (ps *providerSet) list(after string, limit int) ([]wire.ProviderInfo, string) {
	ps.mu.RLock()
	i, _ := slices.BinarySearch(ps.sorted, after)
	if i < len(ps.sorted) && ps.sorted[i] == after {
		i++
	}
	if after == "" {
		i = 0
	}
	var page []*served
	for ; i < len(ps.sorted) && len(page) < limit; i++ {
		page = append(page, ps.byName[ps.sorted[i]])
	}
	more := i < len(ps.sorted)
	ps.mu.RUnlock()
	out := make([]wire.ProviderInfo, len(page))
	for j, sv := range page {
		state, _ := brief(sv.st)
		out[j] = wire.ProviderInfo{Name: sv.name, Kind: sv.kind, Source: sv.source, State: state}
	}
	next := ""
	if more && len(out) > 0 {
		next = out[len(out)-1].Name
	}
	return out, next
}

// sealed records that the runtime provider sv, already served, is stored at
// rev, sealed with an older key if stale (a re-seal, or a watch that started
// over).
func (ps *providerSet) sealed(sv *served, rev uint64, stale bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.byName[sv.name] == sv && sv.stale != stale {
		if stale {
			ps.stale++
		} else {
			ps.stale--
		}
	}
	sv.rev, sv.stale = rev, stale
}

// staleRuntime returns the runtime providers sealed with an older key: none,
// without looking at any, when the count of them is 0.
func (ps *providerSet) staleRuntime() []*served {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if ps.stale == 0 {
		return nil
	}
	var out []*served
	for _, sv := range ps.runtime {
		if sv.stale {
			out = append(out, sv)
		}
	}
	return out
}

// registry implements rpc.Registry on the credential store and the
// providers this replica serves.
type registry struct {
	m *Main
}

var _ rpc.Registry = registry{}

// Put stores p in the credential bucket; every replica then serves it from
// its watch, and the lease holder fetches its token.
func (r registry) Put(ctx context.Context, p config.Provider) (uint64, error) {
	if sv := r.m.set.get(p.Name); sv != nil && sv.source == wire.SourceConfig {
		return 0, fmt.Errorf("%w: name: %q is a provider of the configuration file; choose another name", refresher.ErrConflict, p.Name)
	}
	if other := r.m.set.sharing(p.Name, p.Credential()); other != "" {
		return 0, fmt.Errorf("%w: %s: provider %q uses the same credential; two providers may not share one (for Daraja each would invalidate the other's token)", refresher.ErrConflict, p.CredentialField(), other)
	}
	return r.m.creds.Put(ctx, p)
}

// Delete removes the runtime provider name from the credential bucket.
func (r registry) Delete(ctx context.Context, name string) error {
	if sv := r.m.set.get(name); sv != nil && sv.source == wire.SourceConfig {
		return refresher.ErrUnknownProvider
	}
	err := r.m.creds.Delete(ctx, name)
	if errors.Is(err, credentials.ErrNotFound) {
		return refresher.ErrUnknownProvider
	}
	return err
}

// List pages every provider by name.
func (r registry) List(after string, limit int) ([]wire.ProviderInfo, string) {
	return r.m.set.list(after, limit)
}

// serveConfig builds and serves one config-file provider.
func (m *Main) serveConfig(ctx context.Context, p config.Provider, transport http.RoundTripper) error {
	sv, err := m.build(ctx, p, wire.SourceConfig, transport, time.Time{})
	if err != nil {
		return err
	}
	m.set.add(sv)
	m.leader.Set(p.Name, sv.loop)
	if sv.mgr != nil {
		m.obs.trackExpiry(sv.mgr)
	}
	return nil
}

// build makes the parts that serve p: a refresh manager (shared tokens) or a
// single-use pool and its filler, calling the provider through the leader's
// gate.
func (m *Main) build(ctx context.Context, p config.Provider, source string, transport http.RoundTripper, staleBefore time.Time) (*served, error) {
	prov, err := buildProvider(p, transport)
	if err != nil {
		return nil, err
	}
	sv := &served{name: p.Name, kind: p.Kind, source: source, cred: p.Credential()}
	cred := sv.cred // one copy of the string for both
	if cred == "" {
		cred = "name:" + p.Name
	}
	discarded := func(reason string) { m.Metrics.TokenDiscarded(reason) }
	gate := m.leader.Gate()
	if singleUse(p) {
		pl, filler, err := m.openPool(ctx, p, prov, source == wire.SourceConfig, func(ctx context.Context) (pool.Call, error) {
			c, err := gate.Enter(ctx, cred)
			if err != nil {
				return nil, err
			}
			return c, nil
		}, discarded)
		if err != nil {
			return nil, err
		}
		sv.src, sv.st, sv.loop = pl, pl, filler
		return sv, nil
	}
	mgr := m.sched.NewManager(refresh.ProviderConfig{
		Name: p.Name, Kind: p.Kind, Provider: prov, Credential: cred,
		RefreshBefore: p.RefreshBefore.D(), RefreshCooldown: p.RefreshCooldown.D(), StaleBefore: staleBefore,
	})
	sv.mgr, sv.st, sv.loop = mgr, mgr, mgr
	sv.src = bucketSource{freshSource: freshSource{Source: leader.Source{Leader: m.leader, Name: p.Name, Local: mgr}, mgr: mgr}, lookup: m.lookup}
	return sv, nil
}

// freshSource is a shared-token provider's rpc.Source that also answers
// token.get with min_validity: an early refresh goes through the provider's
// token.refresh path (the manager on the lease holder, forwarded from a
// standby).
type freshSource struct {
	leader.Source
	mgr *refresh.Manager
}

var (
	_ rpc.Fresher    = freshSource{}
	_ rpc.Revisioned = freshSource{}
)

// GetFresh returns a token valid for at least d, or 503 (SPEC §3).
func (s freshSource) GetFresh(ctx context.Context, d time.Duration) ([]byte, uint64, error) {
	return s.mgr.GetFresh(ctx, d, s.Source.Refresh)
}

// applyCredential follows one change of the credential bucket: every replica
// serves runtime providers as entries come and go; the lease holder runs
// their loops (through loopSet), deletes a removed provider's token and
// re-seals entries sealed with an older key.
func (m *Main) applyCredential(ctx context.Context, ev credentials.Event, transport http.RoundTripper) {
	switch ev.Op {
	case credentials.OpReady:
		m.credsReadyOnce.Do(func() { close(m.credsReady) })
		return
	case credentials.OpInvalid:
		m.logger.Error("runtime provider cannot be opened; it is not served", slog.String("provider", ev.Name), slog.String("error", ev.Err.Error()))
		m.removeRuntime(ctx, ev.Name)
		return
	case credentials.OpDelete:
		m.removeRuntime(ctx, ev.Name)
		return
	}
	old := m.set.get(ev.Name)
	if old != nil && old.source == wire.SourceConfig {
		m.logger.Warn("runtime provider ignored: the configuration file has a provider of that name", slog.String("provider", ev.Name))
		return
	}
	if other := m.set.sharing(ev.Name, ev.Provider.Credential()); other != "" {
		// Two puts raced past the check on two replicas: the second one is
		// not served (for Daraja each would kill the other's token).
		m.logger.Error("runtime provider not served: another provider uses the same credential", slog.String("provider", ev.Name), slog.String("other", other))
		return
	}
	if old != nil && reflect.DeepEqual(old.prov, ev.Provider) {
		// The same provider: a re-seal, or a watch that started over.
		m.set.sealed(old, ev.Revision, ev.Stale)
		m.kickReseal(ev.Stale)
		return
	}
	staleBefore := time.Time{}
	if old != nil {
		// Replaced credentials: a token fetched with the old ones is
		// replaced at once (and served until then).
		staleBefore = time.Now()
	}
	sv, err := m.build(ctx, ev.Provider, wire.SourceRuntime, transport, staleBefore)
	if err != nil {
		m.logger.Error("runtime provider not served", slog.String("provider", ev.Name), slog.String("error", err.Error()))
		return
	}
	sv.prov, sv.rev, sv.stale = ev.Provider, ev.Revision, ev.Stale
	if pl, ok := sv.src.(*pool.Pool); ok {
		// Before it is served: from now on no replaced credentials' token
		// is handed out by any of this provider's pools here.
		pl.SetGeneration(ev.Revision)
	}
	if old != nil && old.mgr != nil && sv.mgr != nil {
		// Served until replaced; on the leader the new manager takes over
		// what the old one published last once it has stopped (Takeover).
		if e := old.mgr.Slot().Load(); e != nil {
			sv.mgr.Slot().Store(e)
		}
	}
	m.set.add(sv)
	if m.leader.Valid() { // the lease holder tells, before the new loop's first event
		if old == nil {
			m.events.Added(ev.Name, ev.Provider.Kind)
		} else {
			m.events.Rotated(ev.Name, ev.Provider.Kind)
		}
	}
	m.leader.Set(ev.Name, sv.loop)
	if old == nil {
		m.logger.Info("runtime provider added", slog.String("provider", ev.Name), slog.String("kind", ev.Provider.Kind))
	} else {
		m.logger.Info("runtime provider replaced", slog.String("provider", ev.Name), slog.String("kind", ev.Provider.Kind))
	}
	m.kickReseal(ev.Stale)
}

// removeRuntime stops serving name; the leader stops its loop and deletes
// its token with a fenced delete (a standby leaves that to the leader).
func (m *Main) removeRuntime(ctx context.Context, name string) {
	sv := m.set.remove(name)
	if sv == nil {
		return
	}
	if pl, ok := sv.src.(*pool.Pool); ok {
		pl.Close() // claims under way hand nothing out
	}
	if m.leader.Valid() {
		m.events.Removed(name)
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.leader.Remove(dctx, name); err != nil {
		m.logger.Warn("removing a runtime provider", slog.String("provider", name), slog.String("error", err.Error()))
	}
	m.logger.Info("runtime provider removed", slog.String("provider", name))
}

// kickReseal wakes the re-sealer when an entry is sealed with an older key.
func (m *Main) kickReseal(stale bool) {
	if !stale {
		return
	}
	select {
	case m.resealKick <- struct{}{}:
	default:
	}
}

// reseal re-seals, one at a time and only on the lease holder, every runtime
// provider sealed with an older key, until ctx ends.
func (m *Main) reseal(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.resealKick:
		case <-tick.C:
		}
		if !m.leader.Valid() {
			continue
		}
		stale := m.set.staleRuntime()
		if len(stale) == 0 || !m.fleetOpensFormat(ctx) {
			continue
		}
		for _, sv := range stale {
			if ctx.Err() != nil || !m.leader.Valid() {
				break
			}
			m.set.mu.RLock()
			p, rev := sv.prov, sv.rev
			m.set.mu.RUnlock()
			if err := m.creds.Reseal(ctx, p, rev); err != nil {
				m.logger.Debug("re-seal skipped", slog.String("provider", sv.name), slog.String("error", err.Error()))
				continue
			}
			m.logger.Info("runtime provider re-sealed with the first key", slog.String("provider", sv.name))
		}
	}
}

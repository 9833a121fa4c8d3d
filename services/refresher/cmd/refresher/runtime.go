package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
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
	config  []string // config-file providers, in configuration order
	runtime []string // runtime providers, sorted
	sorted  []string // every provider, sorted (tokenbus.providers.list)
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
}

func newProviderSet() *providerSet {
	return &providerSet{byName: map[string]*served{}, pending: map[string]*refresh.Entry{}, removed: map[string]time.Time{}, byCred: map[string]string{}}
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
	if old == nil {
		if sv.source == wire.SourceConfig {
			ps.config = append(ps.config, sv.name)
		} else {
			ps.runtime = insertSorted(ps.runtime, sv.name)
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
	if ps.byCred[sv.cred] == name {
		delete(ps.byCred, sv.cred)
	}
	delete(ps.byName, name)
	ps.runtime = removeSorted(ps.runtime, name)
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

// statuses returns every provider's status in page order: config-file
// providers in configuration order, then runtime providers by name.
func (ps *providerSet) statuses() []wire.ProviderStatus {
	ps.mu.RLock()
	list := make([]statuser, 0, len(ps.config)+len(ps.runtime))
	for _, names := range [][]string{ps.config, ps.runtime} {
		for _, n := range names {
			list = append(list, ps.byName[n].st)
		}
	}
	ps.mu.RUnlock()
	out := make([]wire.ProviderStatus, len(list))
	for i, s := range list {
		out[i] = s.Status()
	}
	return out
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
		out[j] = wire.ProviderInfo{Name: sv.name, Kind: sv.kind, Source: sv.source, State: sv.st.Status().State}
	}
	next := ""
	if more && len(out) > 0 {
		next = out[len(out)-1].Name
	}
	return out, next
}

// staleRuntime returns the runtime providers sealed with an older key.
func (ps *providerSet) staleRuntime() []*served {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	var out []*served
	for _, n := range ps.runtime {
		if sv := ps.byName[n]; sv.stale {
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
	cred := p.Credential()
	if cred == "" {
		cred = "name:" + p.Name
	}
	sv := &served{name: p.Name, kind: p.Kind, source: source, cred: p.Credential()}
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
	mgr := refresh.NewManager(refresh.Config{
		Name: p.Name, Kind: p.Kind, Provider: prov, Publisher: m.leader,
		RefreshBefore: p.RefreshBefore.D(), RefreshCooldown: p.RefreshCooldown.D(), Backoff: m.opts.Backoff, Logger: m.logger,
		Recorder: m.obs, StaleBefore: staleBefore, Discarded: discarded, Observer: m.events,
		Gate: func(ctx context.Context) (refresh.Call, error) {
			c, err := gate.Enter(ctx, cred)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
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
		m.set.mu.Lock()
		old.rev, old.stale = ev.Revision, ev.Stale
		m.set.mu.Unlock()
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

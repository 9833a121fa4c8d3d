package main

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/pool"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/registry"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// serveConfig builds and serves one config-file provider.
func (m *Main) serveConfig(ctx context.Context, p config.Provider, transport http.RoundTripper) error {
	sv, err := m.build(ctx, p, wire.SourceConfig, transport, time.Time{})
	if err != nil {
		return err
	}
	m.set.Add(sv)
	m.leader.Set(p.Name, sv.Loop)
	if sv.Manager != nil {
		m.obs.trackExpiry(sv.Manager)
	}
	return nil
}

// build makes the parts that serve p: a refresh manager (shared tokens) or a
// single-use pool and its filler, calling the provider through the leader's
// gate.
func (m *Main) build(ctx context.Context, p config.Provider, source string, transport http.RoundTripper, staleBefore time.Time) (*registry.Served, error) {
	prov, err := buildProvider(p, transport)
	if err != nil {
		return nil, err
	}
	sv := &registry.Served{Name: p.Name, Kind: p.Kind, Source: source, Credential: p.Credential()}
	cred := sv.Credential // one copy of the string for both
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
		sv.Endpoint, sv.Reporter, sv.Loop = pl, pl, filler
		return sv, nil
	}
	mgr := m.sched.NewManager(refresh.ProviderConfig{
		Name: p.Name, Kind: p.Kind, Provider: prov, Credential: cred,
		RefreshBefore: p.RefreshBefore.D(), RefreshCooldown: p.RefreshCooldown.D(), StaleBefore: staleBefore,
	})
	sv.Manager, sv.Reporter, sv.Loop = mgr, mgr, mgr
	sv.Endpoint = bucketSource{freshSource: freshSource{Source: leader.Source{Leader: m.leader, Name: p.Name, Local: mgr}, mgr: mgr}, lookup: m.lookup}
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
	old := m.set.Get(ev.Name)
	if old != nil && old.Source == wire.SourceConfig {
		m.logger.Warn("runtime provider ignored: the configuration file has a provider of that name", slog.String("provider", ev.Name))
		return
	}
	if other := m.set.Sharing(ev.Name, ev.Provider.Credential()); other != "" {
		// Two puts raced past the check on two replicas: the second one is
		// not served (for Daraja each would kill the other's token).
		m.logger.Error("runtime provider not served: another provider uses the same credential", slog.String("provider", ev.Name), slog.String("other", other))
		return
	}
	if old != nil && old.Fingerprint == registry.FingerprintOf(ev.Provider) {
		// The same provider: a re-seal, or a watch that started over.
		m.set.Sealed(old, ev.Revision, ev.Stale)
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
	sv.Fingerprint, sv.Revision, sv.Stale = registry.FingerprintOf(ev.Provider), ev.Revision, ev.Stale
	if pl, ok := sv.Endpoint.(*pool.Pool); ok {
		// Before it is served: from now on no replaced credentials' token
		// is handed out by any of this provider's pools here.
		pl.SetGeneration(ev.Revision)
	}
	if old != nil && old.Manager != nil && sv.Manager != nil {
		// Served until replaced; on the leader the new manager takes over
		// what the old one published last once it has stopped (Takeover).
		if e := old.Manager.Slot().Load(); e != nil {
			sv.Manager.Slot().Store(e)
		}
	}
	m.set.Add(sv)
	if m.leader.Valid() { // the lease holder tells, before the new loop's first event
		if old == nil {
			m.events.Added(ev.Name, ev.Provider.Kind)
		} else {
			m.events.Rotated(ev.Name, ev.Provider.Kind)
		}
	}
	m.leader.Set(ev.Name, sv.Loop)
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
	sv := m.set.Remove(name)
	if sv == nil {
		return
	}
	if pl, ok := sv.Endpoint.(*pool.Pool); ok {
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
		stale := m.set.StaleRuntime()
		if len(stale) == 0 || !m.fleetOpensFormat(ctx) {
			continue
		}
		for _, sv := range stale {
			if ctx.Err() != nil || !m.leader.Valid() {
				break
			}
			// The entry as stored now, re-sealed only if still at the
			// revision seen stale (compare-and-swap: a newer one fails).
			rev := m.set.StoredRevision(sv)
			p, _, err := m.creds.Get(ctx, sv.Name)
			if err == nil {
				err = m.creds.Reseal(ctx, p, rev)
			}
			if err != nil {
				m.logger.Debug("re-seal skipped", slog.String("provider", sv.Name), slog.String("error", err.Error()))
				continue
			}
			m.logger.Info("runtime provider re-sealed with the first key", slog.String("provider", sv.Name))
		}
	}
}

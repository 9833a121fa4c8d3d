// Package registry owns the set of providers a replica serves: each by
// name and credential (two providers may not share one), config-file and
// runtime ones; the tokens seen in the bucket for providers not known yet
// and the removed runtime providers' tombstones (a late token of a removed
// provider seeds no successor); the status summaries and pages of
// token.status and tokenbus.providers.list; the count of runtime providers
// sealed with an older key, which the re-sealer reads. On top of the
// credential store it implements rpc.Registry (tokenbus.providers.put,
// .delete, .list). It builds nothing and calls no provider: cmd/refresher
// builds each provider's parts and hands them to the Set.
package registry

import (
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// Statuser reports one provider for token.status: a refresh manager or a
// single-use pool.
type Statuser interface {
	Status() wire.ProviderStatus
}

// Served is one provider this replica serves: from the config file or a
// runtime one from the credential bucket. Its fields are set before Set.Add
// and not changed after, except Revision and Stale, which Set.Sealed
// changes under the set's lock (read Revision with Set.StoredRevision).
type Served struct {
	Name, Kind string
	// Source is wire.SourceConfig or wire.SourceRuntime.
	Source string
	// Credential is config.Provider.Credential ("" if it has none).
	Credential string
	// Endpoint answers token.get and token.refresh on any replica.
	Endpoint rpc.Source
	// Manager keeps a shared-token provider's token; nil for pools.
	Manager *refresh.Manager
	// Reporter reports its status (the manager, or the pool).
	Reporter Statuser
	// Loop is the loop the lease holder runs for it.
	Loop leader.Loop
	// Runtime providers: the fingerprint of the entry as stored (the
	// entry itself is read back from the credential bucket to re-seal it),
	// its revision, and whether a secret is sealed with an older key.
	Fingerprint Fingerprint
	Revision    uint64
	Stale       bool
}

// Set is every provider this replica serves. It changes while the
// refresher runs (runtime providers); lookups on the request path take a
// read lock.
type Set struct {
	mu      sync.RWMutex
	byName  map[string]*Served
	config  []string  // config-file providers, in configuration order
	runtime []*Served // runtime providers, by name (walked without a map lookup each)
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
	// sumCache is the last count of every provider (Status); a count that
	// took less than sumCacheMin is not reused.
	sumCache    summaryCache
	sumCacheMin time.Duration
}

// New returns an empty Set.
func New() *Set {
	return &Set{byName: map[string]*Served{}, pending: map[string]*refresh.Entry{}, removed: map[string]time.Time{}, byCred: map[string]string{},
		sumCacheMin: summaryCacheMin}
}

// Sharing returns the provider other than name that uses credential cred,
// or "".
func (ps *Set) Sharing(name, cred string) string {
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
func (ps *Set) runtimeIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(ps.runtime, name, func(sv *Served, name string) int { return strings.Compare(sv.Name, name) })
}

func removeSorted(s []string, name string) []string {
	if i, found := slices.BinarySearch(s, name); found {
		return slices.Delete(s, i, i+1)
	}
	return s
}

// Add makes sv served, replacing a runtime provider of that name, and
// returns the one it replaced (nil if none).
func (ps *Set) Add(sv *Served) *Served {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	old := ps.byName[sv.Name]
	ps.byName[sv.Name] = sv
	if old != nil && ps.byCred[old.Credential] == old.Name {
		delete(ps.byCred, old.Credential)
	}
	if sv.Credential != "" {
		ps.byCred[sv.Credential] = sv.Name
	}
	delete(ps.removed, sv.Name)
	if old != nil && old.Stale {
		ps.stale--
	}
	if sv.Stale {
		ps.stale++
	}
	if sv.Source == wire.SourceRuntime {
		if i, found := ps.runtimeIndex(sv.Name); found {
			ps.runtime[i] = sv
		} else {
			ps.runtime = slices.Insert(ps.runtime, i, sv)
		}
	}
	if old == nil {
		if sv.Source == wire.SourceConfig {
			ps.config = append(ps.config, sv.Name)
		}
		ps.sorted = insertSorted(ps.sorted, sv.Name)
	}
	if e := ps.pending[sv.Name]; e != nil && sv.Manager != nil {
		sv.Manager.Slot().Store(e)
	}
	delete(ps.pending, sv.Name)
	return old
}

// Remove stops serving the runtime provider name and returns it.
func (ps *Set) Remove(name string) *Served {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	sv := ps.byName[name]
	delete(ps.pending, name)
	if sv == nil || sv.Source != wire.SourceRuntime {
		return nil
	}
	now := time.Now()
	for n, at := range ps.removed {
		if now.Sub(at) > 10*time.Minute {
			delete(ps.removed, n) // its last tokens have long been deleted
		}
	}
	ps.removed[name] = now
	if sv.Stale {
		ps.stale--
	}
	if ps.byCred[sv.Credential] == name {
		delete(ps.byCred, sv.Credential)
	}
	delete(ps.byName, name)
	if i, found := ps.runtimeIndex(name); found {
		ps.runtime = slices.Delete(ps.runtime, i, i+1)
	}
	ps.sorted = removeSorted(ps.sorted, name)
	return sv
}

// Get returns the provider name, or nil.
func (ps *Set) Get(name string) *Served {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return ps.byName[name]
}

// Lookup finds name's source for token.get and token.refresh.
func (ps *Set) Lookup(name string) (rpc.Source, bool) {
	ps.mu.RLock()
	sv := ps.byName[name]
	ps.mu.RUnlock()
	if sv == nil {
		return nil, false
	}
	return sv.Endpoint, true
}

// Known reports whether name is served (metrics label it "_other", not
// "_unknown").
func (ps *Set) Known(name string) bool { return ps.Get(name) != nil }

// Token stores a token seen in the bucket in its provider's slot, or keeps
// it for a provider not known yet.
func (ps *Set) Token(tok wire.Token, rev uint64) {
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
	if sv != nil && sv.Manager != nil {
		sv.Manager.Slot().Store(e)
	}
}

// dropExpiredLocked forgets pending tokens that have expired (keys of
// providers never added: the map does not grow with every stray key).
func (ps *Set) dropExpiredLocked() {
	now := time.Now()
	for n, e := range ps.pending {
		if e.Token.Expired(now) {
			delete(ps.pending, n)
		}
	}
}

// briefer is a Statuser that reports State and Condition as of an instant
// of its clock without building its whole status (refresh.Manager); the
// others are asked for Status.
type briefer interface {
	Now() time.Time
	BriefAt(now time.Time) (state, condition string)
}

// briefs reads the State and Condition of the providers of one walk, with
// one reading of the clock for the whole walk (a walk of 100,000 takes
// about 20 ms: its count is of one instant, its start).
type briefs struct {
	now  time.Time
	read bool
}

// of returns st's State and Condition.
func (b *briefs) of(st Statuser) (state, condition string) {
	if br, ok := st.(briefer); ok {
		if !b.read {
			b.now, b.read = br.Now(), true
		}
		return br.BriefAt(b.now)
	}
	s := st.Status()
	return s.State, s.Condition
}

// statusChunk is how many providers each walks under one hold of the set's
// read lock: a put or delete waiting for the lock (and the token.get
// lookups queued behind it) wait for a chunk, never for a whole walk of
// 100,000 providers. Between chunks the walk also yields its P: a count of
// 100,000 takes about 16 ms of CPU, and Go preempts a running goroutine
// only after 10 ms, so on 2 cores a token.get made runnable meanwhile
// waited for the walk (issue 20: a quarter of the 1,000 µs+ running
// slices of a 100,000-provider fill were status walks).
const statusChunk = 256

// each calls fn with the providers in page order (config-file providers in
// configuration order, then runtime providers by name) from the cfg-th
// config-file provider (none if cfg < 0), then the runtime providers named
// after after, until fn returns false. fn is told the provider's index
// among the config-file ones (-1 for a runtime one) and runs outside the
// lock: a provider added or removed during the walk may be missed or seen,
// never seen twice.
func (ps *Set) each(cfg int, after string, fn func(sv *Served, cfg int) bool) {
	buf := make([]*Served, 0, statusChunk)
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
		runtime.Gosched()
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
		after = buf[len(buf)-1].Name
		runtime.Gosched()
	}
}

// summaryCache keeps the last count of every provider by state and
// condition. A count that took at least summaryCacheMin is reused for ten
// times as long as it took (about 150 ms with 100,000 providers on an idle
// machine), so that token.status polled in a loop, the status page and
// /metrics spend at most about a tenth of a core counting; a smaller set is
// counted afresh every time. Past that, and until summaryStale after the
// count (or twenty times its counting time, if longer), the old count is
// still answered while one new count runs in the background (stale while
// revalidate): a poller is not made to wait for the walk (50 ms at 100,000
// on 2 busy cores), and its next ask sees the new count.
type summaryCache struct {
	mu   sync.Mutex
	sum  wire.StatusSummary
	at   time.Time
	took time.Duration
	// counting is set while a background count runs.
	counting bool
}

// summaryCacheMin is the least counting time worth reusing a count for.
const summaryCacheMin = time.Millisecond

// summaryStale is how old a count may be and still be answered while a new
// one is made in the background.
const summaryStale = 2 * time.Second

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

// cachedSummary returns the last count if it may still be reused, and
// recount if it is stale and no background count runs: the caller is then
// to start one (go recount).
func (ps *Set) cachedSummary() (sum wire.StatusSummary, ok, recount bool) {
	c := &ps.sumCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || c.took < ps.sumCacheMin {
		return wire.StatusSummary{}, false, false
	}
	switch age := time.Since(c.at); {
	case age < 10*c.took:
		return c.sum, true, false
	case age < max(summaryStale, 20*c.took):
		recount = !c.counting
		c.counting = true
		return c.sum, true, recount
	}
	return wire.StatusSummary{}, false, false
}

func (ps *Set) storeSummary(sum wire.StatusSummary, at time.Time, took time.Duration) {
	c := &ps.sumCache
	c.mu.Lock()
	c.sum, c.at, c.took = sum, at, took
	c.mu.Unlock()
}

// count walks every provider, counts them by state and condition, stores
// the count for reuse and returns it. visit, if not nil, is shown each
// provider with its state and condition on the way (Status picks its page
// in the same walk).
func (ps *Set) count(visit func(sv *Served, cfg int, state, cond string)) wire.StatusSummary {
	var c counter
	var b briefs
	start := time.Now()
	ps.each(0, "", func(sv *Served, cfg int) bool {
		state, cond := b.of(sv.Reporter)
		c.add(state, cond)
		if visit != nil {
			visit(sv, cfg, state, cond)
		}
		return true
	})
	sum := c.summary()
	ps.storeSummary(sum, start, time.Since(start))
	return sum
}

// recount is cachedSummary's background count.
func (ps *Set) recount() {
	ps.count(nil)
	ps.sumCache.mu.Lock()
	ps.sumCache.counting = false
	ps.sumCache.mu.Unlock()
}

// Summary counts every provider by state and condition
// (tokenbus_providers, tokenbus_providers_by_condition). The maps are
// shared: read them only.
func (ps *Set) Summary() wire.StatusSummary {
	sum, _, _ := ps.Status(wire.StatusRequest{}, false)
	return sum
}

// Status returns what wire.Status.Page returns over every provider's
// status in page order — the summary of every provider (see summaryCache;
// its maps are shared: read them only), the page q asks for and the After
// of the next page — building the status of the providers of the page only
// (token.status polled every 50 ms with 100,000 providers built all of
// them). Without page, only the summary.
func (ps *Set) Status(q wire.StatusRequest, page bool) (wire.StatusSummary, []wire.ProviderStatus, string) {
	limit := q.Limit
	if limit <= 0 || limit > wire.StatusPageMax {
		limit = wire.StatusPageMax
	}
	// Where the page starts: after the provider q.After names, or at the
	// beginning when no provider has that name.
	fromCfg, fromRuntime := 0, ""
	if q.After != "" {
		ps.mu.RLock()
		if sv := ps.byName[q.After]; sv != nil && sv.Source == wire.SourceConfig {
			fromCfg = slices.Index(ps.config, q.After) + 1
		} else if sv != nil {
			fromCfg, fromRuntime = -1, q.After
		}
		ps.mu.RUnlock()
	}
	var picked []*Served
	more := false
	// pick takes sv into the page if it matches; false once the page is
	// full and one more match shows a next page.
	pick := func(sv *Served, state, cond string) bool {
		if !statusMatches(q, sv.Name, state, cond) {
			return true
		}
		if len(picked) == limit {
			more = true
			return false
		}
		picked = append(picked, sv)
		return true
	}
	sum, ok, recount := ps.cachedSummary()
	if recount {
		go ps.recount()
	}
	if !ok {
		// One walk counts every provider and picks the page.
		sum = ps.count(func(sv *Served, cfg int, state, cond string) {
			if page && !more && (fromCfg >= 0 && cfg >= fromCfg || cfg < 0 && (fromCfg >= 0 || sv.Name > fromRuntime)) {
				pick(sv, state, cond)
			}
		})
	} else if page {
		// The page only: from its start to one match past its end.
		var b briefs
		ps.each(fromCfg, fromRuntime, func(sv *Served, _ int) bool {
			state, cond := b.of(sv.Reporter)
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
		if st := sv.Reporter.Status(); statusMatches(q, st.Name, st.State, st.Condition) {
			out = append(out, st)
		}
	}
	next := ""
	if more {
		next = picked[len(picked)-1].Name
	}
	return sum, out, next
}

// statusMatches reports whether a provider passes q's filter, as
// wire.Status.Page filters.
func statusMatches(q wire.StatusRequest, name, state, cond string) bool {
	return (q.Provider == "" || name == q.Provider) && (q.State == "" || state == q.State) &&
		(q.Condition == "" || cond == q.Condition) && (q.Search == "" || strings.Contains(name, q.Search))
}

// List pages every provider by name for tokenbus.providers.list.
func (ps *Set) List(after string, limit int) ([]wire.ProviderInfo, string) {
	ps.mu.RLock()
	i, _ := slices.BinarySearch(ps.sorted, after)
	if i < len(ps.sorted) && ps.sorted[i] == after {
		i++
	}
	if after == "" {
		i = 0
	}
	var page []*Served
	for ; i < len(ps.sorted) && len(page) < limit; i++ {
		page = append(page, ps.byName[ps.sorted[i]])
	}
	more := i < len(ps.sorted)
	ps.mu.RUnlock()
	out := make([]wire.ProviderInfo, len(page))
	var b briefs
	for j, sv := range page {
		state, _ := b.of(sv.Reporter)
		out[j] = wire.ProviderInfo{Name: sv.Name, Kind: sv.Kind, Source: sv.Source, State: state}
	}
	next := ""
	if more && len(out) > 0 {
		next = out[len(out)-1].Name
	}
	return out, next
}

// Sealed records that the runtime provider sv, already served, is stored at
// rev, sealed with an older key if stale (a re-seal, or a watch that started
// over).
func (ps *Set) Sealed(sv *Served, rev uint64, stale bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.byName[sv.Name] == sv && sv.Stale != stale {
		if stale {
			ps.stale++
		} else {
			ps.stale--
		}
	}
	sv.Revision, sv.Stale = rev, stale
}

// StaleRuntime returns the runtime providers sealed with an older key: none,
// without looking at any, when the count of them is 0.
func (ps *Set) StaleRuntime() []*Served {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	if ps.stale == 0 {
		return nil
	}
	var out []*Served
	for _, sv := range ps.runtime {
		if sv.Stale {
			out = append(out, sv)
		}
	}
	return out
}

// StoredRevision returns the revision of the runtime provider sv's entry
// as Sealed last recorded it (the re-sealer re-seals the entry only if it
// is still at that revision).
func (ps *Set) StoredRevision(sv *Served) uint64 {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return sv.Revision
}

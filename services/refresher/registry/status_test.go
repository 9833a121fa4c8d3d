package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/refresh"
)

// fixedStatus is a Statuser without Brief (a single-use pool's kind).
type fixedStatus wire.ProviderStatus

func (f fixedStatus) Status() wire.ProviderStatus { return wire.ProviderStatus(f) }

// TestStatusPagesAsPageDoes: token.status's summary and page, computed
// without building every provider's status, are byte for byte what
// wire.Status.Page makes of every provider's status, for every filter and
// page boundary (config-file providers first, in configuration order; a
// pool, which has no Brief; providers in every state).
func TestStatusPagesAsPageDoes(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return at }
	ps := New()
	var config, runtime []string
	add := func(name, source string, i int) {
		mgr := refresh.NewManager(refresh.Config{Name: name, Kind: "daraja", Now: clock})
		tok := func(issued time.Time) {
			e, err := refresh.NewEntry(wire.Token{Provider: name, AccessToken: "t", TokenType: "Bearer", IssuedAt: issued, ExpiresAt: issued.Add(time.Hour)}, uint64(i+1))
			if err != nil {
				t.Fatal(err)
			}
			mgr.Slot().Store(e)
		}
		var st Statuser = mgr
		switch i % 5 {
		case 0: // ok
			tok(at.Add(-time.Minute))
		case 1: // failing: a valid token and a failed refresh
			tok(at.Add(-time.Minute))
			mgr.Slot().Fail(errors.New("daraja: HTTP 503"), at)
		case 2: // no_token: expired
			tok(at.Add(-2 * time.Hour))
		case 3: // starting
		case 4: // a pool
			n := i % 3
			st = fixedStatus{Name: name, Kind: "mpay", State: []string{wire.StateNoToken, wire.StateOK, wire.StateFailing}[n], Pool: &n}
		}
		ps.Add(&Served{Name: name, Kind: "daraja", Source: source, Manager: mgr, Reporter: st})
		if source == wire.SourceConfig {
			config = append(config, name)
		} else {
			runtime = append(runtime, name)
		}
	}
	// Config-file providers are not in name order; runtime names sort
	// around theirs; more than a few chunks of each.
	for i := range statusChunk + 40 {
		add(fmt.Sprintf("zc-%04d", (i*7919)%(statusChunk+40)), wire.SourceConfig, i)
	}
	for i := range 3*statusChunk + 17 {
		add(fmt.Sprintf("%c-%05d", "amz"[i%3], i), wire.SourceRuntime, i+1)
	}
	slices.Sort(runtime)
	var all []wire.ProviderStatus
	for _, n := range append(slices.Clone(config), runtime...) {
		all = append(all, ps.Get(n).Reporter.Status())
	}
	ref := wire.Status{Instance: "i", Providers: all}

	check := func(q wire.StatusRequest) wire.Status {
		t.Helper()
		sum, page, next := ps.Status(q, true)
		got, _ := json.Marshal(wire.Status{Instance: "i", Summary: &sum, Providers: page, Next: next})
		want, _ := json.Marshal(ref.Page(q))
		if string(got) != string(want) {
			t.Fatalf("%+v:\n got %.600s\nwant %.600s", q, got, want)
		}
		var st wire.Status
		_ = json.Unmarshal(got, &st)
		return st
	}
	qs := []wire.StatusRequest{
		{}, {Limit: 1}, {Limit: 7}, {Limit: 5000}, {Limit: -3},
		{After: config[0]}, {After: config[len(config)-1]}, {After: config[17], Limit: 3},
		{After: runtime[0]}, {After: runtime[len(runtime)-1]}, {After: runtime[400], Limit: 2},
		{After: "no-such-provider", Limit: 2}, {After: "m-"},
		{State: wire.StateFailing}, {State: wire.StateNoToken, Limit: 10}, {State: "nonsense"},
		{Condition: wire.ConditionExpired, Limit: 5}, {Condition: wire.ConditionStarting},
		{Search: "7", Limit: 9}, {Search: "zc-", After: config[3]},
		{Provider: runtime[5]}, {Provider: config[9]}, {Provider: runtime[5], After: runtime[6]}, {Provider: runtime[5], After: config[0]},
		{Provider: runtime[5], State: wire.StateOK}, {Provider: "nobody"},
	}
	// Counted afresh (one walk counts and picks the page), then with the
	// count reused (a walk of the page only).
	for _, reuse := range []bool{false, true} {
		ps.sumCacheMin = time.Hour
		if reuse {
			sum, _, _ := ps.Status(wire.StatusRequest{}, true)
			ps.sumCacheMin = 0
			ps.storeSummary(sum, time.Now(), time.Hour)
		}
		for _, q := range qs {
			check(q)
		}
		// Following Next visits every match once, whatever the filter.
		for _, q := range []wire.StatusRequest{{Limit: 100}, {State: wire.StateOK, Limit: 33}, {Search: "a-", Limit: 50}} {
			for pages := 0; ; pages++ {
				st := check(q)
				if st.Next == "" {
					break
				}
				q.After = st.Next
				if pages > 100 {
					t.Fatal("paging does not end")
				}
			}
		}
	}
	// The metrics count what the summary counts.
	sum, _, _ := ps.Status(wire.StatusRequest{}, true)
	if got := ps.Summary(); got.Total != len(all) || fmt.Sprint(got) != fmt.Sprint(sum) {
		t.Fatalf("summary %+v, status %+v", got, sum)
	}
}

// TestStatusSummaryReuse: a count of the providers is reused for ten times
// as long as it took, and only when it took at least summaryCacheMin (a
// small set is counted afresh on every request); past that, and until
// summaryStale, it is still answered while one background count runs.
func TestStatusSummaryReuse(t *testing.T) {
	ps := New()
	sum := wire.StatusSummary{Total: 7, States: map[string]int{wire.StateOK: 7}}
	for _, c := range []struct {
		age, took        time.Duration
		reused, recounts bool
	}{
		{0, 20 * time.Millisecond, true, false},
		{150 * time.Millisecond, 20 * time.Millisecond, true, false},
		{250 * time.Millisecond, 20 * time.Millisecond, true, true},
		{summaryStale - 100*time.Millisecond, 20 * time.Millisecond, true, true},
		{summaryStale + 100*time.Millisecond, 20 * time.Millisecond, false, false},
		{2 * summaryStale, summaryStale / 4, true, false},    // a slow count: fresh for ten times its time
		{3 * summaryStale, summaryStale / 4, true, true},     // and stale until twenty
		{5*summaryStale + 1, summaryStale / 4, false, false}, // then counted afresh
		{0, summaryCacheMin / 2, false, false},
	} {
		ps.storeSummary(sum, time.Now().Add(-c.age), c.took)
		ps.sumCache.counting = false
		got, ok, recount := ps.cachedSummary()
		if ok != c.reused || ok && got.Total != 7 || recount != c.recounts {
			t.Errorf("counted %v ago in %v: reused %v, recount %v; want %v, %v", c.age, c.took, ok, recount, c.reused, c.recounts)
		}
		if recount {
			// One background count at a time.
			if _, ok, again := ps.cachedSummary(); !ok || again {
				t.Errorf("counted %v ago in %v, a count running: reused %v, recount %v; want true, false", c.age, c.took, ok, again)
			}
		}
	}
	ps.sumCache.counting = false
	// A count of a small set is not reused: a change shows at once. (The
	// floor is raised so that a count slowed by a loaded machine, as under
	// -race in CI, is still one too quick to reuse.)
	ps.sumCacheMin = time.Hour
	ps.Add(&Served{Name: "a", Source: wire.SourceRuntime, Reporter: fixedStatus{Name: "a", State: wire.StateOK}})
	if sum := ps.Summary(); sum.Total != 1 {
		t.Fatalf("summary %+v", sum)
	}
	ps.Add(&Served{Name: "b", Source: wire.SourceRuntime, Reporter: fixedStatus{Name: "b", State: wire.StateNoToken}})
	if sum := ps.Summary(); sum.Total != 2 || sum.States[wire.StateNoToken] != 1 {
		t.Fatalf("summary %+v", sum)
	}
	// A stale count is answered once more, and the count made meanwhile in
	// the background is answered next.
	ps.sumCacheMin = 0
	ps.storeSummary(sum, time.Now().Add(-100*time.Millisecond), 5*time.Millisecond)
	if got := ps.Summary(); got.Total != 7 {
		t.Fatalf("a stale count: summary %+v, want the stored one (7)", got)
	}
	// Well before the stale count would be dropped (summaryStale).
	deadline := time.Now().Add(summaryStale / 2)
	for got := ps.Summary(); got.Total != 2 || got.States[wire.StateNoToken] != 1; got = ps.Summary() {
		if time.Now().After(deadline) {
			t.Fatalf("after a stale count: summary %+v, want the 2 providers counted in the background", got)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestStatusWalkYields: a walk over every provider (a count of 100,000
// takes about 16 ms) lets a goroutine made runnable meanwhile run after
// the chunk at hand, even with one P — Go would preempt the walk only
// after 10 ms, and a token.get answered on 2 busy cores waited for it.
func TestStatusWalkYields(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	ps := New()
	for i := range 4 * statusChunk {
		name := fmt.Sprintf("p-%05d", i)
		ps.Add(&Served{Name: name, Source: wire.SourceRuntime, Reporter: fixedStatus{Name: name, State: wire.StateOK}})
	}
	var ran atomic.Bool
	seen, ranAt := 0, -1
	ps.each(-1, "", func(*Served, int) bool {
		if seen == 0 {
			go ran.Store(true)
		}
		if ranAt < 0 && ran.Load() {
			ranAt = seen
		}
		seen++
		return true
	})
	if seen != 4*statusChunk {
		t.Fatalf("walked %d providers, want %d", seen, 4*statusChunk)
	}
	if ranAt < 0 || ranAt > statusChunk {
		t.Fatalf("a goroutine made runnable at the first provider ran after %d of %d (-1: after the walk); want at most one chunk (%d)", ranAt, seen, statusChunk)
	}
}

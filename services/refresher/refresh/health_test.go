package refresh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
)

// recorder is an Observer that keeps every call as a line.
type recorder struct {
	mu         sync.Mutex
	lines      []string
	failingFor time.Duration
	// firstFailed and recoveredAt are when the first failure since the last
	// success and the recovery were observed (exact under synctest).
	firstFailed, recoveredAt time.Time
}

func (r *recorder) add(format string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, a...))
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

func (r *recorder) Refreshed(p string, tok wire.Token, _ uint64, attempt int) {
	if tok.AccessToken != "" {
		r.add("LEAK")
	}
	r.add("refreshed attempt=%d", attempt)
}
func (r *recorder) RefreshFailed(p string, f Failure) {
	r.mu.Lock()
	if r.firstFailed.IsZero() {
		r.firstFailed = time.Now()
	}
	r.mu.Unlock()
	r.add("refresh_failed %s %s attempt=%d", f.Kind, f.Cause, f.Attempt)
}
func (r *recorder) CredentialsRejected(p string, f Failure) {
	r.add("credentials_rejected %s", f.Cause)
}
func (r *recorder) Recovered(p string, tok wire.Token, attempt int, failingFor time.Duration) {
	r.mu.Lock()
	r.failingFor, r.recoveredAt = failingFor, time.Now()
	r.mu.Unlock()
	r.add("recovered attempt=%d", attempt)
}
func (r *recorder) Expired(p string, tok wire.Token, failingFor time.Duration, last Failure) {
	if tok.AccessToken != "" {
		r.add("LEAK")
	}
	r.add("expired cause=%s", last.Cause)
}
func (r *recorder) Repaired(p string, rev uint64) { r.add("repaired") }

// script is a provider whose answer the test sets: a token of life, or err.
type script struct {
	mu    sync.Mutex
	err   error
	life  time.Duration
	calls []time.Time
	n     int
}

func (s *script) set(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

func (s *script) Token(context.Context) (refresher.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.calls = append(s.calls, now)
	if s.err != nil {
		return refresher.Token{}, s.err
	}
	s.n++
	return refresher.Token{AccessToken: refresher.Secret(fmt.Sprint("tok-", s.n)), TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(s.life)}, nil
}

// callsAfter returns the times of the calls made after t.
func (s *script) callsAfter(t time.Time) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Time
	for _, c := range s.calls {
		if c.After(t) {
			out = append(out, c)
		}
	}
	return out
}

var (
	outage   = &refresher.ProviderError{Kind: refresher.Transient, StatusCode: 503, Message: "Service Unavailable"}
	revoked  = &refresher.ProviderError{Kind: refresher.Permanent, StatusCode: 400, Message: "bad credentials"}
	limited  = &refresher.ProviderError{Kind: refresher.Transient, StatusCode: 429, Message: "Too Many Requests", RetryAfter: 12 * time.Second}
	timedOut = &refresher.ProviderError{Kind: refresher.Transient, Message: "token request failed", Err: refresher.ErrTimeout}
)

func run(t *testing.T, m *Manager) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	return func() { cancel(); <-done }
}

// TestUrgentRetriesWhileNoValidToken: during an outage that outlives the
// token, the backoff grows toward its 30 s maximum only while a valid token
// remains; once none does, transient failures are retried at least every
// 5 s, so a token is back within 5 s of the provider's recovery (SPEC §3).
func TestUrgentRetriesWhileNoValidToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &script{life: 2 * time.Minute}
		m := NewManager(Config{Name: "p", Provider: prov, RefreshBefore: time.Minute,
			Backoff: refresher.Backoff{Initial: time.Second, Max: 30 * time.Second}})
		stop := run(t, m)
		defer stop()
		synctest.Wait()
		first := m.slot.Load().Token
		prov.set(outage) // the provider goes down before the first refresh
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		end := servingEnd(first)
		var before, after []time.Time
		for _, c := range prov.callsAfter(first.IssuedAt) {
			if c.Before(end) {
				before = append(before, c)
			} else {
				after = append(after, c)
			}
		}
		longest := func(ts []time.Time) (d time.Duration) {
			for i := 1; i < len(ts); i++ {
				d = max(d, ts[i].Sub(ts[i-1]))
			}
			return d
		}
		if g := longest(before); g < 10*time.Second {
			t.Fatalf("while a valid token remained the longest wait was %v; the backoff should grow", g)
		}
		if g := longest(after); g > 5*time.Second || len(after) < 40 {
			t.Fatalf("with no valid token: %d retries, longest wait %v; want at least every 5s", len(after), g)
		}
		if len(before) > 0 && end.Sub(before[len(before)-1]) > 30*time.Second {
			t.Fatal("no retry in the last 30 s of the token")
		}
		if len(after) == 0 || after[0].Sub(end) > time.Millisecond {
			t.Fatalf("the first retry after the token left service came %v late; want at once", after[0].Sub(end))
		}
		prov.set(nil) // recovery
		recovered := time.Now()
		for time.Since(recovered) < 6*time.Second {
			time.Sleep(100 * time.Millisecond)
			if _, err := m.Current(); err == nil {
				break
			}
		}
		if _, err := m.Current(); err != nil || time.Since(recovered) > 5*time.Second {
			t.Fatalf("token back %v after the recovery (%v); want within 5s", time.Since(recovered), err)
		}
	})
}

// TestRetryAfterIsRespected: a 429 with Retry-After delays the next attempt
// by at least that long, even while no valid token remains.
func TestRetryAfterIsRespected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &script{life: time.Minute, err: limited}
		m := NewManager(Config{Name: "p", Provider: prov, Backoff: refresher.Backoff{Initial: time.Second, Max: 30 * time.Second}})
		stop := run(t, m)
		defer stop()
		time.Sleep(time.Minute)
		synctest.Wait()
		calls := prov.callsAfter(time.Time{})
		for i := 1; i < len(calls); i++ {
			if g := calls[i].Sub(calls[i-1]); g < 12*time.Second {
				t.Fatalf("retried %v after a 429 with Retry-After: 12", g)
			}
		}
		if len(calls) < 4 {
			t.Fatalf("%d calls in a minute", len(calls))
		}
	})
}

// TestTransitionsAreObserved: the observer sees each transition in order,
// with the cause of each failure, and never a token: refreshed; an outage
// (refresh_failed 5xx, then expired when the token runs out); timeouts;
// credentials revoked (refresh_failed and credentials_rejected once);
// recovered and refreshed. The condition follows.
func TestTransitionsAreObserved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &script{life: time.Minute}
		rec := &recorder{}
		m := NewManager(Config{Name: "p", Provider: prov, Observer: rec, RefreshBefore: 20 * time.Second,
			Backoff: refresher.Backoff{Initial: 10 * time.Second, Max: 10 * time.Second, PermanentInitial: 30 * time.Second, PermanentMax: 30 * time.Second}})
		cond := func(want string) {
			t.Helper()
			st := m.Status()
			if st.Condition != want {
				t.Fatalf("condition %q (%+v), want %q", st.Condition, st, want)
			}
			// Brief (token.status's summary, the metrics) agrees with Status.
			if state, c := m.Brief(); state != st.State || c != st.Condition {
				t.Fatalf("Brief: %s/%s, Status: %s/%s", state, c, st.State, st.Condition)
			}
		}
		cond(wire.ConditionStarting)
		stop := run(t, m)
		defer stop()
		synctest.Wait()
		cond(wire.ConditionOK)
		prov.set(outage)
		time.Sleep(45 * time.Second) // refreshes from ~35 s fail; the token leaves service at 59 s
		synctest.Wait()
		cond(wire.ConditionRetrying)
		if st := m.Status(); st.Cause != wire.Cause5xx || st.State != wire.StateFailing {
			t.Fatalf("during the outage: %+v", st)
		}
		time.Sleep(20 * time.Second)
		synctest.Wait()
		cond(wire.ConditionExpired)
		prov.set(timedOut)
		time.Sleep(6 * time.Second)
		synctest.Wait()
		prov.set(revoked)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		cond(wire.ConditionCredentialsRejected)
		if st := m.Status(); st.Cause != wire.CauseRejectedCredentials || st.State != wire.StateNoToken {
			t.Fatalf("credentials revoked: %+v", st)
		}
		time.Sleep(40 * time.Second) // a slow retry, still rejected
		synctest.Wait()
		prov.set(nil)
		// The next slow retry comes within 45 s (30 s ± half); stop watching
		// a second after it, before the next refresh (35–40 s later).
		for range 50 {
			if m.Status().Condition == wire.ConditionOK {
				break
			}
			time.Sleep(time.Second)
			synctest.Wait()
		}
		cond(wire.ConditionOK)

		var kinds []string
		for _, l := range rec.got() {
			if l == "LEAK" {
				t.Fatal("the observer was given a token")
			}
			kinds = append(kinds, strings.Fields(l)[0]+" "+strings.Join(strings.Fields(l)[1:min(3, len(strings.Fields(l)))], " "))
		}
		got := strings.Join(compact(kinds), "\n")
		want := strings.Join([]string{
			"refreshed attempt=1",
			"refresh_failed transient 5xx",
			"expired cause=5xx",
			"refresh_failed transient 5xx",
			"refresh_failed transient timeout",
			"refresh_failed permanent rejected_credentials",
			"credentials_rejected rejected_credentials",
			"refresh_failed permanent rejected_credentials",
			"recovered attempt=" + fmt.Sprint(failures(rec)+1),
			"refreshed attempt=" + fmt.Sprint(failures(rec)+1),
		}, "\n")
		// Failing from the first failed refresh (35–40 s in, by the refresh
		// jitter) to the recovery (after the last slow retry, whose wait is
		// jittered too): exactly the span the observer saw.
		if want := rec.recoveredAt.Sub(rec.firstFailed); rec.failingFor != want || want < 80*time.Second {
			t.Fatalf("recovered after failing for %v, want %v (first failure to recovery, at least 80s)", rec.failingFor, want)
		}
		if got != want {
			t.Fatalf("observed (repeats folded):\n%s\nwant:\n%s\nall:\n%s", got, want, strings.Join(rec.got(), "\n"))
		}
	})
}

// compact folds runs of equal lines into one.
func compact(lines []string) []string {
	var out []string
	for _, l := range lines {
		if len(out) == 0 || out[len(out)-1] != l {
			out = append(out, l)
		}
	}
	return out
}

// failures counts the refresh_failed lines.
func failures(r *recorder) (n int) {
	for _, l := range r.got() {
		if strings.HasPrefix(l, "refresh_failed") {
			n++
		}
	}
	return n
}

// TestRepairIsObserved: a repair publishes the token again and is reported
// as repaired, not as a refresh.
func TestRepairIsObserved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &script{life: time.Hour}
		rec := &recorder{}
		m := NewManager(Config{Name: "p", Provider: prov, Observer: rec, Publisher: &flakyPublisher{}})
		stop := run(t, m)
		defer stop()
		synctest.Wait()
		m.Repair()
		synctest.Wait()
		if got := strings.Join(rec.got(), ","); got != "refreshed attempt=1,repaired" {
			t.Fatalf("observed %s", got)
		}
		if prov.n != 1 {
			t.Fatalf("%d provider calls for a repair of a valid token, want none", prov.n-1)
		}
	})
}

// TestGetFresh: min_validity answers the current token when it lives long
// enough, refreshes early (one provider call for many callers) when it does
// not, and refuses what no token of the provider could satisfy.
func TestGetFresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		prov := &script{life: 10 * time.Minute}
		m := NewManager(Config{Name: "p", Provider: prov, Publisher: &flakyPublisher{}})
		stop := run(t, m)
		defer stop()
		synctest.Wait()
		ctx := context.Background()
		if b, rev, err := m.GetFresh(ctx, 5*time.Minute, m.Refresh); err != nil || !strings.Contains(string(b), "tok-1") || rev == 0 {
			t.Fatalf("a token that lives long enough: %s %d %v", b, rev, err)
		}
		time.Sleep(6 * time.Minute) // tok-1 has 4 minutes left (its refresh is due at 8)
		var wg sync.WaitGroup
		var bad atomic.Int64
		for range 20 {
			wg.Go(func() {
				b, _, err := m.GetFresh(ctx, 5*time.Minute, m.Refresh)
				if err != nil || !strings.Contains(string(b), "tok-2") {
					bad.Add(1)
				}
			})
		}
		wg.Wait()
		if bad.Load() != 0 || prov.n != 2 {
			t.Fatalf("%d callers not answered tok-2; %d tokens issued, want 2", bad.Load(), prov.n)
		}
		if _, _, err := m.GetFresh(ctx, 10*time.Minute, m.Refresh); !errors.Is(err, refresher.ErrMinValidity) {
			t.Fatalf("min_validity beyond the token lifetime: %v, want ErrMinValidity", err)
		}
		prov.set(outage)
		time.Sleep(6 * time.Minute)
		if _, _, err := m.GetFresh(ctx, 5*time.Minute, m.Refresh); !errors.Is(err, refresher.ErrMinValidity) && !errors.Is(err, refresher.ErrNoToken) {
			t.Fatalf("while the provider is down: %v, want a 503", err)
		}
		if prov.n != 2 {
			t.Fatalf("%d tokens issued", prov.n)
		}
	})
}

package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// steadyFor is how long TestSteadyManyProviders runs: 30 s, or 60 s with
// TOKENBUS_CLUSTER_LONG=1 (the figure; CI keeps the suite short).
func steadyFor() time.Duration {
	if os.Getenv("TOKENBUS_CLUSTER_LONG") != "" {
		return 60 * time.Second
	}
	return 30 * time.Second
}

// payments makes protected calls continuously, each with a token just
// received from token.get, round-robin over providers.
type payments struct {
	ok, rejected, noToken atomic.Int64
	stop, done            chan struct{}
}

func startPayments(t *testing.T, urls string, sim *simulator.Server, providers []string) *payments {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	p := &payments{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer nc.Close()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			msg, err := nc.Request(wire.GetSubject(providers[i%len(providers)]), nil, time.Second)
			var tok wire.Token
			if err != nil || msg.Header.Get(wire.HeaderErrorCode) != "" || json.Unmarshal(msg.Data, &tok) != nil {
				p.noToken.Add(1)
				continue
			}
			req := httptest.NewRequest(http.MethodPost, "/mpesa/stkpush/v1/processrequest", strings.NewReader("{}"))
			req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			rec := httptest.NewRecorder()
			sim.ServeHTTP(rec, req)
			if rec.Code == http.StatusOK {
				p.ok.Add(1)
			} else {
				p.rejected.Add(1)
			}
		}
	}()
	return p
}

func (p *payments) finish() { close(p.stop); <-p.done }

// TestSteadyManyProviders runs production's shape with no failure: a
// three-node cluster, R3 buckets, three replicas, eight Daraja providers with
// their own credentials and 4 s tokens. Leadership never changes (a renewal
// never collides with a token write), every token the provider issued is
// published (none thrown away), no credential is asked more often than its
// refresh schedule allows, and fewer than 1 % of protected calls made with a
// token just received are rejected.
func TestSteadyManyProviders(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes for ~45 s")
	}
	const life = 4 * time.Second
	sim := simulator.New(simulator.Config{DarajaTTL: life})
	apps := addDarajaApps(sim)
	simSrv := httptest.NewServer(sim)
	defer simSrv.Close()
	names, providers := darajaProviders(simSrv.URL, "800ms")

	_, urls := startCluster(t)
	nc, js := connectCluster(t, urls)
	var reps []*replica
	for i := range 3 {
		reps = append(reps, startReplica(t, i, urls, providers))
	}
	testutil.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		st := statuses(nc)
		for _, r := range reps {
			s := st[r.instance]
			if len(s.Providers) != darajaApps {
				return fmt.Errorf("replica %s not up yet", r.instance)
			}
			for _, p := range s.Providers {
				if p.State != wire.StateOK {
					return fmt.Errorf("replica %s not serving %s yet: %+v", r.instance, p.Name, p)
				}
			}
		}
		_, err := leaderOf(nc, reps)
		return err
	})
	first, _ := leaderOf(nc, reps)
	writes := recordWrites(t, js)
	// Let the recorders catch up with the stream before the window opens.
	time.Sleep(500 * time.Millisecond)
	requests := func() map[string]int64 {
		m := map[string]int64{}
		for _, app := range apps {
			m[app] = sim.CredentialStats(simulator.Daraja, app).TokenRequests
		}
		return m
	}
	before := requests()
	start := time.Now()
	pay := startPayments(t, urls, sim, names)
	time.Sleep(steadyFor())
	pay.finish()
	end := time.Now()
	after := requests()
	time.Sleep(time.Second) // the last tokens' writes reach the recorder

	// Leadership never changed.
	if l, err := leaderOf(nc, reps); err != nil || l != first {
		t.Errorf("leader at the end: %v (%v), at the start: %s", l, err, first.instance)
	}
	published := map[string]bool{}
	holders := map[string]bool{}
	for _, w := range writes() {
		switch {
		case strings.HasSuffix(w.subject, "._lease"):
			if w.at.After(start) {
				holders[w.holder] = true
			}
		case w.token != "":
			published[w.token] = true
		}
	}
	if len(holders) != 1 || !holders[first.instance] {
		t.Errorf("lease written by %v during a steady run, want only %s", holders, first.instance)
	}
	// Every token issued was published; requests per credential stay
	// within the refresh schedule: a token is refreshed between
	// refresh_before and 1¼ × refresh_before ahead of its expiry.
	window := end.Sub(start)
	minInterval := life - 800*time.Millisecond - 200*time.Millisecond
	limit := int(window/minInterval) + 1
	var issued, lost int
	for _, e := range sim.Log() {
		if e.Kind != simulator.Daraja || e.Token == "" || e.Time.Before(start) || e.Time.After(end) {
			continue
		}
		issued++
		if !published[e.Token] {
			lost++
			t.Errorf("token issued at %s never published", e.Time.Format("15:04:05.000"))
		}
	}
	perClient := map[string]int64{}
	for _, app := range apps {
		n := after[app] - before[app]
		perClient[app] = n
		if n == 0 || n > int64(limit) {
			t.Errorf("%s: %d token requests in %v, want 1..%d (one per refresh, + 1)", app, n, window.Round(time.Second), limit)
		}
	}
	ok, rejected, noToken := pay.ok.Load(), pay.rejected.Load(), pay.noToken.Load()
	rate := float64(rejected) / float64(max(ok+rejected, 1))
	t.Logf("%v steady: leader %s throughout; %d tokens issued, %d not published; requests per credential %v (limit %d); protected calls %d ok, %d rejected (%.3f%%), %d token.get failures",
		window.Round(time.Second), first.instance, issued, lost, perClient, limit, ok, rejected, 100*rate, noToken)
	if rate >= 0.01 || ok < 100 {
		t.Errorf("protected calls: %d ok, %d rejected (%.3f%%), want < 1 %% rejected", ok, rejected, 100*rate)
	}
	if noToken != 0 {
		t.Errorf("%d token.get failures in a steady run", noToken)
	}
	// No false alarm: on R3 with eight providers writing at once, the leader
	// never takes one of its own writes (seen by its watch before the write's
	// reply) for a forged token, and nothing is "replaced".
	for _, r := range reps {
		for _, line := range strings.Split(r.out.String(), "\n") {
			if strings.Contains(line, "did not write") || strings.Contains(line, "not written by a leader") {
				t.Errorf("%s reported a foreign write in a steady run: %s", r.name, line)
			}
		}
	}
}

package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// raceEnabled is set under the race detector (race_test.go).
var raceEnabled bool

// TestMain runs the simulation on one P. Goroutines that one instant wakes
// (three standbys seeing a released lease, four loops starting a term and
// racing for two fetch slots) then run in the order of the runtime's run
// queue, which the schedule fixes, rather than in whichever order two Ps
// happen to reach a lock: a seed replays bit for bit (TestReplayIsBitForBit).
func TestMain(m *testing.M) {
	runtime.GOMAXPROCS(1)
	os.Exit(m.Run())
}

// transcript is everything observable of a run, in a fixed order: the
// driver's schedule, every provider call's token (caller, term, instant),
// and both buckets' streams (key, sequence, operation, value, instant).
// Two runs of one seed must produce the same transcript bit for bit.
func (w *world) transcript() string {
	var b strings.Builder
	w.mu.Lock()
	for _, l := range w.trace {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	var issued []string
	for tok, is := range w.issued {
		issued = append(issued, fmt.Sprintf("issued %s to %s in term %d at %d", tok, is.replica, is.term, is.at))
	}
	w.mu.Unlock()
	sort.Strings(issued)
	for _, l := range issued {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, bk := range w.buckets() {
		bk.mu.Lock()
		for _, r := range bk.log {
			fmt.Fprintf(&b, "%s #%d %s %v %q at %d\n", bk.name, r.seq, r.key, r.op, r.data, r.at.UnixNano())
		}
		bk.mu.Unlock()
	}
	return b.String()
}

func digest(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

// runSeed plays seed in its own bubble and returns its transcript.
func runSeed(t *testing.T, seed uint64) (transcript string, violations []string) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(seed)
		w.run()
		transcript, violations = w.transcript(), w.violations
	})
	return transcript, violations
}

// TestReplayIsBitForBit plays 20 seeds twice each and compares the runs'
// transcripts: a failing seed replays exactly, so what it prints is what
// happened.
func TestReplayIsBitForBit(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector shuffles the run queue on purpose: replays are exact only without -race")
	}
	n := uint64(20)
	if testing.Short() {
		n = 5
	}
	start := time.Now()
	for seed := uint64(1); seed <= n; seed++ {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			t.Parallel()
			a, _ := runSeed(t, seed)
			b, _ := runSeed(t, seed)
			if a == b {
				return
			}
			al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
			for i := range min(len(al), len(bl)) {
				if al[i] != bl[i] {
					t.Fatalf("seed %d played twice differs (digests %s, %s), first at line %d:\n  %s\n  %s", seed, digest(a), digest(b), i+1, al[i], bl[i])
				}
			}
			t.Fatalf("seed %d played twice differs in length: %d and %d lines", seed, len(al), len(bl))
		})
	}
	t.Cleanup(func() { t.Logf("%d seeds played twice in %v", n, time.Since(start).Round(time.Millisecond)) })
}

// source returns the random source of one stream of draws (a credential's
// call latencies, one replica's writes of one key), made on first use from
// the seed and the stream's name. Draws from one stream are made in an order
// the schedule fixes, whatever order goroutines reach them in at one instant.
// Under w.mu.
func (w *world) source(names ...string) *rand.Rand {
	key := strings.Join(names, "/")
	if r := w.sources[key]; r != nil {
		return r
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	r := rand.New(rand.NewPCG(w.seed, h.Sum64()))
	if w.sources == nil {
		w.sources = map[string]*rand.Rand{}
	}
	w.sources[key] = r
	return r
}

// id names r in stream names ("operator" for a write from outside).
func (r *replica) id() string {
	if r == nil {
		return "operator"
	}
	return r.name
}

package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
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
	// Lines logged at one instant by goroutines that instant woke are
	// sorted: on one P their order is the run queue's, which the runtime's
	// time-slice preemption (wall clock) can still permute; what they say
	// and when is what must replay.
	trace := slices.Clone(w.trace)
	for i := 0; i < len(trace); {
		j := i + 1
		for j < len(trace) && trace[j][:9] == trace[i][:9] {
			j++
		}
		slices.Sort(trace[i:j])
		i = j
	}
	for _, l := range trace {
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

// TestReplayIsBitForBit plays 20 seeds twice each (a third time if they
// differ) and compares the runs' transcripts: a failing seed replays, so
// what it prints is what happened.
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
			// Go picks at random among the ready cases of a select, from a
			// seed of its own per process: when two are ready at one
			// instant, a play can take the other branch (measured: 1 play
			// in 300 diverged). A third play must match one of the two.
			if c, _ := runSeed(t, seed); c == a || c == b {
				t.Logf("seed %d: one of three plays diverged (a select with two cases ready at one instant)", seed)
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

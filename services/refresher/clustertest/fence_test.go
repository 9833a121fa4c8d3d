package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
	"github.com/tokenbus/tokenbus/services/refresher/leader"
	"github.com/tokenbus/tokenbus/services/refresher/natsx"
)

// fencedWriters write at once, fencedRounds times, in TestFencedWritesOnR3.
const fencedWriters, fencedRounds = 8, 25

// TestFencedWritesOnR3 shows why token writes are serialised, and that they
// then never fail: on an R3 stream the server refuses (10164) a write whose
// expected-sequence check names a subject another write is still committing
// under. Many providers writing at once, each fenced on _term, collide when
// sent concurrently (the control); through the leader, with the lease renewed
// every 200 ms meanwhile, none fails and the leader never changes.
func TestFencedWritesOnR3(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node cluster")
	}
	_, urls := startCluster(t)
	var nc *nats.Conn
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() (err error) {
		nc, err = nats.Connect(urls, nats.MaxReconnects(-1))
		return err
	})
	defer nc.Close()
	st, err := natsx.OpenStore(context.Background(), nc, "tokens", 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Batches() {
		t.Error("an R3 bucket on nats-server 2.15: natsx.Store.Batches false, want the lease holder to batch")
	}
	js := st.JetStream()
	ctx := context.Background()

	// Control: concurrent writes fenced on one subject, sent as they come.
	termRev, err := st.KV().Put(ctx, leader.TermKey, []byte(`{"holder":"control"}`))
	if err != nil {
		t.Fatal(err)
	}
	var collisions atomic.Int64
	for range fencedRounds {
		var wg sync.WaitGroup
		for i := range fencedWriters {
			wg.Go(func() {
				_, err := js.Publish(ctx, fmt.Sprintf("$KV.tokens.p%d", i), []byte("{}"),
					jetstream.WithExpectLastSequenceForSubject(termRev, "$KV.tokens."+leader.TermKey))
				var apiErr *jetstream.APIError
				if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant {
					collisions.Add(1)
				}
			})
		}
		wg.Wait()
	}
	t.Logf("control: %d of %d concurrent fenced writes refused with 10164", collisions.Load(), fencedWriters*fencedRounds)
	if collisions.Load() == 0 {
		t.Errorf("no concurrent fenced write was refused: the server no longer behaves as docs/leadership.md says")
	}

	// Through the leader: one write at a time, and the writes that queue
	// committed together (as the refresher does on R3).
	for _, batches := range []bool{false, true} {
		t.Run(fmt.Sprint("batches=", batches), func(t *testing.T) {
			throughTheLeader(t, nc, js, st, batches)
		})
	}
}

// throughTheLeader writes concurrently through a leader, the lease renewed
// every 200 ms meanwhile: no write fails and the leader never changes; with
// batches, the tokens were written in atomic batches.
func throughTheLeader(t *testing.T, nc *nats.Conn, js jetstream.JetStream, st *natsx.Store, batches bool) {
	ctx := context.Background()
	var changes atomic.Int64
	cfg := leader.Config{
		Lease: leader.LeaseConfig{KV: leader.LeaseBucket(st.Lease()), Holder: "only", TTL: leaseTTL, RetryPeriod: 200 * time.Millisecond,
			OnChange: func(leader.State) { changes.Add(1) }},
		JetStream: js, Tokens: st.KV(), Conn: nc,
	}
	if batches {
		cfg.Batches = leader.AtomicBatches(js)
	}
	l := runLeader(t, cfg)
	str, err := js.Stream(ctx, "KV_tokens")
	if err != nil {
		t.Fatal(err)
	}
	before := changes.Load()
	var inBatch atomic.Int64
	deadline := time.Now().Add(5 * time.Second) // 25 renewals
	for n := 0; time.Now().Before(deadline) || n < fencedRounds; n++ {
		var wg sync.WaitGroup
		for i := range fencedWriters {
			wg.Go(func() {
				tok := wire.Token{Provider: fmt.Sprint("p", i), AccessToken: fmt.Sprint("t", n), ExpiresAt: time.Now().Add(time.Hour)}
				rev, err := l.Publish(ctx, tok)
				if err != nil {
					t.Errorf("fenced write: %v", err)
					return
				}
				if m, err := str.GetMsg(ctx, rev); err == nil && m.Header.Get("Nats-Batch-Id") != "" {
					inBatch.Add(1)
				}
			})
		}
		wg.Wait()
	}
	if c := changes.Load() - before; c != 0 || !l.Valid() {
		t.Errorf("leadership changed %d times under concurrent writes", c)
	}
	if got := inBatch.Load(); batches != (got > 0) {
		t.Errorf("batches %v: %d writes were stored in a batch", batches, got)
	}
	t.Logf("%d writes stored in batches", inBatch.Load())
}

// BenchmarkFencedWrites measures the lease holder's token writes on a
// three-node cluster (real nats-server processes, sync_interval always), on
// an R3 bucket and on an R1 one, 16 writers at once as fetch_concurrency 16
// makes them: each committed on its own (the turn serialises them) against
// the writes that queue committed together as one atomic batch
// (leader.Config.Batches). On R1 the server stages each batch in a file
// store of its own, which costs more than the fsyncs it saves; the
// refresher batches only on a replicated bucket (natsx.Store.Batches).
//
//	go test ./clustertest -run '^$' -bench FencedWrites -count 6
func BenchmarkFencedWrites(b *testing.B) {
	nodes, urls := startCluster(b)
	nc, _ := connectCluster(b, urls)
	for i, c := range []struct {
		replicas int
		mode     string
	}{{3, "one-at-a-time"}, {3, "batches"}, {1, "one-at-a-time"}, {1, "batches"}} {
		mode := c.mode
		b.Run(fmt.Sprintf("replicas=%d/mode=%s", c.replicas, mode), func(b *testing.B) {
			ctx := context.Background()
			st, err := natsx.OpenStore(ctx, nc, fmt.Sprint("tokens", i), c.replicas, nil)
			if err != nil {
				b.Fatal(err)
			}
			cfg := leader.Config{
				Lease:     leader.LeaseConfig{KV: leader.LeaseBucket(st.Lease()), Holder: "only", TTL: leaseTTL, RetryPeriod: 200 * time.Millisecond},
				JetStream: st.JetStream(), Tokens: st.KV(), Conn: nc,
			}
			if mode == "batches" {
				cfg.Batches = leader.AtomicBatches(st.JetStream())
			}
			l := runLeader(b, cfg)
			var next atomic.Int64
			b.SetParallelism(8) // 16 writers on 2 cores
			cpu0 := cpuTime(b, nodes)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := next.Add(1)
					tok := wire.Token{Provider: fmt.Sprint("p", n%1000), AccessToken: fmt.Sprint("t", n), ExpiresAt: time.Now().Add(time.Hour)}
					if _, err := l.Publish(ctx, tok); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b, nodes)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// runLeader runs a leader of cfg until the test ends, once it leads and its
// fenced writes go through.
func runLeader(tb testing.TB, cfg leader.Config) *leader.Leader {
	tb.Helper()
	l, err := leader.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	testutil.CheckFor(tb, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := l.Publish(ctx, wire.Token{Provider: "probe", AccessToken: "x", ExpiresAt: time.Now().Add(time.Hour)})
		return err
	})
	return l
}

// cpuTime is the CPU time used so far by this process and the cluster's
// nats-server processes together.
func cpuTime(tb testing.TB, nodes []*node) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, n := range nodes {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.pid()))
		if err != nil {
			tb.Fatal(err)
		}
		// utime and stime are fields 14 and 15, counted after the
		// parenthesised command name.
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * time.Second / 100 // USER_HZ
	}
	return total
}

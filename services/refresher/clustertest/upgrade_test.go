package clustertest

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// PreviousRelease is the commit of the last landed release: the rolling
// upgrade test upgrades from a refresher built from it. Move it forward at
// each release (docs/deploying.md, "Upgrading").
const PreviousRelease = "9349403"

// buildPrevious builds the refresher of PreviousRelease from this
// repository's history. Its source is extracted once (git archive) into a
// directory named after the commit under the system's temporary directory
// and kept: a package's build-cache key includes its directory, so a fixed
// directory lets the Go build cache serve every package of the previous
// release after the first run, and the dependencies it shares with the
// current build (same module cache paths) from the very first one.
func buildPrevious(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed: cannot build the previous release")
	}
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not in a git checkout (%v): cannot build the previous release", err)
	}
	src := filepath.Join(os.TempDir(), "tokenbus-release-"+PreviousRelease)
	if _, err := os.Stat(filepath.Join(src, "go.work")); err != nil {
		tmp, err := os.MkdirTemp(os.TempDir(), "tokenbus-release-")
		if err != nil {
			t.Fatal(err)
		}
		archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive --format=tar %s | tar -x -C %q", strings.TrimSpace(string(root)), PreviousRelease, tmp))
		if out, err := archive.CombinedOutput(); err != nil {
			_ = os.RemoveAll(tmp)
			t.Fatalf("git archive %s (a shallow clone? fetch the full history): %v\n%s", PreviousRelease, err, out)
		}
		// Another run may have won the race: then use its tree.
		if err := os.Rename(tmp, src); err != nil {
			_ = os.RemoveAll(tmp)
		}
	}
	out := filepath.Join(filepath.Dir(bin.refresher), "refresher-"+PreviousRelease)
	build := exec.Command("go", "build", "-o", out, "./services/refresher/cmd/refresher")
	build.Dir = src
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the refresher of %s: %v\n%s", PreviousRelease, err, b)
	}
	return out
}

// published records every token value written to the tokens bucket, from
// token.updates.> (the bucket's republish: every write, SPEC §9).
type published struct {
	mu     sync.Mutex
	tokens map[string]bool
}

func watchPublished(t *testing.T, nc *nats.Conn) *published {
	t.Helper()
	p := &published{tokens: map[string]bool{}}
	sub, err := nc.Subscribe(wire.UpdatesPrefix+">", func(m *nats.Msg) {
		var tok wire.Token
		if json.Unmarshal(m.Data, &tok) == nil && tok.AccessToken != "" {
			p.mu.Lock()
			p.tokens[tok.AccessToken] = true
			p.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

// lost returns the Daraja tokens the simulator issued that were never
// published.
func (p *published) lost(sim *simulator.Server) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range sim.Log() {
		if e.Kind == simulator.Daraja && e.Token != "" && !p.tokens[e.Token] {
			out = append(out, e.Time.Format("15:04:05.000"))
		}
	}
	return out
}

// TestRollingUpgrade upgrades a three-replica deployment on a three-node
// cluster from the previous release's binary to this one, one replica at a
// time as a Kubernetes rollout does (SIGTERM, then the new replica, ready
// before the next stops), with tokens refreshing throughout (12 s Daraja
// tokens) and token.get asked continuously. No request fails, no expired
// token is served, and every token the provider issued is published (none
// thrown away). Values written by either version are read by the other: the
// new replicas serve the tokens and open the runtime providers the old ones
// wrote, the old replicas keep serving every provider while the rollout
// runs, and an old replica started after the upgrade (a rollback) serves
// the tokens the new ones wrote.
func TestRollingUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	prev := buildPrevious(t)
	sim := simulator.New(simulator.Config{DarajaTTL: 12 * time.Second})
	sim.AddCredential(simulator.Daraja, "app-config", "secret-config")
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)

	_, urls := startCluster(t)
	nc, _ := connectCluster(t, urls)
	pub := watchPublished(t, nc)

	// The deployment of the previous release, with runtime providers it sealed.
	var reps []*replica
	for i := range 3 {
		reps = append(reps, startRefresher(t, fmt.Sprint("prev-", i), prev, urls, hs.URL))
	}
	all := []string{"daraja-config", "merchant-0001", "merchant-0002"}
	for _, m := range all[1:] {
		putMerchant(t, nc, m, hs.URL)
	}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		for _, r := range reps {
			if err := servesAll(nc, r, all); err != nil {
				return err
			}
		}
		return nil
	})
	ld := startLoad(t, urls, all)

	// The rollout: standbys first, the leader last (any order works; this
	// one hands the lease over once, at the end).
	leader, err := leaderOf(nc, reps)
	if err != nil {
		t.Fatal(err)
	}
	order := []*replica{}
	for _, r := range reps {
		if r != leader {
			order = append(order, r)
		}
	}
	order = append(order, leader)
	var upgraded []*replica
	for i, old := range order {
		old.stop()
		r := startRefresher(t, fmt.Sprint("new-", i), bin.refresher, urls, hs.URL)
		upgraded = append(upgraded, r)
		// Every replica still running serves every provider: the new one,
		// and the old ones (re-sealing waits until no replica of the
		// previous release answers token.status).
		running := append([]*replica{}, upgraded...)
		running = append(running, order[i+1:]...)
		testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			for _, r := range running {
				if err := servesAll(nc, r, all); err != nil {
					return err
				}
			}
			return nil
		})
		t.Logf("replaced %s by %s", old.name, r.name)
	}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, err := leaderOf(nc, upgraded)
		return err
	})

	// The new version writes: a runtime provider sealed by it, and fresh
	// tokens (wait for one refresh of every provider under the new leader).
	all = append(all, "merchant-0003")
	putMerchant(t, nc, "merchant-0003", hs.URL)
	issued := len(sim.Log())
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		if n := len(sim.Log()) - issued; n < len(all) {
			return fmt.Errorf("%d tokens issued since the upgrade", n)
		}
		return nil
	})

	// A rollback: a replica of the previous release serves the tokens the
	// new one wrote. Runtime providers are a one-way step: once no replica
	// of the previous release remains, the new leader re-seals them in the
	// whole-record format, which the previous release cannot open
	// (docs/deploying.md: roll back with the backup taken before the
	// upgrade), so the rollback replica is asked for the config-file
	// provider only.
	back := startRefresher(t, "prev-rollback", prev, urls, hs.URL)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		return servesAll(nc, back, all[:1])
	})

	ld.finish()
	t.Logf("token.get: %d answered, %d failed, %d expired", ld.ok.Load(), ld.fail.Load(), ld.expired.Load())
	if ld.fail.Load() != 0 || ld.expired.Load() != 0 {
		t.Errorf("token.get failed %d times, served %d expired tokens: %v", ld.fail.Load(), ld.expired.Load(), ld.reasons)
	}
	if ld.ok.Load() == 0 {
		t.Error("no token.get answered")
	}
	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if l := pub.lost(sim); len(l) > 0 {
			return fmt.Errorf("%d tokens issued by the provider were never published (issued at %v)", len(l), l)
		}
		return nil
	})
	t.Logf("%d tokens issued in all, every one published", len(sim.Log()))
}

package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// TestBackupRestore is the runbook of docs/deploying.md ("Backup and
// restore"): while a refresher runs with runtime providers on a three-node
// cluster, back up the credentials and tokens buckets with the stock NATS
// CLI (`nats backup stream`); restore them into a fresh three-node cluster
// (`nats backup restore stream`); start a refresher there with the same
// sealing keys. Every provider, runtime ones included, is served without
// onboarding it again, with the very tokens of the backup: no provider call
// for a token still valid (counted at the simulator).
func TestBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	natsCLIFor(t) // built before any process starts
	sim := simulator.New(simulator.Config{})
	sim.AddCredential(simulator.Daraja, "app-config", "secret-config")
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)

	// The running deployment.
	_, urls := startCluster(t)
	nc, _ := connectCluster(t, urls)
	src := startRefresher(t, "refresher-src", bin.refresher, urls, hs.URL)
	merchants := []string{"merchant-0001", "merchant-0002", "merchant-0003", "merchant-0004", "merchant-0005"}
	all := append([]string{"daraja-config"}, merchants...)
	for _, m := range merchants {
		putMerchant(t, nc, m, hs.URL)
	}
	before := map[string]string{}
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		for _, p := range all {
			tok, err := getToken(nc, p)
			if err != nil {
				return err
			}
			before[p] = tok.AccessToken
		}
		return nil
	})

	// Online backup of both buckets, as an operator runs it.
	dir := t.TempDir()
	for _, stream := range []string{"KV_tokenbus-credentials", "KV_tokens"} {
		out := runNATS(t, urls, "backup", "stream", stream, filepath.Join(dir, stream), "--no-progress")
		t.Logf("nats backup stream %s: %s", stream, strings.TrimSpace(out))
		runNATS(t, urls, "backup", "validate", filepath.Join(dir, stream))
	}
	// The old deployment is gone.
	src.kill()
	nc.Close()

	// A fresh cluster: restore, then start the refresher with the same keys
	// — once the cluster can replicate an R3 stream (a restore sent earlier
	// found no responder), and once each restored stream reports its
	// messages with every replica current, as the runbook says. Even then a
	// watch made on the restored tokens stream can deliver none of its
	// values for seconds: the refresher must not lead on that empty copy
	// (natsx: such a watch is a stall, made again), or it replaces every
	// token.
	nodes2, urls2 := startCluster(t)
	nc2, js2 := connectCluster(t, urls2)
	waitMetaCurrent(t, js2)
	// The restore goes to the meta leader: it subscribes to the chunks'
	// subject itself, and a CLI connected to another server may send the
	// first chunk before that interest crosses the routes ("no responders").
	meta := metaLeaderURL(t, nodes2)
	for _, stream := range []string{"KV_tokenbus-credentials", "KV_tokens"} {
		out := runNATS(t, meta, "backup", "restore", "stream", filepath.Join(dir, stream), "--no-progress")
		t.Logf("nats backup restore stream %s: %s", stream, strings.TrimSpace(out))
		waitStreamCurrent(t, js2, stream)
	}

	calls := sim.Stats(simulator.Daraja).TokenRequests
	dst := startRefresher(t, "refresher-dst", bin.refresher, urls2, hs.URL)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if _, err := leaderOf(nc2, []*replica{dst}); err != nil {
			return err
		}
		return servesAll(nc2, dst, all)
	})
	for _, p := range all {
		tok, err := getToken(nc2, p)
		if err != nil {
			t.Fatalf("after the restore: %v", err)
		}
		if tok.AccessToken != before[p] {
			t.Errorf("%s: the restored refresher serves another token than the backup's (it called the provider)", p)
		}
	}
	// The listing shows the runtime providers, from the restored bucket.
	msg, err := nc2.Request(wire.ProvidersListSubject, nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range merchants {
		if !strings.Contains(string(msg.Data), fmt.Sprintf(`"name":%q`, m)) {
			t.Errorf("providers.list after the restore lacks %s: %s", m, msg.Data)
		}
	}
	// A leader that takes over keeps every valid token: give it time to
	// misbehave, then count the calls.
	time.Sleep(time.Second)
	if n := sim.Stats(simulator.Daraja).TokenRequests - calls; n != 0 {
		t.Errorf("the restored refresher made %d provider calls for tokens still valid", n)
	}
}

// metaLeaderURL is the client URL of the server that last logged itself
// the JetStream meta leader.
func metaLeaderURL(t *testing.T, nodes []*node) string {
	t.Helper()
	var url string
	testutil.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		for _, n := range nodes {
			// Its last word on the meta leader names itself.
			out := n.out.String()
			self := strings.LastIndex(out, "Self is new JetStream cluster metadata leader")
			if self >= 0 && self > strings.LastIndex(out, "JetStream cluster new metadata leader") {
				url = fmt.Sprintf("nats://127.0.0.1:%d", n.port)
			}
		}
		if url == "" {
			return errors.New("no server logged itself the meta leader")
		}
		return nil
	})
	return url
}

// waitMetaCurrent waits until the cluster can place and replicate an R3
// stream on all three servers: a probe stream, written, with every replica
// current, then deleted (the runbook: `nats server report jetstream`).
func waitMetaCurrent(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	testutil.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe"}, Replicas: 3, Storage: jetstream.MemoryStorage})
		if err != nil {
			return err
		}
		if _, err := js.Publish(ctx, "probe", nil); err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return fmt.Errorf("probe stream: replica %s not current", r.Name)
			}
		}
		return nil
	})
	if err := js.DeleteStream(ctx, "PROBE"); err != nil {
		t.Fatal(err)
	}
}

// waitStreamCurrent waits until stream has a leader, every replica is
// current, and it holds messages.
func waitStreamCurrent(t *testing.T, js jetstream.JetStream, stream string) {
	t.Helper()
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		s, err := js.Stream(context.Background(), stream)
		if err != nil {
			return err
		}
		info, err := s.Info(context.Background())
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || info.State.Msgs == 0 {
			return fmt.Errorf("%s: no leader or no messages yet: %+v", stream, info.State)
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return fmt.Errorf("%s: replica %s not current", stream, r.Name)
			}
		}
		return nil
	})
}

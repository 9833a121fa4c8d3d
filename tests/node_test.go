package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/tests/harness"
)

// nodeEvent is one line the Node.js example prints.
type nodeEvent struct {
	Event    string     `json:"event"`
	Token    wire.Token `json:"token"`
	Revision uint64     `json:"revision"`
	Code     int        `json:"code"`
	Message  string     `json:"message"`
	FromMem  string     `json:"access_token_from_memory"`
}

// nodeExample installs clients/node's packages (npm ci, from its
// package-lock.json) and returns the directory, skipping the test when Node
// or npm is not installed.
func nodeExample(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("installs npm packages")
	}
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: the Node.js example is not tested (install Node.js 18+ and npm to run it)", bin)
		}
	}
	dir, err := filepath.Abs(filepath.Join("..", "clients", "node"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	return dir
}

// TestNodeExample runs clients/node/example.mjs against a real refresher in
// both modes: token.get answers the current token, following delivers it,
// then delivers the next one the refresher publishes. Following
// token.updates creates no JetStream consumer.
func TestNodeExample(t *testing.T) {
	dir := nodeExample(t)
	for _, mode := range []string{"updates", "kv-watch"} {
		t.Run(mode, func(t *testing.T) {
			h := harness.Start(t, harness.Config{})
			base := consumers(t, h)
			runNode(t, dir, h, []string{"MODE=" + mode}, func() wire.Token {
				if n := consumers(t, h) - base; (n == 0) != (mode == "updates") {
					t.Errorf("mode %s: %d consumers created", mode, n)
				}
				return h.ForceRefresh()
			})
		})
	}
}

// TestNodeExampleReader: the Node.js example follows its provider connected
// with exactly the reader permissions of SPEC §10 and its own inbox prefix.
func TestNodeExampleReader(t *testing.T) {
	dir := nodeExample(t)
	const provider = "daraja-test"
	reader := &server.User{Username: "reader", Password: "reader-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"token.get." + provider, "token.refresh." + provider}},
		Subscribe: &server.SubjectPermission{Allow: []string{"token.updates." + provider, "_INBOX_reader.>"}},
	}}
	h := harness.Start(t, harness.Config{Provider: provider, Users: []*server.User{
		{Username: "refresher", Password: "refresher-pw"}, reader,
	}})
	runNode(t, dir, h, []string{"NATS_USER=reader", "NATS_PASSWORD=reader-pw", "INBOX_PREFIX=_INBOX_reader"}, nil)
}

// TestNodeExampleRestart: nats-server restarts under the Node.js example
// (default mode); the refresher reconnects first (the Node client waits 2 s
// between attempts) and publishes a new token, which the example gets by
// reading again once it is back.
func TestNodeExampleRestart(t *testing.T) {
	dir := nodeExample(t)
	h := harness.Start(t, harness.Config{})
	runNode(t, dir, h, nil, func() wire.Token {
		h.RestartNATS()
		var tok wire.Token
		harness.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			var err error
			tok, err = h.TryForceRefresh()
			return err
		})
		return tok
	})
}

// runNode runs example.mjs with env added, checks its get, its first update
// and its answer from memory, then has rotate (h.ForceRefresh if nil) publish
// a new token and checks that it arrives.
func runNode(t *testing.T, dir string, h *harness.Harness, env []string, rotate func() wire.Token) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "example.mjs")
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "NATS_URL="+h.URL, "PROVIDER="+h.Provider, "BUCKET="+h.Bucket, "UPDATES=2"), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan nodeEvent)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev nodeEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("not JSON: %q", sc.Text())
				continue
			}
			lines <- ev
		}
	}()
	next := func() nodeEvent {
		t.Helper()
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatalf("example ended early; stderr:\n%s", stderr.String())
			}
			return ev
		case <-ctx.Done():
			t.Fatalf("timed out; stderr:\n%s", stderr.String())
		}
		return nodeEvent{}
	}

	current := h.Current()
	if ev := next(); ev.Event != "get" || ev.Token != current {
		t.Fatalf("first line %+v, want get of %+v", ev, current)
	}
	var followed, ready bool
	for !followed || !ready {
		switch ev := next(); {
		case ev.Event == "update" && ev.Token == current && ev.Revision > 0:
			followed = true
		case ev.Event == "ready" && ev.FromMem == current.AccessToken:
			ready = true
		default:
			t.Fatalf("unexpected %+v", ev)
		}
	}
	if rotate == nil {
		rotate = h.ForceRefresh
	}
	fresh := rotate()
	if ev := next(); ev.Event != "update" || ev.Token != fresh {
		t.Fatalf("after rotation %+v, want an update with the new token", ev)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("example: %v\n%s", err, stderr.String())
	}
	for range lines {
	}
}

// TestNodeExampleErrors: the Node.js example reports the refresher's error
// reply with its code.
func TestNodeExampleErrors(t *testing.T) {
	dir := nodeExample(t)
	h := harness.Start(t, harness.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "example.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+h.URL, "PROVIDER=daraja-prod", "BUCKET="+h.Bucket)
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit: %v (want status 2)\n%s", err, out)
	}
	var ev nodeEvent
	if err := json.Unmarshal(out, &ev); err != nil || ev.Event != "error" || ev.Code != 404 || !strings.Contains(ev.Message, "daraja-prod") {
		t.Fatalf("output %q (%v)", out, err)
	}
}

// TestNodeDeniedNotCached: connected as a user who may ask token.get but not
// subscribe to token.updates (a request-reply-only reader from before SPEC
// §9), the Node.js TokenCache never keeps a token it could not keep
// current: get() answers, over request-reply every time.
func TestNodeDeniedNotCached(t *testing.T) {
	dir := nodeExample(t)
	const provider = "daraja-test"
	asker := &server.User{Username: "asker", Password: "asker-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"token.get." + provider}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_asker.>"}},
	}}
	h := harness.Start(t, harness.Config{Provider: provider, Users: []*server.User{
		{Username: "refresher", Password: "refresher-pw"}, asker,
	}})
	script := `
import { connect } from "nats";
import { TokenCache } from "./tokenbus.mjs";
const nc = await connect({ servers: process.env.NATS_URL, user: "asker", pass: "asker-pw", inboxPrefix: "_INBOX_asker" });
const cache = new TokenCache(nc, { providers: [process.env.PROVIDER] });
await cache.start();
const a = await cache.get(process.env.PROVIDER);
const b = await cache.get(process.env.PROVIDER);
console.log(JSON.stringify({ cached: cache.tokens.size, same: a.access_token === b.access_token, token: a.access_token }));
cache.stop();
await nc.close();
`
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--input-type=module", "-e", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+h.URL, "PROVIDER="+provider)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got struct {
		Cached int    `json:"cached"`
		Same   bool   `json:"same"`
		Token  string `json:"token"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if got.Cached != 0 || !got.Same || got.Token != h.Current().AccessToken {
		t.Fatalf("got %+v, want the current token, nothing cached", got)
	}
}

// TestNodeExampleCooldown (SPEC §3): the Node.js example reports the current
// token as rejected ten times in a row. One report refreshes; the next is
// answered 429 with Retry-After, and the client honours it: the rest are not
// sent, and the provider is called once for the flood.
func TestNodeExampleCooldown(t *testing.T) {
	dir := nodeExample(t)
	h := harness.Start(t, harness.Config{RefreshCooldown: 5 * time.Second})
	before := h.Sim.Stats(simulator.Daraja).TokenRequests
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "example.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+h.URL, "PROVIDER="+h.Provider, "REPORTS=10")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node example.mjs: %v\n%s", err, out)
	}
	var refreshed, cooled int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var ev struct {
			nodeEvent
			RetryAfter int `json:"retry_after"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		switch {
		case ev.Event == "refreshed":
			refreshed++
		case ev.Event == "error" && ev.Code == 429 && ev.RetryAfter > 0 && ev.RetryAfter <= 5:
			cooled++
		case ev.Event == "get":
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	if refreshed != 1 || cooled != 9 {
		t.Fatalf("%d refreshed, %d cooled down; want 1 and 9:\n%s", refreshed, cooled, out)
	}
	if n := h.Sim.Stats(simulator.Daraja).TokenRequests - before; n != 1 {
		t.Fatalf("the flood made %d provider calls, want 1", n)
	}
}

// TestNodeExampleEvents: with EVENTS=1 the Node.js example, connected as a
// reader of its provider (SPEC §10: token.events.P included), prints the
// provider's events: each token the refresher publishes comes with a
// "refreshed" event.
func TestNodeExampleEvents(t *testing.T) {
	dir := nodeExample(t)
	const provider = "daraja-test"
	reader := &server.User{Username: "reader", Password: "reader-pw", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"token.get." + provider, "token.refresh." + provider}},
		Subscribe: &server.SubjectPermission{Allow: []string{"token.updates." + provider, "token.events." + provider, "_INBOX_reader.>"}},
	}}
	h := harness.Start(t, harness.Config{Provider: provider, Users: []*server.User{
		{Username: "refresher", Password: "refresher-pw"}, reader,
	}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "example.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+h.URL, "PROVIDER="+provider, "BUCKET="+h.Bucket, "UPDATES=3", "EVENTS=1",
		"NATS_USER=reader", "NATS_PASSWORD=reader-pw", "INBOX_PREFIX=_INBOX_reader")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var events, updates int
	for sc.Scan() {
		var ev struct {
			Event, Type, Provider string
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		switch ev.Event {
		case "ready":
			h.ForceRefresh()
			h.ForceRefresh()
		case "update":
			updates++
		case "provider_event":
			if ev.Type != wire.EventRefreshed || ev.Provider != provider {
				t.Fatalf("event %s", sc.Text())
			}
			events++
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("example: %v\n%s", err, stderr.String())
	}
	if updates != 3 || events < 1 {
		t.Fatalf("%d updates, %d refreshed events; want 3 and at least 1\n%s", updates, events, stderr.String())
	}
}

package clustertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// httpGet returns the status and body of url, or code 0 and the error.
func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady polls /readyz until want (200, or 503 with every part of body).
func waitReady(t *testing.T, within time.Duration, base string, want int, body ...string) {
	t.Helper()
	testutil.CheckFor(t, within, 100*time.Millisecond, func() error {
		code, b := httpGet(base + "/readyz")
		if code != want {
			return fmt.Errorf("/readyz: %d %q, want %d", code, b, want)
		}
		for _, s := range body {
			if !strings.Contains(b, s) {
				return fmt.Errorf("/readyz: %d %q, want %q in it", code, b, s)
			}
		}
		return nil
	})
}

// writeConfig writes a refresher configuration with body and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "refresher.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// An embedded NATS port already in use fails start-up at once, naming the
// address and the field to change, with one "refresher: " prefix.
func TestEmbeddedPortInUseFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	ports := freePorts(t, 1)
	conf := writeConfig(t, fmt.Sprintf(`nats: {embedded: {listen: %q, store_dir: %q}}
http: {listen: "127.0.0.1:%d"}
providers:
  - {name: d, kind: daraja, base_url: "http://127.0.0.1:1", consumer_key: k, consumer_secret: s}
`, addr, t.TempDir(), ports[0]))
	start := time.Now()
	p := startProc(t, "refresher", bin.refresher, "--config", conf)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("refresher still running 10 s after start with its NATS port in use")
	}
	took := time.Since(start)
	out := strings.TrimSpace(p.out.String())
	if code := p.cmd.ProcessState.ExitCode(); code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	want := "refresher: nats.embedded.listen " + addr + " is in use"
	if !strings.HasPrefix(out, want) || strings.Count(out, "refresher: ") != 1 {
		t.Errorf("output %q, want one line starting %q", out, want)
	}
	if took > 2*time.Second {
		t.Errorf("took %v to fail, want under 2 s", took)
	}
}

// A refresher started before its NATS server waits for it, /readyz saying
// why (unreachable, then JetStream disabled), and serves once it is there.
func TestStartsBeforeNATSAndWaits(t *testing.T) {
	ports := freePorts(t, 2)
	natsPort, httpPort := ports[0], ports[1]
	url := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	conf := writeConfig(t, fmt.Sprintf(`nats: {url: %q}
http: {listen: "127.0.0.1:%d"}
providers:
  - {name: d, kind: daraja, base_url: "http://127.0.0.1:1", consumer_key: k, consumer_secret: s}
`, url, httpPort))
	r := startProc(t, "refresher", bin.refresher, "--config", conf)
	waitReady(t, 10*time.Second, base, 503, "nats.url", url)
	if !strings.Contains(r.out.String(), "cannot connect to NATS; retrying") {
		t.Errorf("no retry logged:\n%s", r.out)
	}

	// A server without JetStream: connected, but not ready.
	ns := startProc(t, "nats-nojs", bin.natsServer, "-a", "127.0.0.1", "-p", fmt.Sprint(natsPort))
	waitReady(t, 20*time.Second, base, 503, "JetStream is not enabled")
	var page struct {
		Ready    bool   `json:"ready"`
		NotReady string `json:"not_ready"`
	}
	if _, body := httpGet(base + "/status.json"); json.Unmarshal([]byte(body), &page) != nil || page.Ready || !strings.Contains(page.NotReady, "JetStream is not enabled") {
		t.Errorf("status.json while JetStream is disabled: %s", body)
	}
	ns.kill()

	startProc(t, "nats-js", bin.natsServer, "-a", "127.0.0.1", "-p", fmt.Sprint(natsPort), "-js", "-sd", t.TempDir())
	waitReady(t, 30*time.Second, base, 200)
	select {
	case <-r.done:
		t.Fatalf("refresher exited:\n%s", r.out)
	default:
	}
}

// /readyz turns 503, saying why, when JetStream loses quorum, logs it, and
// turns 200 again when quorum is back.
func TestReadyzFollowsJetStreamQuorum(t *testing.T) {
	nodes, _ := startCluster(t)
	httpPort := freePorts(t, 1)[0]
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	conf := writeConfig(t, fmt.Sprintf(`nats: {url: "nats://127.0.0.1:%d", replicas: 3}
http: {listen: "127.0.0.1:%d"}
providers:
  - {name: d, kind: daraja, base_url: "http://127.0.0.1:1", consumer_key: k, consumer_secret: s}
`, nodes[0].port, httpPort))
	r := startProc(t, "refresher", bin.refresher, "--config", conf)
	waitReady(t, 60*time.Second, base, 200)

	nodes[1].kill()
	nodes[2].kill()
	waitReady(t, 40*time.Second, base, 503, "JetStream")
	testutil.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(r.out.String(), `msg="not ready"`) {
			return fmt.Errorf("no \"not ready\" logged")
		}
		return nil
	})

	nodes[1].start(t)
	waitReady(t, 60*time.Second, base, 200)
}

package clustertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// routePassword is the cluster's route password in the servers' environment.
const routePassword = "route-pw-Hh72"

// shippedConf returns the shipped deploy/nats/nats-<i>.conf with only what
// must differ on a test machine rewritten: the client, route and monitoring
// ports and the store directory. Each line it rewrites must be there exactly
// once, so that a change to the shipped file is noticed here.
func shippedConf(t *testing.T, i int, client, route, monitor int, store string) []byte {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("../../../deploy/nats/nats-%d.conf", i))
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	for _, r := range [][2]string{
		{"listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", client)},
		{"http: 127.0.0.1:8222", fmt.Sprintf("http: 127.0.0.1:%d", monitor)},
		{"store_dir: /var/lib/nats/jetstream", fmt.Sprintf("store_dir: %q", store)},
		{"listen: 0.0.0.0:6222", fmt.Sprintf("listen: 127.0.0.1:%d", route)},
	} {
		if n := strings.Count(s, r[0]); n != 1 {
			t.Fatalf("deploy/nats/nats-%d.conf: %q appears %d times, want once", i, r[0], n)
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	return []byte(s)
}

// shippedCluster is three nats-server processes started from the shipped
// deploy/nats/nats-{1,2,3}.conf and auth.conf.
type shippedCluster struct {
	urls     string
	routes   []int // route ports
	monitors []int // monitoring ports
	nodes    []*proc
}

// startShippedCluster starts the shipped configuration: the roles, the
// authenticated routes, monitoring on loopback.
func startShippedCluster(t *testing.T) *shippedCluster {
	t.Helper()
	for k, v := range rolePasswords {
		t.Setenv(k, v) // the child processes inherit them
	}
	ports := freePorts(t, 9)
	c := &shippedCluster{routes: ports[3:6], monitors: ports[6:9]}
	t.Setenv("TOKENBUS_ROUTE_PASSWORD", routePassword)
	for i := range 3 {
		t.Setenv(fmt.Sprint("TOKENBUS_ROUTE_", i+1), fmt.Sprintf("nats-route://tokenbus-route:%s@127.0.0.1:%d", routePassword, c.routes[i]))
	}
	dir := t.TempDir()
	roles, err := os.ReadFile(authConf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), roles, 0o600); err != nil {
		t.Fatal(err)
	}
	var urls []string
	for i := range 3 {
		conf := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(conf, shippedConf(t, i+1, ports[i], c.routes[i], c.monitors[i], filepath.Join(dir, fmt.Sprint("store-", i+1))), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, startProc(t, fmt.Sprint("nats-", i+1), bin.natsServer, "-c", conf))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	c.urls = strings.Join(urls, ",")
	return c
}

// numRoutes reads the route count from a server's monitoring port.
func numRoutes(monitor int) (int, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", monitor))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var rz struct {
		NumRoutes int `json:"num_routes"`
	}
	if err := json.Unmarshal(body, &rz); err != nil {
		return 0, err
	}
	return rz.NumRoutes, nil
}

// TestShippedClusterConfigs: the shipped deploy/nats/nats-{1,2,3}.conf, as
// nats-server reads them, authenticate routes and keep monitoring on
// loopback; a cluster started from them forms; a server that tries to join
// it without the route credentials (none, or a wrong password) is refused,
// while one with them joins (which shows the check can see a route).
func TestShippedClusterConfigs(t *testing.T) {
	for k, v := range rolePasswords {
		t.Setenv(k, v)
	}
	t.Setenv("TOKENBUS_ROUTE_PASSWORD", routePassword)
	for i := range 3 {
		t.Setenv(fmt.Sprint("TOKENBUS_ROUTE_", i+1), fmt.Sprintf("nats-route://tokenbus-route:%s@nats-%d:6222", routePassword, i+1))
	}
	for i := 1; i <= 3; i++ {
		opts, err := server.ProcessConfigFile(fmt.Sprintf("../../../deploy/nats/nats-%d.conf", i))
		if err != nil {
			t.Fatalf("nats-%d.conf: %v", i, err)
		}
		if opts.Cluster.Username == "" || opts.Cluster.Password != routePassword {
			t.Errorf("nats-%d.conf: routes are not authenticated", i)
		}
		if len(opts.Routes) != 3 || opts.Routes[0].User == nil {
			t.Errorf("nats-%d.conf: route URLs %v carry no credentials", i, opts.Routes)
		}
		if opts.HTTPHost != "127.0.0.1" {
			t.Errorf("nats-%d.conf: monitoring on %q, want 127.0.0.1", i, opts.HTTPHost)
		}
		if len(opts.Accounts) < 2 {
			t.Errorf("nats-%d.conf: %d accounts, want the roles of auth.conf", i, len(opts.Accounts))
		}
	}

	c := startShippedCluster(t)
	testutil.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		for i, m := range c.monitors {
			if n, err := numRoutes(m); err != nil || n < 2 {
				return fmt.Errorf("nats-%d: %d routes (%v)", i+1, n, err)
			}
		}
		return nil
	})

	intruder := func(name, route string) int {
		ports := freePorts(t, 3)
		dir := t.TempDir()
		conf := filepath.Join(dir, "intruder.conf")
		body := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
cluster { name: tokenbus, listen: 127.0.0.1:%d, routes: [%q] }
`, name, ports[0], ports[1], ports[2], route)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		startProc(t, name, bin.natsServer, "-c", conf)
		return ports[1]
	}
	bare := intruder("intruder-bare", fmt.Sprintf("nats-route://127.0.0.1:%d", c.routes[0]))
	wrong := intruder("intruder-wrong", fmt.Sprintf("nats-route://tokenbus-route:guess@127.0.0.1:%d", c.routes[0]))
	member := intruder("with-credentials", fmt.Sprintf("nats-route://tokenbus-route:%s@127.0.0.1:%d", routePassword, c.routes[0]))
	testutil.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if n, err := numRoutes(member); err != nil || n < 1 {
			return fmt.Errorf("the server with the route credentials has %d routes (%v)", n, err)
		}
		return nil
	})
	// The intruders have tried (each retries every second); give them a
	// few more attempts, then neither may hold a route.
	time.Sleep(3 * time.Second)
	for name, m := range map[string]int{"without credentials": bare, "with a wrong password": wrong} {
		if n, err := numRoutes(m); err != nil || n != 0 {
			t.Errorf("a server %s holds %d routes (%v)", name, n, err)
		}
	}
}

// natsCLI is the stock NATS CLI, built once, as a hostile user would run it.
var natsCLI = sync.OnceValues(func() (string, error) {
	cmd := exec.Command("go", "install", "github.com/nats-io/natscli/nats@v0.5.0")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOBIN="+bin.dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the nats CLI: %v\n%s", err, out)
	}
	return filepath.Join(bin.dir, "nats"), nil
})

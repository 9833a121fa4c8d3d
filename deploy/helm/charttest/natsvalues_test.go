package charttest

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"sigs.k8s.io/yaml"
)

const (
	natsValues = "../../kubernetes/nats-values.yaml"
	authConf   = "../../nats/auth.conf"
	// natsConfigDir is where the NATS chart mounts its nats.conf: an
	// $include path is relative to it.
	natsConfigDir = "/etc/nats-config"
)

// natsChartValues is the part of the official NATS chart's values that
// deploy/kubernetes/nats-values.yaml sets and this test checks.
type natsChartValues struct {
	Config struct {
		Cluster struct {
			Enabled  bool `json:"enabled"`
			Replicas int  `json:"replicas"`
			TLS      struct {
				Enabled    bool   `json:"enabled"`
				SecretName string `json:"secretName"`
				CA         string `json:"ca"`
			} `json:"tls"`
		} `json:"cluster"`
		JetStream struct {
			Enabled   bool `json:"enabled"`
			FileStore struct {
				Enabled bool `json:"enabled"`
				PVC     struct {
					Enabled bool `json:"enabled"`
				} `json:"pvc"`
			} `json:"fileStore"`
		} `json:"jetstream"`
		Merge map[string]any `json:"merge"`
	} `json:"config"`
	Container struct {
		Env   map[string]any `json:"env"`
		Patch []jsonPatch    `json:"patch"`
	} `json:"container"`
	PodTemplate struct {
		Patch []jsonPatch `json:"patch"`
	} `json:"podTemplate"`
}

type jsonPatch struct {
	Op    string         `json:"op"`
	Path  string         `json:"path"`
	Value map[string]any `json:"value"`
}

// TestNATSValuesFollowAuthConf checks the values for the official NATS chart
// against what tokenbus needs, and against deploy/nats/auth.conf itself
// rather than a copy: a three-node cluster with JetStream on volumes, routes
// authenticated by verified TLS, and auth.conf included from a ConfigMap
// mounted where the include points, with every variable auth.conf reads
// supplied from a Secret. The last is checked with nats-server's own
// parser: auth.conf loads with exactly the values' environment, and yields
// the refresher's user.
func TestNATSValuesFollowAuthConf(t *testing.T) {
	b, err := os.ReadFile(natsValues)
	if err != nil {
		t.Fatal(err)
	}
	var v natsChartValues
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	c := v.Config
	if !c.Cluster.Enabled || c.Cluster.Replicas != 3 {
		t.Errorf("cluster: enabled %v, replicas %d: want a three-node cluster", c.Cluster.Enabled, c.Cluster.Replicas)
	}
	if !c.Cluster.TLS.Enabled || c.Cluster.TLS.SecretName == "" || c.Cluster.TLS.CA == "" {
		t.Error("cluster routes are not authenticated: want config.cluster.tls with a secretName and a ca (verify)")
	}
	if !c.JetStream.Enabled || !c.JetStream.FileStore.Enabled || !c.JetStream.FileStore.PVC.Enabled {
		t.Error("JetStream with a file store on persistent volumes is not enabled")
	}

	// auth.conf is included from a mounted ConfigMap.
	inc, _ := c.Merge["$include"].(string)
	if inc == "" {
		t.Fatal("config.merge has no $include of auth.conf")
	}
	file := path.Clean(path.Join(natsConfigDir, inc))
	if path.Base(file) != "auth.conf" {
		t.Errorf("the include names %s, not auth.conf (the ConfigMap is created --from-file=deploy/nats/auth.conf)", file)
	}
	var volume string
	for _, p := range v.Container.Patch {
		if p.Op == "add" && p.Path == "/volumeMounts/-" && p.Value["mountPath"] == path.Dir(file) {
			volume, _ = p.Value["name"].(string)
		}
	}
	if volume == "" {
		t.Fatalf("no volume is mounted at %s, where the include points", path.Dir(file))
	}
	mounted := false
	for _, p := range v.PodTemplate.Patch {
		if p.Op == "add" && p.Path == "/spec/volumes/-" && p.Value["name"] == volume && p.Value["configMap"] != nil {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("volume %s is not a ConfigMap volume of the pod", volume)
	}

	// auth.conf loads with the values' environment and nothing else.
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "TOKENBUS_") {
			t.Setenv(name, "")
			_ = os.Unsetenv(name)
		}
	}
	for name, val := range v.Container.Env {
		m, ok := val.(map[string]any)
		if !ok || m["valueFrom"] == nil {
			t.Errorf("container.env.%s: a password must come from a Secret (valueFrom.secretKeyRef)", name)
		}
		t.Setenv(name, "test-password-"+name)
	}
	dir := t.TempDir()
	auth, err := os.ReadFile(authConf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), auth, 0o600); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(main, []byte("port: 4222\ninclude ./auth.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(main)
	if err != nil {
		t.Fatalf("auth.conf does not load with the environment of nats-values.yaml: %v", err)
	}
	var users []string
	for _, u := range opts.Users {
		users = append(users, u.Username)
		if u.Password == "" {
			t.Errorf("user %s has no password", u.Username)
		}
	}
	found := false
	for _, u := range users {
		if u == "tokenbus-refresher" {
			found = true
		}
	}
	if !found {
		t.Errorf("auth.conf as the values load it has no tokenbus-refresher user (users: %v)", users)
	}
}

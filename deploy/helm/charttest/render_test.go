package charttest

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/tokenbus/tokenbus/services/refresher/config"
)

var update = flag.Bool("update", false, "rewrite deploy/kubernetes/refresher.yaml from the chart")

// valueSets are the renderings every test checks: the chart's defaults and
// the production set.
var valueSets = map[string][]string{
	"default":    nil,
	"production": {filepath.Join(ChartDir, "ci", "production-values.yaml")},
}

// rendered renders and validates one value set.
func rendered(t *testing.T, files ...string) []Object {
	t.Helper()
	m, err := Render(ChartDir, files...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := DecodeAll(m)
	if err != nil {
		t.Fatalf("the rendering does not validate:\n%v", err)
	}
	return objs
}

func find[T any](t *testing.T, objs []Object) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.Obj.(T); ok {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T rendered", zero)
	return zero
}

func has[T any](objs []Object) bool {
	for _, o := range objs {
		if _, ok := o.Obj.(T); ok {
			return true
		}
	}
	return false
}

// TestChartValidates renders the chart for each value set and checks every
// manifest against the Kubernetes API (see the package doc), then the
// chart's own invariants.
func TestChartValidates(t *testing.T) {
	for name, files := range valueSets {
		t.Run(name, func(t *testing.T) {
			objs := rendered(t, files...)
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.GVK.Kind)
			}
			t.Logf("rendered %s", strings.Join(kinds, ", "))
			checkDeployment(t, objs)
			checkSelectors(t, objs)
			checkConfig(t, objs)
			if name == "production" {
				for _, want := range []string{"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget"} {
					if !slices.Contains(kinds, want) {
						t.Errorf("the production set renders no %s", want)
					}
				}
				rule := find[*monitoringv1.PrometheusRule](t, objs)
				if len(rule.Spec.Groups) == 0 || len(rule.Spec.Groups[0].Rules) == 0 {
					t.Error("the PrometheusRule has no rules")
				}
			}
		})
	}
}

// checkDeployment checks the pod template: probes, resources, grace period,
// anti-affinity, the image, and that every name it refers to exists.
func checkDeployment(t *testing.T, objs []Object) {
	t.Helper()
	dep := find[*appsv1.Deployment](t, objs)
	spec := dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if !strings.HasPrefix(c.Image, "ghcr.io/tokenbus/refresher:") {
		t.Errorf("image %q is not the one `go tool task image` builds", c.Image)
	}
	ports := map[string]bool{}
	for _, p := range c.Ports {
		for _, msg := range validation.IsValidPortName(p.Name) {
			t.Errorf("container port %q: %s", p.Name, msg)
		}
		ports[p.Name] = true
	}
	for what, pr := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != what {
			t.Errorf("no probe on %s", what)
			continue
		}
		if n := pr.HTTPGet.Port.StrVal; n != "" && !ports[n] {
			t.Errorf("probe on %s names port %q, which the container does not declare", what, n)
		}
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("no memory request or limit")
	}
	for _, e := range c.Env {
		for _, msg := range validation.IsEnvVarName(e.Name) {
			t.Errorf("env %q: %s", e.Name, msg)
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("volume mount %q names no volume", m.Name)
		}
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	a := spec.Affinity
	if a == nil || a.PodAntiAffinity == nil ||
		len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution)+len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("no pod anti-affinity")
	}
	if *dep.Spec.Replicas > 1 && !has[*policyv1.PodDisruptionBudget](objs) {
		t.Error("several replicas but no PodDisruptionBudget")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the root filesystem is writable")
	}
}

// checkSelectors checks that every selector of the chart selects the
// Deployment's pods, and no other label set.
func checkSelectors(t *testing.T, objs []Object) {
	t.Helper()
	dep := find[*appsv1.Deployment](t, objs)
	pod := labels.Set(dep.Spec.Template.Labels)
	sel := func(what string, ls *metav1.LabelSelector) {
		s, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if s.Empty() || !s.Matches(pod) {
			t.Errorf("%s (%s) does not select the refresher's pods (%s)", what, s, pod)
		}
	}
	sel("Deployment.spec.selector", dep.Spec.Selector)
	if a := dep.Spec.Template.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			sel("preferred anti-affinity", w.PodAffinityTerm.LabelSelector)
		}
		for _, w := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			sel("required anti-affinity", w.LabelSelector)
		}
	}
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *policyv1.PodDisruptionBudget:
			sel("PodDisruptionBudget", v.Spec.Selector)
		case *networkingv1.NetworkPolicy:
			sel("NetworkPolicy", &v.Spec.PodSelector)
		case *corev1.Service:
			sel("Service", &metav1.LabelSelector{MatchLabels: v.Spec.Selector})
			svc := labels.Set(v.Labels)
			for _, m := range objs {
				if sm, ok := m.Obj.(*monitoringv1.ServiceMonitor); ok {
					s, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
					if err != nil || !s.Matches(svc) {
						t.Errorf("the ServiceMonitor does not select the Service")
					}
					for _, ep := range sm.Spec.Endpoints {
						if ep.Port != v.Spec.Ports[0].Name {
							t.Errorf("the ServiceMonitor scrapes port %q, not the Service's %q", ep.Port, v.Spec.Ports[0].Name)
						}
					}
				}
			}
		}
	}
	for _, c := range dep.Spec.Template.Spec.TopologySpreadConstraints {
		sel("topology spread", c.LabelSelector)
	}
}

// checkConfig parses the ConfigMap's refresher.yaml with the refresher's own
// parser, as the pod would: every ${NAME} must be an environment variable the
// Deployment sets (or may set, from a Secret of providerSecrets), and every
// file it names must be mounted. It also checks that the grace period covers
// a graceful handover: the longest provider timeout plus 30 s (the drain is
// bounded by the longest timeout + 5 s; then the lease release and the NATS
// drain), as docs/leadership.md says.
func checkConfig(t *testing.T, objs []Object) {
	t.Helper()
	dep := find[*appsv1.Deployment](t, objs)
	cm := find[*corev1.ConfigMap](t, objs)
	c := dep.Spec.Template.Spec.Containers[0]
	body, ok := cm.Data["refresher.yaml"]
	if !ok {
		t.Fatal("the ConfigMap has no refresher.yaml")
	}
	// The container reads the file the ConfigMap is mounted as.
	cfgPath := c.Args[len(c.Args)-1]
	mounted := false
	for _, m := range c.VolumeMounts {
		v := volume(dep, m.Name)
		if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && cfgPath == m.MountPath+"/refresher.yaml" {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("--config %s is not the ConfigMap's refresher.yaml as mounted", cfgPath)
	}

	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	fromSecrets := len(c.EnvFrom) > 0
	for _, name := range envRefs(body) {
		if !env[name] && !fromSecrets {
			t.Errorf("refresher.yaml reads ${%s}, which the Deployment does not set", name)
		}
	}
	lookup := func(name string) (string, bool) {
		if strings.HasPrefix(name, "TOKENBUS_SEALING_KEY_") {
			return "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", env[name]
		}
		return "placeholder-" + strings.ToLower(name), env[name] || fromSecrets
	}
	// Files the configuration names live under a volume mount: lay the
	// mounted keys out in a temporary root and point the configuration there.
	root := t.TempDir()
	for _, m := range c.VolumeMounts {
		v := volume(dep, m.Name)
		if v.Secret == nil {
			continue
		}
		for _, it := range v.Secret.Items {
			p := filepath.Join(root, m.MountPath, it.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	local := strings.ReplaceAll(body, " /etc/tokenbus/", " "+root+"/etc/tokenbus/")
	cfg, err := config.Parse([]byte(local), lookup)
	if err != nil {
		t.Fatalf("the refresher refuses the rendered configuration: %v\n%s", err, body)
	}
	if cfg.NATS.URL == "" || cfg.NATS.Replicas != 3 {
		t.Errorf("nats: url %q, replicas %d: want an external cluster with R3 buckets", cfg.NATS.URL, cfg.NATS.Replicas)
	}
	longest := 10 * time.Second // the default provider timeout
	for _, p := range cfg.Providers {
		longest = max(longest, time.Duration(p.Timeout))
	}
	grace := time.Duration(*dep.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	if grace < longest+30*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v does not cover a graceful handover: the longest provider timeout (%v) + 30 s", grace, longest)
	}
}

func volume(dep *appsv1.Deployment, name string) corev1.Volume {
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	return corev1.Volume{}
}

// TestBadValuesNameTheField: values the chart cannot honour fail the
// rendering with a message that names the value.
func TestBadValuesNameTheField(t *testing.T) {
	for _, tc := range []struct {
		vals string
		want string
	}{
		{`config: {nats: {url: nats://x:4222}}`, "config.nats"},
		{`config: {http: {listen: ":9090"}}`, "config.http"},
		{`antiAffinity: sometimes`, "antiAffinity"},
		{`config: {providers: []}`, "config.providers"},
		{`nats: {passwordSecret: {name: ""}}`, "nats.passwordSecret.name"},
		{`nats: {credsSecret: {name: creds}}`, "nats.credsSecret.name"},
		{`{sealingKeys: [{id: k1, secret: {name: s, key: k1}}], config: {credentials: {keys: [{id: k1, key: x}]}}}`, "config.credentials.keys"},
	} {
		var vals map[string]any
		if err := yaml.Unmarshal([]byte(tc.vals), &vals); err != nil {
			t.Fatal(err)
		}
		_, err := RenderValues(ChartDir, vals)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %s", tc.vals, err, tc.want)
		}
	}
}

// plainManifest is deploy/kubernetes/refresher.yaml: the chart rendered
// with its default values, for those who apply manifests without Helm.
const plainManifest = "../../kubernetes/refresher.yaml"

const plainHeader = `# GENERATED from the Helm chart deploy/helm/tokenbus with its default values
# (release "tokenbus", namespace "tokenbus"); do not edit. Regenerate with:
#   go tool task chart-manifest
# Before applying: create the namespace, the Secret tokenbus-nats (key
# password: the refresher role of deploy/nats/auth.conf) and the Secret
# tokenbus-providers (the variables the ConfigMap's providers read), and edit
# the providers (docs/deploying.md). Prefer the chart: helm install tokenbus
# deploy/helm/tokenbus -n tokenbus -f my-values.yaml.
`

// TestPlainManifest: the plain manifest is the chart's rendering, so the two
// cannot drift.
func TestPlainManifest(t *testing.T) {
	m, err := Render(ChartDir)
	if err != nil {
		t.Fatal(err)
	}
	want := plainHeader + m
	if *update {
		if err := os.WriteFile(plainManifest, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(plainManifest)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is not the chart's rendering: run go tool task chart-manifest", plainManifest)
	}
	if _, err := DecodeAll(string(got)); err != nil {
		t.Fatal(err)
	}
}

// alertRules returns the alert rules the chart must ship and where they
// come from: deploy/prometheus/tokenbus-alerts.yml where it exists (the rules
// that are tested against real scrapes), else the rules docs/observability.md
// shows.
func alertRules(t *testing.T) (string, string) {
	t.Helper()
	const shipped = "../../prometheus/tokenbus-alerts.yml"
	if b, err := os.ReadFile(shipped); err == nil {
		return string(b), "deploy/prometheus/tokenbus-alerts.yml"
	}
	doc, err := os.ReadFile("../../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i := strings.Index(s, "```yaml\ngroups:")
	if i < 0 {
		t.Fatal("docs/observability.md shows no alert rules")
	}
	block := s[i+len("```yaml\n"):]
	return block[:strings.Index(block, "```")], "docs/observability.md"
}

// TestAlertRules: the chart's default PrometheusRule holds the project's
// alert rules, and they decode as rule groups.
func TestAlertRules(t *testing.T) {
	rules, from := alertRules(t)
	want := "# The alert rules of " + from + ", as the chart ships them (go tool task chart-manifest copies them).\n" + rules
	path := filepath.Join(ChartDir, "files", "alerts.yaml")
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("deploy/helm/tokenbus/files/alerts.yaml differs from the rules of %s: run go tool task chart-manifest", from)
	}
	var spec monitoringv1.PrometheusRuleSpec
	if err := strictDecode([]byte(rules), &spec); err != nil {
		t.Fatal(err)
	}
	if len(spec.Groups) == 0 || len(spec.Groups[0].Rules) == 0 {
		t.Fatal("no alert rules")
	}
}

// Example of what a reader sees when a manifest is wrong.
func ExampleDecode() {
	_, err := Decode(Doc{Source: "bad.yaml", Body: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatta: {}\n")})
	fmt.Println(err)
	// Output: bad.yaml: ConfigMap: unknown field "datta"
}

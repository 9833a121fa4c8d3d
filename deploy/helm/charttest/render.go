// Package charttest renders the refresher's Helm chart (deploy/helm/tokenbus)
// with Helm's own Go library, as `helm template` does, and validates every
// manifest against the Kubernetes API types without a cluster or a network:
// strict decoding into the k8s.io/api (and Prometheus Operator) Go types, so
// an unknown or misplaced field is an error; the API's OpenAPI-derived
// structural schema (client-go's type converter), which refuses wrong types
// and duplicate keys in keyed lists; apimachinery's own validation of names,
// labels, annotations and selectors; and the chart's own invariants (the
// selectors select the pods, named ports exist, the refresher's
// configuration parses with the refresher's own parser).
//
// It is a module of its own because Helm and k8s.io are large: the
// refresher, the client library and the other tests never pull them in.
package charttest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime/debug"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	v2util "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"sigs.k8s.io/yaml"
)

// ChartDir is the chart, relative to this package.
const ChartDir = "../tokenbus"

// Release is the release name and namespace the tests render with, as
// docs/deploying.md installs it.
const (
	Release   = "tokenbus"
	Namespace = "tokenbus"
)

// Render renders the chart in dir with the given values files (later ones
// override earlier ones), as `helm template --namespace tokenbus tokenbus
// dir -f a -f b` does, and returns the manifest: documents separated by
// `---`, each with its `# Source:` line.
func Render(dir string, valueFiles ...string) (string, error) {
	vals := map[string]any{}
	for _, f := range valueFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("charttest: values: %w", err)
		}
		var v map[string]any
		if err := yaml.Unmarshal(b, &v); err != nil {
			return "", fmt.Errorf("charttest: values %s: %w", f, err)
		}
		vals = merge(vals, v)
	}
	return RenderValues(dir, vals)
}

// merge returns a with b merged in, maps recursively, as `helm -f a -f b`
// does.
func merge(a, b map[string]any) map[string]any {
	out := make(map[string]any, len(a))
	maps.Copy(out, a)
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := out[k].(map[string]any); ok {
				out[k] = merge(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// RenderValues renders the chart in dir with vals. It takes the steps of
// `helm template` (Helm's install action in client-only dry-run mode) with
// Helm's own packages, without the action package itself (which pulls in
// the Kubernetes client machinery and the registry client): the chart's
// kubeVersion against Helm's default capabilities, the values coalesced with
// the chart's and checked against its schema, the engine, NOTES.txt set
// aside, the manifests split and sorted in Helm's install order.
func RenderValues(dir string, vals map[string]any) (string, error) {
	chrt, err := loader.LoadDir(dir)
	if err != nil {
		return "", fmt.Errorf("charttest: load %s: %w", dir, err)
	}
	caps := common.DefaultCapabilities.Copy()
	kv, err := common.ParseKubeVersion(KubeVersion())
	if err != nil {
		return "", fmt.Errorf("charttest: %w", err)
	}
	caps.KubeVersion = *kv
	if kv := chrt.Metadata.KubeVersion; kv != "" && !v2util.IsCompatibleRange(kv, caps.KubeVersion.String()) {
		return "", fmt.Errorf("charttest: the chart requires kubeVersion %s, not %s", kv, caps.KubeVersion.String())
	}
	opts := common.ReleaseOptions{Name: Release, Namespace: Namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, vals, opts, caps, false)
	if err != nil {
		return "", fmt.Errorf("charttest: values: %w", err)
	}
	files, err := engine.Render(chrt, rv)
	if err != nil {
		return "", fmt.Errorf("charttest: render: %w", err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("charttest: render: %w", err)
	}
	if len(hooks) != 0 {
		return "", errors.New("charttest: the chart has hooks; render them too")
	}
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	return b.String(), nil
}

// KubeVersion is the Kubernetes release the manifests are validated
// against: the one of the k8s.io/api module this package is built with
// (v0.37.2 is Kubernetes v1.37.2). The chart is rendered for it.
func KubeVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "k8s.io/api" && strings.HasPrefix(m.Version, "v0.") {
				return "v1." + strings.TrimPrefix(m.Version, "v0.")
			}
		}
	}
	return "v1.37.0"
}

// Doc is one manifest of a rendering.
type Doc struct {
	// Source is the template it came from.
	Source string
	// Body is its YAML.
	Body []byte
}

// Split cuts a rendering into its documents, dropping empty ones.
func Split(manifest string) []Doc {
	var out []Doc
	for _, part := range strings.Split("\n"+manifest, "\n---") {
		body := strings.TrimSpace(part)
		if body == "" {
			continue
		}
		var d Doc
		if rest, ok := strings.CutPrefix(body, "# Source: "); ok {
			src, b, _ := strings.Cut(rest, "\n")
			d.Source, body = src, b
		}
		d.Body = []byte(strings.TrimSpace(body) + "\n")
		if onlyComments(d.Body) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// onlyComments reports whether a document holds nothing but comments and
// blank lines (a file header).
func onlyComments(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		if l := bytes.TrimSpace(line); len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

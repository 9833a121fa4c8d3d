package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	"github.com/tokenbus/tokenbus/libs/simulator"
	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/internal/testutil"
)

// alertRules is the shipped rules file.
var alertRules, _ = filepath.Abs("../../../../deploy/prometheus/tokenbus-alerts.yml")

// scrape is one /metrics answer: tokenbus_* samples by series (histogram
// buckets left out).
type scrape map[string]float64

var sampleLine = regexp.MustCompile(`^(tokenbus_[a-zA-Z0-9_]+(?:\{[^}]*\})?) (\S+)$`)

func scrapeMetrics(t *testing.T, m *Main) scrape {
	t.Helper()
	code, body := httpGet(t, "http://"+m.httpAddr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	s := scrape{}
	for line := range strings.Lines(body) {
		mm := sampleLine.FindStringSubmatch(strings.TrimSpace(line))
		if mm == nil || strings.Contains(mm[1], "_bucket") {
			continue
		}
		v, err := strconv.ParseFloat(mm[2], 64)
		if err != nil {
			continue
		}
		s[mm[1]] = v
	}
	return s
}

// value returns the sample of name whose labels include all of labels.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	for k, v := range s {
		if !strings.HasPrefix(k, name+"{") && k != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(k, l)
		}
		if ok {
			return v, true
		}
	}
	return 0, false
}

// series turns scrapes taken one after another into promtool input series:
// each scrape's values held for the given number of one-minute steps, "_"
// where a series is absent.
func series(phases []scrape, steps []int) []map[string]string {
	names := map[string]bool{}
	for _, p := range phases {
		for k := range p {
			names[k] = true
		}
	}
	var keys []string
	for k := range names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []map[string]string
	for _, k := range keys {
		var vals []string
		for i, p := range phases {
			v, ok := p[k]
			for range steps[i] {
				if ok {
					vals = append(vals, strconv.FormatFloat(v, 'g', -1, 64))
				} else {
					vals = append(vals, "_")
				}
			}
		}
		out = append(out, map[string]string{"series": k, "values": strings.Join(vals, " ")})
	}
	return out
}

// ruleAnnotations reads the rules file: each alert's labels and annotations.
func ruleAnnotations(t *testing.T) map[string]struct{ Labels, Annotations map[string]string } {
	t.Helper()
	b, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct{ Labels, Annotations map[string]string }{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = struct{ Labels, Annotations map[string]string }{r.Labels, r.Annotations}
		}
	}
	return out
}

// TestAlertRulesFire evaluates the shipped alert rules
// (deploy/prometheus/tokenbus-alerts.yml) with promtool against scrapes of
// real refreshers: a healthy leader fires none; then, with an OAuth2
// provider down until its token expired, a merchant's Daraja credentials
// revoked, a forged token written, and an Airtel token inside its expiry
// margin during an outage, each rule fires for what it watches; a standby
// alone (the leader gone) fires TokenbusNoLeader.
func TestAlertRulesFire(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; `go tool task prometheus` installs it): the alert rules are not evaluated")
	}
	sim := simulator.New(simulator.Config{OAuth2TTL: 4 * time.Second, DarajaTTL: 4 * time.Second, AirtelTTL: 20 * time.Second})
	sim.AddCredential(simulator.Daraja, "m-key", "m-secret")
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	providers := fmt.Sprintf(`providers:
  - {name: oauth-down, kind: oauth2, token_url: %q, client_id: sim-client, client_secret: sim-client-secret}
  - {name: daraja-m, kind: daraja, base_url: %q, consumer_key: m-key, consumer_secret: m-secret}
  - {name: airtel-slow, kind: airtel, base_url: %q, client_id: sim-airtel-id, client_secret: sim-airtel-secret}
`, srv.URL+"/collection/token/", srv.URL, srv.URL)
	start := func(name, natsCfg string) *Main {
		path := filepath.Join(dir, name+".yaml")
		cfg := natsCfg + "\nhttp: {listen: \"127.0.0.1:0\"}\nlease: {ttl: 1500ms, retry_period: 100ms}\n" + providers
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		m := NewMain(Options{ConfigPath: path, Instance: name,
			Backoff: refresher.Backoff{PermanentInitial: time.Second, PermanentMax: time.Second}}, &testutil.LogBuffer{}, &testutil.LogBuffer{})
		if err := m.Run(context.Background()); err != nil {
			_ = m.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m
	}
	m := start("leader", fmt.Sprintf(`nats: {embedded: {listen: "127.0.0.1:0", store_dir: %q}}`, filepath.Join(dir, "nats")))
	nc := testutil.Connect(t, m.ns)
	testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, p := range []string{"oauth-down", "daraja-m", "airtel-slow"} {
			if _, e := getToken(t, nc, p); e != "" {
				return fmt.Errorf("%s: %s", p, e)
			}
		}
		return nil
	})
	standby := start("standby", fmt.Sprintf(`nats: {url: %q}`, m.ns.ClientURL()))
	healthy := scrapeMetrics(t, m)
	if v, _ := healthy.value("tokenbus_leader"); v != 1 {
		t.Fatalf("the leader's scrape: tokenbus_leader %v", v)
	}

	// Trouble: a forged token, revoked credentials, two outages.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(wire.Token{Provider: "daraja-m", AccessToken: "forged", TokenType: "Bearer", IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)})
	if _, err := kv.Put(context.Background(), "daraja-m", forged); err != nil {
		t.Fatal(err)
	}
	sim.AddCredential(simulator.Daraja, "m-key", "revoked")
	sim.SetFaults(simulator.OAuth2, simulator.Faults{Outage: true})
	sim.SetFaults(simulator.Airtel, simulator.Faults{Outage: true})
	var trouble scrape
	testutil.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		trouble = scrapeMetrics(t, m)
		left, _ := trouble.value("tokenbus_token_expires_in_seconds", `provider="airtel-slow"`)
		rejected, _ := trouble.value("tokenbus_providers_by_condition", `condition="credentials_rejected"`)
		noToken, _ := trouble.value("tokenbus_providers", `state="no_token"`)
		if left < 1.1 || left > 1.9 || rejected != 1 || noToken < 1 {
			return fmt.Errorf("airtel-slow expires in %.2fs, %v credentials rejected, %v without a token", left, rejected, noToken)
		}
		return nil
	})
	alone := scrape{}
	for k, v := range scrapeMetrics(t, standby) {
		if strings.HasPrefix(k, "tokenbus_leader") {
			alone[k] = v
		}
	}
	if v, _ := alone.value("tokenbus_leader"); v != 0 {
		t.Fatalf("the standby's scrape: tokenbus_leader %v", v)
	}

	// Which failures rose by three or more, by provider and cause.
	rules := ruleAnnotations(t)
	expect := func(alert string, labels map[string]string) map[string]any {
		r := rules[alert]
		l := map[string]string{}
		for k, v := range r.Labels {
			l[k] = v
		}
		ann := map[string]string{}
		for k, v := range r.Annotations {
			for lk, lv := range labels {
				v = strings.ReplaceAll(v, "{{ $labels."+lk+" }}", lv)
			}
			ann[k] = v
		}
		for k, v := range labels {
			l[k] = v
		}
		return map[string]any{"exp_labels": l, "exp_annotations": ann}
	}
	var rising []map[string]any
	for k, v := range trouble {
		if !strings.HasPrefix(k, "tokenbus_refresh_failures_total{") {
			continue
		}
		before := healthy[k]
		if v-before >= 3 {
			p := regexp.MustCompile(`provider="([^"]*)"`).FindStringSubmatch(k)[1]
			c := regexp.MustCompile(`cause="([^"]*)"`).FindStringSubmatch(k)[1]
			rising = append(rising, expect("TokenbusRefreshFailuresRising", map[string]string{"provider": p, "cause": c}))
		}
	}
	risingText := fmt.Sprint(rising)
	for _, want := range []string{`provider:oauth-down`, `cause:5xx`, `provider:daraja-m`, `cause:rejected_credentials`} {
		if !strings.Contains(risingText, want) {
			t.Fatalf("refresh failures did not rise as expected (%s): %v", want, rising)
		}
	}

	none := func(alert string, at string) map[string]any {
		return map[string]any{"eval_time": at, "alertname": alert, "exp_alerts": []any{}}
	}
	fires := func(alert, at string, alerts ...map[string]any) map[string]any {
		return map[string]any{"eval_time": at, "alertname": alert, "exp_alerts": alerts}
	}
	var healthyChecks []map[string]any
	for alert := range rules {
		healthyChecks = append(healthyChecks, none(alert, "9m"))
	}
	troubleChecks := append(healthyChecks,
		fires("TokenbusProviderWithoutToken", "13m", expect("TokenbusProviderWithoutToken", nil)),
		fires("TokenbusCredentialsRejected", "13m", expect("TokenbusCredentialsRejected", nil)),
		fires("TokenbusForeignWrites", "13m", expect("TokenbusForeignWrites", map[string]string{"provider": "daraja-m"})),
		fires("TokenbusRefreshFailuresRising", "13m", rising...),
		fires("TokenbusTokenInsideExpiryMargin", "13m", expect("TokenbusTokenInsideExpiryMargin", map[string]string{"provider": "airtel-slow"})),
		none("TokenbusNoLeader", "13m"),
	)
	test := map[string]any{
		"rule_files":          []string{alertRules},
		"evaluation_interval": "1m",
		"tests": []any{
			map[string]any{"name": "a healthy leader, then trouble", "interval": "1m",
				"input_series":    series([]scrape{healthy, trouble}, []int{10, 21}),
				"alert_rule_test": troubleChecks},
			map[string]any{"name": "a standby alone: no leader", "interval": "1m",
				"input_series": series([]scrape{healthy, alone}, []int{10, 21}),
				"alert_rule_test": []any{none("TokenbusNoLeader", "9m"), none("TokenbusNoLeader", "10m"),
					fires("TokenbusNoLeader", "12m", expect("TokenbusNoLeader", nil))}},
		},
	}
	b, err := json.MarshalIndent(test, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "alerts_test.yml") // JSON is YAML
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool: %s", strings.TrimSpace(string(out)))
}

package config

import (
	"strings"
	"testing"
)

func TestParseProvider(t *testing.T) {
	p, err := ParseProvider([]byte(`{"name":"m-0001","kind":"daraja","base_url":"http://127.0.0.1:1","consumer_key":"ck","consumer_secret":"s3cr3t-${HOME}"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.ConsumerSecret.Reveal() != "s3cr3t-${HOME}" || p.Timeout.D() == 0 {
		t.Fatalf("got %+v (timeout %v): want the value as given and defaults", p, p.Timeout)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"name":"m-1","kind":"daraja","base_url":"http://x","consumer_key":"ck"}`, "consumer_secret: missing or empty; kind daraja needs it"},
		{`{"name":"m-1","kind":"daraja","base_url":"not a url SECRETVALUE","consumer_key":"ck","consumer_secret":"x"}`, "base_url: want an absolute http or https URL"},
		{`{"name":"M_1","kind":"daraja","base_url":"http://x","consumer_key":"ck","consumer_secret":"x"}`, "name: want [a-z0-9][a-z0-9-]*"},
		{`{"name":"m-1","kind":"daraja","base_url":"http://x","consumer_key":"ck","consumer_secret":"x","password":"SECRETVALUE"}`, `field "password" does not apply to kind daraja`},
		{`{"name":"m-1","kind":"daraja","extra":"SECRETVALUE"}`, `unknown field "extra"`},
		{`{"name":"m-1","kind":"mpay","base_url":"http://x","username":"u","password":"p","pool":"SECRETVALUE"}`, "pool: want a whole number"},
		{`[1]`, "want one provider as a JSON object"},
		{`name: m-1`, "want one provider as a JSON object"},
	} {
		_, err := ParseProvider([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseProvider(%s) = %v, want %q", tc.in, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "SECRETVALUE") || strings.Contains(err.Error(), "config:") || strings.Contains(err.Error(), "line")) {
			t.Errorf("ParseProvider(%s) = %v: shows a value, a prefix or a line", tc.in, err)
		}
	}
}

// The YAML file and a JSON put report the same problem with the same words.
func TestOneValidatorForYAMLAndJSON(t *testing.T) {
	_, yerr := Parse([]byte("providers:\n  - name: m-1\n    kind: airtel\n    base_url: http://x\n    client_id: c\n"), nil)
	_, jerr := ParseProvider([]byte(`{"name":"m-1","kind":"airtel","base_url":"http://x","client_id":"c"}`))
	const want = "client_secret: missing or empty; kind airtel needs it"
	if yerr == nil || jerr == nil || !strings.Contains(yerr.Error(), want) || !strings.Contains(jerr.Error(), want) {
		t.Fatalf("yaml: %v\njson: %v", yerr, jerr)
	}
}

func TestCredentialsConfig(t *testing.T) {
	const key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	c, err := Parse([]byte("credentials:\n  keys:\n    - id: k1\n      key: "+key+"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Credentials.Bucket != "tokenbus-credentials" || c.FetchConcurrency != 16 {
		t.Fatalf("defaults: %+v %d", c.Credentials, c.FetchConcurrency)
	}
	_, err = Parse([]byte("fetch_concurrency: 2000\nproviders: []\ncredentials:\n  keys:\n    - id: k1\n      key: TOOSHORTSECRET\n    - id: k1\n      key: "+key+"\n"), nil)
	for _, want := range []string{"credentials.keys[0].key: ", "credentials.keys[1].id: duplicate", "fetch_concurrency: must be from 1 to 1024"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "TOOSHORTSECRET") {
		t.Errorf("error shows the key: %v", err)
	}
}

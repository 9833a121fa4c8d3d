package config

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// fuzzEnv is the environment of FuzzParse; secret marks the variables whose
// values must never appear in an error.
var fuzzEnv = map[string]struct {
	value  string
	secret bool
}{
	"MPESA_CONSUMER_KEY":    {"ck-7Hq2-consumer-key", true},
	"MPESA_CONSUMER_SECRET": {"cs-9Zr4-consumer-secret", true},
	"MPAY_USERNAME":         {"mu-3Kd8-username", true},
	"MPAY_PASSWORD":         {"mp\"5Wn1: password\n#", true},
	"MOMO_USER":             {"9f1c2e4a-Momo-user", true},
	"MOMO_KEY":              {"mk-2Lp6-momo-key", true},
	"MOMO_SUBSCRIPTION_KEY": {"sk-8Tb3 subscription", true},
	"AIRTEL_CLIENT_ID":      {"ai-4Vg7-client-id", true},
	"AIRTEL_CLIENT_SECRET":  {"${MPAY_PASSWORD}-As6", true},
	"EMPTY":                 {"", false},
	"NAME":                  {"momo", false},
	"LEVEL":                 {"debug", false},
	"TTL":                   {"10", false},
}

func fuzzLookup(name string) (string, bool) {
	v, ok := fuzzEnv[name]
	return v.value, ok
}

// FuzzParse checks that Parse never panics, that what it accepts is valid,
// and that its errors never show a secret variable's value (raw or quoted)
// unless the input itself holds that value.
func FuzzParse(f *testing.F) {
	spec, err := os.ReadFile("testdata/refresher.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(spec),
		"providers:" + daraja + mpay + momo + airtel,
		"providers:" + daraja + "    pool: ${MPAY_PASSWORD}\n    consumer_sekret: x\n",
		"bucket: ${MPAY_PASSWORD}\nlease: {ttl: ${TTL}}\nproviders: [{name: ${NAME}, kind: ${MOMO_KEY}, headers: {X: ${MPAY_PASSWORD}}}]\n",
		"providers:\n  - &p {name: a, kind: mpay, base_url: 'http://x', username: $${U}, password: ${MPAY_PASSWORD}}\n  - *p\n",
		"a: &a [x, *a]\n",
		"",
		"\t",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, fuzzLookup)
		if err == nil {
			if c == nil {
				t.Fatal("nil Config and nil error")
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a Config that Validate rejects: %v", err)
			}
			return
		}
		if c != nil {
			t.Fatal("a Config with an error")
		}
		msg := err.Error()
		for name, v := range fuzzEnv {
			if !v.secret || bytes.Contains(data, []byte(v.value)) {
				continue
			}
			q := strconv.Quote(v.value)
			if strings.Contains(msg, v.value) || strings.Contains(msg, q[1:len(q)-1]) {
				t.Fatalf("error shows the value of %s:\n%s", name, msg)
			}
		}
	})
}

// FuzzJSONNode checks that the node tree jsonNode builds from a JSON
// provider decodes exactly as the one yaml.Unmarshal builds: the same
// provider and the same problems, in the same order. ParseProvider takes
// jsonNode's tree whenever it builds one.
func FuzzJSONNode(f *testing.F) {
	for _, seed := range []string{
		`{"name":"m-1","kind":"daraja","base_url":"http://127.0.0.1:1","consumer_key":"k","consumer_secret":"s"}`,
		`{"name":"p","kind":"oauth2","token_url":"https://x/t","client_id":"c","client_secret":"s","scopes":["a","b"],"headers":{"X-Key":"v"},"timeout":"5s","refresh_before":"1m"}`,
		`{"name":"q","kind":"mpay","base_url":"https://x","username":"u","password":"p","pool":4}`,
		`{"name":"q","kind":"mpay","pool":"4","pool":4.5,"timeout":10,"scopes":null,"headers":[1,{"a":true}],"Name":"x"}`,
		`{"name":["a"],"kind":{"x":null},"base_url":false,"unknown":1e9}`,
		`{}`, `[]`, `{"a":{"b":{"c":{"d":[[[[]]]]}}}}`, `{"name":"x"} {"name":"y"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		root, ok := jsonNode(data)
		if !ok {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("jsonNode built a tree from invalid JSON %q", data)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
			return // YAML refuses this JSON; ParseProvider now reads it as JSON
		}
		decode := func(n *yaml.Node) (Provider, []problem) {
			var p Provider
			d := decoder{problems: &problems{noLines: true}, literal: true}
			d.decode(n, reflect.ValueOf(&p).Elem(), "")
			return p, d.list
		}
		pj, probj := decode(root)
		py, proby := decode(doc.Content[0])
		if !reflect.DeepEqual(pj, py) {
			t.Fatalf("%q: from JSON tokens %+v, from YAML %+v", data, pj, py)
		}
		if len(probj) != len(proby) {
			t.Fatalf("%q: problems from JSON tokens %v, from YAML %v", data, probj, proby)
		}
		for i := range probj {
			if probj[i].msg != proby[i].msg {
				t.Fatalf("%q: problem %d from JSON tokens %q, from YAML %q", data, i, probj[i].msg, proby[i].msg)
			}
		}
	})
}

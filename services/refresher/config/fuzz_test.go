package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
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

// tokensNode is jsonNode as encoding/json's tokens build it.
func tokensNode(data []byte) (*yaml.Node, bool) {
	r := jsonReader{dec: json.NewDecoder(bytes.NewReader(data)), data: data, line: 1}
	r.dec.UseNumber()
	n, err := r.value(0)
	if err != nil {
		return nil, false
	}
	if _, _, err := r.token(); err != io.EOF {
		return nil, false
	}
	return n, true
}

// sameNodes reports where a and b differ (kind, tag, value, line, content), or "".
func sameNodes(a, b *yaml.Node, at string) string {
	if a.Kind != b.Kind || a.Tag != b.Tag || a.Value != b.Value || a.Line != b.Line || len(a.Content) != len(b.Content) {
		return fmt.Sprintf("%s: %v %s %q line %d (%d children) vs %v %s %q line %d (%d children)", at,
			a.Kind, a.Tag, a.Value, a.Line, len(a.Content), b.Kind, b.Tag, b.Value, b.Line, len(b.Content))
	}
	for i := range a.Content {
		if d := sameNodes(a.Content[i], b.Content[i], fmt.Sprintf("%s/%d", at, i)); d != "" {
			return d
		}
	}
	return ""
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
		"{\n \"name\" :\r\n\t\"m\xff\xfe-1\", \"pool\": -0.5e+3,\n\"scopes\": [ true , false , null ]\n}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return // jsonNode reads valid JSON only (ParseProvider checks it first)
		}
		root, ok := jsonNode(data)
		if want, wok := tokensNode(data); ok && wok {
			if d := sameNodes(root, want, "$"); d != "" {
				t.Fatalf("%q: the scan and encoding/json's tokens differ at %s", data, d)
			}
		} else if ok && bytes.IndexByte(data, '\\') < 0 {
			t.Fatalf("%q: the scan built a tree where encoding/json's tokens did not", data)
		}
		if !ok {
			return
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

// jsonReader is the reference jsonScan is checked against (FuzzJSONNode):
// the tree built from encoding/json's tokens, with the line each ends on, as
// ParseProvider built it before the scan (docs/benchmarks.md, issue 20
// session 10).
type jsonReader struct {
	dec  *json.Decoder
	data []byte
	off  int64 // where line was counted to
	line int
}

func (r *jsonReader) token() (json.Token, int, error) {
	t, err := r.dec.Token()
	if err != nil {
		return nil, 0, err
	}
	end := r.dec.InputOffset()
	r.line += bytes.Count(r.data[r.off:end], []byte{'\n'})
	r.off = end
	return t, r.line, nil
}

// value reads one JSON value as a node.
func (r *jsonReader) value(depth int) (*yaml.Node, error) {
	if depth > maxJSONDepth {
		return nil, errJSONShape
	}
	t, line, err := r.token()
	if err != nil {
		return nil, err
	}
	scalar := func(tag, v string) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: v, Line: line}
	}
	switch v := t.(type) {
	case json.Delim:
		n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: line}
		if v == '[' {
			n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
		} else if v != '{' {
			return nil, errJSONShape
		}
		for r.dec.More() {
			if n.Kind == yaml.MappingNode {
				k, kline, err := r.token()
				if err != nil {
					return nil, err
				}
				ks, ok := k.(string)
				if !ok {
					return nil, errJSONShape
				}
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: ks, Line: kline})
			}
			e, err := r.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, e)
		}
		if _, _, err := r.token(); err != nil { // the closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		return scalar("!!str", v), nil
	case json.Number:
		if strings.ContainsAny(string(v), ".eE") {
			return scalar("!!float", string(v)), nil
		}
		return scalar("!!int", string(v)), nil
	case bool:
		return scalar("!!bool", strconv.FormatBool(v)), nil
	case nil:
		return scalar("!!null", "null"), nil
	}
	return nil, errJSONShape
}

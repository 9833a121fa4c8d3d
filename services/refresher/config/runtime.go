package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ParseProvider parses one provider given as a JSON object (a runtime
// provider, SPEC §8) with the same fields, defaults, rules and messages as a
// provider of the YAML file. ${NAME} is not expanded: the value is taken as
// given. The error joins every problem, one per line, each naming the field
// (e.g. "consumer_secret: missing or empty; kind daraja needs it") and never
// a value; it carries no "config: " prefix and no line.
func ParseProvider(data []byte) (Provider, error) {
	var p Provider
	ps := &problems{noLines: true}
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return p, errors.New("want one provider as a JSON object")
	}
	root, ok := jsonNode(data)
	if !ok {
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
			return p, errors.New("want one provider as a JSON object")
		}
		root = doc.Content[0]
	}
	d := decoder{problems: ps, literal: true}
	d.decode(root, reflect.ValueOf(&p).Elem(), "")
	if len(ps.list) == 0 {
		p.SetDefaults()
		p.validate(ps, "")
	}
	if len(ps.list) == 0 {
		return p, nil
	}
	msgs := make([]error, len(ps.list))
	for i, pr := range ps.list {
		msgs[i] = errors.New(strings.TrimPrefix(pr.msg, "config: "))
	}
	return p, errors.Join(msgs...)
}

// jsonNode returns the node tree yaml.Unmarshal builds for the JSON document
// data, built from encoding/json's tokens instead: a put of 100,000
// providers spent a quarter of everything the refresher allocated in the
// YAML parser (docs/benchmarks.md). The decoder reads the same nodes either
// way (FuzzJSONNode). A document with a backslash (an escape, whose
// decoding YAML and JSON might not agree on) or that does not parse is left
// to yaml.Unmarshal (ok false).
func jsonNode(data []byte) (n *yaml.Node, ok bool) {
	if bytes.IndexByte(data, '\\') >= 0 {
		return nil, false
	}
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

// maxJSONDepth bounds jsonNode's nesting (a provider nests two deep); a
// deeper document goes to yaml.Unmarshal, which refuses it as it always did.
const maxJSONDepth = 32

var errJSONShape = errors.New("not a JSON value jsonNode builds")

// jsonReader reads JSON tokens with the line each ends on (JSON tokens
// other than strings hold no newline, and strings hold none unescaped), as
// the YAML parser numbers them: duplicate-field problems name a line.
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

// Secrets returns p's secret values (credentials, passwords, header values),
// for scanning replies, logs and files in tests and for sealing.
func (p Provider) Secrets() []string {
	var s []string
	for _, v := range []string{p.ConsumerSecret.Reveal(), p.Password.Reveal(), p.ClientSecret.Reveal()} {
		if v != "" {
			s = append(s, v)
		}
	}
	for _, v := range p.Headers {
		if v != "" {
			s = append(s, v.Reveal())
		}
	}
	return s
}

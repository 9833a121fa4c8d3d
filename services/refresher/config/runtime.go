package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"unicode/utf8"

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
// data, built by a scan of its bytes instead: a put of 100,000 providers
// spent a quarter of everything the refresher allocated in the YAML parser,
// and then a tenth of its onboarding CPU in encoding/json's tokenizer
// (docs/benchmarks.md). data must be valid JSON (json.Valid: ParseProvider
// checks it first), so the scan only tells the kinds of values apart. The
// decoder reads the same nodes either way (FuzzJSONNode). A document with a
// backslash (an escape, whose decoding YAML and JSON might not agree on),
// nested deeper than maxJSONDepth or that the scan does not expect is left
// to yaml.Unmarshal (ok false).
func jsonNode(data []byte) (n *yaml.Node, ok bool) {
	if bytes.IndexByte(data, '\\') >= 0 {
		return nil, false
	}
	s := jsonScan{data: data, line: 1}
	n, err := s.value(0)
	if err != nil {
		return nil, false
	}
	if s.space(); s.pos != len(s.data) {
		return nil, false
	}
	return n, true
}

// maxJSONDepth bounds jsonNode's nesting (a provider nests two deep); a
// deeper document goes to yaml.Unmarshal, which refuses it as it always did.
const maxJSONDepth = 32

var errJSONShape = errors.New("not a JSON value jsonNode builds")

// jsonScan reads the values of a valid JSON document without escapes, with
// the line each starts on (no JSON token holds an unescaped newline), as the
// YAML parser numbers them: duplicate-field problems name a line.
type jsonScan struct {
	data []byte
	pos  int
	line int
}

// space skips whitespace, counting lines.
func (s *jsonScan) space() {
	for ; s.pos < len(s.data); s.pos++ {
		switch s.data[s.pos] {
		case '\n':
			s.line++
		case ' ', '\t', '\r':
		default:
			return
		}
	}
}

// next skips whitespace and returns the next byte, without taking it (0 at
// the end).
func (s *jsonScan) next() byte {
	s.space()
	if s.pos == len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

// str reads a string at pos (its opening quote), as encoding/json decodes
// one without escapes: each byte of invalid UTF-8 becomes U+FFFD.
func (s *jsonScan) str() (string, error) {
	end := bytes.IndexByte(s.data[s.pos+1:], '"')
	if end < 0 {
		return "", errJSONShape
	}
	b := s.data[s.pos+1 : s.pos+1+end]
	s.pos += end + 2
	if utf8.Valid(b) {
		return string(b), nil
	}
	var out strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		out.WriteRune(r) // utf8.RuneError for an invalid byte, as encoding/json
		b = b[size:]
	}
	return out.String(), nil
}

// value reads one JSON value as a node.
func (s *jsonScan) value(depth int) (*yaml.Node, error) {
	if depth > maxJSONDepth {
		return nil, errJSONShape
	}
	c := s.next()
	line := s.line // after next: its whitespace may end lines
	scalar := func(tag, v string) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: v, Line: line}
	}
	switch {
	case c == '{' || c == '[':
		n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: line}
		closing := byte('}')
		if c == '[' {
			n.Kind, n.Tag, closing = yaml.SequenceNode, "!!seq", ']'
		}
		s.pos++
		if s.next() == closing {
			s.pos++
			return n, nil
		}
		for {
			if n.Kind == yaml.MappingNode {
				if s.next() != '"' {
					return nil, errJSONShape
				}
				kline := s.line
				k, err := s.str()
				if err != nil {
					return nil, err
				}
				if s.next() != ':' {
					return nil, errJSONShape
				}
				s.pos++
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k, Line: kline})
			}
			e, err := s.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, e)
			switch s.next() {
			case ',':
				s.pos++
			case closing:
				s.pos++
				return n, nil
			default:
				return nil, errJSONShape
			}
		}
	case c == '"':
		v, err := s.str()
		if err != nil {
			return nil, err
		}
		return scalar("!!str", v), nil
	case c == '-' || c >= '0' && c <= '9':
		start := s.pos
		for s.pos < len(s.data) && strings.IndexByte("+-0123456789.eE", s.data[s.pos]) >= 0 {
			s.pos++
		}
		v := string(s.data[start:s.pos])
		if strings.ContainsAny(v, ".eE") {
			return scalar("!!float", v), nil
		}
		return scalar("!!int", v), nil
	}
	for _, lit := range [...]struct{ text, tag string }{{"true", "!!bool"}, {"false", "!!bool"}, {"null", "!!null"}} {
		if bytes.HasPrefix(s.data[s.pos:], []byte(lit.text)) {
			s.pos += len(lit.text)
			return scalar(lit.tag, lit.text), nil
		}
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

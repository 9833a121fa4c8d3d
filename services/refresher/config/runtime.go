package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
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
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return p, errors.New("want one provider as a JSON object")
	}
	d := decoder{problems: ps, literal: true}
	d.decode(doc.Content[0], reflect.ValueOf(&p).Elem(), "")
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

package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

// decoder fills a Config from a yaml.Node tree, expanding ${NAME} in each
// scalar value as it goes. Working on the tree, never the raw text, means an
// expanded value cannot change the document's structure; and as each value is
// expanded once, a value that contains "${" is never expanded again.
type decoder struct {
	*problems
	lookup func(string) (string, bool)
	// literal turns ${NAME} expansion off (a provider put over NATS: a
	// caller must not be able to read the refresher's environment).
	literal bool
	visits  int // decode calls so far, bounded by maxVisits against alias bombs
}

// maxVisits bounds the nodes decoded, counting each use of an alias afresh:
// 100,000 providers in a file take about 600,000, so only aliases exceed it.
const maxVisits = 1 << 20

var durationType = reflect.TypeFor[Duration]()

// decode stores n in v, whose path (e.g. "providers[0] (mpay).pool") names
// it in errors. A null leaves v zero.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.visits++; d.visits > maxVisits {
		if d.visits == maxVisits+1 {
			d.add(n.Line, path, "too large once its aliases are expanded")
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	switch {
	case v.Type() == durationType:
		if s, ok := d.scalar(n, path, "a duration"); ok {
			dur, err := parseDuration(s)
			if err != nil {
				d.add(n.Line, path, "%v", err)
				return
			}
			v.SetInt(int64(dur))
		}
	case v.Kind() == reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case v.Kind() == reflect.Bool:
		if s, ok := d.scalar(n, path, "true or false"); ok {
			b, err := strconv.ParseBool(s)
			if err != nil {
				d.add(n.Line, path, "want true or false")
				return
			}
			v.SetBool(b)
		}
	case v.Kind() == reflect.Int:
		if s, ok := d.scalar(n, path, "a whole number"); ok {
			i, err := strconv.Atoi(s)
			if err != nil {
				d.add(n.Line, path, "want a whole number")
				return
			}
			v.SetInt(int64(i))
		}
	case v.Kind() == reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.add(n.Line, path, "want a list, not %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, e := range n.Content {
			ep := elemPath(path, i, e)
			d.setLine(ep, e.Line)
			d.decode(e, s.Index(i), ep)
		}
		v.Set(s)
	case v.Kind() == reflect.Map:
		m := reflect.MakeMap(v.Type())
		d.entries(n, path, func(k, val *yaml.Node) {
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, join(path, k.Value))
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), e)
		})
		v.Set(m)
	case v.Kind() == reflect.Struct:
		var keys []*yaml.Node
		d.entries(n, path, func(k, val *yaml.Node) {
			f, ok := fieldByName(v.Type(), k.Value)
			if !ok {
				hint := ""
				if m := didYouMean(k.Value, fieldNames(v)); m != "" {
					hint = "; did you mean " + m + "?"
				}
				d.add(k.Line, path, "unknown field %q%s", k.Value, hint)
				return
			}
			d.setLine(join(path, k.Value), k.Line)
			keys = append(keys, k)
			d.decode(val, v.FieldByIndex(f.Index), join(path, k.Value))
		})
		if p, ok := v.Interface().(Provider); ok && fieldsOf(p.Kind) != nil {
			for _, k := range keys {
				if !slices.Contains(fieldsOf(p.Kind), k.Value) {
					d.add(k.Line, path, "%s", notForKind(k.Value, p.Kind))
				}
			}
		}
	default:
		panic(fmt.Sprintf("config: cannot decode into %s", v.Type()))
	}
}

// entries calls fn for each key and value of the mapping n, rejecting keys
// that are not plain scalars and keys that appear twice.
func (d *decoder) entries(n *yaml.Node, path string, fn func(k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, path, "want a mapping, not %s", describe(n))
		return
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			d.add(k.Line, path, "want a field name, not %s", describe(k))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			d.add(k.Line, path, "field %q is already set at line %d", k.Value, line)
			continue
		}
		seen[k.Value] = k.Line
		fn(k, n.Content[i+1])
	}
}

// scalar returns n's value with ${NAME} references expanded, and false after
// reporting a problem.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.add(n.Line, path, "want %s, not %s", want, describe(n))
		return "", false
	}
	if d.literal {
		return n.Value, true
	}
	if strings.Contains(n.Value, "${") {
		d.markFromEnv(path)
	}
	s, errs := expand(n.Value, d.lookup)
	for _, e := range errs {
		d.add(n.Line, path, "%s", e)
	}
	return s, len(errs) == 0
}

// expand returns s with each ${NAME} replaced by lookup(NAME) and each $${ by
// a literal ${, scanning left to right once. Its messages name variables,
// never values.
func expand(s string, lookup func(string) (string, bool)) (string, []string) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	var errs []string
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' {
			b.WriteString(s[:i-1] + "${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		name, rest, ok := strings.Cut(s[i+2:], "}")
		switch {
		case !ok:
			errs = append(errs, `unterminated "${"; write "$${" for a literal "${"`)
			return "", errs
		case !validVarName(name):
			errs = append(errs, `bad variable name in "${…}": want letters, digits and _, not starting with a digit; write "$${" for a literal "${"`)
		default:
			if v, set := lookup(name); set {
				b.WriteString(v)
			} else {
				errs = append(errs, fmt.Sprintf("environment variable %s is not set", name))
			}
		}
		s = rest
	}
	return b.String(), errs
}

// validVarName reports whether name is [A-Za-z_][A-Za-z0-9_]*.
func validVarName(name string) bool {
	for i, r := range name {
		letter := r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
		digit := '0' <= r && r <= '9'
		if !letter && (!digit || i == 0) {
			return false
		}
	}
	return name != ""
}

// fieldNames returns the fields a typo in struct v's YAML most likely meant:
// for a provider of a known kind, its kind's fields; else every field.
func fieldNames(v reflect.Value) []string {
	if p, ok := v.Interface().(Provider); ok && p.Fields() != nil {
		return p.Fields()
	}
	var names []string
	for f := range v.Type().Fields() {
		names = append(names, yamlName(f))
	}
	return names
}

// fieldByName returns t's field whose yaml tag is name.
func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for f := range t.Fields() {
		if yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// notForKind says that field does not apply to kind, and which kinds it is for.
func notForKind(field, kind string) string {
	var owners []string
	for _, k := range kinds {
		if slices.Contains(kindFields[k], field) {
			owners = append(owners, k)
		}
	}
	return fmt.Sprintf("field %q does not apply to kind %s; it is for %s", field, kind, strings.Join(owners, " and "))
}

// describe names n's kind without showing its value.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return "a single value"
	}
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// elemPath names element i of the list at path, adding its name when it is a
// mapping with a valid literal name: "providers[0] (daraja-sandbox)".
func elemPath(path string, i int, n *yaml.Node) string {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	name := ""
	if n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == "name" && n.Content[j+1].Kind == yaml.ScalarNode {
				name = n.Content[j+1].Value
				break
			}
		}
	}
	return itemPath(path, i, name)
}

// itemPath names item i of the list at path, with its name if that is a
// valid provider name.
func itemPath(path string, i int, name string) string {
	if wire.ValidName(name) {
		return fmt.Sprintf("%s[%d] (%s)", path, i, name)
	}
	return fmt.Sprintf("%s[%d]", path, i)
}

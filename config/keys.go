package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// unknownKeys walks the YAML document against Config's fields and reports
// every key Config does not have, with its line, its section and the
// closest known key. yaml.v3's own strict decoding names Go types instead
// ("field x not found in type config.Config"), which means nothing to an
// operator.
func unknownKeys(doc *yaml.Node) error {
	var errs []error
	walkKeys(doc, reflect.TypeFor[Config](), "", &errs)
	return errors.Join(errs...)
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func walkKeys(n *yaml.Node, t reflect.Type, section string, errs *[]error) {
	if n == nil {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return // decodes itself (Duration) and reports its own errors
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walkKeys(c, t, section, errs)
		}
	case yaml.AliasNode:
		walkKeys(n.Alias, t, section, errs)
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice {
			return // a type error, reported by the decoder
		}
		for i, c := range n.Content {
			walkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", section, i), errs)
		}
	case yaml.MappingNode:
		walkMapping(n, t, section, errs)
	}
}

func walkMapping(n *yaml.Node, t reflect.Type, section string, errs *[]error) {
	switch t.Kind() {
	case reflect.Map:
		// Keys are free (setting names, tenants); the values may be sections.
		for i := 1; i < len(n.Content); i += 2 {
			walkKeys(n.Content[i], t.Elem(), fmt.Sprintf("%s.%s", section, n.Content[i-1].Value), errs)
		}
		return
	case reflect.Struct:
	default:
		return // a type error, reported by the decoder
	}
	fields := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		if key.Tag == "!!merge" {
			// "<<: *defaults" merges another mapping's keys into this one.
			walkKeys(value, t, section, errs)
			continue
		}
		ft, ok := fields[key.Value]
		if !ok {
			*errs = append(*errs, unknownKeyError(key, section, fields))
			continue
		}
		walkKeys(value, ft, join(section, key.Value), errs)
	}
}

func unknownKeyError(key *yaml.Node, section string, fields map[string]reflect.Type) error {
	msg := fmt.Sprintf("line %d: unknown key %q", key.Line, key.Value)
	if section != "" {
		msg += " in " + section
	}
	known := make([]string, 0, len(fields))
	for name := range fields {
		known = append(known, name)
	}
	if s := closest(key.Value, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return errors.New(msg)
}

func join(section, key string) string {
	if section == "" {
		return key
	}
	return section + "." + key
}

// yamlFields maps a struct's YAML keys to their types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name) // yaml.v3's default
		}
		fields[name] = f.Type
	}
	return fields
}

// closest returns the candidate nearest to s, or "" when none is near
// enough to be a likely typo: at most about one edit per four characters.
func closest(s string, candidates []string) string {
	best, bestDist := "", 0
	for _, c := range candidates {
		d := editDistance(strings.ToLower(s), c)
		if best == "" || d < bestDist || (d == bestDist && c < best) {
			best, bestDist = c, d
		}
	}
	if best == "" || bestDist > 1+len(s)/4 {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of neighbours each cost one.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

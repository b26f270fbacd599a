package main

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// The configuration is decoded in two steps: BurntSushi/toml parses the file
// into plain maps (a syntax error stops there, with its line), then decodeInto
// walks those maps against the Config struct and collects every problem
// (unknown key, wrong type, integer where a duration string belongs) instead
// of stopping at the first, so an admin fixes a file in one pass.

// fieldError is one problem with one key.
type fieldError struct {
	Key string
	Msg string
}

func (e fieldError) Error() string { return e.Key + ": " + e.Msg }

// decodeInto copies m into the struct pointed to by dst. Fields are matched
// by their `toml` tag; keys without a field are errors.
func decodeInto(m map[string]any, dst any) []fieldError {
	var errs []fieldError
	decodeStruct("", m, reflect.ValueOf(dst).Elem(), &errs)
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Key < errs[j].Key })
	return errs
}

func decodeStruct(prefix string, m map[string]any, v reflect.Value, errs *[]fieldError) {
	fields := map[string]reflect.Value{}
	var names []string
	for i := 0; i < v.NumField(); i++ {
		tag := v.Type().Field(i).Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = v.Field(i)
		names = append(names, tag)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		key := join(prefix, k)
		f, ok := fields[k]
		if !ok {
			msg := "unknown key"
			switch s := closest(k, names); {
			case s != "":
				msg += fmt.Sprintf(", did you mean %q?", s)
			case prefix == "":
				msg += fmt.Sprintf(" (sections are %s)", strings.Join(names, ", "))
			default:
				msg += fmt.Sprintf(" (keys of [%s] are %s)", prefix, strings.Join(names, ", "))
			}
			*errs = append(*errs, fieldError{key, msg})
			continue
		}
		decodeValue(key, m[k], f, errs)
	}
}

var (
	durationType  = reflect.TypeFor[time.Duration]()
	textUnmarshal = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func decodeValue(key string, val any, f reflect.Value, errs *[]fieldError) {
	bad := func(format string, args ...any) {
		*errs = append(*errs, fieldError{key, fmt.Sprintf(format, args...)})
	}
	switch {
	case f.Type() == durationType:
		s, ok := val.(string)
		if !ok {
			bad("must be a duration string such as \"30s\" or \"5m\", got %s", describe(val))
			return
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			bad("must be a duration string such as \"30s\" or \"5m\", got %q", s)
			return
		}
		f.SetInt(int64(d))
	case reflect.PointerTo(f.Type()).Implements(textUnmarshal):
		s, ok := val.(string)
		if !ok {
			bad("must be a string, got %s", describe(val))
			return
		}
		if err := f.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			bad("%v", err)
		}
	case f.Kind() == reflect.Struct:
		sub, ok := val.(map[string]any)
		if !ok {
			bad("must be a table ([%s]), got %s", key, describe(val))
			return
		}
		decodeStruct(key, sub, f, errs)
	case f.Kind() == reflect.String:
		s, ok := val.(string)
		if !ok {
			bad("must be a string, got %s", describe(val))
			return
		}
		f.SetString(s)
	case f.Kind() == reflect.Bool:
		b, ok := val.(bool)
		if !ok {
			bad("must be true or false, got %s", describe(val))
			return
		}
		f.SetBool(b)
	case f.CanInt() || f.CanUint():
		n, ok := val.(int64)
		if !ok {
			bad("must be an integer, got %s", describe(val))
			return
		}
		lo, hi := intRange(f)
		if float64(n) < lo || float64(n) > hi {
			bad("must be between %.0f and %.0f, got %d", lo, hi, n)
			return
		}
		if f.CanInt() {
			f.SetInt(n)
		} else {
			f.SetUint(uint64(n))
		}
	case f.Kind() == reflect.Map && f.Type().Key().Kind() == reflect.String && f.Type().Elem().Kind() == reflect.String:
		tbl, ok := val.(map[string]any)
		if !ok {
			bad("must be a table of strings ([%s] with name = \"value\" lines), got %s", key, describe(val))
			return
		}
		out := reflect.MakeMapWithSize(f.Type(), len(tbl))
		for k, e := range tbl {
			s, ok := e.(string)
			if !ok {
				*errs = append(*errs, fieldError{join(key, k), fmt.Sprintf("must be a string, got %s", describe(e))})
				continue
			}
			out.SetMapIndex(reflect.ValueOf(k).Convert(f.Type().Key()), reflect.ValueOf(s).Convert(f.Type().Elem()))
		}
		f.Set(out)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		list, ok := val.([]any)
		if !ok {
			bad("must be a list of strings such as [\"a\", \"b\"], got %s", describe(val))
			return
		}
		out := reflect.MakeSlice(f.Type(), 0, len(list))
		for i, e := range list {
			s, ok := e.(string)
			if !ok {
				bad("element %d must be a string, got %s", i, describe(e))
				return
			}
			out = reflect.Append(out, reflect.ValueOf(s).Convert(f.Type().Elem()))
		}
		f.Set(out)
	default:
		// A Config field of a kind this decoder does not know is a
		// programming error, caught by the tests that load every file.
		bad("internal: cannot decode into %s", f.Type())
	}
}

func intRange(f reflect.Value) (lo, hi float64) {
	bits := f.Type().Bits()
	if f.CanUint() {
		return 0, math.Pow(2, float64(bits)) - 1
	}
	return -math.Pow(2, float64(bits-1)), math.Pow(2, float64(bits-1)) - 1
}

// describe names a TOML value's type for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case int64:
		return fmt.Sprintf("the integer %d", v)
	case float64:
		return fmt.Sprintf("the number %g", v)
	case bool:
		return fmt.Sprintf("%t", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date"
	}
	return fmt.Sprintf("%T", v)
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// closest suggests a known key within edit distance 2 of a typo.
func closest(k string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(k, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = slices.Min([]int{prev[j] + 1, cur[j-1] + 1, prev[j-1] + cost})
		}
		prev = cur
	}
	return prev[len(b)]
}

package benchutil

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ParseInts parses a comma-separated list of distinct integers >= least
// (a flag's value).
func ParseInts(s string, least int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least {
			return nil, fmt.Errorf("%q is not a number >= %d", f, least)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// ParseList parses a comma-separated list of distinct words, each one of
// valid (a flag's value).
func ParseList(s string, valid ...string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(valid, f) {
			return nil, fmt.Errorf("%q is not one of %s", f, strings.Join(valid, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

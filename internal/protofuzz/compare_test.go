package protofuzz

import (
	"strings"
	"testing"
)

func norms(texts ...string) []Norm {
	out := make([]Norm, len(texts))
	for i, t := range texts {
		out[i] = Norm{Type: t[0], Text: t}
	}
	return out
}

func TestFirstDifference(t *testing.T) {
	for _, tc := range []struct {
		desc string
		a, b []Norm
		want int
	}{
		{"both empty", nil, nil, -1},
		{"same", norms("1", "2", "Z I"), norms("1", "2", "Z I"), -1},
		{"differ in the middle", norms("1", "D a", "Z I"), norms("1", "D b", "Z I"), 1},
		{"b is a prefix", norms("1", "2", "Z I"), norms("1", "2"), 2},
		{"a is a prefix", norms("1"), norms("1", "2"), 1},
		{"same text, other type", []Norm{{'1', "x"}}, []Norm{{'2', "x"}}, 0},
		{"closed vs more replies", []Norm{ClosedNorm}, norms("Z I"), 0},
	} {
		if got := FirstDifference(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: got %d, want %d", tc.desc, got, tc.want)
		}
	}
}

func TestSideBySide(t *testing.T) {
	a := norms("1 ParseComplete", "2 BindComplete", "D DataRow 1", "C SELECT 1", "Z ReadyForQuery I")
	b := norms("1 ParseComplete", "2 BindComplete", "E ErrorResponse", "Z ReadyForQuery I")
	got := SideBySide(a, b, 2, 1, "PostgreSQL", "pgtenant")
	for _, want := range []string{
		"(1 equal messages before)",
		"     1 2 BindComplete",
		"!!   2 D DataRow 1",
		"E ErrorResponse",
		"!!   3 C SELECT 1",
		"(1 more: 5 and 4 in all)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, "0 1 ParseComplete") {
		t.Errorf("context too wide:\n%s", got)
	}
}

package protofuzz

import (
	"fmt"
	"strings"
)

// FirstDifference returns the index of the first message where a and b
// differ (when one is a prefix of the other, the length of the shorter), or
// -1 when they are the same.
func FirstDifference(a, b []Norm) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// SideBySide shows a and b around index at (context messages either side),
// one message a line, the differing lines marked.
func SideBySide(a, b []Norm, at, context int, nameA, nameB string) string {
	const width = 70
	cell := func(s []Norm, i int) string {
		if i >= len(s) {
			return "-"
		}
		t := s[i].Text
		if len(t) > width {
			t = t[:width-3] + "..."
		}
		return t
	}
	var out strings.Builder
	fmt.Fprintf(&out, "      %-*s | %s\n", width, nameA, nameB)
	from := max(at-context, 0)
	to := min(at+context+1, max(len(a), len(b)))
	if from > 0 {
		fmt.Fprintf(&out, "      (%d equal messages before)\n", from)
	}
	for i := from; i < to; i++ {
		mark := "  "
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			mark = "!!"
		}
		fmt.Fprintf(&out, "%s %3d %-*s | %s\n", mark, i, width, cell(a, i), cell(b, i))
	}
	if rest := max(len(a), len(b)) - to; rest > 0 {
		fmt.Fprintf(&out, "      (%d more: %d and %d in all)\n", rest, len(a), len(b))
	}
	return out.String()
}

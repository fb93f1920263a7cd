package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
)

// go test -json's actions that end a test.
const (
	actPass = "pass"
	actFail = "fail"
	actSkip = "skip"
)

// pkgPrefix is cut from package paths in the summary.
const pkgPrefix = "github.com/jackc/pgx/v5"

// result is one target's outcome: every test's (subtests included) last
// action, keyed "package Test/sub", and the packages that failed as a
// whole (a build error, a panic, a timeout).
type result struct {
	target   target
	tests    map[string]string
	output   map[string][]string // the failed tests' output
	pkgFails []string
	elapsed  time.Duration
}

func (r result) count(action string) int {
	n := 0
	for _, a := range r.tests {
		if a == action {
			n++
		}
	}
	return n
}

// failedLeaves returns the failed tests none of whose subtests failed: the
// ones that say what went wrong.
func (r result) failedLeaves() []string {
	var out []string
	for k, a := range r.tests {
		if a != actFail {
			continue
		}
		leaf := true
		for k2, a2 := range r.tests {
			if a2 == actFail && strings.HasPrefix(k2, k+"/") {
				leaf = false
				break
			}
		}
		if leaf {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// event is a line of go test -json.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// parseTestJSON reads go test -json from r, copying the tests' output as
// text to log. A test that started but never ended (its package timed out
// or crashed) counts as failed.
func parseTestJSON(r io.Reader, log io.Writer) (result, error) {
	res := result{tests: map[string]string{}, output: map[string][]string{}}
	running := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// go test prints build errors as text.
			fmt.Fprintln(log, sc.Text())
			continue
		}
		pkg := strings.TrimPrefix(strings.TrimPrefix(e.Package, pkgPrefix), "/")
		if pkg == "" {
			pkg = "pgx"
		}
		key := pkg + " " + e.Test
		switch e.Action {
		case "output":
			_, _ = io.WriteString(log, e.Output)
			if e.Test != "" && len(running[key]) < 200 {
				running[key] = append(running[key], e.Output)
			}
		case "run":
			running[key] = nil
		case actPass, actSkip:
			if e.Test != "" {
				res.tests[key] = e.Action
				delete(running, key)
			}
		case actFail:
			if e.Test == "" {
				res.pkgFails = append(res.pkgFails, pkg)
				continue
			}
			res.tests[key] = actFail
			res.output[key] = running[key]
			delete(running, key)
		}
	}
	for key, out := range running {
		if _, ok := res.tests[key]; !ok && !strings.HasSuffix(key, " ") {
			res.tests[key] = actFail
			res.output[key] = append(out, "(never ended: its package timed out or crashed)\n")
		}
	}
	return res, sc.Err()
}

// printSummary prints the counts per target, then for each target through
// pgtenant the tests that failed there, split by how they did directly.
func printSummary(w io.Writer, results []result) {
	fmt.Fprintf(w, "\n%-30s %7s %7s %7s %9s\n", "target", "passed", "failed", "skipped", "time")
	for _, r := range results {
		fmt.Fprintf(w, "%-30s %7d %7d %7d %9s\n", r.target.name, r.count(actPass), r.count(actFail), r.count(actSkip), r.elapsed.Round(time.Second))
	}
	var direct *result
	for i := range results {
		if results[i].target.direct() {
			direct = &results[i]
		}
	}
	for _, r := range results {
		leaves := r.failedLeaves()
		if len(leaves) == 0 && len(r.pkgFails) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s: %d failed tests (subtests that failed, or tests without failed subtests)\n", r.target.name, len(leaves))
		for _, p := range r.pkgFails {
			fmt.Fprintf(w, "  package failed: %s\n", p)
		}
		for _, k := range leaves {
			note := ""
			if direct != nil && !r.target.direct() {
				switch direct.tests[k] {
				case actFail:
					note = "   (fails directly too)"
				case actSkip:
					note = "   (skipped directly)"
				case "":
					note = "   (did not run directly)"
				}
			}
			fmt.Fprintf(w, "  %s%s\n", k, note)
			for _, line := range firstErrorLines(r.output[k], 3) {
				fmt.Fprintf(w, "      %s\n", line)
			}
		}
	}
}

// firstErrorLines picks up to n lines of a failed test's output that say
// why: testify's "Error:" and the lines after it, t.Error's file:line.
func firstErrorLines(out []string, n int) []string {
	var lines []string
	for _, chunk := range out {
		for _, l := range strings.Split(strings.TrimRight(chunk, "\n"), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "Error Trace:") ||
				strings.HasPrefix(l, "Test:") || strings.HasPrefix(l, "/") || bareFileLine.MatchString(l) {
				continue // where, not why
			}
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[:n]
	}
	for i, l := range lines {
		if len(l) > 200 {
			lines[i] = l[:200] + "..."
		}
	}
	return lines
}

// bareFileLine is a t.Error's file:line with nothing after it (testify's).
var bareFileLine = regexp.MustCompile(`^\S+\.go:\d+:$`)

// jsonField returns a string field of a JSON object.
func jsonField(b []byte, name string) (string, bool) {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return "", false
	}
	s, ok := m[name].(string)
	return s, ok && s != ""
}

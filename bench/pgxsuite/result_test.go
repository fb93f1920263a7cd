package main

import (
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseTestJSON(t *testing.T) {
	in := `{"Action":"start","Package":"github.com/jackc/pgx/v5"}
{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestA"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"github.com/jackc/pgx/v5","Test":"TestA"}
{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestB"}
{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestB/sub"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestB/sub","Output":"    b_test.go:9: \n"}
{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestB/sub","Output":"        \tError:      \tboom\n"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5","Test":"TestB/sub"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5","Test":"TestB"}
{"Action":"skip","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestC"}
{"Action":"run","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestHang"}
{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgconn"}
# github.com/jackc/pgx/v5/broken
`
	r, err := parseTestJSON(strings.NewReader(in), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := []int{r.count(actPass), r.count(actFail), r.count(actSkip)}; !slices.Equal(got, []int{1, 3, 1}) {
		t.Errorf("pass, fail, skip = %v, want [1 3 1]", got)
	}
	if got, want := r.failedLeaves(), []string{"pgconn TestHang", "pgx TestB/sub"}; !slices.Equal(got, want) {
		t.Errorf("failed leaves %q, want %q", got, want)
	}
	if !slices.Equal(r.pkgFails, []string{"pgconn"}) {
		t.Errorf("package failures %q", r.pkgFails)
	}
	if got := firstErrorLines(r.output["pgx TestB/sub"], 3); !slices.Equal(got, []string{"Error:      \tboom"}) {
		t.Errorf("error lines %q", got)
	}
}

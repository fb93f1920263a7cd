package benchutil

import (
	"slices"
	"testing"
)

func TestParseInts(t *testing.T) {
	tests := []struct {
		in    string
		least int
		want  []int
		bad   bool
	}{
		{in: "1,8,64", least: 1, want: []int{1, 8, 64}},
		{in: " 8 , 8,1", least: 1, want: []int{8, 1}},
		{in: "0,2", least: 0, want: []int{0, 2}},
		{in: "0", least: 1, bad: true},
		{in: "x", least: 0, bad: true},
		{in: "", least: 0, bad: true},
	}
	for _, tt := range tests {
		got, err := ParseInts(tt.in, tt.least)
		if (err != nil) != tt.bad || !slices.Equal(got, tt.want) {
			t.Errorf("ParseInts(%q, %d) = %v, %v; want %v (error %v)", tt.in, tt.least, got, err, tt.want, tt.bad)
		}
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "simple, extended", want: []string{"simple", "extended"}},
		{in: "simple,simple", want: []string{"simple"}},
		{in: "simple,other", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseList(tt.in, "simple", "extended")
		if (err != nil) != tt.bad || !slices.Equal(got, tt.want) {
			t.Errorf("ParseList(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

package benchutil

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		desc string
		line string
		want time.Duration
		bad  bool
	}{
		{"plain", "4242 (pgbouncer) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 1 0 100 0 0", 2 * time.Second, false},
		{"a name with spaces and parentheses", "7 (a b) (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", 70 * time.Millisecond, false},
		{"no parenthesis", "7 pgbouncer S 1", 0, true},
		{"too short", "7 (x) S 1 2 3", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.line))
			if (err != nil) != tt.bad || got != tt.want {
				t.Errorf("got %v, %v; want %v (error %v)", got, err, tt.want, tt.bad)
			}
		})
	}
}

// The test process's own CPU time grows while it spins. On a loaded machine
// the spinning thread may get little of the CPU: it spins until 50 ms of
// CPU time show (the clock ticks in 10 ms), for at most 10 s.
func TestProcessCPU(t *testing.T) {
	before, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var grew time.Duration
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && grew < 50*time.Millisecond; {
		for spin := time.Now().Add(20 * time.Millisecond); time.Now().Before(spin); {
		}
		after, err := ProcessCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		grew = after - before
	}
	if grew < 50*time.Millisecond {
		t.Errorf("CPU time grew by %v while spinning for 10 s", grew)
	}
}

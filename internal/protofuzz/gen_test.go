package protofuzz

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
)

func TestMessageFraming(t *testing.T) {
	for _, tc := range []struct {
		desc string
		in   Msg
		want []byte
	}{
		{"query", Query("SELECT 1"), append([]byte{'Q', 0, 0, 0, 13}, "SELECT 1\x00"...)},
		{"sync", Sync(), []byte{'S', 0, 0, 0, 4}},
		{"flush", Flush(), []byte{'H', 0, 0, 0, 4}},
		{"copy done", CopyDone(), []byte{'c', 0, 0, 0, 4}},
		{"copy data", CopyData("ab"), []byte{'d', 0, 0, 0, 6, 'a', 'b'}},
		{"copy fail", CopyFail("x"), []byte{'f', 0, 0, 0, 6, 'x', 0}},
		{"parse", Parse("s", "q"), []byte{'P', 0, 0, 0, 10, 's', 0, 'q', 0, 0, 0}},
		{"bind, text results", Bind("p", "s", []string{"7"}, false),
			[]byte{'B', 0, 0, 0, 19, 'p', 0, 's', 0, 0, 0, 0, 1, 0, 0, 0, 1, '7', 0, 0}},
		{"bind, binary results", Bind("", "", nil, true),
			[]byte{'B', 0, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}},
		{"describe portal", Describe('P', "p"), []byte{'D', 0, 0, 0, 7, 'P', 'p', 0}},
		{"execute with limit", Execute("", 2), []byte{'E', 0, 0, 0, 9, 0, 0, 0, 0, 2}},
		{"close statement", Close('S', ""), []byte{'C', 0, 0, 0, 6, 'S', 0}},
		{"terminate", Terminate(), []byte{'X', 0, 0, 0, 4}},
	} {
		if !bytes.Equal(tc.in.Bytes, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.desc, tc.in.Bytes, tc.want)
		}
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	for seed := int64(-3); seed < 50; seed++ {
		a, b := Generate(seed, DefaultOptions()), Generate(seed, DefaultOptions())
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: two generations differ:\n%s\n%s", seed, a, b)
		}
	}
	if reflect.DeepEqual(Generate(1, DefaultOptions()).Stream, Generate(2, DefaultOptions()).Stream) {
		t.Fatal("seeds 1 and 2 give the same stream")
	}
}

// Every generated sequence is well framed: the stream is its messages one
// after the other, each message's length field matches, the writes cover a
// prefix of the stream in order without gaps, reads never expect more
// ReadyForQuery than Queries and Syncs were written, and the sequence ends
// with a final read or a hang-up.
func TestGenerateWellFormed(t *testing.T) {
	opts := DefaultOptions()
	var nonsense, long, hangups, splitHeaders int
	for seed := int64(0); seed < 2000; seed++ {
		s := Generate(seed, opts)
		if s.Nonsense {
			nonsense++
		}
		// The last unit is finished, so a sequence may run a little past MaxMsgs.
		if len(s.Msgs) < opts.MinMsgs || len(s.Msgs) > opts.MaxMsgs+30 {
			t.Fatalf("seed %d: %d messages, want %d to about %d", seed, len(s.Msgs), opts.MinMsgs, opts.MaxMsgs)
		}
		var stream []byte
		for i, m := range s.Msgs {
			if s.Offsets[i] != len(stream) {
				t.Fatalf("seed %d: message %d at offset %d, want %d", seed, i, s.Offsets[i], len(stream))
			}
			if n := binary.BigEndian.Uint32(m.Bytes[1:5]); int(n) != len(m.Bytes)-1 || m.Bytes[0] != m.Type {
				t.Fatalf("seed %d: message %d (%s) length field %d, size %d", seed, i, m.Desc, n, len(m.Bytes))
			}
			stream = append(stream, m.Bytes...)
		}
		if !bytes.Equal(stream, s.Stream) {
			t.Fatalf("seed %d: stream is not the messages' concatenation", seed)
		}
		written, readAt, rfqs, expected := 0, 0, 0, 0
		for i, st := range s.Steps {
			switch st.Kind {
			case StepWrite:
				if st.From != written || st.To <= st.From || st.To > len(s.Stream) {
					t.Fatalf("seed %d step %d: write [%d,%d) after %d bytes\n%s", seed, i, st.From, st.To, written, s)
				}
				for _, off := range s.Offsets {
					if st.To > off && st.To < off+5 {
						splitHeaders++
					}
				}
				written = st.To
			case StepRead:
				expected += st.RFQ
				readAt = written
				if st.Final && i != len(s.Steps)-1 {
					t.Fatalf("seed %d: final read is not the last step\n%s", seed, s)
				}
			case StepSleep:
				if st.Pause > LongPause {
					t.Fatalf("seed %d: pause %s", seed, st.Pause)
				}
				if st.Pause == LongPause {
					long++
				}
			case StepHangUp:
				hangups++
				if i != len(s.Steps)-1 {
					t.Fatalf("seed %d: hang-up is not the last step", seed)
				}
			}
		}
		for i, m := range s.Msgs {
			if s.Offsets[i]+len(m.Bytes) <= readAt && repliesReadyForQuery(m.Type) {
				rfqs++
			}
		}
		if expected != rfqs {
			t.Fatalf("seed %d: reads expect %d ReadyForQuery, %d Queries and Syncs written\n%s", seed, expected, rfqs, s)
		}
		last := s.Steps[len(s.Steps)-1]
		if last.Kind == StepRead && (!last.Final || written != len(s.Stream)) {
			t.Fatalf("seed %d: ends with a read that is not final or before the whole stream\n%s", seed, s)
		}
		if last.Kind != StepRead && last.Kind != StepHangUp {
			t.Fatalf("seed %d: ends with step kind %d", seed, last.Kind)
		}
	}
	// The mix: roughly half the sequences have messages out of place, some
	// hang up, a few pause past the parker, writes split message headers.
	for _, c := range []struct {
		what   string
		n, min int
	}{{"nonsense", nonsense, 800}, {"hang-ups", hangups, 150}, {"long pauses", long, 50}, {"split headers", splitHeaders, 500}} {
		if c.n < c.min {
			t.Errorf("%s: %d in 2000 sequences, want at least %d", c.what, c.n, c.min)
		}
	}
}

func TestGenerateOptions(t *testing.T) {
	o := DefaultOptions()
	o.LongStatements, o.LongPauses, o.Nonsense, o.QueryInBatch, o.HardFirst = false, false, false, false, false
	for seed := int64(0); seed < 500; seed++ {
		s := Generate(seed, o)
		if s.Nonsense {
			t.Fatalf("seed %d: nonsense without Nonsense", seed)
		}
		for i, m := range s.Msgs {
			if m.Type != 'Q' && m.Type != 'P' {
				continue
			}
			for _, st := range s.Steps {
				if st.Kind == StepWrite && st.To > s.Offsets[i] && st.To < s.Offsets[i]+len(m.Bytes) {
					t.Fatalf("seed %d: first Query or Parse split without HardFirst\n%s", seed, s)
				}
			}
			break
		}
		unsynced := false
		for _, m := range s.Msgs {
			if (m.Type == 'Q' || m.Type == 'P') && len(m.Bytes) > longStatement+20 {
				t.Fatalf("seed %d: long statement %s without LongStatements", seed, m.Desc)
			}
			switch m.Type {
			case 'Q':
				if unsynced {
					t.Fatalf("seed %d: Query inside an extended-protocol batch without QueryInBatch\n%s", seed, s)
				}
			case 'P', 'B', 'D', 'E', 'C':
				unsynced = true
			case 'S':
				unsynced = false
			}
		}
		for _, st := range s.Steps {
			if st.Kind == StepSleep && st.Pause >= ParkAfter {
				t.Fatalf("seed %d: pause %s without LongPauses", seed, st.Pause)
			}
		}
	}
}

// Without HardFirst the first Query or Parse is short, long ones may follow.
func TestGenerateEasyFirst(t *testing.T) {
	o := DefaultOptions()
	o.HardFirst = false
	longLater := 0
	for seed := int64(0); seed < 500; seed++ {
		first := true
		for _, m := range Generate(seed, o).Msgs {
			if m.Type != 'Q' && m.Type != 'P' {
				continue
			}
			long := len(m.Bytes) > longStatement+20
			if first && long {
				t.Fatalf("seed %d: first statement %s is long", seed, m.Desc)
			}
			if long {
				longLater++
			}
			first = false
		}
	}
	if longLater == 0 {
		t.Error("no long statement after the first")
	}
}

func TestSeqString(t *testing.T) {
	s := &Seq{Seed: 7, Msgs: []Msg{Query("SELECT 1"), Sync()}}
	s.Offsets = []int{0, len(s.Msgs[0].Bytes)}
	s.Stream = append(append([]byte(nil), s.Msgs[0].Bytes...), s.Msgs[1].Bytes...)
	s.Steps = []Step{
		{Kind: StepWrite, From: 0, To: 3},
		{Kind: StepSleep, Pause: LongPause},
		{Kind: StepWrite, From: 3, To: len(s.Stream)},
		{Kind: StepRead, RFQ: 2, Final: true},
	}
	want := `seed 7 (plausible): 2 messages, 19 bytes
   0 write [0,3): Query "SELECT 1" [bytes 0-3 of 14]
   1 sleep 1.15s
   2 write [3,19): Query "SELECT 1" [bytes 3-14 of 14] | Sync
   3 read until 2 ReadyForQuery or quiet, final
`
	if got := s.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

package protofuzz

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// errBody is the body of an ErrorResponse or NoticeResponse with fields
// given as code letter + value.
func errBody(fields ...string) []byte {
	var b []byte
	for _, f := range fields {
		b = append(append(b, f...), 0)
	}
	return append(b, 0)
}

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		desc    string
		in      []byte
		want    []Reply
		wantErr error
	}{
		{"two messages", []byte{'1', 0, 0, 0, 4, 'Z', 0, 0, 0, 5, 'I'},
			[]Reply{{Type: '1', Body: []byte{}}, {Type: 'Z', Body: []byte{'I'}}}, io.EOF},
		{"truncated body", []byte{'Z', 0, 0, 0, 5}, nil, io.ErrUnexpectedEOF},
		{"truncated header", []byte{'Z', 0, 0}, nil, io.ErrUnexpectedEOF},
		{"length below 4", []byte{'Z', 0, 0, 0, 3}, nil, ErrFraming},
		{"length too big", []byte{'D', 0x7f, 0, 0, 0}, nil, ErrFraming},
	} {
		r := bytes.NewReader(tc.in)
		var got []Reply
		var err error
		for {
			var rep Reply
			if rep, err = ReadReply(r); err != nil {
				break
			}
			got = append(got, rep)
		}
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: error %v, want %v", tc.desc, err, tc.wantErr)
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.desc, got, tc.want)
			continue
		}
		for i := range got {
			if got[i].Type != tc.want[i].Type || !bytes.Equal(got[i].Body, tc.want[i].Body) {
				t.Errorf("%s: message %d: got %v, want %v", tc.desc, i, got[i], tc.want[i])
			}
		}
	}
}

func TestNormalise(t *testing.T) {
	for _, tc := range []struct {
		desc string
		in   Reply
		want string // "" when dropped
	}{
		{"parameter status dropped", Reply{'S', []byte("TimeZone\x00UTC\x00")}, ""},
		{"backend key data dropped", Reply{'K', []byte{0, 0, 0, 1, 0, 0, 0, 2}}, ""},
		{"ready for query", Reply{'Z', []byte("T")}, "ReadyForQuery T"},
		{"command complete", Reply{'C', []byte("SELECT 1\x00")}, "CommandComplete SELECT 1"},
		{"data row with null", Reply{'D', []byte{0, 2, 0, 0, 0, 1, 'a', 0xff, 0xff, 0xff, 0xff}}, `DataRow "a",NULL`},
		{"row description", Reply{'T', append(append([]byte{0, 1}, "g\x00"...), 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0)},
			"RowDescription g(table 0/0 type 23/4/-1 format 0)"},
		{"parameter description", Reply{'t', []byte{0, 1, 0, 0, 0, 23}}, "ParameterDescription [23]"},
		{"copy in response", Reply{'G', []byte{0, 0, 1, 0, 0}}, "CopyInResponse format 0 columns [0]"},
		{"copy data", Reply{'d', []byte("a\tb\n")}, `CopyData "a\tb\n"`},
		{"no-body messages", Reply{'s', nil}, "PortalSuspended"},
		{"error: position, file, line, routine dropped",
			Reply{'E', errBody("SERROR", "VERROR", "C22012", "Mdivision by zero", "P8", "Fint.c", "L841", "Rint4div")},
			`ErrorResponse ERROR 22012 "division by zero"`},
		{"error: detail, hint and table kept, where and internal query dropped",
			Reply{'E', errBody("SERROR", "VERROR", "C42501", "Mnew row violates policy", "Ddet", "Hhint", "tprojects", "WPL/pgSQL function", "qSELECT 1", "p3")},
			`ErrorResponse ERROR 42501 "new row violates policy" detail="det" hint="hint" table="projects"`},
		{"localized severity used without V", Reply{'N', errBody("SWARNUNG", "C25P01", "Mkeine Transaktion")},
			`NoticeResponse WARNUNG 25P01 "keine Transaktion"`},
		{"pids masked", Reply{'E', errBody("VFATAL", "C57P01", "Mterminating connection", "DProcess 4242 waits for ShareLock; blocked by process 77.")},
			`ErrorResponse FATAL 57P01 "terminating connection" detail="Process N waits for ShareLock; blocked by process N."`},
		{"notification pid masked", Reply{'A', []byte("\x00\x00\x10\x00ch\x00hi\x00")}, `NotificationResponse pid=N "ch" "hi"`},
		{"malformed data row", Reply{'D', []byte{0, 2, 0, 0, 0, 9}}, "malformed 'D' message, body 000200000009"},
		{"unknown type", Reply{'?', []byte{1, 2}}, "message '?' body 0102"},
	} {
		got, ok := Normalise(tc.in)
		if !ok {
			if tc.want != "" {
				t.Errorf("%s: dropped, want %q", tc.desc, tc.want)
			}
			continue
		}
		if got.Text != tc.want || got.Type != tc.in.Type {
			t.Errorf("%s: got %c %q, want %c %q", tc.desc, got.Type, got.Text, tc.in.Type, tc.want)
		}
	}
}

// Two errors that differ only in what is dropped normalise to the same
// thing; a different SQLSTATE or message does not.
func TestNormaliseErrorsCompare(t *testing.T) {
	base := []string{"SERROR", "VERROR", "C42601", `Msyntax error at or near "SELEC"`}
	norm := func(extra ...string) Norm {
		n, _ := Normalise(Reply{'E', errBody(append(append([]string(nil), base...), extra...)...)})
		return n
	}
	if norm("P1", "Fscan.l", "L1176") != norm("P3", "Fgram.y", "L2") {
		t.Error("position, file and line are compared")
	}
	other, _ := Normalise(Reply{'E', errBody("SERROR", "VERROR", "C42501", `Msyntax error at or near "SELEC"`)})
	if norm() == other {
		t.Error("SQLSTATE not compared")
	}
	if !strings.Contains(norm().Text, "SELEC") {
		t.Error("message not kept")
	}
}

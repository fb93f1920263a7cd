package protofuzz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Reply is one raw backend message.
type Reply struct {
	Type byte
	Body []byte
}

// MaxReplyBody bounds the body of a reply; a longer length is a framing
// error.
const MaxReplyBody = 1 << 24

// ErrFraming is returned for a length field that cannot be right.
var ErrFraming = errors.New("protofuzz: bad backend message length")

// ReadReply reads one backend message (type byte, length, body) from r.
func ReadReply(r io.Reader) (Reply, error) {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return Reply{}, err
	}
	n := binary.BigEndian.Uint32(head[1:])
	if n < 4 || n-4 > MaxReplyBody {
		return Reply{}, fmt.Errorf("%w: type %q, length %d", ErrFraming, head[0], n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Reply{}, err
	}
	return Reply{Type: head[0], Body: body}, nil
}

// Closed is the type of the pseudo-message that stands for the end of the
// stream: the server closed the connection (EOF or reset: which of the two a
// client sees depends on timing, not on the server).
const Closed byte = 0

// Norm is a reply after normalisation: its type and a text that holds
// everything compared. Two replies are the same when their Norms are equal.
type Norm struct {
	Type byte
	Text string
}

func (n Norm) String() string { return n.Text }

// ClosedNorm is the normalised end of stream.
var ClosedNorm = Norm{Type: Closed, Text: "<connection closed>"}

// pidPattern finds process ids in message texts ("process 1234", "PID 1234").
var pidPattern = regexp.MustCompile(`(?i)\b(process|pid) \d+`)

// Normalise turns r into what is compared, or reports false for a message
// that is not compared at all:
//
//   - ParameterStatus is dropped: pgtenant applies the tenant context and
//     its own settings in ways that may report parameters PostgreSQL does
//     not report to a direct client (and the corpus changes no reported
//     parameter), so neither their presence nor their values are compared.
//   - BackendKeyData is dropped (pgtenant hands out keys of its own; it is
//     not in the stream after login anyway).
//   - ErrorResponse and NoticeResponse keep severity, SQLSTATE, message,
//     detail, hint and the schema/table/column/type/constraint names; the
//     position, internal position and query, context (where), and source
//     file, line and routine are dropped. Process ids in texts are masked.
//   - NotificationResponse's process id is masked.
//
// Every other message is compared whole.
func Normalise(r Reply) (Norm, bool) {
	b := r.Body
	switch r.Type {
	case 'S', 'K':
		return Norm{}, false
	case 'E', 'N':
		return Norm{Type: r.Type, Text: describeFields(r.Type, b)}, true
	case 'A':
		if len(b) >= 4 {
			ch, rest := cutCString(b[4:])
			payload, _ := cutCString(rest)
			return Norm{Type: r.Type, Text: fmt.Sprintf("NotificationResponse pid=N %q %q", ch, payload)}, true
		}
	}
	return Norm{Type: r.Type, Text: DescribeReply(r)}, true
}

// errorFields are the ErrorResponse/NoticeResponse fields compared, in the
// order they are shown, with their labels.
var errorFields = []struct {
	code  byte
	label string
}{
	{'M', ""}, {'D', "detail"}, {'H', "hint"},
	{'s', "schema"}, {'t', "table"}, {'c', "column"}, {'d', "type"}, {'n', "constraint"},
}

func describeFields(typ byte, b []byte) string {
	fields := map[byte]string{}
	for len(b) > 0 && b[0] != 0 {
		code := b[0]
		var v string
		v, b = cutCString(b[1:])
		fields[code] = v
	}
	sev := fields['V']
	if sev == "" {
		sev = fields['S']
	}
	name := "ErrorResponse"
	if typ == 'N' {
		name = "NoticeResponse"
	}
	var out strings.Builder
	fmt.Fprintf(&out, "%s %s %s", name, sev, fields['C'])
	for _, f := range errorFields {
		v, ok := fields[f.code]
		if !ok {
			continue
		}
		v = pidPattern.ReplaceAllString(v, "$1 N")
		if f.label == "" {
			fmt.Fprintf(&out, " %q", v)
		} else {
			fmt.Fprintf(&out, " %s=%q", f.label, v)
		}
	}
	return out.String()
}

// cutCString splits b at its first NUL.
func cutCString(b []byte) (string, []byte) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:]
		}
	}
	return string(b), nil
}

// reader walks a message body; a short body yields zeros and sets bad.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.bad = true
		r.b = nil
		return make([]byte, max(n, 0))
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u16() int { return int(int16(binary.BigEndian.Uint16(r.take(2)))) }
func (r *reader) u32() int { return int(int32(binary.BigEndian.Uint32(r.take(4)))) }
func (r *reader) cstr() string {
	s, rest := cutCString(r.b)
	if rest == nil && (len(r.b) == 0 || r.b[len(r.b)-1] != 0) {
		r.bad = true
	}
	r.b = rest
	return s
}

// DescribeReply describes a backend message in one line, body included.
func DescribeReply(rep Reply) string {
	r := &reader{b: rep.Body}
	var s string
	switch rep.Type {
	case '1':
		s = "ParseComplete"
	case '2':
		s = "BindComplete"
	case '3':
		s = "CloseComplete"
	case 'n':
		s = "NoData"
	case 's':
		s = "PortalSuspended"
	case 'I':
		s = "EmptyQueryResponse"
	case 'c':
		s = "CopyDone"
	case 'Z':
		s = "ReadyForQuery " + string(r.take(1))
	case 'C':
		s = "CommandComplete " + r.cstr()
	case 'd':
		s = "CopyData " + strconv.Quote(string(r.b))
		r.b = nil
	case 'D':
		n := r.u16()
		vals := make([]string, 0, max(n, 0))
		for i := 0; i < n && !r.bad; i++ {
			l := r.u32()
			if l < 0 {
				vals = append(vals, "NULL")
				continue
			}
			vals = append(vals, strconv.Quote(string(r.take(l))))
		}
		s = "DataRow " + strings.Join(vals, ",")
	case 'T':
		n := r.u16()
		cols := make([]string, 0, max(n, 0))
		for i := 0; i < n && !r.bad; i++ {
			name := r.cstr()
			table, attnum := r.u32(), r.u16()
			typ, typlen, typmod, format := r.u32(), r.u16(), r.u32(), r.u16()
			cols = append(cols, fmt.Sprintf("%s(table %d/%d type %d/%d/%d format %d)", name, table, attnum, typ, typlen, typmod, format))
		}
		s = "RowDescription " + strings.Join(cols, ", ")
	case 't':
		n := r.u16()
		oids := make([]string, 0, max(n, 0))
		for i := 0; i < n && !r.bad; i++ {
			oids = append(oids, strconv.Itoa(r.u32()))
		}
		s = "ParameterDescription [" + strings.Join(oids, ",") + "]"
	case 'G', 'H', 'W':
		name := map[byte]string{'G': "CopyInResponse", 'H': "CopyOutResponse", 'W': "CopyBothResponse"}[rep.Type]
		format := r.take(1)[0]
		n := r.u16()
		var formats []string
		for i := 0; i < n && !r.bad; i++ {
			formats = append(formats, strconv.Itoa(r.u16()))
		}
		s = fmt.Sprintf("%s format %d columns [%s]", name, format, strings.Join(formats, ","))
	case 'E', 'N':
		return describeFields(rep.Type, rep.Body)
	case 'S':
		name := r.cstr()
		s = fmt.Sprintf("ParameterStatus %s=%s", name, r.cstr())
	case 'K':
		s = "BackendKeyData"
		r.b = nil
	default:
		return fmt.Sprintf("message %q body %x", rep.Type, rep.Body)
	}
	if r.bad || len(r.b) > 0 {
		return fmt.Sprintf("malformed %q message, body %x", rep.Type, rep.Body)
	}
	return s
}

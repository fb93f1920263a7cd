// Package protofuzz is the pure half of pgtenant's differential fuzzer: a
// deterministic generator of client message sequences (what to write, in
// which TCP pieces, when to pause and when to read), a reader of raw backend
// messages, the normaliser that removes what legitimately differs between
// two servers, and the comparer that finds the first difference between two
// reply streams. The end-to-end driver (e2e/difffuzz_test.go) plays each
// sequence against PostgreSQL and through pgtenant and compares.
package protofuzz

import (
	"encoding/binary"
	"fmt"
)

// Msg is one frontend message of a sequence: its encoding (type byte,
// length, body) and a readable description.
type Msg struct {
	Type  byte
	Desc  string
	Bytes []byte
}

// frame encodes a message of type typ with body parts.
func frame(typ byte, desc string, body ...[]byte) Msg {
	n := 4
	for _, b := range body {
		n += len(b)
	}
	out := make([]byte, 5, 1+n)
	out[0] = typ
	binary.BigEndian.PutUint32(out[1:], uint32(n))
	for _, b := range body {
		out = append(out, b...)
	}
	return Msg{Type: typ, Desc: desc, Bytes: out}
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func u16(v int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }

func u32(v int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

// short shortens s for descriptions.
func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:n], len(s))
}

// Query is a simple-protocol Query.
func Query(sql string) Msg { return frame('Q', fmt.Sprintf("Query %q", short(sql, 60)), cstr(sql)) }

// Parse prepares sql as statement name, with no parameter types.
func Parse(name, sql string) Msg {
	return frame('P', fmt.Sprintf("Parse %q %q", name, short(sql, 50)), cstr(name), cstr(sql), u16(0))
}

// Bind binds statement stmt to portal with text parameters; binaryResults
// asks for all result columns in binary.
func Bind(portal, stmt string, params []string, binaryResults bool) Msg {
	body := [][]byte{cstr(portal), cstr(stmt), u16(0), u16(len(params))}
	for _, p := range params {
		body = append(body, u32(len(p)), []byte(p))
	}
	if binaryResults {
		body = append(body, u16(1), u16(1))
	} else {
		body = append(body, u16(0))
	}
	desc := fmt.Sprintf("Bind %q<-%q %q", portal, stmt, params)
	if binaryResults {
		desc += " binary"
	}
	return frame('B', desc, body...)
}

// Describe describes a statement (kind 'S') or portal ('P').
func Describe(kind byte, name string) Msg {
	return frame('D', fmt.Sprintf("Describe %c %q", kind, name), []byte{kind}, cstr(name))
}

// Execute runs portal, returning at most maxRows rows (0: all).
func Execute(portal string, maxRows int) Msg {
	return frame('E', fmt.Sprintf("Execute %q max=%d", portal, maxRows), cstr(portal), u32(maxRows))
}

// Close closes a statement ('S') or portal ('P').
func Close(kind byte, name string) Msg {
	return frame('C', fmt.Sprintf("Close %c %q", kind, name), []byte{kind}, cstr(name))
}

// Sync ends an extended-protocol group.
func Sync() Msg { return frame('S', "Sync") }

// Flush asks for the replies so far.
func Flush() Msg { return frame('H', "Flush") }

// CopyData carries COPY FROM STDIN data.
func CopyData(data string) Msg {
	return frame('d', fmt.Sprintf("CopyData %q", short(data, 30)), []byte(data))
}

// CopyDone ends COPY FROM STDIN.
func CopyDone() Msg { return frame('c', "CopyDone") }

// CopyFail aborts COPY FROM STDIN.
func CopyFail(reason string) Msg { return frame('f', fmt.Sprintf("CopyFail %q", reason), cstr(reason)) }

// Terminate says goodbye.
func Terminate() Msg { return frame('X', "Terminate") }

// repliesReadyForQuery reports whether PostgreSQL normally answers the
// message with a ReadyForQuery.
func repliesReadyForQuery(typ byte) bool { return typ == 'Q' || typ == 'S' }
